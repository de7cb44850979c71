#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Headless integration tests (one binary: every extra test file links the whole app again).

mod bundled;
mod common;
mod dicom;
mod malformed;
mod model;
mod pacs;
mod pretrained;
mod report;
mod store;
mod train;
