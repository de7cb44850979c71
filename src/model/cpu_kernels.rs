//! Inference-only f32 kernels for the CPU, on the [`super::nn::fast_path`]: multi-head attention
//! straight on the projections' `(B, T, H·d)` layout ([`CpuAttention`]), and a linear layer whose
//! bias is the product's starting value ([`CpuLinear`]). Neither has a backward pass; parity with
//! the differentiable ops is tested in `model::nn` and on the bundled model.
//!
//! **Attention.** The differentiable path ([`super::nn::attention`]) copies q, k and v into
//! `(B, H, T, d)`, runs two batched matmuls whose every small per-head product candle hands to
//! `gemm` with all threads (slower at 257×64×257 than one thread), scales the whole
//! `(B, H, T, T)` score tensor in a pass of its own, softmaxes it into another, and copies the
//! result back to `(B, T, H·d)`. Here each (batch, head) pair is one task on rayon's pool: `gemm`
//! reads its head's columns in place through strides (the scale folded into the product), the
//! softmax runs in place on that head's `Tq × Tk` scores (a buffer per task, never the whole
//! `(B, H, Tq, Tk)` tensor), and the weighted values land in the output's columns of that head.
//!
//! **Linear.** candle computes `x·Wᵀ` into a zeroed buffer and adds the bias in a second pass
//! over the output; here the output starts as the bias rows and `gemm` accumulates into it.

use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;

/// The op: `softmax(q·kᵀ·scale)·v` per head, `q` `(B, Tq, H·d)`, `k` and `v` `(B, Tk, H·d)`, all
/// contiguous f32; output `(B, Tq, H·d)`.
#[derive(Debug, Clone, Copy)]
pub struct CpuAttention {
    /// Heads H.
    pub heads: usize,
    /// Score scale (usually `d^-1/2`).
    pub scale: f32,
}

/// exp(x) for x ≤ 0 (softmax after the row maximum is subtracted), branch-free so that the row
/// loop vectorises: Cephes' `expf` range reduction (x = n·ln2 + r, |r| ≤ ln2/2, ln2 split in two
/// for exactness) and its degree-5 polynomial, then 2ⁿ built in the exponent bits. Within 2 ulp
/// of `f32::exp` on [-87, 0] (unit test); below -87 it returns 0 (the true value is under 1e-37).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let under = x < -87.0;
    let x = x.max(-87.0);
    // round to nearest by the 1.5·2²³ trick: `f32::round` is a libm call on baseline x86-64
    // (no SSE4.1), which keeps the loop from vectorising
    const ROUNDER: f32 = 12_582_912.0;
    let n = (x * LOG2E + ROUNDER) - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r2 + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        e * scale
    }
}

/// Lanes of the explicit reductions below: the sums and maxima are kept in 16 independent
/// accumulators (strict f32 arithmetic never lets the compiler reassociate a single running sum,
/// so a one-accumulator loop stays scalar), combined in a fixed order at the end: the same result
/// whatever vector width the loop is compiled for.
const LANES: usize = 16;

/// In-place softmax of one row.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in s.iter_mut().zip(c) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    let sum = s.iter().fold(sum, |a, &b| a + b);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Every row of a row-major `rows × len` block through [`softmax_row`], compiled for the widest
/// vectors the CPU has ([`with_simd`]).
fn softmax_rows(scores: &mut [f32], len: usize) {
    with_simd(|| {
        for row in scores.chunks_exact_mut(len) {
            softmax_row(row);
        }
    })
}

