#!/usr/bin/env bash
# Build lofi-viewer with `--features cuda` on a machine without a GPU or a CUDA install: nvcc, the
# CUDA headers and the runtime come from NVIDIA's PyPI wheels (CUDA 13.0, matching the lent GPU
# machines' driver 580), unpacked into a CUDA root under ~/.cache. The kernels are compiled for
# CUDA_COMPUTE_CAP (default 90: H100/H200). candle links cudarc dynamically, so the release link
# (`build`) also needs cuBLAS, cuRAND and NVRTC (their PyPI wheels, pinned in
# scripts/cuda-link-wheels.sha256) and the driver's libcuda.so.1, which no wheel ships: a stub
# with the driver API's names (from cudarc's bindings) stands in for it at link time only. At
# run time the binary needs the real driver and those libraries on the loader path (on the GPU
# machine: torch's nvidia wheels, see scripts/device-check.sh).
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
link_libraries() {
  local lw=$ROOT/link-wheels
  if [ ! -e "$CU/lib/libcublas.so" ] || [ ! -e "$CU/lib/libcurand.so" ] || [ ! -e "$CU/lib/libnvrtc.so" ]; then
    mkdir -p "$lw"
    for p in nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88; do
      "$ROOT/venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$lw" "$p"
    done
    ( cd "$lw" && sha256sum -c "$OLDPWD/scripts/cuda-link-wheels.sha256" )
    for w in "$lw"/*.whl; do python3 -m zipfile -e "$w" "$ROOT"; done
    for l in cublas cublasLt curand nvrtc; do
      ln -sf "$(basename "$(ls "$CU"/lib/lib$l.so.[0-9]* | head -1)")" "$CU/lib/lib$l.so"
    done
  fi
  # the driver stub: every cu* entry point cudarc's driver bindings name, as empty functions
  local stub=$ROOT/stubs
  if [ ! -e "$stub/libcuda.so" ]; then
    mkdir -p "$stub"
    local bindings
    bindings=$(cargo metadata --features cuda --format-version 1 2>/dev/null | python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc"))' | xargs dirname)/src/driver/sys/mod.rs
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' "$bindings" | tr -d ' (' | sort -u | sed 's/.*/void &(void) {}/' > "$stub/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/cuda_stub.c"
  fi
  export LIBRARY_PATH=$stub:$LIBRARY_PATH
}
case $MODE in
  check) cargo check --no-default-features --features cuda --bin lofi-viewer ;;
  build) link_libraries
         cargo build --release --no-default-features --features cuda --bin lofi-viewer
         echo "built $CARGO_TARGET_DIR/release/lofi-viewer" ;;
  *) echo "usage: $0 check|build" >&2; exit 2 ;;
esac
