//! Differentiable building blocks shared by every tower.
//!
//! candle's fused kernels (`softmax_last_dim`, `layer_norm`, `rms_norm`, `rope`) have no backward
//! pass, so training runs these blocks with plain, differentiable tensor ops. Inference (the
//! [`crate::model::Lofi`] entry points) holds an [`inference`] guard, under which the same blocks
//! call the fused kernels instead on a GPU; forward results agree to float rounding (parity tests
//! below and in `tests/core/bundled.rs`).

use std::cell::Cell;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

pub use super::gelu::{gelu, gelu_erf, FastGelu};

thread_local! {
    static INFER: Cell<bool> = const { Cell::new(false) };
    static FUSED: Cell<bool> = const { Cell::new(false) };
    static FORCE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// While alive, inference on this thread may use candle's fused kernels (no gradients).
#[must_use = "the inference path lasts as long as the guard"]
pub struct Inference {
    prev: bool,
    prev_infer: bool,
}

/// Enter inference on `device` (nestable). Which kernels that picks, per op, as measured (README,
/// "fused inference"): softmax takes candle's fused `softmax_last_dim` on every device (on the CPU
/// it is 2-4x the exp/sum/div chain), GELU takes [`FastGelu`] on the CPU; the normalisations and
/// rope take the fused kernels on GPUs only (candle's CPU `layer_norm` is slower than the plain
/// ops at our sizes).
pub fn inference(device: &Device) -> Inference {
    let on = !device.is_cpu();
    Inference {
        prev: FUSED.with(|f| f.replace(on)),
        prev_infer: INFER.with(|f| f.replace(true)),
    }
}

impl Drop for Inference {
    fn drop(&mut self) {
        FUSED.with(|f| f.set(self.prev));
        INFER.with(|f| f.set(self.prev_infer));
    }
}

/// While alive, this thread runs the fused kernels (`Some(true)`) or the differentiable ops
/// (`Some(false)`) whatever the device: benchmarks and parity tests compare the two.
#[must_use = "the forced path lasts as long as the guard"]
pub struct Force {
    prev: Option<bool>,
}

/// Force the fused (`true`) or the differentiable (`false`) path on this thread.
pub fn force(fused: bool) -> Force {
    Force {
        prev: FORCE.with(|f| f.replace(Some(fused))),
    }
}

impl Drop for Force {
    fn drop(&mut self) {
        FORCE.with(|f| f.set(self.prev));
    }
}

/// Whether this thread takes the inference fast path for softmax and GELU now: inside an
/// [`inference`] guard on any device, unless [`force`]d.
pub fn fast_path() -> bool {
    FORCE
        .with(Cell::get)
        .unwrap_or_else(|| INFER.with(Cell::get))
}

/// Whether this thread uses the fused normalisation and rope kernels now.
pub fn fused() -> bool {
    FORCE
        .with(Cell::get)
        .unwrap_or_else(|| FUSED.with(Cell::get))
}

/// Weight init used for linear and embedding weights trained from scratch.
pub const W_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// Compute dtype for normalisations: half types are upcast to f32, f32/f64 kept.
pub fn norm_dtype(dt: DType) -> DType {
    match dt {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// LayerNorm with an unfused (differentiable) forward.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `weight` and `bias` of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused() {
            return candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        let dtype = x.dtype();
        let x = x.to_dtype(norm_dtype(dtype))?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Gemma's RMSNorm: `x / rms(x) · (1 + w)`, unfused.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `weight` of width `dim` (zero-initialised, so the scale starts at 1).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused() {
            let scale = (&self.weight + 1.0)?;
            return candle_nn::ops::rms_norm(&x.contiguous()?, &scale, self.eps as f32);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(norm_dtype(dtype))?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = x
            .broadcast_div(&(ms + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        xn.broadcast_mul(&(&self.weight + 1.0)?)
    }
}

/// LoRA settings for one linear layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSpec {
    /// Rank r.
    pub rank: usize,
    /// Alpha; the update is scaled by alpha / r.
    pub alpha: f64,
}

/// A linear layer, optionally with a LoRA adapter (`lora_A` `(r, in)`, `lora_B` `(out, r)`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<(Tensor, Tensor, f64)>,
}

impl Linear {
    /// Build from explicit tensors (used for tied heads and split in-projections).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// `weight` `(out, in)`, optional `bias`, optional LoRA adapter under the same prefix.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        lora: Option<LoraSpec>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", W_INIT)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let lora = match lora {
            Some(spec) if spec.rank > 0 => {
                let bound = (1.0 / in_dim as f64).sqrt() * 3f64.sqrt();
                let a = vb.get_with_hints(
                    (spec.rank, in_dim),
                    "lora_A.weight",
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b =
                    vb.get_with_hints((out_dim, spec.rank), "lora_B.weight", Init::Const(0.0))?;
                Some((a, b, spec.alpha / spec.rank as f64))
            }
            _ => None,
        };
        Ok(Self { weight, bias, lora })
    }

    /// The base weight `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight with the LoRA update folded in (`W + s·B·A`).
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some((a, b, s)) => self.weight.add(&(b.matmul(a)? * *s)?),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // inference on the CPU in f32: row blocks per thread, the bias as the product's starting
        // value (model::cpu_kernels); `mkl` builds keep candle's matmul, which is MKL's there
        if self.lora.is_none()
            && !cfg!(feature = "mkl")
            && fast_cpu_f32(x)
            && self.weight.dtype() == DType::F32
        {
            let k = x.dim(D::Minus1)?;
            let mut shape = x.dims()[..x.rank() - 1].to_vec();
            let x2 = x.reshape(((), k))?.contiguous()?;
            let w = self.weight.contiguous()?;
            let op = super::cpu_kernels::CpuLinear;
            let y = match &self.bias {
                Some(b) => x2.apply_op3_no_bwd(&w, &b.contiguous()?, &op)?,
                None => x2.apply_op2_no_bwd(&w, &op)?,
            };
            shape.push(y.dim(1)?);
            return y.reshape(shape);
        }
        let w = self.weight.t()?;
        let y = match x.dims() {
            [b, t, k] => x.reshape((b * t, *k))?.matmul(&w)?.reshape((*b, *t, ()))?,
            _ => x.matmul(&w)?,
        };
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        match &self.lora {
            None => Ok(y),
            Some((a, b, s)) => {
                let (a_t, b_t) = (a.t()?, b.t()?);
                let u = match x.dims() {
                    [bt, t, k] => x
                        .reshape((bt * t, *k))?
                        .matmul(&a_t)?
                        .matmul(&b_t)?
                        .reshape((*bt, *t, ()))?,
                    _ => x.matmul(&a_t)?.matmul(&b_t)?,
                };
                y + (u * *s)?
            }
        }
    }
}

