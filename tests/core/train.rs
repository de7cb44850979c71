//! Training tests: gradients (finite differences, coverage), overfitting on real images, exact
//! resume, and resuming after kills.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lofi_viewer::manifest::{Manifest, Record, Region};
use lofi_viewer::model::prompt::{build_prompt, ground_response, Instruction, Turn};
use lofi_viewer::model::Lofi;
use lofi_viewer::train::data::{make_sample, prepare, Augment, Sample, TaskKind, TaskMix};
use lofi_viewer::train::{augmented_views, finetune, Freeze, RunOptions, TrainConfig, Trainer};
use rand::SeedableRng;

use super::common::{fixtures, nih_manifest, tokenizer_path};

fn tiny_cfg() -> TrainConfig {
    TrainConfig {
        preset: "lofi-tiny".into(),
        tokenizer: Some(tokenizer_path()),
        image_size: Some(64),
        steps: 4,
        batch_size: 2,
        warmup: 1,
        save_every: 2,
        val_every: 0,
        augment: Augment::default(),
        threads: 1,
        ..Default::default()
    }
}

/// The 3 NIH fixture images plus one more real NIH image with its box.
fn four_images(dir: &Path) -> Manifest {
    let mut m = nih_manifest(dir);
    m.records.push(Record {
        image: fixtures()
            .join("nih4/images/00013118_008.png")
            .to_string_lossy()
            .into_owned(),
        patient_id: Some("13118".into()),
        labels: vec!["Atelectasis".into()],
        regions: vec![Region {
            phrase: "right middle zone atelectasis".into(),
            phrase_basic: Some("atelectasis".into()),
            finding: Some("Atelectasis".into()),
            synonyms: vec![],
            bbox: [112.54, 273.51, 155.93, 313.1],
        }],
        ..Default::default()
    });
    m
}

fn fixed_samples(tr: &Trainer, m: &Manifest, seed: u64) -> Vec<Sample> {
    let imgs = prepare(m, tr.model_cfg.image_size as u32, 1, &|_| {}).unwrap();
    imgs.iter()
        .enumerate()
        .map(|(i, im)| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + i as u64);
            make_sample(im, &Augment::none(), &TaskMix::default(), None, &mut rng)
        })
        .collect()
}

fn loss_of(tr: &Trainer, s: &[Sample]) -> f64 {
    tr.batch_loss(s, None).unwrap().1.total
}

