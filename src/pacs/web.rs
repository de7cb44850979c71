//! DICOMweb client (ureq, rustls): QIDO-RS search, WADO-RS retrieve (one instance per request,
//! so progress and cancel work between instances), STOW-RS store. Basic or bearer auth.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::Value;

use super::node::{Node, NodeSpec};
use super::scu::record_value;
use super::{
    filing, Level, Limits, PacsError, Progress, Query, Record, RetrieveRequest, Retrieved,
    SendStatus,
};
use crate::util::Cancel;

/// A DICOMweb service root with its credentials.
pub struct WebClient {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

const DICOM_JSON: &str = "application/dicom+json";

impl WebClient {
    /// A client for a DICOMweb node.
    pub fn new(node: &Node) -> Result<Self, PacsError> {
        let NodeSpec::Web { base_url } = node.validate()? else {
            return Err(PacsError::Invalid(format!(
                "{} is a DIMSE node; this needs a DICOMweb base URL",
                node.address
            )));
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .tls_config(super::tls::http_tls(node.ca_file.as_deref())?)
            .build();
        Ok(Self {
            agent: config.new_agent(),
            base: base_url,
            auth: node.auth.header(),
        })
    }

    fn err(url: &str, reason: impl std::fmt::Display) -> PacsError {
        PacsError::Http {
            url: url.to_string(),
            reason: reason.to_string(),
        }
    }

    fn check(url: &str, resp: &mut ureq::http::Response<ureq::Body>) -> Result<(), PacsError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        let detail: String = body.chars().take(300).collect();
        Err(Self::err(
            url,
            format!(
                "HTTP {status}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
        ))
    }

    fn get(
        &self,
        url: &str,
        accept: &str,
        params: &[(&str, String)],
    ) -> Result<ureq::http::Response<ureq::Body>, PacsError> {
        let mut rq = self.agent.get(url).header("Accept", accept);
        if let Some(a) = &self.auth {
            rq = rq.header("Authorization", a);
        }
        for (k, v) in params {
            rq = rq.query(*k, v);
        }
        rq.call().map_err(|e| Self::err(url, e))
    }

    fn qido(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<Record>, PacsError> {
        let url = format!("{}/{path}", self.base);
        let mut resp = self.get(&url, DICOM_JSON, params)?;
        Self::check(&url, &mut resp)?;
        if resp.status() == 204 {
            return Ok(Vec::new());
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| Self::err(&url, e))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Self::err(&url, format!("not DICOM JSON: {e}")))?;
        let Value::Array(items) = v else {
            return Err(Self::err(&url, "QIDO-RS answer is not a JSON array"));
        };
        Ok(items.iter().map(record_of_json).collect())
    }

    /// Check that the service answers (a QIDO-RS search for one study).
    pub fn echo(&self) -> Result<Duration, PacsError> {
        let t0 = Instant::now();
        self.qido("studies", &[("limit", "1".into())])?;
        Ok(t0.elapsed())
    }

    /// QIDO-RS search at study or series level.
    pub fn find(&self, q: &Query, cancel: &Cancel) -> Result<Vec<Record>, PacsError> {
        q.validate()?;
        let mut params: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("PatientID", &q.patient_id),
            ("PatientName", &q.patient_name),
            ("StudyDate", &q.study_date),
            ("ModalitiesInStudy", &q.modality),
            ("AccessionNumber", &q.accession),
            ("StudyInstanceUID", &q.study_uid),
        ] {
            if !v.trim().is_empty() {
                params.push((k, v.trim().to_string()));
            }
        }
        for f in [
            "StudyDescription",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "PatientBirthDate",
            "PatientSex",
            "StudyTime",
        ] {
            params.push(("includefield", f.to_string()));
        }
        let studies = self.qido("studies", &params)?;
        if q.level == Level::Study {
            return Ok(studies);
        }
        let mut out = Vec::new();
        for st in &studies {
            if cancel.is_cancelled() {
                return Err(PacsError::Cancelled);
            }
            let uid = super::text(st, "StudyInstanceUID");
            if !filing::is_uid(&uid) {
                continue;
            }
            let mut sp: Vec<(&str, String)> = vec![
                ("includefield", "SeriesDescription".into()),
                ("includefield", "NumberOfSeriesRelatedInstances".into()),
                ("includefield", "BodyPartExamined".into()),
            ];
            if !q.modality.trim().is_empty() {
                sp.push(("Modality", q.modality.trim().to_string()));
            }
            for mut se in self.qido(&format!("studies/{uid}/series"), &sp)? {
                super::inherit_study(&mut se, st, &uid);
                out.push(se);
            }
        }
        Ok(out)
    }

