//! Talking to the hospital archive (PACS): DIMSE over `dicom-ul` associations (C-ECHO, C-FIND,
//! C-MOVE, C-GET, C-STORE as user and as provider) and DICOMweb (QIDO-RS, WADO-RS, STOW-RS).
//!
//! Whatever arrives (C-STORE sub-operations of a move or a get, instances pushed to the listener,
//! WADO-RS parts) goes through [`filing::file_instance`]: the same structural preflight and parse
//! as a file the user opens, then a crash-safe write under folders named from sanitised UIDs.

pub mod dimse;
pub mod filing;
pub mod node;
pub mod scp;
pub mod scu;
pub mod tls;
pub mod web;

use std::path::PathBuf;

use serde_json::{Map, Value};

pub use filing::{Limits, Received};
pub use node::{Auth, Node, NodeSpec};

/// Our application entity title when none is configured.
pub const DEFAULT_AE_TITLE: &str = "LOFIVIEWER";

/// Errors talking to an archive.
#[derive(Debug, thiserror::Error)]
pub enum PacsError {
    /// A node address, query or option is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The peer could not be reached.
    #[error("cannot connect to {node}: {reason}")]
    Connect {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The peer refused the association.
    #[error("association refused by {node}: {reason}")]
    Refused {
        /// The node.
        node: String,
        /// The reason the peer gave.
        reason: String,
    },
    /// The peer accepted no presentation context for what we need.
    #[error("{node} accepts none of the proposed presentation contexts for {what}")]
    NoContext {
        /// The node.
        node: String,
        /// The service or SOP class.
        what: String,
    },
    /// The association or the connection failed mid-way.
    #[error("association with {node}: {reason}")]
    Association {
        /// The node.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// A DIMSE operation ended with a failure status.
    #[error("{operation} failed with status {status:#06x}{}", comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Status {
        /// C-FIND, C-MOVE, …
        operation: &'static str,
        /// The DIMSE status.
        status: u16,
        /// The peer's error comment.
        comment: Option<String>,
    },
    /// A DICOMweb request failed.
    #[error("DICOMweb {url}: {reason}")]
    Http {
        /// The request URL.
        url: String,
        /// Status or transport error.
        reason: String,
    },
    /// A received instance was refused (malformed, too large, inconsistent).
    #[error("received instance refused: {0}")]
    Rejected(String),
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl PacsError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        PacsError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Query/retrieve level of a C-FIND or QIDO-RS search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One answer per study.
    #[default]
    Study,
    /// One answer per series (of the studies that match).
    Series,
}

impl Level {
    /// The value of QueryRetrieveLevel.
    pub fn dicom(self) -> &'static str {
        match self {
            Level::Study => "STUDY",
            Level::Series => "SERIES",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = PacsError;
    fn from_str(s: &str) -> Result<Self, PacsError> {
        match s.to_ascii_lowercase().as_str() {
            "study" => Ok(Level::Study),
            "series" => Ok(Level::Series),
            _ => Err(PacsError::Invalid(format!(
                "level must be study or series, not {s:?}"
            ))),
        }
    }
}

/// What to search for. Empty fields match everything; names take `*` and `?` wildcards.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Query {
    /// Study or series level.
    pub level: Level,
    /// PatientID (exact, or with wildcards).
    pub patient_id: String,
    /// PatientName pattern, e.g. `DOE^J*`.
    pub patient_name: String,
    /// StudyDate: `YYYYMMDD`, `FROM-TO`, `FROM-` or `-TO`.
    pub study_date: String,
    /// Modality (ModalitiesInStudy at study level).
    pub modality: String,
    /// AccessionNumber.
    pub accession: String,
    /// StudyInstanceUID.
    pub study_uid: String,
}

impl Query {
    /// Check the fields a peer would otherwise reject with a vague status.
    pub fn validate(&self) -> Result<(), PacsError> {
        let d = self.study_date.trim();
        if !d.is_empty() {
            let ok_date =
                |s: &str| s.is_empty() || (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()));
            let parts: Vec<&str> = d.split('-').collect();
            let ok = match parts.as_slice() {
                [one] => !one.is_empty() && ok_date(one),
                [a, b] => (!a.is_empty() || !b.is_empty()) && ok_date(a) && ok_date(b),
                _ => false,
            };
            if !ok {
                return Err(PacsError::Invalid(format!(
                    "study date {d:?} must be YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
                )));
            }
        }
        if !self.study_uid.is_empty() && !filing::is_uid(&self.study_uid) {
            return Err(PacsError::Invalid(format!(
                "{:?} is not a DICOM UID",
                self.study_uid
            )));
        }
        for (what, v) in [
            ("patient ID", &self.patient_id),
            ("patient name", &self.patient_name),
            ("modality", &self.modality),
            ("accession number", &self.accession),
        ] {
            if v.contains('\\') || v.chars().any(|c| c.is_control()) {
                return Err(PacsError::Invalid(format!(
                    "the {what} {v:?} holds a backslash or a control character"
                )));
            }
        }
        Ok(())
    }
}

