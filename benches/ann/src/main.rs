//! One candidate index on one dataset written by `benches/ann_study.py`: build it (one thread,
//! timed), then for each efSearch answer every query one at a time (timed) and score recall@10
//! against the exact neighbours in `truth.u32` (computed outside any timing). Prints one JSON
//! object: `{lib, build_s, points: [{ef, qps, recall}]}`.
//!
//!   lofi-ann-study DIR ours|usearch|hnsw_rs|exact [--m 16] [--ef-construction 200] [--ef 10,20,…]

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

struct Data {
    dim: usize,
    base: Vec<f32>,
    queries: Vec<f32>,
    truth: Vec<u32>,
}

fn read_f32(p: &Path) -> Result<Vec<f32>> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn load(dir: &Path) -> Result<Data> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).context("meta.json")?)?;
    let dim = meta["dim"].as_u64().context("dim")? as usize;
    let truth = std::fs::read(dir.join("truth.u32"))?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Data {
        dim,
        base: read_f32(&dir.join("base.f32"))?,
        queries: read_f32(&dir.join("queries.f32"))?,
        truth,
    })
}

/// What every candidate offers: a k-NN answer for one query at one efSearch.
trait Candidate {
    fn search(&mut self, q: &[f32], k: usize, ef: usize) -> Vec<u32>;
}

struct Ours(lofi_viewer::store::hnsw::Hnsw);
impl Candidate for Ours {
    fn search(&mut self, q: &[f32], k: usize, ef: usize) -> Vec<u32> {
        self.0
            .search(q, k, ef, &|_| true)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }
}

struct Usearch(usearch::Index);
impl Candidate for Usearch {
    fn search(&mut self, q: &[f32], k: usize, ef: usize) -> Vec<u32> {
        self.0.change_expansion_search(ef);
        match self.0.search(q, k) {
            Ok(m) => m.keys.into_iter().map(|k| k as u32).collect(),
            Err(_) => Vec::new(),
        }
    }
}

struct HnswRs(hnsw_rs::hnsw::Hnsw<'static, f32, hnsw_rs::anndists::dist::DistDot>);
impl Candidate for HnswRs {
    fn search(&mut self, q: &[f32], k: usize, ef: usize) -> Vec<u32> {
        self.0
            .search(q, k, ef)
            .into_iter()
            .map(|n| n.d_id as u32)
            .collect()
    }
}

struct Exact<'a>(&'a [f32], usize);
impl Candidate for Exact<'_> {
    fn search(&mut self, q: &[f32], k: usize, _ef: usize) -> Vec<u32> {
        lofi_viewer::store::hnsw::exact_search(self.0, self.1, q, k, &|_| true)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(lib)) = (args.get(1), args.get(2)) else {
        bail!("usage: lofi-ann-study DIR ours|usearch|hnsw_rs|exact [--m M] [--ef-construction N] [--ef LIST]");
    };
    let m: usize = arg(&args, "--m", "16").parse()?;
    let efc: usize = arg(&args, "--ef-construction", "200").parse()?;
    let efs: Vec<usize> = arg(&args, "--ef", "10,20,40,80,160,320,640")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let d = load(Path::new(dir))?;
    let (dim, n) = (d.dim, d.base.len() / d.dim);
    let t0 = Instant::now();
    let mut cand: Box<dyn Candidate + '_> = match lib.as_str() {
        "ours" => {
            let mut h = lofi_viewer::store::hnsw::Hnsw::new(
                dim,
                lofi_viewer::store::hnsw::HnswParams {
                    m,
                    ef_construction: efc,
                    ef_search: 64,
                },
                0,
            );
            for v in d.base.chunks_exact(dim) {
                h.insert(v);
            }
            Box::new(Ours(h))
        }
        "usearch" => {
            let opts = usearch::IndexOptions {
                dimensions: dim,
                metric: usearch::MetricKind::IP,
                quantization: usearch::ScalarKind::F32,
                connectivity: m,
                expansion_add: efc,
                expansion_search: 64,
                multi: false,
            };
            let ix = usearch::Index::new(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            ix.reserve_capacity_and_threads(n, 1)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (i, v) in d.base.chunks_exact(dim).enumerate() {
                ix.add(i as u64, v).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Box::new(Usearch(ix))
        }
        "hnsw_rs" => {
            let h = hnsw_rs::hnsw::Hnsw::new(m, n, 16, efc, hnsw_rs::anndists::dist::DistDot {});
            for (i, v) in d.base.chunks_exact(dim).enumerate() {
                h.insert_slice((v, i));
            }
            Box::new(HnswRs(h))
        }
        "exact" => Box::new(Exact(&d.base, dim)),
        other => bail!("unknown candidate {other}"),
    };
    let build_s = t0.elapsed().as_secs_f64();
    let nq = d.queries.len() / dim;
    let k = 10;
    let mut points = Vec::new();
    for &ef in if lib == "exact" { &efs[..1] } else { &efs[..] } {
        let t = Instant::now();
        let answers: Vec<Vec<u32>> = d
            .queries
            .chunks_exact(dim)
            .map(|q| cand.search(q, k, ef))
            .collect();
        let secs = t.elapsed().as_secs_f64();
        let hits: usize = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let t = &d.truth[i * k..(i + 1) * k];
                a.iter().filter(|x| t.contains(x)).count()
            })
            .sum();
        points.push(serde_json::json!({
            "ef": ef, "qps": nq as f64 / secs, "recall": hits as f64 / (k * nq) as f64
        }));
        eprintln!(
            "{lib} ef {ef}: {:.0} qps, recall {:.3}",
            nq as f64 / secs,
            hits as f64 / (k * nq) as f64
        );
    }
    println!(
        "{}",
        serde_json::json!({"lib": lib, "n": n, "dim": dim, "m": m, "ef_construction": efc,
                           "build_s": build_s, "points": points})
    );
    Ok(())
}
