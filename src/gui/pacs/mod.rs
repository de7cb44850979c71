//! The PACS window: named archive nodes (kept with the settings), a search form, a results table,
//! retrieve into the study cache with progress and cancel, one click to add a retrieved study to
//! the prior-case store, the storage SCP the user starts and stops, and "Send SR to PACS". Every
//! network call runs on a named background thread; the frame only reads [`PacsState`].

pub mod panel;

use std::path::PathBuf;
use std::sync::Arc;

use super::app::LofiApp;
use super::command::AppCommand;
use super::jobs::{JobEvent, JobHandle};
use super::state::StatusMessage;
use crate::pacs::scp::{Listener, ScpConfig, ScpEvent};
use crate::pacs::{
    self, Node, Progress, Query, Record, RetrieveOptions, RetrieveRequest, Retrieved, SendStatus,
};
use crate::util::Cancel;

/// The storage SCP's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ListenerSettings {
    /// Our AE title (what peers must call).
    pub ae_title: String,
    /// Address to bind.
    pub bind: String,
    /// TCP port.
    pub port: u16,
    /// Calling AE titles accepted.
    pub allow: Vec<String>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            ae_title: pacs::DEFAULT_AE_TITLE.into(),
            bind: "0.0.0.0".into(),
            port: 11112,
            allow: Vec::new(),
        }
    }
}

/// A retrieve in flight.
pub struct Retrieving {
    /// What is being fetched (for the progress bar).
    pub label: String,
    /// Stops it.
    pub cancel: Cancel,
    /// Progress so far.
    pub progress: Progress,
}

/// A study that arrived.
#[derive(Debug, Clone)]
pub struct RetrievedStudy {
    /// What it is (patient, date, description).
    pub label: String,
    /// Its folder in the study cache.
    pub dir: PathBuf,
    /// Files written.
    pub files: usize,
    /// What failed.
    pub failed: Vec<String>,
}

/// The running storage SCP and what it received.
pub struct ListenerRun {
    /// The listener.
    pub listener: Listener,
    /// Instances filed.
    pub received: usize,
    /// Associations refused.
    pub refused: usize,
    /// The last refusal or failure.
    pub last_problem: Option<String>,
}

/// What the PACS window shows.
#[derive(Default)]
pub struct PacsState {
    /// The window is open.
    pub open: bool,
    /// The last search's answers.
    pub results: Vec<Record>,
    /// What the results answer ("3 studies on ORTHANC@…").
    pub answered: Option<String>,
    /// A search in flight.
    pub searching: Option<Cancel>,
    /// A retrieve in flight.
    pub retrieving: Option<Retrieving>,
    /// Studies retrieved this session, newest first.
    pub retrieved: Vec<RetrievedStudy>,
    /// A send in flight.
    pub sending: Option<Cancel>,
    /// The storage SCP, when started.
    pub listener: Option<ListenerRun>,
    /// Last echo: round trip in ms, or the error.
    pub echo: Option<Result<f64, String>>,
    /// Last error or notice.
    pub message: Option<StatusMessage>,
    /// Files the listener filed since the last frame (opened into the browser once per frame).
    pub(crate) arrived: Vec<PathBuf>,
}

/// What PACS jobs send back.
pub enum PacsEvent {
    /// C-ECHO / QIDO round trip.
    Echo(Result<f64, String>),
    /// Search answers (what was asked, records).
    Found(Result<(String, Vec<Record>), String>),
    /// Retrieve progress.
    Progress(Progress),
    /// A retrieve ended.
    Retrieved {
        /// Label shown.
        label: String,
        /// Study folder.
        dir: PathBuf,
        /// Files or the error.
        result: Result<Retrieved, String>,
    },
    /// A send ended.
    Sent(Result<Vec<SendStatus>, String>),
    /// The storage SCP reported.
    Scp(ScpEvent),
}

fn send(h: &JobHandle, e: PacsEvent) {
    h.send(JobEvent::Pacs(e));
}

