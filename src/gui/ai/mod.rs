//! The AI side of the viewer: typed findings grounded on the image, "find all", description of a
//! drawn region, in-context grounding from the prior-case store, review and exports. The work
//! itself is [`crate::service::AiService`] on a background thread; this module keeps its state
//! ([`state`]), draws its layer ([`overlay`]) and its panel ([`panel`]).

pub mod overlay;
pub mod panel;
pub mod state;

use std::path::Path;
use std::sync::Arc;

use egui::Color32;

pub use overlay::{box_on_screen, place_labels};
pub use panel::AiInputs;
pub use state::{AiState, StoreStatus};

use super::app::LofiApp;
use super::command::AppCommand;
use super::jobs::{JobEvent, Picked};
use super::state::StatusMessage;
use crate::model::tasks::EncodedImage;
use crate::model::Lofi;
use crate::report::Review;
use crate::service::{AiAnswer, AiTask};
use crate::store::PriorStore;

/// Colours of successive findings.
pub const PALETTE: [Color32; 8] = [
    Color32::from_rgb(255, 196, 0),
    Color32::from_rgb(0, 200, 255),
    Color32::from_rgb(255, 90, 170),
    Color32::from_rgb(120, 230, 90),
    Color32::from_rgb(190, 130, 255),
    Color32::from_rgb(255, 140, 60),
    Color32::from_rgb(80, 160, 255),
    Color32::from_rgb(230, 230, 230),
];

/// An opened store with its count of annotated cases (or why that count failed).
pub type OpenedStore = (Arc<dyn PriorStore>, Result<usize, String>);

/// What AI jobs send back.
pub enum AiEvent {
    /// A model folder loaded (or why not).
    Model(Result<Arc<Lofi>, String>),
    /// The store opened, with its count of annotated cases (or why that count failed).
    Store(Result<OpenedStore, String>),
    /// An image was encoded (kept for the next question about it).
    Encoded {
        /// Image key.
        key: String,
        /// The encoding.
        enc: EncodedImage,
    },
    /// A task finished.
    Answer {
        /// Image key.
        key: String,
        /// What was asked.
        task: AiTask,
        /// The answer.
        answer: AiAnswer,
    },
    /// A task failed.
    Failed {
        /// Why.
        error: String,
        /// The user cancelled it.
        cancelled: bool,
    },
}

/// The key under which an image's results are kept.
pub fn image_key(info: &crate::dicom::ImageInfo, path: &Path) -> String {
    if info.sop_uid.is_empty() {
        path.display().to_string()
    } else {
        info.sop_uid.clone()
    }
}

/// A texture from PNG bytes (store thumbnails).
pub fn png_texture(ctx: &egui::Context, name: String, png: &[u8]) -> Option<egui::TextureHandle> {
    let g = image::load_from_memory(png).ok()?.to_luma8();
    let ci = egui::ColorImage::from_gray([g.width() as usize, g.height() as usize], g.as_raw());
    Some(ctx.load_texture(name, ci, egui::TextureOptions::LINEAR))
}

/// The patient whose cases may not answer for a query image: its own patient ID, else the
/// patient of the stored record of the identical file (found by content hash). Reads the file:
/// call it on a job thread.
pub fn resolve_patient(
    own: Option<String>,
    file: Option<&Path>,
    store: &dyn PriorStore,
) -> Option<String> {
    if own.is_some() {
        return own;
    }
    let bytes = std::fs::read(file?).ok()?;
    crate::store::patient_of_file(store, &bytes).unwrap_or_else(|e| {
        tracing::warn!("looking up the query's own stored record: {e}");
        None
    })
}

