//! The bundled default model and demo store as a user meets them: absent findings get no box,
//! in-context shortfalls are reported, the demo store seeds an empty store once, and `finetune
//! --data M --out D` fine-tunes the bundled model from any working directory.

use std::path::PathBuf;
use std::process::Command;

use lofi_viewer::store::PriorStore;
use serde_json::Value;

use super::common::{fixtures, root};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lofi-viewer")
}

fn model() -> PathBuf {
    root().join("models/lofi-dino")
}

fn ground(model: &std::path::Path, image: &str, phrase: &str) -> Value {
    ground_with(model, image, phrase, &[])
}

fn ground_with(model: &std::path::Path, image: &str, phrase: &str, extra: &[&str]) -> Value {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["--headless", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--store")
        .arg(d.path().join("empty-store"))
        .args(["ground", "--image"])
        .arg(fixtures().join("nih/images").join(image))
        .args(["--phrase", phrase])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_finding_that_is_there_is_boxed_and_a_score_below_the_threshold_gives_no_box() {
    // 00005066_030.png carries Cardiomegaly (radiologist's box in tests/fixtures/nih/boxes.csv)
    let yes = ground(&model(), "00005066_030.png", "cardiomegaly");
    assert_eq!(yes["present"], Value::Bool(true), "{yes}");
    assert!(!yes["boxes"].as_array().unwrap().is_empty(), "{yes}");
    let threshold = yes["presence_threshold"].as_f64().unwrap();
    let p_yes = yes["presence"].as_f64().unwrap();
    assert!(p_yes >= threshold);
    // a phrase that names nothing scores lower than the finding that is there
    let no = ground(&model(), "00005066_030.png", "x");
    let p_no = no["presence"].as_f64().unwrap();
    assert!(p_no < p_yes, "x {p_no} vs cardiomegaly {p_yes}");
    // the gate: the same model with a threshold between the two answers "not found", no box
    let d = tempfile::tempdir().unwrap();
    let m2 = d.path().join("m");
    std::fs::create_dir_all(&m2).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(model().join(f), m2.join(f)).unwrap();
    }
    let mut cfg = lofi_viewer::model::Config::from_file(&model().join("config.json")).unwrap();
    cfg.presence_threshold = Some(((p_no + p_yes) / 2.0) as f32);
    std::fs::write(m2.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let gated = ground(&m2, "00005066_030.png", "x");
    assert_eq!(gated["present"], Value::Bool(false), "{gated}");
    assert!(gated["boxes"].as_array().unwrap().is_empty(), "{gated}");
    assert_eq!(gated["presence"], no["presence"]);
    let kept = ground(&m2, "00005066_030.png", "cardiomegaly");
    assert_eq!(kept["present"], Value::Bool(true), "{kept}");
}

#[test]
fn fewer_in_context_cases_than_asked_are_reported() {
    let v = ground_with(
        &model(),
        "00005066_030.png",
        "cardiomegaly",
        &["--shots", "3"],
    );
    assert_eq!(v["shots_requested"], 3);
    assert_eq!(v["shots_found"], 0);
    assert!(
        v["shots_note"].as_str().unwrap().contains("only 0 of 3"),
        "{v}"
    );
}

#[test]
fn the_demo_store_seeds_an_empty_store_once() {
    let dir = root().join(lofi_viewer::store::demo::DEMO_DIR);
    let d = tempfile::tempdir().unwrap();
    let store = lofi_viewer::store::sqlite::SqliteStore::open(&d.path().join("s")).unwrap();
    let n = lofi_viewer::store::demo::seed(&store, &dir).unwrap();
    assert_eq!(n, 1229, "the NIH training images");
    assert_eq!(lofi_viewer::store::demo::seed(&store, &dir).unwrap(), 0);
    let recs = store.records().unwrap();
    let annotated = recs.iter().filter(|r| !r.meta.regions.is_empty()).count();
    assert_eq!(annotated, 620);
    // every stored image exists (in the bundled folder, never modified) and its boxes lie in it
    for r in recs.iter().filter(|r| !r.meta.regions.is_empty()).take(50) {
        let img = lofi_viewer::dicom::load_gray8(std::path::Path::new(&r.meta.path)).unwrap();
        for g in &r.meta.regions {
            assert!(
                g.bbox[2] <= img.width() as f32 + 0.5 && g.bbox[3] <= img.height() as f32 + 0.5
            );
        }
    }
    // the store's model is the bundled model
    let cfg = lofi_viewer::model::Config::from_file(&model().join("config.json")).unwrap();
    assert_eq!(store.model_id().unwrap(), Some(cfg.embedding_id()));
}

#[test]
fn finetune_without_a_config_fine_tunes_the_bundled_model_from_any_folder() {
    let d = tempfile::tempdir().unwrap();
    let man = super::common::nih_manifest(d.path());
    let m = d.path().join("m.jsonl");
    man.with_absolute_paths().write(&m).unwrap();
    let out = Command::new(bin())
        .current_dir(d.path())
        .env("LOFI_MODEL", model())
        .args(["--headless", "--device", "cpu", "finetune", "--data"])
        .arg(&m)
        .args(["--out", "run", "--stop-after", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"], 1, "{v}");
    let cfg = std::fs::read_to_string(d.path().join("run/train_config.toml")).unwrap();
    assert!(
        cfg.contains("lofi-dino"),
        "started from the bundled model: {cfg}"
    );
    assert!(cfg.contains("freeze = \"encoder\""), "{cfg}");
    assert!(d.path().join("run/model/model.safetensors").exists());
}

/// Issue 17: the fused inference path (candle's `layer_norm`, `rms_norm`, `softmax_last_dim`,
/// `rope`) gives the bundled model's embeddings within 1e-4 of the differentiable path and the
/// same generated tokens (and so the same boxes).
#[test]
fn the_fused_inference_path_matches_the_differentiable_one_on_the_bundled_model() {
    use lofi_viewer::model::prompt::{Instruction, Turn};
    let m = lofi_viewer::model::Lofi::load(&model(), lofi_viewer::model::load::DeviceChoice::Cpu)
        .unwrap();
    let img = lofi_viewer::dicom::load_gray8(
        &super::common::fixtures().join("nih/images/00005066_030.png"),
    )
    .unwrap();
    let run = || {
        let enc = m.encode(&img).unwrap();
        let text = m.embed_text("cardiomegaly").unwrap();
        let turn = Turn {
            instruction: Instruction::Ground("cardiomegaly".into()),
            response: None,
            supervised: false,
        };
        let g = m.generate(&[turn], &[&enc.prefix]).unwrap();
        (enc.embedding, text, g.ids)
    };
    let fast = {
        let _f = lofi_viewer::model::nn::force(true);
        run()
    };
    let slow = {
        let _u = lofi_viewer::model::nn::force(false);
        run()
    };
    let max = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        max(&fast.0, &slow.0) < 1e-4,
        "image embedding {}",
        max(&fast.0, &slow.0)
    );
    assert!(
        max(&fast.1, &slow.1) < 1e-4,
        "text embedding {}",
        max(&fast.1, &slow.1)
    );
    assert_eq!(fast.2, slow.2, "generated tokens");
    assert!(!fast.2.is_empty());
}
