//! "Similar cases": search the prior-case store by the whole image, by a drawn region or by typed
//! text; index a folder with progress and cancel; show the store's size and model. Searching and
//! indexing run on named background threads; a click on a case opens it two-up beside the
//! current image with synchronised window and zoom.

use std::path::PathBuf;
use std::sync::Arc;

use egui::{RichText, Vec2};

use super::jobs::{JobEvent, Jobs};
use crate::model::Lofi;
use crate::store::index::{IndexOptions, IndexReport};
use crate::store::{Filter, Hit, PriorStore};
use crate::util::Cancel;

/// What to search with.
#[derive(Clone)]
pub enum Query {
    /// The whole displayed image (and its file, to recognise an identical stored file).
    Image(Arc<image::GrayImage>, Option<PathBuf>),
    /// A region of it, in image pixels `[x1, y1, x2, y2]`.
    Region(Arc<image::GrayImage>, [f32; 4]),
    /// Typed text (text tower).
    Text(String),
}

impl Query {
    fn describe(&self) -> String {
        match self {
            Query::Image(..) => "this image".into(),
            Query::Region(_, b) => {
                format!("region {:.0},{:.0}–{:.0},{:.0}", b[0], b[1], b[2], b[3])
            }
            Query::Text(t) => format!("“{t}”"),
        }
    }
}

/// One case in the result list.
pub struct SimilarHit {
    /// Score and record.
    pub hit: Hit,
    /// Thumbnail texture.
    pub thumb: Option<egui::TextureHandle>,
}

/// A running indexing job.
pub struct Indexing {
    /// Stops the job between batches.
    pub cancel: Cancel,
    /// Files done.
    pub done: usize,
    /// Files in all.
    pub total: usize,
}

/// State of the panel.
pub struct SimilarState {
    /// Text query.
    pub text: String,
    /// Cases to show.
    pub k: usize,
    /// Leave out the current patient's images.
    pub exclude_patient: bool,
    /// Results of the last search, best first.
    pub hits: Vec<SimilarHit>,
    /// What the results answer.
    pub answered: String,
    /// A search in flight.
    pub searching: Option<Cancel>,
    /// An indexing job in flight.
    pub indexing: Option<Indexing>,
    /// Last error or notice.
    pub message: Option<String>,
    /// Store size and model id, when known.
    pub store_info: Option<(usize, Option<String>)>,
    /// The last region drawn on the active image (image pixels).
    pub region: Option<[f32; 4]>,
    /// A store-info request is in flight.
    pub info_pending: bool,
}

impl Default for SimilarState {
    fn default() -> Self {
        Self {
            text: String::new(),
            k: 8,
            exclude_patient: true,
            hits: Vec::new(),
            answered: String::new(),
            searching: None,
            indexing: None,
            message: None,
            store_info: None,
            region: None,
            info_pending: false,
        }
    }
}

type Found = Vec<(Hit, Option<Vec<u8>>)>;

enum SimilarEvent {
    Hits(Result<(String, Found), String>),
    Progress(usize, usize),
    Indexed(Result<IndexReport, String>),
    Info(Result<(usize, Option<String>), String>),
    Folder(PathBuf),
}

fn send(h: &super::jobs::JobHandle, e: SimilarEvent) {
    h.send(JobEvent::Other(Box::new(e)));
}

impl SimilarState {
    /// Read the store's size and model in the background.
    pub fn refresh_info(&mut self, jobs: &Jobs, store: Arc<dyn PriorStore>) {
        self.info_pending = true;
        jobs.spawn("similar-store-info", move |h| {
            let r = (|| Ok((store.len()?, store.model_id()?)))()
                .map_err(|e: crate::store::StoreError| e.to_string());
            send(&h, SimilarEvent::Info(r));
        });
    }

