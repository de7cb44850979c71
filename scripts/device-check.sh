#!/usr/bin/env bash
# The one prepared GPU check of issue 17, for a lent device (one call, well under its limit):
#   scripts/device-check.sh BIN [DEVICE]
# BIN is a lofi-viewer built by scripts/build-cuda.sh (carried to the device, stripped); DEVICE is
# cuda by default (`cpu` makes it a dry run on any machine, which is how it is tested here).
#   1. CPU vs DEVICE parity on the bundled model: image and text embeddings within 1e-3, the
#      same boxes (to the pixel) for a grounding query;
#   2. embed/ground latency on DEVICE (bench model, bundled model and the lofi-base preset,
#      11 runs) and, where PyTorch is installed, the HF transformers peer on the same device;
#   3. a short finetune on DEVICE (lofi-tiny config, 20 steps) with its steps per second.
# Results are JSON lines in ${OUT:-/tmp/lofi-device}/device-check.jsonl; the exit status is
# non-zero when parity fails.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: scripts/device-check.sh BIN [DEVICE]}
DEV=${2:-cuda}
OUTDIR=${OUT:-/tmp/lofi-device}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/device-check.jsonl
: > "$LOG"
IMG=tests/fixtures/nih/images/00005066_030.png
# the CUDA build links cuBLAS, cuRAND and the CUDA runtime dynamically (13.x sonames): take them
# from the nvidia wheels that come with the device's torch, next to the driver's libcuda.so.1
NVLIB=$(python3 -c 'import nvidia, os; print(":".join(sorted(os.path.join(r, d) for p in nvidia.__path__ for r, ds, _ in os.walk(p) for d in ds if d == "lib")))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${NVLIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN" | grep -q "not found"; then
  echo "{\"step\":\"info\",\"missing_libraries\":\"$(ldd "$BIN" | grep "not found" | awk '{print $1}' | tr '\n' ' ')\"}" >> "$LOG"
fi
STORE=$(mktemp -d)
run() { "$BIN" --headless --store "$STORE/st" "$@"; }
echo "{\"step\":\"info\",\"device\":\"$DEV\",\"nvidia_smi\":\"$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)\"}" >> "$LOG"

# 1. parity
for d in cpu "$DEV"; do
  run --device "$d" embed --image "$IMG" > "$OUTDIR/embed-$d.json"
  run --device "$d" embed --text "left pleural effusion" > "$OUTDIR/text-$d.json"
  run --device "$d" ground --image "$IMG" --phrase cardiomegaly > "$OUTDIR/ground-$d.json"
done
set +e
python3 - "$OUTDIR" "$DEV" >> "$LOG" <<'PY'
import json, sys
out, dev = sys.argv[1], sys.argv[2]
def load(n, d): return json.load(open(f"{out}/{n}-{d}.json"))
diff = lambda a, b: max(abs(x - y) for x, y in zip(a, b))
ei = diff(load("embed", "cpu")["embedding"], load("embed", dev)["embedding"])
et = diff(load("text", "cpu")["embedding"], load("text", dev)["embedding"])
box = lambda g: [[round(b[k]) for k in ("x1", "y1", "x2", "y2")] for b in g["boxes"]]
gc, gd = load("ground", "cpu"), load("ground", dev)
ok = ei < 1e-3 and et < 1e-3 and box(gc) == box(gd)
print(json.dumps({"step": "parity", "device": dev, "image_embedding_max_abs_diff": ei,
                  "text_embedding_max_abs_diff": et, "boxes_cpu": box(gc), "boxes_device": box(gd),
                  "ok": ok}))
sys.exit(0 if ok else 1)
PY
parity=$?
set -e

# 2. latency (ours; then the PyTorch peer when torch is there)
for m in "--model-dir models/lofi-dino" "--preset lofi-base"; do
  # shellcheck disable=SC2086
  run --device "$DEV" bench model $m --image "$IMG" --runs 11 --new-tokens 16 |
    python3 -c "import json,sys; d=json.load(sys.stdin); d.pop('config',None); d['step']='latency'; d['device']='$DEV'; print(json.dumps(d))" >> "$LOG"
done
if python3 -c "import torch, transformers" 2>/dev/null; then
  python3 benches/model_vs_torch.py --exe "$BIN" --image "$IMG" --presets lofi-base --runs 11 \
    --rounds 2 --threads "$(nproc)" --device "$DEV" --json "$OUTDIR/torch.json" > /dev/null &&
    python3 -c "import json; d=json.load(open('$OUTDIR/torch.json')); print(json.dumps({'step':'torch','result':d}))" >> "$LOG"
else
  echo '{"step":"torch","skipped":"torch/transformers not installed"}' >> "$LOG"
fi

# 3. a short finetune with steps per second (the NIH fixture: 3 images, 5 boxes)
run import-nih tests/fixtures/nih --out "$OUTDIR/nih.jsonl" > /dev/null
s0=$(date +%s.%N)
run --device "$DEV" finetune --config configs/lofi-tiny.toml --data "$OUTDIR/nih.jsonl" \
  --out "$OUTDIR/ft" --steps 20 --batch-size 4 --save-every 20 > "$OUTDIR/finetune.json" 2> "$OUTDIR/finetune.err" || true
s1=$(date +%s.%N)
python3 -c "
import json
try: d = json.load(open('$OUTDIR/finetune.json'))
except Exception as e: d = {'error': str(e), 'stderr': open('$OUTDIR/finetune.err').read()[-400:]}
print(json.dumps({'step': 'finetune', 'device': '$DEV', 'steps': 20, 'wall_s': $s1 - $s0,
                  'steps_per_s_wall': 20 / ($s1 - $s0), 'summary': d}))" >> "$LOG"
cat "$LOG"
exit "$parity"
