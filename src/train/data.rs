//! Training data: images prepared once (letterboxed to the model size), augmentation that keeps
//! laterality (no horizontal flips), and the per-sample task choice of the LoFi recipe.

use std::path::PathBuf;

use image::GrayImage;
use rand::{Rng, RngCore};

use crate::manifest::{label_phrase, labels_text, Manifest, Record};
use crate::model::image::{letterbox_u8, Letterbox};
use crate::model::prompt::{ground_response, Instruction, Turn, UnitBox};

use super::shots::{draw_shots, ShotContext};
use super::TrainError;

/// A region in model space.
#[derive(Debug, Clone)]
pub struct UnitRegion {
    /// Phrase with location words.
    pub phrase: String,
    /// Phrase without location words.
    pub phrase_basic: String,
    /// Finding class.
    pub finding: String,
    /// Other names of the finding.
    pub synonyms: Vec<String>,
    /// Box in the letterboxed square, [0, 1].
    pub unit: UnitBox,
}

/// One image ready for training.
#[derive(Debug, Clone)]
pub struct TrainImage {
    /// Letterboxed 8-bit square.
    pub square: GrayImage,
    /// Geometry.
    pub letterbox: Letterbox,
    /// Text for the sigmoid loss (report, else labels).
    pub text: String,
    /// Report when present.
    pub report: Option<String>,
    /// Labels text (used when there is no report).
    pub labels_text: String,
    /// Regions.
    pub regions: Vec<UnitRegion>,
    /// Source path.
    pub path: PathBuf,
    /// Patient id (in-context examples come from other patients).
    pub patient: Option<String>,
    /// The image-level findings as label phrases ([`label_phrase`]; none for "No Finding"):
    /// the positives of the label-text sigmoid loss.
    pub label_keys: Vec<String>,
}

/// Load and letterbox every record's image (on `threads` worker threads). Images that fail to load
/// are an error naming the file: training data must be complete.
pub fn prepare(
    manifest: &Manifest,
    size: u32,
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<TrainImage>, TrainError> {
    let n = manifest.records.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<TrainImage, TrainError>>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = prepare_one(manifest, &manifest.records[i], size);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
                progress(done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(TrainError::Data("image preparation did not finish".into())))
        })
        .collect()
}

fn prepare_one(m: &Manifest, r: &Record, size: u32) -> Result<TrainImage, TrainError> {
    let path = m.image_path(r);
    let img = crate::dicom::load_gray8(&path)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let (square, letterbox) = letterbox_u8(&img, size);
    let regions = r
        .regions
        .iter()
        .map(|g| {
            let finding = g.finding.clone().unwrap_or_else(|| g.phrase.clone());
            UnitRegion {
                phrase: g.phrase.clone(),
                phrase_basic: g
                    .phrase_basic
                    .clone()
                    .unwrap_or_else(|| label_phrase(&finding)),
                finding,
                synonyms: g.synonyms.clone(),
                unit: letterbox.to_unit(g.bbox),
            }
        })
        .filter(|g| g.unit[2] > g.unit[0] && g.unit[3] > g.unit[1])
        .collect();
    let lt = labels_text(&r.labels);
    Ok(TrainImage {
        square,
        letterbox,
        text: r.report.clone().unwrap_or_else(|| lt.clone()),
        report: r.report.clone(),
        labels_text: lt,
        regions,
        path,
        patient: r.patient_id.clone(),
        label_keys: label_keys(&r.labels),
    })
}

/// The label phrases of image-level labels ("No Finding" is the empty set), sorted, unique.
pub fn label_keys(labels: &[String]) -> Vec<String> {
    let mut k: Vec<String> = labels
        .iter()
        .filter(|l| l.as_str() != "No Finding")
        .map(|l| label_phrase(l))
        .collect();
    k.sort();
    k.dedup();
    k
}