/// One answer of a search, keyed by DICOM keyword (`StudyInstanceUID`, `PatientID`,
/// `ModalitiesInStudy`, …): strings, numbers for counts, arrays for multi-valued attributes.
pub type Record = Map<String, Value>;

/// A record's attribute as display text (arrays joined with `/`).
pub fn text(record: &Record, keyword: &str) -> String {
    match record.get(keyword) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/"),
        _ => String::new(),
    }
}

/// Give a series-level record its study's patient and study attributes (a series search asks
/// each study for its series; the table shows them with their patient).
pub fn inherit_study(series: &mut Record, study: &Record, study_uid: &str) {
    for k in [
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
    ] {
        if let Some(v) = study.get(k) {
            series.entry(k.to_string()).or_insert_with(|| v.clone());
        }
    }
    series.insert(
        "StudyInstanceUID".into(),
        Value::String(study_uid.to_string()),
    );
}

/// Progress of a retrieve or a send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Instances done (stored or failed).
    pub done: usize,
    /// Instances expected, when the peer says.
    pub total: Option<usize>,
}

/// What a retrieve produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Retrieved {
    /// Files written, in arrival order.
    pub files: Vec<PathBuf>,
    /// One line per instance that failed (peer's sub-operation failures and our refusals).
    pub failed: Vec<String>,
}

/// Outcome of sending one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SendStatus {
    /// The file.
    pub file: PathBuf,
    /// SOP Instance UID, when the file could be read.
    pub sop_instance_uid: Option<String>,
    /// `success`, `warning` or `failure`.
    pub result: &'static str,
    /// DIMSE status (C-STORE) or HTTP status (STOW-RS).
    pub status: Option<u16>,
    /// Why it failed or warned.
    pub message: Option<String>,
}

/// Ask for instances of a study (and optionally one series).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveRequest {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID, to fetch one series only.
    pub series_uid: Option<String>,
}

impl RetrieveRequest {
    /// Validate the UIDs.
    pub fn validate(&self) -> Result<(), PacsError> {
        for u in std::iter::once(&self.study_uid).chain(self.series_uid.iter()) {
            if !filing::is_uid(u) {
                return Err(PacsError::Invalid(format!("{u:?} is not a DICOM UID")));
            }
        }
        Ok(())
    }
}

/// C-ECHO, or a QIDO-RS search for one study: how long the node took to answer.
pub fn echo(node: &Node) -> Result<std::time::Duration, PacsError> {
    match node.validate()? {
        NodeSpec::Dimse { .. } => scu::echo(node),
        NodeSpec::Web { .. } => web::WebClient::new(node)?.echo(),
    }
}

