//! The AI service both edges call: grounding (with in-context shots retrieved from the
//! prior-case store), "find all", region description, with cancellation. The GUI runs it on a
//! background thread and the CLI in the foreground; neither writes the flow again.
//!
//! Depends on `model`, `store` and `report`; never on the GUI.

use std::sync::Arc;

use image::GrayImage;

use crate::model::tasks::{EncodedImage, Region, ScoredBox};
use crate::model::{Lofi, ModelError};
use crate::report::{AiBox, AiFinding, Review, Source};
use crate::store::{PriorStore, RecordInfo, StoreError};
use crate::util::Cancel;

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model failed.
    #[error(transparent)]
    Model(ModelError),
    /// The prior-case store failed.
    #[error("prior-case store: {0}")]
    Store(#[from] StoreError),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl From<ModelError> for ServiceError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Cancelled => Self::Cancelled,
            e => Self::Model(e),
        }
    }
}

/// The phrase of a described region when the model produced no text.
pub const NO_DESCRIPTION: &str = "(no description)";

/// What to ask of the model about one encoded image.
#[derive(Debug, Clone, PartialEq)]
pub enum AiTask {
    /// Ground a typed phrase; with `shots` > 0, lean on that many solved cases from the store
    /// (nearest by image embedding, never of `exclude_patient`).
    Ground {
        /// The finding as typed.
        phrase: String,
        /// In-context examples asked for.
        shots: usize,
        /// A patient whose cases may not serve as examples (the query's own).
        exclude_patient: Option<String>,
    },
    /// Every finding the model reports, one per region.
    FindAll,
    /// Describe a region `[x1, y1, x2, y2]` in image pixels.
    Describe([f32; 4]),
}

impl AiTask {
    /// A short line for a progress label.
    pub fn describe(&self) -> String {
        match self {
            Self::Ground { phrase, .. } => format!("grounding “{phrase}”"),
            Self::FindAll => "finding all".into(),
            Self::Describe(_) => "describing the region".into(),
        }
    }
}

/// A stored case an in-context grounding leaned on.
#[derive(Debug, Clone)]
pub struct UsedCase {
    /// Its store record.
    pub record: RecordInfo,
    /// Similarity of its image to the query image.
    pub score: f32,
    /// The solved example's phrase.
    pub phrase: String,
    /// Its thumbnail (PNG), when the store keeps one.
    pub thumbnail_png: Option<Vec<u8>>,
}

/// The answer to one task.
#[derive(Debug, Clone)]
pub struct AiAnswer {
    /// Findings, each with its own phrase and boxes ("find all" gives one per region).
    pub findings: Vec<AiFinding>,
    /// Cases used as in-context examples.
    pub used: Vec<UsedCase>,
    /// The model's presence threshold (grounding only).
    pub presence_threshold: Option<f32>,
}

impl From<&ScoredBox> for AiBox {
    fn from(b: &ScoredBox) -> Self {
        Self {
            x1: b.x1,
            y1: b.y1,
            x2: b.x2,
            y2: b.y2,
            score: b.score,
            review: Review::Pending,
        }
    }
}

impl From<&Region> for AiFinding {
    fn from(r: &Region) -> Self {
        Self {
            phrase: r.phrase.clone(),
            boxes: vec![AiBox {
                x1: r.x1,
                y1: r.y1,
                x2: r.x2,
                y2: r.y2,
                score: r.score,
                review: Review::Pending,
            }],
            source: Source::FindAll,
            shots: 0,
            shots_requested: 0,
            presence: None,
            present: true,
        }
    }
}

/// The crop of `img` to `[x1, y1, x2, y2]` (image pixels, clamped to the image, at least 1 px).
pub fn crop_region(img: &GrayImage, b: [f32; 4]) -> GrayImage {
    let (w, h) = (img.width().max(1) as f32, img.height().max(1) as f32);
    let x1 = b[0].min(b[2]).clamp(0.0, w - 1.0);
    let y1 = b[1].min(b[3]).clamp(0.0, h - 1.0);
    let x2 = b[0].max(b[2]).clamp(x1 + 1.0, w);
    let y2 = b[1].max(b[3]).clamp(y1 + 1.0, h);
    image::imageops::crop_imm(
        img,
        x1 as u32,
        y1 as u32,
        (x2 - x1) as u32,
        (y2 - y1) as u32,
    )
    .to_image()
}

/// The model and (optionally) the prior-case store, shared by every task.
#[derive(Clone)]
pub struct AiService {
    model: Arc<Lofi>,
    store: Option<Arc<dyn PriorStore>>,
}