    /// Search the store on a background thread.
    pub fn search(
        &mut self,
        jobs: &Jobs,
        model: Arc<Lofi>,
        store: Arc<dyn PriorStore>,
        q: Query,
        patient: Option<String>,
    ) {
        if let Some(c) = self.searching.take() {
            c.cancel();
        }
        let k = self.k;
        let what = q.describe();
        let filter = Filter {
            exclude_patient: if self.exclude_patient { patient } else { None },
            ..Default::default()
        };
        self.message = None;
        let cancel = jobs.spawn("similar-search", move |h| {
            let run = || -> Result<(String, Found), String> {
                let emb = match &q {
                    Query::Image(g, _) => model.encode(g).map_err(|e| e.to_string())?.embedding,
                    Query::Region(g, b) => {
                        let (w, hgt) = (g.width() as f32, g.height() as f32);
                        let x1 = b[0].clamp(0.0, w - 1.0);
                        let y1 = b[1].clamp(0.0, hgt - 1.0);
                        let x2 = b[2].clamp(x1 + 1.0, w);
                        let y2 = b[3].clamp(y1 + 1.0, hgt);
                        let crop = image::imageops::crop_imm(
                            g.as_ref(),
                            x1 as u32,
                            y1 as u32,
                            (x2 - x1) as u32,
                            (y2 - y1) as u32,
                        )
                        .to_image();
                        model.encode(&crop).map_err(|e| e.to_string())?.embedding
                    }
                    Query::Text(t) => model.embed_text(t).map_err(|e| e.to_string())?,
                };
                if h.cancel.is_cancelled() {
                    return Err("cancelled".into());
                }
                let bytes = match &q {
                    Query::Image(_, Some(p)) => std::fs::read(p).ok(),
                    _ => None,
                };
                let hits = match bytes {
                    Some(b) => crate::store::search_image_file(
                        store.as_ref(),
                        &emb,
                        &b,
                        &model.model_id(),
                        k,
                        &filter,
                    )
                    .map(|(h, _)| h),
                    None => store.search(&emb, &model.model_id(), k, &filter),
                }
                .map_err(|e| e.to_string())?;
                let found = hits
                    .into_iter()
                    .map(|hit| {
                        let png = store.thumbnail(hit.record.id).ok().flatten();
                        (hit, png)
                    })
                    .collect();
                Ok((what, found))
            };
            let r = run();
            if !h.cancel.is_cancelled() {
                send(&h, SimilarEvent::Hits(r));
            }
        });
        self.searching = Some(cancel);
    }

    /// Ask for a folder, then index it (background; progress and cancel in the panel).
    pub fn pick_folder(&mut self, jobs: &Jobs) {
        jobs.spawn("index-folder dialog", move |h| {
            if let Some(p) = rfd::FileDialog::new()
                .set_title("Index a folder of prior cases")
                .pick_folder()
            {
                send(&h, SimilarEvent::Folder(p));
            }
        });
    }

    /// Index `dir` into the store.
    pub fn index_folder(
        &mut self,
        jobs: &Jobs,
        model: Arc<Lofi>,
        store: Arc<dyn PriorStore>,
        dir: PathBuf,
    ) {
        if self.indexing.is_some() {
            self.message = Some("an indexing job is already running".into());
            return;
        }
        let cancel = jobs.spawn("similar-index", move |h| {
            let progress = |d: usize, t: usize| send(&h, SimilarEvent::Progress(d, t));
            let opts = IndexOptions {
                manifest: None,
                batch: 8,
                cancel: h.cancel.clone(),
                progress: &progress,
            };
            let r = crate::store::index::index(&model, store.as_ref(), &[dir], &opts)
                .map_err(|e| e.to_string());
            send(&h, SimilarEvent::Indexed(r));
        });
        self.indexing = Some(Indexing {
            cancel,
            done: 0,
            total: 0,
        });
    }

    /// Take this panel's events out of the job stream; returns a folder to index when the user
    /// picked one, and events that are not ours.
    pub fn handle(
        &mut self,
        ev: JobEvent,
        ctx: &egui::Context,
    ) -> Result<Option<PathBuf>, JobEvent> {
        let JobEvent::Other(b) = ev else {
            return Err(ev);
        };
        let e = match b.downcast::<SimilarEvent>() {
            Ok(e) => e,
            Err(other) => return Err(JobEvent::Other(other)),
        };
        match *e {
            SimilarEvent::Hits(r) => {
                self.searching = None;
                match r {
                    Ok((what, found)) => {
                        self.answered = what;
                        self.hits = found
                            .into_iter()
                            .map(|(hit, png)| {
                                let thumb =
                                    png.and_then(|p| image::load_from_memory(&p).ok())
                                        .map(|img| {
                                            let g = img.to_luma8();
                                            let ci = egui::ColorImage::from_gray(
                                                [g.width() as usize, g.height() as usize],
                                                g.as_raw(),
                                            );
                                            ctx.load_texture(
                                                format!("similar-{}", hit.record.id),
                                                ci,
                                                egui::TextureOptions::LINEAR,
                                            )
                                        });
                                SimilarHit { hit, thumb }
                            })
                            .collect();
                        if self.hits.is_empty() {
                            self.message = Some("no case in the store matches".into());
                        }
                    }
                    Err(e) => self.message = Some(format!("search: {e}")),
                }
            }
            SimilarEvent::Progress(d, t) => {
                if let Some(i) = &mut self.indexing {
                    i.done = d;
                    i.total = t;
                }
            }
            SimilarEvent::Indexed(r) => {
                self.indexing = None;
                self.message = Some(match r {
                    Ok(rep) => format!(
                        "indexed: {} added, {} already stored, {} failed",
                        rep.added,
                        rep.skipped,
                        rep.failed.len()
                    ),
                    Err(e) => format!("indexing: {e}"),
                });
                self.store_info = None; // refreshed by the app
            }
            SimilarEvent::Info(r) => {
                self.info_pending = false;
                match r {
                    Ok(i) => self.store_info = Some(i),
                    Err(e) => {
                        self.store_info = Some((0, None));
                        self.message = Some(format!("prior-case store: {e}"));
                    }
                }
            }
            SimilarEvent::Folder(p) => return Ok(Some(p)),
        }
        Ok(None)
    }
}

