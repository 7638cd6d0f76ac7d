"""FastAPI + uvicorn peer: the seed's design, one process, torch threads 1, a plain `/infer`.

Env PEERS_MODEL names the TorchScript file. Run: uvicorn fastapi_app:app --port N
"""
import os

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
        out = MODEL(torch.tensor(request.inputs, dtype=torch.float32))
    return {"outputs": out.tolist()}
