//! The presence baseline `eval` reports beside the model's own presence score: one logistic
//! regression per finding (a linear probe) on the frozen backbone's mean-pooled patch features,
//! fitted on the training manifest, scored on the evaluated one.
//!
//! Features are standardised with the training mean/std; the probe is fitted by accelerated
//! full-batch gradient descent on the class-balanced, L2-regularised logistic loss, its step
//! bounded by the loss's curvature ([`ProbeSettings`]; the penalty is chosen on a development
//! slice, never on the evaluated data).

/// Fitting settings of the probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    /// L2 penalty on the weights (per example, standardised features).
    pub l2: f64,
    /// Gradient-descent steps.
    pub steps: usize,
    /// Step size as a share of the largest stable step (1 / curvature bound).
    pub lr: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            l2: 0.1,
            steps: 1000,
            lr: 1.0,
        }
    }
}

/// Per-feature mean and standard deviation of the training rows.
#[derive(Debug, Clone)]
pub struct Standardiser {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl Standardiser {
    /// Fit on rows of equal length (an empty set gives an empty standardiser).
    pub fn fit(rows: &[Vec<f32>]) -> Self {
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for r in rows {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64 / n;
            }
        }
        let mut var = vec![0.0; d];
        for r in rows {
            for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n;
            }
        }
        let inv_std = var.iter().map(|v| 1.0 / v.sqrt().max(1e-6)).collect();
        Self { mean, inv_std }
    }

    /// One standardised row.
    pub fn apply(&self, row: &[f32]) -> Vec<f64> {
        row.iter()
            .zip(&self.mean)
            .zip(&self.inv_std)
            .map(|((&v, m), s)| (v as f64 - m) * s)
            .collect()
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    w: Vec<f64>,
    b: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The largest eigenvalue of Σ_i c_i x_i x_iᵀ (power iteration), which bounds the curvature
/// of the weighted logistic loss: a step of 1 / (λ/4 + l2) never overshoots.
fn top_eigenvalue(x: &[Vec<f64>], c: &[f64]) -> f64 {
    let d = x.first().map_or(0, Vec::len);
    if d == 0 {
        return 0.0;
    }
    let mut v = vec![1.0 / (d as f64).sqrt(); d];
    let mut lambda = 0.0;
    for _ in 0..50 {
        let mut next = vec![0.0; d];
        for (row, &ci) in x.iter().zip(c) {
            let proj: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() * ci;
            for (n, a) in next.iter_mut().zip(row) {
                *n += proj * a;
            }
        }
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        lambda = norm;
        v = next.into_iter().map(|a| a / norm).collect();
    }
    lambda
}

impl LinearProbe {
    fn gradient(&self, x: &[Vec<f64>], y: &[bool], wt: (f64, f64), l2: f64) -> (Vec<f64>, f64) {
        let mut gw: Vec<f64> = self.w.iter().map(|w| l2 * w).collect();
        let mut gb = 0.0;
        for (row, &label) in x.iter().zip(y) {
            let (t, c) = if label { (1.0, wt.0) } else { (0.0, wt.1) };
            let err = (self.score(row) - t) * c;
            for (g, a) in gw.iter_mut().zip(row) {
                *g += err * a;
            }
            gb += err;
        }
        (gw, gb)
    }

    /// Fit on standardised rows `x` with labels `y`: accelerated gradient descent (Nesterov)
    /// with the step bounded by the loss's curvature. Positives are weighted so both classes
    /// carry equal total weight (findings are rare).
    pub fn fit(x: &[Vec<f64>], y: &[bool], s: ProbeSettings) -> Self {
        let d = x.first().map_or(0, Vec::len);
        let n_pos = y.iter().filter(|&&p| p).count().max(1) as f64;
        let n_neg = (y.len() as f64 - n_pos).max(1.0);
        let wt = (0.5 / n_pos, 0.5 / n_neg);
        let c: Vec<f64> = y.iter().map(|&p| if p { wt.0 } else { wt.1 }).collect();
        // curvature bound of the weights' and the bias's loss (the bias adds 1/4 at most)
        let lipschitz = 0.25 * (top_eigenvalue(x, &c) + 1.0) + s.l2;
        let step = s.lr / lipschitz;
        let mut cur = Self {
            w: vec![0.0; d],
            b: 0.0,
        };
        let mut prev = cur.clone();
        for k in 0..s.steps {
            let mom = k as f64 / (k as f64 + 3.0);
            let look = Self {
                w: cur
                    .w
                    .iter()
                    .zip(&prev.w)
                    .map(|(a, b)| a + mom * (a - b))
                    .collect(),
                b: cur.b + mom * (cur.b - prev.b),
            };
            let (gw, gb) = look.gradient(x, y, wt, s.l2);
            prev = cur;
            cur = Self {
                w: look.w.iter().zip(&gw).map(|(a, g)| a - step * g).collect(),
                b: look.b - step * gb,
            };
        }
        cur
    }

    /// Probability of the finding for one standardised row.
    pub fn score(&self, row: &[f64]) -> f64 {
        sigmoid(self.b + row.iter().zip(&self.w).map(|(a, c)| a * c).sum::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_separates_a_linearly_separable_finding() {
        // feature 0 carries the label, feature 1 is noise
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let pos = i % 5 == 0;
                let noise = ((i * 37) % 11) as f32 / 11.0;
                vec![if pos { 2.0 } else { 0.0 } + noise * 0.5, noise * 3.0]
            })
            .collect();
        let y: Vec<bool> = (0..200).map(|i| i % 5 == 0).collect();
        let st = Standardiser::fit(&rows);
        let x: Vec<Vec<f64>> = rows.iter().map(|r| st.apply(r)).collect();
        let p = LinearProbe::fit(&x, &y, ProbeSettings::default());
        let scores: Vec<f32> = x.iter().map(|r| p.score(r) as f32).collect();
        let a = crate::eval::retrieval::auroc(&scores, &y).unwrap();
        assert!(a > 0.99, "auroc {a}");
        // an untrained probe (0 steps) is at chance: every score equal
        let p0 = LinearProbe::fit(
            &x,
            &y,
            ProbeSettings {
                steps: 0,
                ..Default::default()
            },
        );
        let s0: Vec<f32> = x.iter().map(|r| p0.score(r) as f32).collect();
        assert_eq!(crate::eval::retrieval::auroc(&s0, &y).unwrap(), 0.5);
    }
}
