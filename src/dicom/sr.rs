//! Export of AI findings as a DICOM Structured Report in the style of TID 1500 (Measurement
//! Report): each finding is a measurement group holding its text, its box as a closed SCOORD
//! polyline SELECTED FROM the image (by SOP Instance UID), and the radiologist's review state.
//! The document is a Comprehensive SR in the image's study, marked as produced by a device.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::RngCore;

use super::object::ImageInfo;
use super::DicomError;
use crate::report::AiResults;

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// A fresh UID under the 2.25 root (UUID-derived).
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!("2.25.{}", u128::from_be_bytes(b))
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn concept(value: &str, scheme: &str, meaning: &str) -> DataElement<InMemDicomObject> {
    seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code(value, scheme, meaning)],
    )
}

fn item(
    rel: &str,
    vt: &str,
    name: (&str, &str, &str),
    mut rest: Vec<DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    let mut v = vec![
        el(tags::RELATIONSHIP_TYPE, VR::CS, rel),
        el(tags::VALUE_TYPE, VR::CS, vt),
        concept(name.0, name.1, name.2),
    ];
    v.append(&mut rest);
    InMemDicomObject::from_element_iter(v)
}

fn text(rel: &str, name: (&str, &str, &str), t: &str) -> InMemDicomObject {
    item(rel, "TEXT", name, vec![el(tags::TEXT_VALUE, VR::UT, t)])
}

fn container(
    rel: &str,
    name: (&str, &str, &str),
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    item(
        rel,
        "CONTAINER",
        name,
        vec![
            el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
            seq(tags::CONTENT_SEQUENCE, children),
        ],
    )
}

fn image_ref(info: &ImageInfo, frame: Option<u32>) -> InMemDicomObject {
    let mut v = vec![
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            info.sop_class_uid.as_str(),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            info.sop_uid.as_str(),
        ),
    ];
    if let Some(f) = frame {
        v.push(el(
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            (f + 1).to_string(),
        ));
    }
    InMemDicomObject::from_element_iter(v)
}

