//! A whole run: preparing data, caching features, the schedule, checkpoints and exact resume,
//! validation, export of the inference model, and progress reports through a callback (the CLI
//! draws them as bars, the library never prints).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::manifest::Manifest;
use crate::model::prompt::UnitBox;
use crate::util::Cancel;

use super::checkpoint::{self, TrainState};
use super::config::{Freeze, TrainConfig};
use super::data::{self, make_sample, Augment, Sample, TaskMix, TrainImage};
use super::metrics::{LossParts, TrainSummary};
use super::optim::{self, AdamW, AdamWConfig};
use super::plot;
use super::sampling::{augmented_views, sample_order, sample_rng, VIEW_SALT};
use super::shots::{self, ShotContext};
use super::trainer::Trainer;
use super::TrainError;

/// What a run reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A stage with a known amount of work (`"loading"`, `"caching features"`, `"finetune"`):
    /// `done` of `total`, and a status line.
    Stage {
        /// Stage name.
        name: &'static str,
        /// Units done.
        done: usize,
        /// Units in all.
        total: usize,
        /// Status (losses, learning rate, speed), may be empty.
        message: String,
    },
    /// The stage ended normally.
    Finished(&'static str),
    /// The stage ended early (cancelled or failed), with why.
    Abandoned(&'static str, String),
}

/// A progress callback.
pub type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// Where progress reports go: a callback, or nowhere.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<std::sync::Arc<ProgressFn>>);

impl ProgressSink {
    /// Reports go to `f`.
    pub fn new(f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(f)))
    }
    /// Report one event.
    pub fn report(&self, p: Progress) {
        if let Some(f) = &self.0 {
            f(&p);
        }
    }
    fn stage(&self, name: &'static str, done: usize, total: usize, message: String) {
        self.report(Progress::Stage {
            name,
            done,
            total,
            message,
        });
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProgressSink(callback)"
        } else {
            "ProgressSink(none)"
        })
    }
}

/// Options of one `finetune` invocation beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Progress reports.
    pub progress: ProgressSink,
    /// Stop (after saving) when set.
    pub cancel: Cancel,
    /// Stop after this many steps of this invocation (tests: interrupt a run deterministically).
    pub stop_after: Option<usize>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> TrainError {
    move |e| TrainError::Io { what, source: e }
}

/// Validation loss over fixed, un-augmented samples.
pub fn validate(tr: &Trainer, val: &[TrainImage], seed: u64) -> Result<LossParts, TrainError> {
    if val.is_empty() {
        return Ok(LossParts::default());
    }
    let mut acc = LossParts::default();
    let mut n = 0.0;
    let none = Augment::none();
    for (ci, chunk) in val.chunks(tr.cfg.batch_size.max(2)).enumerate() {
        let samples: Vec<Sample> = chunk
            .iter()
            .enumerate()
            .map(|(i, im)| {
                make_sample(
                    im,
                    &none,
                    &TaskMix::default(),
                    None,
                    &mut sample_rng(seed ^ 0xA11, ci * 1000 + i),
                )
            })
            .collect();
        // the feature cache indexes training images; validation images are encoded
        let (_, p) = tr.batch_loss(&samples, None)?;
        let w = chunk.len() as f64;
        acc.total += p.total * w;
        acc.sig += p.sig * w;
        acc.cap += p.cap * w;
        acc.loc += p.loc * w;
        acc.img_sim += p.img_sim * w;
        acc.txt_sim += p.txt_sim * w;
        n += w;
    }
    acc.total /= n;
    acc.sig /= n;
    acc.cap /= n;
    acc.loc /= n;
    acc.img_sim /= n;
    acc.txt_sim /= n;
    Ok(acc)
}

