#!/usr/bin/env python3
"""Search latency (p50/p99) and recall@10 of our HNSW against FAISS HNSW (faiss-cpu) with the same
parameters on the same vectors, same machine, same run. Usage: benches/store_vs_faiss.sh."""
import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np


def faiss_run(base, queries, m, efc, efs):
    d = base.shape[1]
    t0 = time.perf_counter()
    idx = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = efc
    idx.add(base)
    build_s = time.perf_counter() - t0
    idx.hnsw.efSearch = efs
    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    _, truth = exact.search(queries, 10)
    lat, hits = [], 0
    for i in range(len(queries)):  # one query at a time, as a viewer asks
        s = time.perf_counter()
        _, got = idx.search(queries[i : i + 1], 10)
        lat.append((time.perf_counter() - s) * 1e6)
        hits += len(set(got[0]) & set(truth[i]))
    lat.sort()
    p = lambda f: lat[round((len(lat) - 1) * f)]
    return {"build_s": build_s, "p50_us": p(0.5), "p99_us": p(0.99), "recall@10": hits / (10 * len(queries))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", required=True)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    rows = []
    for n in map(int, a.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            ours = json.loads(subprocess.run(
                [a.exe, "--headless", "bench", "store", "--n", str(n), "--dim", str(a.dim),
                 "--queries", str(a.queries), "--m", str(a.m), "--ef-construction", str(a.ef_construction),
                 "--ef-search", str(a.ef_search), "--export", tmp],
                check=True, capture_output=True, text=True).stdout)
            base = np.fromfile(Path(tmp) / "base.f32", dtype="<f4").reshape(n, a.dim)
            q = np.fromfile(Path(tmp) / "queries.f32", dtype="<f4").reshape(a.queries, a.dim)
        theirs = faiss_run(base, q, a.m, a.ef_construction, a.ef_search)
        rows.append({"n": n, "ours": ours, "faiss": theirs})
    print(f"| vectors ({a.dim}-d) | ours p50 µs | FAISS p50 µs | p50 ratio | ours p99 µs | FAISS p99 µs | p99 ratio | ours recall@10 | FAISS recall@10 | build ours s | build FAISS s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, f = r["ours"], r["faiss"]
        print(f"| {r['n']:,} | {o['p50_us']:.0f} | {f['p50_us']:.0f} | {o['p50_us']/f['p50_us']:.2f} | {o['p99_us']:.0f} | "
              f"{f['p99_us']:.0f} | {o['p99_us']/f['p99_us']:.2f} | {o['recall@10']:.3f} | {f['recall@10']:.3f} | "
              f"{o['build_s']:.1f} | {f['build_s']:.1f} |")


if __name__ == "__main__":
    main()
