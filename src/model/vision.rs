//! The ViT image encoder under `vision_model.*`: SigLIP-style (HF `SiglipVisionModel` keys) or a
//! DINOv2 backbone ([`super::dinov2`]), with the pooled-embedding MAP head (`vision_model.head`).
//!
//! Any square input size that is a multiple of the patch size works: the position-embedding grid
//! is resized with PyTorch's bicubic kernel, as HF's `interpolate_pos_encoding` does.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{PatchEmbedding, VisionConfig, VisionKind};
use super::dinov2::Dinov2;
use super::encoder::{Encoder, EncoderDims, MapBlock};
use super::nn::{resize_position_grid, LayerNorm, LoraSpec, W_INIT};

/// Output of the image encoder.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Patch tokens after `post_layernorm`, `(B, N, D)`, row-major over the patch grid.
    pub tokens: Tensor,
    /// The MAP head's pooled embedding `(B, D)` (not normalised).
    pub pooled: Option<Tensor>,
}

/// `vision_model`.
#[derive(Debug, Clone)]
pub struct VisionModel {
    backbone: Backbone,
    head: Option<MapBlock>,
    head_center: Option<Tensor>,
    cfg: VisionConfig,
}

/// Name (under `vision_model.`) of the fixed token centre the pooled-embedding head of a
/// pretrained backbone reads its tokens relative to (see [`VisionModel::pool`]).
pub const HEAD_CENTER: &str = "head_center";

#[derive(Debug, Clone)]
enum Backbone {
    Siglip(SiglipBackbone),
    Dinov2(Dinov2),
}

/// SigLIP's patch embedding, encoder and post-LayerNorm.
#[derive(Debug, Clone)]
struct SiglipBackbone {
    patch_weight: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl VisionModel {
    /// Build under `vb` = `vision_model`.
    pub fn new(cfg: &VisionConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let backbone = match cfg.kind {
            VisionKind::Siglip => Backbone::Siglip(SiglipBackbone::new(cfg, lora, vb.clone())?),
            VisionKind::Dinov2 => Backbone::Dinov2(Dinov2::new(cfg, lora, vb.clone())?),
        };
        let head = if cfg.vision_use_head {
            Some(MapBlock::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                1,
                cfg.layer_norm_eps,
                vb.pp("head"),
            )?)
        } else {
            None
        };
        // a pretrained backbone's tokens share a large common component (cosine ≈ 0.95 between
        // images), which a freshly initialised MAP head turns into near-identical embeddings
        // that the sigmoid loss cannot pull apart; the head reads them relative to their mean
        // over the training images, a fixed buffer set once before training
        let head_center = if cfg.kind == VisionKind::Dinov2 && cfg.vision_use_head {
            Some(vb.get_with_hints(cfg.hidden_size, HEAD_CENTER, candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            backbone,
            head,
            head_center,
            cfg: cfg.clone(),
        })
    }

    /// Backbone tokens `(B, N, D)` without the pooled head (what a frozen encoder caches).
    pub fn tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        match &self.backbone {
            Backbone::Siglip(b) => b.forward(pixels),
            Backbone::Dinov2(b) => Ok(b.forward(pixels)?.patches),
        }
    }

    /// The pooled embedding of backbone tokens (the MAP head; the token mean without one).
    pub fn pool(&self, tokens: &Tensor) -> Result<Tensor> {
        match (&self.head, &self.head_center) {
            (Some(h), Some(c)) => h.pool(&tokens.broadcast_sub(&c.to_dtype(tokens.dtype())?)?),
            (Some(h), None) => h.pool(tokens),
            (None, _) => tokens.mean(1),
        }
    }

    /// Encode images `(B, C, S, S)` normalised to [-1, 1].
    pub fn forward(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let tokens = self.tokens(pixels)?;
        let pooled = match &self.head {
            Some(_) => Some(self.pool(&tokens)?),
            None => None,
        };
        Ok(VisionOutput { tokens, pooled })
    }

    /// The configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }
}

impl SiglipBackbone {
    fn new(cfg: &VisionConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let (c, p, d) = (cfg.num_channels, cfg.patch_size, cfg.hidden_size);
        let emb = vb.pp("embeddings");
        let pe = emb.pp("patch_embedding");
        let patch_weight = match cfg.patch_embedding {
            PatchEmbedding::Conv => pe
                .get_with_hints((d, c, p, p), "weight", W_INIT)?
                .reshape((d, c * p * p))?,
            PatchEmbedding::Linear => pe.get_with_hints((d, p * p * c), "weight", W_INIT)?,
        };
        let patch_bias = pe.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?;
        let n = cfg.base_grid() * cfg.base_grid();
        let position_embedding =
            emb.pp("position_embedding")
                .get_with_hints((n, d), "weight", W_INIT)?;
        let dims = EncoderDims {
            hidden: d,
            inner: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            eps: cfg.layer_norm_eps,
            lora,
        };
        let encoder = Encoder::new(&dims, vb.pp("encoder"))?;
        let post_layernorm = LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            patch_weight,
            patch_bias,
            position_embedding,
            encoder,
            post_layernorm,
            cfg: cfg.clone(),
        })
    }

    /// Position embeddings for a `gh × gw` grid, `(gh·gw, D)`.
    fn positions(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let g = self.cfg.base_grid();
        if gh == g && gw == g {
            return Ok(self.position_embedding.clone());
        }
        resize_position_grid(&self.position_embedding, g, gh, gw)
    }

    /// Patchify and embed `(B, C, H, W)` → `(B, N, D)`.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let x = pixels.reshape((b, c, gh, p, gw, p))?;
        let x = match self.cfg.patch_embedding {
            PatchEmbedding::Conv => x.permute((0, 2, 4, 1, 3, 5))?,
            PatchEmbedding::Linear => x.permute((0, 2, 4, 3, 5, 1))?,
        };
        let x = x.contiguous()?.reshape((b * gh * gw, c * p * p))?;
        let x = x
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, gh * gw, ()))?;
        x.broadcast_add(&self.positions(gh, gw)?.unsqueeze(0)?)
    }

    /// Post-LayerNorm patch tokens of `(B, C, S, S)`.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embed(pixels)?;
        let x = self.encoder.forward(&x)?;
        self.post_layernorm.forward(&x)
    }
}
