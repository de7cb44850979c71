//! What the AI side holds between frames: the model, the store, results per image (persisted),
//! the job in flight and the cases the last grounding used; and how job events change it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::AiEvent;
use crate::gui::jobs::{JobEvent, Jobs};
use crate::model::load::DeviceChoice;
use crate::model::tasks::EncodedImage;
use crate::model::Lofi;
use crate::report::{AiResults, Source};
use crate::service::{AiAnswer, AiService, AiTask, ServiceError};
use crate::store::{PriorStore, RecordInfo};
use crate::util::Cancel;

/// A case the last in-context grounding leaned on.
pub struct UsedCase {
    /// The store record.
    pub record: RecordInfo,
    /// Its similarity to the query image.
    pub score: f32,
    /// Its thumbnail.
    pub thumb: Option<egui::TextureHandle>,
}

/// What is running now.
pub struct Running {
    /// Shown next to the spinner.
    pub what: String,
    /// Stops the job.
    pub cancel: Cancel,
}

/// The prior-case store as the AI panel sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StoreStatus {
    /// Being opened.
    #[default]
    Opening,
    /// Open, with this many annotated cases.
    Open {
        /// Cases with regions (usable as in-context examples).
        annotated: usize,
    },
    /// The store, or reading its records, failed.
    Failed(String),
}

/// AI state of the app.
pub struct AiState {
    /// The loaded model.
    pub model: Option<Arc<Lofi>>,
    /// Why there is no model, or that it is loading.
    pub model_status: String,
    /// The prior-case store (for in-context grounding).
    pub store: Option<Arc<dyn PriorStore>>,
    /// How the store is.
    pub store_status: StoreStatus,
    /// Phrases asked before (most recent first).
    pub history: Vec<String>,
    /// The job in flight.
    pub running: Option<Running>,
    /// Results by image key.
    pub results: HashMap<String, AiResults>,
    /// Show the overlay.
    pub show_layer: bool,
    /// Cases the last grounding used.
    pub used: Vec<UsedCase>,
    /// Selected (finding, box) of the current image.
    pub selected: Option<(usize, usize)>,
    encoded: Option<(String, EncodedImage)>,
    /// Where results are kept between runs (None: not kept).
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
            store_status: StoreStatus::Opening,
            history: Vec::new(),
            running: None,
            results: HashMap::new(),
            show_layer: true,
            used: Vec::new(),
            selected: None,
            encoded: None,
            results_dir: None,
            message: None,
        }
    }
}

impl AiState {
    /// Annotated cases usable as in-context examples (0 unless the store is open and readable).
    pub fn annotated(&self) -> usize {
        match self.store_status {
            StoreStatus::Open { annotated } => annotated,
            _ => 0,
        }
    }

    /// Box `bi` of finding `fi` in the results of image `key`.
    pub fn box_mut(
        &mut self,
        key: &str,
        fi: usize,
        bi: usize,
    ) -> Option<&mut crate::report::AiBox> {
        self.results
            .get_mut(key)?
            .findings
            .get_mut(fi)?
            .boxes
            .get_mut(bi)
    }

    /// Put a phrase at the front of the history.
    pub fn remember(&mut self, phrase: &str) {
        self.history.retain(|h| h != phrase);
        self.history.insert(0, phrase.to_string());
        self.history.truncate(50);
    }

    /// Load a model folder in the background.
    pub fn load_model(&mut self, jobs: &Jobs, dir: PathBuf, device: DeviceChoice) {
        self.model = None;
        self.model_status = format!("loading {}…", dir.display());
        jobs.spawn("ai-load-model", move |h| {
            let r = Lofi::load(&dir, device)
                .map(Arc::new)
                .map_err(|e| format!("{}: {e}", dir.display()));
            h.send(JobEvent::Ai(AiEvent::Model(r)));
        });
    }

    /// Open the prior-case store and count its annotated cases in the background.
    pub fn open_store(&mut self, jobs: &Jobs, spec: Option<String>) {
        self.store_status = StoreStatus::Opening;
        jobs.spawn("ai-open-store", move |h| {
            let r = crate::store::open(spec.as_deref())
                .map(Arc::<dyn PriorStore>::from)
                .map(|s| {
                    let n = s
                        .records()
                        .map(|r| r.iter().filter(|x| !x.meta.regions.is_empty()).count())
                        .map_err(|e| e.to_string());
                    (s, n)
                })
                .map_err(|e| e.to_string());
            h.send(JobEvent::Ai(AiEvent::Store(r)));
        });
    }