/// How the samples of images with regions are split between the location-aware tasks.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TaskMix {
    /// Share of grounding samples (phrase → boxes); the rest are dense captioning (box →
    /// phrase). The LoFi recipe: 0.5.
    pub grounding: f64,
    /// Share of grounding samples asked with the full phrase (finding, side and zone words); the
    /// rest ask with the finding-level phrase (60 %) or one of its synonyms (40 %).
    pub full_phrase: f64,
    /// Share of grounding samples that carry solved examples before the query (retrieval-based
    /// in-context grounding, as `ground --shots K` asks): 1 to `max_shots` of the nearest
    /// training images of other patients with the same finding, by image embedding. Needs the
    /// frozen encoder's feature cache (`freeze = "encoder"`). Default 0: single-image prompts.
    pub in_context: f64,
    /// Most solved examples in one in-context sample (K is drawn from 1..=max_shots).
    pub max_shots: usize,
}

impl Default for TaskMix {
    fn default() -> Self {
        Self {
            grounding: 0.5,
            full_phrase: 0.5,
            in_context: 0.0,
            max_shots: 3,
        }
    }
}

impl TaskMix {
    /// Both shares must be probabilities.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("grounding", self.grounding),
            ("full_phrase", self.full_phrase),
            ("in_context", self.in_context),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("mix.{name} must be in [0, 1], got {v}"));
            }
        }
        if self.in_context > 0.0 && self.max_shots == 0 {
            return Err("mix.max_shots must be at least 1 when mix.in_context > 0".into());
        }
        Ok(())
    }
}

/// Augmentation strengths (0 disables a part).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Augment {
    /// Max relative zoom (0.1 → scale in [0.9, 1.1]).
    pub scale: f32,
    /// Max shift as a fraction of the side.
    pub shift: f32,
    /// Max relative contrast change.
    pub contrast: f32,
    /// Max brightness shift in [-1, 1] units.
    pub brightness: f32,
    /// Max |log gamma|.
    pub gamma: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            scale: 0.1,
            shift: 0.05,
            contrast: 0.2,
            brightness: 0.1,
            gamma: 0.2,
        }
    }
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Self {
            scale: 0.0,
            shift: 0.0,
            contrast: 0.0,
            brightness: 0.0,
            gamma: 0.0,
        }
    }
}

fn sym(rng: &mut dyn RngCore, a: f32) -> f32 {
    if a <= 0.0 {
        0.0
    } else {
        rng.random_range(-a..a)
    }
}

/// Apply a random zoom/shift (bilinear, black outside) and intensity change to a square image;
/// boxes move with the image. Never flips, so left/right stay true.
pub fn augment(
    square: &GrayImage,
    boxes: &[UnitBox],
    a: &Augment,
    rng: &mut dyn RngCore,
) -> (Vec<f32>, Vec<Option<UnitBox>>) {
    let s = square.width() as usize;
    let scale = 1.0 + sym(rng, a.scale);
    let (tx, ty) = (sym(rng, a.shift), sym(rng, a.shift));
    let contrast = 1.0 + sym(rng, a.contrast);
    let bright = sym(rng, a.brightness);
    let gamma = sym(rng, a.gamma).exp();
    let c = s as f32 / 2.0;
    let src = square.as_raw();
    let mut lut = [0f32; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = (i as f32 / 255.0).powf(gamma);
    }
    let mut out = vec![-1f32; s * s];
    let identity = scale == 1.0 && tx == 0.0 && ty == 0.0;
    for y in 0..s {
        for x in 0..s {
            let g = if identity {
                lut[src[y * s + x] as usize]
            } else {
                let sx = (x as f32 + 0.5 - c - tx * s as f32) / scale + c - 0.5;
                let sy = (y as f32 + 0.5 - c - ty * s as f32) / scale + c - 0.5;
                if sx < 0.0 || sy < 0.0 || sx > (s - 1) as f32 || sy > (s - 1) as f32 {
                    continue;
                }
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
                let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                let p = |xx: usize, yy: usize| lut[src[yy * s + xx] as usize];
                (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy)
                    + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy
            };
            out[y * s + x] = ((g * 2.0 - 1.0) * contrast + bright).clamp(-1.0, 1.0);
        }
    }
    let moved = boxes
        .iter()
        .map(|b| {
            let f = |v: f32, t: f32| ((v - 0.5) * scale + 0.5 + t).clamp(0.0, 1.0);
            let nb = [f(b[0], tx), f(b[1], ty), f(b[2], tx), f(b[3], ty)];
            let min_side = 2.0 / s as f32;
            (nb[2] - nb[0] >= min_side && nb[3] - nb[1] >= min_side).then_some(nb)
        })
        .collect();
    (out, moved)
}

