//! AI results as the radiologist keeps them: typed findings with boxes, their review state, and
//! the exports (JSON in the contract's shape, DICOM SR via `dicom::sr`).

use serde::{Deserialize, Serialize};

/// Review state of one AI box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Review {
    /// Not reviewed yet.
    #[default]
    Pending,
    /// Accepted by the radiologist.
    Accepted,
    /// Rejected by the radiologist.
    Rejected,
}

impl Review {
    /// Words for reports.
    pub fn describe(&self) -> &'static str {
        match self {
            Review::Pending => "not reviewed",
            Review::Accepted => "accepted by the radiologist",
            Review::Rejected => "rejected by the radiologist",
        }
    }
}

/// Where a box came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Grounding of a typed phrase.
    #[default]
    Grounding,
    /// "Find all" (dense captioning).
    FindAll,
    /// Description of a drawn region.
    Described,
}

/// One box of a finding, in original image pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
    /// Model confidence in (0, 1].
    pub score: f32,
    /// Review state.
    #[serde(default)]
    pub review: Review,
}

/// A finding phrase with its boxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiFinding {
    /// The phrase (typed, or the model's description).
    pub phrase: String,
    /// Boxes, best first.
    pub boxes: Vec<AiBox>,
    /// Origin.
    #[serde(default)]
    pub source: Source,
    /// Number of in-context examples used.
    #[serde(default)]
    pub shots: usize,
    /// Number of in-context examples asked for (more than `shots` when the store had fewer).
    #[serde(default)]
    pub shots_requested: usize,
    /// The image–text presence score of the phrase, when the model gave one.
    #[serde(default)]
    pub presence: Option<f32>,
    /// False when the presence score fell below the model's threshold: the finding was judged
    /// absent and no box was drawn.
    #[serde(default = "yes")]
    pub present: bool,
}

fn yes() -> bool {
    true
}

/// All AI results of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AiResults {
    /// Model id (`name@version`).
    pub model: String,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// SOP Instance UID (or file name for PNG/JPEG).
    pub sop_uid: String,
    /// Findings in the order they were asked.
    pub findings: Vec<AiFinding>,
    /// The honest label carried by every export.
    #[serde(default = "disclaimer")]
    pub disclaimer: String,
}

/// "AI-generated — not for diagnostic use".
pub fn disclaimer() -> String {
    "AI-generated — not for diagnostic use".to_string()
}

impl AiResults {
    /// JSON export: the `ground` contract per finding, with review states.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "sop_uid": self.sop_uid,
            "disclaimer": disclaimer(),
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "phrase": f.phrase,
                "source": f.source,
                "shots": f.shots,
                "boxes": f.boxes,
            })).collect::<Vec<_>>(),
        })
    }
}