/// What the panel asks the app to do.
#[derive(Default)]
pub struct SimilarActions {
    /// Search by the whole image.
    pub by_image: bool,
    /// Search by the last drawn region.
    pub by_region: bool,
    /// Search by the typed text.
    pub by_text: bool,
    /// Open this case two-up.
    pub open: Option<PathBuf>,
    /// Ask for a folder to index.
    pub index_folder: bool,
}

/// Draw the panel. `ready` says whether a model and a store are loaded.
pub fn similar_ui(s: &mut SimilarState, ui: &mut egui::Ui, ready: bool) -> SimilarActions {
    let mut act = SimilarActions::default();
    match &s.store_info {
        Some((n, model)) => {
            ui.label(format!(
                "Store: {n} cases · model {}",
                model.as_deref().unwrap_or("none yet")
            ));
        }
        None => {
            ui.label(RichText::new("Store: not open").weak());
        }
    }
    ui.horizontal(|ui| {
        if ui
            .add_enabled(ready, egui::Button::new("Similar to this image"))
            .clicked()
        {
            act.by_image = true;
        }
        let region = ready && s.region.is_some();
        if ui
            .add_enabled(region, egui::Button::new("…to the region"))
            .on_disabled_hover_text("Draw a region first (D)")
            .clicked()
        {
            act.by_region = true;
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Text");
        let r = ui
            .add(
                egui::TextEdit::singleline(&mut s.text)
                    .hint_text("e.g. pleural effusion")
                    .desired_width(180.0)
                    .id_salt("similar-text"),
            )
            .labelled_by(label.id);
        let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if ui
            .add_enabled(
                ready && !s.text.trim().is_empty(),
                egui::Button::new("Search"),
            )
            .clicked()
            || (enter && ready && !s.text.trim().is_empty())
        {
            act.by_text = true;
        }
    });
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut s.k, 1..=32).text("cases"));
        ui.checkbox(&mut s.exclude_patient, "exclude this patient");
    });
    ui.horizontal(|ui| {
        if ui
            .add_enabled(
                ready && s.indexing.is_none(),
                egui::Button::new("Index a folder…"),
            )
            .clicked()
        {
            act.index_folder = true;
        }
        if let Some(i) = &s.indexing {
            let frac = if i.total > 0 {
                i.done as f32 / i.total as f32
            } else {
                0.0
            };
            ui.add(
                egui::ProgressBar::new(frac)
                    .desired_width(120.0)
                    .text(format!("{}/{}", i.done, i.total)),
            );
            if ui.button("Cancel").clicked() {
                i.cancel.cancel();
            }
        }
    });
    if s.searching.is_some() {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("searching…");
        });
    }
    if let Some(m) = &s.message {
        ui.label(RichText::new(m).weak());
    }
    if !s.hits.is_empty() {
        ui.label(RichText::new(format!("Nearest to {}", s.answered)).strong());
        egui::ScrollArea::vertical()
            .id_salt("similar-hits")
            .max_height(360.0)
            .show(ui, |ui| {
                for (i, h) in s.hits.iter().enumerate() {
                    let r = &h.hit.record;
                    ui.horizontal(|ui| {
                        if let Some(t) = &h.thumb {
                            let img = ui.add(
                                egui::Image::new((t.id(), Vec2::new(64.0, 64.0)))
                                    .sense(egui::Sense::click()),
                            );
                            if img
                                .on_hover_text("Open two-up beside the current image")
                                .clicked()
                            {
                                act.open = Some(PathBuf::from(&r.meta.path));
                            }
                        }
                        ui.vertical(|ui| {
                            let name = std::path::Path::new(&r.meta.path)
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            ui.label(
                                RichText::new(format!("{}. {name} · {:.3}", i + 1, h.hit.score))
                                    .strong(),
                            );
                            let labels = if r.meta.labels.is_empty() {
                                "no labels".to_string()
                            } else {
                                r.meta.labels.join(", ")
                            };
                            ui.label(
                                RichText::new(format!("patient {} · {labels}", r.meta.patient_id))
                                    .small(),
                            );
                            if let Some(rep) = &r.meta.report {
                                let snippet: String = rep.chars().take(90).collect();
                                ui.label(RichText::new(snippet).small().weak());
                            }
                            if ui
                                .small_button("Compare")
                                .on_hover_text("Open two-up beside the current image")
                                .clicked()
                            {
                                act.open = Some(PathBuf::from(&r.meta.path));
                            }
                        });
                    });
                }
            });
    }
    act
}