impl LofiApp {
    /// AI and similar-cases commands.
    pub(crate) fn apply_ai(&mut self, c: AppCommand) {
        use AppCommand as C;
        let a = self.state.active;
        match c {
            C::Ground(phrase) => {
                let phrase = phrase.trim().to_string();
                if phrase.is_empty() {
                    return;
                }
                self.state.ai.remember(&phrase);
                self.state.settings.ai_history = self.state.ai.history.clone();
                let i = &self.inputs.ai;
                let shots = if i.use_icl { i.shots } else { 0 };
                let exclude_patient = self.state.patient_of(a);
                self.run_ai(
                    a,
                    AiTask::Ground {
                        phrase,
                        shots,
                        exclude_patient,
                    },
                );
            }
            C::FindAll => self.run_ai(a, AiTask::FindAll),
            C::Describe(idx, b) => {
                self.state.similar.region = Some(b);
                self.state.active = idx;
                self.run_ai(idx, AiTask::Describe(b));
            }
            C::CancelAi => {
                if let Some(r) = self.state.ai.running.take() {
                    r.cancel.cancel();
                    self.state.ai.message = Some("cancelled".into());
                }
            }
            C::Review(fi, bi, review) => self.review(fi, bi, review),
            C::ClearFindings => {
                if let Some(k) = self.state.viewports[a].ai_key() {
                    if let Some(r) = self.state.ai.results.get_mut(&k) {
                        r.findings.clear();
                    }
                    self.state.ai.save(&k);
                }
            }
            C::OpenModelDialog => {
                let start = self.state.settings.model_dir.clone();
                self.jobs.spawn("model dialog", move |h| {
                    let mut d = rfd::FileDialog::new().set_title("Open a LoFi model folder");
                    if let Some(s) = start {
                        d = d.set_directory(s);
                    }
                    if let Some(p) = d.pick_folder() {
                        h.send(JobEvent::Picked(Picked::ModelFolder(p)));
                    }
                });
            }
            C::LoadModel(dir) => {
                self.state.settings.model_dir = Some(dir.clone());
                self.state.ai.load_model(&self.jobs, dir, self.args.device);
            }
            other => self.apply_similar(other),
        }
    }

    fn review(&mut self, fi: usize, bi: usize, review: Review) {
        let Some(k) = self.state.viewports[self.state.active].ai_key() else {
            return;
        };
        if let Some(b) = self.state.ai.box_mut(&k, fi, bi) {
            b.review = review;
        }
        self.state.ai.save(&k);
    }

    /// Start `task` on pane `idx`'s image.
    fn run_ai(&mut self, idx: usize, task: AiTask) {
        let file = self.state.viewports[idx].path.clone();
        match self.state.model_input(idx) {
            Some((key, gray)) => self.state.ai.start(&self.jobs, key, gray, file, task),
            None => {
                self.state.message = Some(StatusMessage::error("no image to ask the model about"))
            }
        }
    }

    /// Zoom pane `idx` onto a box of its results.
    pub(crate) fn zoom_to(&mut self, idx: usize, fi: usize, bi: usize) {
        let Some((key, _)) = self.state.model_input(idx) else {
            return;
        };
        let Some(b) = self.state.ai.box_mut(&key, fi, bi).cloned() else {
            return;
        };
        self.state.ai.selected = Some((fi, bi));
        let vp = &mut self.state.viewports[idx];
        let (Some(rect), Some(img)) = (vp.rect, vp.image.as_ref()) else {
            return;
        };
        let Some(f) = img.frames.get(vp.frame) else {
            return;
        };
        let size = egui::Vec2::new(f.width as f32, f.height as f32);
        let bw = vp
            .view
            .rotated_size(egui::Vec2::new(b.x2 - b.x1, b.y2 - b.y1));
        vp.view.zoom = (0.6 * (rect.width() / bw.x.max(1.0)).min(rect.height() / bw.y.max(1.0)))
            .clamp(0.01, 64.0);
        vp.view.fit = false;
        vp.view.pan = egui::Vec2::ZERO;
        let c = vp.view.image_to_screen(
            rect,
            size,
            egui::Pos2::new((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0),
        );
        vp.view.pan = rect.center() - c;
        self.sync_from(idx);
    }
}
