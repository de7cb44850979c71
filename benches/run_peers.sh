#!/usr/bin/env bash
# Benchmarks against named peers, one command per README table. Python peers (PyTorch +
# transformers, faiss-cpu) go into a venv outside the clone; our release binary is built first.
#   benches/run_peers.sh model [IMAGE [ARGS]]  # candle (default and mkl builds) vs HF transformers,
#                                        #   CPU, interleaved (model_vs_torch.py --help for ARGS)
#   benches/run_peers.sh ann [ARGS]      # the ANN study: ours, usearch, hnsw_rs, exact scan, FAISS
#                                        #   (benches/ann_study.py --help for ARGS)
#   benches/run_peers.sh dicom [FILES]   # file → pixels vs dcmtk and GDCM, interleaved, 1-core column
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
VENV=${LOFI_BENCH_VENV:-$HOME/.cache/lofi-bench-venv}
what=${1:-model}; shift || true
venv() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -c "import $1" 2>/dev/null || "$VENV/bin/pip" install -q "${@:2}"
}
cargo build --release --no-default-features --bin lofi-viewer
EXE=$CARGO_TARGET_DIR/release/lofi-viewer
case $what in
  model)
    # both builds of ours, interleaved with PyTorch in one run: the default and `--features mkl`
    # (scripts/build-mkl.sh: MKL from PyPI wheels, its own target folder); LOFI_BENCH_MKL=0 skips mkl
    MKL_ARGS=()
    if [ "${LOFI_BENCH_MKL:-1}" != 0 ]; then
      CARGO_TARGET_DIR=${LOFI_MKL_TARGET:-$HOME/.cache/lofi-target-mkl} scripts/build-mkl.sh >&2
      MKL_ARGS=(--exe "mkl=${LOFI_MKL_TARGET:-$HOME/.cache/lofi-target-mkl}/release/lofi-viewer")
    fi
    venv "torch, transformers, numpy, PIL" torch transformers numpy safetensors pillow
    "$VENV/bin/python" benches/model_vs_torch.py --exe "default=$EXE" "${MKL_ARGS[@]}" \
      --image "${1:-tests/fixtures/nih/images/00005066_030.png}" "${@:2}" ;;
  ann)
    venv "faiss, numpy" faiss-cpu numpy
    (cd benches/ann && cargo build --release)
    "$VENV/bin/python" benches/ann_study.py --study "$CARGO_TARGET_DIR/release/lofi-ann-study" "$@" ;;
  dicom)
    scripts/setup-system.sh >/dev/null
    "$EXE" --headless bench dicom "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["markdown"])' ;;
  *) echo "usage: $0 model [IMAGE] | ann [ARGS] | dicom [FILES]" >&2; exit 2 ;;
esac
