//! Our storage SCP: a listener the user starts and stops (and that a C-MOVE starts for its
//! duration). It binds to a configured address, accepts only the configured calling AE titles
//! (and only when called by our own AE title), limits each instance and each association, and
//! files what it receives crash-safe. A peer that aborts, sends a malformed data set or exceeds a
//! limit leaves no file and a log line; the listener stays up.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::ServerAssociationOptions;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

use super::dimse::{self, command, field, lo, uid, us, Incoming, Link, Message, Session};
use super::{filing, Limits, PacsError, Received};
use crate::util::Cancel;

/// What the listener reports.
#[derive(Debug, Clone)]
pub enum ScpEvent {
    /// An association was accepted.
    Accepted {
        /// Calling AE title.
        calling: String,
        /// Peer address.
        peer: String,
    },
    /// An instance was filed.
    Stored {
        /// Calling AE title.
        calling: String,
        /// What was filed.
        received: Received,
    },
    /// An instance or an association failed (nothing was written for it).
    Failed {
        /// Calling AE title (empty before the association).
        calling: String,
        /// Why.
        reason: String,
    },
    /// An association request was refused.
    Refused {
        /// Calling AE title.
        calling: String,
        /// Peer address.
        peer: String,
        /// The reason sent in the A-ASSOCIATE-RJ.
        reason: String,
    },
    /// An association ended.
    Ended {
        /// Calling AE title.
        calling: String,
        /// Instances filed on it.
        stored: usize,
    },
}

/// Callback for listener events (called on the listener's threads).
pub type EventSink = Arc<dyn Fn(ScpEvent) + Send + Sync>;

/// How the storage SCP runs.
#[derive(Clone)]
pub struct ScpConfig {
    /// Our AE title: associations that call another title are refused.
    pub ae_title: String,
    /// Address to bind, e.g. `0.0.0.0` or `127.0.0.1`.
    pub bind: String,
    /// TCP port (0: any free port).
    pub port: u16,
    /// Calling AE titles accepted.
    pub allow: Vec<String>,
    /// Accept any calling AE title (off by default).
    pub allow_any: bool,
    /// Where instances are filed.
    pub out: PathBuf,
    /// Size limits.
    pub limits: Limits,
    /// DIMSE over TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Associations served at once; more are closed at once.
    pub max_associations: usize,
    /// Idle time after which an association is dropped.
    pub timeout: Duration,
}

