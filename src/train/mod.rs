//! Fine-tuning LoFi with its three losses: data, losses, optimizer, crash-safe checkpoints,
//! exact resume, progress and metrics.
//!
//! Determinism: every random choice of step `s` (data order, augmentation, task choice) derives
//! from `(seed, s)` alone and parameters are initialised from `(seed, name)`, so a run resumed from
//! a checkpoint takes exactly the path of an uninterrupted one.

pub mod checkpoint;
pub mod data;
pub mod loss;
pub mod optim;
pub mod plot;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::model::config::{Config, LoraConfig, Preset};
use crate::model::params::{ParamStore, TrainableFn};
use crate::model::prompt::{build_prompt, Turn, UnitBox};
use crate::model::tokenizer::LofiTokenizer;
use crate::model::{l2_normalize, LofiModel, ModelError};
use crate::util::Cancel;

use self::checkpoint::TrainState;
use self::data::{make_sample, Augment, Sample, ShotContext, TaskKind, TaskMix, TrainImage};
use self::optim::{AdamW, AdamWConfig};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor op failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Training data problem.
    #[error("data: {0}")]
    Data(String),
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Checkpoint problem.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Bad training configuration.
    #[error("training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error(
        "loss became {value} at step {step}; stopped — the last good checkpoint is kept in {dir}"
    )]
    NonFinite {
        /// The offending value.
        value: f64,
        /// Step.
        step: usize,
        /// Checkpoint folder.
        dir: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Freeze {
    /// Everything trains.
    #[default]
    Full,
    /// LoRA adapters (encoder r16 on q/k/v/out/fc1/fc2, decoder r4 on q/v), `head`s, projector.
    Lora,
    /// The image encoder is frozen and its features cached; the rest trains.
    Encoder,
}

/// Which image–text pairs of a batch the sigmoid loss treats as matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SigmoidPositives {
    /// z_ij = +1 only for i = j (SigLIP, the spec's default).
    #[default]
    Diagonal,
    /// z_ij = +1 also where text j is identical to text i.
    SameText,
}

/// The training configuration (`--config` TOML; CLI flags override; every field has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Preset for a model trained from scratch (ignored with `init`).
    pub preset: String,
    /// Model directory to start from (ours).
    pub init: Option<PathBuf>,
    /// HF SigLIP / SigLIP 2 folder for the towers.
    pub init_siglip: Option<PathBuf>,
    /// HF Gemma 3 folder for the decoder.
    pub init_gemma: Option<PathBuf>,
    /// `tokenizer.json` when not starting from a model directory.
    pub tokenizer: Option<PathBuf>,
    /// Override the preset's input size.
    pub image_size: Option<usize>,
    /// Optimizer steps.
    pub steps: usize,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// λ in L = L_sig + λ (L_cap + L_loc).
    pub lambda: f64,
    /// Initial sigmoid-loss bias b for a model trained from scratch (SigLIP: −10, calibrated for
    /// batches of 32k pairs; a small batch wants about −ln(B − 1), else the towers collapse to
    /// constant embeddings that imitate the bias).
    pub sigmoid_bias_init: f64,
    /// Pairs of the sigmoid loss that count as positives. SigLIP uses the diagonal only; with
    /// label-derived texts a batch often holds several images with the same text, and calling
    /// those pairs negatives asks for the impossible (identical texts, opposite targets).
    pub sigmoid_positives: SigmoidPositives,
    /// Freezing choice.
    pub freeze: Freeze,
    /// Keep the text tower at its initial weights. Trained from scratch on a few hundred distinct
    /// label texts, the text tower quickly maps every text to one vector (the images cannot yet
    /// tell the labels apart, and that is the cheapest way to lower the loss); a frozen random
    /// tower with mean pooling keeps the texts apart, so the image tower has targets to learn.
    pub freeze_text: bool,
    /// Seed of everything random.
    pub seed: u64,
    /// Checkpoint every N steps.
    pub save_every: usize,
    /// Keep this many newest checkpoints (plus the best).
    pub keep_last: usize,
    /// Validate every N steps.
    pub val_every: usize,
    /// Patient-level validation share when no `--val` manifest is given.
    pub val_fraction: f64,
    /// Augmentation.
    pub augment: Augment,
    /// With `freeze = "encoder"`: encoder features cached per training image for this many views
    /// — view 0 as is, the others augmented with `augment` (boxes moved with them) — and each
    /// sample uses one view drawn at random. 1 caches the plain image only: no augmentation, the
    /// decoder sees the same features of an image every epoch.
    pub cache_views: usize,
    /// Task shares of the samples of images with regions (validation always uses the default).
    pub mix: TaskMix,
    /// Threads preparing images.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: "lofi-tiny".into(),
            init: None,
            init_siglip: None,
            init_gemma: None,
            tokenizer: None,
            image_size: None,
            steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            lr: 3e-4,
            weight_decay: 0.01,
            warmup: 50,
            min_lr_ratio: 0.01,
            grad_clip: 1.0,
            lambda: 1.0,
            sigmoid_bias_init: -10.0,
            sigmoid_positives: SigmoidPositives::Diagonal,
            freeze: Freeze::Full,
            freeze_text: false,
            seed: 0,
            save_every: 200,
            keep_last: 3,
            val_every: 200,
            val_fraction: 0.15,
            augment: Augment::default(),
            cache_views: 1,
            mix: TaskMix::default(),
            threads: 2,
        }
    }
}