    /// WADO-RS: list the instances (QIDO-RS), then fetch each one into `out_dir`.
    pub fn retrieve(
        &self,
        req: &RetrieveRequest,
        out_dir: &Path,
        limits: Limits,
        cancel: &Cancel,
        progress: &dyn Fn(Progress),
    ) -> Result<Retrieved, PacsError> {
        req.validate()?;
        let list_path = match &req.series_uid {
            Some(se) => format!("studies/{}/series/{se}/instances", req.study_uid),
            None => format!("studies/{}/instances", req.study_uid),
        };
        let instances = self.qido(&list_path, &[("includefield", "SeriesInstanceUID".into())])?;
        let total = instances.len();
        let mut got = Retrieved::default();
        let mut bytes_total: u64 = 0;
        progress(Progress {
            done: 0,
            total: Some(total),
        });
        for inst in &instances {
            if cancel.is_cancelled() {
                return Err(PacsError::Cancelled);
            }
            let sop = super::text(inst, "SOPInstanceUID");
            let series = req
                .series_uid
                .clone()
                .unwrap_or_else(|| super::text(inst, "SeriesInstanceUID"));
            if !filing::is_uid(&sop) || !filing::is_uid(&series) {
                got.failed
                    .push(format!("instance {sop:?} of series {series:?}: not a UID"));
                continue;
            }
            let url = format!(
                "{}/studies/{}/series/{series}/instances/{sop}",
                self.base, req.study_uid
            );
            match self.fetch_instance(&url, limits, &mut bytes_total) {
                Ok(parts) => {
                    for part in parts {
                        match filing::file_part10(out_dir, &part, Some(&sop)) {
                            Ok(r) => got.files.push(r.path),
                            Err(e) => got.failed.push(format!("{sop}: {e}")),
                        }
                    }
                }
                Err(e @ PacsError::Rejected(_)) => return Err(e),
                Err(e) => got.failed.push(format!("{sop}: {e}")),
            }
            progress(Progress {
                done: got.files.len() + got.failed.len(),
                total: Some(total),
            });
        }
        Ok(got)
    }

    fn fetch_instance(
        &self,
        url: &str,
        limits: Limits,
        bytes_total: &mut u64,
    ) -> Result<Vec<Vec<u8>>, PacsError> {
        let mut resp = self.get(
            url,
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            &[],
        )?;
        if matches!(resp.status().as_u16(), 400 | 406) {
            resp = self.get(url, "multipart/related; type=\"application/dicom\"", &[])?;
        }
        Self::check(url, &mut resp)?;
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limits.max_instance_bytes.saturating_add(1 << 20))
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => PacsError::Rejected(format!(
                    "{url}: larger than the instance limit of {} bytes",
                    limits.max_instance_bytes
                )),
                e => Self::err(url, e),
            })?;
        *bytes_total += body.len() as u64;
        if *bytes_total > limits.max_association_bytes {
            return Err(PacsError::Rejected(format!(
                "the retrieve exceeded the limit of {} bytes",
                limits.max_association_bytes
            )));
        }
        let boundary = boundary_of(&ctype)
            .ok_or_else(|| Self::err(url, format!("not multipart: {ctype:?}")))?;
        let parts = split_multipart(&body, &boundary);
        if parts.is_empty() {
            return Err(Self::err(url, "the multipart answer holds no part"));
        }
        Ok(parts)
    }

    /// STOW-RS, one request per file, one status per file.
    pub fn store(
        &self,
        files: &[PathBuf],
        cancel: &Cancel,
        progress: &dyn Fn(Progress),
    ) -> Result<Vec<SendStatus>, PacsError> {
        let url = format!("{}/studies", self.base);
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(PacsError::Cancelled);
            }
            out.push(self.store_one(&url, f));
            progress(Progress {
                done: i + 1,
                total: Some(files.len()),
            });
        }
        Ok(out)
    }

    fn store_one(&self, url: &str, f: &Path) -> SendStatus {
        let fail = |msg: String, status: Option<u16>, sop: Option<String>| SendStatus {
            file: f.to_path_buf(),
            sop_instance_uid: sop,
            result: "failure",
            status,
            message: Some(msg),
        };
        let bytes = match crate::dicom::object::read_limited(f) {
            Ok(b) => b,
            Err(e) => return fail(e.to_string(), None, None),
        };
        let sop = match crate::dicom::object::parse(&bytes) {
            Ok(o) => o
                .meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0')
                .to_string(),
            Err(e) => return fail(e.to_string(), None, None),
        };
        let boundary = format!("lofi-{}", &crate::util::sha256_hex(sop.as_bytes())[..24]);
        let mut body = Vec::with_capacity(bytes.len() + 256);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut rq = self.agent.post(url).header("Accept", DICOM_JSON).header(
            "Content-Type",
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        );
        if let Some(a) = &self.auth {
            rq = rq.header("Authorization", a);
        }
        let mut resp = match rq.send(&body[..]) {
            Ok(r) => r,
            Err(e) => return fail(Self::err(url, e).to_string(), None, Some(sop)),
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let failed_reason = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("00081198").and_then(|f| f.get("Value")).cloned())
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            .map(|v| v.to_string());
        match (status, failed_reason) {
            (200, None) => SendStatus {
                file: f.to_path_buf(),
                sop_instance_uid: Some(sop),
                result: "success",
                status: Some(status),
                message: None,
            },
            (202, _) | (200, Some(_)) => SendStatus {
                file: f.to_path_buf(),
                sop_instance_uid: Some(sop),
                result: "warning",
                status: Some(status),
                message: Some(text.chars().take(300).collect()),
            },
            _ => fail(
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
                Some(status),
                Some(sop),
            ),
        }
    }
}

