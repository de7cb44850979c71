#!/usr/bin/env bash
# Benchmarks against Python peers: installs PyTorch + transformers + faiss-cpu from PyPI into a
# venv outside the clone, builds our release binary, then runs both comparisons.
#   benches/run_peers.sh model IMAGE      # candle vs HF transformers (CPU), all presets
#   benches/run_peers.sh store            # our HNSW vs FAISS HNSW, same vectors and parameters
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
VENV=${LOFI_BENCH_VENV:-$HOME/.cache/lofi-bench-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import torch, transformers, faiss, numpy" 2>/dev/null ||
  "$VENV/bin/pip" install -q torch transformers faiss-cpu numpy safetensors
cargo build --release --no-default-features --bin lofi-viewer
EXE=$CARGO_TARGET_DIR/release/lofi-viewer
what=${1:-model}; shift || true
case $what in
  model) "$VENV/bin/python" benches/model_vs_torch.py --exe "$EXE" --image "${1:-tests/fixtures/nih/images/00000032_037.png}" "${@:2}" ;;
  store) "$VENV/bin/python" benches/store_vs_faiss.py --exe "$EXE" "$@" ;;
  *) echo "usage: $0 model [IMAGE] | store" >&2; exit 2 ;;
esac
