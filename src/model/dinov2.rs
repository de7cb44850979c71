//! DINOv2 ViT backbone (HF `Dinov2Model` key layout under `vision_model.`): patch 14, a CLS token,
//! LayerScale, pre-norm blocks with exact (erf) GELU, and the position grid resized with
//! PyTorch's bicubic kernel (`interpolate_pos_encoding`) to any input that is a multiple of 14.
//!
//! Differentiable throughout (plain ops, no fused kernels), so it can be fine-tuned or unfrozen.
//! Input pixels are our usual letterboxed squares in [-1, 1] (one channel or three); the ImageNet
//! mean/std normalisation DINOv2 was trained with is applied here.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::config::VisionConfig;
use super::nn::{
    multi_head_attention, resize_position_grid, Activation, LayerNorm, Linear, LoraSpec, Mlp,
    W_INIT,
};

/// ImageNet channel means (RGB) DINOv2 was trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    heads: usize,
    scale: f64,
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: LayerNorm,
    attention: SelfAttention,
    layer_scale1: Tensor,
    norm2: LayerNorm,
    mlp: Mlp,
    layer_scale2: Tensor,
}

impl Layer {
    fn new(cfg: &VisionConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let att = vb.pp("attention");
        let a = att.pp("attention");
        let scale_init = Init::Const(1.0);
        Ok(Self {
            norm1: LayerNorm::new(d, eps, vb.pp("norm1"))?,
            attention: SelfAttention {
                query: Linear::new(d, d, true, lora, a.pp("query"))?,
                key: Linear::new(d, d, true, lora, a.pp("key"))?,
                value: Linear::new(d, d, true, lora, a.pp("value"))?,
                dense: Linear::new(d, d, true, lora, att.pp("output").pp("dense"))?,
                heads: cfg.num_attention_heads,
                scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
            },
            layer_scale1: vb
                .pp("layer_scale1")
                .get_with_hints(d, "lambda1", scale_init)?,
            norm2: LayerNorm::new(d, eps, vb.pp("norm2"))?,
            mlp: Mlp::new(d, cfg.intermediate_size, lora, vb.pp("mlp"))?
                .with_activation(Activation::GeluErf),
            layer_scale2: vb
                .pp("layer_scale2")
                .get_with_hints(d, "lambda1", scale_init)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = &self.attention;
        let h = self.norm1.forward(x)?;
        let (q, k, v) = (
            a.query.forward(&h)?,
            a.key.forward(&h)?,
            a.value.forward(&h)?,
        );
        let o = a
            .dense
            .forward(&multi_head_attention(&q, &k, &v, a.heads, a.scale)?)?;
        let x = (x + o.broadcast_mul(&self.layer_scale1)?)?;
        let h = self.mlp.forward(&self.norm2.forward(&x)?)?;
        &x + h.broadcast_mul(&self.layer_scale2)?
    }
}

/// The DINOv2 backbone: `embeddings.*`, `encoder.layer.{i}.*`, `layernorm`.
#[derive(Debug, Clone)]
pub struct Dinov2 {
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
    cfg: VisionConfig,
}

/// Backbone output: the CLS token and the patch tokens, both after the final LayerNorm.
#[derive(Debug, Clone)]
pub struct Dinov2Output {
    /// `(B, D)`.
    pub cls: Tensor,
    /// `(B, N, D)`, row-major over the patch grid.
    pub patches: Tensor,
}

impl Dinov2 {
    /// Build under `vb` = `vision_model`.
    pub fn new(cfg: &VisionConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let (c, p, d) = (cfg.num_channels, cfg.patch_size, cfg.hidden_size);
        let emb = vb.pp("embeddings");
        let pe = emb.pp("patch_embeddings").pp("projection");
        let patch_weight = pe
            .get_with_hints((d, c, p, p), "weight", W_INIT)?
            .reshape((d, c * p * p))?;
        let patch_bias = pe.get_with_hints(d, "bias", Init::Const(0.0))?;
        let g = cfg.base_grid();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, lora, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_weight,
            patch_bias,
            cls_token: emb.get_with_hints((1, 1, d), "cls_token", W_INIT)?,
            position_embeddings: emb.get_with_hints(
                (1, 1 + g * g, d),
                "position_embeddings",
                W_INIT,
            )?,
            layers,
            layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            cfg: cfg.clone(),
        })
    }

    /// Patch-grid position embeddings resized to `gh × gw` (bicubic, half-pixel, a = −0.75, as
    /// PyTorch's `interpolate(mode="bicubic", align_corners=False)`), `(gh·gw, D)`.
    fn patch_positions(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let g = self.cfg.base_grid();
        let pos = self.position_embeddings.squeeze(0)?.narrow(0, 1, g * g)?;
        if gh == g && gw == g {
            return Ok(pos);
        }
        resize_position_grid(&pos, g, gh, gw)
    }

    /// ImageNet-normalised `(B, 3, H, W)` from our `(B, 1|3, H, W)` pixels in [-1, 1].
    fn normalise(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = pixels.dim(1)?;
        let x = if c == 1 && self.cfg.num_channels == 3 {
            pixels.repeat((1, 3, 1, 1))?
        } else {
            pixels.clone()
        };
        let c = x.dim(1)?;
        let dev = x.device();
        let (mut scale, mut shift) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for i in 0..c {
            // x01 = (x + 1) / 2; y = (x01 − mean) / std = x / (2 std) + (0.5 − mean) / std
            let (m, s) = (IMAGENET_MEAN[i % 3], IMAGENET_STD[i % 3]);
            scale.push(1.0 / (2.0 * s));
            shift.push((0.5 - m) / s);
        }
        let scale = Tensor::from_vec(scale, (1, c, 1, 1), dev)?.to_dtype(x.dtype())?;
        let shift = Tensor::from_vec(shift, (1, c, 1, 1), dev)?.to_dtype(x.dtype())?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }

    /// Run the backbone on ImageNet-normalised pixels `(B, 3, H, W)` (H, W multiples of 14).
    pub fn forward_normalised(&self, x: &Tensor) -> Result<Dinov2Output> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let d = self.cfg.hidden_size;
        let x = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let patches = x
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, gh * gw, d))?;
        let patches = patches.broadcast_add(&self.patch_positions(gh, gw)?.unsqueeze(0)?)?;
        let cls_pos = self.position_embeddings.narrow(1, 0, 1)?;
        let cls = (self.cls_token.broadcast_add(&cls_pos)?).repeat((b, 1, 1))?;
        let mut x = Tensor::cat(&[cls, patches], 1)?;
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        let x = self.layernorm.forward(&x)?;
        Ok(Dinov2Output {
            cls: x.narrow(1, 0, 1)?.squeeze(1)?,
            patches: x.narrow(1, 1, gh * gw)?,
        })
    }

    /// Run the backbone on our pixels `(B, 1|3, S, S)` in [-1, 1].
    pub fn forward(&self, pixels: &Tensor) -> Result<Dinov2Output> {
        let x = self.normalise(pixels)?;
        self.forward_normalised(&x)
    }

    /// The same backbone with another MLP activation. DINOv2 uses exact (erf) GELU;
    /// candle-transformers' `dinov2` uses the tanh approximation, which parity tests against it
    /// select here.
    pub fn with_mlp_activation(mut self, act: Activation) -> Self {
        for l in &mut self.layers {
            l.mlp = l.mlp.clone().with_activation(act);
        }
        self
    }

    /// Data type of the weights.
    pub fn dtype(&self) -> DType {
        self.patch_weight.dtype()
    }
}