/// Token embedding table.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// `weight` `(vocab, dim)`.
    pub fn new(vocab: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((vocab, dim), "weight", W_INIT)?,
        })
    }
    /// The table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(self.weight.dim(1)?);
        let flat = ids.flatten_all()?;
        self.weight.index_select(&flat, 0)?.reshape(out_dims)
    }
}

/// Whether `x` takes the inference fast path's CPU f32 kernels: [`fast_path`], on the CPU, f32.
pub(super) fn fast_cpu_f32(x: &Tensor) -> bool {
    fast_path() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Multi-head scaled dot-product attention on `(B, H, T, d)` tensors with an optional additive
/// mask broadcastable to `(B, H, Tq, Tk)`. The differentiable softmax, or the fused one on the
/// [`fast_path`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let w = (q.matmul(&k.t()?)? * scale)?;
    let w = match softcap {
        Some(c) => ((w / c)?.tanh()? * c)?,
        None => w,
    };
    let w = match mask {
        Some(m) => w.broadcast_add(m)?,
        None => w,
    };
    let w = if fast_path() {
        candle_nn::ops::softmax_last_dim(&w)?
    } else {
        candle_nn::ops::softmax(&w, D::Minus1)?
    };
    w.matmul(v)
}

/// Multi-head attention on projections laid out `(B, T, H·d)`, no mask: `q` `(B, Tq, H·d)`, `k` and
/// `v` `(B, Tk, H·d)` → `(B, Tq, H·d)` (the heads merged back). On the [`fast_path`] for f32 on the
/// CPU this is [`CpuAttention`](super::cpu_kernels::CpuAttention), which reads the heads in
/// place; otherwise [`split_heads`], [`attention`] and [`merge_heads`].
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if fast_cpu_f32(q) {
        let op = super::cpu_kernels::CpuAttention {
            heads,
            scale: scale as f32,
        };
        return q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op);
    }
    let o = attention(
        &split_heads(q, heads)?,
        &split_heads(k, heads)?,
        &split_heads(v, heads)?,
        scale,
        None,
        None,
    )?;
    merge_heads(&o)
}