/// A row's display label: patient, date, description.
pub fn study_label(r: &Record) -> String {
    let mut parts = vec![pacs::text(r, "PatientName").replace('^', " ")];
    let date = pacs::text(r, "StudyDate");
    if date.len() == 8 {
        parts.push(format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]));
    }
    for k in ["StudyDescription", "SeriesDescription"] {
        let d = pacs::text(r, k);
        if !d.is_empty() {
            parts.push(d);
        }
    }
    parts.retain(|p| !p.trim().is_empty());
    parts.join(" · ")
}

impl PacsState {
    /// Handle a job's report; returns commands for the app (open what arrived).
    pub fn handle(&mut self, e: PacsEvent) -> Vec<AppCommand> {
        let mut cmds = Vec::new();
        match e {
            PacsEvent::Echo(r) => self.echo = Some(r),
            PacsEvent::Found(r) => {
                self.searching = None;
                match r {
                    Ok((what, rows)) => {
                        self.answered = Some(what);
                        self.results = rows;
                        self.message = None;
                    }
                    Err(e) => {
                        self.message = Some(StatusMessage::error(format!("search failed: {e}")))
                    }
                }
            }
            PacsEvent::Progress(p) => {
                if let Some(r) = &mut self.retrieving {
                    r.progress = p;
                }
            }
            PacsEvent::Retrieved { label, dir, result } => {
                self.retrieving = None;
                match result {
                    Ok(got) => {
                        self.message = Some(if got.failed.is_empty() {
                            StatusMessage::info(format!(
                                "retrieved {label}: {} file(s)",
                                got.files.len()
                            ))
                        } else {
                            StatusMessage::error(format!(
                                "retrieved {label}: {} file(s), {} failed: {}",
                                got.files.len(),
                                got.failed.len(),
                                got.failed.join("; ")
                            ))
                        });
                        if !got.files.is_empty() {
                            cmds.push(AppCommand::OpenPaths(vec![dir.clone()]));
                        }
                        self.retrieved.insert(
                            0,
                            RetrievedStudy {
                                label,
                                dir,
                                files: got.files.len(),
                                failed: got.failed,
                            },
                        );
                    }
                    Err(e) => {
                        self.message = Some(StatusMessage::error(format!(
                            "retrieve of {label} failed: {e}"
                        )))
                    }
                }
            }
            PacsEvent::Sent(r) => {
                self.sending = None;
                self.message = Some(match r {
                    Ok(st) => {
                        let bad: Vec<String> = st
                            .iter()
                            .filter(|s| s.result != "success")
                            .map(|s| {
                                format!(
                                    "{}: {}",
                                    s.file.display(),
                                    s.message.clone().unwrap_or_default()
                                )
                            })
                            .collect();
                        if bad.is_empty() {
                            StatusMessage::info(format!(
                                "sent {} object(s) to the archive",
                                st.len()
                            ))
                        } else {
                            StatusMessage::error(format!("send: {}", bad.join("; ")))
                        }
                    }
                    Err(e) => StatusMessage::error(format!("send failed: {e}")),
                });
            }
            PacsEvent::Scp(ev) => {
                let Some(run) = &mut self.listener else {
                    return cmds;
                };
                match ev {
                    ScpEvent::Stored { received, .. } => {
                        run.received += 1;
                        self.arrived.push(received.path);
                    }
                    ScpEvent::Refused {
                        calling, reason, ..
                    } => {
                        run.refused += 1;
                        run.last_problem = Some(format!("refused {calling}: {reason}"));
                    }
                    ScpEvent::Failed { calling, reason } => {
                        run.last_problem = Some(format!("{calling}: {reason}"));
                    }
                    ScpEvent::Accepted { .. } | ScpEvent::Ended { .. } => {}
                }
            }
        }
        cmds
    }
}

impl LofiApp {
    /// The node searches and retrieves use: the selected one, if any.
    pub fn pacs_node(&self) -> Option<Node> {
        let s = &self.state.settings;
        s.pacs_nodes.get(s.pacs_node).cloned()
    }

    /// Where retrieved studies go.
    pub fn study_cache(&self) -> PathBuf {
        self.args
            .study_cache
            .clone()
            .or_else(|| self.state.settings.study_cache.clone())
            .unwrap_or_else(pacs::default_cache_dir)
    }