impl AiService {
    /// A service over a loaded model and an optional store.
    pub fn new(model: Arc<Lofi>, store: Option<Arc<dyn PriorStore>>) -> Self {
        Self { model, store }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Lofi> {
        &self.model
    }

    /// Encode an image (cancellable between layers).
    pub fn encode(&self, img: &GrayImage, cancel: &Cancel) -> Result<EncodedImage, ServiceError> {
        Ok(self.model.with_cancel(cancel.clone()).encode(img)?)
    }

    /// Run one task on an encoded image.
    pub fn run(
        &self,
        enc: &EncodedImage,
        task: &AiTask,
        cancel: &Cancel,
    ) -> Result<AiAnswer, ServiceError> {
        let lofi = self.model.with_cancel(cancel.clone());
        match task {
            AiTask::Ground {
                phrase,
                shots,
                exclude_patient,
            } => self.ground(
                &lofi,
                enc,
                phrase,
                *shots,
                exclude_patient.as_deref(),
                cancel,
            ),
            AiTask::FindAll => {
                let regions = lofi.findings(enc)?;
                Ok(AiAnswer {
                    findings: regions.iter().map(AiFinding::from).collect(),
                    used: Vec::new(),
                    presence_threshold: None,
                })
            }
            AiTask::Describe(b) => {
                let text = lofi.describe(enc, *b)?;
                let phrase = if text.is_empty() {
                    NO_DESCRIPTION.to_string()
                } else {
                    text
                };
                Ok(AiAnswer {
                    findings: vec![AiFinding {
                        phrase,
                        boxes: vec![AiBox {
                            x1: b[0],
                            y1: b[1],
                            x2: b[2],
                            y2: b[3],
                            score: 1.0,
                            review: Review::Pending,
                        }],
                        source: Source::Described,
                        shots: 0,
                        shots_requested: 0,
                        presence: None,
                        present: true,
                    }],
                    used: Vec::new(),
                    presence_threshold: None,
                })
            }
        }
    }

    fn ground(
        &self,
        lofi: &Lofi,
        enc: &EncodedImage,
        phrase: &str,
        shots: usize,
        exclude_patient: Option<&str>,
        cancel: &Cancel,
    ) -> Result<AiAnswer, ServiceError> {
        let phrase = phrase.trim();
        let icl = match (shots, self.store.as_deref()) {
            (0, _) | (_, None) => Vec::new(),
            (k, Some(s)) => crate::store::icl_shots(lofi, s, enc, phrase, k, exclude_patient)?,
        };
        if cancel.is_cancelled() {
            return Err(ServiceError::Cancelled);
        }
        let examples: Vec<_> = icl.iter().map(|s| s.shot.clone()).collect();
        let g = lofi.ground_checked(enc, phrase, &examples)?;
        let used = icl
            .into_iter()
            .map(|s| UsedCase {
                thumbnail_png: self
                    .store
                    .as_deref()
                    .and_then(|st| st.thumbnail(s.record.id).ok().flatten()),
                phrase: s.shot.phrase.clone(),
                record: s.record,
                score: s.score,
            })
            .collect();
        Ok(AiAnswer {
            findings: vec![AiFinding {
                phrase: phrase.to_string(),
                boxes: g.boxes.iter().map(AiBox::from).collect(),
                source: Source::Grounding,
                shots: examples.len(),
                shots_requested: shots,
                presence: Some(g.presence),
                present: g.present,
            }],
            used,
            presence_threshold: g.threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_is_clamped_and_never_empty() {
        let img = GrayImage::new(100, 50);
        assert_eq!(
            crop_region(&img, [10.0, 5.0, 30.0, 25.0]).dimensions(),
            (20, 20)
        );
        assert_eq!(
            crop_region(&img, [30.0, 25.0, 10.0, 5.0]).dimensions(),
            (20, 20)
        );
        assert_eq!(
            crop_region(&img, [-5.0, -5.0, 500.0, 500.0]).dimensions(),
            (100, 50)
        );
        assert_eq!(
            crop_region(&img, [99.5, 49.5, 99.5, 49.5]).dimensions(),
            (1, 1)
        );
    }

    #[test]
    fn find_all_regions_stay_separate_findings() {
        let regions = [
            Region {
                phrase: "right middle zone pneumonia".into(),
                x1: 1.0,
                y1: 2.0,
                x2: 30.0,
                y2: 40.0,
                score: 0.5,
            },
            Region {
                phrase: "left middle zone atelectasis".into(),
                x1: 50.0,
                y1: 2.0,
                x2: 90.0,
                y2: 40.0,
                score: 0.4,
            },
        ];
        let f: Vec<AiFinding> = regions.iter().map(AiFinding::from).collect();
        assert_eq!(f.len(), 2);
        for (a, r) in f.iter().zip(&regions) {
            assert_eq!(a.phrase, r.phrase);
            assert_eq!(a.boxes.len(), 1);
            assert_eq!(a.boxes[0].x1, r.x1);
            assert_eq!(a.source, Source::FindAll);
        }
    }
}
