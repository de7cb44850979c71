//! `pacs echo|find|get|send|listen`: the archive from the command line, JSON on stdout.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use super::Cli;
use crate::pacs::node::RetrieveMethod;
use crate::pacs::scp::{Listener, ScpConfig, ScpEvent};
use crate::pacs::{Auth, Level, Limits, Node, Query, RetrieveOptions, RetrieveRequest};
use crate::util::Cancel;

/// Options every PACS command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// `AET@HOST:PORT` (DIMSE) or an `http(s)://` DICOMweb base URL.
    #[arg(long)]
    pub node: String,
    /// DIMSE over TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA that signed the archive's certificate (TLS and HTTPS).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// DICOMweb basic-auth user; the password is read from $LOFI_PACS_PASSWORD.
    #[arg(long)]
    pub user: Option<String>,
    /// Name of an environment variable holding a DICOMweb bearer token.
    #[arg(long)]
    pub token_env: Option<String>,
}

/// PACS subcommands.
#[derive(Debug, Subcommand)]
pub enum PacsCommand {
    /// C-ECHO (or a one-study QIDO-RS search for DICOMweb).
    Echo {
        /// The archive.
        #[command(flatten)]
        node: NodeArgs,
    },
    /// C-FIND / QIDO-RS: a JSON array of objects keyed by DICOM keyword.
    Find {
        /// The archive.
        #[command(flatten)]
        node: NodeArgs,
        /// study or series.
        #[arg(long, default_value = "study")]
        level: Level,
        /// PatientID.
        #[arg(long)]
        patient_id: Option<String>,
        /// PatientName pattern (`*`, `?`).
        #[arg(long)]
        patient_name: Option<String>,
        /// StudyDate: YYYYMMDD, FROM-TO, FROM- or -TO.
        #[arg(long)]
        study_date: Option<String>,
        /// Modality.
        #[arg(long)]
        modality: Option<String>,
        /// AccessionNumber.
        #[arg(long)]
        accession: Option<String>,
        /// StudyInstanceUID.
        #[arg(long)]
        study: Option<String>,
    },
    /// C-GET / C-MOVE / WADO-RS a study (or one series) into a folder.
    Get {
        /// The archive.
        #[command(flatten)]
        node: NodeArgs,
        /// StudyInstanceUID.
        #[arg(long)]
        study: String,
        /// SeriesInstanceUID.
        #[arg(long)]
        series: Option<String>,
        /// get or move (DIMSE).
        #[arg(long, default_value = "get")]
        method: RetrieveMethod,
        /// Port of our storage SCP during a C-MOVE.
        #[arg(long, default_value_t = 11113)]
        port: u16,
        /// Address our storage SCP binds to during a C-MOVE.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Output folder (files go to OUT/<study>/<series>/<instance>.dcm).
        #[arg(long)]
        out: PathBuf,
        /// Largest instance accepted, in MiB.
        #[arg(long, default_value_t = 1024)]
        max_instance_mb: u64,
    },
    /// C-STORE / STOW-RS files (e.g. an exported AI Structured Report); one status per file.
    Send {
        /// The archive.
        #[command(flatten)]
        node: NodeArgs,
        /// DICOM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run our storage SCP until Ctrl+C (or --count instances); prints what arrived.
    Listen {
        /// TCP port.
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Calling AE titles accepted (comma-separated). Required unless --allow-any.
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// Accept any calling AE title.
        #[arg(long)]
        allow_any: bool,
        /// Largest instance accepted, in MiB.
        #[arg(long, default_value_t = 1024)]
        max_instance_mb: u64,
        /// Largest association total, in MiB.
        #[arg(long, default_value_t = 8192)]
        max_association_mb: u64,
        /// TLS certificate chain (PEM); with --tls-key, the SCP speaks DIMSE over TLS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Stop after this many instances were stored.
        #[arg(long)]
        count: Option<usize>,
    },
}

fn node_of(cli: &Cli, a: &NodeArgs) -> Result<Node> {
    let mut n = Node::from_address(&a.node, &cli.ae_title)?;
    n.tls = a.tls;
    n.ca_file = a.ca.clone();
    n.auth = match (&a.user, &a.token_env) {
        (Some(_), Some(_)) => bail!("give --user or --token-env, not both"),
        (Some(user), None) => Auth::Basic {
            user: user.clone(),
            password: std::env::var("LOFI_PACS_PASSWORD")
                .context("--user needs the password in $LOFI_PACS_PASSWORD")?,
        },
        (None, Some(var)) => Auth::Bearer {
            token: std::env::var(var).with_context(|| format!("reading the token from ${var}"))?,
        },
        (None, None) => Auth::None,
    };
    Ok(n)
}

fn bar(what: &str) -> (indicatif::ProgressBar, impl Fn(crate::pacs::Progress)) {
    let pb = super::commands::progress_bar(what);
    let pb2 = pb.clone();
    (pb, move |p: crate::pacs::Progress| {
        if let Some(t) = p.total {
            pb2.set_length(t as u64);
        }
        pb2.set_position(p.done as u64);
    })
}

/// What `pacs listen` saw: received, failed, refused.
type ListenLog = (Vec<Value>, Vec<Value>, Vec<Value>);

/// Run a PACS command.
pub fn run(cli: &Cli, cmd: &PacsCommand, cancel: &Cancel) -> Result<Value> {
    match cmd {
        PacsCommand::Echo { node } => {
            let n = node_of(cli, node)?;
            let t = crate::pacs::echo(&n).with_context(|| format!("echo {}", n.address))?;
            Ok(json!({"node": n.address, "status": "success", "ms": t.as_secs_f64() * 1e3}))
        }
        PacsCommand::Find {
            node,
            level,
            patient_id,
            patient_name,
            study_date,
            modality,
            accession,
            study,
        } => {
            let n = node_of(cli, node)?;
            let s = |o: &Option<String>| o.clone().unwrap_or_default();
            let q = Query {
                level: *level,
                patient_id: s(patient_id),
                patient_name: s(patient_name),
                study_date: s(study_date),
                modality: s(modality),
                accession: s(accession),
                study_uid: s(study),
            };
            let found = crate::pacs::find(&n, &q, cancel)
                .with_context(|| format!("find on {}", n.address))?;
            Ok(Value::Array(found.into_iter().map(Value::Object).collect()))
        }
        PacsCommand::Get {
            node,
            study,
            series,
            method,
            port,
            bind,
            out,
            max_instance_mb,
        } => {
            let n = node_of(cli, node)?;
            let req = RetrieveRequest {
                study_uid: study.clone(),
                series_uid: series.clone(),
            };
            let opts = RetrieveOptions {
                method: *method,
                bind: bind.clone(),
                port: *port,
                limits: Limits {
                    max_instance_bytes: max_instance_mb.saturating_mul(1 << 20),
                    ..Limits::default()
                },
            };
            let (pb, progress) = bar("retrieve");
            let got = crate::pacs::retrieve(&n, &req, out, &opts, cancel, &progress)
                .with_context(|| format!("retrieving {study} from {}", n.address));
            pb.finish_and_clear();
            let got = got?;
            Ok(json!({"files": got.files, "failed": got.failed}))
        }
        PacsCommand::Send { node, files } => {
            let n = node_of(cli, node)?;
            let (pb, progress) = bar("send");
            let st = crate::pacs::send(&n, files, cancel, &progress)
                .with_context(|| format!("sending to {}", n.address));
            pb.finish_and_clear();
            Ok(serde_json::to_value(st?)?)
        }
        PacsCommand::Listen {
            port,
            bind,
            out,
            allow,
            allow_any,
            max_instance_mb,
            max_association_mb,
            tls_cert,
            tls_key,
            count,
        } => {
            if allow.is_empty() && !allow_any {
                bail!("name the calling AE titles to accept with --allow AET,… (or --allow-any)");
            }
            for a in allow {
                crate::pacs::node::check_ae_title(a)?;
            }
            let mut cfg = ScpConfig::new(&cli.ae_title, *port, out);
            cfg.bind = bind.clone();
            cfg.allow = allow.clone();
            cfg.allow_any = *allow_any;
            cfg.limits = Limits {
                max_instance_bytes: max_instance_mb.saturating_mul(1 << 20),
                max_association_bytes: max_association_mb.saturating_mul(1 << 20),
            };
            if let (Some(c), Some(k)) = (tls_cert, tls_key) {
                cfg.tls = Some(crate::pacs::tls::server_config(c, k)?);
            }
            let log: Arc<Mutex<ListenLog>> = Arc::default();
            let log2 = log.clone();
            let listener = Listener::start(
                cfg,
                Arc::new(move |e| {
                    let Ok(mut l) = log2.lock() else { return };
                    match e {
                        ScpEvent::Stored { calling, received } => {
                            eprintln!("stored {} from {calling}", received.path.display());
                            l.0.push(json!({"calling": calling, "path": received.path, "sop_instance_uid": received.sop_instance_uid}));
                        }
                        ScpEvent::Failed { calling, reason } => {
                            eprintln!("failed ({calling}): {reason}");
                            l.1.push(json!({"calling": calling, "reason": reason}));
                        }
                        ScpEvent::Refused {
                            calling,
                            peer,
                            reason,
                        } => {
                            eprintln!("refused {calling} at {peer}: {reason}");
                            l.2.push(json!({"calling": calling, "peer": peer, "reason": reason}));
                        }
                        ScpEvent::Accepted { calling, peer } => {
                            eprintln!("association from {calling} at {peer}")
                        }
                        ScpEvent::Ended { calling, stored } => {
                            eprintln!("{calling}: {stored} stored, association ended")
                        }
                    }
                }),
            )?;
            eprintln!(
                "{} listening on {} (Ctrl+C to stop)",
                cli.ae_title,
                listener.local_addr()
            );
            while !cancel.is_cancelled() {
                if let Some(n) = count {
                    if log.lock().map(|l| l.0.len() >= *n).unwrap_or(false) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            listener.stop(Duration::from_secs(10));
            let l = log
                .lock()
                .map_err(|_| anyhow::anyhow!("listener log poisoned"))?;
            Ok(json!({"received": l.0, "failed": l.1, "refused": l.2}))
        }
    }
}
