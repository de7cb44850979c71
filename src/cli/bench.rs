//! `lofi-viewer --headless bench …`: speed against named peers on the same machine in the same
//! run, reported as ratios (ours ÷ peer; below 1 is faster). Medians of repeated runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn time_process(cmd: &mut Command, runs: usize) -> Result<f64> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(t))
}

fn which(p: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {p}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// File → displayable 8-bit pixels, for each file: our CLI process and library call vs dcmtk
/// (`dcmj2pnm` / `dcml2pnm`, writing an 8-bit PGM) and GDCM (`gdcmconv --raw`) processes.
pub fn dicom(files: &[PathBuf], runs: usize) -> Result<Value> {
    let exe = std::env::current_exe().context("locating our executable")?;
    let tmp = tempfile::tempdir()?;
    let out = |n: &str| tmp.path().join(n);
    let mut rows = Vec::new();
    let mut table = String::from("| file | transfer syntax | ours (process) ms | ours (library) ms | dcmtk ms | GDCM (gdcmconv --raw) ms | ours ÷ fastest peer |\n|---|---|---|---|---|---|---|\n");
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = crate::dicom::object::open(f)
            .with_context(|| format!("opening {}", f.display()))?
            .info;
        let ts = info.transfer_syntax.clone();
        // warm the page cache and the binaries
        let _ = std::fs::read(f)?;
        let ours_proc = time_process(
            Command::new(&exe)
                .args(["--headless", "render"])
                .arg(f)
                .arg("--out")
                .arg(out("ours.pgm")),
            runs,
        )?;
        let mut lib = Vec::new();
        for _ in 0..runs {
            let s = Instant::now();
            let img = crate::dicom::load(f)?;
            let fr = img.frames.first().context("no frame")?;
            let p = crate::dicom::DisplayParams {
                voi: crate::dicom::lut::default_voi(&img.info, fr),
                invert: false,
            };
            let g = crate::dicom::lut::render(fr, &img.info, &p);
            std::hint::black_box(&g);
            lib.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        let ours_lib = median(lib);
        let dcmtk_tool = match ts.as_str() {
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("dcml2pnm"),
            "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => None, // dcmtk has no JPEG 2000 codec
            _ => Some("dcmj2pnm"),
        };
        let dcmtk = match dcmtk_tool {
            Some(t) if which(t) => Some(time_process(
                Command::new(t).arg("+op").arg(f).arg(out("dcmtk.pgm")),
                runs,
            )?),
            _ => None,
        };
        // GDCM: gdcmimg writes 8-bit PNM for 8-bit images but refuses high bit depths, so the
        // peer is `gdcmconv --raw` (decode to uncompressed DICOM), which does less work than us
        // (no VOI, no 8-bit output): a conservative comparison.
        let gdcm = if which("gdcmconv") {
            time_process(
                Command::new("gdcmconv")
                    .arg("--raw")
                    .arg(f)
                    .arg(out("gdcm.dcm")),
                runs,
            )
            .ok()
        } else {
            None
        };
        let fastest = [dcmtk, gdcm]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        let ratio = ours_proc / fastest;
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.1}"));
        table.push_str(&format!(
            "| {name} | {ts} | {ours_proc:.1} | {ours_lib:.1} | {} | {} | {ratio:.2} |\n",
            fmt(dcmtk),
            fmt(gdcm)
        ));
        rows.push(json!({"file": name, "transfer_syntax": ts, "ours_process_ms": ours_proc, "ours_library_ms": ours_lib,
                         "dcmtk_ms": dcmtk, "gdcm_ms": gdcm, "ratio_vs_fastest_peer": ratio}));
    }
    Ok(json!({"runs": runs, "rows": rows, "markdown": table}))
}