/// Runs `f` compiled with AVX-512F, or AVX2 + FMA, enabled when the CPU has them (detected at
/// run time, cached by std), else as built (SSE2 on x86-64). For the elementwise loops of the
/// kernels here, which LLVM vectorises to whatever width it may use; `f` and what it calls must
/// be inlined into it (`#[inline(always)]`). Strict f32 semantics hold at every width (no fused
/// multiply-adds are formed), so all three give the same results.
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement of a
            // `target_feature` function; the body is safe code
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[allow(unsafe_code)]
            // SAFETY: as above, for AVX2 and FMA
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `dst (m × n) = beta · lhs (m × k) · rhs (k × n)`, every operand given by its pointer and its
/// (row, column) strides in elements, on the calling thread.
///
/// # Safety
/// Every `(i, j)` within the stated shapes, at the stated strides from each pointer, must be in
/// bounds of a live allocation; `dst` must not overlap `lhs` or `rhs`, and nothing else may
/// access `dst`'s elements during the call.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn gemm_one_thread(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
    beta: f32,
) {
    // SAFETY: forwarded from the caller's contract; `read_dst` is false, so `dst` is only written
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl CpuAttention {
    /// One head of one batch element: `(Tq × d)` weighted values, row-major.
    fn head(&self, q: &[f32], k: &[f32], v: &[f32], dims: Dims, bh: usize) -> Vec<f32> {
        let Dims { tq, tk, c, d } = dims;
        let (b, h) = (bh / self.heads, bh % self.heads);
        let q = &q[b * tq * c + h * d..];
        let k = &k[b * tk * c + h * d..];
        let v = &v[b * tk * c + h * d..];
        let mut scores = vec![0f32; tq * tk];
        let c = c as isize;
        // SAFETY: q's rows i < tq and columns l < d sit at i·c + l within its batch element
        // (h·d + l < c), k's key j and column l at j·c + l (j < tk), which the caller checked
        // against the slices' lengths; `scores` is this task's own buffer of tq·tk
        #[allow(unsafe_code)]
        unsafe {
            gemm_one_thread(
                (tq, tk, d),
                scores.as_mut_ptr(),
                (tk as isize, 1),
                q.as_ptr(),
                (c, 1),
                k.as_ptr(),
                (1, c),
                self.scale,
            );
        }
        softmax_rows(&mut scores, tk);
        let mut out = vec![0f32; tq * d];
        // SAFETY: `scores` is tq × tk row-major, v's key j and column l sit at j·c + l within
        // its batch element as above, `out` is this task's own tq × d buffer
        #[allow(unsafe_code)]
        unsafe {
            gemm_one_thread(
                (tq, d, tk),
                out.as_mut_ptr(),
                (d as isize, 1),
                scores.as_ptr(),
                (tk as isize, 1),
                v.as_ptr(),
                (c, 1),
                1.0,
            );
        }
        out
    }
}

/// `x·Wᵀ (+ b)` for `x` `(M, K)`, `W` `(N, K)`, `b` `(N)`, all contiguous f32; output `(M, N)`:
/// as a [`candle_core::CustomOp3`] with the bias, a [`candle_core::CustomOp2`] without.
///
/// The rows of `x` are split into one block per rayon thread, and each block is one
/// single-threaded `gemm` call into its own rows of the output. candle instead hands the whole
/// product to `gemm` with all threads, which for our shapes (257 × 384 × 1536 and the like) splits
/// worse: lofi-dino's `embed_image` went from 107–115 to 101–102 ms (minima of 7, interleaved, 2
/// threads). Fewer rows than two per thread (a decoding step) take `gemm`'s own threads.
#[derive(Debug, Clone, Copy)]
pub struct CpuLinear;

impl CpuLinear {
    /// The op's name, with or without the bias.
    const NAME: &'static str = "cpu-linear";

    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, kw) = l2.shape().dims2()?;
        let b = match bias {
            Some((s3, l3)) if l3.shape().dims1()? == n => Some(contiguous_f32(s3, l3, "bias")?),
            Some((_, l3)) => bail!("cpu linear: bias {:?} for {n} outputs", l3.shape()),
            None => None,
        };
        if kw != k {
            bail!("cpu linear: x {:?}, weight {:?}", l1.shape(), l2.shape())
        }
        let x = contiguous_f32(s1, l1, "x")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let mut out = match b {
            Some(b) => b.repeat(m),
            None => vec![0f32; m * n],
        };
        if m == 0 || n == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let read_dst = b.is_some();
        // SAFETY (both calls): `xr` is mr × k row-major (its length is mr·k), Wᵀ's element
        // (i, j) is w[j·k + i] for i < k, j < n (w.len() = n·k), `o` is mr × n row-major and
        // ours alone; with `read_dst` the product is added to the bias rows already there
        #[allow(unsafe_code)]
        let gemm = |o: &mut [f32], xr: &[f32], par: gemm::Parallelism| unsafe {
            gemm::gemm(
                xr.len() / k,
                n,
                k,
                o.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                xr.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        };
        let threads = rayon::current_num_threads();
        if threads > 1 && m >= 2 * threads {
            let rows = m.div_ceil(threads);
            out.par_chunks_mut(rows * n)
                .zip(x.par_chunks(rows * k))
                .for_each(|(o, xr)| gemm(o, xr, gemm::Parallelism::None));
        } else if threads > 1 {
            gemm(&mut out, x, gemm::Parallelism::Rayon(threads));
        } else {
            gemm(&mut out, x, gemm::Parallelism::None);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

impl candle_core::CustomOp3 for CpuLinear {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

impl candle_core::CustomOp2 for CpuLinear {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    tq: usize,
    tk: usize,
    c: usize,
    d: usize,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("cpu attention: {what} must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

impl candle_core::CustomOp3 for CpuAttention {
    fn name(&self) -> &'static str {
        "cpu-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, tq, c) = l1.shape().dims3()?;
        let (bk, tk, ck) = l2.shape().dims3()?;
        if l3.shape().dims3()? != (bk, tk, ck) || bk != b || ck != c {
            bail!(
                "cpu attention: q {:?}, k {:?}, v {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        if self.heads == 0 || c % self.heads != 0 || tk == 0 {
            bail!(
                "cpu attention: {c} channels, {} heads, {tk} keys",
                self.heads
            )
        }
        let q = contiguous_f32(s1, l1, "q")?;
        let k = contiguous_f32(s2, l2, "k")?;
        let v = contiguous_f32(s3, l3, "v")?;
        // the strided reads in `head` stay inside these lengths
        debug_assert!(q.len() == b * tq * c && k.len() == b * tk * c && v.len() == k.len());
        let dims = Dims {
            tq,
            tk,
            c,
            d: c / self.heads,
        };
        let heads: Vec<Vec<f32>> = (0..b * self.heads)
            .into_par_iter()
            .map(|bh| self.head(q, k, v, dims, bh))
            .collect();
        let mut out = vec![0f32; b * tq * c];
        for (bh, o) in heads.iter().enumerate() {
            let (bi, h) = (bh / self.heads, bh % self.heads);
            for (i, row) in o.chunks_exact(dims.d).enumerate() {
                let at = (bi * tq + i) * c + h * dims.d;
                out[at..at + dims.d].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, tq, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_branch_free_exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, e) = (exp_nonpositive(x), x.exp());
            worst = worst.max((a - e).abs() / e);
            x += 0.001_3;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row = vec![3.0, -1.0, 0.5, 3.0, -100.0];
        softmax_row(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(row[0], row[3]);
        assert!(row[4] < 1e-40);
    }
}