    /// Apply an AI event.
    pub fn handle(&mut self, ev: AiEvent, ctx: &egui::Context) {
        match ev {
            AiEvent::Model(Ok(m)) => {
                self.model_status = m.model_id();
                self.model = Some(m);
                self.encoded = None;
            }
            AiEvent::Model(Err(e)) => {
                tracing::error!("model not loaded: {e}");
                self.model_status = format!("model not loaded: {e}");
            }
            AiEvent::Store(Ok((s, count))) => {
                self.store_status = match count {
                    Ok(annotated) => StoreStatus::Open { annotated },
                    Err(e) => {
                        tracing::error!("prior-case store: {e}");
                        StoreStatus::Failed(e)
                    }
                };
                self.store = Some(s);
            }
            AiEvent::Store(Err(e)) => {
                tracing::error!("prior-case store: {e}");
                self.store_status = StoreStatus::Failed(e);
            }
            AiEvent::Encoded { key, enc } => self.encoded = Some((key, enc)),
            AiEvent::Answer { key, task, answer } => {
                self.running = None;
                if let AiTask::Ground { .. } = task {
                    self.used = answer
                        .used
                        .into_iter()
                        .map(|u| UsedCase {
                            thumb: u.thumbnail_png.as_deref().and_then(|p| {
                                super::png_texture(ctx, format!("case-{}", u.record.id), p)
                            }),
                            record: u.record,
                            score: u.score,
                        })
                        .collect();
                }
                if answer.findings.is_empty() {
                    self.message = Some(match task {
                        AiTask::FindAll => "Find all: the model reported no finding".into(),
                        _ => "the model gave no answer".into(),
                    });
                }
                if let Some(r) = self.results.get_mut(&key) {
                    // results first seen before the model loaded carry no model name yet
                    if let Some(m) = &self.model {
                        r.model = m.model_id();
                    }
                    // a new answer replaces the old one: the same phrase for grounding, every
                    // earlier region for "find all"
                    for f in &answer.findings {
                        r.findings.retain(|o| {
                            o.source != f.source
                                || (f.source != Source::FindAll && o.phrase != f.phrase)
                        });
                    }
                    r.findings.extend(answer.findings);
                }
                self.selected = None;
                self.save(&key);
            }
            AiEvent::Failed { error, cancelled } => {
                self.running = None;
                if !cancelled {
                    tracing::error!("AI: {error}");
                }
                self.message = Some(error);
            }
        }
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
            match serde_json::to_vec_pretty(r) {
                Ok(s) => {
                    if let Err(e) = crate::util::atomic_write(&p, &s) {
                        tracing::warn!("AI results not saved: {e}");
                    }
                }
                Err(e) => tracing::warn!("AI results not serialised: {e}"),
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
            .and_then(|b| match serde_json::from_slice::<AiResults>(&b) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("saved AI results of {key} unreadable: {e}");
                    None
                }
            });
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

    /// Run `task` on an image in the background (replacing the job in flight). `file` is the
    /// image's file, to find its patient in the store when the image carries none.
    pub fn start(
        &mut self,
        jobs: &Jobs,
        key: String,
        gray: Arc<image::GrayImage>,
        file: Option<PathBuf>,
        task: AiTask,
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
            what: task.describe(),
            cancel: cancel.clone(),
        });
        self.message = None;
        let cached = self
            .encoded
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, e)| e.clone());
        let store = self.store.clone();
        let name = match task {
            AiTask::Ground { .. } => "ai-ground",
            AiTask::FindAll => "ai-find-all",
            AiTask::Describe(_) => "ai-describe",
        };
        jobs.spawn(name, move |h| {
            let svc = AiService::new(model, store.clone());
            let run = || -> Result<AiAnswer, ServiceError> {
                let enc = match cached {
                    Some(e) => e,
                    None => {
                        let e = svc.encode(&gray, &cancel)?;
                        h.send(JobEvent::Ai(AiEvent::Encoded {
                            key: key.clone(),
                            enc: e.clone(),
                        }));
                        e
                    }
                };
                let task = match (task.clone(), store.as_deref()) {
                    (
                        AiTask::Ground {
                            phrase,
                            shots,
                            exclude_patient,
                        },
                        Some(st),
                    ) if shots > 0 => AiTask::Ground {
                        phrase,
                        shots,
                        exclude_patient: super::resolve_patient(
                            exclude_patient,
                            file.as_deref(),
                            st,
                        ),
                    },
                    (t, _) => t,
                };
                svc.run(&enc, &task, &cancel)
            };
            let ev = match run() {
                Ok(answer) => AiEvent::Answer { key, task, answer },
                Err(ServiceError::Cancelled) => AiEvent::Failed {
                    error: "cancelled".into(),
                    cancelled: true,
                },
                Err(e) => AiEvent::Failed {
                    error: e.to_string(),
                    cancelled: false,
                },
            };
            h.send(JobEvent::Ai(ev));
        });
    }
}
