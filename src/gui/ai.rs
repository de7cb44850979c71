//! The AI side of the viewer: typed findings grounded on the image, "find all", description of a
//! drawn region, in-context grounding from the prior-case store, review (accept/reject) and the
//! exports. Every model call runs on a named background thread; the frame only draws results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Color32, Pos2, Rect, RichText, Vec2};

use super::jobs::{JobEvent, Jobs};
use crate::model::load::DeviceChoice;
use crate::model::tasks::EncodedImage;
use crate::model::Lofi;
use crate::report::{AiBox, AiFinding, AiResults, Review, Source};
use crate::store::{PriorStore, RecordInfo};
use crate::util::Cancel;

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

/// Known finding phrases offered as completions (NIH box findings with side words).
pub const KNOWN_PHRASES: &[&str] = &[
    "cardiomegaly",
    "pleural effusion",
    "left pleural effusion",
    "right pleural effusion",
    "atelectasis",
    "left lower zone atelectasis",
    "right lower zone atelectasis",
    "infiltrate",
    "pneumonia",
    "pneumothorax",
    "left pneumothorax",
    "right pneumothorax",
    "mass",
    "nodule",
    "consolidation",
    "enlarged cardiac silhouette",
];

/// A case the last in-context grounding leaned on.
pub struct UsedCase {
    /// The store record.
    pub record: RecordInfo,
    /// Its similarity to the query image.
    pub score: f32,
    /// Its thumbnail.
    pub thumb: Option<egui::TextureHandle>,
    thumb_png: Option<Vec<u8>>,
}

enum AiEvent {
    Model(Result<Arc<Lofi>, String>),
    Store(Result<Arc<dyn PriorStore>, String>),
    Result {
        key: String,
        finding: AiFinding,
        used: Vec<(RecordInfo, f32, Option<Vec<u8>>)>,
    },
    Encoded {
        key: String,
        enc: EncodedImage,
    },
    Failed(String),
}

/// What is running now.
pub struct Running {
    /// Shown next to the spinner.
    pub what: String,
    /// Stops the job.
    pub cancel: Cancel,
}

/// AI state of the app.
pub struct AiState {
    /// The loaded model.
    pub model: Option<Arc<Lofi>>,
    /// Why there is no model, or that it is loading.
    pub model_status: String,
    /// The prior-case store (for in-context grounding).
    pub store: Option<Arc<dyn PriorStore>>,
    /// Annotated cases available for in-context grounding.
    pub annotated: usize,
    /// The phrase being typed.
    pub phrase: String,
    /// Phrases asked before (most recent first).
    pub history: Vec<String>,
    /// The job in flight.
    pub running: Option<Running>,
    /// Results by image key.
    pub results: HashMap<String, AiResults>,
    /// Show the overlay.
    pub show_layer: bool,
    /// Overlay opacity.
    pub opacity: f32,
    /// Use in-context grounding.
    pub use_icl: bool,
    /// K for in-context grounding.
    pub shots: usize,
    /// Cases the last grounding used.
    pub used: Vec<UsedCase>,
    /// Selected (finding, box) of the current image.
    pub selected: Option<(usize, usize)>,
    /// Drawing a region to describe.
    pub region_tool: bool,
    /// The region being drawn (image pixels).
    pub drawing: Option<[Pos2; 2]>,
    encoded: Option<(String, EncodedImage)>,
    /// Where results are kept between runs.
    pub results_dir: Option<PathBuf>,
    /// Last message.
    pub message: Option<String>,
}

impl Default for AiState {
    fn default() -> Self {
        Self {
            model: None,
            model_status: "no model".into(),
            store: None,
            annotated: 0,
            phrase: String::new(),
            history: Vec::new(),
            running: None,
            results: HashMap::new(),
            show_layer: true,
            opacity: 0.9,
            use_icl: false,
            shots: 3,
            used: Vec::new(),
            selected: None,
            region_tool: false,
            drawing: None,
            encoded: None,
            results_dir: None,
            message: None,
        }
    }
}

/// The key under which an image's results are kept.
pub fn image_key(info: &crate::dicom::ImageInfo, path: &Path) -> String {
    if info.sop_uid.is_empty() {
        path.display().to_string()
    } else {
        info.sop_uid.clone()
    }
}