#[test]
fn finite_differences_agree_with_backprop_in_every_component() {
    let d = tempfile::tempdir().unwrap();
    let m = four_images(d.path());
    let tr = Trainer::with_dtype(tiny_cfg(), Device::Cpu, DType::F64).unwrap();
    // one location sample and one caption sample at least: seeds chosen so both kinds occur
    let mut samples = fixed_samples(&tr, &m, 11);
    samples[3].turn = lofi_viewer::model::prompt::Turn {
        instruction: lofi_viewer::model::prompt::Instruction::Caption,
        response: Some("atelectasis.".into()),
        supervised: true,
    };
    samples[3].kind = lofi_viewer::train::data::TaskKind::Caption;
    let (grads, _) = tr.grads(&samples, &[0, 1, 2, 3]).unwrap();
    let params = tr.store.trainable();
    let names = [
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.5.mlp.fc2.bias",
        "vision_model.head.probe",
        "vision_model.head.attention.in_proj_weight",
        "vision_model.post_layernorm.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.1.mlp.fc1.weight",
        "text_model.final_layer_norm.bias",
        "text_model.head.weight",
        "projector.map.probe",
        "projector.map.attention.in_proj_weight",
        "projector.fc2.weight",
        "decoder.model.embed_tokens.weight",
        "decoder.model.layers.0.self_attn.q_norm.weight",
        "decoder.model.layers.1.self_attn.k_proj.weight",
        "decoder.model.layers.3.mlp.down_proj.weight",
        "decoder.model.layers.2.post_feedforward_layernorm.weight",
        "decoder.model.norm.weight",
        "logit_scale",
        "logit_bias",
    ];
    let eps = 1e-6;
    for name in names {
        let (_, var) = params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let g: Vec<f64> = grads[name].flatten_all().unwrap().to_vec1().unwrap();
        // the two entries with the largest gradient (a strong, checkable signal)
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &k in idx.iter().take(2) {
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.shape().clone();
            let set = |v: f64| {
                let mut w = orig.clone();
                w[k] = v;
                var.set(&Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                    .unwrap();
            };
            set(orig[k] + eps);
            let lp = loss_of(&tr, &samples);
            set(orig[k] - eps);
            let lm = loss_of(&tr, &samples);
            set(orig[k]);
            let fd = (lp - lm) / (2.0 * eps);
            let err = (fd - g[k]).abs() / (fd.abs().max(g[k].abs()).max(1e-6));
            assert!(
                err < 1e-3,
                "{name}[{k}]: finite difference {fd} vs backprop {}",
                g[k]
            );
        }
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let d = tempfile::tempdir().unwrap();
    let m = four_images(d.path());
    for freeze in [Freeze::Full, Freeze::Lora] {
        let cfg = TrainConfig {
            freeze,
            ..tiny_cfg()
        };
        let tr = Trainer::new(cfg, Device::Cpu).unwrap();
        if freeze == Freeze::Lora {
            // LoRA B starts at zero, which zeroes A's gradient: move B off zero first
            for (n, v) in tr.store.trainable() {
                if n.ends_with("lora_B.weight") {
                    v.set(&v.as_tensor().randn_like(0.0, 0.01).unwrap())
                        .unwrap();
                }
            }
        }
        let mut samples = fixed_samples(&tr, &m, 5);
        samples[2].turn = lofi_viewer::model::prompt::Turn {
            instruction: lofi_viewer::model::prompt::Instruction::Caption,
            response: Some("nodule.".into()),
            supervised: true,
        };
        samples[2].kind = lofi_viewer::train::data::TaskKind::Caption;
        let (grads, _) = tr.grads(&samples, &[0, 1, 2, 3]).unwrap();
        let trainable = tr.store.trainable();
        assert!(!trainable.is_empty());
        for (name, _) in &trainable {
            let g = grads
                .get(name)
                .unwrap_or_else(|| panic!("{freeze:?}: no gradient for {name}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{freeze:?}: zero gradient for {name}");
        }
        if freeze == Freeze::Lora {
            assert!(trainable
                .iter()
                .all(|(n, _)| !n.ends_with("q_proj.weight") || n.contains("lora")));
        }
    }
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let i = iw * ih;
    let u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i;
    if u > 0.0 {
        i / u
    } else {
        0.0
    }
}

fn mean_iou(model_dir: &Path, m: &Manifest) -> f32 {
    let lofi = Lofi::load(model_dir, lofi_viewer::model::load::DeviceChoice::Cpu).unwrap();
    let mut s = 0.0;
    let mut n = 0.0;
    for r in &m.records {
        let img = lofi_viewer::dicom::load_gray8(&m.image_path(r)).unwrap();
        let enc = lofi.encode(&img).unwrap();
        for g in &r.regions {
            let boxes = lofi.ground(&enc, &g.phrase, &[]).unwrap();
            s += boxes
                .first()
                .map_or(0.0, |b| iou([b.x1, b.y1, b.x2, b.y2], g.bbox));
            n += 1.0;
        }
    }
    s / n
}

#[test]
fn overfits_four_real_images() {
    let d = tempfile::tempdir().unwrap();
    let m = four_images(d.path());
    let cfg = TrainConfig {
        steps: 160,
        batch_size: 4,
        lr: 2e-3,
        warmup: 5,
        lambda: 5.0,
        save_every: 1000,
        augment: Augment::none(),
        ..tiny_cfg()
    };
    let out = d.path().join("run");
    // the model before training: export the step-0 weights
    let tr0 = Trainer::new(cfg.clone(), Device::Cpu).unwrap();
    lofi_viewer::train::export_model(&tr0, &out.join("init"), None).unwrap();
    let iou0 = mean_iou(&out.join("init"), &m);
    let opts = RunOptions {
        out: out.clone(),
        ..Default::default()
    };
    let s = finetune(cfg, &m, &Manifest::default(), Device::Cpu, &opts).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect();
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "loss {first:.3} → {last:.3}");
    let iou1 = mean_iou(&s.model_dir, &m);
    assert!(iou1 > iou0 + 0.2, "grounding IoU {iou0:.3} → {iou1:.3}");
    assert!(out.join("loss_curve.png").exists() && out.join("summary.json").exists());
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resume_is_bit_exact() {
    assert_resume_is_bit_exact(tiny_cfg());
}

/// The frozen-encoder mode with a cache of augmented views (the views and the view each sample
/// draws must be reproduced on resume).
#[test]
fn resume_is_bit_exact_with_cached_augmented_views() {
    assert_resume_is_bit_exact(TrainConfig {
        freeze: Freeze::Encoder,
        cache_views: 3,
        ..tiny_cfg()
    });
}

/// The four real images, each with one atelectasis box of its own (four patients), so every
/// grounding sample can be given solved examples from the others.
fn four_atelectasis_cases(dir: &Path) -> Manifest {
    let mut m = four_images(dir);
    for (i, r) in m.records.iter_mut().enumerate() {
        // inside every image (the fourth is 512 px)
        let x = 40.0 + 100.0 * i as f32;
        r.regions = vec![Region {
            phrase: if i % 2 == 0 {
                "right middle zone atelectasis".into()
            } else {
                "left lower zone atelectasis".into()
            },
            phrase_basic: Some("atelectasis".into()),
            finding: Some("Atelectasis".into()),
            synonyms: vec![],
            bbox: [
                x,
                150.0 + 30.0 * i as f32,
                x + 80.0,
                250.0 + 30.0 * i as f32,
            ],
        }];
    }
    m
}

/// In-context training (solved examples from the feature cache) resumes exactly too.
#[test]
fn resume_is_bit_exact_with_in_context_examples() {
    assert_resume_is_bit_exact_on(
        TrainConfig {
            freeze: Freeze::Encoder,
            mix: TaskMix {
                grounding: 1.0,
                in_context: 0.7,
                max_shots: 2,
                ..TaskMix::default()
            },
            ..tiny_cfg()
        },
        four_atelectasis_cases,
    );
}

/// A batch that mixes single-image prompts with in-context prompts (run through the decoder as
/// two groups) gives each sample the loss it has alone, and the examples reach the decoder.
#[test]
fn in_context_batches_equal_their_samples_alone() {
    let d = tempfile::tempdir().unwrap();
    let m = four_atelectasis_cases(d.path());
    let mut tr = Trainer::new(
        TrainConfig {
            freeze: Freeze::Encoder,
            ..tiny_cfg()
        },
        Device::Cpu,
    )
    .unwrap();
    let imgs = prepare(&m, tr.model_cfg.image_size as u32, 1, &|_| {}).unwrap();
    assert!(imgs.iter().all(|i| i.regions.len() == 1));
    tr.cache_features(&imgs).unwrap();
    let unit = |k: usize| imgs[k].regions[0].unit;
    let ground = |k: usize, supervised: bool| Turn {
        instruction: Instruction::Ground(imgs[k].regions[0].phrase.clone()),
        response: Some(ground_response(&[unit(k)])),
        supervised,
    };
    let sample = |k: usize, shots: &[usize]| Sample {
        pixels: Vec::new(),
        text: imgs[k].text.clone(),
        turn: ground(k, true),
        kind: TaskKind::Location,
        shots: shots.iter().map(|&n| (n, ground(n, false))).collect(),
        label_keys: imgs[k].label_keys.clone(),
    };
    let loc = |s: &[Sample], idx: &[usize]| tr.batch_loss(s, Some(idx)).unwrap().1.loc;
    let rows = |s: &Sample| {
        let mut turns: Vec<Turn> = s.shots.iter().map(|(_, t)| t.clone()).collect();
        turns.push(s.turn.clone());
        let p = build_prompt(&tr.tokenizer, &turns, tr.model_cfg.projector.num_tokens).unwrap();
        p.targets.iter().filter(|&&t| t).count() as f64
    };
    let batch = vec![
        sample(0, &[]),
        sample(1, &[2, 3]),
        sample(2, &[]),
        sample(3, &[0]),
    ];
    let idx = [0, 1, 2, 3];
    let alone: Vec<f64> = (0..4)
        .map(|i| loc(std::slice::from_ref(&batch[i]), &idx[i..=i]))
        .collect();
    let n: Vec<f64> = batch.iter().map(rows).collect();
    let want = alone.iter().zip(&n).map(|(l, n)| l * n).sum::<f64>() / n.iter().sum::<f64>();
    let got = loc(&batch, &idx);
    assert!(
        (got - want).abs() < 1e-4,
        "batch {got} vs samples alone {want}"
    );
    // the examples are read: the same query with and without them has another loss
    let without = loc(&[sample(1, &[])], &[1]);
    assert!(
        (alone[1] - without).abs() > 1e-4,
        "{} vs {without}",
        alone[1]
    );
    // and their gradients reach the decoder through the longer prompts
    let (g, _) = tr.grads(&batch, &idx).unwrap();
    assert!(g.keys().any(|k| k.starts_with("decoder.")));
    assert!(g.values().all(|t| t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())));
}

#[test]
fn cached_views_are_the_image_then_deterministic_augmentations() {
    let d = tempfile::tempdir().unwrap();
    let m = four_images(d.path());
    let imgs = prepare(&m, 64, 1, &|_| {}).unwrap();
    let (px, boxes) = augmented_views(&imgs, 0, 3, &Augment::default(), 7);
    assert_eq!((px.len(), boxes.len()), (12, 12));
    for (k, im) in imgs.iter().enumerate() {
        // view 0: the image itself, boxes unchanged
        assert_eq!(
            px[k * 3],
            lofi_viewer::model::image::normalize(im.square.as_raw())
        );
        let unit: Vec<_> = im.regions.iter().map(|r| Some(r.unit)).collect();
        assert_eq!(boxes[k * 3], unit);
        // the others: augmented, so different pixels; boxes moved with them
        for v in 1..3 {
            assert_ne!(
                px[k * 3 + v],
                px[k * 3],
                "image {k} view {v} is not augmented"
            );
            assert_eq!(boxes[k * 3 + v].len(), im.regions.len());
            if !unit.is_empty() {
                assert_ne!(
                    boxes[k * 3 + v],
                    unit,
                    "image {k} view {v}: box did not move"
                );
            }
        }
    }
    assert!(imgs.iter().any(|im| !im.regions.is_empty()));
    // deterministic given the seed, different for another seed
    let again = augmented_views(&imgs, 0, 3, &Augment::default(), 7);
    assert_eq!(again.0, px);
    assert_eq!(again.1, boxes);
    assert_ne!(augmented_views(&imgs, 0, 3, &Augment::default(), 8).0, px);
    // built a few images at a time (as training does), the views are the same
    let (tail_px, tail_boxes) = augmented_views(&imgs[2..], 2, 3, &Augment::default(), 7);
    assert_eq!(tail_px, px[6..]);
    assert_eq!(tail_boxes, boxes[6..]);
}

fn assert_resume_is_bit_exact(cfg: TrainConfig) {
    assert_resume_is_bit_exact_on(cfg, four_images);
}

fn assert_resume_is_bit_exact_on(cfg: TrainConfig, data: fn(&Path) -> Manifest) {
    let d = tempfile::tempdir().unwrap();
    let m = data(d.path());
    let straight = d.path().join("straight");
    finetune(
        cfg.clone(),
        &m,
        &Manifest::default(),
        Device::Cpu,
        &RunOptions {
            out: straight.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let split = d.path().join("split");
    let first = finetune(
        cfg.clone(),
        &m,
        &Manifest::default(),
        Device::Cpu,
        &RunOptions {
            out: split.clone(),
            stop_after: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(first.interrupted && first.steps == 2);
    let second = finetune(
        cfg,
        &m,
        &Manifest::default(),
        Device::Cpu,
        &RunOptions {
            out: split.clone(),
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(second.steps, 4);
    assert_eq!(
        weights(&straight.join("model")),
        weights(&split.join("model"))
    );
}

#[test]
fn killed_during_checkpoints_resumes_to_the_same_weights() {
    use rand::Rng;
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    let m = four_images(d.path());
    let manifest = d.path().join("four.jsonl");
    m.write(&manifest).unwrap();
    // a checkpoint every step: most kills land in or near a checkpoint write
    let cfg = TrainConfig {
        steps: 24,
        save_every: 1,
        keep_last: 2,
        ..tiny_cfg()
    };
    let toml_path = d.path().join("cfg.toml");
    std::fs::write(&toml_path, toml::to_string(&cfg).unwrap()).unwrap();
    let run = |out: &Path, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lofi-viewer"));
        c.args(["--headless", "finetune", "--config"])
            .arg(&toml_path)
            .arg("--data")
            .arg(&manifest)
            .arg("--val")
            .arg(&manifest)
            .arg("--out")
            .arg(out);
        if resume {
            c.arg("--resume");
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let straight = d.path().join("straight");
    let o = run(&straight, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = d.path().join("killed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    for trial in 0..8 {
        let mut child = run(&killed, trial > 0).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(
            rng.random_range(300..2500),
        ));
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // whatever the moment, the latest checkpoint loads (or there is none yet)
        lofi_viewer::train::checkpoint::load_latest(&killed.join("checkpoints"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("trial {trial}: latest checkpoint unusable: {e}"));
    }
    assert!(kills >= 4, "only {kills} runs were still going when killed");
    let o = run(&killed, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        weights(&straight.join("model")),
        weights(&killed.join("model")),
        "killed-and-resumed run differs from the straight run"
    );
}

#[test]
fn shipped_training_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let c = TrainConfig::from_toml(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(c.steps > 0 && c.lr > 0.0, "{}", p.display());
            n += 1;
        }
    }
    assert!(n >= 2);
}
