//! Gemma-3-style decoder (`model.*` keys of HF `Gemma3ForCausalLM`, under `decoder.` in our
//! checkpoints): GQA, q/k RMSNorm, 5 local : 1 global layers with separate RoPE bases, GeGLU,
//! sandwich norms, tied embeddings.
//!
//! The model is immutable during inference; the KV cache lives in a separate [`KvCache`] so one
//! loaded model can serve several threads.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{DecoderConfig, HiddenActivation};
use super::nn::{attention, causal_mask, rope_tables, Embedding, Linear, LoraSpec, RmsNorm};

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n, t, d))?
        .reshape((b, h * n, t, d))
}

impl Attention {
    fn new(cfg: &DecoderConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(h, nq * hd, bias, lora, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * hd, bias, None, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * hd, bias, lora, vb.pp("v_proj"))?,
            o_proj: Linear::new(nq * hd, h, bias, None, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            heads: nq,
            kv_heads: nkv,
            head_dim: hd,
            scale: (cfg.query_pre_attn_scalar as f64).powf(-0.5),
            softcap: cfg.attn_logit_softcapping,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let shape = |n| (b, t, n, self.head_dim);
        let q = self
            .q_proj
            .forward(x)?
            .reshape(shape(self.heads))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(shape(self.kv_heads))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(shape(self.kv_heads))?
            .transpose(1, 2)?;
        let q = self.q_norm.forward(&q.contiguous()?)?;
        let k = self.k_norm.forward(&k.contiguous()?)?;
        let cos = cos.narrow(0, offset, t)?;
        let sin = sin.narrow(0, offset, t)?;
        let q = super::nn::rope(&q, &cos, &sin)?;
        let k = super::nn::rope(&k, &cos, &sin)?;
        let v = v.contiguous()?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let n_rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let o = attention(&q, &k, &v, self.scale, mask, self.softcap)?;
        self.o_proj.forward(
            &o.transpose(1, 2)?
                .reshape((b, t, self.heads * self.head_dim))?,
        )
    }
}

#[derive(Debug, Clone)]
struct GeGlu {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: HiddenActivation,
}

impl Module for GeGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward(x)?;
        let g = match self.act {
            HiddenActivation::GeluPytorchTanh => super::nn::gelu(&g)?,
            HiddenActivation::Silu => candle_nn::ops::silu(&g)?,
        };
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    self_attn: Attention,
    mlp: GeGlu,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    sliding: bool,
}

/// `decoder` (HF `Gemma3ForCausalLM`).
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rope_local: (Tensor, Tensor),
    rope_global: (Tensor, Tensor),
    cfg: DecoderConfig,
}

/// What [`Decoder::forward_embeds`] needs to know about the attention pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masking {
    /// Causal (and sliding-window where a layer has one).
    Causal,
}

impl Decoder {
    /// Build under `vb` = `decoder` (keys `model.embed_tokens`, `model.layers.{i}`, `model.norm`).
    pub fn new(cfg: &DecoderConfig, lora: Option<LoraSpec>, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let h = cfg.hidden_size;
        let eps = cfg.rms_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let mlp = l.pp("mlp");
            layers.push(Layer {
                self_attn: Attention::new(cfg, lora, l.pp("self_attn"))?,
                mlp: GeGlu {
                    gate_proj: Linear::new(
                        h,
                        cfg.intermediate_size,
                        false,
                        None,
                        mlp.pp("gate_proj"),
                    )?,
                    up_proj: Linear::new(h, cfg.intermediate_size, false, None, mlp.pp("up_proj"))?,
                    down_proj: Linear::new(
                        cfg.intermediate_size,
                        h,
                        false,
                        None,
                        mlp.pp("down_proj"),
                    )?,
                    act: cfg.hidden_activation,
                },
                input_layernorm: RmsNorm::new(h, eps, l.pp("input_layernorm"))?,
                post_attention_layernorm: RmsNorm::new(h, eps, l.pp("post_attention_layernorm"))?,
                pre_feedforward_layernorm: RmsNorm::new(h, eps, l.pp("pre_feedforward_layernorm"))?,
                post_feedforward_layernorm: RmsNorm::new(
                    h,
                    eps,
                    l.pp("post_feedforward_layernorm"),
                )?,
                sliding: cfg.is_sliding(i),
            });
        }
        let dev = vb.device();
        let max = cfg.max_position_embeddings;
        Ok(Self {
            embed_tokens: Embedding::new(cfg.vocab_size, h, m.pp("embed_tokens"))?,
            layers,
            norm: RmsNorm::new(h, eps, m.pp("norm"))?,
            rope_local: rope_tables(cfg.head_dim, cfg.rope_local_base_freq, max, vb.dtype(), dev)?,
            rope_global: rope_tables(cfg.head_dim, cfg.rope_theta, max, vb.dtype(), dev)?,
            cfg: cfg.clone(),
        })
    }

    /// Token embeddings scaled by √hidden, `(B, T, H)` (the image prefix is not scaled).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let e = self.embed_tokens.forward(ids)?;
        e * (self.cfg.hidden_size as f64).sqrt()
    }

    /// Run the layers over input embeddings `(B, T, H)` starting at position `cache.len()`;
    /// returns the final-normed hidden states `(B, T, H)`. `cache` is extended when given.
    pub fn forward_embeds(&self, x: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds the decoder's {}",
                offset + t,
                self.cfg.max_position_embeddings
            );
        }
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = vec![None; self.layers.len()];
            }
        }
        let dt = x.dtype();
        let dev = x.device();
        let global_mask = causal_mask(t, offset, None, dt, dev)?;
        let window = self.cfg.sliding_window;
        let local_mask = if offset + t > window {
            causal_mask(t, offset, Some(window), dt, dev)?
        } else {
            global_mask.clone()
        };
        let need_mask = t > 1 || offset + t > window;
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let (rope, mask) = if l.sliding {
                (&self.rope_local, &local_mask)
            } else {
                (&self.rope_global, &global_mask)
            };
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let h = l.input_layernorm.forward(&x)?;
            let h = l.self_attn.forward(
                &h,
                &rope.0,
                &rope.1,
                offset,
                need_mask.then_some(mask),
                slot,
            )?;
            let h = l.post_attention_layernorm.forward(&h)?;
            x = (x + h)?;
            let h = l.pre_feedforward_layernorm.forward(&x)?;
            let h = l.mlp.forward(&h)?;
            let h = l.post_feedforward_layernorm.forward(&h)?;
            x = (x + h)?;
        }
        self.norm.forward(&x)
    }

    /// Vocabulary logits for hidden states `(…, H)` → `(…, V)` (tied embeddings).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.embed_tokens.weight();
        let dims = hidden.dims().to_vec();
        let h = *dims.last().unwrap_or(&0);
        let flat = hidden.reshape(((), h))?;
        let l = flat.matmul(&w.t()?)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(self.cfg.vocab_size);
        let l = l.reshape(out)?;
        match self.cfg.final_logit_softcapping {
            Some(c) => (l / c)?.tanh()? * c,
            None => Ok(l),
        }
    }

    /// Hidden width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Data type of the weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.weight().dtype()
    }
}
