//! The headless commands; each returns the JSON printed on stdout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{Cli, Command};
use crate::manifest::Manifest;
use crate::model::load::DeviceChoice;
use crate::model::Lofi;
use crate::train::{self, RunOptions, TrainConfig};
use crate::util::Cancel;

pub use crate::model::bundled::{default_model_dir, default_tokenizer};

/// The device the user asked for.
pub fn device_choice(cli: &Cli) -> Result<DeviceChoice> {
    match &cli.device {
        Some(d) => Ok(d.parse()?),
        None => Ok(DeviceChoice::Best),
    }
}

/// Load the model the user asked for.
pub fn load_model(cli: &Cli) -> Result<Lofi> {
    let dir = cli.model.clone().unwrap_or_else(default_model_dir);
    Lofi::load(&dir, device_choice(cli)?)
        .with_context(|| format!("loading model {}", dir.display()))
}

pub(super) fn load_image(path: &Path) -> Result<image::GrayImage> {
    crate::dicom::load_gray8(path).with_context(|| format!("opening {}", path.display()))
}

/// The `info` JSON of interface.md.
pub fn info_json(img: &crate::dicom::LoadedImage) -> Value {
    let i = &img.info;
    let window = match img.frames.first() {
        Some(f) => crate::dicom::lut::default_voi(i, f)
            .window()
            .map(|(c, w)| json!([c, w]))
            .unwrap_or(Value::Null),
        None => Value::Null,
    };
    let opt = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    json!({
        "modality": opt(&i.modality),
        "rows": i.rows,
        "columns": i.columns,
        "frames": i.frames,
        "bits_stored": i.bits_stored,
        "photometric": i.photometric,
        "transfer_syntax": opt(&i.transfer_syntax),
        "pixel_spacing_mm": i.pixel_spacing_mm,
        "imager_pixel_spacing_mm": i.imager_pixel_spacing_mm,
        "window": window,
        "patient_id": opt(&i.patient_id),
        "study_uid": opt(&i.study_uid),
        "series_uid": opt(&i.series_uid),
        "sop_uid": opt(&i.sop_uid),
        "view": opt(&i.view),
    })
}

/// Open the store the user named (or the default one).
pub fn open_store(cli: &Cli, _model: &Lofi) -> Result<Box<dyn crate::store::PriorStore>> {
    let s = crate::store::open(cli.store.as_deref()).context("opening the prior-case store")?;
    Ok(s)
}

/// Embedding of an image file, or of a region of it (cropped, then letterboxed).
pub fn query_embedding(m: &Lofi, image: &Path, bbox: Option<[f32; 4]>) -> Result<Vec<f32>> {
    let img = load_image(image)?;
    let img = match bbox {
        Some(b) => crate::service::crop_region(&img, b),
        None => img,
    };
    Ok(m.embed_image(&img)?)
}

