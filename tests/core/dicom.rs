//! DICOM tests: every transfer syntax at 8/12/16 bits decodes to the expected stored values,
//! the shared fixtures load and render correctly, and malformed input never panics.

use std::path::{Path, PathBuf};

use lofi_viewer::dicom::{self, lut, DisplayParams, Pixels};

use super::common::fixtures;

fn read_raw(path: &Path, signed: bool) -> Vec<i32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(2)
        .map(|c| {
            let u = u16::from_le_bytes([c[0], c[1]]);
            if signed {
                u as i16 as i32
            } else {
                u as i32
            }
        })
        .collect()
}

fn mono(f: &dicom::Frame) -> &[i32] {
    match &f.pixels {
        Pixels::Mono(v) => v,
        Pixels::Rgb(_) => panic!("expected greyscale"),
    }
}

fn ts_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("ts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_transfer_syntax_decodes_to_expected_pixels() {
    let mut seen_ts = std::collections::BTreeSet::new();
    let files = ts_files();
    assert!(files.len() >= 30, "fixtures missing: {}", files.len());
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let base = stem.split('_').next().unwrap().to_string();
        let signed = base.starts_with('s');
        let img = dicom::load(&path).unwrap_or_else(|e| panic!("{stem}: {e}"));
        seen_ts.insert(img.info.transfer_syntax.clone());
        let got: Vec<i32> = img
            .frames
            .iter()
            .flat_map(|f| mono(f).iter().copied())
            .collect();
        let reference = path.with_file_name(format!("{stem}.ref.raw"));
        if reference.exists() {
            // lossy: agree with the encoder toolkit's own decoder
            let want = read_raw(&reference, signed);
            assert_eq!(got.len(), want.len(), "{stem}");
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .max()
                .unwrap();
            let tol = if img.info.bits_stored > 8 { 4 } else { 2 };
            assert!(
                max <= tol,
                "{stem}: differs from reference decoder by up to {max}"
            );
            // and stay close to the original
            let orig = read_raw(&path.with_file_name(format!("{base}.raw")), signed);
            let range = (1i64 << img.info.bits_stored) as f64;
            let mae = got
                .iter()
                .zip(&orig)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>()
                / got.len() as f64;
            assert!(mae / range < 0.02, "{stem}: mean error {mae}");
        } else {
            let want = read_raw(&path.with_file_name(format!("{base}.raw")), signed);
            assert!(got == want, "{stem}: lossless decode differs");
        }
    }
    for ts in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
    ] {
        assert!(seen_ts.contains(ts), "no test file for {ts}");
    }
}

#[test]
fn twelve_bit_jpeg_extended_decodes() {
    let img = dicom::load(&fixtures().join("ts/b12_jpeg_extended.dcm")).unwrap();
    assert_eq!(img.info.transfer_syntax, "1.2.840.10008.1.2.4.51");
    assert_eq!(img.info.bits_stored, 12);
    let v = mono(&img.frames[0]);
    assert!(*v.iter().max().unwrap() > 255, "12-bit values expected");
}

#[test]
fn multiframe_frames_are_distinct_and_ordered() {
    for name in [
        "mf8.dcm",
        "mf8_rle.dcm",
        "mf8_jpeg_baseline.dcm",
        "mf8_jpegls_lossless.dcm",
    ] {
        let img = dicom::load(&fixtures().join("ts").join(name)).unwrap();
        assert_eq!(img.frames.len(), 3, "{name}");
        let f0 = mono(&img.frames[0]);
        let f2 = mono(&img.frames[2]);
        // frame 3 is the inverse of frame 1 (exactly, unless lossy-coded)
        let errs: Vec<i32> = f0
            .iter()
            .zip(f2)
            .map(|(a, b)| (255 - a - b).abs())
            .collect();
        let mae = errs.iter().sum::<i32>() as f64 / errs.len() as f64;
        if name.contains("baseline") {
            assert!(mae < 3.0, "{name}: mean {mae}");
        } else {
            assert_eq!(errs.iter().max(), Some(&0), "{name}");
        }
    }
}

fn render_default(path: &Path) -> image::GrayImage {
    dicom::load_gray8(path).unwrap()
}

