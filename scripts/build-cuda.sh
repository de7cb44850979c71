#!/usr/bin/env bash
# Build lofi-viewer with `--features cuda` on a machine without a GPU or a CUDA install: nvcc, the
# CUDA headers and the runtime come from NVIDIA's PyPI wheels (CUDA 13.0, matching the lent GPU
# machines' driver 580), unpacked into a CUDA root under ~/.cache. The kernels are compiled for
# CUDA_COMPUTE_CAP (default 90: H100/H200). cudarc loads libcuda/cuBLAS at run time, so linking
# needs no driver.
#   scripts/build-cuda.sh check      # cargo check --features cuda (what check.sh could run)
#   scripts/build-cuda.sh build      # release binary at $CARGO_TARGET_DIR/release/lofi-viewer
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-build}
ROOT=${LOFI_CUDA_ROOT:-$HOME/.cache/lofi-cuda-13.0}
WHEELS=$ROOT/wheels
# pinned versions; the wheels are checked against scripts/cuda-wheels.sha256
PKGS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
if [ ! -x "$ROOT/nvidia/cu13/bin/nvcc" ] || [ ! -x "$ROOT/nvidia/cu13/nvvm/bin/cicc" ]; then
  mkdir -p "$WHEELS"
  VENV=$ROOT/venv
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  for p in "${PKGS[@]}"; do
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$WHEELS" "$p"
  done
  ( cd "$WHEELS" && sha256sum -c "$OLDPWD/scripts/cuda-wheels.sha256" )
  for w in "$WHEELS"/*.whl; do python3 -m zipfile -e "$w" "$ROOT"; done
  chmod -R u+x "$ROOT/nvidia/cu13/bin" "$ROOT/nvidia/cu13/nvvm/bin"
fi
CU=$ROOT/nvidia/cu13
# candle-kernels links its static MoE kernels against libcudart: give the linker the unversioned
# name (at run time the binary needs libcudart.so.13, which the wheel also provides)
[ -e "$CU/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CU/lib/libcudart.so"
export LIBRARY_PATH=$CU/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export PATH=$CU/bin:$PATH
export CUDA_ROOT=$CU CUDA_PATH=$CU CUDA_HOME=$CU
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target-cuda}
nvcc --version | tail -2
case $MODE in
  check) cargo check --no-default-features --features cuda --bin lofi-viewer ;;
  build) cargo build --release --no-default-features --features cuda --bin lofi-viewer
         echo "built $CARGO_TARGET_DIR/release/lofi-viewer" ;;
  *) echo "usage: $0 check|build" >&2; exit 2 ;;
esac
