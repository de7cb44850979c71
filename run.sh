#!/usr/bin/env bash
# Open the viewer on the bundled sample study with the bundled default model.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
scripts/setup-system.sh
exec cargo run --bin lofi-viewer -- --model models/lofi-tiny assets/sample-study "$@"
