//! Fine-tuning LoFi with its three losses: data, losses, optimizer, crash-safe checkpoints,
//! exact resume, progress and metrics.
//!
//! Determinism: every random choice of step `s` (data order, augmentation, task choice) derives
//! from `(seed, s)` alone and parameters are initialised from `(seed, name)`, so a run resumed from
//! a checkpoint takes exactly the path of an uninterrupted one.
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`TrainConfig`] (TOML), freezing and sigmoid-positive choices |
//! | `trainer` | [`Trainer`]: the model over its parameter store, the feature cache, the text bank, one batch's loss and gradients |
//! | `run` | [`finetune`]: data, schedule, checkpoints, validation, export, progress reports |
//! | `shots` | in-context examples: nearest other-patient images per finding |
//! | `sampling` | deterministic data order, augmented views, per-sample random streams |
//! | `metrics` | loss parts and the run summary |
//! | `data`, `loss`, `optim`, `checkpoint`, `plot` | samples, losses, AdamW, checkpoints, the loss curve |

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod run;
pub mod sampling;
pub mod shots;
pub mod trainer;

use std::path::PathBuf;

use crate::model::ModelError;

pub use self::config::{Freeze, SigmoidPositives, TrainConfig};
pub use self::metrics::{LossParts, TrainSummary};
pub use self::run::{export_model, finetune, validate, Progress, ProgressSink, RunOptions};
pub use self::sampling::{augmented_views, sample_order};
pub use self::trainer::{resolve_model, TextBank, Trainer};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor op failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Training data problem.
    #[error("data: {0}")]
    Data(String),
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Checkpoint problem.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Bad training configuration.
    #[error("training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error(
        "loss became {value} at step {step}; stopped — the last good checkpoint is kept in {dir}"
    )]
    NonFinite {
        /// The offending value.
        value: f64,
        /// Step.
        step: usize,
        /// Checkpoint folder.
        dir: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}
