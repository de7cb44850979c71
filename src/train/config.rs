//! The training configuration: what a `--config` TOML holds, with defaults for every field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::{Augment, TaskMix};
use super::TrainError;

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
    /// Keep the retrieval / presence embedding as it is: the pooled-embedding head, the text
    /// head and the sigmoid temperature and bias do not train (a decoder-side stage after the
    /// embedding has been fitted).
    pub freeze_embedding: bool,
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
            freeze_embedding: false,
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

    pub(crate) fn check(&self) -> Result<(), TrainError> {
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
