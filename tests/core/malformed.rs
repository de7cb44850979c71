//! Bad input never panics: truncated, bit-flipped, mislabelled, oversized and lying files give an
//! error (or a correct image), and the CLI answers with a one-line message and a non-zero exit.

use std::path::PathBuf;

use lofi_viewer::dicom;

use super::common::fixtures;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let ts = fixtures().join("ts");
    [
        "b8.dcm",
        "b16_implicit.dcm",
        "b12_bigendian.dcm",
        "b8_deflated.dcm",
        "b8_rle.dcm",
        "b8_jpeg_baseline.dcm",
        "b12_jpeg_extended.dcm",
        "b12_jpeg_lossless_sv1.dcm",
        "b12_jpegls_lossless.dcm",
        "b12_j2k_lossless.dcm",
        "mf8_jpeg_baseline.dcm",
    ]
    .iter()
    .map(|n| (n.to_string(), std::fs::read(ts.join(n)).unwrap()))
    .collect()
}

fn exercise(bytes: &[u8]) {
    if let Ok(img) = dicom::load_dicom_bytes(bytes) {
        for f in &img.frames {
            let p = dicom::DisplayParams {
                voi: dicom::lut::default_voi(&img.info, f),
                invert: false,
            };
            let _ = dicom::lut::render(f, &img.info, &p);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn truncations_never_panic() {
    for (name, b) in seeds() {
        let step = (b.len() / 97).max(1);
        for cut in (0..b.len()).step_by(step) {
            let r = std::panic::catch_unwind(|| exercise(&b[..cut]));
            assert!(r.is_ok(), "{name} truncated at {cut} panicked");
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (name, b) in seeds() {
        for trial in 0..150 {
            let mut m = b.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..m.len());
                m[i] ^= 1 << rng.random_range(0..8);
            }
            let r = std::panic::catch_unwind(|| exercise(&m));
            assert!(r.is_ok(), "{name} flip trial {trial} panicked");
        }
    }
}

#[test]
fn lying_lengths_are_rejected_before_allocation() {
    for (name, b) in seeds() {
        // every explicit-VR OB/OW/UN/SQ/UT length field (4 bytes after "OW\0\0" etc.) set huge
        for vr in [&b"OW\0\0"[..], b"OB\0\0", b"UN\0\0", b"UT\0\0"] {
            for pos in find(&b, vr).into_iter().take(5) {
                let mut m = b.clone();
                if pos + 8 <= m.len() {
                    m[pos + 4..pos + 8].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
                    let r = std::panic::catch_unwind(|| dicom::load_dicom_bytes(&m).map(|_| ()));
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {}
                        Err(_) => panic!("{name}: panic on a lying length at {pos}"),
                    }
                    if let Ok(Ok(())) =
                        std::panic::catch_unwind(|| dicom::preflight::check(&m).map(|_| ()))
                    {
                        // accepted only if that field was not a real length (inside a value)
                    }
                }
            }
        }
    }
    // a lying pixel-data length is refused by the structural check itself
    let b = std::fs::read(fixtures().join("ts/b8.dcm")).unwrap();
    let pos = *find(&b, &[0xE0, 0x7F, 0x10, 0x00]).last().unwrap();
    let mut m = b.clone();
    m[pos + 8..pos + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    let e = dicom::preflight::check(&m).unwrap_err();
    assert!(e.0.contains("declares"), "{e}");
    assert!(matches!(
        dicom::load_dicom_bytes(&m),
        Err(dicom::DicomError::Parse(_))
    ));
}

#[test]
fn mislabelled_and_unknown_transfer_syntaxes_give_errors() {
    let b = std::fs::read(fixtures().join("ts/b12_jpeg_extended.dcm")).unwrap();
    let uid = b"1.2.840.10008.1.2.4.51";
    let pos = find(&b, uid)[0];
    for other in [
        &b"1.2.840.10008.1.2.4.90"[..], // says JPEG 2000, holds JPEG
        b"1.2.840.10008.1.2.4.80",      // says JPEG-LS
        b"1.2.840.10008.1.2.5\0\0\0",   // says RLE
        b"1.2.840.10008.1.2.1\0\0\0",   // says uncompressed
        b"1.2.3.4.5.6.7.8.9.10.1",      // unknown
    ] {
        let mut m = b.clone();
        m[pos..pos + uid.len()].copy_from_slice(&other[..uid.len()]);
        let r = std::panic::catch_unwind(|| dicom::load_dicom_bytes(&m).map(|_| ()));
        assert!(
            matches!(r, Ok(Err(_))),
            "{} should be an error",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn oversized_geometry_is_refused() {
    let b = std::fs::read(fixtures().join("ts/b8.dcm")).unwrap();
    // Rows (0028,0010) US 256 → 65535; Columns → 65535; frames → huge
    let mut m = b.clone();
    for tag in [[0x28u8, 0x00, 0x10, 0x00], [0x28, 0x00, 0x11, 0x00]] {
        let p = find(&m, &tag)[0];
        m[p + 8..p + 10].copy_from_slice(&65535u16.to_le_bytes());
    }
    assert!(dicom::load_dicom_bytes(&m).is_err());
}

#[test]
fn cli_reports_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, Vec<u8>)> = vec![
        (d.path().join("empty.dcm"), vec![]),
        (
            d.path().join("text.dcm"),
            b"hello, I am not a DICOM file at all".to_vec(),
        ),
        (
            d.path().join("trunc.dcm"),
            std::fs::read(fixtures().join("ts/b8.dcm")).unwrap()[..900].to_vec(),
        ),
    ];
    for (p, bytes) in &cases {
        std::fs::write(p, bytes).unwrap();
        for cmd in ["info", "render"] {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lofi-viewer"));
            c.args(["--headless", cmd]).arg(p);
            if cmd == "render" {
                c.arg("--out").arg(d.path().join("o.png"));
            }
            let out = c.output().unwrap();
            assert!(!out.status.success(), "{cmd} {}", p.display());
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{cmd} {}: {err}", p.display());
            assert!(lines[0].starts_with("error: "), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // a missing model directory is a clear error too
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lofi-viewer"))
        .args(["--headless", "--model"])
        .arg(d.path().join("no-such-model"))
        .args(["embed", "--text", "effusion"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing model file") && err.lines().count() == 1,
        "{err}"
    );
}

/// `lofi-viewer --headless info x.dcm | head -c 10`: a reader that goes away before the answer is
/// written is no reason to panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lofi-viewer"))
        .args(["--headless", "info"])
        .arg(fixtures().join("ts/b8.dcm"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // close the read end before the child has written anything
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}

/// Every input the fuzzer (`scripts/fuzz.sh`) ever crashed on is kept in `tests/fixtures/fuzz/`.
/// Each must give a clear error from our own checks, not a panic inside a codec (which the
/// decoding guard would turn into a generic "the decoder failed" error).
#[test]
fn fuzzer_findings_give_clear_errors() {
    let dir = fixtures().join("fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "dcm") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let err = match dicom::load_dicom_bytes(&bytes) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            !err.contains("the decoder failed on malformed data"),
            "{}: a codec panicked ({err})",
            path.display()
        );
        // out-of-memory findings must be refused by the structural check, before any allocation
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("oom-") {
            assert!(
                dicom::preflight::check(&bytes).is_err(),
                "{name} passed the preflight ({err})"
            );
        }
        n += 1;
    }
    assert!(n >= 1, "no fuzzer findings in {}", dir.display());
}
