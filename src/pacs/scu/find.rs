//! C-FIND: the identifiers of a study- and series-level search, and answers as records keyed
//! by DICOM keyword (the shape DICOMweb answers are given too).

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::VR;
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::InMemDicomObject;
use serde_json::Value;

use super::{open, send_cancel, str_el};
use crate::pacs::dimse::{self, command, field, status_kind, uid, us, Session, StatusKind};
use crate::pacs::node::Node;
use crate::pacs::{Level, Limits, PacsError, Query, Record};
use crate::util::Cancel;

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
pub(super) fn find_raw(
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

/// C-FIND at study or series level. A series-level search without a study UID runs the study
/// search first and then asks each matching study for its series (the study root hierarchy).
pub fn find(node: &Node, q: &Query, cancel: &Cancel) -> Result<Vec<Record>, PacsError> {
    q.validate()?;
    let (mut s, pc, ts) = open(
        node,
        dimse::STUDY_ROOT_FIND,
        "study root C-FIND",
        Limits::default(),
    )?;
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
            let study_uid = crate::pacs::text(st, "StudyInstanceUID");
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
                crate::pacs::inherit_study(&mut se, st, &study_uid);
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
