//! "Similar cases": search the prior-case store by the whole image, by a drawn region or by typed
//! text; index a folder with progress and cancel; show the store's size and model. Searching and
//! indexing run on named background threads; a click on a case opens it two-up beside the
//! current image with synchronised window and zoom.

use std::path::PathBuf;
use std::sync::Arc;

use egui::{RichText, Vec2};

use super::app::LofiApp;
use super::command::AppCommand;
use super::jobs::{JobEvent, Jobs, Picked};
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

/// What the user types and sets in the panel.
pub struct SimilarInputs {
    /// Text query.
    pub text: String,
    /// Cases to show.
    pub k: usize,
    /// Leave out the current patient's images.
    pub exclude_patient: bool,
}

impl Default for SimilarInputs {
    fn default() -> Self {
        Self {
            text: String::new(),
            k: 8,
            exclude_patient: true,
        }
    }
}

/// State of the panel.
#[derive(Default)]
pub struct SimilarState {
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
    /// Store size and model id (or why they could not be read), when known.
    pub store_info: Option<Result<(usize, Option<String>), String>>,
    /// The last region drawn on the active image (image pixels).
    pub region: Option<[f32; 4]>,
    /// A store-info request is in flight.
    pub info_pending: bool,
}

type Found = Vec<(Hit, Option<Vec<u8>>)>;

/// What similar-cases jobs send back.
pub enum SimilarEvent {
    /// Search results (what was asked, hits with thumbnails).
    Hits(Result<(String, Found), String>),
    /// Indexing progress.
    Progress(usize, usize),
    /// Indexing ended.
    Indexed(Result<IndexReport, String>),
    /// Store size and model.
    Info(Result<(usize, Option<String>), String>),
}