impl AiState {
    /// Load a model folder in the background.
    pub fn load_model(&mut self, jobs: &Jobs, dir: PathBuf, device: DeviceChoice) {
        self.model = None;
        self.model_status = format!("loading {}…", dir.display());
        jobs.spawn("ai-load-model", move |h| {
            let r = Lofi::load(&dir, device)
                .map(Arc::new)
                .map_err(|e| format!("{}: {e}", dir.display()));
            h.send(JobEvent::Other(Box::new(AiEvent::Model(r))));
        });
    }

    /// Open the prior-case store in the background.
    pub fn open_store(&mut self, jobs: &Jobs, spec: Option<String>) {
        jobs.spawn("ai-open-store", move |h| {
            let r = crate::store::open(spec.as_deref())
                .map(Arc::from)
                .map_err(|e| e.to_string());
            h.send(JobEvent::Other(Box::new(AiEvent::Store(r))));
        });
    }

    /// Take AI events out of the job stream; returns events that are not ours.
    pub fn handle(&mut self, ev: JobEvent, ctx: &egui::Context) -> Option<JobEvent> {
        let JobEvent::Other(b) = ev else {
            return Some(ev);
        };
        let b = match b.downcast::<AiEvent>() {
            Ok(e) => e,
            Err(other) => return Some(JobEvent::Other(other)),
        };
        match *b {
            AiEvent::Model(Ok(m)) => {
                self.model_status = m.model_id();
                self.model = Some(m);
                self.encoded = None;
            }
            AiEvent::Model(Err(e)) => {
                self.model_status = format!("model not loaded: {e}");
            }
            AiEvent::Store(Ok(s)) => {
                self.annotated = s
                    .records()
                    .map(|r| r.iter().filter(|x| !x.meta.regions.is_empty()).count())
                    .unwrap_or(0);
                self.store = Some(s);
            }
            AiEvent::Store(Err(e)) => self.message = Some(format!("prior-case store: {e}")),
            AiEvent::Encoded { key, enc } => self.encoded = Some((key, enc)),
            AiEvent::Result { key, finding, used } => {
                self.running = None;
                if finding.source == Source::Grounding {
                    self.used = used
                        .into_iter()
                        .map(|(record, score, png)| UsedCase {
                            record,
                            score,
                            thumb: None,
                            thumb_png: png,
                        })
                        .collect();
                    for u in &mut self.used {
                        if let Some(img) = u
                            .thumb_png
                            .take()
                            .and_then(|p| image::load_from_memory(&p).ok())
                        {
                            let g = img.to_luma8();
                            let ci = egui::ColorImage::from_gray(
                                [g.width() as usize, g.height() as usize],
                                g.as_raw(),
                            );
                            u.thumb = Some(ctx.load_texture(
                                format!("case-{}", u.record.id),
                                ci,
                                egui::TextureOptions::LINEAR,
                            ));
                        }
                    }
                }
                if let Some(r) = self.results.get_mut(&key) {
                    // a new answer for the same phrase replaces the old one
                    r.findings
                        .retain(|f| !(f.phrase == finding.phrase && f.source == finding.source));
                    r.findings.push(finding);
                }
                self.save(&key);
            }
            AiEvent::Failed(e) => {
                self.running = None;
                self.message = Some(e);
            }
        }
        None
    }

    fn results_path(&self, key: &str) -> Option<PathBuf> {
        let dir = self.results_dir.as_ref()?;
        Some(dir.join(format!(
            "{:016x}.json",
            crate::manifest::fnv64(0, key.as_bytes())
        )))
    }

    /// Persist an image's results (review states survive restarts).
    pub fn save(&self, key: &str) {
        if let (Some(p), Some(r)) = (self.results_path(key), self.results.get(key)) {
            if let Ok(s) = serde_json::to_vec_pretty(r) {
                if let Err(e) = crate::util::atomic_write(&p, &s) {
                    tracing::warn!("AI results not saved: {e}");
                }
            }
        }
    }