/// Build the SR for `results` on the image `info` (frame for multi-frame images).
pub fn build(
    results: &AiResults,
    info: &ImageInfo,
    frame: Option<u32>,
) -> Result<dicom_object::DefaultDicomObject, DicomError> {
    if info.sop_uid.is_empty() || info.study_uid.is_empty() || info.sop_class_uid.is_empty() {
        return Err(DicomError::Unsupported(
            "a Structured Report needs a DICOM image to reference (this image has no UIDs)".into(),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (date, time) = date_time(now);
    let sr_uid = new_uid();
    let series_uid = new_uid();
    let device = format!(
        "lofi-viewer {} ({})",
        env!("CARGO_PKG_VERSION"),
        results.model
    );
    let mut groups = Vec::new();
    let mut n = 0;
    for f in &results.findings {
        for b in &f.boxes {
            n += 1;
            let graphic: Vec<f32> =
                vec![b.x1, b.y1, b.x2, b.y1, b.x2, b.y2, b.x1, b.y2, b.x1, b.y1];
            let scoord = item(
                "CONTAINS",
                "SCOORD",
                ("111030", "DCM", "Image Region"),
                vec![
                    el(tags::GRAPHIC_TYPE, VR::CS, "POLYLINE"),
                    DataElement::new(
                        tags::GRAPHIC_DATA,
                        VR::FL,
                        PrimitiveValue::F32(graphic.into()),
                    ),
                    seq(
                        tags::CONTENT_SEQUENCE,
                        vec![item(
                            "SELECTED FROM",
                            "IMAGE",
                            ("260753009", "SCT", "Source"),
                            vec![seq(
                                tags::REFERENCED_SOP_SEQUENCE,
                                vec![image_ref(info, frame)],
                            )],
                        )],
                    ),
                ],
            );
            groups.push(container(
                "CONTAINS",
                ("125007", "DCM", "Measurement Group"),
                vec![
                    text(
                        "HAS OBS CONTEXT",
                        ("112039", "DCM", "Tracking Identifier"),
                        &format!("AI finding {n}"),
                    ),
                    item(
                        "HAS OBS CONTEXT",
                        "UIDREF",
                        ("112040", "DCM", "Tracking Unique Identifier"),
                        vec![el(tags::UID, VR::UI, new_uid().as_str())],
                    ),
                    text("CONTAINS", ("121071", "DCM", "Finding"), &f.phrase),
                    scoord,
                    text(
                        "CONTAINS",
                        ("121106", "DCM", "Comment"),
                        &format!("AI confidence {:.2}; {}", b.score, b.review.describe()),
                    ),
                ],
            ));
        }
    }
    let content = vec![
        item(
            "HAS CONCEPT MOD",
            "CODE",
            ("121049", "DCM", "Language of Content Item and Descendants"),
            vec![seq(
                tags::CONCEPT_CODE_SEQUENCE,
                vec![code("en-US", "RFC5646", "English (United States)")],
            )],
        ),
        item(
            "HAS OBS CONTEXT",
            "CODE",
            ("121005", "DCM", "Observer Type"),
            vec![seq(
                tags::CONCEPT_CODE_SEQUENCE,
                vec![code("121007", "DCM", "Device")],
            )],
        ),
        item(
            "HAS OBS CONTEXT",
            "UIDREF",
            ("121012", "DCM", "Device Observer UID"),
            vec![el(tags::UID, VR::UI, new_uid().as_str())],
        ),
        text(
            "HAS OBS CONTEXT",
            ("121013", "DCM", "Device Observer Name"),
            &device,
        ),
        item(
            "HAS CONCEPT MOD",
            "CODE",
            ("121058", "DCM", "Procedure reported"),
            vec![seq(
                tags::CONCEPT_CODE_SEQUENCE,
                vec![code("363680008", "SCT", "Radiographic imaging procedure")],
            )],
        ),
        container(
            "CONTAINS",
            ("111028", "DCM", "Image Library"),
            vec![container(
                "CONTAINS",
                ("126200", "DCM", "Image Library Group"),
                vec![item(
                    "CONTAINS",
                    "IMAGE",
                    ("260753009", "SCT", "Source"),
                    vec![seq(
                        tags::REFERENCED_SOP_SEQUENCE,
                        vec![image_ref(info, frame)],
                    )],
                )],
            )],
        ),
        container(
            "CONTAINS",
            ("126010", "DCM", "Imaging Measurements"),
            groups,
        ),
        text(
            "CONTAINS",
            ("121106", "DCM", "Comment"),
            &crate::report::disclaimer(),
        ),
    ];
    let evidence = InMemDicomObject::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, info.study_uid.as_str()),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, info.series_uid.as_str()),
                seq(tags::REFERENCED_SOP_SEQUENCE, vec![image_ref(info, None)]),
            ])],
        ),
    ]);
    let ds = InMemDicomObject::from_element_iter([
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR),
        el(tags::SOP_INSTANCE_UID, VR::UI, sr_uid.as_str()),
        el(tags::STUDY_DATE, VR::DA, info.study_date.as_str()),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::STUDY_TIME, VR::TM, ""),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
        el(tags::ACCESSION_NUMBER, VR::SH, ""),
        el(tags::MODALITY, VR::CS, "SR"),
        el(tags::MANUFACTURER, VR::LO, "lofi-viewer"),
        el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "AI findings (not for diagnostic use)",
        ),
        el(
            tags::PATIENT_NAME,
            VR::PN,
            info.patient_name.replace(' ', "^").as_str(),
        ),
        el(tags::PATIENT_ID, VR::LO, info.patient_id.as_str()),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
        el(tags::PATIENT_SEX, VR::CS, ""),
        el(tags::STUDY_INSTANCE_UID, VR::UI, info.study_uid.as_str()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        el(tags::STUDY_ID, VR::SH, ""),
        el(tags::SERIES_NUMBER, VR::IS, "900"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        concept("126000", "DCM", "Imaging Measurement Report"),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                el(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
            ])],
        ),
        el(tags::COMPLETION_FLAG, VR::CS, "PARTIAL"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        ),
        seq(tags::CONTENT_SEQUENCE, content),
    ]);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid(COMPREHENSIVE_SR)
        .media_storage_sop_instance_uid(sr_uid.as_str());
    ds.with_meta(meta)
        .map_err(|e| DicomError::Parse(e.to_string()))
}

/// Write the SR to `path` atomically.
pub fn write(
    results: &AiResults,
    info: &ImageInfo,
    frame: Option<u32>,
    path: &std::path::Path,
) -> Result<(), DicomError> {
    let obj = build(results, info, frame)?;
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes)
        .map_err(|e| DicomError::Parse(e.to_string()))?;
    crate::util::atomic_write(path, &bytes).map_err(|e| DicomError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })
}

fn date_time(secs: u64) -> (String, String) {
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm), UTC
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(date_time(0), ("19700101".into(), "000000".into()));
        assert_eq!(date_time(951_782_400), ("20000229".into(), "000000".into()));
        assert_eq!(date_time(1_795_831_200).0, "20261128");
    }
}
