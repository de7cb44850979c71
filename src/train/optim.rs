//! AdamW with decoupled weight decay, warm-up + cosine learning-rate schedule and global-norm
//! gradient clipping. Its moments are plain named tensors so checkpoints can save them exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};

/// Hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter gets weight decay (matrices yes; norms, biases, embeddings, probes no).
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2
        && !name.contains("embedding")
        && !name.contains("embed_tokens")
        && !name.ends_with("probe")
        && !name.contains("norm")
}

/// The optimizer state.
#[derive(Debug, Clone, Default)]
pub struct AdamW {
    /// Hyper-parameters.
    pub cfg: AdamWConfig,
    /// First moments by parameter name.
    pub m: BTreeMap<String, Tensor>,
    /// Second moments by parameter name.
    pub v: BTreeMap<String, Tensor>,
    /// Updates applied so far.
    pub t: u64,
}

impl AdamW {
    /// Fresh state.
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// Apply one update with learning rate `lr` to `params` given `grads` (by name).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let g = g.detach().to_dtype(DType::F32)?;
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?,
                None => (&g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let w = var.as_tensor().detach().to_dtype(DType::F32)?;
            let w = if decays(name, w.rank()) {
                (&w * (1.0 - lr * c.weight_decay))?
            } else {
                w
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let w = (w - (update * lr)?)?;
            var.set(&w.to_dtype(var.dtype())?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// Learning rate at `step` (0-based): linear warm-up over `warmup` steps, then cosine decay to
/// `lr · min_ratio` at `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, lr: f64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup.min(step)) as f64 / span as f64).min(1.0);
    let min = lr * min_ratio;
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut s = 0f64;
    for g in grads.values() {
        s += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(s.sqrt())
}

/// Scale gradients so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let n = global_norm(grads)?;
    if max_norm > 0.0 && n > max_norm && n.is_finite() {
        let s = max_norm / (n + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_shape() {
        assert!((lr_at(0, 100, 10, 1.0, 0.01) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.01) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.01) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.01) - 0.01).abs() < 1e-12);
        let mid = lr_at(55, 100, 10, 1.0, 0.01);
        assert!((mid - (0.01 + 0.99 * 0.5)).abs() < 1e-9);
    }

    #[test]
    fn adamw_first_step_is_lr_sign() {
        // first Adam step moves each weight by ≈ lr·sign(g) (plus decay)
        let d = &Device::Cpu;
        let var = Var::new(&[[1f32, -1.0]], d).unwrap();
        let mut g = BTreeMap::new();
        g.insert("w".to_string(), Tensor::new(&[[0.5f32, -2.0]], d).unwrap());
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        });
        opt.step(&[("w".into(), var.clone())], &g, 0.01).unwrap();
        let w: Vec<Vec<f32>> = var.as_tensor().to_vec2().unwrap();
        let want0 = 1.0 * (1.0 - 0.01 * 0.1) - 0.01;
        let want1 = -(1.0 - 0.01 * 0.1) + 0.01;
        assert!((w[0][0] as f64 - want0).abs() < 1e-6);
        assert!((w[0][1] as f64 - want1).abs() < 1e-6);
    }

    #[test]
    fn clipping_caps_norm() {
        let d = &Device::Cpu;
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), Tensor::new(&[3f32, 4.0], d).unwrap());
        let n = clip(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-4);
    }
}
