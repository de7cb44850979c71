#!/usr/bin/env bash
# Reproduce the bundled default model models/lofi-dino from ../shared/data/nih-train-512 on CPU:
#  1. import the pretrained base weights (scripts/setup-weights.sh) and the NIH layout;
#  2. split: patient-level validation (15 %, seed 0, measured once at the end) and, inside the
#     training split, a development slice (15 % of its patients, seed 1) for every choice;
#  3. stage 1 (configs/lofi-dino.toml) and stage 2 (configs/lofi-dino-icl.toml) on the training
#     split minus the development slice, DINOv2 frozen at 448 px with cached tokens;
#  4. the presence threshold chosen on the development slice;
#  5. store f16 (MODEL_CARD.md stays as written), evaluate on validation with the baselines, and
#     rebuild the demo prior store (scripts/build-demo-priors.sh).
#   scripts/train-default-model.sh [NIH_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
NIH=${1:-../shared/data/nih-train-512}
RUN=${2:-runs/lofi-dino}
cargo build --release --no-default-features --bin lofi-viewer
LV=$CARGO_TARGET_DIR/release/lofi-viewer
scripts/setup-weights.sh "$LV"
mkdir -p data "$RUN"
"$LV" --headless import-nih "$NIH" --out data/nih-train-512.jsonl
"$LV" --headless split --data data/nih-train-512.jsonl --fraction 0.15 --seed 0 \
  --out-a "$RUN/train.jsonl" --out-b "$RUN/val.jsonl"
"$LV" --headless split --data "$RUN/train.jsonl" --fraction 0.15 --seed 1 \
  --out-a "$RUN/fit.jsonl" --out-b "$RUN/dev.jsonl"
"$LV" --headless finetune --config configs/lofi-dino.toml --data "$RUN/fit.jsonl" \
  --val "$RUN/dev.jsonl" --out "$RUN/stage1"
"$LV" --headless finetune --config configs/lofi-dino-icl.toml --init "$RUN/stage1/model" \
  --data "$RUN/fit.jsonl" --val "$RUN/dev.jsonl" --out "$RUN/stage2"
"$LV" --headless convert "$RUN/stage2/model" models/lofi-dino --dtype f16
M=models/lofi-dino
"$LV" --headless --model $M calibrate-presence --data "$RUN/dev.jsonl" --write \
  > "$RUN/presence-threshold.json"
mkdir -p "$RUN/eval"
for field in phrase phrase_basic; do
  "$LV" --headless --model $M eval --data "$RUN/val.jsonl" --phrase-field $field \
        --baseline-from "$RUN/train.jsonl" > "$RUN/eval/val-$field.json"
done
"$LV" --headless --model $M eval --data "$RUN/val.jsonl" --shots 3 --shots-from "$RUN/train.jsonl" \
      > "$RUN/eval/val-phrase-shots3.json"
"$LV" --headless --model $M eval --data "$RUN/val.jsonl" --shots 3 --shots-from "$RUN/train.jsonl" \
      --phrase-field phrase_basic > "$RUN/eval/val-phrase_basic-shots3.json"
echo "evaluation in $RUN/eval/" >&2
scripts/build-demo-priors.sh "$LV"
