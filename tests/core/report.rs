//! AI result exports: the DICOM Structured Report parses back with dicom-rs and dcmtk's dsrdump
//! reads it without errors.

use lofi_viewer::report::{AiBox, AiFinding, AiResults, Review, Source};

use super::common::fixtures;

pub fn results() -> AiResults {
    AiResults {
        model: "lofi-tiny@1".into(),
        width: 1024,
        height: 1024,
        sop_uid: "x".into(),
        findings: vec![
            AiFinding {
                shots_requested: 0,
                presence: None,
                present: true,
                phrase: "cardiomegaly".into(),
                boxes: vec![AiBox {
                    x1: 277.0,
                    y1: 459.0,
                    x2: 817.0,
                    y2: 760.0,
                    score: 0.81,
                    review: Review::Accepted,
                }],
                source: Source::Grounding,
                shots: 0,
            },
            AiFinding {
                shots_requested: 0,
                presence: None,
                present: true,
                phrase: "left pleural effusion".into(),
                boxes: vec![
                    AiBox {
                        x1: 600.0,
                        y1: 700.0,
                        x2: 800.0,
                        y2: 900.0,
                        score: 0.42,
                        review: Review::Rejected,
                    },
                    AiBox {
                        x1: 100.0,
                        y1: 700.0,
                        x2: 200.0,
                        y2: 800.0,
                        score: 0.3,
                        review: Review::Pending,
                    },
                ],
                source: Source::Grounding,
                shots: 3,
            },
        ],
        disclaimer: lofi_viewer::report::disclaimer(),
    }
}

#[test]
fn structured_report_roundtrips_and_dsrdump_reads_it() {
    use dicom_dictionary_std::tags;
    let img =
        lofi_viewer::dicom::load(&fixtures().join("dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm"))
            .unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sr.dcm");
    lofi_viewer::dicom::sr::write(&results(), &img.info, None, &p).unwrap();
    // parses back with dicom-rs
    let obj = dicom_object::open_file(&p).unwrap();
    assert_eq!(
        obj.element(tags::SOP_CLASS_UID).unwrap().to_str().unwrap(),
        lofi_viewer::dicom::sr::COMPREHENSIVE_SR
    );
    assert_eq!(
        obj.element(tags::STUDY_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        img.info.study_uid
    );
    let text = format!("{:?}", obj);
    assert!(text.contains("cardiomegaly") && text.contains("left pleural effusion"));
    assert!(
        text.contains(&img.info.sop_uid),
        "the SCOORD must reference the image"
    );
    assert!(
        text.contains("accepted by the radiologist")
            && text.contains("rejected by the radiologist")
    );
    // dcmtk reads it without errors
    let out = std::process::Command::new("dsrdump")
        .arg("-Ee")
        .arg(&p)
        .output()
        .expect("dsrdump (Debian dcmtk) is installed by scripts/setup-system.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsrdump failed: {stderr}");
    assert!(!stderr.contains("E:"), "dsrdump reported errors: {stderr}");
    assert!(
        stdout.contains("Imaging Measurement Report") && stdout.contains("cardiomegaly"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SCOORD") && stdout.contains("POLYLINE"),
        "{stdout}"
    );
    // a PNG has no UIDs to reference: a clear error, not a broken file
    let png = lofi_viewer::dicom::load(&fixtures().join("nih/images/00001555_002.png")).unwrap();
    assert!(
        lofi_viewer::dicom::sr::write(&results(), &png.info, None, &d.path().join("x.dcm"))
            .is_err()
    );
}

#[test]
fn json_export_has_the_contract_shape() {
    let v = results().to_json();
    assert_eq!(v["findings"][0]["boxes"][0]["x1"], 277.0);
    assert_eq!(v["findings"][1]["boxes"][0]["review"], "rejected");
    assert_eq!(v["disclaimer"], "AI-generated — not for diagnostic use");
}