    /// PACS commands; false when `c` is not one of them.
    pub(crate) fn apply_pacs(&mut self, c: &AppCommand) -> bool {
        use AppCommand as C;
        match c {
            C::ShowPacs(v) => self.state.pacs.open = *v,
            C::PacsSelectNode(i) => {
                if *i < self.state.settings.pacs_nodes.len() {
                    self.state.settings.pacs_node = *i;
                    self.state.pacs.echo = None;
                }
            }
            C::PacsSaveNode(i, node) => {
                let nodes = &mut self.state.settings.pacs_nodes;
                match i {
                    Some(i) if *i < nodes.len() => nodes[*i] = node.clone(),
                    _ => {
                        nodes.push(node.clone());
                        self.state.settings.pacs_node = nodes.len() - 1;
                    }
                }
            }
            C::PacsRemoveNode(i) => {
                let nodes = &mut self.state.settings.pacs_nodes;
                if *i < nodes.len() {
                    nodes.remove(*i);
                    let s = &mut self.state.settings;
                    s.pacs_node = s.pacs_node.min(s.pacs_nodes.len().saturating_sub(1));
                }
            }
            C::PacsEcho => self.pacs_echo(),
            C::PacsSearch(q) => self.pacs_search(q.clone()),
            C::PacsRetrieve {
                study_uid,
                series_uid,
                label,
            } => {
                // a bare UID (the screenshot run) gets the search row's label when there is one
                let label = self
                    .state
                    .pacs
                    .results
                    .iter()
                    .find(|r| label == study_uid && pacs::text(r, "StudyInstanceUID") == *study_uid)
                    .map(study_label)
                    .unwrap_or_else(|| label.clone());
                self.pacs_retrieve(study_uid.clone(), series_uid.clone(), label)
            }
            C::PacsCancel => {
                let p = &mut self.state.pacs;
                for c in [p.searching.take(), p.sending.take()].into_iter().flatten() {
                    c.cancel();
                }
                if let Some(r) = &p.retrieving {
                    r.cancel.cancel();
                }
            }
            C::PacsSendSr => self.pacs_send_sr(),
            C::PacsListen(on) => self.pacs_listen(*on),
            C::PacsSetListener(l) => self.state.settings.pacs_listener = l.clone(),
            _ => return false,
        }
        true
    }

    fn need_node(&mut self) -> Option<Node> {
        let n = self.pacs_node();
        match n.as_ref().map(Node::validate) {
            Some(Ok(_)) => n,
            Some(Err(e)) => {
                self.state.pacs.message = Some(StatusMessage::error(e.to_string()));
                None
            }
            None => {
                self.state.pacs.message = Some(StatusMessage::error("add an archive node first"));
                None
            }
        }
    }

    fn pacs_echo(&mut self) {
        let Some(node) = self.need_node() else { return };
        self.state.pacs.echo = None;
        self.jobs.spawn("pacs-echo", move |h| {
            let r = pacs::echo(&node)
                .map(|d| d.as_secs_f64() * 1e3)
                .map_err(|e| e.to_string());
            send(&h, PacsEvent::Echo(r));
        });
    }

    fn pacs_search(&mut self, q: Query) {
        let Some(node) = self.need_node() else { return };
        if let Err(e) = q.validate() {
            self.state.pacs.message = Some(StatusMessage::error(e.to_string()));
            return;
        }
        if let Some(c) = self.state.pacs.searching.take() {
            c.cancel();
        }
        let c = self.jobs.spawn("pacs-find", move |h| {
            let r = pacs::find(&node, &q, &h.cancel)
                .map(|rows| {
                    let what = format!(
                        "{} {} on {}",
                        rows.len(),
                        match q.level {
                            pacs::Level::Study => "studies",
                            pacs::Level::Series => "series",
                        },
                        node.name
                    );
                    (what, rows)
                })
                .map_err(|e| e.to_string());
            if !h.cancel.is_cancelled() {
                send(&h, PacsEvent::Found(r));
            }
        });
        self.state.pacs.searching = Some(c);
        self.state.pacs.message = None;
    }

