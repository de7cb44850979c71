//! C-GET and C-MOVE of a study or series into the study cache.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::Value;

use super::find::find_raw;
use super::{connect, need_context, open, plain_ts, send_cancel, str_el};
use crate::pacs::dimse::{self, ae, command, field, status_kind, uid, us, Incoming, StatusKind};
use crate::pacs::node::{Node, NodeSpec};
use crate::pacs::scp::{self, Listener, ScpConfig, ScpEvent};
use crate::pacs::{Limits, PacsError, Progress, RetrieveRequest, Retrieved};
use crate::util::Cancel;

fn retrieve_identifier(req: &RetrieveRequest) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter([
        str_el(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            if req.series_uid.is_some() {
                "SERIES"
            } else {
                "STUDY"
            },
        ),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, &req.study_uid),
    ]);
    if let Some(se) = &req.series_uid {
        obj.put(str_el(tags::SERIES_INSTANCE_UID, VR::UI, se));
    }
    obj
}

/// C-GET-RQ or C-MOVE-RQ (message 1, medium priority; a move names its destination).
fn retrieve_command(
    field: u16,
    sop_class: &str,
    move_destination: Option<&str>,
) -> InMemDicomObject {
    let mut rest = vec![
        uid(tags::AFFECTED_SOP_CLASS_UID, sop_class),
        us(tags::PRIORITY, 0),
    ];
    if let Some(dest) = move_destination {
        rest.push(ae(tags::MOVE_DESTINATION, dest));
    }
    command(field, tags::MESSAGE_ID, 1, true, rest)
}

