//! What a run measures: the loss parts of a batch and the run's summary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::TrainError;

/// What the run reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: usize,
    /// Mean training loss over the last 50 steps.
    pub train_loss: f64,
    /// Last validation losses.
    pub val: BTreeMap<String, f64>,
    /// Where the final model directory is.
    pub model_dir: PathBuf,
    /// Whether the run stopped early on Ctrl-C.
    pub interrupted: bool,
}

/// Loss parts of one batch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LossParts {
    /// Total.
    pub total: f64,
    /// Sigmoid.
    pub sig: f64,
    /// Captioning.
    pub cap: f64,
    /// Location-aware captioning.
    pub loc: f64,
    /// Mean cosine between different images' embeddings in the batch (1.0 = collapsed).
    pub img_sim: f64,
    /// Mean cosine between different texts' embeddings in the batch.
    pub txt_sim: f64,
}

/// Mean off-diagonal entry of `e eᵀ` for L2-normalised rows `e` `(B, D)`.
pub(crate) fn mean_off_diagonal_cosine(e: &Tensor) -> Result<f64, TrainError> {
    let b = e.dim(0)?;
    if b < 2 {
        return Ok(0.0);
    }
    let e = e.detach().to_dtype(DType::F32)?;
    let sum = e.sum(0)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64; // Σ_ij e_i·e_j
    Ok((sum - b as f64) / (b * (b - 1)) as f64)
}
