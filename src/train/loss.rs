//! The three LoFi losses: SigLIP's sigmoid image–text loss and the masked token cross-entropy
//! used for captioning and location-aware captioning (logits only at supervised positions).

use candle_core::{DType, Device, Result, Tensor, D};

/// Numerically stable log σ(x) = min(x, 0) − log(1 + e^−|x|).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let min0 = (x - x.relu()?)?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    min0 - soft
}

/// SigLIP loss over L2-normalised `img` `(B, D)` and `txt` `(B, D)`:
/// `−(1/B) Σ_ij log σ(z_ij (t·x_i·y_j + b))`, `t = exp(t′)`, z = +1 on the diagonal, −1 elsewhere.
pub fn sigmoid_loss(img: &Tensor, txt: &Tensor, t_prime: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let b = img.dim(0)?;
    let logits = img
        .matmul(&txt.t()?)?
        .broadcast_mul(&t_prime.exp()?)?
        .broadcast_add(bias)?;
    let eye = Tensor::eye(b, DType::F32, img.device())?.to_dtype(logits.dtype())?;
    let z = ((eye * 2.0)? - 1.0)?;
    let l = log_sigmoid(&(logits * z)?)?;
    (l.sum_all()? / b as f64)?.neg()
}

/// Targets z `(B, B)` of the sigmoid loss: +1 on the diagonal and, with `same_text`, wherever
/// the two texts are identical; −1 elsewhere.
pub fn pair_targets(texts: &[&str], same_text: bool, device: &Device) -> Result<Tensor> {
    let b = texts.len();
    let mut z = vec![-1f32; b * b];
    for i in 0..b {
        for j in 0..b {
            if i == j || (same_text && texts[i] == texts[j]) {
                z[i * b + j] = 1.0;
            }
        }
    }
    Tensor::from_vec(z, (b, b), device)
}

/// Sigmoid loss with explicit targets `z` `(B, B)` of ±1 (see [`pair_targets`]).
pub fn sigmoid_loss_targets(
    img: &Tensor,
    txt: &Tensor,
    t_prime: &Tensor,
    bias: &Tensor,
    z: &Tensor,
) -> Result<Tensor> {
    let b = img.dim(0)?;
    let logits = img
        .matmul(&txt.t()?)?
        .broadcast_mul(&t_prime.exp()?)?
        .broadcast_add(bias)?;
    let l = log_sigmoid(&(logits * z)?)?;
    (l.sum_all()? / b as f64)?.neg()
}

/// Mean cross-entropy of `logits` `(K, V)` against `targets` `(K,)` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let dt = crate::model::nn::norm_dtype(logits.dtype());
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(dt)?, D::Minus1)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn log_sigmoid_matches_formula_and_is_stable() {
        let x = Tensor::new(&[-1000f32, -2.0, 0.0, 3.0, 1000.0], &Device::Cpu).unwrap();
        let v: Vec<f32> = log_sigmoid(&x).unwrap().to_vec1().unwrap();
        let want = |x: f64| -(1.0 + (-x).exp()).ln();
        assert!((v[0] as f64 + 1000.0).abs() < 1e-3);
        assert!((v[1] as f64 - want(-2.0)).abs() < 1e-6);
        assert!((v[2] as f64 - want(0.0)).abs() < 1e-6);
        assert!((v[3] as f64 - want(3.0)).abs() < 1e-6);
        assert!(v[4].abs() < 1e-6 && v[4].is_finite());
    }

    #[test]
    fn sigmoid_loss_hand_computed() {
        // x = [[1,0],[0,1]], y = [[1,0],[0,1]], t' = 0 (t = 1), b = 0
        // logits = I; diag z=+1: log σ(1); off-diag z=-1 with logit 0: log σ(0)
        let d = &Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.], [0., 1.]], d).unwrap();
        let tp = Tensor::new(&[0f32], d).unwrap();
        let b = Tensor::new(&[0f32], d).unwrap();
        let l = scalar(&sigmoid_loss(&x, &x, &tp, &b).unwrap());
        let ls = |v: f64| -(1.0 + (-v).exp()).ln();
        let want = -(2.0 * ls(1.0) + 2.0 * ls(0.0)) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        // with t = e^ln2 = 2 and b = -1: logits = 2·I − 1 → diag 1, off −1 (z=-1 → +1)
        let tp = Tensor::new(&[2f32.ln()], d).unwrap();
        let b = Tensor::new(&[-1f32], d).unwrap();
        let l = scalar(&sigmoid_loss(&x, &x, &tp, &b).unwrap());
        let want = -(4.0 * ls(1.0)) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }

    #[test]
    fn same_text_targets_match_diagonal_loss_when_texts_differ() {
        let d = &Device::Cpu;
        let x = Tensor::new(&[[0.6f32, 0.8], [1., 0.], [0., 1.]], d).unwrap();
        let y = Tensor::new(&[[1f32, 0.], [0.8, 0.6], [0., 1.]], d).unwrap();
        let tp = Tensor::new(&[1.3f32], d).unwrap();
        let b = Tensor::new(&[-0.7f32], d).unwrap();
        let plain = scalar(&sigmoid_loss(&x, &y, &tp, &b).unwrap());
        let z = pair_targets(&["a", "b", "c"], true, d).unwrap();
        let with = scalar(&sigmoid_loss_targets(&x, &y, &tp, &b, &z).unwrap());
        assert!((plain - with).abs() < 1e-6);
        // texts 0 and 2 identical: pairs (0,2) and (2,0) flip to positives
        let z = pair_targets(&["a", "b", "a"], true, d).unwrap();
        let zv: Vec<Vec<f32>> = z.to_vec2().unwrap();
        assert_eq!(zv[0], vec![1., -1., 1.]);
        assert_eq!(zv[1], vec![-1., 1., -1.]);
        let flipped = scalar(&sigmoid_loss_targets(&x, &y, &tp, &b, &z).unwrap());
        assert!((flipped - plain).abs() > 1e-3);
        let z = pair_targets(&["a", "b", "a"], false, d).unwrap();
        assert_eq!(z.to_vec2::<f32>().unwrap()[0], vec![1., -1., -1.]);
    }

    #[test]
    fn cross_entropy_hand_computed() {
        let d = &Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0., 0.], [2., 0., 0.]], d).unwrap();
        let t = Tensor::new(&[1u32, 0], d).unwrap();
        let l = scalar(&cross_entropy(&logits, &t).unwrap());
        let a = 3f64.ln();
        let b = -(2.0 - (2f64.exp() + 2.0).ln());
        assert!((l - (a + b) / 2.0).abs() < 1e-6);
    }
}
