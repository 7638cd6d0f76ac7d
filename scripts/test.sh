#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, formatting, lints, tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
start=$(date +%s)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked -- --test-threads="${WARDEN_TEST_THREADS:-2}"
echo "test.sh: fmt, clippy and tests passed in $(( $(date +%s) - start )) s"
