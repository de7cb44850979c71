#!/usr/bin/env python3
"""Derive the bundled model's tokenizer from all-MiniLM-L6-v2's WordPiece tokenizer so that
numbers are spelt digit by digit, as Gemma 3's tokenizer does.

The stock vocabulary holds 446 of the integers 0-1000 as single tokens and splits the rest into
two pieces ("426" -> "42", "##6"), so the box coordinates of `[[x1,y1,x2,y2]]` were a mix of
1,001-way and irregular two-piece predictions. Every multi-digit entry ("184", "##26") is renamed
to an unmatchable "[num:...]" string (ids and vocabulary size unchanged), so WordPiece falls back
to one digit per token: "426" -> "4", "##2", "##6", which decodes back to "426". Standard library
only:  scripts/make-digit-tokenizer.py SRC_TOKENIZER_JSON DST_TOKENIZER_JSON
"""
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)
vocab = tok["model"]["vocab"]
renamed = {}
for piece, idx in vocab.items():
    bare = piece[2:] if piece.startswith("##") else piece
    if len(bare) > 1 and bare.isdigit():
        renamed[piece] = f"[num:{piece}]"
for d in [str(i) for i in range(10)]:
    assert d in vocab and "##" + d in vocab, f"digit {d} missing from the vocabulary"
tok["model"]["vocab"] = {renamed.get(p, p): i for p, i in vocab.items()}
with open(dst, "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=1)
print(f"renamed {len(renamed)} multi-digit pieces; vocabulary size {len(vocab)}")
