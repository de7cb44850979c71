//! The pre-norm transformer encoder shared by the SigLIP vision and text towers, and the MAP
//! (multi-head attention pooling) block used by the pooled-embedding head and the projector.
//!
//! Key names follow HF `SiglipEncoder` / `SiglipMultiheadAttentionPoolingHead`.

use candle_core::{IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn::{multi_head_attention, LayerNorm, Linear, LoraSpec, Mlp, W_INIT};

/// Width, depth and LoRA of one encoder stack.
#[derive(Debug, Clone, Copy)]
pub struct EncoderDims {
    /// Token width.
    pub hidden: usize,
    /// MLP width.
    pub inner: usize,
    /// Heads.
    pub heads: usize,
    /// Layers.
    pub layers: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// LoRA on q/k/v/out/fc1/fc2.
    pub lora: Option<LoraSpec>,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let h = d.hidden;
        Ok(Self {
            q_proj: Linear::new(h, h, true, d.lora, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, h, true, d.lora, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, h, true, d.lora, vb.pp("v_proj"))?,
            out_proj: Linear::new(h, h, true, d.lora, vb.pp("out_proj"))?,
            heads: d.heads,
            scale: ((h / d.heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let o = multi_head_attention(&q, &k, &v, self.heads, self.scale)?;
        self.out_proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: SelfAttention::new(d, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::new(d.hidden, d.eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(d.hidden, d.inner, d.lora, vb.pp("mlp"))?,
            layer_norm2: LayerNorm::new(d.hidden, d.eps, vb.pp("layer_norm2"))?,
        })
    }
}

impl Module for EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.layer_norm2.forward(&x)?)?
    }
}

/// `encoder.layers.{i}`.
#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Build `d.layers` layers under `vb` (`…encoder`).
    pub fn new(d: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..d.layers)
            .map(|i| EncoderLayer::new(d, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}

/// `torch.nn.MultiheadAttention` (packed `in_proj_weight`), used by MAP blocks.
#[derive(Debug, Clone)]
struct PackedAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out_proj: Linear,
    heads: usize,
}

impl PackedAttention {
    fn new(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb
            .get_with_hints((3 * hidden, hidden), "in_proj_weight", W_INIT)?
            .chunk(3, 0)?;
        let b = vb
            .get_with_hints(3 * hidden, "in_proj_bias", candle_nn::Init::Const(0.0))?
            .chunk(3, 0)?;
        Ok(Self {
            q: Linear::from_tensors(w[0].clone(), Some(b[0].clone())),
            k: Linear::from_tensors(w[1].clone(), Some(b[1].clone())),
            v: Linear::from_tensors(w[2].clone(), Some(b[2].clone())),
            out_proj: Linear::new(hidden, hidden, true, None, vb.pp("out_proj"))?,
            heads,
        })
    }

    fn forward(&self, q: &Tensor, kv: &Tensor) -> Result<Tensor> {
        let q = self.q.forward(q)?;
        let d = q.dim(2)? / self.heads;
        let (k, v) = (self.k.forward(kv)?, self.v.forward(kv)?);
        let o = multi_head_attention(&q, &k, &v, self.heads, (d as f64).powf(-0.5))?;
        self.out_proj.forward(&o)
    }
}

/// Multi-head attention pooling: `probes` learned queries attend to the tokens, then
/// `x + mlp(layernorm(x))`. With one probe this is SigLIP's `head`.
#[derive(Debug, Clone)]
pub struct MapBlock {
    probe: Tensor,
    attention: PackedAttention,
    layernorm: LayerNorm,
    mlp: Mlp,
}

impl MapBlock {
    /// `probe` `(1, probes, hidden)`, `attention.*`, `layernorm`, `mlp.fc1/fc2` (hidden → inner → hidden).
    pub fn new(
        hidden: usize,
        inner: usize,
        heads: usize,
        probes: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            probe: vb.get_with_hints((1, probes, hidden), "probe", W_INIT)?,
            attention: PackedAttention::new(hidden, heads, vb.pp("attention"))?,
            layernorm: LayerNorm::new(hidden, eps, vb.pp("layernorm"))?,
            mlp: Mlp::new(hidden, inner, None, vb.pp("mlp"))?,
        })
    }

    /// Tokens `(B, N, D)` → pooled `(B, probes, D)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let probe = self.probe.repeat((b, 1, 1))?;
        let y = self.attention.forward(&probe, x)?;
        &y + self.mlp.forward(&self.layernorm.forward(&y)?)?
    }

    /// Pooled single vector `(B, D)` (first probe).
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)?.i((.., 0))
    }
}
