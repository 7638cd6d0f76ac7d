#!/usr/bin/env bash
# Set-up step of `warden bench peers --setup`: a venv with torch + TorchServe + FastAPI, a JRE,
# and the seeded TorchScript model in the cache. Idempotent: each step is skipped when done.
set -euo pipefail
CACHE="${WARDEN_BENCH_CACHE:-$HOME/.cache/warden}"
VENV="$CACHE/bench-venv"
WHEELS="$CACHE/wheels"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$CACHE/peers" "$WHEELS"

if ! command -v java >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import torch, ts, model_archiver, fastapi, uvicorn, yaml, numpy' >/dev/null 2>&1; then
  nice "$VENV/bin/pip" install -q --find-links "$WHEELS" -r "$HERE/requirements.txt"
fi

MODEL="$CACHE/peers/model.pt"
if [ ! -s "$MODEL" ]; then
  nice "$VENV/bin/python" "$HERE/make_model.py" "$MODEL"
fi
MAR="$CACHE/peers/model-store/peer.mar"
# Rebuilt when the handler changed: the archive carries its own copy.
if [ ! -s "$MAR" ] || [ "$HERE/ts_handler.py" -nt "$MAR" ] || [ "$MODEL" -nt "$MAR" ]; then
  mkdir -p "$CACHE/peers/model-store"
  nice "$VENV/bin/torch-model-archiver" --model-name peer --version 1.0 \
    --serialized-file "$MODEL" --handler "$HERE/ts_handler.py" \
    --export-path "$CACHE/peers/model-store" --force
fi
echo "peers setup done: $VENV, $MODEL, $MAR"