/// A terminal progress bar on stderr.
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} (ETA {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Terminal bars for a training run's progress reports: one bar per stage, replaced when the
/// stage changes.
fn training_bars() -> crate::train::ProgressSink {
    use crate::train::Progress;
    let current: std::sync::Mutex<Option<(&'static str, indicatif::ProgressBar)>> =
        std::sync::Mutex::new(None);
    crate::train::ProgressSink::new(move |p| {
        let Ok(mut cur) = current.lock() else { return };
        match p {
            Progress::Stage {
                name,
                done,
                total,
                message,
            } => {
                if cur.as_ref().is_none_or(|(n, _)| n != name) {
                    if let Some((_, old)) = cur.take() {
                        old.finish_and_clear();
                    }
                    let pb = indicatif::ProgressBar::new(*total as u64);
                    pb.set_style(
                        indicatif::ProgressStyle::with_template(&format!(
                            "{name} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}} (ETA {{eta}})"
                        ))
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    *cur = Some((name, pb));
                }
                if let Some((_, pb)) = cur.as_ref() {
                    pb.set_length(*total as u64);
                    pb.set_position(*done as u64);
                    if !message.is_empty() {
                        pb.set_message(message.clone());
                    }
                }
            }
            Progress::Finished(name) => {
                if cur.as_ref().is_some_and(|(n, _)| n == name) {
                    if let Some((_, pb)) = cur.take() {
                        pb.finish_and_clear();
                    }
                }
            }
            Progress::Abandoned(name, why) => {
                if cur.as_ref().is_some_and(|(n, _)| n == name) {
                    if let Some((_, pb)) = cur.take() {
                        pb.abandon_with_message(why.clone());
                    }
                }
            }
        }
    })
}

/// Run a headless command.
pub fn run(cli: &Cli, cmd: &Command, cancel: &Cancel) -> Result<Value> {
    match cmd {
        Command::Info { file } => {
            let img =
                crate::dicom::load(file).with_context(|| format!("opening {}", file.display()))?;
            Ok(info_json(&img))
        }
        Command::Render {
            file,
            out,
            window,
            invert,
            frame,
        } => {
            let img =
                crate::dicom::load(file).with_context(|| format!("opening {}", file.display()))?;
            let f = img.frames.get(*frame as usize).ok_or_else(|| {
                anyhow::anyhow!(
                    "frame {frame} out of range (the image has {})",
                    img.frames.len()
                )
            })?;
            let voi = match window {
                Some((c, w)) => {
                    if *w <= 0.0 {
                        bail!("window width must be positive");
                    }
                    crate::dicom::Voi::Window {
                        center: *c,
                        width: *w,
                        function: img.info.voi_function,
                    }
                }
                None => crate::dicom::lut::default_voi(&img.info, f),
            };
            let params = crate::dicom::DisplayParams {
                voi,
                invert: *invert,
            };
            let rendered = crate::dicom::lut::render(f, &img.info, &params);
            let pnm = matches!(
                out.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase())
                    .as_deref(),
                Some("pgm") | Some("ppm") | Some("pnm")
            );
            let png = if pnm {
                // raw 8-bit PGM/PPM
                let (w, h) = (rendered.width(), rendered.height());
                let (magic, raw) = match &rendered {
                    image::DynamicImage::ImageLuma8(g) => ("P5", g.as_raw().clone()),
                    other => ("P6", other.to_rgb8().into_raw()),
                };
                let mut b = format!("{magic}\n{w} {h}\n255\n").into_bytes();
                b.extend_from_slice(&raw);
                b
            } else {
                let mut b = Vec::new();
                rendered
                    .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
                    .context("encoding PNG")?;
                b
            };
            crate::util::atomic_write(out, &png)
                .with_context(|| format!("writing {}", out.display()))?;
            let window = voi
                .window()
                .map(|(c, w)| json!([c, w]))
                .unwrap_or(Value::Null);
            Ok(json!({"out": out, "width": f.width, "height": f.height, "window": window}))
        }
        Command::Embed { image, text } => {
            let m = load_model(cli)?;
            let embedding = match (image, text) {
                (Some(p), None) => m.embed_image(&load_image(p)?)?,
                (None, Some(t)) => m.embed_text(t)?,
                _ => bail!("give exactly one of --image or --text"),
            };
            Ok(json!({"dim": embedding.len(), "embedding": embedding, "model": m.model_id()}))
        }
        Command::Ground {
            image,
            phrase,
            shots,
        } => super::ai::ground(cli, image, phrase, *shots),
        Command::Describe { image, bbox } => super::ai::describe(cli, image, *bbox),
        Command::Findings { image } => super::ai::findings(cli, image),
        Command::Caption { image } => {
            let m = load_model(cli)?;
            let enc = m.encode(&load_image(image)?)?;
            Ok(json!({"text": m.caption(&enc)?, "model": m.model_id()}))
        }
        Command::Eval {
            data,
            phrase_field,
            shots,
            shots_from,
            shot_mode,
            baseline_from,
            probe_l2,
        } => {
            let shot_mode: crate::eval::ShotMode = shot_mode.parse().map_err(anyhow::Error::msg)?;
            let m = load_model(cli)?;
            let data_m = Manifest::read(data)?;
            let field: crate::eval::PhraseField =
                phrase_field.parse().map_err(anyhow::Error::msg)?;
            let base = baseline_from
                .as_ref()
                .map(|p| Manifest::read(p))
                .transpose()?;
            let pool = match (shots, shots_from) {
                (0, _) => None,
                (_, Some(p)) => Some(Manifest::read(p)?),
                (_, None) => Some(crate::store::annotated_manifest(
                    open_store(cli, &m)?.as_ref(),
                )?),
            };
            let pb = progress_bar("eval");
            let progress = |d: usize, t: usize| {
                pb.set_length(t as u64);
                pb.set_position(d as u64);
            };
            let opts = crate::eval::EvalOptions {
                phrase_field: field,
                shots: *shots,
                shot_pool: pool.as_ref(),
                shot_mode,
                baseline_from: base.as_ref(),
                probe_l2: probe_l2.clone(),
                progress: Some(&progress),
            };
            let out = crate::eval::evaluate(&m, &data_m, &opts)?;
            pb.finish_and_clear();
            Ok(out)
        }
        Command::Index {
            paths,
            manifest,
            reembed,
            batch,
        } => {
            let m = load_model(cli)?;
            let store = open_store(cli, &m)?;
            let man = manifest.as_ref().map(|p| Manifest::read(p)).transpose()?;
            let pb = progress_bar("index");
            let progress = |d: usize, t: usize| {
                pb.set_length(t as u64);
                pb.set_position(d as u64);
            };
            let opts = crate::store::index::IndexOptions {
                manifest: man.as_ref(),
                batch: *batch,
                cancel: cancel.clone(),
                progress: &progress,
            };
            let report = if *reembed {
                let mut r = crate::store::index::reembed(&m, store.as_ref(), &opts)?;
                if !paths.is_empty() {
                    let more = crate::store::index::index(&m, store.as_ref(), paths, &opts)?;
                    r.added = more.added;
                    r.skipped = more.skipped;
                    r.failed.extend(more.failed);
                }
                r
            } else {
                if paths.is_empty() {
                    bail!("name files or folders to index");
                }
                crate::store::index::index(&m, store.as_ref(), paths, &opts)?
            };
            pb.finish_and_clear();
            Ok(serde_json::to_value(report)?)
        }
        Command::Search {
            image,
            bbox,
            text,
            k,
            exclude_patient,
            view,
            labels,
        } => {
            let m = load_model(cli)?;
            let store = open_store(cli, &m)?;
            let q = match (image, text) {
                (Some(p), None) => query_embedding(&m, p, *bbox)?,
                (None, Some(t)) => m.embed_text(t)?,
                _ => bail!("give exactly one of --image or --text"),
            };
            let filter = crate::store::Filter {
                exclude_patient: exclude_patient.clone(),
                view: view.clone(),
                labels: labels.clone(),
                annotated: false,
            };
            let (hits, identical) = match (image, bbox) {
                (Some(p), None) => {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    crate::store::search_image_file(
                        store.as_ref(),
                        &q,
                        &bytes,
                        &m.model_id(),
                        *k,
                        &filter,
                    )?
                }
                _ => (store.search(&q, &m.model_id(), *k, &filter)?, false),
            };
            let results: Vec<Value> = hits
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut v = json!({"path": h.record.meta.path, "score": h.score, "patient_id": h.record.meta.patient_id,
                           "study_uid": h.record.meta.study_uid, "labels": h.record.meta.labels, "report": h.record.meta.report});
                    if identical && i == 0 {
                        v["identical"] = json!(true);
                    }
                    v
                })
                .collect();
            Ok(json!({"results": results}))
        }
        Command::Pacs { what } => super::pacs::run(cli, what, cancel),
        Command::Bench { what } => match what {
            super::BenchWhat::Dicom { files, runs } => {
                let files = if files.is_empty() {
                    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom");
                    vec![
                        d.join("RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm"),
                        d.join("RG1_JLSN_cr_chest_pa_jpegls_nearlossless.dcm"),
                        d.join("txv_cr_chest_pa_8bit_jpeg_baseline.dcm"),
                    ]
                } else {
                    files.clone()
                };
                super::bench::dicom(&files, *runs)
            }
            super::BenchWhat::Model {
                preset,
                image,
                new_tokens,
                runs,
                model_dir,
                compare_unfused,
                threads,
            } => super::bench::model(
                preset,
                model_dir.as_deref(),
                image,
                *new_tokens,
                *runs,
                *threads,
                *compare_unfused,
                device_choice(cli)?,
            ),
        },
        Command::Convert {
            from,
            to,
            dtype,
            card,
            center_from,
        } => {
            let dt = match dtype.as_str() {
                "f32" => candle_core::DType::F32,
                "f16" => candle_core::DType::F16,
                "bf16" => candle_core::DType::BF16,
                other => bail!("unknown dtype {other:?} (f32, f16 or bf16)"),
            };
            let card = card
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            crate::model::load::convert_model_dir(from, to, dt, card.as_deref())
                .with_context(|| format!("converting {} to {}", from.display(), to.display()))?;
            let mut centred_on = 0;
            if let Some(man) = center_from {
                let lofi = crate::model::Lofi::load(to, crate::model::load::DeviceChoice::Cpu)?;
                let m = Manifest::read(man)?;
                let pb = progress_bar("centring");
                pb.set_length(m.records.len() as u64);
                let mut sum: Vec<f64> = Vec::new();
                for chunk in m.records.chunks(16) {
                    let imgs = chunk
                        .iter()
                        .map(|r| load_image(&m.image_path(r)))
                        .collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&image::GrayImage> = imgs.iter().collect();
                    for row in lofi.pooled_features(&refs)? {
                        sum.resize(row.len(), 0.0);
                        for (s, v) in sum.iter_mut().zip(row) {
                            *s += v as f64;
                        }
                        centred_on += 1;
                    }
                    pb.inc(chunk.len() as u64);
                }
                pb.finish_and_clear();
                if centred_on == 0 {
                    bail!("{} has no images", man.display());
                }
                let center: Vec<f32> = sum.iter().map(|s| (s / centred_on as f64) as f32).collect();
                crate::model::load::write_embedding_center(to, &center)?;
            }
            // the result must load and run
            let lofi = crate::model::Lofi::load(to, crate::model::load::DeviceChoice::Cpu)
                .with_context(|| format!("loading the converted model {}", to.display()))?;
            let bytes = std::fs::metadata(to.join("model.safetensors"))?.len();
            Ok(
                json!({"model": lofi.model_id(), "dtype": dtype, "weights_bytes": bytes,
                      "centred_on_images": centred_on, "has_center": lofi.embedding_center.is_some()}),
            )
        }
        Command::ImportBase { onnx, gguf, out } => {
            use crate::model::base;
            let out = out.clone().unwrap_or_else(base::base_dir);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut res = serde_json::Map::new();
            if let Some(onnx) = onnx {
                let dst = out.join(base::DINOV2_SMALL);
                let shape = base::import_dinov2_onnx(onnx, &dst, candle_core::DType::F32)
                    .with_context(|| format!("importing {}", onnx.display()))?;
                res.insert(
                    "dinov2".into(),
                    json!({"out": dst, "hidden": shape.hidden, "layers": shape.layers,
                           "patch": shape.patch, "grid": shape.grid}),
                );
            }
            if let Some(gguf) = gguf {
                let cfg = base::gemma_config_from_gguf(gguf)
                    .with_context(|| format!("reading {}", gguf.display()))?;
                let dst = out.join(base::GEMMA3_TOKENIZER);
                let vocab = base::write_gemma_tokenizer(gguf, &dst)
                    .with_context(|| format!("building the tokenizer of {}", gguf.display()))?;
                res.insert(
                    "gemma".into(),
                    json!({"tokenizer": dst, "vocab": vocab, "layers": cfg.num_hidden_layers,
                           "hidden": cfg.hidden_size}),
                );
            }
            Ok(Value::Object(res))
        }
        Command::DemoPriors { data, out } => {
            let m = load_model(cli)?;
            let man = Manifest::read(data)?;
            let pb = progress_bar("demo priors");
            pb.set_length(man.records.len() as u64);
            let n =
                crate::store::demo::build(&m, &man, out, &|d, _| pb.set_position(d as u64), cancel)
                    .with_context(|| format!("building the demo store in {}", out.display()))?;
            pb.finish_and_clear();
            Ok(json!({"records": n, "out": out, "model": m.model_id()}))
        }
        Command::CalibratePresence { data, write } => {
            let m = load_model(cli)?;
            let man = Manifest::read(data)?;
            let pb = progress_bar("calibrating");
            pb.set_length(man.records.len() as u64);
            let v = crate::eval::calibrate_presence(&m, &man, &|d| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            if *write {
                let t = v["threshold"].as_f64().map(|t| t as f32);
                let path = m.dir.join("config.json");
                let mut cfg = crate::model::Config::from_file(&path)?;
                cfg.presence_threshold = t;
                // the texts the threshold was chosen over are what "find all" checks
                cfg.finding_phrases = v["finding_phrases"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let json = serde_json::to_string_pretty(&cfg)?;
                crate::util::atomic_write(&path, json.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(v)
        }
        Command::Split {
            data,
            fraction,
            seed,
            out_a,
            out_b,
        } => {
            if !(0.0..1.0).contains(fraction) {
                bail!("--fraction must be in [0, 1)");
            }
            let m = Manifest::read(data)?;
            let (a, b) = m.split(*fraction, *seed);
            a.with_absolute_paths().write(out_a)?;
            b.with_absolute_paths().write(out_b)?;
            Ok(json!({"a": {"path": out_a, "records": a.records.len()},
                      "b": {"path": out_b, "records": b.records.len()}}))
        }
        Command::ImportNih { dir, out } => {
            let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
            let out_dir = if out_dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                out_dir
            };
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let m = crate::manifest::import_nih(dir, &out_dir)?;
            m.write(out)?;
            Ok(json!({"records": m.records.len(), "regions": m.region_count()}))
        }
        Command::Finetune {
            data,
            val,
            out,
            init,
            init_siglip,
            init_gemma,
            config,
            steps,
            batch_size,
            lr,
            save_every,
            resume,
            seed,
            stop_after,
            from_scratch,
        } => {
            let starts_elsewhere = init.is_some() || init_siglip.is_some() || init_gemma.is_some();
            let mut cfg = match config {
                Some(p) => TrainConfig::from_toml(p)?,
                None if *from_scratch => TrainConfig {
                    tokenizer: Some(crate::model::bundled::bundled_path(Path::new(
                        "assets/tokenizer/minilm-digits/tokenizer.json",
                    ))),
                    ..TrainConfig::default()
                },
                None if starts_elsewhere => TrainConfig::default(),
                // fine-tuning the current model, from any working directory
                None => {
                    TrainConfig::fine_tuning(cli.model.clone().unwrap_or_else(default_model_dir))
                }
            };
            if *from_scratch {
                cfg.init = None;
            }
            if let Some(v) = init {
                cfg.init = Some(v.clone());
            }
            if let Some(v) = init_siglip {
                cfg.init_siglip = Some(v.clone());
            }
            if let Some(v) = init_gemma {
                cfg.init_gemma = Some(v.clone());
            }
            if let Some(v) = steps {
                cfg.steps = *v;
            }
            if let Some(v) = batch_size {
                cfg.batch_size = *v;
            }
            if let Some(v) = lr {
                cfg.lr = *v;
            }
            if let Some(v) = save_every {
                cfg.save_every = *v;
            }
            if let Some(v) = seed {
                cfg.seed = *v;
            }
            let all = Manifest::read(data)?;
            let (train_m, val_m) = match val {
                Some(v) => (all, Manifest::read(v)?),
                None => {
                    // keep the patient-level split next to the run so `eval` can use it
                    let (t, v) = all.split(cfg.val_fraction, cfg.seed);
                    std::fs::create_dir_all(out)
                        .with_context(|| format!("creating {}", out.display()))?;
                    t.with_absolute_paths().write(&out.join("train.jsonl"))?;
                    v.with_absolute_paths().write(&out.join("val.jsonl"))?;
                    (t, v)
                }
            };
            let device = crate::model::load::open_device(device_choice(cli)?)?;
            let opts = RunOptions {
                out: out.clone(),
                resume: *resume,
                progress: training_bars(),
                cancel: cancel.clone(),
                stop_after: *stop_after,
            };
            let s = train::finetune(cfg, &train_m, &val_m, device, &opts)?;
            Ok(
                json!({"steps": s.steps, "train_loss": s.train_loss, "val": s.val,
                      "model_dir": s.model_dir, "interrupted": s.interrupted}),
            )
        }
    }
}
