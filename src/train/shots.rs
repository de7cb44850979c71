//! Retrieval-based in-context examples for training: per image and finding, the nearest training
//! images of other patients with that finding (by the pooled image embedding), and the solved
//! examples a grounding sample draws from them.

use rand::{Rng, RngCore};

use crate::model::prompt::{ground_response, Instruction, Turn, UnitBox};

use super::data::TrainImage;

/// Where a grounding sample's in-context examples come from.
#[derive(Debug, Clone, Copy)]
pub struct ShotContext<'a> {
    /// The training images.
    pub images: &'a [TrainImage],
    /// For every training image: per finding it shows, the training images of other patients
    /// with that finding, nearest first (see [`nearest_by_finding`]).
    pub neighbours: &'a [Vec<(String, Vec<usize>)>],
    /// Index of the sample's own image.
    pub index: usize,
}

/// For every image: per finding among its regions, up to `keep` other-patient images with the
/// same finding, nearest first by cosine of `embeddings` (one per image, any scale). Ties keep
/// the lower index first, so the result is deterministic.
pub fn nearest_by_finding(
    images: &[TrainImage],
    embeddings: &[Vec<f32>],
    keep: usize,
) -> Vec<Vec<(String, Vec<usize>)>> {
    let unit: Vec<Vec<f32>> = embeddings
        .iter()
        .map(|e| {
            let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            e.iter().map(|v| v / n).collect()
        })
        .collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let findings_of = |im: &TrainImage| {
        let mut f: Vec<String> = im.regions.iter().map(|r| r.finding.clone()).collect();
        f.sort();
        f.dedup();
        f
    };
    // the images showing each finding, so each query compares only with those
    let mut with: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for (j, im) in images.iter().enumerate() {
        for f in findings_of(im) {
            with.entry(f).or_default().push(j);
        }
    }
    images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            findings_of(im)
                .into_iter()
                .map(|f| {
                    let mut c: Vec<(f32, usize)> = with
                        .get(&f)
                        .map_or(&[][..], Vec::as_slice)
                        .iter()
                        .filter(|&&j| {
                            let o = &images[j];
                            j != i && (o.patient.is_none() || o.patient != im.patient)
                        })
                        .map(|&j| (dot(&unit[i], &unit[j]), j))
                        .collect();
                    c.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    (f, c.into_iter().take(keep).map(|(_, j)| j).collect())
                })
                .collect()
        })
        .collect()
}

