//! Filing received instances: the preflight and parse every opened file gets, then a crash-safe
//! write (temporary file, fsync, rename) to `OUT/<study>/<series>/<instance>.dcm`, where each
//! folder or file name is the UID only when it is a well-formed UID and a hash of it otherwise:
//! nothing a peer sends is ever used as a path as such.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;

use super::PacsError;

/// Size limits for what peers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest data set of one instance, in bytes.
    pub max_instance_bytes: u64,
    /// Largest total of one association (or one DICOMweb retrieve), in bytes.
    pub max_association_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_instance_bytes: 1 << 30,
            max_association_bytes: 8 << 30,
        }
    }
}

/// An instance that was filed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    /// Where it was written.
    pub path: PathBuf,
    /// StudyInstanceUID (as sent).
    pub study_uid: String,
    /// SeriesInstanceUID (as sent).
    pub series_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// SOPClassUID.
    pub sop_class_uid: String,
}

/// Whether `s` is a well-formed UID: digits in dot-separated components, no leading zero in a
/// multi-digit component, at most 64 characters.
pub fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c.len() == 1 || !c.starts_with('0'))
        })
}

/// A file-system name for a UID: the UID itself when well-formed, else `x` + a hash of it.
pub fn safe_name(uid: &str) -> String {
    if is_uid(uid) {
        uid.to_string()
    } else {
        format!("x{}", &crate::util::sha256_hex(uid.as_bytes())[..32])
    }
}

/// Implementation Class UID written into the meta group of the files we file.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.251830418238461963442913409219871533402";

/// File a data set received over DIMSE in transfer syntax `ts`, announced by the command as
/// (`sop_class`, `sop_instance`).
pub fn file_instance(
    out: &Path,
    ts: &str,
    sop_class: &str,
    sop_instance: &str,
    dataset: &[u8],
) -> Result<Received, PacsError> {
    if !is_uid(sop_instance) || !is_uid(sop_class) {
        return Err(PacsError::Rejected(format!(
            "the command's SOP class {sop_class:?} or instance {sop_instance:?} is not a UID"
        )));
    }
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("LOFI_VIEWER")
        .build()
        .map_err(|e| PacsError::Rejected(format!("file meta: {e}")))?;
    let mut bytes = Vec::with_capacity(dataset.len() + 512);
    bytes.extend_from_slice(&[0u8; 128]);
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes)
        .map_err(|e| PacsError::Rejected(format!("file meta: {e}")))?;
    bytes.extend_from_slice(dataset);
    file_part10(out, &bytes, Some(sop_instance))
}

/// File a whole Part-10 object (a WADO-RS part, or a data set wrapped by [`file_instance`]).
/// With `expected_instance`, the data set's SOPInstanceUID must equal it.
pub fn file_part10(
    out: &Path,
    bytes: &[u8],
    expected_instance: Option<&str>,
) -> Result<Received, PacsError> {
    let obj = crate::dicom::object::parse(bytes).map_err(|e| PacsError::Rejected(e.to_string()))?;
    let get = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let sop_instance_uid = get(tags::SOP_INSTANCE_UID);
    let sop_class_uid = get(tags::SOP_CLASS_UID);
    let study_uid = get(tags::STUDY_INSTANCE_UID);
    let series_uid = get(tags::SERIES_INSTANCE_UID);
    if !is_uid(&sop_instance_uid) {
        return Err(PacsError::Rejected(format!(
            "SOP Instance UID {sop_instance_uid:?} is missing or malformed"
        )));
    }
    if let Some(expected) = expected_instance {
        if expected != sop_instance_uid {
            return Err(PacsError::Rejected(format!(
                "the data set's SOP Instance UID {sop_instance_uid} differs from the command's {expected}"
            )));
        }
    }
    let dir = out
        .join(if study_uid.is_empty() {
            "no-study".into()
        } else {
            safe_name(&study_uid)
        })
        .join(if series_uid.is_empty() {
            "no-series".into()
        } else {
            safe_name(&series_uid)
        });
    let path = dir.join(format!("{}.dcm", safe_name(&sop_instance_uid)));
    crate::util::atomic_write(&path, bytes)
        .map_err(|e| PacsError::io(format!("writing {}", path.display()), e))?;
    Ok(Received {
        path,
        study_uid,
        series_uid,
        sop_instance_uid,
        sop_class_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_safe_names() {
        assert!(is_uid("1.2.840.10008.1.2"));
        assert!(is_uid("2.25.0"));
        for bad in [
            "",
            "1..2",
            "1.02",
            "../etc",
            "1.2/3",
            "1.2.",
            "a.b",
            &"1".repeat(65),
        ] {
            assert!(!is_uid(bad), "{bad}");
            let n = safe_name(bad);
            assert!(
                n.starts_with('x') && n.len() == 33 && n.bytes().all(|b| b.is_ascii_alphanumeric())
            );
        }
        assert_eq!(safe_name("1.2.3"), "1.2.3");
    }

    #[test]
    fn a_fixture_is_filed_by_uid_and_garbage_is_refused() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm");
        let bytes = std::fs::read(src).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = file_part10(dir.path(), &bytes, None).unwrap();
        assert!(r
            .path
            .starts_with(dir.path().join(&r.study_uid).join(&r.series_uid)));
        assert_eq!(std::fs::read(&r.path).unwrap(), bytes);
        // a data set of the wrong instance, and a truncated one, are refused and leave nothing
        let dir2 = tempfile::tempdir().unwrap();
        assert!(file_part10(dir2.path(), &bytes, Some("1.2.3")).is_err());
        assert!(file_part10(dir2.path(), &bytes[..bytes.len() / 2], None).is_err());
        assert_eq!(std::fs::read_dir(dir2.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_dimse_data_set_is_wrapped_in_a_file_that_opens() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm");
        let bytes = std::fs::read(&src).unwrap();
        let (layout, _) = crate::dicom::preflight::check(&bytes).unwrap();
        let obj = crate::dicom::object::parse(&bytes).unwrap();
        let inst = obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let class = obj
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let r = file_instance(
            dir.path(),
            &layout.transfer_syntax,
            &class,
            &inst,
            &bytes[layout.dataset_start..],
        )
        .unwrap();
        let loaded = crate::dicom::load(&r.path).unwrap();
        assert_eq!(
            loaded.info.rows,
            obj.element(tags::ROWS).unwrap().to_int::<u32>().unwrap()
        );
    }
}
