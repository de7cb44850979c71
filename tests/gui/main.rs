#![allow(clippy::unwrap_used, clippy::expect_used)]
//! GUI tests: the shader validates, GPU and CPU renders agree, and the viewer works through
//! egui_kittest with the real wgpu pipeline (snapshots under tests/snapshots).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod pacs;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use lofi_viewer::dicom::{self, lut, DisplayParams, Voi, VoiFunction};
use lofi_viewer::gui::ai::{AiEvent, StoreStatus};
use lofi_viewer::gui::renderer::{HeadlessGpu, SHADER};
use lofi_viewer::gui::{AppCommand, Args, LofiApp, ShotOutcome};
use lofi_viewer::report::{AiFinding, Review};
use lofi_viewer::service::{AiAnswer, AiTask};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn shader_validates_with_naga() {
    let module = naga::front::wgsl::parse_str(SHADER).expect("WGSL parses");
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .expect("WGSL validates");
}

fn compare(gpu: &HeadlessGpu, img: &dicom::LoadedImage, p: &DisplayParams, what: &str) {
    let f = &img.frames[0];
    let cpu = lut::render(f, &img.info, p).to_luma8();
    let g = gpu.render(f, &img.info, p).unwrap();
    assert_eq!(cpu.dimensions(), g.dimensions());
    let max = cpu
        .as_raw()
        .iter()
        .zip(g.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(max <= 1, "{what}: GPU and CPU differ by {max} grey levels");
}

#[test]
fn gpu_and_cpu_renders_agree() {
    let gpu = HeadlessGpu::new().expect("a wgpu adapter (lavapipe in CI)");
    let rg1 =
        dicom::load(&fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm")).unwrap();
    let def = DisplayParams {
        voi: lut::default_voi(&rg1.info, &rg1.frames[0]),
        invert: false,
    };
    compare(&gpu, &rg1, &def, "RG1 default window (MONOCHROME1)");
    compare(
        &gpu,
        &rg1,
        &DisplayParams {
            invert: true,
            ..def
        },
        "RG1 inverted",
    );
    for function in [
        VoiFunction::Linear,
        VoiFunction::LinearExact,
        VoiFunction::Sigmoid,
    ] {
        let p = DisplayParams {
            voi: Voi::Window {
                center: 9000.0,
                width: 7000.0,
                function,
            },
            invert: false,
        };
        compare(&gpu, &rg1, &p, &format!("RG1 narrow window {function:?}"));
    }
    let s16 = dicom::load(&fixtures().join("ts/s16.dcm")).unwrap();
    let p = DisplayParams {
        voi: lut::default_voi(&s16.info, &s16.frames[0]),
        invert: false,
    };
    compare(&gpu, &s16, &p, "signed 16-bit with rescale");
    let mut padded = dicom::load(&fixtures().join("ts/b12.dcm")).unwrap();
    padded.info.pixel_padding_value = Some(0);
    padded.info.pixel_padding_range_limit = Some(600);
    let p = DisplayParams {
        voi: lut::default_voi(&padded.info, &padded.frames[0]),
        invert: false,
    };
    compare(&gpu, &padded, &p, "12-bit with pixel padding");
    let mut lutted = dicom::load(&fixtures().join("ts/b8.dcm")).unwrap();
    lutted.info.voi_luts = vec![dicom::object::Lut {
        first_mapped: 0,
        bits: 12,
        data: (0..256u32).map(|i| ((i * i) / 16) as u16).collect(),
        explanation: Some("square".into()),
    }];
    compare(
        &gpu,
        &lutted,
        &DisplayParams {
            voi: Voi::Lut(0),
            invert: false,
        },
        "VOI LUT",
    );
}

fn harness_for(paths: Vec<PathBuf>) -> Harness<'static, LofiApp> {
    Harness::builder()
        .with_size(egui::Vec2::new(1200.0, 800.0))
        .wgpu()
        .build_eframe(move |cc| {
            LofiApp::new(
                cc,
                Args {
                    paths,
                    harness: true,
                    // an empty store of its own: the panel must not show the user's store
                    store: Some(
                        tempfile::tempdir()
                            .unwrap()
                            .keep()
                            .join("store")
                            .to_string_lossy()
                            .into_owned(),
                    ),
                    ..Default::default()
                },
                Arc::new(Mutex::new(ShotOutcome::Pending)),
            )
        })
}

fn wait_until(h: &mut Harness<'static, LofiApp>, what: &str, cond: impl Fn(&LofiApp) -> bool) {
    let t0 = Instant::now();
    while !cond(h.state()) {
        h.step();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
    }
    h.run_steps(3);
}

#[test]
fn viewer_snapshot_with_rg1() {
    let mut h = harness_for(vec![
        fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm")
    ]);
    wait_until(&mut h, "RG1, its thumbnail, the model and the store", |a| {
        a.state.viewports[0].image.is_some()
            && a.state.thumbnails.values().all(|t| t.is_some())
            && !a.state.thumbnails.is_empty()
            && a.state.ai.model.is_some()
            && a.state.similar.store_info.is_some()
    });
    h.snapshot("viewer_rg1");
}

#[test]
fn keyboard_and_two_up() {
    let mut h = harness_for(vec![fixtures().join("ts")]);
    wait_until(&mut h, "first image", |a| {
        a.state.viewports[0].image.is_some()
    });
    h.key_press(egui::Key::R);
    h.key_press(egui::Key::I);
    h.key_press(egui::Key::H);
    h.run_steps(2);
    {
        let vp = &h.state().state.viewports[0];
        assert_eq!(vp.view.rotation, 1);
        assert!(vp.invert && vp.view.flip_h);
    }
    // a preset on a number key: "Full range" exists for every greyscale image
    let presets = h.state().state.presets(0);
    let full = presets.iter().position(|(n, _)| n == "Full range").unwrap();
    h.key_press([egui::Key::Num1, egui::Key::Num2, egui::Key::Num3][full]);
    h.run_steps(2);
    assert_eq!(h.state().state.viewports[0].voi, Some(presets[full].1));
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert_eq!(h.state().state.viewports[0].view.rotation, 0);
    // two-up with synchronised window: the second pane follows the first
    {
        let app = h.state_mut();
        app.state.settings.two_up = true;
        app.state.settings.sync = true;
        let second = app.state.scan.images()[1].path.clone();
        app.show_file(1, second);
    }
    wait_until(&mut h, "second image", |a| {
        a.state.viewports[1].image.is_some()
    });
    h.key_press(egui::Key::I);
    h.run_steps(2);
    assert!(h.state().state.viewports[1].invert, "sync did not follow");
    // the study browser lists every test file of the folder as one patient
    assert_eq!(h.state().state.scan.patients.len(), 1);
    assert!(h.state().state.scan.images().len() >= 30);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The acceptance test of the AI panel: a real NIH image, "cardiomegaly" typed into the panel,
/// the bundled model runs on a background thread, the box appears in the result list and is
/// painted over the image, and the headless `ground` command returns the same boxes.
#[test]
fn typed_finding_is_grounded_with_the_bundled_model() {
    let model = root().join("models/lofi-dino");
    let image = fixtures().join("nih/images/00005066_030.png");
    let mut h = {
        let (model, image) = (model.clone(), image.clone());
        Harness::builder()
            .with_size(egui::Vec2::new(1400.0, 900.0))
            .wgpu()
            .build_eframe(move |cc| {
                LofiApp::new(
                    cc,
                    Args {
                        paths: vec![image],
                        model: Some(model),
                        harness: true,
                        ..Default::default()
                    },
                    Arc::new(Mutex::new(ShotOutcome::Pending)),
                )
            })
    };
    wait_until(&mut h, "image and model", |a| {
        a.state.viewports[0].image.is_some() && a.state.ai.model.is_some()
    });
    let field = h.get_by_label("Finding");
    field.focus();
    h.run_steps(2);
    h.get_by_label("Finding").type_text("cardiomegaly");
    h.run_steps(2);
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
    assert!(
        h.state().state.ai.running.is_some(),
        "Enter did not start grounding on a background thread"
    );
    // frames keep coming while the model runs: record each frame's time (reported, not asserted)
    let mut frame_ms = Vec::new();
    let t0 = Instant::now();
    while h.state().state.ai.running.is_some() {
        let s = Instant::now();
        h.step();
        frame_ms.push(s.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "grounding did not finish"
        );
    }
    frame_ms.sort_by(f64::total_cmp);
    if let (Some(mid), Some(max)) = (frame_ms.get(frame_ms.len() / 2), frame_ms.last()) {
        println!(
            "frames during inference: {} over {:.0} ms, median {mid:.1} ms, max {max:.1} ms",
            frame_ms.len(),
            t0.elapsed().as_secs_f64() * 1000.0
        );
    }
    wait_until(&mut h, "grounding result", |a| {
        a.state.ai.running.is_none()
            && a.state
                .ai
                .results
                .values()
                .any(|r| r.findings.iter().any(|f| f.phrase == "cardiomegaly"))
    });
    let app = h.state();
    let results = app
        .state
        .ai
        .results
        .values()
        .find(|r| r.findings.iter().any(|f| f.phrase == "cardiomegaly"))
        .unwrap()
        .clone();
    let finding = results
        .findings
        .iter()
        .find(|f| f.phrase == "cardiomegaly")
        .unwrap()
        .clone();
    assert!(
        !finding.boxes.is_empty(),
        "the bundled model found no cardiomegaly box"
    );
    let b = finding.boxes[0].clone();
    // in the list
    let _ = h.get_by_label_contains("box 1 · score");
    // in the overlay: the box outline is painted in the phrase's colour
    let (rect, view) = {
        let vp = &h.state().state.viewports[0];
        (vp.rect.unwrap(), vp.view)
    };
    let size = egui::Vec2::new(results.width as f32, results.height as f32);
    let corners = lofi_viewer::gui::ai::box_on_screen(&view, rect, size, &b);
    let shot = h.render().expect("render");
    let ppp = h.ctx.pixels_per_point();
    let want = lofi_viewer::gui::ai::PALETTE[0];
    let mut on_edge = 0;
    let mut total = 0;
    for k in 1..20 {
        let t = k as f32 / 20.0;
        for (p, q) in [
            (corners[0], corners[1]),
            (corners[1], corners[2]),
            (corners[2], corners[3]),
            (corners[3], corners[0]),
        ] {
            let x = ((p.x + (q.x - p.x) * t) * ppp).round() as i64;
            let y = ((p.y + (q.y - p.y) * t) * ppp).round() as i64;
            total += 1;
            let near = (-1..=1).any(|dy| {
                (-1..=1).any(|dx| {
                    let (px, py) = (x + dx, y + dy);
                    if px < 0 || py < 0 || px >= shot.width() as i64 || py >= shot.height() as i64 {
                        return false;
                    }
                    let c = shot.get_pixel(px as u32, py as u32);
                    (c[0] as i32 - want.r() as i32).abs() < 40
                        && (c[1] as i32 - want.g() as i32).abs() < 40
                        && (c[2] as i32 - want.b() as i32).abs() < 60
                })
            });
            on_edge += near as usize;
        }
    }
    assert!(
        on_edge * 10 >= total * 8,
        "box outline not painted: {on_edge}/{total} edge samples"
    );
    // the headless command gives the same boxes for the same input
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lofi-viewer"))
        .args(["--headless", "--device", "cpu", "--model"])
        .arg(&model)
        .args(["ground", "--phrase", "cardiomegaly", "--image"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli = v["boxes"].as_array().unwrap();
    assert_eq!(cli.len(), finding.boxes.len());
    for (c, g) in cli.iter().zip(&finding.boxes) {
        for (k, gv) in [
            ("x1", g.x1),
            ("y1", g.y1),
            ("x2", g.x2),
            ("y2", g.y2),
            ("score", g.score),
        ] {
            let cv = c[k].as_f64().unwrap() as f32;
            assert!((cv - gv).abs() < 1e-3, "{k}: cli {cv} vs gui {gv}");
        }
    }
}

/// "Similar cases": with three NIH images indexed, "Similar to this image" lists the image itself
/// first, and "Compare" opens the case in the two-up layout with synchronised window and zoom.
#[test]
fn similar_cases_panel_finds_the_image_and_opens_it_two_up() {
    let d = tempfile::tempdir().unwrap();
    let model = root().join("models/lofi-dino");
    let images = fixtures().join("nih/images");
    let store_dir = d.path().join("store");
    {
        let lofi =
            lofi_viewer::model::Lofi::load(&model, lofi_viewer::model::load::DeviceChoice::Cpu)
                .unwrap();
        let store = lofi_viewer::store::sqlite::SqliteStore::open(&store_dir).unwrap();
        let opts = lofi_viewer::store::index::IndexOptions {
            manifest: None,
            batch: 4,
            cancel: lofi_viewer::util::Cancel::new(),
            progress: &|_, _| {},
        };
        let rep =
            lofi_viewer::store::index::index(&lofi, &store, std::slice::from_ref(&images), &opts)
                .unwrap();
        assert_eq!(rep.added, 3);
    }
    let query = images.join("00002176_005.png");
    let mut h = {
        let (model, query, store) = (
            model.clone(),
            query.clone(),
            store_dir.to_string_lossy().into_owned(),
        );
        Harness::builder()
            .with_size(egui::Vec2::new(1400.0, 1000.0))
            .wgpu()
            .build_eframe(move |cc| {
                LofiApp::new(
                    cc,
                    Args {
                        paths: vec![query],
                        model: Some(model),
                        store: Some(store),
                        harness: true,
                        ..Default::default()
                    },
                    Arc::new(Mutex::new(ShotOutcome::Pending)),
                )
            })
    };
    wait_until(&mut h, "image, model and store", |a| {
        a.state.viewports[0].image.is_some()
            && a.state.ai.model.is_some()
            && a.state.ai.store.is_some()
            && matches!(a.state.similar.store_info, Some(Ok((3, _))))
    });
    h.get_by_label("Similar to this image").click();
    h.run_steps(2);
    wait_until(&mut h, "similar cases", |a| {
        a.state.similar.searching.is_none() && !a.state.similar.hits.is_empty()
    });
    let hits: Vec<String> = h
        .state()
        .state
        .similar
        .hits
        .iter()
        .map(|x| x.hit.record.meta.path.clone())
        .collect();
    assert_eq!(hits.len(), 3);
    assert!(
        hits[0].ends_with("00002176_005.png"),
        "the query image is not first: {hits:?}"
    );
    let scores: Vec<f32> = h
        .state()
        .state
        .similar
        .hits
        .iter()
        .map(|x| x.hit.score)
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not best first: {scores:?}"
    );
    // the second case opens two-up
    h.get_all_by_label("Compare").nth(1).unwrap().click();
    h.run_steps(2);
    assert!(h.state().state.settings.two_up && h.state().state.settings.sync);
    let second = PathBuf::from(&hits[1]);
    wait_until(&mut h, "the compared case", |a| {
        a.state.viewports[1].image.is_some()
    });
    assert_eq!(h.state().state.viewports[1].path.as_ref(), Some(&second));
}

/// A harness on `args`; without a store of the test's own, an empty temporary one (a test must
/// never read or seed the user's store).
fn harness_with(args: Args, size: egui::Vec2) -> Harness<'static, LofiApp> {
    let store = args.store.clone().or_else(|| {
        Some(
            tempfile::tempdir()
                .unwrap()
                .keep()
                .join("store")
                .to_string_lossy()
                .into_owned(),
        )
    });
    let args = Args { store, ..args };
    Harness::builder()
        .with_size(size)
        .wgpu()
        .build_eframe(move |cc| {
            LofiApp::new(
                cc,
                Args {
                    harness: true,
                    ..args
                },
                Arc::new(Mutex::new(ShotOutcome::Pending)),
            )
        })
}

/// Save what the harness renders (under the test target folder) for a person to look at.
fn save_render(h: &mut Harness<'static, LofiApp>, name: &str) {
    let img = h.render().expect("render");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screens");
    std::fs::create_dir_all(&dir).unwrap();
    img.save(dir.join(name)).unwrap();
}

/// A harness (1400 × 900) showing one image, waited for.
fn showing(image: PathBuf) -> Harness<'static, LofiApp> {
    let mut h = harness_with(
        Args {
            paths: vec![image],
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 900.0),
    );
    wait_until(&mut h, "image", |a| a.state.viewports[0].image.is_some());
    h
}

fn region(phrase: &str, b: [f32; 4], score: f32) -> lofi_viewer::model::tasks::Region {
    lofi_viewer::model::tasks::Region {
        phrase: phrase.into(),
        x1: b[0],
        y1: b[1],
        x2: b[2],
        y2: b[3],
        score,
    }
}

/// Feed the app an answer as the AI job would.
fn answer(h: &mut Harness<'static, LofiApp>, task: AiTask, findings: Vec<AiFinding>) {
    let ctx = h.ctx.clone();
    let app = h.state_mut();
    let key = app.state.viewports[0].ai_key().unwrap();
    app.state.model_input(0);
    app.state.ai.handle(
        AiEvent::Answer {
            key,
            task,
            answer: AiAnswer {
                findings,
                used: vec![],
                presence_threshold: None,
            },
        },
        &ctx,
    );
    h.run_steps(3);
}

/// Defect 1: "Find all" keeps one finding per region — its own phrase, colour, review and SR
/// content item — and a second "Find all" replaces the first.
#[test]
fn find_all_keeps_one_finding_per_region() {
    // a DICOM image: the SR references it
    let image = fixtures().join("dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm");
    let mut h = showing(image);
    let regions = [
        region(
            "right middle zone pneumonia",
            [150.0, 300.0, 450.0, 600.0],
            0.6,
        ),
        region(
            "left middle zone atelectasis",
            [560.0, 320.0, 880.0, 640.0],
            0.4,
        ),
    ];
    for _ in 0..2 {
        answer(
            &mut h,
            AiTask::FindAll,
            regions.iter().map(AiFinding::from).collect(),
        );
    }
    save_render(&mut h, "find-all-two-regions.png");
    let r = h.state().state.current_results().unwrap().clone();
    assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
    for (f, g) in r.findings.iter().zip(&regions) {
        assert_eq!(f.phrase, g.phrase);
        assert_eq!(f.boxes.len(), 1);
    }
    // each finding is listed and reviewed on its own
    let _ = h.get_by_label("right middle zone pneumonia");
    let _ = h.get_by_label("left middle zone atelectasis");
    h.get_all_by_label("accept").nth(1).unwrap().click();
    h.run_steps(3);
    let r = h.state().state.current_results().unwrap().clone();
    assert_eq!(r.findings[0].boxes[0].review, Review::Pending);
    assert_eq!(r.findings[1].boxes[0].review, Review::Accepted);
    // the SR ties each box to its own finding
    let d = tempfile::tempdir().unwrap();
    let sr = d.path().join("sr.dcm");
    h.state().export_sr(&sr).unwrap();
    let dump = String::from_utf8_lossy(&std::fs::read(&sr).unwrap()).into_owned();
    assert!(dump.contains("right middle zone pneumonia"));
    assert!(dump.contains("left middle zone atelectasis"));
    assert!(
        !dump.contains("find all:"),
        "a merged finding reached the SR"
    );
}

/// Defect 2: "Fit" from the View menu keeps two-up panes in step, as the F key does.
#[test]
fn menu_fit_propagates_in_synced_two_up() {
    let mut h = harness_for(vec![fixtures().join("ts")]);
    wait_until(&mut h, "first image", |a| {
        a.state.viewports[0].image.is_some()
    });
    {
        let app = h.state_mut();
        app.state.settings.two_up = true;
        app.state.settings.sync = true;
        let second = app.state.scan.images()[1].path.clone();
        app.show_file(1, second);
    }
    wait_until(&mut h, "second image", |a| {
        a.state.viewports[1].image.is_some()
    });
    for vp in h.state_mut().state.viewports.iter_mut() {
        vp.view.fit = false;
        vp.view.zoom = 3.0;
    }
    h.run_steps(2);
    h.get_by_label("View").click();
    h.run_steps(2);
    h.get_by_label("Fit (F)").click();
    h.run_steps(3);
    save_render(&mut h, "two-up-after-menu-fit.png");
    let vps = &h.state().state.viewports;
    assert!(vps[0].view.fit, "the active pane did not fit");
    assert!(
        vps[1].view.fit,
        "the synced pane did not follow the menu's Fit"
    );
    assert_eq!(vps[0].view.zoom, vps[1].view.zoom);
}

/// Defect 3: results with long labels arriving do not widen the side panel, so the image does
/// not move under the reader's eyes.
#[test]
fn the_viewport_keeps_its_width_when_results_arrive() {
    let image = fixtures().join("nih/images/00005066_030.png");
    let mut h = showing(image);
    h.run_steps(3);
    let before = h.state().state.viewports[0].rect.unwrap();
    let long = "find all: right middle zone pneumonia, left middle zone atelectasis, \
                bilateral lower zone pleural effusion with a very long qualifying description";
    answer(
        &mut h,
        AiTask::FindAll,
        vec![AiFinding::from(&region(
            long,
            [100.0, 100.0, 900.0, 900.0],
            0.5,
        ))],
    );
    // in-context cases with long label lists arrive too
    {
        let ctx = h.ctx.clone();
        let app = h.state_mut();
        let key = app.state.viewports[0].ai_key().unwrap();
        let case = |id: i64| lofi_viewer::service::UsedCase {
            record: lofi_viewer::store::RecordInfo {
                id,
                meta: lofi_viewer::store::RecordMeta {
                    labels: vec![
                        "Effusion".into(),
                        "Fibrosis".into(),
                        "Mass".into(),
                        "Cardiomegaly".into(),
                        "Pleural_Thickening".into(),
                    ],
                    ..Default::default()
                },
            },
            score: 0.9,
            phrase: "cardiomegaly".into(),
            thumbnail_png: None,
        };
        app.state.ai.handle(
            AiEvent::Answer {
                key,
                task: AiTask::Ground {
                    phrase: "cardiomegaly".into(),
                    shots: 3,
                    exclude_patient: None,
                },
                answer: AiAnswer {
                    findings: vec![],
                    used: vec![case(1), case(2), case(3)],
                    presence_threshold: None,
                },
            },
            &ctx,
        );
    }
    h.run_steps(3);
    let after = h.state().state.viewports[0].rect.unwrap();
    assert!(
        (after.width() - before.width()).abs() < 0.5,
        "the viewport shrank from {} to {} points",
        before.width(),
        after.width()
    );
}

/// Defect 6: a store that cannot be read shows as an error, not as "0 annotated cases".
#[test]
fn a_store_error_is_shown_as_an_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("store.sqlite"),
        b"this is not sqlite, just text",
    )
    .unwrap();
    let image = fixtures().join("nih/images/00005066_030.png");
    let mut h = harness_with(
        Args {
            paths: vec![image],
            store: Some(d.path().to_string_lossy().into_owned()),
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 900.0),
    );
    wait_until(&mut h, "the store to fail", |a| {
        matches!(a.state.ai.store_status, StoreStatus::Failed(_))
    });
    let _ = h.get_by_label_contains("Prior-case store error");
}

