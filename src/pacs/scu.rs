//! DIMSE service user: C-ECHO, C-FIND (study and series level), C-GET and C-MOVE into the
//! study cache, and C-STORE of files (our Structured Reports) to the archive.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::InMemDicomObject;
use dicom_ul::association::client::ClientAssociationOptions;
use serde_json::Value;

use super::dimse::{
    self, ae, command, field, status_kind, uid, us, Incoming, Link, Session, StatusKind,
};
use super::node::{Node, NodeSpec};
use super::scp::{self, Listener, ScpConfig, ScpEvent};
use super::{
    Level, Limits, PacsError, Progress, Query, Record, RetrieveRequest, Retrieved, SendStatus,
};
use crate::util::Cancel;

/// How long a peer may stay silent before an operation gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A `dicom-ul` error with its causes, for people.
pub fn describe_ul_error(e: &dicom_ul::association::Error) -> String {
    use dicom_ul::association::Error as E;
    if let E::Rejected { association_rj, .. } = e {
        return format!("rejected: {}", association_rj.source);
    }
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Open an association proposing `contexts` (abstract syntax, transfer syntaxes), asking for
/// the SCP role for the SOP classes in `scp_roles` (C-GET).
pub fn connect(
    node: &Node,
    contexts: &[(&str, Vec<&str>)],
    scp_roles: &[&str],
    limits: Limits,
) -> Result<Box<dyn Session>, PacsError> {
    let NodeSpec::Dimse {
        ae_title,
        host,
        port,
    } = node.validate()?
    else {
        return Err(PacsError::Invalid(format!(
            "{} is a DICOMweb node; this needs a DIMSE node (AET@HOST:PORT)",
            node.address
        )));
    };
    let name = node.address.clone();
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(node.our_ae_title.clone())
        .called_ae_title(ae_title)
        .max_pdu_length(65_536)
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .write_timeout(READ_TIMEOUT);
    for (abs, tss) in contexts {
        opts = opts.with_presentation_context(
            abs.to_string(),
            tss.iter().map(|t| t.to_string()).collect(),
        );
    }
    for c in scp_roles {
        opts = opts.with_role_selection(c.to_string(), false, true);
    }
    let addr = (host.as_str(), port);
    let fail = |e: dicom_ul::association::Error| {
        use dicom_ul::association::Error as E;
        match &e {
            E::Rejected { association_rj, .. } => PacsError::Refused {
                node: name.clone(),
                reason: association_rj.source.to_string(),
            },
            E::Connect { .. } | E::ToAddress { .. } => PacsError::Connect {
                node: name.clone(),
                reason: describe_ul_error(&e),
            },
            E::NoAcceptedPresentationContexts { .. } => PacsError::NoContext {
                node: name.clone(),
                what: {
                    let mut classes: Vec<&str> = contexts.iter().map(|c| c.0).collect();
                    classes.dedup();
                    classes.join(", ")
                },
            },
            _ => PacsError::Association {
                node: name.clone(),
                reason: describe_ul_error(&e),
            },
        }
    };
    if node.tls {
        let cfg = super::tls::client_config(node.ca_file.as_deref())?;
        let a = opts
            .tls_config(cfg)
            .server_name(&host)
            .establish_tls(addr)
            .map_err(fail)?;
        Ok(Box::new(Link::new(a, name, limits)))
    } else {
        let a = opts.establish(addr).map_err(fail)?;
        Ok(Box::new(Link::<_, TcpStream>::new(a, name, limits)))
    }
}

fn plain_ts() -> Vec<&'static str> {
    dimse::NATIVE_TS.to_vec()
}

fn need_context(session: &dyn Session, abs: &str, what: &str) -> Result<(u8, String), PacsError> {
    session
        .context_for(abs, &|ts| ts == "1.2.840.10008.1.2.1")
        .ok_or_else(|| PacsError::NoContext {
            node: session.node().to_string(),
            what: what.to_string(),
        })
}

/// C-ECHO: whether the node answers, and how long the round trip took.
pub fn echo(node: &Node) -> Result<Duration, PacsError> {
    let t0 = Instant::now();
    let mut s = connect(
        node,
        &[(dimse::VERIFICATION, plain_ts())],
        &[],
        Limits::default(),
    )?;
    let (pc, _) = need_context(s.as_ref(), dimse::VERIFICATION, "verification")?;
    let rq = command(
        field::C_ECHO_RQ,
        tags::MESSAGE_ID,
        1,
        false,
        [uid(tags::AFFECTED_SOP_CLASS_UID, dimse::VERIFICATION)],
    );
    s.send(pc, &rq, None)?;
    let rsp = s.expect_message()?;
    let status = rsp.status();
    s.release()?;
    if status_kind(status) != StatusKind::Success {
        return Err(PacsError::Status {
            operation: "C-ECHO",
            status,
            comment: rsp.comment(),
        });
    }
    Ok(t0.elapsed())
}