    fn pacs_retrieve(&mut self, study_uid: String, series_uid: Option<String>, label: String) {
        let Some(node) = self.need_node() else { return };
        if self.state.pacs.retrieving.is_some() {
            self.state.pacs.message = Some(StatusMessage::error("a retrieve is already running"));
            return;
        }
        let req = RetrieveRequest {
            study_uid,
            series_uid,
        };
        if let Err(e) = req.validate() {
            self.state.pacs.message = Some(StatusMessage::error(e.to_string()));
            return;
        }
        let cache = self.study_cache();
        let dir = cache.join(pacs::filing::safe_name(&req.study_uid));
        let opts = RetrieveOptions::for_node(&node);
        let label2 = label.clone();
        let c = self.jobs.spawn("pacs-retrieve", move |h| {
            let hh = h.clone();
            let r = pacs::retrieve(&node, &req, &cache, &opts, &h.cancel, &move |p| {
                send(&hh, PacsEvent::Progress(p))
            })
            .map_err(|e| e.to_string());
            send(
                &h,
                PacsEvent::Retrieved {
                    label: label2,
                    dir,
                    result: r,
                },
            );
        });
        self.state.pacs.retrieving = Some(Retrieving {
            label,
            cancel: c,
            progress: Progress::default(),
        });
    }

    /// Write the active image's results as an SR into the study cache's outbox and send it.
    fn pacs_send_sr(&mut self) {
        let Some(node) = self.need_node() else { return };
        let Some(sop) = self.state.current_results().map(|r| r.sop_uid.clone()) else {
            self.state.pacs.message = Some(StatusMessage::error("no AI results for this image"));
            return;
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = self
            .study_cache()
            .join("outbox")
            .join(format!("sr-{}-{stamp}.dcm", pacs::filing::safe_name(&sop)));
        if let Err(e) = self.export_sr(&path) {
            self.state.pacs.message = Some(StatusMessage::error(format!("SR: {e}")));
            return;
        }
        let c = self.jobs.spawn("pacs-send", move |h| {
            let r = pacs::send(&node, &[path], &h.cancel, &|_| {}).map_err(|e| e.to_string());
            send(&h, PacsEvent::Sent(r));
        });
        self.state.pacs.sending = Some(c);
    }

    fn pacs_listen(&mut self, on: bool) {
        if let Some(run) = self.state.pacs.listener.take() {
            run.listener.stop(std::time::Duration::from_secs(0));
        }
        if !on {
            return;
        }
        let l = self.state.settings.pacs_listener.clone();
        if l.allow.is_empty() {
            self.state.pacs.message = Some(StatusMessage::error(
                "name the calling AE titles the listener accepts first",
            ));
            return;
        }
        let mut cfg = ScpConfig::new(&l.ae_title, l.port, &self.study_cache());
        cfg.bind = l.bind.clone();
        cfg.allow = l.allow.clone();
        let h = self.jobs.sender();
        let sink = Arc::new(move |e: ScpEvent| send(&h, PacsEvent::Scp(e)));
        match Listener::start(cfg, sink) {
            Ok(listener) => {
                self.state.pacs.message = Some(StatusMessage::info(format!(
                    "listening as {} on {}",
                    l.ae_title,
                    listener.local_addr()
                )));
                self.state.pacs.listener = Some(ListenerRun {
                    listener,
                    received: 0,
                    refused: 0,
                    last_problem: None,
                });
            }
            Err(e) => {
                self.state.pacs.message = Some(StatusMessage::error(format!("listener: {e}")))
            }
        }
    }

    /// Handle a PACS event and open what arrived.
    pub(crate) fn pacs_event(&mut self, e: PacsEvent) {
        let before = self.state.pacs.message.clone();
        let cmds = self.state.pacs.handle(e);
        if self.state.pacs.message != before {
            if let Some(m) = &self.state.pacs.message {
                self.state.message = Some(m.clone());
            }
        }
        self.commands.extend(cmds);
    }

    /// Show files the listener filed in the study browser (once per frame, without changing
    /// what the panes show).
    pub(crate) fn pacs_open_arrived(&mut self) {
        if self.state.pacs.arrived.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.state.pacs.arrived);
        self.open_paths(files, false);
    }
}
