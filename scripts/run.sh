#!/usr/bin/env bash
# Sets up and runs the daemon on the embedded default: five models on CPU, API on
# 127.0.0.1:8000, no GPU and no AWS needed. Extra arguments go to `warden run`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release --locked
exec ./target/release/warden run "$@"
