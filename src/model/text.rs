//! SigLIP-style text encoder (`text_model.*` keys of HF `SiglipTextModel`): fixed-length input,
//! bidirectional attention, last-token pooling and the `head` projection.

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{TextConfig, TextPooling};
use super::encoder::{Encoder, EncoderDims};
use super::nn::{Embedding, LayerNorm, Linear, LoraSpec};

/// `text_model`.
#[derive(Debug, Clone)]
pub struct TextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    head: Linear,
    max_len: usize,
    pad_left: bool,
    pooling: TextPooling,
}

impl TextModel {
    /// Build under `vb` = `text_model`.
    pub fn new(cfg: &TextConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
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
            head: Linear::new(
                h,
                cfg.projection_size.unwrap_or(h),
                true,
                None,
                vb.pp("head"),
            )?,
            max_len: cfg.max_position_embeddings,
            pad_left: cfg.pad_left,
            pooling: cfg.pooling,
        })
    }

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
        let (_, t) = ids.dims2()?;
        if t > self.max_len {
            candle_core::bail!(
                "text of {t} tokens exceeds the text tower's {}",
                self.max_len
            );
        }
        let pos = Tensor::arange(0u32, t as u32, ids.device())?;
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&pos)?.unsqueeze(0)?)?;
        let x = self.encoder.forward(&x)?;
        self.final_layer_norm.forward(&x)
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