fn str_el(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    if v.is_empty() {
        DataElement::new(tag, vr, PrimitiveValue::Empty)
    } else {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }
}

fn study_identifier(q: &Query) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, q.study_uid.trim()),
        str_el(tags::PATIENT_NAME, VR::PN, q.patient_name.trim()),
        str_el(tags::PATIENT_ID, VR::LO, q.patient_id.trim()),
        str_el(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
        str_el(tags::PATIENT_SEX, VR::CS, ""),
        str_el(tags::STUDY_DATE, VR::DA, q.study_date.trim()),
        str_el(tags::STUDY_TIME, VR::TM, ""),
        str_el(tags::ACCESSION_NUMBER, VR::SH, q.accession.trim()),
        str_el(tags::STUDY_ID, VR::SH, ""),
        str_el(tags::STUDY_DESCRIPTION, VR::LO, ""),
        str_el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        str_el(tags::MODALITIES_IN_STUDY, VR::CS, q.modality.trim()),
        str_el(tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS, ""),
        str_el(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, ""),
    ])
}

fn series_identifier(study_uid: &str, modality: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES"),
        str_el(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        str_el(tags::SERIES_INSTANCE_UID, VR::UI, ""),
        str_el(tags::MODALITY, VR::CS, modality.trim()),
        str_el(tags::SERIES_NUMBER, VR::IS, ""),
        str_el(tags::SERIES_DESCRIPTION, VR::LO, ""),
        str_el(tags::SERIES_DATE, VR::DA, ""),
        str_el(tags::BODY_PART_EXAMINED, VR::CS, ""),
        str_el(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS, ""),
    ])
}

/// Keywords whose value is always a list in a [`Record`].
pub const LIST_KEYWORDS: &[&str] = &["ModalitiesInStudy", "SOPClassesInStudy"];

/// A record value from the text of an attribute (`\`-separated values).
pub fn record_value(keyword: &str, numeric: bool, parts: Vec<String>) -> Option<Value> {
    let parts: Vec<String> = parts
        .into_iter()
        .map(|p| p.trim_matches(|c: char| c == '\0' || c == ' ').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return None;
    }
    if LIST_KEYWORDS.contains(&keyword) || parts.len() > 1 {
        return Some(Value::Array(parts.into_iter().map(Value::String).collect()));
    }
    let one = parts.into_iter().next()?;
    if numeric {
        if let Ok(n) = one.parse::<i64>() {
            return Some(Value::from(n));
        }
    }
    Some(Value::String(one))
}

/// A C-FIND answer as a record keyed by keyword.
pub fn record_of(obj: &InMemDicomObject) -> Record {
    let mut r = Record::new();
    for e in obj {
        let tag = e.header().tag;
        if tag == tags::QUERY_RETRIEVE_LEVEL
            || tag == tags::SPECIFIC_CHARACTER_SET
            || tag.group() == 0x0002
        {
            continue;
        }
        let Some(entry) = StandardDataDictionary.by_tag(tag) else {
            continue;
        };
        let keyword = entry.alias();
        let vr = e.header().vr;
        if matches!(vr, VR::SQ | VR::OB | VR::OW | VR::UN) {
            continue;
        }
        let Ok(text) = e.to_str() else { continue };
        let numeric = matches!(vr, VR::IS | VR::US | VR::UL | VR::SS | VR::SL);
        if let Some(v) = record_value(
            keyword,
            numeric,
            text.split('\\').map(str::to_string).collect(),
        ) {
            r.insert(keyword.to_string(), v);
        }
    }
    r
}