/// CPU latency of `embed_image` and `ground` with random weights for a preset.
#[allow(clippy::too_many_arguments)]
pub fn model(
    preset: &str,
    model_dir: Option<&Path>,
    image: &Path,
    new_tokens: usize,
    runs: usize,
    threads: Option<usize>,
    compare_unfused: bool,
    device: crate::model::load::DeviceChoice,
) -> Result<Value> {
    if let Some(t) = threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let t0 = Instant::now();
    let (lofi, cfg, what) = match model_dir {
        // a real model folder (e.g. the bundled lofi-dino with its pretrained towers)
        Some(dir) => {
            let mut l = crate::model::Lofi::load(dir, device)?;
            l.set_max_new_tokens(new_tokens);
            let cfg = l.config().clone();
            (l, cfg, dir.display().to_string())
        }
        None => {
            let p: crate::model::Preset = preset.parse()?;
            let mut cfg = crate::model::Config::preset(p);
            cfg.max_new_tokens = new_tokens;
            let store =
                crate::model::params::ParamStore::new(0, None, std::sync::Arc::new(|_| false));
            let dev = crate::model::load::open_device(device)?;
            let vb = store.var_builder(candle_core::DType::F32, &dev);
            let model = crate::model::LofiModel::new(&cfg, vb)?;
            let tok = crate::model::tokenizer::LofiTokenizer::from_file(
                &super::commands::default_tokenizer(),
                &cfg.tokens,
            )?;
            let l = crate::model::Lofi::from_parts(model, tok, dev);
            (l, cfg, preset.to_string())
        }
    };
    let build_s = t0.elapsed().as_secs_f64();
    let img = crate::dicom::load_gray8(image)?;
    let _ = lofi.encode(&img)?; // warm-up
    {
        let _u = crate::model::nn::force(!compare_unfused);
        let _ = lofi.encode(&img)?;
    }
    // the device's default path, or (with compare_unfused) the fused kernels against the
    // differentiable ops, interleaved A B A B
    let modes: &[Option<bool>] = if compare_unfused {
        &[Some(true), Some(false)]
    } else {
        &[None]
    };
    let mut embed = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, &fused) in modes.iter().enumerate() {
            let _u = fused.map(crate::model::nn::force);
            let s = Instant::now();
            std::hint::black_box(lofi.encode(&img)?.embedding);
            embed[i].push(s.elapsed().as_secs_f64() * 1000.0);
        }
    }
    // grounding: encode + prompt + the greedy steps (random weights rarely stop early)
    let mut ground = [Vec::new(), Vec::new()];
    let mut generated = 0;
    let mut prompt_tokens = 0;
    for _ in 0..runs {
        for (i, &fused) in modes.iter().enumerate() {
            let _u = fused.map(crate::model::nn::force);
            let s = Instant::now();
            let enc = lofi.encode(&img)?;
            let turn = crate::model::prompt::Turn {
                instruction: crate::model::prompt::Instruction::Ground(
                    "left pleural effusion".into(),
                ),
                response: None,
                supervised: false,
            };
            prompt_tokens = crate::model::prompt::build_prompt(
                &lofi.tokenizer,
                std::slice::from_ref(&turn),
                cfg.projector.num_tokens,
            )?
            .ids
            .len();
            let g = lofi.generate(&[turn], &[&enc.prefix])?;
            generated = g.ids.len();
            ground[i].push(s.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let [e_fused, e_slow] = embed;
    let [g_fused, g_slow] = ground;
    let mut out = json!({"preset": what, "image": image, "image_size": cfg.image_size, "image_tokens": cfg.projector.num_tokens,
              "new_tokens": generated, "build_s": build_s, "embed_image_ms": median(e_fused.clone()), "ground_ms": median(g_fused.clone()),
              "prompt_tokens": prompt_tokens, "runs": runs,
              "threads": std::env::var("RAYON_NUM_THREADS").ok(), "device": format!("{device:?}"), "config": serde_json::to_value(&cfg)?});
    if compare_unfused {
        let (ef, es, gf, gs) = (
            median(e_fused),
            median(e_slow),
            median(g_fused),
            median(g_slow),
        );
        out["unfused"] = json!({"embed_image_ms": es, "ground_ms": gs,
            "embed_ratio_fused_over_unfused": ef / es, "ground_ratio_fused_over_unfused": gf / gs});
    }
    Ok(out)
}

/// Search latency (p50/p99) and recall@10 of our HNSW against exact search, at `n` random
/// `dim`-d vectors (FAISS numbers come from benches/store_vs_faiss.py in the same run).
pub fn store(
    n: usize,
    dim: usize,
    queries: usize,
    params: crate::store::hnsw::HnswParams,
    export: Option<&Path>,
) -> Result<Value> {
    use crate::store::hnsw::{exact_search, random_unit_vectors, Hnsw};
    let data = random_unit_vectors(n, dim, 1);
    let q = random_unit_vectors(queries, dim, 2);
    if let Some(dir) = export {
        // the same vectors for the FAISS peer (raw little-endian f32, row-major)
        std::fs::create_dir_all(dir)?;
        let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.join("base.f32"), raw(&data))?;
        std::fs::write(dir.join("queries.f32"), raw(&q))?;
    }
    let t0 = Instant::now();
    let mut h = Hnsw::new(dim, params, 0);
    for v in data.chunks_exact(dim) {
        h.insert(v);
    }
    let build_s = t0.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut hit = 0usize;
    for v in q.chunks_exact(dim) {
        let s = Instant::now();
        let r = h.search(v, 10, params.ef_search, &|_| true);
        lat.push(s.elapsed().as_secs_f64() * 1e6);
        let e = exact_search(&data, dim, v, 10, &|_| true);
        hit += r.iter().filter(|x| e.iter().any(|y| y.0 == x.0)).count();
    }
    lat.sort_by(f64::total_cmp);
    let p = |f: f64| lat[((lat.len() as f64 - 1.0) * f).round() as usize];
    Ok(
        json!({"n": n, "dim": dim, "queries": queries, "m": params.m, "ef_construction": params.ef_construction,
              "ef_search": params.ef_search, "build_s": build_s, "p50_us": p(0.5), "p99_us": p(0.99),
              "recall@10": hit as f64 / (queries * 10) as f64}),
    )
}
