//! GUI tests: the shader validates, GPU and CPU renders agree, and the viewer works through
//! egui_kittest with the real wgpu pipeline (snapshots under tests/snapshots).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use lofi_viewer::dicom::{self, lut, DisplayParams, Voi, VoiFunction};
use lofi_viewer::gui::renderer::{HeadlessGpu, SHADER};
use lofi_viewer::gui::{Args, LofiApp, ShotOutcome};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn shader_validates_with_naga() {
    let module = naga::front::wgsl::parse_str(SHADER).expect("WGSL parses");
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
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
    let rg1 = dicom::load(&fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm")).unwrap();
    let def = DisplayParams {
        voi: lut::default_voi(&rg1.info, &rg1.frames[0]),
        invert: false,
    };
    compare(&gpu, &rg1, &def, "RG1 default window (MONOCHROME1)");
    compare(&gpu, &rg1, &DisplayParams { invert: true, ..def }, "RG1 inverted");
    for function in [VoiFunction::Linear, VoiFunction::LinearExact, VoiFunction::Sigmoid] {
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
    compare(&gpu, &lutted, &DisplayParams { voi: Voi::Lut(0), invert: false }, "VOI LUT");
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
                    screenshot: Some(PathBuf::from("/dev/null")),
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
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
    }
    h.run_steps(3);
}

#[test]
fn viewer_snapshot_with_rg1() {
    let mut h = harness_for(vec![fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm")]);
    wait_until(&mut h, "RG1 and its thumbnail", |a| {
        a.viewports[0].image.is_some() && a.thumbnails.values().all(|t| t.is_some()) && !a.thumbnails.is_empty()
    });
    h.snapshot("viewer_rg1");
}

#[test]
fn keyboard_and_two_up() {
    let mut h = harness_for(vec![fixtures().join("ts")]);
    wait_until(&mut h, "first image", |a| a.viewports[0].image.is_some());
    h.key_press(egui::Key::R);
    h.key_press(egui::Key::I);
    h.key_press(egui::Key::H);
    h.run_steps(2);
    {
        let vp = &h.state().viewports[0];
        assert_eq!(vp.view.rotation, 1);
        assert!(vp.invert && vp.view.flip_h);
    }
    // a preset on a number key: "Full range" exists for every greyscale image
    let presets = h.state().presets(0);
    let full = presets.iter().position(|(n, _)| n == "Full range").unwrap();
    h.key_press([egui::Key::Num1, egui::Key::Num2, egui::Key::Num3][full]);
    h.run_steps(2);
    assert_eq!(h.state().viewports[0].voi, Some(presets[full].1));
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert_eq!(h.state().viewports[0].view.rotation, 0);
    // two-up with synchronised window: the second pane follows the first
    {
        let app = h.state_mut();
        app.settings.two_up = true;
        app.settings.sync = true;
        let second = app.scan.images()[1].path.clone();
        app.show_file(1, second);
    }
    wait_until(&mut h, "second image", |a| a.viewports[1].image.is_some());
    h.key_press(egui::Key::I);
    h.run_steps(2);
    assert!(h.state().viewports[1].invert, "sync did not follow");
    // the study browser lists every test file of the folder as one patient
    assert_eq!(h.state().scan.patients.len(), 1);
    assert!(h.state().scan.images().len() >= 30);
}