/// Which decoder loss a sample feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Report captioning.
    Caption,
    /// Location-aware captioning (grounding or dense captioning).
    Location,
}

/// One training sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Normalised pixels of the square.
    pub pixels: Vec<f32>,
    /// Text for the sigmoid loss.
    pub text: String,
    /// The decoder turn.
    pub turn: Turn,
    /// Which decoder loss it feeds.
    pub kind: TaskKind,
    /// Solved examples before the query turn (in-context grounding): the training image each
    /// comes from (its index, or its feature-cache index once the trainer has mapped it) and its
    /// unsupervised turn, nearest first.
    pub shots: Vec<(usize, Turn)>,
    /// The image's label phrases (see [`TrainImage::label_keys`]).
    pub label_keys: Vec<String>,
}

/// Build a sample: augmentation, then grounding / dense captioning (shares from `mix`) when the
/// image has regions, else captioning of the report or the labels.
pub fn make_sample(
    img: &TrainImage,
    aug: &Augment,
    mix: &TaskMix,
    shots: Option<&ShotContext<'_>>,
    rng: &mut dyn RngCore,
) -> Sample {
    let boxes: Vec<UnitBox> = img.regions.iter().map(|r| r.unit).collect();
    let (pixels, moved) = augment(&img.square, &boxes, aug, rng);
    sample_from_view(img, pixels, &moved, mix, shots, rng)
}

