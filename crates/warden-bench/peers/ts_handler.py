"""TorchServe handler for the peers benchmark: the same `{"inputs": [row, ...]}` JSON as warden.

TorchServe's own batcher hands `handle` a list of requests; their rows are stacked into one
tensor, one forward pass runs, and each request gets its own rows back, in order.
"""
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class PeerHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)
        super().initialize(context)

    def handle(self, data, context):
        counts, rows = [], []
        for request in data:
            body = request.get("body") or request.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            inputs = body["inputs"]
            counts.append(len(inputs))
            rows.extend(inputs)
        with torch.inference_mode():
            out = self.model(torch.tensor(rows, dtype=torch.float32)).tolist()
        answers, at = [], 0
        for n in counts:
            answers.append({"outputs": out[at : at + n]})
            at += n
        return answers