/// Defect 7: "exclude this patient" on an image without a patient ID excludes the patient of
/// its own stored record (found by content), so the image itself is not listed first.
#[test]
fn exclude_this_patient_uses_the_stored_record_of_the_query() {
    let d = tempfile::tempdir().unwrap();
    let model = root().join("models/lofi-dino");
    let images = fixtures().join("nih/images");
    let store_dir = d.path().join("store");
    let manifest = d.path().join("m.jsonl");
    std::fs::write(
        &manifest,
        format!(
            "{{\"image\": \"{0}/00002176_005.png\", \"patient_id\": \"2176\"}}\n\
             {{\"image\": \"{0}/00005066_030.png\", \"patient_id\": \"5066\"}}\n",
            images.display()
        ),
    )
    .unwrap();
    {
        let lofi =
            lofi_viewer::model::Lofi::load(&model, lofi_viewer::model::load::DeviceChoice::Cpu)
                .unwrap();
        let store = lofi_viewer::store::sqlite::SqliteStore::open(&store_dir).unwrap();
        let m = lofi_viewer::manifest::Manifest::read(&manifest).unwrap();
        let opts = lofi_viewer::store::index::IndexOptions {
            manifest: Some(&m),
            batch: 4,
            cancel: lofi_viewer::util::Cancel::new(),
            progress: &|_, _| {},
        };
        lofi_viewer::store::index::index(&lofi, &store, std::slice::from_ref(&images), &opts)
            .unwrap();
    }
    let query = images.join("00002176_005.png");
    let mut h = harness_with(
        Args {
            paths: vec![query],
            model: Some(model),
            store: Some(store_dir.to_string_lossy().into_owned()),
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 1000.0),
    );
    wait_until(&mut h, "image, model and store", |a| {
        a.state.viewports[0].image.is_some()
            && a.state.ai.model.is_some()
            && matches!(a.state.similar.store_info, Some(Ok((3, _))))
    });
    assert!(h.state().inputs.similar.exclude_patient);
    h.get_by_label("Similar to this image").click();
    h.run_steps(2);
    wait_until(&mut h, "similar cases", |a| {
        a.state.similar.searching.is_none() && !a.state.similar.hits.is_empty()
    });
    let hits = &h.state().state.similar.hits;
    assert_eq!(hits.len(), 2, "the query's own patient was not excluded");
    assert!(hits.iter().all(|x| x.hit.record.meta.patient_id != "2176"));
}