impl TrainConfig {
    /// Read a TOML file; its relative paths are resolved as
    /// [`crate::model::bundled::resolve_config_path`] does, so a run starts from any folder.
    pub fn from_toml(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        })?;
        let mut cfg: Self = toml::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        cfg.resolve_paths(Some(path));
        Ok(cfg)
    }

    /// Resolve the config's relative paths (see [`Self::from_toml`]).
    pub fn resolve_paths(&mut self, config_file: Option<&Path>) {
        use crate::model::bundled::resolve_config_path;
        for p in [
            &mut self.init,
            &mut self.init_siglip,
            &mut self.init_gemma,
            &mut self.tokenizer,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve_config_path(p, config_file);
        }
    }

    /// Fine-tuning an existing model `init` on new data (what `finetune --data M --out D` does
    /// without `--config`): its encoder frozen with cached features, a grounding-heavy task mix,
    /// 300 steps at a low learning rate.
    pub fn fine_tuning(init: PathBuf) -> Self {
        Self {
            init: Some(init),
            freeze: Freeze::Encoder,
            steps: 300,
            lr: 2e-4,
            warmup: 20,
            lambda: 5.0,
            save_every: 100,
            keep_last: 2,
            val_every: 300,
            mix: TaskMix {
                grounding: 0.8,
                full_phrase: 0.5,
                ..TaskMix::default()
            },
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return Err(TrainError::Config(
                "steps, batch_size and grad_accum must be > 0".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(TrainError::Config("lr must be a positive number".into()));
        }
        self.mix.check().map_err(TrainError::Config)?;
        if self.cache_views == 0 {
            return Err(TrainError::Config("cache_views must be ≥ 1".into()));
        }
        if self.mix.in_context > 0.0 && self.freeze != Freeze::Encoder {
            return Err(TrainError::Config(
                "mix.in_context needs freeze = \"encoder\" (examples come from the feature cache)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What the run reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: usize,
    /// Mean training loss over the last 50 steps.
    pub train_loss: f64,
    /// Last validation losses.
    pub val: BTreeMap<String, f64>,
    /// Where the final model directory is.
    pub model_dir: PathBuf,
    /// Whether the run stopped early on Ctrl-C.
    pub interrupted: bool,
}

/// Loss parts of one batch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LossParts {
    /// Total.
    pub total: f64,
    /// Sigmoid.
    pub sig: f64,
    /// Captioning.
    pub cap: f64,
    /// Location-aware captioning.
    pub loc: f64,
    /// Mean cosine between different images' embeddings in the batch (1.0 = collapsed).
    pub img_sim: f64,
    /// Mean cosine between different texts' embeddings in the batch.
    pub txt_sim: f64,
}

/// Mean off-diagonal entry of `e eᵀ` for L2-normalised rows `e` `(B, D)`.
fn mean_off_diagonal_cosine(e: &Tensor) -> Result<f64, TrainError> {
    let b = e.dim(0)?;
    if b < 2 {
        return Ok(0.0);
    }
    let e = e.detach().to_dtype(DType::F32)?;
    let sum = e.sum(0)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64; // Σ_ij e_i·e_j
    Ok((sum - b as f64) / (b * (b - 1)) as f64)
}

/// Cached encoder features of one image (frozen-encoder training): the backbone's tokens; the
/// pooled embedding is computed from them by the (trained) MAP head in each step.
#[derive(Debug, Clone)]
struct Features {
    tokens: Tensor,
}

/// The label texts of a locked-text (Gemma-kind) model with their frozen Gemma features: every
/// image of a batch is scored against every text, and a text is a positive for the images that
/// carry its finding (multi-label sigmoid loss).
#[derive(Debug, Clone)]
pub struct TextBank {
    /// The texts (label phrases and their synonyms, and "no finding").
    pub texts: Vec<String>,
    /// The label phrase each text stands for; empty for "no finding".
    pub keys: Vec<String>,
    /// Frozen features `(T, H)`.
    pub features: Tensor,
}

impl TextBank {
    /// Sigmoid targets `(B, T)`: +1 where sample i carries text j's finding, −1 elsewhere.
    pub fn targets(&self, samples: &[Sample], device: &Device) -> Result<Tensor, TrainError> {
        let t = self.keys.len();
        let mut z = vec![-1f32; samples.len() * t];
        for (i, s) in samples.iter().enumerate() {
            for (j, k) in self.keys.iter().enumerate() {
                let pos = if k.is_empty() {
                    s.label_keys.is_empty()
                } else {
                    s.label_keys.contains(k)
                };
                if pos {
                    z[i * t + j] = 1.0;
                }
            }
        }
        Ok(Tensor::from_vec(z, (samples.len(), t), device)?)
    }
}

/// Everything a training step needs.
pub struct Trainer {
    /// The model (built over `store`).
    pub model: LofiModel,
    /// Its parameters.
    pub store: Arc<ParamStore>,
    /// Tokenizer.
    pub tokenizer: LofiTokenizer,
    /// Model configuration.
    pub model_cfg: Config,
    /// Training configuration.
    pub cfg: TrainConfig,
    /// Device.
    pub device: Device,
    cache: Option<Vec<Features>>,
    /// Label texts and their frozen features (Gemma-kind text side), see [`Trainer::build_text_bank`].
    pub text_bank: Option<TextBank>,
}

/// The model config and tokenizer a run starts from, and where initial weights come from.
#[allow(clippy::type_complexity)]
pub fn resolve_model(
    cfg: &TrainConfig,
) -> Result<
    (
        Config,
        LofiTokenizer,
        Option<Box<dyn candle_nn::var_builder::SimpleBackend>>,
    ),
    TrainError,
> {
    if let Some(dir) = &cfg.init {
        let files = crate::model::load::ModelFiles::locate(dir)?;
        let mc = Config::from_file(&files.config)?;
        let tok = LofiTokenizer::from_file(&files.tokenizer, &mc.tokens)?;
        let st = crate::model::load::mmap(&files.weights_for(&mc)?)?;
        return Ok((mc, tok, Some(Box::new(st))));
    }
    let preset: Preset = cfg.preset.parse()?;
    let mut mc = Config::preset(preset);
    if let Some(s) = cfg.image_size {
        mc.image_size = s;
    }
    if let Some(b) = &mc.vision.base {
        // a pretrained backbone from the base folder; everything else starts fresh
        let st = crate::model::load::mmap(&[crate::model::base::base_file(b)?])?;
        let tok_path = cfg.tokenizer.clone().ok_or_else(|| {
            TrainError::Config("a new decoder needs `tokenizer` (path to tokenizer.json)".into())
        })?;
        let tok = LofiTokenizer::from_file(&tok_path, &mc.tokens)?;
        if cfg.freeze == Freeze::Lora {
            mc.lora = Some(LoraConfig::default());
        }
        mc.validate()?;
        return Ok((mc, tok, Some(Box::new(st))));
    }
    let hf = cfg.init_siglip.is_some() || cfg.init_gemma.is_some();
    let source: Option<Box<dyn candle_nn::var_builder::SimpleBackend>> = if hf {
        mc = crate::model::load::config_from_hf(
            mc,
            cfg.init_siglip.as_deref(),
            cfg.init_gemma.as_deref(),
        )?;
        Some(Box::new(crate::model::load::HfSources::open(
            cfg.init_siglip.as_deref(),
            cfg.init_gemma.as_deref(),
        )?))
    } else {
        None
    };
    let tok_path = match (&cfg.tokenizer, &cfg.init_gemma) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => g.join("tokenizer.json"),
        (None, None) => {
            return Err(TrainError::Config(
                "a model trained from scratch needs `tokenizer` (path to tokenizer.json)".into(),
            ))
        }
    };
    let tok = LofiTokenizer::from_file(&tok_path, &mc.tokens)?;
    if tok.vocab_size() > mc.decoder.vocab_size {
        return Err(TrainError::Config(format!(
            "tokenizer has {} tokens, decoder vocabulary {}",
            tok.vocab_size(),
            mc.decoder.vocab_size
        )));
    }
    if cfg.freeze == Freeze::Lora {
        mc.lora = Some(LoraConfig::default());
    }
    mc.validate()?;
    Ok((mc, tok, source))
}

fn trainable_fn(freeze: Freeze, freeze_text: bool) -> TrainableFn {
    let inner = trainable_fn_inner(freeze);
    if freeze_text {
        Arc::new(move |n: &str| !n.starts_with("text_model.") && inner(n))
    } else {
        inner
    }
}

fn trainable_fn_inner(freeze: Freeze) -> TrainableFn {
    match freeze {
        Freeze::Full => Arc::new(|_| true),
        // the pooled-embedding head sits on the frozen tokens and trains
        Freeze::Encoder => Arc::new(|n: &str| {
            !n.starts_with("vision_model.") || n.starts_with("vision_model.head.")
        }),
        Freeze::Lora => Arc::new(|n: &str| {
            n.contains("lora_")
                || n.contains(".head.")
                || n.starts_with("projector.")
                || n.starts_with("logit_")
        }),
    }
}

impl Trainer {
    /// Build the model and parameters for a run (f32).
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self, TrainError> {
        Self::with_dtype(cfg, device, DType::F32)
    }

    /// Build with an explicit parameter dtype (f64 for finite-difference checks).
    pub fn with_dtype(cfg: TrainConfig, device: Device, dtype: DType) -> Result<Self, TrainError> {
        cfg.check()?;
        let (model_cfg, tokenizer, source) = resolve_model(&cfg)?;
        let store = ParamStore::new(cfg.seed, source, trainable_fn(cfg.freeze, cfg.freeze_text));
        let vb = store.var_builder(dtype, &device);
        // the sigmoid bias is created first so a from-scratch run starts from the configured value
        let _ = vb.get_with_hints(
            1,
            "logit_bias",
            candle_nn::Init::Const(cfg.sigmoid_bias_init),
        )?;
        let model = LofiModel::new(&model_cfg, vb)?;
        Ok(Self {
            model,
            store,
            tokenizer,
            model_cfg,
            cfg,
            device,
            cache: None,
            text_bank: None,
        })
    }

    /// For a Gemma-kind text side: the label texts of `images` (each finding's label phrase, the
    /// synonyms of its regions, and "no finding") with their frozen Gemma features, computed once.
    pub fn build_text_bank(&mut self, images: &[TrainImage]) -> Result<(), TrainError> {
        if self.model_cfg.text.kind != crate::model::config::TextKind::Gemma {
            return Ok(());
        }
        let mut pairs: std::collections::BTreeSet<(String, String)> = Default::default();
        pairs.insert((String::new(), "no finding".into()));
        for img in images {
            for k in &img.label_keys {
                pairs.insert((k.clone(), k.clone()));
            }
            for r in &img.regions {
                let key = crate::manifest::label_phrase(&r.finding);
                pairs.insert((key.clone(), r.phrase_basic.clone()));
                for syn in &r.synonyms {
                    pairs.insert((key.clone(), syn.clone()));
                }
            }
        }
        let (keys, texts): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        let gemma = crate::model::gemma_text::GemmaText::load_base(&self.device, DType::F32)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let features = gemma.features(&refs)?;
        tracing::info!("text bank: {} texts of {} findings", texts.len(), keys.iter().collect::<std::collections::BTreeSet<_>>().len());
        self.text_bank = Some(TextBank {
            texts,
            keys,
            features,
        });
        Ok(())
    }

    /// Compute and keep the frozen encoder's features of `images` (frozen-encoder mode).
    pub fn cache_features(&mut self, images: &[TrainImage]) -> Result<(), TrainError> {
        let px: Vec<Vec<f32>> = images
            .iter()
            .map(|i| crate::model::image::normalize(i.square.as_raw()))
            .collect();
        self.cache_pixel_features(&px)
    }

    /// Compute and keep the frozen encoder's features of normalised squares (frozen-encoder
    /// mode); cache index i is `pixels[i]`.
    pub fn cache_pixel_features(&mut self, pixels: &[Vec<f32>]) -> Result<(), TrainError> {
        let mut out = Vec::with_capacity(pixels.len());
        for chunk in pixels.chunks(16) {
            let t = self.pixels_tensor(chunk)?;
            let tokens = self.model.vision.tokens(&t)?;
            for i in 0..chunk.len() {
                out.push(Features {
                    tokens: tokens.get(i)?.detach(),
                });
            }
        }
        self.cache = Some(out);
        Ok(())
    }

    fn pixels_tensor(&self, px: &[Vec<f32>]) -> Result<Tensor, TrainError> {
        let s = self.model_cfg.image_size;
        let c = self.model_cfg.vision.num_channels;
        let flat: Vec<f32> = px.iter().flat_map(|p| p.iter().copied()).collect();
        let t = Tensor::from_vec(flat, (px.len(), 1, s, s), &self.device)?
            .to_dtype(self.model.decoder.dtype())?;
        Ok(if c > 1 { t.repeat((1, c, 1, 1))? } else { t })
    }

    /// Forward pass and loss of a batch. With `cached`, `cached[i]` indexes the frozen encoder's
    /// feature cache for sample i; otherwise the images are encoded.
    pub fn batch_loss(
        &self,
        samples: &[Sample],
        cached: Option<&[usize]>,
    ) -> Result<(Tensor, LossParts), TrainError> {
        let b = samples.len();
        let (tokens, pooled) = match (&self.cache, cached) {
            (Some(cache), Some(image_idx)) => {
                let t: Vec<Tensor> = image_idx.iter().map(|&i| cache[i].tokens.clone()).collect();
                let t = Tensor::stack(&t, 0)?;
                let p = self.model.vision.pool(&t)?;
                (t, p)
            }
            _ => {
                let px: Vec<Vec<f32>> = samples.iter().map(|s| s.pixels.clone()).collect();
                let o = self.model.encode_images(&self.pixels_tensor(&px)?)?;
                let pooled = match o.pooled {
                    Some(p) => p,
                    None => o.tokens.mean(1)?,
                };
                (o.tokens, pooled)
            }
        };
        // sigmoid loss
        let (txt, sig) = self.sigmoid_part(samples, &pooled)?;
        let img = l2_normalize(&pooled)?;
        // decoder losses
        let m = self.model_cfg.projector.num_tokens;
        let prefix = self.model.projector.forward(&tokens)?;
        let prompts = samples
            .iter()
            .map(|s| {
                let mut turns: Vec<Turn> = s.shots.iter().map(|(_, t)| t.clone()).collect();
                turns.push(s.turn.clone());
                build_prompt(&self.tokenizer, &turns, m)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // every prompt's first image (an example's or the query's) sits at the same position
        let start = prompts[0].image_starts[0];
        if prompts.iter().any(|p| p.image_starts[0] != start) {
            return Err(TrainError::Data(
                "prompts disagree on the image position".into(),
            ));
        }
        // samples with in-context examples have much longer prompts: they run through the
        // decoder as a second group, so the single-image prompts are not padded to their length
        let plain: Vec<usize> = (0..b).filter(|&i| samples[i].shots.is_empty()).collect();
        let with_shots: Vec<usize> = (0..b).filter(|&i| !samples[i].shots.is_empty()).collect();
        let (mut cap_h, mut cap_tgt, mut loc_h, mut loc_tgt) = (vec![], vec![], vec![], vec![]);
        for group in [plain, with_shots] {
            if group.is_empty() {
                continue;
            }
            let n = group.len();
            let t_max = group
                .iter()
                .map(|&i| prompts[i].ids.len())
                .max()
                .unwrap_or(0);
            let mut flat_ids = Vec::with_capacity(n * t_max);
            let (mut cap_rows, mut loc_rows) = (vec![], vec![]);
            for (gi, &bi) in group.iter().enumerate() {
                let (p, s) = (&prompts[bi], &samples[bi]);
                for t in 0..t_max {
                    let id = p.ids.get(t).copied().unwrap_or(self.tokenizer.pad);
                    flat_ids.push(id);
                    if t >= 1 && p.targets.get(t).copied().unwrap_or(false) {
                        let row = (gi * t_max + t - 1) as u32;
                        match s.kind {
                            TaskKind::Caption => {
                                cap_rows.push(row);
                                cap_tgt.push(id);
                            }
                            TaskKind::Location => {
                                loc_rows.push(row);
                                loc_tgt.push(id);
                            }
                        }
                    }
                }
            }
            let ids = Tensor::from_vec(flat_ids, (n, t_max), &self.device)?;
            let embeds = if samples[group[0]].shots.is_empty() {
                let pre = if n == b {
                    prefix.clone()
                } else {
                    let rows: Vec<u32> = group.iter().map(|&i| i as u32).collect();
                    prefix.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?
                };
                self.model.prompt_embeds(&ids, &[start], &[pre])?
            } else {
                self.embeds_with_shots(samples, &prompts, &group, &ids, &prefix)?
            };
            let hidden = self.model.decoder.forward_embeds(&embeds, None)?;
            let hidden = hidden.reshape((n * t_max, ()))?;
            for (rows, out) in [(cap_rows, &mut cap_h), (loc_rows, &mut loc_h)] {
                if !rows.is_empty() {
                    let k = rows.len();
                    out.push(hidden.index_select(&Tensor::from_vec(rows, k, &self.device)?, 0)?);
                }
            }
        }
        let ce = |h: Vec<Tensor>, tgt: Vec<u32>| -> Result<Option<Tensor>, TrainError> {
            if h.is_empty() {
                return Ok(None);
            }
            let h = if h.len() == 1 {
                h[0].clone()
            } else {
                Tensor::cat(&h, 0)?
            };
            let n = tgt.len();
            let tgt = Tensor::from_vec(tgt, n, &self.device)?;
            let logits = self.model.decoder.logits(&h)?;
            Ok(Some(loss::cross_entropy(&logits, &tgt)?))
        };
        let cap = ce(cap_h, cap_tgt)?;
        let loc = ce(loc_h, loc_tgt)?;
        let scalar = |t: &Option<Tensor>| -> Result<f64, TrainError> {
            Ok(match t {
                Some(t) => t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 0.0,
            })
        };
        let parts_dec = match (&cap, &loc) {
            (Some(c), Some(l)) => Some((c + l)?),
            (Some(c), None) => Some(c.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => None,
        };
        let total = match parts_dec {
            Some(d) => (&sig + (d * self.cfg.lambda)?)?,
            None => sig.clone(),
        };
        let parts = LossParts {
            total: total.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            sig: sig.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            cap: scalar(&cap)?,
            loc: scalar(&loc)?,
            img_sim: mean_off_diagonal_cosine(&img)?,
            txt_sim: mean_off_diagonal_cosine(&txt)?,
        };
        Ok((total, parts))
    }

    /// The sigmoid loss of a batch and the normalised text embeddings it used: against the
    /// label-text bank for a Gemma-kind text side, else against each sample's own text.
    fn sigmoid_part(&self, samples: &[Sample], pooled: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let b = samples.len();
        let img = l2_normalize(pooled)?;
        if self.model_cfg.text.kind == crate::model::config::TextKind::Gemma {
            let bank = self.text_bank.as_ref().ok_or_else(|| {
                TrainError::Data("a Gemma-kind text side needs the text bank (build_text_bank)".into())
            })?;
            let f = bank.features.to_dtype(img.dtype())?;
            let txt = l2_normalize(&self.model.text.head_forward(&f)?)?;
            let z = bank.targets(samples, &self.device)?.to_dtype(img.dtype())?;
            let sig = loss::sigmoid_loss_targets(
                &img,
                &txt,
                &self.model.logit_scale,
                &self.model.logit_bias,
                &z,
            )?;
            return Ok((txt, sig));
        }
        let len = self.model.text.max_len();
        let mut ids = Vec::with_capacity(b * len);
        for s in samples {
            ids.extend(
                self.tokenizer
                    .encode_fixed(&s.text, len, self.model.text.pad_left())?,
            );
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let txt = l2_normalize(&self.model.text.embed(&ids, self.tokenizer.pad)?)?;
        let z = loss::pair_targets(
            &samples.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
            self.cfg.sigmoid_positives == SigmoidPositives::SameText,
            &self.device,
        )?;
        let sig = loss::sigmoid_loss_targets(
            &img,
            &txt,
            &self.model.logit_scale,
            &self.model.logit_bias,
            &z.to_dtype(img.dtype())?,
        )?;
        Ok((txt, sig))
    }

    /// Decoder input embeddings of a batch in which some samples carry solved examples: each
    /// sample's prompt gets its examples' prefixes (projected from the feature cache, whose index
    /// each shot holds) and then its own `prefix` row, at that prompt's own image positions.
    fn embeds_with_shots(
        &self,
        samples: &[Sample],
        prompts: &[crate::model::prompt::Prompt],
        group: &[usize],
        ids: &Tensor,
        prefix: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let cache = self.cache.as_ref().ok_or_else(|| {
            TrainError::Data("in-context examples need the frozen encoder's feature cache".into())
        })?;
        let shot_idx: Vec<usize> = group
            .iter()
            .flat_map(|&i| samples[i].shots.iter().map(|(c, _)| *c))
            .collect();
        let toks = shot_idx
            .iter()
            .map(|&c| {
                cache.get(c).map(|f| f.tokens.clone()).ok_or_else(|| {
                    TrainError::Data(format!(
                        "in-context example {c} is not in the feature cache"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shot_prefix = self.model.projector.forward(&Tensor::stack(&toks, 0)?)?;
        let mut rows = Vec::with_capacity(group.len());
        let mut next = 0;
        for (gi, &i) in group.iter().enumerate() {
            let (s, p) = (&samples[i], &prompts[i]);
            let mut pre = Vec::with_capacity(s.shots.len() + 1);
            for _ in &s.shots {
                pre.push(shot_prefix.narrow(0, next, 1)?);
                next += 1;
            }
            pre.push(prefix.narrow(0, i, 1)?);
            rows.push(
                self.model
                    .prompt_embeds(&ids.narrow(0, gi, 1)?, &p.image_starts, &pre)?,
            );
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Gradients of the trainable parameters for one batch.
    pub fn grads(
        &self,
        samples: &[Sample],
        image_idx: &[usize],
    ) -> Result<(BTreeMap<String, Tensor>, LossParts), TrainError> {
        let (total, parts) = self.batch_loss(samples, Some(image_idx))?;
        let gs = total.backward()?;
        let mut out = BTreeMap::new();
        for (name, var) in self.store.trainable() {
            if let Some(g) = gs.get(var.as_tensor()) {
                out.insert(name, g.clone());
            }
        }
        Ok((out, parts))
    }
}

/// Image indices for the global sample positions `from..from + n` (epoch permutations from seed).
pub fn sample_order(seed: u64, n_images: usize, from: usize, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut cur_epoch = usize::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for g in from..from + n {
        let e = g / n_images;
        if e != cur_epoch {
            perm = (0..n_images).collect();
            perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ (0x5EED_0000 + e as u64),
            ));
            cur_epoch = e;
        }
        out.push(perm[g % n_images]);
    }
    out
}

/// `views` views of every image for the frozen encoder's feature cache, at index k · views + v
/// for image k (`images[0]` is image `first` of the training set): view 0 is the image as is, the
/// others are augmented with `aug` (deterministic given `seed` and k). Returns the normalised
/// pixels of each view and its regions' boxes (`None`: moved out).
pub fn augmented_views(
    images: &[TrainImage],
    first: usize,
    views: usize,
    aug: &Augment,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<Vec<Option<UnitBox>>>) {
    let mut px = Vec::with_capacity(images.len() * views);
    let mut boxes_out = Vec::with_capacity(images.len() * views);
    for (k, im) in (first..).zip(images) {
        let boxes: Vec<UnitBox> = im.regions.iter().map(|r| r.unit).collect();
        for v in 0..views {
            if v == 0 {
                px.push(crate::model::image::normalize(im.square.as_raw()));
                boxes_out.push(boxes.iter().map(|&b| Some(b)).collect());
            } else {
                let mut rng = sample_rng(seed ^ VIEW_SALT, k * views + v);
                let (p, moved) = data::augment(&im.square, &boxes, aug, &mut rng);
                px.push(p);
                boxes_out.push(moved);
            }
        }
    }
    (px, boxes_out)
}

/// Salt of the random streams of cached augmented views.
const VIEW_SALT: u64 = 0x0076_1E35;

fn sample_rng(seed: u64, g: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::manifest::fnv64(seed, &(g as u64).to_le_bytes()))
}

/// Options of one `finetune` invocation beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
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
        let names: Vec<String> = tensors
            .keys()
            .filter(|k| k.ends_with(".lora_A.weight"))
            .cloned()
            .collect();
        for a_name in names {
            let prefix = a_name.trim_end_matches(".lora_A.weight").to_string();
            let b_name = format!("{prefix}.lora_B.weight");
            let w_name = format!("{prefix}.weight");
            let (rank, alpha) = if prefix.starts_with("decoder.") {
                (l.decoder_rank, l.decoder_alpha)
            } else {
                (l.encoder_rank, l.encoder_alpha)
            };
            let (Some(a), Some(b), Some(w)) = (
                tensors.get(&a_name),
                tensors.get(&b_name),
                tensors.get(&w_name),
            ) else {
                continue;
            };
            let merged = (w + (b.matmul(a)? * (alpha / rank as f64))?)?;
            tensors.insert(w_name, merged);
            tensors.remove(&a_name);
            tensors.remove(&b_name);
        }
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
    let bar = |len: usize, what: &str| {
        let pb = if opts.progress {
            indicatif::ProgressBar::new(len as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{msg}} (ETA {{eta}})"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    };
    let pb = bar(train.records.len() + val.records.len(), "loading");
    let train_imgs = data::prepare(train, size, cfg.threads, &|_| pb.inc(1))?;
    let val_imgs = data::prepare(val, size, cfg.threads, &|_| pb.inc(1))?;
    pb.finish_and_clear();
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
        tr.cache_features(&train_imgs)?;
        Augment::none()
    } else if views > 1 {
        // a few images at a time: only their views' pixels are held at once
        let pb = bar(train_imgs.len() * views, "caching features");
        let mut feats = Vec::with_capacity(train_imgs.len() * views);
        for (c, chunk) in train_imgs.chunks(16).enumerate() {
            let (px, vb) = augmented_views(chunk, c * 16, views, &cfg.augment, cfg.seed);
            tr.cache_pixel_features(&px)?;
            feats.extend(tr.cache.take().unwrap_or_default());
            view_boxes.extend(vb);
            pb.set_position(feats.len() as u64);
        }
        tr.cache = Some(feats);
        pb.finish_and_clear();
        Augment::none()
    } else {
        cfg.augment
    };
    // in-context training: per image and finding, the nearest other-patient training images
    // with that finding by the frozen encoder's pooled image embedding (view 0), the embedding
    // `ground --shots K` retrieves with
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
                let pooled = tr.model.vision.pool(&f.tokens.unsqueeze(0)?)?.squeeze(0)?;
                Ok(pooled.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            })
            .collect::<Result<Vec<Vec<f32>>, TrainError>>()?;
        data::nearest_by_finding(&train_imgs, &pooled, 4 * cfg.mix.max_shots.max(1))
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
    let pb = bar(cfg.steps, "finetune");
    pb.set_position(state.step as u64);
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
            pb.abandon();
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
        pb.set_message(format!(
            "loss {:.3} (sig {:.3} cap {:.3} loc {:.3}) lr {lr:.2e} {sps:.1} img/s",
            parts.total, parts.sig, parts.cap, parts.loc
        ));
        pb.set_position(state.step as u64);

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
        pb.abandon_with_message(format!("stopped at step {}; checkpoint saved", state.step));
    } else {
        pb.finish();
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