    /// Results of an image, restored from disk the first time.
    pub fn ensure_results(&mut self, key: &str, width: u32, height: u32) {
        if self.results.contains_key(key) {
            return;
        }
        let restored = self
            .results_path(key)
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<AiResults>(&b).ok());
        let r = restored.unwrap_or_else(|| AiResults {
            model: self
                .model
                .as_ref()
                .map(|m| m.model_id())
                .unwrap_or_default(),
            width,
            height,
            sop_uid: key.to_string(),
            findings: Vec::new(),
            disclaimer: crate::report::disclaimer(),
        });
        self.results.insert(key.to_string(), r);
    }

    fn start(
        &mut self,
        jobs: &Jobs,
        what: String,
        key: String,
        gray: Arc<image::GrayImage>,
        task: Task,
    ) {
        let Some(model) = self.model.clone() else {
            self.message = Some(format!("no model: {}", self.model_status));
            return;
        };
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
        }
        let cancel = Cancel::new();
        self.running = Some(Running {
            what,
            cancel: cancel.clone(),
        });
        self.message = None;
        let cached = self
            .encoded
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, e)| e.clone());
        let store = self.store.clone();
        let (use_icl, k) = (self.use_icl && self.annotated > 0, self.shots);
        let requested = if self.use_icl { self.shots } else { 0 };
        let name = match task {
            Task::Ground(_) => "ai-ground",
            Task::FindAll => "ai-find-all",
            Task::Describe(_) => "ai-describe",
        };
        jobs.spawn(name, move |h| {
            let lofi = model.with_cancel(cancel.clone());
            type Used = Vec<(RecordInfo, f32, Option<Vec<u8>>)>;
            let run = || -> Result<(AiFinding, Used), String> {
                let enc = match cached {
                    Some(e) => e,
                    None => {
                        let e = lofi.encode(&gray).map_err(|e| e.to_string())?;
                        h.send(JobEvent::Other(Box::new(AiEvent::Encoded {
                            key: key.clone(),
                            enc: e.clone(),
                        })));
                        e
                    }
                };
                match task {
                    Task::Ground(phrase) => {
                        let icl = match (use_icl, store.as_deref()) {
                            (true, Some(s)) => {
                                crate::store::icl_shots(&lofi, s, &enc, &phrase, k, None)
                                    .map_err(|e| e.to_string())?
                            }
                            _ => Vec::new(),
                        };
                        let shots: Vec<_> = icl.iter().map(|s| s.shot.clone()).collect();
                        let g = lofi
                            .ground_checked(&enc, &phrase, &shots)
                            .map_err(|e| e.to_string())?;
                        let (presence, present, boxes) = (g.presence, g.present, g.boxes);
                        let used = icl
                            .into_iter()
                            .map(|s| {
                                let png = store
                                    .as_deref()
                                    .and_then(|st| st.thumbnail(s.record.id).ok().flatten());
                                (s.record, s.score, png)
                            })
                            .collect();
                        Ok((
                            AiFinding {
                                phrase,
                                boxes: boxes
                                    .into_iter()
                                    .map(|b| AiBox {
                                        x1: b.x1,
                                        y1: b.y1,
                                        x2: b.x2,
                                        y2: b.y2,
                                        score: b.score,
                                        review: Review::Pending,
                                    })
                                    .collect(),
                                source: Source::Grounding,
                                shots: shots.len(),
                                shots_requested: requested,
                                presence: Some(presence),
                                present,
                            },
                            used,
                        ))
                    }
                    Task::FindAll => {
                        let regions = lofi.findings(&enc).map_err(|e| e.to_string())?;
                        let boxes = regions
                            .iter()
                            .map(|r| AiBox {
                                x1: r.x1,
                                y1: r.y1,
                                x2: r.x2,
                                y2: r.y2,
                                score: r.score,
                                review: Review::Pending,
                            })
                            .collect();
                        let phrase = if regions.is_empty() {
                            "find all: nothing reported".to_string()
                        } else {
                            format!(
                                "find all: {}",
                                regions
                                    .iter()
                                    .map(|r| r.phrase.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        Ok((
                            AiFinding {
                                phrase,
                                boxes,
                                source: Source::FindAll,
                                shots: 0,
                                shots_requested: 0,
                                presence: None,
                                present: true,
                            },
                            Vec::new(),
                        ))
                    }
                    Task::Describe(b) => {
                        let text = lofi.describe(&enc, b).map_err(|e| e.to_string())?;
                        let text = if text.is_empty() {
                            "(no description)".to_string()
                        } else {
                            text
                        };
                        Ok((
                            AiFinding {
                                phrase: text,
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
                            },
                            Vec::new(),
                        ))
                    }
                }
            };
            match run() {
                Ok((finding, used)) => h.send(JobEvent::Other(Box::new(AiEvent::Result {
                    key,
                    finding,
                    used,
                }))),
                Err(e) if e == "cancelled" => h.send(JobEvent::Other(Box::new(AiEvent::Failed(
                    "cancelled".into(),
                )))),
                Err(e) => h.send(JobEvent::Other(Box::new(AiEvent::Failed(e)))),
            }
        });
    }

    /// Ground `phrase` on the image.
    pub fn ground(
        &mut self,
        jobs: &Jobs,
        key: String,
        gray: Arc<image::GrayImage>,
        phrase: String,
    ) {
        let phrase = phrase.trim().to_string();
        if phrase.is_empty() {
            return;
        }
        self.history.retain(|h| *h != phrase);
        self.history.insert(0, phrase.clone());
        self.history.truncate(50);
        self.start(
            jobs,
            format!("grounding “{phrase}”"),
            key,
            gray,
            Task::Ground(phrase),
        );
    }

    /// Dense captioning of the whole image.
    pub fn find_all(&mut self, jobs: &Jobs, key: String, gray: Arc<image::GrayImage>) {
        self.start(jobs, "finding all".into(), key, gray, Task::FindAll);
    }

    /// Describe a region (image pixels).
    pub fn describe(&mut self, jobs: &Jobs, key: String, gray: Arc<image::GrayImage>, b: [f32; 4]) {
        self.start(
            jobs,
            "describing the region".into(),
            key,
            gray,
            Task::Describe(b),
        );
    }

    /// Completions for the typed text: known phrases and history that contain it.
    pub fn completions(&self) -> Vec<String> {
        let t = self.phrase.trim().to_lowercase();
        if t.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for c in self
            .history
            .iter()
            .map(String::as_str)
            .chain(KNOWN_PHRASES.iter().copied())
        {
            if c.to_lowercase().contains(&t) && c != t && !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
        out.truncate(6);
        out
    }
}

enum Task {
    Ground(String),
    FindAll,
    Describe([f32; 4]),
}

/// Screen polygon of an image-space box (follows rotation and flips).
pub fn box_on_screen(
    view: &super::view::ViewTransform,
    rect: Rect,
    size: Vec2,
    b: &AiBox,
) -> [Pos2; 4] {
    let f = |x: f32, y: f32| view.image_to_screen(rect, size, Pos2::new(x, y));
    [f(b.x1, b.y1), f(b.x2, b.y1), f(b.x2, b.y2), f(b.x1, b.y2)]
}

/// Draw the AI layer of an image.
pub fn overlay(
    painter: &egui::Painter,
    view: &super::view::ViewTransform,
    rect: Rect,
    size: Vec2,
    r: &AiResults,
    opacity: f32,
    selected: Option<(usize, usize)>,
) {
    let mut any = false;
    for (fi, f) in r.findings.iter().enumerate() {
        let base = PALETTE[fi % PALETTE.len()];
        for (bi, b) in f.boxes.iter().enumerate() {
            any = true;
            let alpha = if b.review == Review::Rejected {
                0.3 * opacity
            } else {
                opacity
            };
            let col = base.gamma_multiply(alpha);
            let pts = box_on_screen(view, rect, size, b);
            let width = if selected == Some((fi, bi)) { 3.5 } else { 2.0 };
            let mut closed = pts.to_vec();
            closed.push(pts[0]);
            painter.add(egui::Shape::line(closed, egui::Stroke::new(width, col)));
            let top_left = pts.iter().fold(Pos2::new(f32::MAX, f32::MAX), |a, p| {
                Pos2::new(a.x.min(p.x), a.y.min(p.y))
            });
            let mark = match b.review {
                Review::Accepted => " (accepted)",
                Review::Rejected => " (rejected)",
                Review::Pending => "",
            };
            let label = if f.source == Source::Described {
                format!("{}{mark}", f.phrase)
            } else {
                format!("{} {:.2}{mark}", f.phrase, b.score)
            };
            let galley = painter.layout_no_wrap(label, egui::FontId::proportional(13.0), col);
            let pos = top_left - Vec2::new(0.0, galley.size().y + 2.0);
            painter.rect_filled(
                Rect::from_min_size(pos, galley.size()).expand(2.0),
                2.0,
                Color32::from_black_alpha((160.0 * alpha) as u8),
            );
            painter.galley(pos, galley, col);
        }
    }
    if any {
        let text = format!("{} · {}", crate::report::disclaimer(), r.model);
        painter.text(
            rect.right_bottom() + Vec2::new(-8.0, -8.0),
            egui::Align2::RIGHT_BOTTOM,
            text,
            egui::FontId::proportional(12.0),
            Color32::from_rgb(255, 150, 120),
        );
    }
}

/// What the panel asks the app to do.
#[derive(Default)]
pub struct PanelActions {
    /// Ground the phrase.
    pub ground: Option<String>,
    /// Find all.
    pub find_all: bool,
    /// Zoom to (finding, box).
    pub zoom_to: Option<(usize, usize)>,
    /// Export as this kind.
    pub export: Option<ExportKind>,
    /// Open another model folder.
    pub open_model: bool,
    /// Cancel the running job.
    pub cancel: bool,
    /// A review state changed.
    pub reviewed: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// JSON.
    Json,
    /// PNG with the overlay.
    Png,
    /// DICOM Structured Report.
    Sr,
}

/// The AI panel.
pub fn panel_ui(ai: &mut AiState, ui: &mut egui::Ui, key: Option<&str>) -> PanelActions {
    let mut act = PanelActions::default();
    ui.heading("AI findings");
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("Model: {}", ai.model_status)).strong());
        if ui
            .small_button("Open model…")
            .on_hover_text("Load another model folder")
            .clicked()
        {
            act.open_model = true;
        }
    });
    ui.label(RichText::new(crate::report::disclaimer()).color(Color32::from_rgb(255, 150, 120)));
    ui.separator();
    let label = ui.label("Finding");
    let resp = ui
        .add(
            egui::TextEdit::singleline(&mut ai.phrase)
                .hint_text("Type a finding, e.g. left pleural effusion")
                .desired_width(f32::INFINITY)
                .id_salt("ai-phrase"),
        )
        .labelled_by(label.id);
    let enter = resp.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    if enter {
        act.ground = Some(ai.phrase.clone());
    }
    let comps = ai.completions();
    if !comps.is_empty() && resp.has_focus()
        || (!comps.is_empty() && !ai.phrase.is_empty() && ai.running.is_none())
    {
        ui.horizontal_wrapped(|ui| {
            for c in comps {
                if ui.small_button(&c).clicked() {
                    ai.phrase = c.clone();
                    act.ground = Some(c);
                }
            }
        });
    }
    ui.horizontal(|ui| {
        if ui.button("Ground").clicked() {
            act.ground = Some(ai.phrase.clone());
        }
        if ui
            .button("Find all")
            .on_hover_text("Every finding the model reports")
            .clicked()
        {
            act.find_all = true;
        }
        ui.toggle_value(&mut ai.region_tool, "Describe region")
            .on_hover_text("Drag a box on the image");
    });
    ui.horizontal(|ui| {
        let enabled = ai.annotated > 0;
        ui.add_enabled(
            enabled,
            egui::Checkbox::new(&mut ai.use_icl, "Learn from similar cases"),
        )
        .on_hover_text(format!(
            "{} annotated prior cases in the store",
            ai.annotated
        ))
        .on_disabled_hover_text("The prior-case store holds no annotated cases");
        ui.add_enabled(
            enabled && ai.use_icl,
            egui::Slider::new(&mut ai.shots, 1..=5).text("K"),
        );
    });
    if let Some(r) = &ai.running {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(&r.what);
            if ui.button("Cancel").clicked() {
                act.cancel = true;
            }
        });
    }
    if let Some(m) = &ai.message {
        ui.label(RichText::new(m).color(Color32::from_rgb(240, 120, 110)));
    }
    ui.horizontal(|ui| {
        ui.checkbox(&mut ai.show_layer, "AI layer (A)");
        ui.add(egui::Slider::new(&mut ai.opacity, 0.1..=1.0).text("opacity"));
    });
    ui.separator();
    let Some(key) = key else {
        ui.label("No image.");
        return act;
    };
    let selected = ai.selected;
    if let Some(results) = ai.results.get_mut(key) {
        egui::ScrollArea::vertical()
            .id_salt("ai-results")
            .max_height(300.0)
            .show(ui, |ui| {
                for (fi, f) in results.findings.iter_mut().enumerate() {
                    let col = PALETTE[fi % PALETTE.len()];
                    ui.horizontal(|ui| {
                        // a colour swatch (drawn: the bundled fonts have no square glyph)
                        let (r, _) =
                            ui.allocate_exact_size(Vec2::splat(10.0), egui::Sense::hover());
                        ui.painter().rect_filled(r, 2.0, col);
                        let shots = if f.shots > 0 {
                            format!(" (K = {})", f.shots)
                        } else {
                            String::new()
                        };
                        ui.label(RichText::new(format!("{}{}", f.phrase, shots)).strong());
                    });
                    if f.shots_requested > f.shots {
                        ui.label(
                            RichText::new(format!(
                                "   only {} of {} similar cases found in the store",
                                f.shots, f.shots_requested
                            ))
                            .weak(),
                        );
                    }
                    if !f.present {
                        let s = f.presence.unwrap_or(0.0);
                        ui.label(RichText::new(format!("   not found (score {s:.2})")).strong());
                    } else if f.boxes.is_empty() {
                        ui.label(RichText::new("   no box found").weak());
                    } else if let Some(s) = f.presence {
                        ui.label(RichText::new(format!("   presence score {s:.2}")).weak());
                    }
                    for (bi, b) in f.boxes.iter_mut().enumerate() {
                        ui.horizontal(|ui| {
                            let text = format!(
                                "   box {} · score {:.2} · {:.0},{:.0}–{:.0},{:.0}",
                                bi + 1,
                                b.score,
                                b.x1,
                                b.y1,
                                b.x2,
                                b.y2
                            );
                            if ui
                                .selectable_label(selected == Some((fi, bi)), text)
                                .clicked()
                            {
                                act.zoom_to = Some((fi, bi));
                            }
                            if ui
                                .selectable_label(b.review == Review::Accepted, "accept")
                                .on_hover_text("Accept")
                                .clicked()
                            {
                                b.review = if b.review == Review::Accepted {
                                    Review::Pending
                                } else {
                                    Review::Accepted
                                };
                                act.reviewed = true;
                            }
                            if ui
                                .selectable_label(b.review == Review::Rejected, "reject")
                                .on_hover_text("Reject")
                                .clicked()
                            {
                                b.review = if b.review == Review::Rejected {
                                    Review::Pending
                                } else {
                                    Review::Rejected
                                };
                                act.reviewed = true;
                            }
                        });
                    }
                }
            });
        if !results.findings.is_empty() {
            ui.horizontal(|ui| {
                ui.label("Export:");
                if ui.button("JSON").clicked() {
                    act.export = Some(ExportKind::Json);
                }
                if ui.button("PNG").clicked() {
                    act.export = Some(ExportKind::Png);
                }
                if ui.button("DICOM SR").clicked() {
                    act.export = Some(ExportKind::Sr);
                }
                if ui.button("Clear").clicked() {
                    results.findings.clear();
                    act.reviewed = true;
                }
            });
        }
    }
    if !ai.used.is_empty() {
        ui.separator();
        ui.label(RichText::new("Similar cases used as examples").strong());
        ui.horizontal_wrapped(|ui| {
            for u in &ai.used {
                ui.vertical(|ui| {
                    if let Some(t) = &u.thumb {
                        ui.add(egui::Image::new((t.id(), Vec2::new(72.0, 72.0))));
                    }
                    ui.label(
                        RichText::new(format!(
                            "{:.2} {}",
                            u.score,
                            u.record.meta.labels.join(", ")
                        ))
                        .small(),
                    );
                });
            }
        });
    }
    act
}
