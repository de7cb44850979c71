//! Grounding metrics: IoU of the top box, accuracy at IoU thresholds, F1@0.5 with one-to-one
//! greedy matching, per finding.

use std::collections::BTreeMap;

use serde::Serialize;

/// `[x1, y1, x2, y2]` in pixels.
pub type PxBox = [f32; 4];

/// Intersection over union (0 for degenerate boxes).
pub fn iou(a: PxBox, b: PxBox) -> f32 {
    crate::model::fusion::unit_iou(a, b)
}

/// Number of one-to-one matches with IoU ≥ `t`, pairing the highest IoUs first.
pub fn greedy_matches(pred: &[PxBox], gt: &[PxBox], t: f32) -> usize {
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (i, p) in pred.iter().enumerate() {
        for (j, g) in gt.iter().enumerate() {
            let v = iou(*p, *g);
            if v >= t {
                pairs.push((v, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut used_p, mut used_g) = (vec![false; pred.len()], vec![false; gt.len()]);
    let mut n = 0;
    for (_, i, j) in pairs {
        if !used_p[i] && !used_g[j] {
            used_p[i] = true;
            used_g[j] = true;
            n += 1;
        }
    }
    n
}

/// One grounding query's outcome.
#[derive(Debug, Clone)]
pub struct Query {
    /// Finding class of the query region.
    pub finding: String,
    /// Predicted boxes, best first.
    pub pred: Vec<PxBox>,
    /// Ground-truth boxes of the same phrase in that image.
    pub gt: Vec<PxBox>,
}

impl Query {
    /// IoU of the top-scoring prediction with the best-matching ground-truth box (0 if none).
    pub fn top_iou(&self) -> f32 {
        match self.pred.first() {
            Some(p) => self.gt.iter().map(|g| iou(*p, *g)).fold(0.0, f32::max),
            None => 0.0,
        }
    }
}

/// Per-finding summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FindingScore {
    /// Queries.
    pub n: usize,
    /// Mean IoU.
    pub miou: f64,
    /// Share with IoU ≥ 0.5.
    #[serde(rename = "acc@0.5")]
    pub acc50: f64,
}

/// The grounding block of `eval`'s output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroundingScore {
    /// Queries.
    pub n: usize,
    /// Mean IoU of the top box.
    pub miou: f64,
    /// Accuracy at IoU 0.1.
    #[serde(rename = "acc@0.1")]
    pub acc10: f64,
    /// Accuracy at IoU 0.3.
    #[serde(rename = "acc@0.3")]
    pub acc30: f64,
    /// Accuracy at IoU 0.5.
    #[serde(rename = "acc@0.5")]
    pub acc50: f64,
    /// F1 at IoU 0.5 over all boxes, one-to-one greedy matching (micro-averaged).
    #[serde(rename = "f1@0.5")]
    pub f1_50: f64,
    /// Per finding.
    pub per_finding: BTreeMap<String, FindingScore>,
}

/// Score a set of queries.
pub fn score(queries: &[Query]) -> GroundingScore {
    let n = queries.len();
    let ious: Vec<f32> = queries.iter().map(Query::top_iou).collect();
    let mean = |v: &[f32]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
        }
    };
    let acc = |v: &[f32], t: f32| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|x| **x >= t).count() as f64 / v.len() as f64
        }
    };
    let (mut tp, mut np, mut ng) = (0usize, 0usize, 0usize);
    for q in queries {
        tp += greedy_matches(&q.pred, &q.gt, 0.5);
        np += q.pred.len();
        ng += q.gt.len();
    }
    let f1 = if np + ng > 0 {
        2.0 * tp as f64 / (np + ng) as f64
    } else {
        0.0
    };
    let mut per: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (q, i) in queries.iter().zip(&ious) {
        per.entry(q.finding.clone()).or_default().push(*i);
    }
    GroundingScore {
        n,
        miou: mean(&ious),
        acc10: acc(&ious, 0.1),
        acc30: acc(&ious, 0.3),
        acc50: acc(&ious, 0.5),
        f1_50: f1,
        per_finding: per
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    FindingScore {
                        n: v.len(),
                        miou: mean(&v),
                        acc50: acc(&v, 0.5),
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_hand_made() {
        assert_eq!(iou([0., 0., 2., 2.], [0., 0., 2., 2.]), 1.0);
        assert!((iou([0., 0., 2., 2.], [1., 0., 3., 2.]) - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(iou([0., 0., 1., 1.], [2., 2., 3., 3.]), 0.0);
        assert_eq!(iou([0., 0., 0., 0.], [0., 0., 0., 0.]), 0.0);
    }

    #[test]
    fn greedy_is_one_to_one() {
        // two predictions overlap the same ground truth: only one may match
        let gt = [[0., 0., 10., 10.]];
        let pred = [[0., 0., 10., 9.], [0., 0., 10., 8.]];
        assert_eq!(greedy_matches(&pred, &gt, 0.5), 1);
        // best pairs first: p0↔g1 (1.0) leaves p1↔g0
        let gt = [[0., 0., 10., 10.], [20., 0., 30., 10.]];
        let pred = [[20., 0., 30., 10.], [0., 0., 10., 10.]];
        assert_eq!(greedy_matches(&pred, &gt, 0.5), 2);
    }

    #[test]
    fn score_hand_made() {
        let q = vec![
            Query {
                finding: "A".into(),
                pred: vec![[0., 0., 2., 2.]],
                gt: vec![[0., 0., 2., 2.]],
            },
            Query {
                finding: "A".into(),
                pred: vec![[1., 0., 3., 2.]],
                gt: vec![[0., 0., 2., 2.]],
            },
            Query {
                finding: "B".into(),
                pred: vec![],
                gt: vec![[0., 0., 2., 2.]],
            },
            Query {
                finding: "B".into(),
                pred: vec![[5., 5., 6., 6.], [0., 0., 2., 2.]],
                gt: vec![[0., 0., 2., 2.]],
            },
        ];
        let s = score(&q);
        assert_eq!(s.n, 4);
        // top IoUs: 1, 1/3, 0, 0
        assert!((s.miou - (1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-6);
        assert!((s.acc10 - 0.5).abs() < 1e-9);
        assert!((s.acc30 - 0.5).abs() < 1e-9);
        assert!((s.acc50 - 0.25).abs() < 1e-9);
        // matches at 0.5: q0 1, q1 0, q2 0, q3 1 → tp 2; preds 4, gts 4 → F1 = 4/8
        assert!((s.f1_50 - 0.5).abs() < 1e-9);
        assert_eq!(s.per_finding["A"].n, 2);
        assert!((s.per_finding["B"].miou - 0.0).abs() < 1e-9);
    }
}