/// Send C-FIND-RQ and collect answers, honouring cancellation with C-CANCEL.
fn find_raw(
    s: &mut dyn Session,
    pc: u8,
    ts: &str,
    identifier: &InMemDicomObject,
    message_id: u16,
    cancel: &Cancel,
) -> Result<Vec<Record>, PacsError> {
    let data = dimse::encode_dataset(identifier, ts)?;
    let rq = command(
        field::C_FIND_RQ,
        tags::MESSAGE_ID,
        message_id,
        true,
        [
            uid(tags::AFFECTED_SOP_CLASS_UID, dimse::STUDY_ROOT_FIND),
            us(tags::PRIORITY, 0),
        ],
    );
    s.send(pc, &rq, Some(&data))?;
    let mut out = Vec::new();
    let mut cancelled = false;
    loop {
        let m = s.expect_message()?;
        if m.field() != field::C_FIND_RSP {
            continue;
        }
        let status = m.status();
        match status_kind(status) {
            StatusKind::Pending => {
                if let Some(d) = &m.data {
                    out.push(record_of(&dimse::decode_dataset(d, ts)?));
                }
                if cancel.is_cancelled() && !cancelled {
                    cancelled = true;
                    send_cancel(s, pc, message_id)?;
                }
            }
            StatusKind::Success | StatusKind::Warning => return Ok(out),
            StatusKind::Cancelled => return Err(PacsError::Cancelled),
            StatusKind::Failure => {
                return Err(PacsError::Status {
                    operation: "C-FIND",
                    status,
                    comment: m.comment(),
                })
            }
        }
    }
}

fn send_cancel(s: &mut dyn Session, pc: u8, message_id: u16) -> Result<(), PacsError> {
    let rq = command(
        field::C_CANCEL_RQ,
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        message_id,
        false,
        [],
    );
    s.send(pc, &rq, None)
}

/// C-FIND at study or series level. A series-level search without a study UID runs the study
/// search first and then asks each matching study for its series (the study root hierarchy).
pub fn find(node: &Node, q: &Query, cancel: &Cancel) -> Result<Vec<Record>, PacsError> {
    q.validate()?;
    let mut s = connect(
        node,
        &[(dimse::STUDY_ROOT_FIND, plain_ts())],
        &[],
        Limits::default(),
    )?;
    let (pc, ts) = need_context(s.as_ref(), dimse::STUDY_ROOT_FIND, "study root C-FIND")?;
    let result = (|| {
        let studies = find_raw(s.as_mut(), pc, &ts, &study_identifier(q), 1, cancel)?;
        if q.level == Level::Study {
            return Ok(studies);
        }
        let mut out = Vec::new();
        for (i, st) in studies.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(PacsError::Cancelled);
            }
            let study_uid = super::text(st, "StudyInstanceUID");
            if study_uid.is_empty() {
                continue;
            }
            let series = find_raw(
                s.as_mut(),
                pc,
                &ts,
                &series_identifier(&study_uid, &q.modality),
                (i + 2).min(u16::MAX as usize) as u16,
                cancel,
            )?;
            for mut se in series {
                super::inherit_study(&mut se, st, &study_uid);
                out.push(se);
            }
        }
        Ok(out)
    })();
    match result {
        Ok(r) => {
            s.release()?;
            Ok(r)
        }
        Err(e) => {
            s.abort();
            Err(e)
        }
    }
}

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
        let mut s = connect(
            node,
            &[(dimse::STUDY_ROOT_FIND, plain_ts())],
            &[],
            Limits::default(),
        )?;
        let (pc, ts) = need_context(s.as_ref(), dimse::STUDY_ROOT_FIND, "study root C-FIND")?;
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
            .filter(|c| super::filing::is_uid(c))
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
        let mut s = connect(node, &[(dimse::STUDY_ROOT_MOVE, plain_ts())], &[], limits)?;
        let (pc, ts) = need_context(s.as_ref(), dimse::STUDY_ROOT_MOVE, "study root C-MOVE")?;
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