fn sub_counts(m: &dimse::Message) -> (usize, usize, usize, usize) {
    let g = |t| m.u16(t).unwrap_or(0) as usize;
    (
        g(tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
        g(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS),
        g(tags::NUMBER_OF_FAILED_SUBOPERATIONS),
        g(tags::NUMBER_OF_WARNING_SUBOPERATIONS),
    )
}

/// Read a C-GET/C-MOVE response; returns whether it was the final one.
fn retrieve_response(
    m: &dimse::Message,
    operation: &'static str,
    out: &mut Retrieved,
    progress: &dyn Fn(Progress),
) -> Result<bool, PacsError> {
    let status = m.status();
    let (remaining, completed, failed, warning) = sub_counts(m);
    let done = completed + failed + warning;
    let total = (remaining + done > 0).then_some(remaining + done);
    match status_kind(status) {
        StatusKind::Pending => {
            progress(Progress { done, total });
            Ok(false)
        }
        StatusKind::Success | StatusKind::Warning => {
            if failed > 0 {
                out.failed.push(format!(
                    "{failed} sub-operation(s) failed at the archive ({})",
                    dimse::status_text(status)
                ));
            }
            Ok(true)
        }
        StatusKind::Cancelled => Err(PacsError::Cancelled),
        StatusKind::Failure if completed + warning > 0 || !out.files.is_empty() => {
            // some instances came: keep them and say what failed
            out.failed.push(format!(
                "{operation} ended with status {status:#06x} ({}){}",
                m.comment()
                    .unwrap_or_else(|| dimse::status_text(status).to_string()),
                if failed > 0 {
                    format!(", {failed} sub-operation(s) failed")
                } else {
                    String::new()
                }
            ));
            Ok(true)
        }
        StatusKind::Failure => Err(PacsError::Status {
            operation,
            status,
            comment: m
                .comment()
                .or_else(|| Some(dimse::status_text(status).to_string())),
        }),
    }
}

/// SOPClassesInStudy of a study, when the archive answers it (empty otherwise).
fn study_sop_classes(node: &Node, study_uid: &str) -> Vec<String> {
    let run = || -> Result<Vec<String>, PacsError> {
        let (mut s, pc, ts) = open(
            node,
            dimse::STUDY_ROOT_FIND,
            "study root C-FIND",
            Limits::default(),
        )?;
        let id = InMemDicomObject::from_element_iter([
            str_el(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            str_el(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
            str_el(tags::SOP_CLASSES_IN_STUDY, VR::UI, ""),
        ]);
        let r = find_raw(s.as_mut(), pc, &ts, &id, 1, &Cancel::new());
        let _ = s.release();
        Ok(r?
            .iter()
            .flat_map(|rec| match rec.get("SOPClassesInStudy") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            })
            .filter(|c| crate::pacs::filing::is_uid(c))
            .collect())
    };
    match run() {
        Ok(mut v) => {
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::info!(
                "SOPClassesInStudy not available ({e}); asking for the radiography classes"
            );
            Vec::new()
        }
    }
}

/// C-GET a study (or series) into `out`: the archive sends the instances back as C-STORE
/// sub-operations on the same association, each filed through the preflight.
pub fn get(
    node: &Node,
    req: &RetrieveRequest,
    out_dir: &Path,
    limits: Limits,
    cancel: &Cancel,
    progress: &dyn Fn(Progress),
) -> Result<Retrieved, PacsError> {
    req.validate()?;
    // the acceptor picks one transfer syntax per presentation context, and an archive sends an
    // instance only on a context whose syntax is the instance's own (or one it can transcode
    // to): so each storage class gets one context per decodable syntax, for the classes the
    // study holds (SOPClassesInStudy) or, when the archive does not say, the radiography ones
    let classes = study_sop_classes(node, &req.study_uid);
    let classes: Vec<&str> = if classes.is_empty() {
        dimse::GET_FALLBACK_CLASSES.to_vec()
    } else {
        classes
            .iter()
            .map(String::as_str)
            .take(dimse::GET_MAX_CLASSES)
            .collect()
    };
    let mut contexts: Vec<(&str, Vec<&str>)> = vec![(dimse::STUDY_ROOT_GET, plain_ts())];
    for c in &classes {
        contexts.push((c, plain_ts()));
        for ts in dimse::DECODABLE_TS {
            if !dimse::NATIVE_TS.contains(ts) {
                contexts.push((c, vec![ts]));
            }
        }
    }
    let mut s = connect(node, &contexts, &classes, limits)?;
    let (pc, ts) = need_context(s.as_ref(), dimse::STUDY_ROOT_GET, "study root C-GET")?;
    let data = dimse::encode_dataset(&retrieve_identifier(req), &ts)?;
    let rq = retrieve_command(field::C_GET_RQ, dimse::STUDY_ROOT_GET, None);
    let mut got = Retrieved::default();
    let mut cancelled = false;
    let result = (|| {
        s.send(pc, &rq, Some(&data))?;
        loop {
            let m = match s.receive()? {
                Incoming::Message(m) => m,
                Incoming::Released | Incoming::Aborted => {
                    return Err(PacsError::Association {
                        node: node.address.clone(),
                        reason: "the archive ended the association during the C-GET".into(),
                    })
                }
            };
            match m.field() {
                field::C_STORE_RQ => {
                    match scp::store_reply(s.as_mut(), &m, out_dir)? {
                        Ok(r) => got.files.push(r.path),
                        Err(e) => got
                            .failed
                            .push(format!("{}: {e}", m.str(tags::AFFECTED_SOP_INSTANCE_UID))),
                    }
                    progress(Progress {
                        done: got.files.len() + got.failed.len(),
                        total: None,
                    });
                }
                field::C_GET_RSP if retrieve_response(&m, "C-GET", &mut got, progress)? => {
                    return Ok(());
                }
                _ => {}
            }
            if cancel.is_cancelled() && !cancelled {
                cancelled = true;
                send_cancel(s.as_mut(), pc, 1)?;
            }
        }
    })();
    match result {
        Ok(()) => {
            s.release()?;
            Ok(got)
        }
        Err(e) => {
            s.abort();
            Err(e)
        }
    }
}

/// C-MOVE a study (or series) to our own storage SCP, started on `port` under our AE title
/// for the duration of the move and accepting only the archive's AE title.
#[allow(clippy::too_many_arguments)]
pub fn move_to_self(
    node: &Node,
    req: &RetrieveRequest,
    out_dir: &Path,
    bind: &str,
    port: u16,
    limits: Limits,
    cancel: &Cancel,
    progress: &dyn Fn(Progress),
) -> Result<Retrieved, PacsError> {
    req.validate()?;
    let NodeSpec::Dimse { ae_title, .. } = node.validate()? else {
        return Err(PacsError::Invalid("C-MOVE needs a DIMSE node".into()));
    };
    let mut cfg = ScpConfig::new(&node.our_ae_title, port, out_dir);
    cfg.bind = bind.to_string();
    cfg.allow = vec![ae_title];
    cfg.limits = limits;
    let (tx, rx) = mpsc::channel::<ScpEvent>();
    let tx = std::sync::Mutex::new(tx);
    let listener = Listener::start(
        cfg,
        Arc::new(move |e| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(e);
            }
        }),
    )?;
    let mut got = Retrieved::default();
    let collect = |got: &mut Retrieved| {
        while let Ok(e) = rx.try_recv() {
            match e {
                ScpEvent::Stored { received, .. } => got.files.push(received.path),
                ScpEvent::Failed { reason, .. } => got.failed.push(reason),
                ScpEvent::Refused {
                    calling, reason, ..
                } => got.failed.push(format!("refused {calling}: {reason}")),
                _ => {}
            }
        }
    };
    let outcome = (|| {
        let (mut s, pc, ts) = open(node, dimse::STUDY_ROOT_MOVE, "study root C-MOVE", limits)?;
        let data = dimse::encode_dataset(&retrieve_identifier(req), &ts)?;
        let rq = retrieve_command(
            field::C_MOVE_RQ,
            dimse::STUDY_ROOT_MOVE,
            Some(&node.our_ae_title),
        );
        let mut cancelled = false;
        let r = (|| {
            s.send(pc, &rq, Some(&data))?;
            loop {
                let m = s.expect_message()?;
                if m.field() == field::C_MOVE_RSP
                    && retrieve_response(&m, "C-MOVE", &mut got, progress)?
                {
                    return Ok(());
                }
                if cancel.is_cancelled() && !cancelled {
                    cancelled = true;
                    send_cancel(s.as_mut(), pc, 1)?;
                }
            }
        })();
        match r {
            Ok(()) => s.release(),
            Err(e) => {
                s.abort();
                Err(e)
            }
        }
    })();
    // the archive's storage association may still be closing: let it finish filing
    listener.stop(Duration::from_secs(10));
    collect(&mut got);
    outcome.map(|_| got)
}