/// A DICOM JSON object (PS3.18 F.2) as a record keyed by keyword.
pub fn record_of_json(v: &Value) -> Record {
    let mut r = Record::new();
    let Some(obj) = v.as_object() else { return r };
    for (hex, attr) in obj {
        let Ok(raw) = u32::from_str_radix(hex, 16) else {
            continue;
        };
        let tag = Tag((raw >> 16) as u16, (raw & 0xffff) as u16);
        let Some(entry) = StandardDataDictionary.by_tag(tag) else {
            continue;
        };
        let keyword = entry.alias();
        let vr = attr.get("vr").and_then(Value::as_str).unwrap_or("");
        if matches!(vr, "SQ" | "OB" | "OW" | "UN") {
            continue;
        }
        let Some(values) = attr.get("Value").and_then(Value::as_array) else {
            continue;
        };
        let parts: Vec<String> = values
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Object(o) => o
                    .get("Alphabetic")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            })
            .collect();
        let numeric = matches!(vr, "IS" | "US" | "UL" | "SS" | "SL");
        if let Some(val) = record_value(keyword, numeric, parts) {
            r.insert(keyword.to_string(), val);
        }
    }
    r
}

/// The boundary parameter of a multipart content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The bodies of a multipart message (headers dropped).
pub fn split_multipart(body: &[u8], boundary: &str) -> Vec<Vec<u8>> {
    // RFC 2046: the first delimiter may open the body; every later one is CRLF "--" boundary
    let delim = format!("--{boundary}");
    let inner = format!("\r\n--{boundary}");
    let finder = memchr::memmem::Finder::new(inner.as_bytes());
    let mut parts = Vec::new();
    let mut pos = if body.starts_with(delim.as_bytes()) {
        0
    } else {
        match finder.find(body) {
            Some(p) => p + 2,
            None => return parts,
        }
    };
    loop {
        let after = pos + delim.len();
        if after > body.len() || body[after..].starts_with(b"--") {
            break;
        }
        let Some(hend) = memchr::memmem::find(&body[after..], b"\r\n\r\n") else {
            break;
        };
        let start = after + hend + 4;
        let Some(next) = finder.find(&body[start..]) else {
            break;
        };
        parts.push(body[start..start + next].to_vec());
        pos = start + next + 2;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_split_on_their_boundary() {
        let ct = "multipart/related; type=\"application/dicom\"; boundary=\"abc\"";
        let b = boundary_of(ct).unwrap();
        assert_eq!(b, "abc");
        let body = b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc\r\nContent-Type: application/dicom\r\n\r\nTWO--abc-ish\r\n--abc--\r\n";
        let parts = split_multipart(body, &b);
        assert_eq!(parts, vec![b"ONE".to_vec(), b"TWO--abc-ish".to_vec()]);
        assert!(boundary_of("application/json").is_none());
    }

    #[test]
    fn dicom_json_becomes_keywords() {
        let v: Value = serde_json::json!({
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
            "00080061": {"vr": "CS", "Value": ["CR"]},
            "00201208": {"vr": "IS", "Value": [3]},
            "00081030": {"vr": "LO"}
        });
        let r = record_of_json(&v);
        assert_eq!(r["StudyInstanceUID"], "1.2.3");
        assert_eq!(r["PatientName"], "DOE^JANE");
        assert_eq!(r["ModalitiesInStudy"], serde_json::json!(["CR"]));
        assert_eq!(r["NumberOfStudyRelatedInstances"], 3);
        assert!(!r.contains_key("StudyDescription"));
    }
}