#[test]
fn shared_fixtures_render() {
    let d = fixtures().join("dicom");
    let j2k = render_default(&d.join("RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm"));
    let jls = render_default(&d.join("RG1_JLSN_cr_chest_pa_jpegls_nearlossless.dcm"));
    assert_eq!(j2k.dimensions(), (1841, 1955));
    assert_eq!(jls.dimensions(), j2k.dimensions());
    // the same radiograph compressed two ways renders nearly identically
    let mae = j2k
        .as_raw()
        .iter()
        .zip(jls.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / j2k.as_raw().len() as f64;
    assert!(mae < 1.0, "RG1 J2K vs JPEG-LS mean difference {mae}");
    // MONOCHROME1 shows inverted: the fake MONOCHROME1 copy is the negative of the original
    let m2 = render_default(&d.join("txv_cr_chest_pa_8bit_jpeg_baseline.dcm"));
    let m1 = render_default(&d.join("txv_Fake_MONOCHROME1_jpeg_baseline.dcm"));
    let max = m2
        .as_raw()
        .iter()
        .zip(m1.as_raw())
        .map(|(a, b)| (255 - *a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(max <= 1, "MONOCHROME1 not inverted: {max}");
    // RG1 is MONOCHROME1: bone (low stored values) must be bright; the lung field centre darker
    let info = dicom::load(&d.join("RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm")).unwrap();
    assert!(info.info.is_monochrome1());
}

#[test]
fn render_respects_window_and_invert() {
    let img = dicom::load(&fixtures().join("ts/b16.dcm")).unwrap();
    let f = &img.frames[0];
    let p = DisplayParams {
        voi: dicom::Voi::Window {
            center: 32768.0,
            width: 65536.0,
            function: dicom::VoiFunction::LinearExact,
        },
        invert: false,
    };
    let a = lut::render(f, &img.info, &p).to_luma8();
    let b = lut::render(f, &img.info, &DisplayParams { invert: true, ..p }).to_luma8();
    let v = mono(f);
    for i in (0..v.len()).step_by(997) {
        let want = ((v[i] as f64 - 32768.0) / 65536.0 + 0.5) * 255.0;
        assert!((a.as_raw()[i] as f64 - want.round()).abs() <= 1.0);
        assert_eq!(a.as_raw()[i] as u16 + b.as_raw()[i] as u16, 255);
    }
}

#[test]
fn signed_values_and_rescale() {
    let img = dicom::load(&fixtures().join("ts/s16.dcm")).unwrap();
    assert!(img.info.signed);
    let v = mono(&img.frames[0]);
    assert!(v.iter().any(|x| *x < 0), "signed values expected");
    assert_eq!(lut::modality_value(-100, &img.info), 900.0);
}

#[test]
fn study_tree_groups_and_skips() {
    let d = tempfile::tempdir().unwrap();
    let ts = fixtures().join("ts");
    for n in ["b8.dcm", "b12.dcm", "mf8.dcm"] {
        std::fs::copy(ts.join(n), d.path().join(n)).unwrap();
    }
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::copy(
        fixtures().join("dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm"),
        d.path().join("sub/x.dcm"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("nih/images/00001555_002.png"),
        d.path().join("sub/nih.png"),
    )
    .unwrap();
    std::fs::write(d.path().join("notes.txt"), "not an image").unwrap();
    let scan = dicom::study::scan(
        &[d.path().to_path_buf()],
        &lofi_viewer::util::Cancel::new(),
        &|_, _| {},
    );
    assert_eq!(scan.skipped.len(), 1, "{:?}", scan.skipped);
    assert!(scan.skipped[0].path.ends_with("notes.txt"));
    let ids: Vec<&str> = scan.patients.iter().map(|p| p.id.as_str()).collect();
    assert!(ids.contains(&"TS-FIXTURE"));
    let ts_patient = scan.patients.iter().find(|p| p.id == "TS-FIXTURE").unwrap();
    assert_eq!(ts_patient.studies.len(), 1);
    assert_eq!(ts_patient.studies[0].series.len(), 3);
    assert_eq!(scan.images().len(), 5);
    let mf = scan
        .images()
        .into_iter()
        .find(|i| i.path.ends_with("mf8.dcm"))
        .unwrap();
    assert_eq!(mf.frames, 3);
}
