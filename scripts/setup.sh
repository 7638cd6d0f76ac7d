#!/usr/bin/env bash
# Installs everything warden's build, daemon and tests need, idempotently:
#   apt packages, libtorch (CPU subset of the pinned pip torch wheel), a Python venv with moto.
# Everything lands in .deps/ (git-ignored) or the user cache; re-running is a no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
CACHE="${WARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warden}"
TORCH_VERSION=2.13.0            # tch 0.26.0 needs exactly this libtorch
CUDART_VERSION=13.0.96          # libtorch_cpu links libcudart/libcupti even on CPU
CUPTI_VERSION=13.0.85
MOTO_VERSION=5.2.5
SCHEMATHESIS_VERSION=4.32.5   # OpenAPI-driven fuzzing of the API (tests/integration/api_fuzz.rs)
mkdir -p "$DEPS" "$CACHE/wheels"

say() { printf 'setup: %s\n' "$*"; }

# --- apt packages -----------------------------------------------------------
# prometheus: promtool checks /metrics; wrk: the load generator of the fault suite; nginx-light:
# a fast fake model (fixed error fraction) and the reverse proxy the gateway is compared with;
# chromium: renders /docs and /redoc headless to prove they work offline.
APT_PACKAGES=(build-essential pkg-config unzip curl openssl tmux procps systemd python3-venv
  prometheus wrk nginx-light chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt packages present"
fi

# --- libtorch from the pip wheel (CPU subset) -------------------------------
LT="$DEPS/libtorch"
if [ -f "$LT/.complete-$TORCH_VERSION" ]; then
  say "libtorch $TORCH_VERSION present in $LT"
else
  say "fetching torch==$TORCH_VERSION wheel (cached in $CACHE/wheels)"
  PY="$(command -v python3)"
  "$PY" -m pip download --no-deps -q -d "$CACHE/wheels" \
    "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"
  rm -rf "$LT" "$DEPS/unpack"
  mkdir -p "$LT/lib" "$DEPS/unpack"
  whl=""
  for f in "$CACHE"/wheels/torch-"$TORCH_VERSION"-*x86_64.whl; do whl="$f"; done
  [ -f "$whl" ] || { say "torch wheel not found in $CACHE/wheels"; exit 1; }
  unzip -q -o "$whl" 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libc10.so' \
    'torch/lib/libgomp*' 'torch/lib/libshm.so' -d "$DEPS/unpack"
  unzip -q -o "$CACHE"/wheels/nvidia_cuda_runtime-"$CUDART_VERSION"-*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$DEPS/unpack"
  unzip -q -o "$CACHE"/wheels/nvidia_cuda_cupti-"$CUPTI_VERSION"-*.whl 'nvidia/cu13/lib/libcupti.so.13' -d "$DEPS/unpack"
  mv "$DEPS/unpack/torch/include" "$LT/include"
  mv "$DEPS"/unpack/torch/lib/*.so* "$DEPS"/unpack/nvidia/cu13/lib/*.so* "$LT/lib/"
  (cd "$LT/lib" && ln -sf libgomp.so.1 libgomp.so)
  # The wheel's libtorch.so drags in libtorch_cuda (cuDNN, cuBLAS...). A stub that only
  # depends on libtorch_cpu satisfies tch's -ltorch on hosts without a GPU.
  echo 'void warden_libtorch_stub(void) {}' > "$DEPS/unpack/stub.c"
  gcc -shared -fPIC -o "$LT/lib/libtorch.so" "$DEPS/unpack/stub.c" \
    -Wl,--no-as-needed -L"$LT/lib" -ltorch_cpu -lc10 -Wl,-rpath,'$ORIGIN'
  echo "$TORCH_VERSION" > "$LT/build-version"
  rm -rf "$DEPS/unpack"
  touch "$LT/.complete-$TORCH_VERSION"
  say "libtorch $TORCH_VERSION (CPU) installed in $LT ($(du -sh "$LT" | cut -f1))"
fi

# --- Python venv: moto (the AWS emulator) and schemathesis (API fuzzing) ----------
VENV="$DEPS/venv"
venv_ok() {
  [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/st" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import sys, importlib.metadata as m
sys.exit(not (m.version("moto") == "$MOTO_VERSION" and m.version("schemathesis") == "$SCHEMATHESIS_VERSION"))
PY
}
if venv_ok; then
  say "venv with moto $MOTO_VERSION and schemathesis $SCHEMATHESIS_VERSION present in $VENV"
else
  say "creating venv with moto[server]==$MOTO_VERSION and schemathesis==$SCHEMATHESIS_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
  say "venv ready in $VENV"
fi

say "done"