impl ScpConfig {
    /// Defaults: bind all interfaces on `port`, our AE title, nobody allowed yet.
    pub fn new(ae_title: &str, port: u16, out: &Path) -> Self {
        Self {
            ae_title: ae_title.to_string(),
            bind: "0.0.0.0".into(),
            port,
            allow: Vec::new(),
            allow_any: false,
            out: out.to_path_buf(),
            limits: Limits::default(),
            tls: None,
            max_associations: 8,
            timeout: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for ScpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScpConfig")
            .field("ae_title", &self.ae_title)
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("allow", &self.allow)
            .field("allow_any", &self.allow_any)
            .field("out", &self.out)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

struct Allow {
    allow: Vec<String>,
    any: bool,
    peer: String,
    sink: EventSink,
}

impl AccessControl for Allow {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        let refuse = |reason: AssociationRJServiceUserReason, why: String| {
            tracing::warn!(
                "refused association from {calling:?} at {}: {why}",
                self.peer
            );
            (self.sink)(ScpEvent::Refused {
                calling: calling.to_string(),
                peer: self.peer.clone(),
                reason: why,
            });
            Err(reason)
        };
        if called_ae_title.trim() != this_ae_title.trim() {
            return refuse(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                format!(
                    "called AE title {:?} is not ours ({this_ae_title:?})",
                    called_ae_title.trim()
                ),
            );
        }
        if !self.any && !self.allow.iter().any(|a| a.trim() == calling) {
            return refuse(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                format!("calling AE title {calling:?} is not in the allow-list"),
            );
        }
        Ok(())
    }
}

/// A running storage SCP.
pub struct Listener {
    stop: Cancel,
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Listener {
    /// Bind and start accepting.
    pub fn start(cfg: ScpConfig, sink: EventSink) -> Result<Self, PacsError> {
        super::node::check_ae_title(&cfg.ae_title)?;
        let sock = TcpListener::bind((cfg.bind.as_str(), cfg.port))
            .map_err(|e| PacsError::io(format!("listening on {}:{}", cfg.bind, cfg.port), e))?;
        sock.set_nonblocking(true)
            .map_err(|e| PacsError::io("listener socket", e))?;
        let addr = sock
            .local_addr()
            .map_err(|e| PacsError::io("listener socket", e))?;
        let stop = Cancel::new();
        let active = Arc::new(AtomicUsize::new(0));
        let (stop2, active2) = (stop.clone(), active.clone());
        tracing::info!("storage SCP {} listening on {addr}", cfg.ae_title);
        let thread = std::thread::Builder::new()
            .name("pacs-scp".into())
            .spawn(move || accept_loop(sock, cfg, sink, stop2, active2))
            .map_err(|e| PacsError::io("starting the listener thread", e))?;
        Ok(Self {
            stop,
            active,
            thread: Some(thread),
            addr,
        })
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Associations in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stop accepting, then wait up to `grace` for associations in progress to end.
    pub fn stop(mut self, grace: Duration) {
        self.shutdown(grace);
    }

    fn shutdown(&mut self, grace: Duration) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let t0 = Instant::now();
        while self.active.load(Ordering::SeqCst) > 0 && t0.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(0));
    }
}

fn accept_loop(
    sock: TcpListener,
    cfg: ScpConfig,
    sink: EventSink,
    stop: Cancel,
    active: Arc<AtomicUsize>,
) {
    let cfg = Arc::new(cfg);
    while !stop.is_cancelled() {
        match sock.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::SeqCst) >= cfg.max_associations {
                    tracing::warn!(
                        "closing the connection from {peer}: {} associations already open",
                        cfg.max_associations
                    );
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (cfg, sink, active) = (cfg.clone(), sink.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("pacs-assoc".into())
                        .spawn(move || {
                            serve_connection(stream, peer, &cfg, &sink);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if let Err(e) = spawned {
                    tracing::error!("cannot start an association thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, cfg: &ScpConfig, sink: &EventSink) {
    if let Err(e) = stream.set_nonblocking(false) {
        tracing::warn!("{peer}: {e}");
        return;
    }
    let allow = Allow {
        allow: cfg.allow.clone(),
        any: cfg.allow_any,
        peer: peer.to_string(),
        sink: sink.clone(),
    };
    let mut opts = ServerAssociationOptions::new()
        .ae_access_control(allow)
        .ae_title(cfg.ae_title.clone())
        .read_timeout(cfg.timeout)
        .write_timeout(cfg.timeout)
        .with_abstract_syntax(dimse::VERIFICATION);
    for c in dimse::STORAGE_CLASSES {
        opts = opts.with_abstract_syntax(*c);
    }
    for ts in dimse::DECODABLE_TS {
        opts = opts.with_transfer_syntax(*ts);
    }
    let session: Result<Box<dyn Session>, String> = match &cfg.tls {
        Some(tls) => opts
            .tls_config(tls.clone())
            .establish_tls(stream)
            .map(|a| session_of(a, cfg.limits))
            .map_err(|e| super::scu::describe_ul_error(&e)),
        None => opts
            .establish(stream)
            .map(|a| session_of(a, cfg.limits))
            .map_err(|e| super::scu::describe_ul_error(&e)),
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            // refusals were reported by the access control; this is anything else
            if !e.contains("rejected") {
                tracing::warn!("association from {peer} failed: {e}");
                sink(ScpEvent::Failed {
                    calling: String::new(),
                    reason: format!("{peer}: {e}"),
                });
            }
            return;
        }
    };
    let calling = session.node().to_string();
    tracing::info!("association from {calling} at {peer}");
    sink(ScpEvent::Accepted {
        calling: calling.clone(),
        peer: peer.to_string(),
    });
    let stored = serve(session, &cfg.out, &calling, sink);
    sink(ScpEvent::Ended { calling, stored });
}

/// An accepted association as a DIMSE session named after its calling AE title.
fn session_of<A, S>(a: A, limits: Limits) -> Box<dyn Session>
where
    A: dicom_ul::association::SyncAssociation<S> + Send + 'static,
    S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket + Send + 'static,
{
    let calling = a.peer_ae_title().trim().to_string();
    Box::new(Link::new(a, calling, limits))
}

/// Answer a C-ECHO, C-STORE or anything else on an accepted association until it ends.
fn serve(mut session: Box<dyn Session>, out: &Path, calling: &str, sink: &EventSink) -> usize {
    let mut stored = 0;
    loop {
        match session.receive() {
            Ok(Incoming::Message(msg)) => {
                let replied = match msg.field() {
                    field::C_ECHO_RQ => echo_reply(session.as_mut(), &msg),
                    field::C_STORE_RQ => match store_reply(session.as_mut(), &msg, out) {
                        Ok(Ok(r)) => {
                            stored += 1;
                            tracing::info!("stored {} from {calling}", r.path.display());
                            sink(ScpEvent::Stored {
                                calling: calling.to_string(),
                                received: r,
                            });
                            Ok(())
                        }
                        Ok(Err(e)) => {
                            tracing::warn!("instance from {calling} refused: {e}");
                            sink(ScpEvent::Failed {
                                calling: calling.to_string(),
                                reason: e.to_string(),
                            });
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    other => unsupported_reply(session.as_mut(), &msg, other),
                };
                if let Err(e) = replied {
                    tracing::warn!("association with {calling}: {e}");
                    sink(ScpEvent::Failed {
                        calling: calling.to_string(),
                        reason: e.to_string(),
                    });
                    session.abort();
                    return stored;
                }
            }
            Ok(Incoming::Released) => {
                tracing::info!("association with {calling} released ({stored} stored)");
                return stored;
            }
            Ok(Incoming::Aborted) => {
                tracing::warn!(
                    "association with {calling} aborted by the peer; any partial instance was discarded"
                );
                sink(ScpEvent::Failed {
                    calling: calling.to_string(),
                    reason: "the peer aborted the association; no partial instance was kept".into(),
                });
                return stored;
            }
            Err(e) => {
                tracing::warn!("association with {calling} dropped: {e}; nothing partial was kept");
                sink(ScpEvent::Failed {
                    calling: calling.to_string(),
                    reason: format!("{e}; nothing partial was kept"),
                });
                session.abort();
                return stored;
            }
        }
    }
}

fn echo_reply(session: &mut dyn Session, msg: &Message) -> Result<(), PacsError> {
    let rsp = command(
        field::C_ECHO_RSP,
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        msg.u16(tags::MESSAGE_ID).unwrap_or(0),
        false,
        [
            uid(tags::AFFECTED_SOP_CLASS_UID, dimse::VERIFICATION),
            us(tags::STATUS, 0),
        ],
    );
    session.send(msg.pc_id, &rsp, None)
}

fn unsupported_reply(
    session: &mut dyn Session,
    msg: &Message,
    field: u16,
) -> Result<(), PacsError> {
    if field & 0x8000 != 0 || field == field::C_CANCEL_RQ {
        return Ok(()); // a response or a cancel: nothing to answer
    }
    tracing::warn!("{}: unsupported DIMSE command {field:#06x}", session.node());
    let rsp = command(
        field | 0x8000,
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        msg.u16(tags::MESSAGE_ID).unwrap_or(0),
        false,
        [us(tags::STATUS, 0x0211)],
    );
    session.send(msg.pc_id, &rsp, None)
}

/// File a C-STORE-RQ's data set and answer it. The outer error is the association failing;
/// the inner one is this instance refused (answered with a failure status, association kept).
pub fn store_reply(
    session: &mut dyn Session,
    msg: &Message,
    out: &Path,
) -> Result<Result<Received, PacsError>, PacsError> {
    let class = msg.str(tags::AFFECTED_SOP_CLASS_UID);
    let instance = msg.str(tags::AFFECTED_SOP_INSTANCE_UID);
    let result = match (&msg.data, session.ts_of(msg.pc_id)) {
        (Some(data), Some(ts)) => filing::file_instance(out, &ts, &class, &instance, data),
        (None, _) => Err(PacsError::Rejected("C-STORE-RQ without a data set".into())),
        (_, None) => Err(PacsError::Rejected("unknown presentation context".into())),
    };
    let status: u16 = match &result {
        Ok(_) => 0x0000,
        Err(PacsError::Io { .. }) => 0xA700,
        Err(_) => 0xC000,
    };
    let mut rest = vec![
        uid(tags::AFFECTED_SOP_CLASS_UID, &class),
        uid(tags::AFFECTED_SOP_INSTANCE_UID, &instance),
        us(tags::STATUS, status),
    ];
    if let Err(e) = &result {
        let comment: String = e
            .to_string()
            .chars()
            .filter(|c| *c != '\\')
            .take(64)
            .collect();
        rest.push(lo(tags::ERROR_COMMENT, &comment));
    }
    let rsp = command(
        field::C_STORE_RSP,
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        msg.u16(tags::MESSAGE_ID).unwrap_or(0),
        false,
        rest,
    );
    session.send(msg.pc_id, &rsp, None)?;
    Ok(result)
}
