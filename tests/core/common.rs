//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn tokenizer_path() -> PathBuf {
    root().join("assets/tokenizer/all-MiniLM-L6-v2/tokenizer.json")
}

/// The NIH fixture as a manifest (3 real images, 5 boxes).
pub fn nih_manifest(out_dir: &Path) -> lofi_viewer::manifest::Manifest {
    lofi_viewer::manifest::import_nih(&fixtures().join("nih"), out_dir).unwrap()
}

pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
