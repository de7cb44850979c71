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

/// The bundled default model directory, looked up next to the executable and in the source tree.
pub fn default_model_dir() -> PathBuf {
    if let Ok(p) = std::env::var("LOFI_MODEL") {
        return PathBuf::from(p);
    }
    let rel = Path::new("models").join("lofi-tiny");
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            let c = dir.join(&rel);
            if c.join("config.json").exists() {
                return c;
            }
        }
    }
    let cwd = rel.clone();
    if cwd.join("config.json").exists() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

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

fn load_image(path: &Path) -> Result<image::GrayImage> {
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
            let mut png = Vec::new();
            rendered
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .context("encoding PNG")?;
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
                (Some(p), None) => m.encode(&load_image(p)?)?.embedding,
                (None, Some(t)) => m.embed_text(t)?,
                _ => bail!("give exactly one of --image or --text"),
            };
            Ok(json!({"dim": embedding.len(), "embedding": embedding, "model": m.model_id()}))
        }
        Command::Ground {
            image,
            phrase,
            shots,
        } => {
            let m = load_model(cli)?;
            let img = load_image(image)?;
            let t0 = std::time::Instant::now();
            let enc = m.encode(&img)?;
            if *shots > 0 {
                bail!("--shots needs the prior-case store, which is not built yet");
            }
            let boxes = m.ground(&enc, phrase, &[])?;
            Ok(json!({
                "width": img.width(), "height": img.height(), "phrase": phrase,
                "boxes": boxes, "model": m.model_id(),
                "elapsed_ms": t0.elapsed().as_secs_f64() * 1000.0,
            }))
        }
        Command::Describe { image, bbox } => {
            let m = load_model(cli)?;
            let enc = m.encode(&load_image(image)?)?;
            Ok(json!({"text": m.describe(&enc, *bbox)?, "model": m.model_id()}))
        }
        Command::Findings { image } => {
            let m = load_model(cli)?;
            let enc = m.encode(&load_image(image)?)?;
            Ok(json!({"regions": m.findings(&enc)?, "model": m.model_id()}))
        }
        Command::Caption { image } => {
            let m = load_model(cli)?;
            let enc = m.encode(&load_image(image)?)?;
            Ok(json!({"text": m.caption(&enc)?, "model": m.model_id()}))
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
        } => {
            let mut cfg = match config {
                Some(p) => TrainConfig::from_toml(p)?,
                None => TrainConfig::default(),
            };
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
                progress: true,
                cancel: cancel.clone(),
                stop_after: None,
            };
            let s = train::finetune(cfg, &train_m, &val_m, device, &opts)?;
            Ok(
                json!({"steps": s.steps, "train_loss": s.train_loss, "val": s.val,
                      "model_dir": s.model_dir, "interrupted": s.interrupted}),
            )
        }
    }
}
