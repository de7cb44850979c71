#!/usr/bin/env bash
# Reproduce the bundled default model models/lofi-tiny from ../shared/data/nih-train-512 on CPU:
# import the NIH layout, train in three stages (configs/lofi-tiny.toml: everything, 1,500 steps;
# configs/lofi-tiny-ground.toml: decoder side on a grounding-heavy mix, 600 steps, encoder frozen;
# configs/lofi-tiny-icl.toml: the same plus in-context examples, 300 steps, encoder frozen),
# store the weights as f16 with the model card, and evaluate on the run's patient-level
# validation split (with both baselines, the raw-pixel retrieval baseline, K = 3 in-context shots
# from the training split, and K = 3 box fusion).
#   scripts/train-default-model.sh [NIH_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
NIH=${1:-../shared/data/nih-train-512}
RUN=${2:-runs/lofi-tiny}
RUN2=$RUN-ground
RUN3=$RUN-icl
cargo build --release --no-default-features --bin lofi-viewer
LV=$CARGO_TARGET_DIR/release/lofi-viewer
mkdir -p data
"$LV" --headless import-nih "$NIH" --out data/nih-train-512.jsonl
"$LV" --headless finetune --config configs/lofi-tiny.toml --data data/nih-train-512.jsonl --out "$RUN"
"$LV" --headless finetune --config configs/lofi-tiny-ground.toml --init "$RUN/model" \
  --data data/nih-train-512.jsonl --out "$RUN2"
"$LV" --headless finetune --config configs/lofi-tiny-icl.toml --init "$RUN2/model" \
  --data data/nih-train-512.jsonl --out "$RUN3"
"$LV" --headless convert "$RUN3/model" models/lofi-tiny --dtype f16   # MODEL_CARD.md stays as written
RUN=$RUN3   # same patient-level split (seed 0, 15 %)
M=models/lofi-tiny
mkdir -p "$RUN/eval"
for field in phrase phrase_basic; do
  "$LV" --headless --model $M eval --data "$RUN/val.jsonl" --phrase-field $field \
        --baseline-from "$RUN/train.jsonl" > "$RUN/eval/val-$field.json"
done
"$LV" --headless --model $M eval --data "$RUN/val.jsonl" --shots 3 --shots-from "$RUN/train.jsonl" \
      > "$RUN/eval/val-phrase-shots3.json"
"$LV" --headless --model $M eval --data "$RUN/val.jsonl" --shots 3 --shots-from "$RUN/train.jsonl" \
      --phrase-field phrase_basic > "$RUN/eval/val-phrase_basic-shots3.json"
"$LV" --headless --model $M eval --data "$RUN/val.jsonl" --shots 3 --shots-from "$RUN/train.jsonl" \
      --shot-mode fuse > "$RUN/eval/val-phrase-fuse3.json"
echo "evaluation in $RUN/eval/"