/// C-FIND or QIDO-RS.
pub fn find(
    node: &Node,
    q: &Query,
    cancel: &crate::util::Cancel,
) -> Result<Vec<Record>, PacsError> {
    match node.validate()? {
        NodeSpec::Dimse { .. } => scu::find(node, q, cancel),
        NodeSpec::Web { .. } => web::WebClient::new(node)?.find(q, cancel),
    }
}

/// How to retrieve.
#[derive(Debug, Clone)]
pub struct RetrieveOptions {
    /// C-GET or C-MOVE (DIMSE only).
    pub method: node::RetrieveMethod,
    /// Address our storage SCP binds to during a C-MOVE.
    pub bind: String,
    /// Its port.
    pub port: u16,
    /// Size limits.
    pub limits: Limits,
}

impl RetrieveOptions {
    /// The node's own method and move port, binding all interfaces.
    pub fn for_node(node: &Node) -> Self {
        Self {
            method: node.retrieve,
            bind: "0.0.0.0".into(),
            port: node.move_port,
            limits: Limits::default(),
        }
    }
}

/// C-GET, C-MOVE or WADO-RS into `out_dir`.
pub fn retrieve(
    node: &Node,
    req: &RetrieveRequest,
    out_dir: &std::path::Path,
    opts: &RetrieveOptions,
    cancel: &crate::util::Cancel,
    progress: &dyn Fn(Progress),
) -> Result<Retrieved, PacsError> {
    match node.validate()? {
        NodeSpec::Dimse { .. } => match opts.method {
            node::RetrieveMethod::Get => {
                scu::get(node, req, out_dir, opts.limits, cancel, progress)
            }
            node::RetrieveMethod::Move => scu::move_to_self(
                node,
                req,
                out_dir,
                &opts.bind,
                opts.port,
                opts.limits,
                cancel,
                progress,
            ),
        },
        NodeSpec::Web { .. } => {
            web::WebClient::new(node)?.retrieve(req, out_dir, opts.limits, cancel, progress)
        }
    }
}

/// C-STORE or STOW-RS.
pub fn send(
    node: &Node,
    files: &[PathBuf],
    cancel: &crate::util::Cancel,
    progress: &dyn Fn(Progress),
) -> Result<Vec<SendStatus>, PacsError> {
    match node.validate()? {
        NodeSpec::Dimse { .. } => scu::store(node, files, cancel, progress),
        NodeSpec::Web { .. } => web::WebClient::new(node)?.store(files, cancel, progress),
    }
}

/// The study cache: where retrieved and received studies are filed by default.
pub fn default_cache_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "lofi", "lofi-viewer")
        .map(|d| d.data_dir().join("studies"))
        .unwrap_or_else(|| PathBuf::from("studies"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_dates_are_checked() {
        for ok in [
            "20040826",
            "20040101-20041231",
            "20040101-",
            "-20041231",
            "",
        ] {
            let q = Query {
                study_date: ok.into(),
                ..Default::default()
            };
            assert!(q.validate().is_ok(), "{ok}");
        }
        for bad in ["2004-08-26", "-", "2004", "20040101-20041231-1", "abcdefgh"] {
            let q = Query {
                study_date: bad.into(),
                ..Default::default()
            };
            assert!(q.validate().is_err(), "{bad}");
        }
        let q = Query {
            patient_id: "a\\b".into(),
            ..Default::default()
        };
        assert!(q.validate().is_err());
    }

    #[test]
    fn records_show_arrays_and_numbers() {
        let mut r = Record::new();
        r.insert("ModalitiesInStudy".into(), serde_json::json!(["CR", "SR"]));
        r.insert("NumberOfStudyRelatedInstances".into(), serde_json::json!(3));
        assert_eq!(text(&r, "ModalitiesInStudy"), "CR/SR");
        assert_eq!(text(&r, "NumberOfStudyRelatedInstances"), "3");
        assert_eq!(text(&r, "Missing"), "");
    }
}