/// C-STORE files to the archive (one association for all), one status per file.
pub fn store(
    node: &Node,
    files: &[PathBuf],
    cancel: &Cancel,
    progress: &dyn Fn(Progress),
) -> Result<Vec<SendStatus>, PacsError> {
    struct Item {
        file: PathBuf,
        class: String,
        instance: String,
        ts: String,
        bytes: Vec<u8>,
        start: usize,
    }
    let mut results: Vec<Option<SendStatus>> = Vec::new();
    let mut items = Vec::new();
    for f in files {
        let read = crate::dicom::object::read_limited(f)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let (layout, _) =
                    crate::dicom::preflight::check(&bytes).map_err(|e| e.to_string())?;
                let obj = crate::dicom::object::parse(&bytes).map_err(|e| e.to_string())?;
                let m = obj.meta();
                Ok((
                    m.media_storage_sop_class_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                    m.media_storage_sop_instance_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                    layout,
                    bytes,
                ))
            });
        match read {
            Ok((class, instance, layout, bytes)) if layout.has_meta => {
                results.push(None);
                items.push(Item {
                    file: f.clone(),
                    class,
                    instance,
                    ts: layout.transfer_syntax,
                    bytes,
                    start: layout.dataset_start,
                });
            }
            Ok(_) => results.push(Some(failed(
                f,
                None,
                "not a DICOM Part-10 file (no meta header)",
            ))),
            Err(e) => results.push(Some(failed(f, None, &e))),
        }
    }
    let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
    for it in &items {
        let mut tss = vec![it.ts.clone()];
        if dimse::NATIVE_TS.contains(&it.ts.as_str()) {
            for t in dimse::NATIVE_TS {
                if !tss.iter().any(|x| x == t) {
                    tss.push(t.to_string());
                }
            }
        }
        let key = (it.class.clone(), tss);
        if !contexts.contains(&key) {
            contexts.push(key);
        }
    }
    if contexts.len() > 127 {
        return Err(PacsError::Invalid(format!(
            "{} SOP class / transfer syntax pairs: more than one association allows; send fewer files at once",
            contexts.len()
        )));
    }
    let mut statuses = Vec::new();
    if !items.is_empty() {
        let ctx: Vec<(&str, Vec<&str>)> = contexts
            .iter()
            .map(|(c, t)| (c.as_str(), t.iter().map(String::as_str).collect()))
            .collect();
        let mut s = connect(node, &ctx, &[], Limits::default())?;
        for (i, it) in items.iter().enumerate() {
            if cancel.is_cancelled() {
                s.abort();
                return Err(PacsError::Cancelled);
            }
            let st = store_one(
                s.as_mut(),
                it.file.as_path(),
                &it.class,
                &it.instance,
                &it.ts,
                &it.bytes,
                it.start,
                i,
            );
            match st {
                Ok(st) => statuses.push(st),
                Err(e) => {
                    s.abort();
                    return Err(e);
                }
            }
            progress(Progress {
                done: i + 1,
                total: Some(items.len()),
            });
        }
        s.release()?;
    }
    let mut it = statuses.into_iter();
    Ok(results
        .into_iter()
        .filter_map(|r| r.or_else(|| it.next()))
        .collect())
}

fn failed(file: &Path, sop: Option<String>, why: &str) -> SendStatus {
    SendStatus {
        file: file.to_path_buf(),
        sop_instance_uid: sop,
        result: "failure",
        status: None,
        message: Some(why.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
fn store_one(
    s: &mut dyn Session,
    file: &Path,
    class: &str,
    instance: &str,
    ts: &str,
    bytes: &[u8],
    start: usize,
    index: usize,
) -> Result<SendStatus, PacsError> {
    let Some((pc, accepted)) = s.context_for(class, &|t| t == ts) else {
        return Ok(failed(
            file,
            Some(instance.into()),
            &format!("the archive accepts no presentation context for SOP class {class} in transfer syntax {ts}"),
        ));
    };
    let recoded;
    let data: &[u8] = if accepted == ts {
        &bytes[start..]
    } else {
        let obj =
            crate::dicom::object::parse(bytes).map_err(|e| PacsError::Invalid(e.to_string()))?;
        recoded = dimse::encode_dataset(&obj, &accepted)?;
        &recoded
    };
    let id = ((index % 65_000) + 1) as u16;
    let rq = command(
        field::C_STORE_RQ,
        tags::MESSAGE_ID,
        id,
        true,
        [
            uid(tags::AFFECTED_SOP_CLASS_UID, class),
            uid(tags::AFFECTED_SOP_INSTANCE_UID, instance),
            us(tags::PRIORITY, 0),
        ],
    );
    s.send(pc, &rq, Some(data))?;
    let rsp = loop {
        let m = s.expect_message()?;
        if m.field() == field::C_STORE_RSP {
            break m;
        }
    };
    let status = rsp.status();
    let kind = status_kind(status);
    Ok(SendStatus {
        file: file.to_path_buf(),
        sop_instance_uid: Some(instance.into()),
        result: match kind {
            StatusKind::Success => "success",
            StatusKind::Warning => "warning",
            _ => "failure",
        },
        status: Some(status),
        message: (kind != StatusKind::Success).then(|| {
            rsp.comment()
                .unwrap_or_else(|| dimse::status_text(status).to_string())
        }),
    })
}
