//! C-STORE of files to the archive: one association, one status per file.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;

use super::connect;
use crate::pacs::dimse::{self, command, field, status_kind, uid, us, Session, StatusKind};
use crate::pacs::node::Node;
use crate::pacs::{Limits, PacsError, Progress, SendStatus};
use crate::util::Cancel;

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