fn send(h: &super::jobs::JobHandle, e: SimilarEvent) {
    h.send(JobEvent::Similar(e));
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
        k: usize,
        exclude: Option<Option<String>>,
    ) {
        if let Some(c) = self.searching.take() {
            c.cancel();
        }
        let what = q.describe();
        self.message = None;
        let cancel = jobs.spawn("similar-search", move |h| {
            let run = || -> Result<(String, Found), String> {
                let emb = match &q {
                    Query::Image(g, _) => model.embed_image(g).map_err(|e| e.to_string())?,
                    Query::Region(g, b) => {
                        let crop = crate::service::crop_region(g, *b);
                        model.embed_image(&crop).map_err(|e| e.to_string())?
                    }
                    Query::Text(t) => model.embed_text(t).map_err(|e| e.to_string())?,
                };
                if h.cancel.is_cancelled() {
                    return Err("cancelled".into());
                }
                let file = match &q {
                    Query::Image(_, Some(p)) => Some(p.as_path()),
                    _ => None,
                };
                // "exclude this patient": the image's own patient, else its stored record's
                let filter = Filter {
                    exclude_patient: exclude
                        .and_then(|own| super::ai::resolve_patient(own, file, store.as_ref())),
                    ..Default::default()
                };
                let bytes = file.and_then(|p| std::fs::read(p).ok());
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
                h.send(JobEvent::Picked(Picked::IndexFolder(p)));
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

    /// Apply a similar-cases event.
    pub fn handle(&mut self, ev: SimilarEvent, ctx: &egui::Context) {
        match ev {
            SimilarEvent::Hits(r) => {
                self.searching = None;
                match r {
                    Ok((what, found)) => {
                        self.answered = what;
                        self.hits = found
                            .into_iter()
                            .map(|(hit, png)| SimilarHit {
                                thumb: png.as_deref().and_then(|p| {
                                    super::ai::png_texture(
                                        ctx,
                                        format!("similar-{}", hit.record.id),
                                        p,
                                    )
                                }),
                                hit,
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
                if let Err(e) = &r {
                    tracing::error!("prior-case store: {e}");
                }
                self.store_info = Some(r);
            }
        }
    }
}

/// Scores printed with as many decimals (3 to 6) as it takes to tell neighbours apart.
pub fn score_labels(scores: &[f32]) -> Vec<String> {
    let mut decimals = 3;
    while decimals < 6
        && scores.windows(2).any(|w| {
            w[0] != w[1] && format!("{:.*}", decimals, w[0]) == format!("{:.*}", decimals, w[1])
        })
    {
        decimals += 1;
    }
    scores.iter().map(|s| format!("{s:.decimals$}")).collect()
}

impl LofiApp {
    /// Similar-cases commands.
    pub(crate) fn apply_similar(&mut self, c: AppCommand) {
        let a = self.state.active;
        let (Some(model), Some(store)) = (self.state.ai.model.clone(), self.state.ai.store.clone())
        else {
            if matches!(
                c,
                AppCommand::SimilarByImage
                    | AppCommand::SimilarByRegion
                    | AppCommand::SimilarByText
                    | AppCommand::IndexFolder(_)
            ) {
                self.state.similar.message = Some("no model or no store yet".into());
            }
            return;
        };
        let inputs = &self.inputs.similar;
        let exclude = inputs.exclude_patient.then(|| self.state.patient_of(a));
        let k = inputs.k;
        let query = match c {
            AppCommand::SimilarByImage => {
                let path = self.state.viewports[a].path.clone();
                self.state
                    .model_input(a)
                    .map(|(_, g)| Query::Image(g, path))
            }
            AppCommand::SimilarByRegion => {
                match (self.state.model_input(a), self.state.similar.region) {
                    (Some((_, g)), Some(b)) => Some(Query::Region(g, b)),
                    _ => None,
                }
            }
            AppCommand::SimilarByText => Some(Query::Text(inputs.text.trim().to_string())),
            AppCommand::Compare(p) => {
                self.state.settings.two_up = true;
                self.state.settings.sync = true;
                self.show_file(1, p);
                None
            }
            AppCommand::IndexFolderDialog => {
                self.state.similar.pick_folder(&self.jobs);
                None
            }
            AppCommand::IndexFolder(dir) => {
                self.state
                    .similar
                    .index_folder(&self.jobs, model.clone(), store.clone(), dir);
                None
            }
            AppCommand::CancelIndexing => {
                if let Some(i) = &self.state.similar.indexing {
                    i.cancel.cancel();
                }
                None
            }
            other => {
                tracing::debug!("command not handled: {other:?}");
                None
            }
        };
        if let Some(q) = query {
            self.state
                .similar
                .search(&self.jobs, model, store, q, k, exclude);
        }
    }
}

const ERROR: egui::Color32 = egui::Color32::from_rgb(240, 120, 110);

/// Draw the panel. `ready` says whether a model and a store are loaded.
pub fn similar_ui(
    ui: &mut egui::Ui,
    s: &SimilarState,
    inputs: &mut SimilarInputs,
    ready: bool,
    cmds: &mut Vec<AppCommand>,
) {
    match &s.store_info {
        Some(Ok((n, model))) => {
            ui.label(format!(
                "Store: {n} cases · model {}",
                model.as_deref().unwrap_or("none yet")
            ));
        }
        Some(Err(e)) => {
            ui.label(RichText::new(format!("Store error: {e}")).color(ERROR));
        }
        None => {
            ui.label(RichText::new("Store: not open").weak());
        }
    }
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(ready, egui::Button::new("Similar to this image"))
            .clicked()
        {
            cmds.push(AppCommand::SimilarByImage);
        }
        let region = ready && s.region.is_some();
        if ui
            .add_enabled(region, egui::Button::new("…to the region"))
            .on_disabled_hover_text("Draw a region first (D)")
            .clicked()
        {
            cmds.push(AppCommand::SimilarByRegion);
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Text");
        let r = ui
            .add(
                egui::TextEdit::singleline(&mut inputs.text)
                    .hint_text("e.g. pleural effusion")
                    .desired_width(180.0)
                    .id_salt("similar-text"),
            )
            .labelled_by(label.id);
        let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let can = ready && !inputs.text.trim().is_empty();
        if ui.add_enabled(can, egui::Button::new("Search")).clicked() || (enter && can) {
            cmds.push(AppCommand::SimilarByText);
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.add(egui::Slider::new(&mut inputs.k, 1..=32).text("cases"));
        ui.checkbox(&mut inputs.exclude_patient, "exclude this patient");
    });
    indexing_ui(ui, s, ready, cmds);
    if s.searching.is_some() {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("searching…");
        });
    }
    if let Some(m) = &s.message {
        ui.label(RichText::new(m).weak());
    }
    hits_ui(ui, s, cmds);
}

fn indexing_ui(ui: &mut egui::Ui, s: &SimilarState, ready: bool, cmds: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        if ui
            .add_enabled(
                ready && s.indexing.is_none(),
                egui::Button::new("Index a folder…"),
            )
            .clicked()
        {
            cmds.push(AppCommand::IndexFolderDialog);
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
                cmds.push(AppCommand::CancelIndexing);
            }
        }
    });
}

fn hits_ui(ui: &mut egui::Ui, s: &SimilarState, cmds: &mut Vec<AppCommand>) {
    if s.hits.is_empty() {
        return;
    }
    ui.label(RichText::new(format!("Nearest to {}", s.answered)).strong());
    let scores: Vec<f32> = s.hits.iter().map(|h| h.hit.score).collect();
    let score_text = score_labels(&scores);
    egui::ScrollArea::vertical()
        .id_salt("similar-hits")
        .max_height(360.0)
        .show(ui, |ui| {
            for (i, (h, score)) in s.hits.iter().zip(&score_text).enumerate() {
                let r = &h.hit.record;
                let open = AppCommand::Compare(PathBuf::from(&r.meta.path));
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
                            cmds.push(open.clone());
                        }
                    }
                    ui.vertical(|ui| {
                        let name = std::path::Path::new(&r.meta.path)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        ui.add(
                            egui::Label::new(
                                RichText::new(format!("{}. {name} · {score}", i + 1)).strong(),
                            )
                            .truncate(),
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
                            cmds.push(open.clone());
                        }
                    });
                });
            }
        });
}

#[cfg(test)]
mod tests {
    use super::score_labels;

    #[test]
    fn scores_get_the_decimals_that_tell_them_apart() {
        assert_eq!(score_labels(&[0.91, 0.5]), ["0.910", "0.500"]);
        assert_eq!(
            score_labels(&[1.0, 0.99991, 0.99987]),
            ["1.00000", "0.99991", "0.99987"]
        );
        // equal scores do not force more decimals
        assert_eq!(score_labels(&[0.5, 0.5]), ["0.500", "0.500"]);
    }
}