/// Write the inference model directory (LoRA merged) for the current parameters.
pub fn export_model(tr: &Trainer, dir: &Path, card: Option<&str>) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut tensors = tr.store.tensors();
    let mut cfg = tr.model_cfg.clone();
    if let Some(l) = cfg.lora.take() {
        crate::model::merge_lora(&mut tensors, &l)?;
    }
    if let Some(b) = &cfg.vision.base {
        // the frozen pretrained backbone stays in the base folder; only what trained is ours
        let base = crate::model::load::mmap(&[crate::model::base::base_file(b)?])?;
        let trainable: std::collections::BTreeSet<String> =
            tr.store.trainable().into_iter().map(|(n, _)| n).collect();
        tensors.retain(|k, _| trainable.contains(k) || base.get(k).is_err());
    }
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    crate::model::save_safetensors(&tensors, &dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    crate::util::atomic_write(&dir.join("config.json"), json.as_bytes())
        .map_err(io("writing config.json".into()))?;
    tr.tokenizer.save(&dir.join("tokenizer.json"))?;
    if let Some(card) = card {
        crate::util::atomic_write(&dir.join("MODEL_CARD.md"), card.as_bytes())
            .map_err(io("writing MODEL_CARD.md".into()))?;
    }
    Ok(())
}

