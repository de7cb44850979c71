#!/usr/bin/env python3
"""The ANN study, ANN-benchmarks style: recall@10 against queries per second, sweeping efSearch,
for every candidate on the same vectors, one thread each, ground truth computed outside any timing.

Datasets (written once to --data, reused): N unit vectors of the model's embedding size (384,
DINOv2-small), `random` (isotropic Gaussian, the hardest case) and `clustered` (a Gaussian
mixture, N/1000 components; what image embeddings look like), 1,000 queries from the same
distribution, not in the base set. Exact top-10 by FAISS IndexFlatIP with all threads.

Candidates: the Rust ones through benches/ann (ours, usearch, hnsw_rs, exact scan), FAISS
IndexHNSWFlat and IndexFlatIP in this process, all with omp/threads = 1 and the same M and
efConstruction. Prints one markdown table per dataset and writes every curve to --out.
    benches/run_peers.sh ann [--sizes 100000,1000000] [--kinds random,clustered]"""
import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import faiss
import numpy as np


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make(kind, n, nq, dim, rng):
    if kind == "random":
        return unit(rng.standard_normal((n, dim), dtype=np.float32)), unit(
            rng.standard_normal((nq, dim), dtype=np.float32))
    k = max(n // 1000, 10)
    centres = unit(rng.standard_normal((k, dim), dtype=np.float32))

    def draw(m):
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            c = centres[rng.integers(0, k, e - s)]
            out[s:e] = unit(c + 0.6 * rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim))
        return out
    return draw(n), draw(nq)


def dataset(root, kind, n, nq, dim):
    d = Path(root) / f"{kind}-{n}-{dim}"
    if (d / "meta.json").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261204 + n + (kind == "clustered"))
    base, q = make(kind, n, nq, dim, rng)
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    faiss.omp_set_num_threads(os.cpu_count())
    _, truth = flat.search(q, 10)
    base.astype("<f4").tofile(d / "base.f32")
    q.astype("<f4").tofile(d / "queries.f32")
    truth.astype("<u4").tofile(d / "truth.u32")
    (d / "meta.json").write_text(json.dumps({"kind": kind, "n": n, "dim": dim, "queries": nq}))
    return d


def sweep(search, q, truth, efs, set_ef):
    pts = []
    for ef in efs:
        set_ef(ef)
        t = time.perf_counter()
        got = [search(q[i:i + 1]) for i in range(len(q))]  # one query at a time, as a viewer asks
        secs = time.perf_counter() - t
        hits = sum(len(set(g) & set(truth[i])) for i, g in enumerate(got))
        pts.append({"ef": ef, "qps": len(q) / secs, "recall": hits / (10 * len(q))})
    return pts


def faiss_hnsw(d, m, efc, efs):
    meta = json.loads((d / "meta.json").read_text())
    dim = meta["dim"]
    base = np.fromfile(d / "base.f32", dtype="<f4").reshape(-1, dim)
    q = np.fromfile(d / "queries.f32", dtype="<f4").reshape(-1, dim)
    truth = np.fromfile(d / "truth.u32", dtype="<u4").reshape(-1, 10)
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    idx = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = efc
    idx.add(base)
    build = time.perf_counter() - t0
    pts = sweep(lambda x: idx.search(x, 10)[1][0], q, truth, efs,
                lambda ef: setattr(idx.hnsw, "efSearch", ef))
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    flat_pts = sweep(lambda x: flat.search(x, 10)[1][0], q, truth, efs[:1], lambda ef: None)
    return ({"lib": "FAISS HNSW", "build_s": build, "points": pts},
            {"lib": "FAISS flat", "build_s": 0.0, "points": flat_pts})


def best(r, floor):
    ok = [p for p in r["points"] if p["recall"] >= floor]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True, help="the benches/ann binary")
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/lofi-ann-data"))
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--kinds", default="clustered,random")
    ap.add_argument("--libs", default="ours,usearch,hnsw_rs,exact")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="10,20,40,80,160,320,640")
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--out", default="ann-study.json")
    a = ap.parse_args()
    efs = [int(x) for x in a.ef.split(",")]
    results = []
    for n in map(int, a.sizes.split(",")):
        for kind in a.kinds.split(","):
            d = dataset(a.data, kind, n, a.queries, a.dim)
            rows = []
            for lib in a.libs.split(","):  # one thread: pinned to one core
                out = subprocess.run(["taskset", "-c", "0", a.study, str(d), lib, "--m", str(a.m),
                                      "--ef-construction", str(a.ef_construction), "--ef", a.ef],
                                     check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out))
                print(f"  {kind} {n}: {lib} built in {rows[-1]['build_s']:.1f} s", flush=True)
            os.sched_setaffinity(0, {0})
            rows.extend(faiss_hnsw(d, a.m, a.ef_construction, efs))
            os.sched_setaffinity(0, set(range(os.cpu_count())))
            results.append({"kind": kind, "n": n, "dim": a.dim, "rows": rows})
            Path(a.out).write_text(json.dumps(results, indent=1))
            fb = best(next(r for r in rows if r["lib"] == "FAISS HNSW"), a.floor)
            fbuild = next(r for r in rows if r["lib"] == "FAISS HNSW")["build_s"]
            print(f"\n{kind}, {n:,} × {a.dim}-d, {a.queries} queries, M {a.m}, efConstruction "
                  f"{a.ef_construction}, one thread each (taskset -c 0):\n")
            print(f"| index | QPS at recall@10 ≥ {a.floor} | efSearch | recall@10 there | "
                  f"QPS ÷ FAISS HNSW | build s | build ÷ FAISS | best recall@10 |")
            print("|---|---|---|---|---|---|---|---|")
            for r in rows:
                b = best(r, a.floor)
                top = max(p["recall"] for p in r["points"])
                ratio = f"{b['qps'] / fb['qps']:.2f}" if b and fb else "—"
                bratio = f"{r['build_s'] / fbuild:.2f}" if r["build_s"] > 0 else "—"
                print(f"| {r['lib']} | {b['qps']:,.0f} | {b['ef'] if 'flat' not in r['lib'] and r['lib'] != 'exact' else '—'} | "
                      f"{b['recall']:.3f} | {ratio} | {r['build_s']:.1f} | {bratio} | {top:.3f} |"
                      if b else f"| {r['lib']} | not reached | — | — | — | {r['build_s']:.1f} | {bratio} | {top:.3f} |")
            print(flush=True)


if __name__ == "__main__":
    main()
