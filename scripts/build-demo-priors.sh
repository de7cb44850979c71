#!/usr/bin/env bash
# Rebuild the bundled demo prior store assets/demo-priors with the bundled model: the 1,229 NIH
# training images (../shared/data/nih-train-512) embedded, downscaled (256 px for the 620 with
# boxes, 128 px for the rest), with labels and boxes. Run it whenever models/lofi-dino changes:
# the store refuses embeddings of another model.
#   scripts/build-demo-priors.sh [LOFI_VIEWER_BINARY] [NIH_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LV=${1:-}
NIH=${2:-../shared/data/nih-train-512}
if [ -z "$LV" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
  cargo build --release --no-default-features --bin lofi-viewer
  LV=$CARGO_TARGET_DIR/release/lofi-viewer
fi
mkdir -p data
"$LV" --headless import-nih "$NIH" --out data/nih-train-512.jsonl
rm -rf assets/demo-priors.new
"$LV" --headless --model models/lofi-dino demo-priors --data data/nih-train-512.jsonl \
  --out assets/demo-priors.new
cp ../shared/data/README.md assets/demo-priors.new/NIH-README.md 2>/dev/null || true
rm -rf assets/demo-priors && mv assets/demo-priors.new assets/demo-priors
du -sh assets/demo-priors >&2