/// `(B, T, H·d)` → `(B, H, T, d)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t, heads, c / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `(B, H, T, d)` → `(B, T, H·d)`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// GELU, tanh approximation (SigLIP's `gelu_pytorch_tanh`).
    #[default]
    GeluTanh,
    /// Exact GELU through erf (DINOv2's `gelu`).
    GeluErf,
}

/// Transformer MLP: `fc2(act(fc1(x)))` (SigLIP: tanh GELU; DINOv2: erf GELU).
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    /// `fc1` `hidden → inner`, `fc2` `inner → hidden`.
    pub fn new(
        hidden: usize,
        inner: usize,
        lora: Option<LoraSpec>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(hidden, inner, true, lora, vb.pp("fc1"))?,
            fc2: Linear::new(inner, hidden, true, lora, vb.pp("fc2"))?,
            act: Activation::GeluTanh,
        })
    }

    /// The same with another activation.
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.act {
            Activation::GeluTanh => gelu(&h)?,
            Activation::GeluErf => gelu_erf(&h)?,
        };
        self.fc2.forward(&h)
    }
}

/// Additive causal mask `(1, 1, tq, offset + tq)`; with `window`, keys more than `window − 1`
/// positions back are masked too (HF Gemma 3 semantics).
pub fn causal_mask(
    tq: usize,
    offset: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let tk = offset + tq;
    let mut m = vec![0f32; tq * tk];
    for i in 0..tq {
        let qi = offset + i;
        for j in 0..tk {
            let future = j > qi;
            let too_old = window.is_some_and(|w| qi >= w && j <= qi - w);
            if future || too_old {
                m[i * tk + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (1, 1, tq, tk), device)?.to_dtype(dtype)
}

/// 1-D interpolation matrix `(new, old)` of PyTorch's bicubic (`a = −0.75`, `align_corners=False`,
/// edge clamped), used to resize position-embedding grids differentiably.
pub fn bicubic_matrix(old: usize, new: usize) -> Vec<f32> {
    fn cubic(x: f64) -> f64 {
        let a = -0.75;
        let x = x.abs();
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    }
    let mut m = vec![0f32; new * old];
    let scale = old as f64 / new as f64;
    for i in 0..new {
        let src = (i as f64 + 0.5) * scale - 0.5;
        let f = src.floor();
        let t = src - f;
        for k in -1i64..=2 {
            let w = cubic(k as f64 - t);
            let idx = (f as i64 + k).clamp(0, old as i64 - 1) as usize;
            m[i * old + idx] += w as f32;
        }
    }
    m
}

/// A `(g·g, D)` grid of position embeddings resized to `(gh·gw, D)` with [`bicubic_matrix`] along
/// each axis (two matmuls, so it stays differentiable).
pub fn resize_position_grid(pos: &Tensor, g: usize, gh: usize, gw: usize) -> Result<Tensor> {
    let d = pos.dim(1)?;
    let dev = pos.device();
    let dt = pos.dtype();
    let ry = Tensor::from_vec(bicubic_matrix(g, gh), (gh, g), dev)?.to_dtype(dt)?;
    let rx = Tensor::from_vec(bicubic_matrix(g, gw), (gw, g), dev)?.to_dtype(dt)?;
    // (g, g·D) → rows resized → (gh, g, D) → (gh, D, g) → cols resized → (gh, D, gw) → (gh, gw, D)
    let p = ry
        .matmul(&pos.reshape((g, g * d))?)?
        .reshape((gh, g, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let p = p
        .reshape((gh * d, g))?
        .matmul(&rx.t()?)?
        .reshape((gh, d, gw))?;
    p.transpose(1, 2)?.contiguous()?.reshape((gh * gw, d))
}

/// Rotary position embedding of `(B, H, T, d)` (halves rotated, not interleaved): the fused
/// kernel when [`fused`], the differentiable one otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused() {
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)
    } else {
        candle_nn::rotary_emb::rope_slow(x, cos, sin)
    }
}

/// Rotary tables `(max_len, head_dim/2)` for a RoPE base.
pub fn rope_tables(
    head_dim: usize,
    base: f64,
    max_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| (1.0 / base.powf(i as f64 / head_dim as f64)) as f32)
        .collect();
    let n = inv.len();
    let inv = Tensor::from_vec(inv, (1, n), device)?;
    let t = Tensor::arange(0u32, max_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_len, 1))?;
    let f = t.matmul(&inv)?;
    Ok((f.cos()?.to_dtype(dtype)?, f.sin()?.to_dtype(dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_identity_when_same_size() {
        let m = bicubic_matrix(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((m[i * 5 + j] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn bicubic_rows_sum_to_one() {
        let m = bicubic_matrix(7, 12);
        for i in 0..12 {
            let s: f32 = m[i * 7..(i + 1) * 7].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn fused_blocks_match_the_differentiable_ones() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 16), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let ln = LayerNorm {
            weight: (&w + 1.0).unwrap(),
            bias: b,
            eps: 1e-6,
        };
        let rms = RmsNorm {
            weight: w,
            eps: 1e-6,
        };
        let (cos, sin) = rope_tables(16, 10_000.0, 7, DType::F32, &dev).unwrap();
        let mask = causal_mask(7, 0, None, DType::F32, &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (2, 3, 7, 16), &dev).unwrap();
        let q3 = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev).unwrap();
        let kv3 = Tensor::randn(0f32, 1.0, (2, 9, 32), &dev).unwrap();
        let lin = Linear::from_tensors(
            Tensor::randn(0f32, 0.2, (24, 32), &dev).unwrap(),
            Some(Tensor::randn(0f32, 1.0, 24, &dev).unwrap()),
        );
        let run = || -> Vec<Tensor> {
            vec![
                ln.forward(&x).unwrap(),
                rms.forward(&x).unwrap(),
                rope(&x, &cos, &sin).unwrap(),
                attention(&q, &x, &x, 0.25, Some(&mask), Some(50.0)).unwrap(),
                // the CPU attention kernel: batches, heads, Tq ≠ Tk, one query (MAP heads)
                multi_head_attention(&q3, &kv3, &kv3.sqr().unwrap(), 4, 0.3).unwrap(),
                multi_head_attention(&q3.narrow(1, 0, 1).unwrap(), &kv3, &kv3, 4, 0.3).unwrap(),
                multi_head_attention(&kv3, &kv3, &kv3, 4, 0.5).unwrap(),
                // the CPU linear kernel (bias first, then the product), 3-d and 2-d inputs,
                // row blocks per thread and one row (gemm's own threads)
                lin.forward(&q3).unwrap(),
                lin.forward(&kv3.get(0).unwrap()).unwrap(),
                lin.forward(&kv3.get(0).unwrap().narrow(0, 2, 1).unwrap())
                    .unwrap(),
                Linear::from_tensors(lin.weight().clone(), None)
                    .forward(&kv3)
                    .unwrap(),
            ]
        };
        assert!(!fused());
        let slow = run();
        {
            let _g = inference(&dev);
            assert!(!fused(), "the CPU keeps the differentiable normalisations");
            assert!(fast_path(), "but takes the fused softmax and the fast GELU");
            let _u = force(false);
            assert!(!fast_path());
        }
        assert!(!fast_path(), "the guard restores the differentiable path");
        let fast = {
            let _g = force(true);
            assert!(fused());
            {
                let _u = force(false);
                assert!(!fused());
            }
            assert!(fused());
            run()
        };
        assert!(!fused(), "the guard restores the differentiable path");
        for (i, (a, b)) in slow.iter().zip(&fast).enumerate() {
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                d < 1e-5,
                "block {i}: fused and differentiable differ by {d}"
            );
        }
    }

    #[test]
    fn causal_mask_window() {
        let m = causal_mask(4, 0, Some(2), DType::F32, &Device::Cpu).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        // row 3 sees keys 2, 3 only
        assert!(v[12].is_infinite() && v[13].is_infinite());
        assert_eq!(v[14], 0.0);
        assert_eq!(v[15], 0.0);
        assert!(v[3].is_infinite());
    }
}