/// The help overlay lists every key (F1), and the File menu remembers recent studies.
#[test]
fn help_overlay_and_recent_studies() {
    let mut h = harness_for(vec![]);
    h.run_steps(2);
    h.key_press(egui::Key::F1);
    h.run_steps(2);
    assert!(h.state().state.help_open);
    for (_, what) in lofi_viewer::gui::interaction::KEYS
        .iter()
        .chain(lofi_viewer::gui::interaction::MOUSE)
    {
        assert!(
            h.get_all_by_label(what).next().is_some(),
            "the help does not list {what:?}"
        );
    }
    h.key_press(egui::Key::F1);
    h.run_steps(2);
    assert!(!h.state().state.help_open);
    let rg1 = fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm");
    h.state_mut().push(AppCommand::OpenPaths(vec![rg1.clone()]));
    h.run_steps(2);
    assert_eq!(h.state().state.settings.recent.first(), Some(&rg1));
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Recent studies").hover();
    h.run_steps(2);
    let _ = h.get_by_label("RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm");
}

/// Defect 4: two overlapping boxes near the right edge keep legible labels, inside the image
/// pane and apart (the placement itself is unit-tested in `gui::ai::overlay`).
#[test]
fn overlapping_boxes_have_separate_labels_inside_the_pane() {
    let image = fixtures().join("nih/images/00005066_030.png");
    let mut h = showing(image);
    answer(
        &mut h,
        AiTask::FindAll,
        vec![
            AiFinding::from(&region(
                "right pleural effusion",
                [700.0, 560.0, 1010.0, 900.0],
                0.61,
            )),
            AiFinding::from(&region(
                "right lower zone atelectasis",
                [720.0, 580.0, 1020.0, 920.0],
                0.47,
            )),
        ],
    );
    save_render(&mut h, "overlapping-labels.png");
    let r = h.state().state.current_results().unwrap();
    assert_eq!(r.findings.len(), 2);
}
