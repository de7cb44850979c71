//! The text encoder under `text_model.*`: either a SigLIP-style tower (HF `SiglipTextModel` keys:
//! fixed-length input, bidirectional attention, last-token or mean pooling, `head` projection),
//! or frozen Gemma 3 features ([`super::gemma_text`]) of which only `head` is ours.

use std::sync::Arc;

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{TextConfig, TextKind, TextPooling};
use super::encoder::{Encoder, EncoderDims};
use super::gemma_text::GemmaText;
use super::nn::{Embedding, LayerNorm, Linear, LoraSpec};

/// Name (under `text_model.`) of the fixed centre of a Gemma-kind model's text features.
pub const FEATURE_CENTER: &str = "feature_center";

/// `text_model`.
#[derive(Debug, Clone)]
pub struct TextModel {
    tower: Option<SiglipTower>,
    gemma: Option<Arc<GemmaText>>,
    feature_center: Option<Tensor>,
    head: Linear,
    kind: TextKind,
    max_len: usize,
    pad_left: bool,
    pooling: TextPooling,
}

#[derive(Debug, Clone)]
struct SiglipTower {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

impl TextModel {
    /// Build under `vb` = `text_model`. A Gemma-kind model builds only its `head`; its features
    /// come from [`Self::attach_gemma`].
    pub fn new(cfg: &TextConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let head = Linear::new(
            h,
            cfg.projection_size.unwrap_or(h),
            true,
            None,
            vb.pp("head"),
        )?;
        // Gemma's mean-pooled states of different texts share most of their direction; the head
        // reads them relative to the mean over the training texts (a fixed buffer)
        let feature_center = match cfg.kind {
            TextKind::Gemma => {
                Some(vb.get_with_hints(h, FEATURE_CENTER, candle_nn::Init::Const(0.0))?)
            }
            TextKind::Siglip => None,
        };
        let tower = match cfg.kind {
            TextKind::Siglip => Some(SiglipTower::new(cfg, lora, vb)?),
            TextKind::Gemma => None,
        };
        Ok(Self {
            tower,
            gemma: None,
            feature_center,
            head,
            kind: cfg.kind,
            max_len: cfg.max_position_embeddings,
            pad_left: cfg.pad_left,
            pooling: cfg.pooling,
        })
    }

    /// Give a Gemma-kind model its frozen feature extractor.
    pub fn attach_gemma(&mut self, gemma: Arc<GemmaText>) {
        self.gemma = Some(gemma);
    }

    /// Which kind of text side this is.
    pub fn kind(&self) -> TextKind {
        self.kind
    }

    /// The frozen Gemma, when attached.
    pub fn gemma(&self) -> Option<&Arc<GemmaText>> {
        self.gemma.as_ref()
    }

    /// The trained head on precomputed features `(N, H)` → `(N, P)` (relative to the feature
    /// centre of a Gemma-kind model).
    pub fn head_forward(&self, features: &Tensor) -> Result<Tensor> {
        match &self.feature_center {
            Some(c) => self
                .head
                .forward(&features.broadcast_sub(&c.to_dtype(features.dtype())?)?),
            None => self.head.forward(features),
        }
    }

    /// Text embeddings `(N, P)` of raw texts through frozen Gemma + head (Gemma kind only).
    pub fn embed_texts(&self, texts: &[&str]) -> std::result::Result<Tensor, super::ModelError> {
        let g = self.gemma.as_ref().ok_or_else(|| {
            super::ModelError::Config(
                "this model's text side needs Gemma, which is not loaded".into(),
            )
        })?;
        let f = g.features(texts)?.to_dtype(self.head.weight().dtype())?;
        Ok(self.head_forward(&f)?)
    }
}

impl SiglipTower {
    fn new(cfg: &TextConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let h = cfg.hidden_size;
        let dims = EncoderDims {
            hidden: h,
            inner: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            eps: cfg.layer_norm_eps,
            lora,
        };
        Ok(Self {
            token_embedding: Embedding::new(cfg.vocab_size, h, emb.pp("token_embedding"))?,
            position_embedding: Embedding::new(
                cfg.max_position_embeddings,
                h,
                emb.pp("position_embedding"),
            )?,
            encoder: Encoder::new(&dims, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
        })
    }
}

impl TextModel {
    /// Token ids `(B, T)` → text embeddings `(B, P)` with the configured pooling; `pad_id`
    /// marks the padding tokens that mean pooling leaves out.
    pub fn embed(&self, ids: &Tensor, pad_id: u32) -> Result<Tensor> {
        match self.pooling {
            TextPooling::Last => self.forward(ids),
            TextPooling::Mean => {
                let x = self.states(ids)?;
                let mask = ids.ne(pad_id)?.to_dtype(x.dtype())?.unsqueeze(2)?;
                let n = mask.sum(1)?.clamp(1.0, f64::MAX)?;
                let pooled = x.broadcast_mul(&mask)?.sum(1)?.broadcast_div(&n)?;
                self.head.forward(&pooled)
            }
        }
    }

    /// Token ids `(B, T)` with `T ≤ max_position_embeddings` → last-token text embeddings `(B, P)`
    /// (the SigLIP pooling, whatever the config says).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let x = self.states(ids)?;
        self.head.forward(&x.i((.., t - 1, ..))?.contiguous()?)
    }

    /// Final-layer-normed token states `(B, T, H)`.
    fn states(&self, ids: &Tensor) -> Result<Tensor> {
        let Some(tw) = &self.tower else {
            candle_core::bail!("a Gemma-kind text side embeds raw texts (embed_texts), not ids");
        };
        let (_, t) = ids.dims2()?;
        if t > self.max_len {
            candle_core::bail!(
                "text of {t} tokens exceeds the text tower's {}",
                self.max_len
            );
        }
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let x = tw
            .token_embedding
            .forward(ids)?
            .broadcast_add(&tw.position_embedding.forward(&pos)?.unsqueeze(0)?)?;
        let x = tw.encoder.forward(&x)?;
        tw.final_layer_norm.forward(&x)
    }

    /// Whether texts are padded on the left (see [`TextConfig::pad_left`]).
    pub fn pad_left(&self) -> bool {
        self.pad_left
    }

    /// The fixed text length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}
