//! Long work runs on named background threads; results come back over a channel that the UI
//! drains once per frame, so the frame never waits on decoding, inference or indexing.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use crate::dicom::study::Scan;
use crate::dicom::LoadedImage;
use crate::util::Cancel;

/// What a job sends back.
pub enum JobEvent {
    /// Paths were scanned into a study tree.
    Scanned(Scan),
    /// An image finished loading (or failed).
    Loaded {
        /// Which file.
        path: PathBuf,
        /// The image or a one-line error.
        result: Result<Arc<LoadedImage>, String>,
    },
    /// A thumbnail is ready.
    Thumbnail {
        /// Which file.
        path: PathBuf,
        /// Its picture (None when the file cannot be shown).
        image: Option<egui::ColorImage>,
    },
    /// Progress of a named job.
    Progress {
        /// Job name.
        job: String,
        /// Units done.
        done: usize,
        /// Units in all.
        total: usize,
    },
    /// A job ended with an error.
    Failed {
        /// Job name.
        job: String,
        /// One-line message.
        error: String,
    },
    /// A file dialog answered.
    Picked(Picked),
    /// Model, store and inference results.
    Ai(super::ai::AiEvent),
    /// Similar-cases search and indexing.
    Similar(super::similar::SimilarEvent),
    /// Archive searches, retrieves, sends and the listener.
    Pacs(super::pacs::PacsEvent),
    /// The screenshot run's picture was saved (or not).
    Shot(Result<(), String>),
    /// A PNG export finished.
    Exported(Result<std::path::PathBuf, String>),
}

/// What a file dialog returned, by the question it asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    /// Files or a folder to open.
    Open(Vec<PathBuf>),
    /// A model folder to load.
    ModelFolder(PathBuf),
    /// Where to write an export.
    ExportTo(super::export::ExportKind, PathBuf),
    /// A folder of prior cases to index.
    IndexFolder(PathBuf),
}

/// The job runner.
pub struct Jobs {
    tx: Sender<JobEvent>,
    rx: Receiver<JobEvent>,
    ctx: egui::Context,
}

/// What a running job holds: its sender and a repaint handle.
#[derive(Clone)]
pub struct JobHandle {
    tx: Sender<JobEvent>,
    ctx: egui::Context,
    /// Set when the user cancels.
    pub cancel: Cancel,
}

impl JobHandle {
    /// Send a result and wake the UI.
    pub fn send(&self, e: JobEvent) {
        let _ = self.tx.send(e);
        self.ctx.request_repaint();
    }
}

impl Jobs {
    /// A runner that wakes `ctx` whenever a job reports.
    pub fn new(ctx: egui::Context) -> Self {
        let (tx, rx) = channel();
        Self { tx, rx, ctx }
    }

    /// Start `f` on a named thread; returns its cancel flag.
    pub fn spawn(&self, name: &str, f: impl FnOnce(JobHandle) + Send + 'static) -> Cancel {
        let cancel = Cancel::new();
        let h = JobHandle {
            tx: self.tx.clone(),
            ctx: self.ctx.clone(),
            cancel: cancel.clone(),
        };
        let job = name.to_string();
        let h2 = h.clone();
        let res = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(h));
        if let Err(e) = res {
            h2.send(JobEvent::Failed {
                job,
                error: format!("could not start a thread: {e}"),
            });
        }
        cancel
    }

    /// A handle for sending events from outside a job (e.g. a screenshot callback).
    pub fn sender(&self) -> JobHandle {
        JobHandle {
            tx: self.tx.clone(),
            ctx: self.ctx.clone(),
            cancel: Cancel::new(),
        }
    }

    /// Everything reported since the last call.
    pub fn poll(&self) -> Vec<JobEvent> {
        self.rx.try_iter().collect()
    }
}
