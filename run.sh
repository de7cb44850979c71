#!/usr/bin/env bash
# Open the viewer on the bundled sample study with the bundled default model (first run: system
# packages, the build, and the pretrained base weights imported by scripts/setup-weights.sh).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
scripts/setup-system.sh
cargo build --bin lofi-viewer
scripts/setup-weights.sh "$CARGO_TARGET_DIR/debug/lofi-viewer"
exec "$CARGO_TARGET_DIR/debug/lofi-viewer" --model models/lofi-dino assets/sample-study "$@"
