//! Box fusion of a grounding answer with the boxes of retrieved solved cases: the cheaper
//! alternative to in-context grounding that the LoFi spec names (weighted boxes fusion, IoU
//! threshold 0.1). Everything here works in the letterboxed model square (0–1).

use super::prompt::UnitBox;

/// IoU above which a retrieved case's box joins a predicted box.
pub const FUSION_IOU: f32 = 0.1;

/// Intersection over union of two `[x1, y1, x2, y2]` boxes in any one coordinate system (0 for
/// degenerate boxes). The evaluation's IoU is this one.
pub fn unit_iou(a: UnitBox, b: UnitBox) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: UnitBox| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Fuse each predicted box with the retrieved cases: from every case (one slice of boxes each),
/// the box overlapping the prediction most joins it when their IoU reaches [`FUSION_IOU`]; the
/// result is the mean of the prediction and the boxes that joined, each counted once. The
/// prediction decides where (a case with no box near it adds nothing, and with no prediction
/// there is no answer); the cases refine the extent. Scores are kept.
pub fn fuse_with_cases(pred: &[(UnitBox, f32)], cases: &[Vec<UnitBox>]) -> Vec<(UnitBox, f32)> {
    pred.iter()
        .map(|(p, score)| {
            let mut sum = *p;
            let mut n = 1.0f32;
            for case in cases {
                let best = case
                    .iter()
                    .map(|c| (unit_iou(*p, *c), *c))
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                if let Some((iou, c)) = best {
                    if iou >= FUSION_IOU {
                        for k in 0..4 {
                            sum[k] += c[k];
                        }
                        n += 1.0;
                    }
                }
            }
            (sum.map(|v| v / n), *score)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_hand_computed() {
        assert!((unit_iou([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25]) - 0.5).abs() < 1e-6);
        assert_eq!(unit_iou([0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3]), 0.0);
        assert_eq!(unit_iou([0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]), 0.0);
    }

    #[test]
    fn fusion_averages_the_overlapping_case_boxes_only() {
        let pred = vec![([0.2, 0.2, 0.4, 0.4], 0.7)];
        let cases = vec![
            // overlaps (IoU 0.6): joins
            vec![[0.2, 0.2, 0.4, 0.32], [0.7, 0.7, 0.9, 0.9]],
            // far away: adds nothing
            vec![[0.6, 0.6, 0.8, 0.8]],
            // two candidates: only the better-overlapping one joins
            vec![[0.3, 0.3, 0.5, 0.5], [0.2, 0.2, 0.4, 0.44]],
            // no boxes
            vec![],
        ];
        let out = fuse_with_cases(&pred, &cases);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 0.7);
        let expect = [0.2, 0.2, 0.4, (0.4 + 0.32 + 0.44) / 3.0];
        for (got, want) in out[0].0.iter().zip(expect) {
            assert!((got - want).abs() < 1e-6, "{:?}", out[0].0);
        }
        // nothing predicted: nothing to fuse
        assert!(fuse_with_cases(&[], &cases).is_empty());
        // no cases: the prediction unchanged
        assert_eq!(fuse_with_cases(&pred, &[]), pred);
    }
}
