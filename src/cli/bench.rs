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

fn which(p: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {p}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// CPU time (user + system) of this process's waited-for children so far, in ms (Linux
/// `/proc/self/stat` fields cutime and cstime, in clock ticks of 10 ms).
fn children_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // after the command name: state is field 3, cutime 16, cstime 17 (1-based)
            let t = |i: usize| f.get(i - 3)?.parse::<f64>().ok();
            Some((t(16)? + t(17)?) * 10.0)
        })
        .unwrap_or(f64::NAN)
}

/// One run of a process: (wall ms, CPU ms).
fn run_once(argv: &[std::ffi::OsString], pin: bool) -> Result<(f64, f64)> {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).args(argv);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let cpu0 = children_cpu_ms();
    let s = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let wall = s.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    Ok((wall, children_cpu_ms() - cpu0))
}

/// File → displayable pixels, whole processes: our `render` (decode, VOI, 8-bit PNG) against
/// dcmtk (`dcmj2pnm` / `dcml2pnm`, 8-bit PGM) and GDCM (`gdcmconv --raw`: decode to uncompressed
/// DICOM, no VOI, no 8-bit output). Peers interleaved (ours, dcmtk, GDCM, ours, …), `runs`
/// rounds, medians of wall and CPU time; then the same rounds pinned to one core (`taskset -c 0`).
pub fn dicom(files: &[PathBuf], runs: usize) -> Result<Value> {
    let exe = std::env::current_exe().context("locating our executable")?;
    let tmp = tempfile::tempdir()?;
    let out = |n: &str| tmp.path().join(n).into_os_string();
    let mut rows = Vec::new();
    let mut table = String::from(
        "| file | transfer syntax | ours ms | dcmtk ms | GDCM ms | ours ÷ fastest peer | ours CPU ms | GDCM CPU ms | ours 1 core ms | GDCM 1 core ms | 1-core ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = crate::dicom::object::open(f)
            .with_context(|| format!("opening {}", f.display()))?
            .info;
        let ts = info.transfer_syntax.clone();
        let _ = std::fs::read(f)?; // warm the page cache
        let os = |s: &str| std::ffi::OsString::from(s);
        let file = f.clone().into_os_string();
        let mut peers: Vec<(&str, Vec<std::ffi::OsString>)> = vec![(
            "ours",
            vec![
                exe.clone().into_os_string(),
                os("--headless"),
                os("render"),
                file.clone(),
                os("--out"),
                out("ours.png"),
            ],
        )];
        let dcmtk_tool = match ts.as_str() {
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("dcml2pnm"),
            "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => None, // dcmtk has no JPEG 2000 codec
            _ => Some("dcmj2pnm"),
        };
        if let Some(t) = dcmtk_tool.filter(|t| which(t)) {
            peers.push((
                "dcmtk",
                vec![os(t), os("+op"), file.clone(), out("dcmtk.pgm")],
            ));
        }
        if which("gdcmconv") {
            peers.push((
                "gdcm",
                vec![os("gdcmconv"), os("--raw"), file.clone(), out("gdcm.dcm")],
            ));
        }
        // wall, cpu per peer; then pinned wall per peer
        let mut wall = vec![Vec::new(); peers.len()];
        let mut cpu = vec![Vec::new(); peers.len()];
        let mut pinned = vec![Vec::new(); peers.len()];
        for pin in [false, true] {
            for _ in 0..runs {
                for (i, (_, argv)) in peers.iter().enumerate() {
                    let (w, c) = run_once(argv, pin)?;
                    if pin {
                        pinned[i].push(w);
                    } else {
                        wall[i].push(w);
                        cpu[i].push(c);
                    }
                }
            }
        }
        let med = |v: &[Vec<f64>], who: &str| {
            peers
                .iter()
                .position(|(n, _)| *n == who)
                .map(|i| median(v[i].clone()))
        };
        let (ours, dcmtk, gdcm) = (
            med(&wall, "ours").unwrap_or(f64::NAN),
            med(&wall, "dcmtk"),
            med(&wall, "gdcm"),
        );
        let fastest = [dcmtk, gdcm]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        let ratio = ours / fastest;
        let ours_cpu = med(&cpu, "ours").unwrap_or(f64::NAN);
        let gdcm_cpu = med(&cpu, "gdcm");
        let ours_1 = med(&pinned, "ours").unwrap_or(f64::NAN);
        let gdcm_1 = med(&pinned, "gdcm");
        let ratio_1 = gdcm_1.map(|g| ours_1 / g);
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.1}"));
        table.push_str(&format!(
            "| {name} | {ts} | {ours:.1} | {} | {} | {ratio:.2} | {ours_cpu:.0} | {} | {ours_1:.1} | {} | {} |\n",
            fmt(dcmtk),
            fmt(gdcm),
            gdcm_cpu.map_or("n/a".into(), |x| format!("{x:.0}")),
            fmt(gdcm_1),
            ratio_1.map_or("n/a".into(), |x| format!("{x:.2}")),
        ));
        rows.push(
            json!({"file": name, "transfer_syntax": ts, "ours_ms": ours, "dcmtk_ms": dcmtk,
                         "gdcm_ms": gdcm, "ratio_vs_fastest_peer": ratio, "ours_cpu_ms": ours_cpu,
                         "gdcm_cpu_ms": gdcm_cpu, "ours_one_core_ms": ours_1,
                         "gdcm_one_core_ms": gdcm_1, "one_core_ratio_vs_gdcm": ratio_1}),
        );
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
        // candle's CPU kernels (rayon), and Intel OpenMP's matmul threads in `mkl` builds; both
        // read once, at their first use, which is after this
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        std::env::set_var("OMP_NUM_THREADS", t.to_string());
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
    if compare_unfused {
        let _u = crate::model::nn::force(false);
        let _ = lofi.encode(&img)?;
    }
    // the device's default inference path, or (with compare_unfused) that path against the
    // differentiable ops, interleaved A B A B
    let modes: &[Option<bool>] = if compare_unfused {
        &[None, Some(false)]
    } else {
        &[None]
    };
    let mut embed = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, &fused) in modes.iter().enumerate() {
            let _u = fused.map(crate::model::nn::force);
            let s = Instant::now();
            std::hint::black_box(lofi.embed_image(&img)?);
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
              "embed_image_min_ms": e_fused.iter().copied().fold(f64::INFINITY, f64::min),
              "ground_min_ms": g_fused.iter().copied().fold(f64::INFINITY, f64::min),
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
