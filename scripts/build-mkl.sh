#!/usr/bin/env bash
# Build lofi-viewer with `--features mkl`: candle's CPU matmuls and vector math through Intel MKL,
# linked statically with Intel OpenMP, so the binary needs no MKL at run time. MKL, its headers
# and libiomp5 come from Intel's PyPI wheels (pinned, checked against scripts/mkl-wheels.sha256),
# unpacked into an MKLROOT under ~/.cache (about 1.1 GB of static libraries). intel-mkl-src finds
# them through MKLROOT; it never downloads anything when they are there.
#   scripts/build-mkl.sh          # release binary at $CARGO_TARGET_DIR/release/lofi-viewer
#   scripts/build-mkl.sh env      # only set up MKLROOT and print it
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${LOFI_MKL_ROOT:-$HOME/.cache/lofi-mkl}
PKGS=("mkl-static==2026.2.0" "mkl-include==2026.2.1" "intel-openmp==2026.2.0")
if [ ! -f "$ROOT/lib/libmkl_core.a" ] || [ ! -f "$ROOT/lib/libiomp5.a" ] || [ ! -f "$ROOT/include/mkl.h" ]; then
  WHEELS=$ROOT/wheels
  mkdir -p "$WHEELS" "$ROOT/unpack"
  for p in "${PKGS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "$p"
  done
  ( cd "$WHEELS" && sha256sum -c "$OLDPWD/scripts/mkl-wheels.sha256" )
  for w in "$WHEELS"/*.whl; do python3 -m zipfile -e "$w" "$ROOT/unpack"; done
  mkdir -p "$ROOT/lib" "$ROOT/include"
  for d in "$ROOT"/unpack/*.data/data; do
    [ -d "$d/lib" ] && cp -a "$d/lib/." "$ROOT/lib/"
    [ -d "$d/include" ] && cp -a "$d/include/." "$ROOT/include/"
  done
  rm -rf "$ROOT/unpack" "$WHEELS"
  # intel-mkl-src asks for `-liomp5`; with only the archive there the linker takes it, and the
  # binary does not need libiomp5.so at run time
  rm -f "$ROOT"/lib/*.so "$ROOT"/lib/*.so.*
fi
export MKLROOT=$ROOT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target-mkl}
case ${1:-build} in
  env) echo "MKLROOT=$MKLROOT" ;;
  build) cargo build --release --no-default-features --features mkl --bin lofi-viewer
         echo "built $CARGO_TARGET_DIR/release/lofi-viewer" ;;
  *) echo "usage: $0 [build|env]" >&2; exit 2 ;;
esac