/// Build a sample from one already augmented view of `img`: its pixels (may be empty when the
/// encoder's features of the view are cached) and its regions' boxes after the augmentation
/// (`None`: moved out of the image). With `shots` and `mix.in_context > 0`, that share of the
/// grounding samples also carries solved examples (drawn after everything else, so the random
/// stream of the other choices does not depend on it).
pub fn sample_from_view(
    img: &TrainImage,
    pixels: Vec<f32>,
    moved: &[Option<UnitBox>],
    mix: &TaskMix,
    shots: Option<&ShotContext<'_>>,
    rng: &mut dyn RngCore,
) -> Sample {
    let mut examples = Vec::new();
    let valid: Vec<usize> = (0..moved.len()).filter(|&i| moved[i].is_some()).collect();
    let caption = || Turn {
        instruction: Instruction::Caption,
        response: Some(
            img.report
                .clone()
                .unwrap_or_else(|| img.labels_text.clone()),
        ),
        supervised: true,
    };
    let (turn, kind) = if valid.is_empty() {
        (caption(), TaskKind::Caption)
    } else {
        let i = valid[rng.random_range(0..valid.len())];
        let r = &img.regions[i];
        if rng.random_bool(mix.grounding) {
            // grounding: phrase → every box of that phrase (or finding, for finding-level words)
            let u: f32 = rng.random();
            let full = mix.full_phrase as f32;
            let (phrase, by_finding) = if u < full {
                (r.phrase.clone(), false)
            } else if u < full + (1.0 - full) * 0.6 || r.synonyms.is_empty() {
                (r.phrase_basic.clone(), true)
            } else {
                (
                    r.synonyms[rng.random_range(0..r.synonyms.len())].clone(),
                    true,
                )
            };
            let targets: Vec<UnitBox> = valid
                .iter()
                .filter(|&&j| {
                    let o = &img.regions[j];
                    if by_finding {
                        o.finding == r.finding
                    } else {
                        o.phrase == r.phrase
                    }
                })
                .filter_map(|&j| moved[j])
                .collect();
            if let Some(ctx) = shots.filter(|_| mix.in_context > 0.0) {
                if rng.random_bool(mix.in_context) {
                    examples = draw_shots(ctx, &r.finding, by_finding, mix.max_shots, rng);
                }
            }
            (
                Turn {
                    instruction: Instruction::Ground(phrase),
                    response: Some(ground_response(&targets)),
                    supervised: true,
                },
                TaskKind::Location,
            )
        } else {
            let b = moved[i].unwrap_or(r.unit);
            (
                Turn {
                    instruction: Instruction::Describe(vec![b]),
                    response: Some(r.phrase.clone()),
                    supervised: true,
                },
                TaskKind::Location,
            )
        }
    };
    Sample {
        pixels,
        text: img.text.clone(),
        turn,
        kind,
        shots: examples,
        label_keys: img.label_keys.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn identity_augment_keeps_pixels_and_boxes() {
        let img = GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (px, b) = augment(&img, &[[0.25, 0.25, 0.5, 0.75]], &Augment::none(), &mut rng);
        assert_eq!(b[0], Some([0.25, 0.25, 0.5, 0.75]));
        assert!((px[8 + 1] - (31.0 / 127.5 - 1.0)).abs() < 1e-5);
    }

    #[test]
    fn shift_moves_box_and_content_together() {
        // a bright block; after augmentation, the box's new area must still be bright
        let mut img = GrayImage::new(64, 64);
        for y in 16..32 {
            for x in 8..24 {
                img.put_pixel(x, y, image::Luma([255]));
            }
        }
        let b = [8.0 / 64.0, 16.0 / 64.0, 24.0 / 64.0, 32.0 / 64.0];
        let a = Augment {
            contrast: 0.0,
            brightness: 0.0,
            gamma: 0.0,
            ..Augment::default()
        };
        for seed in 0..10 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (px, nb) = augment(&img, &[b], &a, &mut rng);
            let nb = nb[0].unwrap();
            let cx = ((nb[0] + nb[2]) / 2.0 * 64.0) as usize;
            let cy = ((nb[1] + nb[3]) / 2.0 * 64.0) as usize;
            assert!(px[cy * 64 + cx] > 0.9, "seed {seed}");
        }
    }

    #[test]
    fn task_mix_sets_the_shares_of_region_samples() {
        let region = UnitRegion {
            phrase: "left lower zone effusion".into(),
            phrase_basic: "effusion".into(),
            finding: "Effusion".into(),
            synonyms: vec!["fluid".into()],
            unit: [0.5, 0.5, 0.9, 0.9],
        };
        let square = GrayImage::new(16, 16);
        let img = TrainImage {
            letterbox: Letterbox::new(16, 16, 16),
            square,
            text: "effusion".into(),
            report: None,
            labels_text: "effusion".into(),
            regions: vec![region],
            path: PathBuf::from("x.png"),
            patient: None,
            label_keys: vec!["pleural effusion".into()],
        };
        let count = |mix: &TaskMix| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let (mut ground, mut full) = (0, 0);
            for _ in 0..2000 {
                let s = make_sample(&img, &Augment::none(), mix, None, &mut rng);
                if let Instruction::Ground(p) = &s.turn.instruction {
                    ground += 1;
                    full += usize::from(p == "left lower zone effusion");
                }
            }
            (ground, full)
        };
        let (g, f) = count(&TaskMix::default());
        assert!(
            (900..1100).contains(&g) && (400..600).contains(&f),
            "{g} {f}"
        );
        let (g, f) = count(&TaskMix {
            grounding: 1.0,
            full_phrase: 1.0,
            ..TaskMix::default()
        });
        assert_eq!((g, f), (2000, 2000));
        let (g, _) = count(&TaskMix {
            grounding: 0.0,
            full_phrase: 1.0,
            ..TaskMix::default()
        });
        assert_eq!(g, 0);
        assert!(TaskMix {
            grounding: 1.5,
            full_phrase: 0.5,
            ..TaskMix::default()
        }
        .check()
        .is_err());
        assert!(TaskMix {
            in_context: 0.5,
            max_shots: 0,
            ..TaskMix::default()
        }
        .check()
        .is_err());
    }
}
