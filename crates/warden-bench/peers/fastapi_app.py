"""FastAPI + uvicorn peer: the seed's design, one process, torch threads 1, a plain `/infer`.

Env PEERS_MODEL names the TorchScript file. Run: uvicorn fastapi_app:app --port N
"""
import os

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel

torch.set_num_threads(1)
MODEL = torch.jit.load(os.environ["PEERS_MODEL"]).eval()
app = FastAPI()


class Request(BaseModel):
    inputs: list


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/infer")
def infer(request: Request) -> dict:
    with torch.inference_mode():
        # numpy, not torch.tensor, for nested lists: the faster plain conversion.
        out = MODEL(torch.from_numpy(np.asarray(request.inputs, dtype=np.float32)))
    return {"outputs": out.tolist()}
