//! GELU for inference: [`FastGelu`], the vectorisable f32 CPU op that [`gelu`] and [`gelu_erf`]
//! run under an [`inference`](super::nn::inference) guard, and candle's differentiable GELUs otherwise.

use candle_core::{Result, Tensor};

use super::nn::fast_cpu_f32;
#[cfg(test)]
use super::nn::{force, inference};

/// GELU, tanh approximation (`gelu_pytorch_tanh`). Under an [`inference`](super::nn::inference) guard, f32 on the CPU
/// runs [`FastGelu`]; otherwise candle's differentiable op.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fast_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&FastGelu { exact: false })
    } else {
        x.gelu()
    }
}

/// Exact GELU through erf (DINOv2's `gelu`), with the same inference fast path as [`gelu`].
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fast_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&FastGelu { exact: true })
    } else {
        x.gelu_erf()
    }
}

/// GELU for f32 inference on the CPU, vectorisable. candle's CPU GELUs call the scalar `libm`
/// `erff` / `tanhf` per element (a function call each, never vectorised); these are the
/// branch-free rational approximations Eigen (and so TensorFlow/XLA) uses, on inputs clamped where
/// the function is ±1 in f32: erf within 4.2e-7 and tanh within 3.3e-7 of the exact values (unit
/// test below), so GELU within about 1.2e-6 for |x| ≤ 6. No backward pass: inference only.
#[derive(Debug, Clone, Copy)]
pub struct FastGelu {
    /// erf (exact GELU) rather than the tanh approximation.
    pub exact: bool,
}

/// erf(x), Eigen's `generic_fast_erf_float`: odd degree-13 over even degree-8 polynomial.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// tanh(x), Eigen's `generic_fast_tanh_float`: odd degree-13 over even degree-6 polynomial.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    p = x2 * p + -8.604_672e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = x2 * q + 2.268_434_7e-3;
    q = x2 * q + 4.893_525e-3;
    x * p / q
}

/// [`FastGelu`] over one chunk (inlined into [`super::cpu_kernels::with_simd`]'s widest variant).
#[inline(always)]
fn gelu_chunk(ys: &mut [f32], xs: &[f32], exact: bool) {
    // beyond ±10 GELU is 0 or x in f32 (to within 1e-6), while 1 ± erf/tanh from the
    // approximations can be a rounding step off, which a huge |x| would scale up
    const SATURATED: f32 = 10.0;
    if exact {
        for (y, &x) in ys.iter_mut().zip(xs) {
            let g = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
            *y = if x < -SATURATED {
                0.0
            } else if x > SATURATED {
                x
            } else {
                g
            };
        }
    } else {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for (y, &x) in ys.iter_mut().zip(xs) {
            let g = 0.5 * x * (1.0 + tanh_f32(SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)));
            *y = if x < -SATURATED {
                0.0
            } else if x > SATURATED {
                x
            } else {
                g
            };
        }
    }
}

impl candle_core::CustomOp1 for FastGelu {
    fn name(&self) -> &'static str {
        if self.exact {
            "fast-gelu-erf"
        } else {
            "fast-gelu-tanh"
        }
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} needs a contiguous tensor", self.name())
        };
        let xs = &storage.as_slice::<f32>()?[start..end];
        let mut ys = vec![0f32; xs.len()];
        let exact = self.exact;
        let chunk = |(ys, xs): (&mut [f32], &[f32])| {
            super::cpu_kernels::with_simd(|| gelu_chunk(ys, xs, exact))
        };
        // an MLP's activations (257 × 1536 for lofi-dino) split over the cores, as candle's own
        // elementwise ops are
        const CHUNK: usize = 16 * 1024;
        if xs.len() >= 4 * CHUNK {
            use rayon::prelude::*;
            ys.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .for_each(chunk);
        } else {
            chunk((&mut ys, xs));
        }
        Ok((candle_core::CpuStorage::F32(ys), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_fast_cpu_gelus_match_candles_libm_ones() {
        let dev = Device::Cpu;
        // every f32 step of 1/1024 over [-40, 40], where both functions bend and saturate
        // (81,921 values: enough for the op to split them over rayon's threads), plus a few
        // extreme inputs
        let mut v: Vec<f32> = (-40 * 1024..=40 * 1024)
            .map(|i| i as f32 / 1024.0)
            .collect();
        v.extend([-1e30, -100.0, 100.0, 1e30, f32::MIN_POSITIVE, -0.0]);
        let x = Tensor::from_vec(v.clone(), v.len(), &dev).unwrap();
        let max_err = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (slow_erf, slow_tanh) = (x.gelu_erf().unwrap(), x.gelu().unwrap());
        let _inf = inference(&dev);
        let (fast_erf, fast_tanh) = (gelu_erf(&x).unwrap(), gelu(&x).unwrap());
        assert!(
            max_err(&fast_erf, &slow_erf) < 2e-6,
            "{}",
            max_err(&fast_erf, &slow_erf)
        );
        assert!(
            max_err(&fast_tanh, &slow_tanh) < 2e-6,
            "{}",
            max_err(&fast_tanh, &slow_tanh)
        );
        // the fast op is what ran (it differs from libm in the last bits somewhere), and outside
        // the guard, or forced off, the results are candle's exactly
        assert!(max_err(&fast_erf, &slow_erf) > 0.0);
        {
            let _u = force(false);
            assert_eq!(max_err(&gelu_erf(&x).unwrap(), &slow_erf), 0.0);
        }
        drop(_inf);
        assert_eq!(max_err(&gelu_erf(&x).unwrap(), &slow_erf), 0.0);
        // a non-contiguous input goes through the same path
        let m = Tensor::from_vec(v[..6 * 1024].to_vec(), (96, 64), &dev)
            .unwrap()
            .t()
            .unwrap();
        let _inf = inference(&dev);
        let fast_t = gelu_erf(&m).unwrap();
        assert!(max_err(&fast_t, &m.gelu_erf().unwrap()) < 2e-6);
    }
}
