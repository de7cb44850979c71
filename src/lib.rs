//! lofi-viewer: a chest X-ray workstation — DICOM viewing, the LoFi vision-language model in
//! candle, fine-tuning, a prior-case store and the GUI that joins them.
//!
//! Core modules (`dicom`, `model`, `train`, `store`, `eval`) never depend on the GUI; the GUI sits
//! behind the default `gui` feature. See `ARCHITECTURE.md` for the module table.

pub mod cli;
pub mod dicom;
pub mod eval;
#[cfg(feature = "gui")]
pub mod gui;
pub mod manifest;
pub mod model;
pub mod pacs;
pub mod report;
pub mod service;
pub mod store;
pub mod train;
pub mod util;