/// Run (or resume) fine-tuning.
pub fn finetune(
    cfg: TrainConfig,
    train: &Manifest,
    val: &Manifest,
    device: Device,
    opts: &RunOptions,
) -> Result<TrainSummary, TrainError> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let ckpt_root = out.join("checkpoints");
    // a resumed run keeps its saved configuration: the schedule and data order depend on it
    let cfg = if opts.resume && out.join("train_config.toml").exists() {
        let saved = TrainConfig::from_toml(&out.join("train_config.toml"))?;
        if saved != cfg {
            tracing::info!("resuming with the run's saved configuration");
        }
        saved
    } else {
        cfg
    };
    let mut tr = Trainer::new(cfg.clone(), device.clone())?;
    // the run's config next to its checkpoints, before training starts
    let toml_text = toml::to_string_pretty(&cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    crate::util::atomic_write(&out.join("train_config.toml"), toml_text.as_bytes())
        .map_err(io("writing train_config.toml".into()))?;
    let mc_json = serde_json::to_string_pretty(&tr.model_cfg)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    crate::util::atomic_write(&out.join("model_config.json"), mc_json.as_bytes())
        .map_err(io("writing model_config.json".into()))?;

    let size = tr.model_cfg.image_size as u32;
    let prog = &opts.progress;
    let n_load = train.records.len() + val.records.len();
    let loaded = std::sync::atomic::AtomicUsize::new(0);
    let tick = |_| {
        let d = loaded.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        prog.stage("loading", d, n_load, String::new());
    };
    let train_imgs = data::prepare(train, size, cfg.threads, &tick)?;
    let val_imgs = data::prepare(val, size, cfg.threads, &tick)?;
    prog.report(Progress::Finished("loading"));
    if train_imgs.is_empty() {
        return Err(TrainError::Data(
            "the training manifest has no images".into(),
        ));
    }
    tr.build_text_bank(&train_imgs)?;
    // frozen encoder: features cached for `cache_views` views per image, with the boxes of each
    // view (cache index k · views + v)
    let views = if cfg.freeze == Freeze::Encoder {
        cfg.cache_views
    } else {
        0
    };
    let mut view_boxes: Vec<Vec<Option<UnitBox>>> = Vec::new();
    let augment = if views == 1 {
        tr.cache_features_with(&train_imgs, &|d| {
            prog.stage("caching features", d, train_imgs.len(), String::new())
        })?;
        prog.report(Progress::Finished("caching features"));
        Augment::none()
    } else if views > 1 {
        // a few images at a time: only their views' pixels are held at once
        let mut feats = Vec::with_capacity(train_imgs.len() * views);
        for (c, chunk) in train_imgs.chunks(16).enumerate() {
            let (px, vb) = augmented_views(chunk, c * 16, views, &cfg.augment, cfg.seed);
            tr.cache_pixel_features(&px)?;
            feats.extend(tr.cache.take().unwrap_or_default());
            view_boxes.extend(vb);
            prog.stage(
                "caching features",
                feats.len(),
                train_imgs.len() * views,
                String::new(),
            );
        }
        tr.cache = Some(feats);
        prog.report(Progress::Finished("caching features"));
        Augment::none()
    } else {
        cfg.augment
    };
    tr.set_centers()?;
    // in-context training: per image and finding, the nearest other-patient training images
    // with that finding by the frozen backbone's mean token (view 0)
    let neighbours = if cfg.mix.in_context > 0.0 {
        let stride = views.max(1);
        let pooled = (0..train_imgs.len())
            .map(|k| {
                let f = tr
                    .cache
                    .as_ref()
                    .and_then(|c| c.get(k * stride))
                    .ok_or_else(|| {
                        TrainError::Data("in-context examples need the feature cache".into())
                    })?;
                // the frozen backbone's mean token (what the images look like, whatever state
                // the trained head is in at the start of this run)
                let pooled = f.tokens.mean(0)?;
                Ok(pooled.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            })
            .collect::<Result<Vec<Vec<f32>>, TrainError>>()?;
        shots::nearest_by_finding(&train_imgs, &pooled, 4 * cfg.mix.max_shots.max(1))
    } else {
        Vec::new()
    };
    let trainable = tr.store.trainable();
    let (n_all, n_tr) = tr.store.counts();
    tracing::info!(
        "{} images ({} regions) train, {} val; {n_all} parameters, {n_tr} trainable",
        train_imgs.len(),
        train.region_count(),
        val_imgs.len()
    );

    let mut optim = AdamW::new(AdamWConfig {
        weight_decay: cfg.weight_decay,
        ..Default::default()
    });
    let mut state = TrainState {
        step: 0,
        adam_t: 0,
        best_val: None,
        best_step: None,
        sha256: String::new(),
    };
    if opts.resume {
        if let Some(c) = checkpoint::load_latest(&ckpt_root, &device)? {
            tr.store.load(&c.params)?;
            let cfg_opt = optim.cfg;
            optim = c.optim;
            optim.cfg = cfg_opt;
            state = c.state;
            tracing::info!("resumed at step {} from {}", state.step, c.dir.display());
        }
    }
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io(format!("opening {}", metrics_path.display())))?;

    let per_step = cfg.batch_size * cfg.grad_accum;
    prog.stage("finetune", state.step, cfg.steps, String::new());
    let t0 = Instant::now();
    let mut recent: Vec<f64> = Vec::new();
    let mut last_val: BTreeMap<String, f64> = BTreeMap::new();
    let mut interrupted = false;
    let mut steps_this_run = 0usize;
    let save = |st: &TrainState, optim: &AdamW, tr: &Trainer| -> Result<(), TrainError> {
        checkpoint::save(
            &ckpt_root,
            &tr.store.tensors(),
            optim,
            st.clone(),
            cfg.keep_last,
        )?;
        Ok(())
    };
    while state.step < cfg.steps {
        if opts.cancel.is_cancelled() || opts.stop_after.is_some_and(|n| steps_this_run >= n) {
            interrupted = true;
            break;
        }
        let step = state.step;
        let ts = Instant::now();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut parts = LossParts::default();
        for micro in 0..cfg.grad_accum {
            let g0 = step * per_step + micro * cfg.batch_size;
            let idx = sample_order(cfg.seed, train_imgs.len(), g0, cfg.batch_size);
            let (samples, cache_idx): (Vec<Sample>, Vec<usize>) = idx
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let mut rng = sample_rng(cfg.seed, g0 + i);
                    let ctx = ShotContext {
                        images: &train_imgs,
                        neighbours: &neighbours,
                        index: k,
                    };
                    let ctx = (!neighbours.is_empty()).then_some(&ctx);
                    let (mut s, c) = if views > 1 {
                        let v = sample_rng(cfg.seed ^ VIEW_SALT, usize::MAX - (g0 + i))
                            .random_range(0..views);
                        let c = k * views + v;
                        let s = data::sample_from_view(
                            &train_imgs[k],
                            Vec::new(),
                            &view_boxes[c],
                            &cfg.mix,
                            ctx,
                            &mut rng,
                        );
                        (s, c)
                    } else {
                        (
                            make_sample(&train_imgs[k], &augment, &cfg.mix, ctx, &mut rng),
                            k,
                        )
                    };
                    // examples are shown as they are: their view 0 in the cache
                    for (n, _) in &mut s.shots {
                        *n *= views.max(1);
                    }
                    (s, c)
                })
                .unzip();
            let (g, p) = tr.grads(&samples, &cache_idx)?;
            for (k, v) in g {
                let v = (v / cfg.grad_accum as f64)?;
                let nv = match grads.remove(&k) {
                    Some(acc) => (acc + v)?,
                    None => v,
                };
                grads.insert(k, nv);
            }
            let w = 1.0 / cfg.grad_accum as f64;
            parts.total += p.total * w;
            parts.sig += p.sig * w;
            parts.cap += p.cap * w;
            parts.loc += p.loc * w;
            parts.img_sim += p.img_sim * w;
            parts.txt_sim += p.txt_sim * w;
        }
        let norm = optim::clip(&mut grads, cfg.grad_clip)?;
        if !parts.total.is_finite() || !norm.is_finite() {
            let value = if parts.total.is_finite() {
                norm
            } else {
                parts.total
            };
            prog.report(Progress::Abandoned(
                "finetune",
                format!("loss became {value}"),
            ));
            return Err(TrainError::NonFinite {
                value,
                step,
                dir: ckpt_root.clone(),
            });
        }
        let lr = optim::lr_at(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr_ratio);
        optim.step(&trainable, &grads, lr)?;
        state.step += 1;
        steps_this_run += 1;
        let dt = ts.elapsed().as_secs_f64();
        let sps = per_step as f64 / dt.max(1e-9);
        recent.push(parts.total);
        if recent.len() > 50 {
            recent.remove(0);
        }
        let line = serde_json::json!({
            "step": state.step, "loss": parts.total, "sig": parts.sig, "cap": parts.cap,
            "loc": parts.loc, "img_sim": parts.img_sim, "txt_sim": parts.txt_sim,
            "lr": lr, "grad_norm": norm, "samples_per_s": sps,
            "elapsed_s": t0.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}").map_err(io("writing metrics.jsonl".into()))?;
        prog.stage(
            "finetune",
            state.step,
            cfg.steps,
            format!(
                "loss {:.3} (sig {:.3} cap {:.3} loc {:.3}) lr {lr:.2e} {sps:.1} img/s",
                parts.total, parts.sig, parts.cap, parts.loc
            ),
        );

        let at_val = cfg.val_every > 0 && state.step.is_multiple_of(cfg.val_every);
        let at_save = cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every);
        if at_val && !val_imgs.is_empty() {
            let v = validate(&tr, &val_imgs, cfg.seed)?;
            last_val = BTreeMap::from([
                ("loss".into(), v.total),
                ("sig".into(), v.sig),
                ("cap".into(), v.cap),
                ("loc".into(), v.loc),
                ("img_sim".into(), v.img_sim),
                ("txt_sim".into(), v.txt_sim),
            ]);
            let line = serde_json::json!({"step": state.step, "val": last_val});
            writeln!(metrics, "{line}").map_err(io("writing metrics.jsonl".into()))?;
            if state.best_val.is_none_or(|b| v.total < b) {
                state.best_val = Some(v.total);
                state.best_step = Some(state.step);
                export_model(&tr, &out.join("best"), None)?;
            }
        }
        if at_save || state.step == cfg.steps {
            save(&state, &optim, &tr)?;
        }
    }
    if interrupted {
        save(&state, &optim, &tr)?;
        prog.report(Progress::Abandoned(
            "finetune",
            format!("stopped at step {}; checkpoint saved", state.step),
        ));
    } else {
        prog.report(Progress::Finished("finetune"));
    }
    let model_dir = out.join("model");
    export_model(&tr, &model_dir, None)?;
    if let Err(e) = plot::loss_curve(&metrics_path, &out.join("loss_curve.png")) {
        tracing::warn!("loss curve not drawn: {e}");
    }
    let summary = TrainSummary {
        steps: state.step,
        train_loss: if recent.is_empty() {
            f64::NAN
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        },
        val: last_val,
        model_dir,
        interrupted,
    };
    let s =
        serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Config(e.to_string()))?;
    crate::util::atomic_write(&out.join("summary.json"), s.as_bytes())
        .map_err(io("writing summary.json".into()))?;
    Ok(summary)
}
