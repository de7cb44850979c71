//! LoFi in candle: the model (one file per component, HF key names), its text and image sides,
//! loading, and the inference tasks.
//!
//! Checkpoint layout (`model.safetensors`): `vision_model.*` and `text_model.*` (HF SigLIP),
//! `logit_scale`, `logit_bias`, `projector.*`, `decoder.model.*` (HF Gemma 3 under `decoder.`).

pub mod base;
pub mod bundled;
pub mod config;
pub mod cpu_kernels;
pub mod decoder;
pub mod dinov2;
pub mod encoder;
pub mod fusion;
pub mod gelu;
pub mod gemma_text;
pub mod image;
pub mod load;
pub mod nn;
pub mod params;
pub mod presets;
pub mod projector;
pub mod prompt;
pub mod tasks;
pub mod text;
pub mod tokenizer;
pub mod vision;

use candle_core::{Tensor, D};
use candle_nn::{Init, VarBuilder};

pub use config::{Config, Preset};
pub use tasks::Lofi;

use self::config::LoraConfig;
use self::decoder::Decoder;
use self::nn::LoraSpec;
use self::projector::Projector;
use self::text::TextModel;
use self::vision::{VisionModel, VisionOutput};

/// Errors of the model library.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shapes, dtypes, devices, missing tensors).
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// The configuration is inconsistent or unreadable.
    #[error("model config: {0}")]
    Config(String),
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A required file is missing.
    #[error("missing model file: {0}")]
    MissingFile(std::path::PathBuf),
    /// A pretrained base weight file is missing (the set-up script imports it).
    #[error("missing pretrained base weights {path} — run `{command}` once to import them")]
    MissingBase {
        /// The file looked for.
        path: std::path::PathBuf,
        /// The command that provides it.
        command: &'static str,
    },
    /// A weight does not match the configuration.
    #[error("weights: {0}")]
    Weights(String),
    /// The requested device is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The LoFi model: image encoder, text encoder, projector and decoder.
#[derive(Debug, Clone)]
pub struct LofiModel {
    /// SigLIP-style image encoder.
    pub vision: VisionModel,
    /// SigLIP-style text encoder.
    pub text: TextModel,
    /// Image → decoder prefix.
    pub projector: Projector,
    /// Gemma-3-style decoder.
    pub decoder: Decoder,
    /// Sigmoid-loss temperature t′ (t = exp t′).
    pub logit_scale: Tensor,
    /// Sigmoid-loss bias b.
    pub logit_bias: Tensor,
    cfg: Config,
}

fn lora_specs(l: &Option<LoraConfig>) -> (Option<LoraSpec>, Option<LoraSpec>) {
    match l {
        None => (None, None),
        Some(l) => (
            (l.encoder_rank > 0).then_some(LoraSpec {
                rank: l.encoder_rank,
                alpha: l.encoder_alpha,
            }),
            (l.decoder_rank > 0).then_some(LoraSpec {
                rank: l.decoder_rank,
                alpha: l.decoder_alpha,
            }),
        ),
    }
}

impl LofiModel {
    /// Build every component from `vb` (keys as in the module docs).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let (enc_lora, dec_lora) = lora_specs(&cfg.lora);
        let vision = VisionModel::new(&cfg.vision, enc_lora, vb.pp("vision_model"))?;
        let text = TextModel::new(&cfg.text, enc_lora, vb.pp("text_model"))?;
        let logit_scale = vb.get_with_hints(1, "logit_scale", Init::Const(10f64.ln()))?;
        let logit_bias = vb.get_with_hints(1, "logit_bias", Init::Const(-10.0))?;
        let projector = Projector::new(
            &cfg.projector,
            cfg.vision.hidden_size,
            cfg.decoder.hidden_size,
            cfg.vision.layer_norm_eps,
            vb.pp("projector"),
        )?;
        let decoder = Decoder::new(&cfg.decoder, dec_lora, vb.pp("decoder"))?;
        Ok(Self {
            vision,
            text,
            projector,
            decoder,
            logit_scale,
            logit_bias,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Cap on generated tokens (benchmarks fix it so every run does the same work).
    pub fn set_max_new_tokens(&mut self, n: usize) {
        self.cfg.max_new_tokens = n;
    }

    /// Encode images `(B, C, S, S)`.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<VisionOutput, ModelError> {
        Ok(self.vision.forward(pixels)?)
    }

    /// Decoder input embeddings: scaled token embeddings of `ids` `(B, T)` with each
    /// `prefixes[i]` `(B, M, H)` written over the M placeholders starting at `image_starts[i]`.
    pub fn prompt_embeds(
        &self,
        ids: &Tensor,
        image_starts: &[usize],
        prefixes: &[Tensor],
    ) -> Result<Tensor, ModelError> {
        let (_, t) = ids.dims2()?;
        let mut parts = Vec::with_capacity(2 * prefixes.len() + 1);
        let mut pos = 0;
        for (start, prefix) in image_starts.iter().zip(prefixes) {
            let m = prefix.dim(1)?;
            if *start > pos {
                parts.push(self.decoder.embed(&ids.narrow(1, pos, start - pos)?)?);
            }
            parts.push(prefix.to_dtype(self.decoder.dtype())?);
            pos = start + m;
        }
        if pos < t {
            parts.push(self.decoder.embed(&ids.narrow(1, pos, t - pos)?)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// Serialise named tensors (sorted by name) as safetensors and write them crash-safely (temp,
/// fsync, rename). The one writer of weight files.
pub fn save_safetensors(
    tensors: &[(String, Tensor)],
    path: &std::path::Path,
) -> Result<(), ModelError> {
    let mut v: Vec<&(String, Tensor)> = tensors.iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(v.iter().map(|(k, t)| (k.clone(), t)), None)
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    crate::util::atomic_write(path, &bytes).map_err(|source| ModelError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// Fold every LoRA adapter into its base weight: `W + (α / r) · B A` (decoder adapters use the
/// decoder's rank and alpha, the others the encoder's), and drop the adapter tensors.
pub fn merge_lora(
    tensors: &mut std::collections::BTreeMap<String, Tensor>,
    l: &LoraConfig,
) -> Result<(), ModelError> {
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
        let merged = (w + (b.matmul(a)? * (alpha / rank.max(1) as f64))?)?;
        tensors.insert(w_name, merged);
        tensors.remove(&a_name);
        tensors.remove(&b_name);
    }
    Ok(())
}

/// L2-normalise the last dimension.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&n)
}
