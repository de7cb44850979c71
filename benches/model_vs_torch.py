#!/usr/bin/env python3
"""CPU latency of LoFi's `embed_image` and `ground`, ours (candle) against HF transformers
(PyTorch) running the same architecture and sizes, same machine, same run.

Usage: benches/run_peers.sh model (builds ours, creates the venv, then runs this file).

For each preset this script first runs `lofi-viewer --headless bench model --preset P`, which
prints our timings and the exact model config; it then builds the same towers in PyTorch with
random weights:
  * embed_image: SiglipVisionModel (MAP head) at the preset's image size;
  * ground: vision tower + a one-block MAP projector with M probes and the MLP, then
    Gemma3ForCausalLM.generate over the image prefix + prompt embeddings, greedy, KV cache,
    exactly as many new tokens as our run produced.
Both peers start from the same decoded 8-bit image and letterbox it to the model's size (ours:
`image`'s Lanczos3; PyTorch's peer: PIL's Lanczos), so they do the same work.
Peers interleaved in blocks: each round runs every build of ours given (`--exe LABEL=PATH`, e.g. the
default and the mkl build), then PyTorch, `--runs` timings each; a peer's figure is the median of
its per-round medians. Thread counts: both peers get the same (`--threads 2,1`: the second count
only for `--single-thread-presets`). Ratio = ours / PyTorch (below 1: we are faster).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from transformers import (Dinov2Config, Dinov2Model, Gemma3ForCausalLM, Gemma3TextConfig,
                          SiglipVisionConfig, SiglipVisionModel)
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead


DEVICE = "cpu"


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, runs):
    fn()  # warm-up
    sync()
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        fn()
        sync()
        t.append((time.perf_counter() - s) * 1000)
    return statistics.median(t)


class MapProjector(torch.nn.Module):
    """One MAP block with M probes, LayerNorm, MLP residual, then Linear-GELU-Linear."""

    def __init__(self, hidden, heads, m, mlp_hidden, out):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.randn(1, m, hidden) * 0.02)
        self.attn = torch.nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ln = torch.nn.LayerNorm(hidden)
        self.fc1 = torch.nn.Linear(hidden, mlp_hidden)
        self.fc2 = torch.nn.Linear(mlp_hidden, hidden)
        self.p1 = torch.nn.Linear(hidden, out)
        self.p2 = torch.nn.Linear(out, out)

    def forward(self, x):
        q = self.probe.expand(x.shape[0], -1, -1)
        h = self.attn(q, x, x, need_weights=False)[0]
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(h)), approximate="tanh"))
        return self.p2(torch.nn.functional.gelu(self.p1(h), approximate="tanh"))


class DinoWithHead(torch.nn.Module):
    """Dinov2Model (SDPA) whose patch tokens, less a fixed centre, feed SigLIP's MAP head: what
    our `dinov2` vision kind with `vision_use_head` computes."""

    def __init__(self, v, image_size):
        super().__init__()
        common = dict(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                      num_attention_heads=v["num_attention_heads"], layer_norm_eps=v["layer_norm_eps"])
        self.backbone = Dinov2Model(Dinov2Config(
            **common, mlp_ratio=v["intermediate_size"] // v["hidden_size"],
            num_hidden_layers=v["num_hidden_layers"], num_channels=3, image_size=v["image_size"],
            patch_size=v["patch_size"], hidden_act="gelu", attn_implementation="sdpa"))
        self.center = torch.nn.Parameter(torch.zeros(v["hidden_size"]))
        self.head = SiglipMultiheadAttentionPoolingHead(SiglipVisionConfig(**common, image_size=image_size))

    def forward(self, pixel_values):
        x = pixel_values.expand(-1, 3, -1, -1)
        h = self.backbone(pixel_values=x).last_hidden_state[:, 1:]
        return SimpleNamespace(last_hidden_state=h, pooler_output=self.head(h - self.center))


def torch_models(cfg):
    v = cfg["vision"]
    if v.get("kind") == "dinov2":
        vision = DinoWithHead(v, cfg["image_size"]).eval()
    else:
        vc = SiglipVisionConfig(
            hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
            num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
            num_channels=v["num_channels"], image_size=cfg["image_size"], patch_size=v["patch_size"],
            layer_norm_eps=v["layer_norm_eps"], vision_use_head=True,
        )
        vision = SiglipVisionModel(vc).eval()
    d = cfg["decoder"]
    dc = Gemma3TextConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
        head_dim=d["head_dim"], rms_norm_eps=d["rms_norm_eps"], rope_theta=d["rope_theta"],
        rope_local_base_freq=d["rope_local_base_freq"],
        query_pre_attn_scalar=d["query_pre_attn_scalar"], sliding_window=d["sliding_window"],
        sliding_window_pattern=d["sliding_window_pattern"],
        max_position_embeddings=d["max_position_embeddings"], attn_implementation="sdpa",
    )
    decoder = Gemma3ForCausalLM(dc).eval()
    p = cfg["projector"]
    proj = MapProjector(v["hidden_size"], p["num_heads"], p["num_tokens"], p["mlp_hidden"], d["hidden_size"]).eval()
    return vision, proj, decoder


def run_ours(exe, preset, image, runs, new_tokens, threads):
    """One `bench model` process: medians (and minima) of `runs` embeds and groundings."""
    which = ["--model-dir", preset] if Path(preset).is_dir() else ["--preset", preset]
    out = subprocess.run(
        [exe, "--headless", "--device", DEVICE, "bench", "model", *which, "--image", image,
         "--runs", str(runs), "--new-tokens", str(new_tokens), "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def bench_preset(exes, preset, image, runs, new_tokens, rounds, threads):
    """`preset` is a preset name (random weights) or a model folder (its own weights; the PyTorch
    peer is the same architecture with random weights, which costs the same). Each round runs
    every build of ours (`exes`, label → path) and then PyTorch, `runs` timings each, so the peers
    are interleaved in blocks (ours A, ours B, torch, ours A, …); the result per peer is the median
    of its per-round medians."""
    torch.set_num_threads(threads)
    first = run_ours(next(iter(exes.values())), preset, image, 1, new_tokens, threads)
    cfg = first["config"]
    vision, proj, decoder = (m.to(DEVICE) for m in torch_models(cfg))
    s = cfg["image_size"]
    channels = cfg["vision"]["num_channels"]
    gray = Image.open(image).convert("L")
    gray.load()

    def pixels():
        """What our `embed_image` does first: letterbox the decoded 8-bit image to s² with
        Lanczos (PIL's, in C), scale to [-1, 1], repeat to the tower's channels."""
        w, h = gray.size
        k = s / max(w, h)
        iw, ih = max(1, round(w * k)), max(1, round(h * k))
        sq = Image.new("L", (s, s))
        sq.paste(gray.resize((iw, ih), Image.LANCZOS), ((s - iw) // 2, (s - ih) // 2))
        t = torch.from_numpy(np.asarray(sq, dtype=np.float32)).to(DEVICE) / 127.5 - 1.0
        return t.expand(1, channels, s, s)
    n_new = max(1, first["new_tokens"])
    n_prompt = first["prompt_tokens"]
    hidden = cfg["decoder"]["hidden_size"]
    text_embeds = torch.randn(1, n_prompt - cfg["projector"]["num_tokens"], hidden, device=DEVICE)

    @torch.inference_mode()
    def embed():
        return vision(pixel_values=pixels()).pooler_output

    @torch.inference_mode()
    def ground():
        o = vision(pixel_values=pixels())
        prefix = proj(o.last_hidden_state)
        embeds = torch.cat([text_embeds[:, :4], prefix, text_embeds[:, 4:]], dim=1)
        return decoder.generate(
            inputs_embeds=embeds, max_new_tokens=n_new, min_new_tokens=n_new,
            do_sample=False, use_cache=True, pad_token_id=0,
        )

    per = {label: {"embed": [], "ground": []} for label in [*exes, "torch"]}
    for r in range(rounds):
        for label, exe in exes.items():
            o = run_ours(exe, preset, image, runs, new_tokens, threads)
            per[label]["embed"].append(o["embed_image_ms"])
            per[label]["ground"].append(o["ground_ms"])
        per["torch"]["embed"].append(median_ms(embed, runs))
        per["torch"]["ground"].append(median_ms(ground, runs))
        print(f"  {Path(preset).name} {threads}t round {r + 1}/{rounds}: "
              + ", ".join(f"{k} {v['embed'][-1]:.1f}/{v['ground'][-1]:.1f}" for k, v in per.items()),
              file=sys.stderr, flush=True)
    med = {k: {t: statistics.median(v[t]) for t in v} for k, v in per.items()}
    return [{
        "preset": Path(preset).name, "build": label, "threads": threads, "image_size": s,
        "new_tokens": n_new, "rounds": rounds, "runs": runs,
        "ours_embed_ms": med[label]["embed"], "torch_embed_ms": med["torch"]["embed"],
        "embed_ratio": med[label]["embed"] / med["torch"]["embed"],
        "ours_ground_ms": med[label]["ground"], "torch_ground_ms": med["torch"]["ground"],
        "ground_ratio": med[label]["ground"] / med["torch"]["ground"],
        "per_round": per,
    } for label in exes]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", required=True, action="append",
                    help="our binary, as PATH or LABEL=PATH (repeat to interleave several builds)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--presets", default="models/lofi-dino,lofi-tiny,lofi-base",
                    help="preset names or model folders, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="timings per peer and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", default="2,1",
                    help="thread counts, comma-separated (both peers use the same)")
    ap.add_argument("--single-thread-presets", default="models/lofi-dino,lofi-tiny",
                    help="presets that also get the thread counts after the first")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both peers on the same device)")
    ap.add_argument("--json", help="write the rows (with every round's medians) here")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    exes = {}
    for e in a.exe:
        label, _, path = e.rpartition("=")
        exes[label or "default"] = path
    threads = [int(t) for t in a.threads.split(",")]
    rows = []
    for p in a.presets.split(","):
        for i, t in enumerate(threads):
            if i == 0 or p in a.single_thread_presets.split(","):
                rows += bench_preset(exes, p, a.image, a.runs, a.new_tokens, a.rounds, t)
    print("| preset | build | threads | embed_image ours ms | PyTorch ms | ratio | ground ours ms | PyTorch ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['build']} | {r['threads']} | {r['ours_embed_ms']:.1f} | {r['torch_embed_ms']:.1f} | "
              f"{r['embed_ratio']:.2f} | {r['ours_ground_ms']:.1f} | {r['torch_ground_ms']:.1f} | {r['ground_ratio']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