/// Draw the solved examples of one grounding sample: K in 1..=`max_shots`, chosen among the 2K
/// nearest cases with the finding and given nearest first, each asked with the same kind of
/// phrase as the query (`by_finding`: finding-level words) and answered with all its boxes of
/// that phrase (or finding).
pub(crate) fn draw_shots(
    ctx: &ShotContext<'_>,
    finding: &str,
    by_finding: bool,
    max_shots: usize,
    rng: &mut dyn RngCore,
) -> Vec<(usize, Turn)> {
    let Some((_, cands)) = ctx
        .neighbours
        .get(ctx.index)
        .and_then(|n| n.iter().find(|(f, _)| f == finding))
    else {
        return Vec::new();
    };
    if cands.is_empty() || max_shots == 0 {
        return Vec::new();
    }
    let k = rng.random_range(1..=max_shots).min(cands.len());
    let pool = (2 * k).min(cands.len());
    let mut picked: Vec<usize> = rand::seq::index::sample(rng, pool, k).into_vec();
    picked.sort_unstable();
    picked
        .into_iter()
        .filter_map(|p| {
            let n = cands[p];
            let im = ctx.images.get(n)?;
            let g = im.regions.iter().find(|r| r.finding == finding)?;
            let phrase = if by_finding {
                g.phrase_basic.clone()
            } else {
                g.phrase.clone()
            };
            let boxes: Vec<UnitBox> = im
                .regions
                .iter()
                .filter(|o| {
                    if by_finding {
                        o.finding == finding
                    } else {
                        o.phrase == g.phrase
                    }
                })
                .map(|o| o.unit)
                .collect();
            Some((
                n,
                Turn {
                    instruction: Instruction::Ground(phrase),
                    response: Some(ground_response(&boxes)),
                    supervised: false,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image::Letterbox;
    use crate::train::data::{make_sample, Augment, TaskMix, UnitRegion};
    use image::GrayImage;
    use rand::SeedableRng;
    use std::path::PathBuf;

    fn case(patient: &str, regions: &[(&str, &str, UnitBox)]) -> TrainImage {
        TrainImage {
            letterbox: Letterbox::new(16, 16, 16),
            square: GrayImage::new(16, 16),
            text: "x".into(),
            report: None,
            labels_text: "x".into(),
            regions: regions
                .iter()
                .map(|(finding, phrase, unit)| UnitRegion {
                    phrase: (*phrase).into(),
                    phrase_basic: finding.to_lowercase(),
                    finding: (*finding).into(),
                    synonyms: vec![],
                    unit: *unit,
                })
                .collect(),
            path: PathBuf::from(format!("{patient}.png")),
            patient: Some(patient.into()),
            label_keys: Vec::new(),
        }
    }

    #[test]
    fn neighbours_are_other_patients_with_the_finding_nearest_first() {
        let e = "Effusion";
        let imgs = vec![
            case("1", &[(e, "left pleural effusion", [0.6, 0.6, 0.9, 0.9])]),
            case("1", &[(e, "left pleural effusion", [0.6, 0.6, 0.9, 0.9])]), // same patient
            case("2", &[(e, "right pleural effusion", [0.1, 0.6, 0.4, 0.9])]),
            case(
                "3",
                &[("Nodule", "left lower zone nodule", [0.6, 0.7, 0.7, 0.8])],
            ),
            case("4", &[(e, "left pleural effusion", [0.55, 0.6, 0.9, 0.95])]),
        ];
        // cosines from image 0: 1 and 3 are nearest but excluded (same patient, other finding)
        let emb = vec![
            vec![1.0, 0.0],
            vec![2.0, 0.1],
            vec![0.0, 1.0],
            vec![1.0, 0.2],
            vec![3.0, 1.5],
        ];
        let n = nearest_by_finding(&imgs, &emb, 8);
        assert_eq!(n[0], vec![(e.to_string(), vec![4, 2])]);
        assert_eq!(n[3], vec![("Nodule".to_string(), vec![])]);
        assert_eq!(n[2][0].1, vec![4, 1, 0]);
        assert_eq!(nearest_by_finding(&imgs, &emb, 1)[0][0].1, vec![4]);
    }

    #[test]
    fn in_context_samples_carry_solved_examples_and_leave_other_draws_alone() {
        let e = "Effusion";
        let imgs = vec![
            case("1", &[(e, "left pleural effusion", [0.6, 0.6, 0.9, 0.9])]),
            case("2", &[(e, "right pleural effusion", [0.1, 0.6, 0.4, 0.9])]),
            case(
                "3",
                &[
                    (e, "left pleural effusion", [0.55, 0.6, 0.9, 0.95]),
                    (e, "right pleural effusion", [0.05, 0.6, 0.3, 0.9]),
                ],
            ),
        ];
        let emb = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.1]];
        let neighbours = nearest_by_finding(&imgs, &emb, 8);
        let ctx = ShotContext {
            images: &imgs,
            neighbours: &neighbours,
            index: 0,
        };
        let mix = TaskMix {
            grounding: 1.0,
            full_phrase: 1.0,
            in_context: 1.0,
            max_shots: 2,
        };
        let (mut one, mut two) = (0, 0);
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let s = make_sample(&imgs[0], &Augment::none(), &mix, Some(&ctx), &mut rng);
            assert!(!s.shots.is_empty() && s.shots.len() <= 2);
            // nearest first: image 2 before image 1
            let order: Vec<usize> = s.shots.iter().map(|(n, _)| *n).collect();
            assert!(order == [2] || order == [1] || order == [2, 1], "{order:?}");
            for (n, t) in &s.shots {
                assert!(!t.supervised);
                let Instruction::Ground(p) = &t.instruction else {
                    panic!("not a grounding example")
                };
                // the example's own phrase, answered with its boxes of that phrase
                let want = if *n == 2 {
                    ("left pleural effusion", "```\n[[550,600,900,950]]\n```")
                } else {
                    ("right pleural effusion", "```\n[[100,600,400,900]]\n```")
                };
                assert_eq!((p.as_str(), t.response.as_deref()), (want.0, Some(want.1)));
            }
            one += usize::from(s.shots.len() == 1);
            two += usize::from(s.shots.len() == 2);
        }
        assert!(one > 50 && two > 50, "{one} {two}");
        // finding-level query: examples asked with finding-level words, all boxes of the finding
        let basic = TaskMix {
            full_phrase: 0.0,
            ..mix
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let s = (0..50)
            .map(|_| make_sample(&imgs[0], &Augment::none(), &basic, Some(&ctx), &mut rng))
            .find(|s| s.shots.iter().any(|(n, _)| *n == 2))
            .unwrap();
        let (_, t) = s.shots.iter().find(|(n, _)| *n == 2).unwrap();
        assert_eq!(
            t.response.as_deref(),
            Some("```\n[[50,600,300,900],[550,600,900,950]]\n```")
        );
        // in_context = 0: the same samples as without any context (same random stream)
        let plain = TaskMix {
            in_context: 0.0,
            ..mix
        };
        for seed in 0..20 {
            let a = make_sample(
                &imgs[0],
                &Augment::none(),
                &plain,
                Some(&ctx),
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            let b = make_sample(
                &imgs[0],
                &Augment::none(),
                &plain,
                None,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            );
            assert!(a.shots.is_empty());
            assert_eq!(a.turn, b.turn);
        }
    }
}
