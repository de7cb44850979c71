//! Retrieval metrics over L2-normalised embeddings: label precision@k, same-patient recall@k,
//! text→image precision@k.

use serde::Serialize;

/// Cosine similarity of normalised vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Indices of the `k` nearest items to `q` (excluding `skip`), best first.
pub fn nearest(q: &[f32], items: &[Vec<f32>], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut s: Vec<(f32, usize)> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(i, v)| (dot(q, v), i))
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Mean over queries of the share of the `k` nearest other images sharing ≥ 1 label.
pub fn label_precision_at(emb: &[Vec<f32>], labels: &[Vec<String>], k: usize) -> f64 {
    if emb.len() < 2 {
        return 0.0;
    }
    let mut s = 0.0;
    for (i, q) in emb.iter().enumerate() {
        let nn = nearest(q, emb, k, Some(i));
        let hit = nn
            .iter()
            .filter(|&&j| labels[j].iter().any(|l| labels[i].contains(l)))
            .count();
        s += hit as f64 / nn.len().max(1) as f64;
    }
    s / emb.len() as f64
}

/// Share of queries (whose patient has other images) that retrieve one of them in the top `k`.
pub fn same_patient_recall_at(emb: &[Vec<f32>], patients: &[String], k: usize) -> f64 {
    let mut n = 0;
    let mut hit = 0;
    for (i, q) in emb.iter().enumerate() {
        if !patients
            .iter()
            .enumerate()
            .any(|(j, p)| j != i && *p == patients[i])
        {
            continue;
        }
        n += 1;
        if nearest(q, emb, k, Some(i))
            .iter()
            .any(|&j| patients[j] == patients[i])
        {
            hit += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        hit as f64 / n as f64
    }
}

/// Mean over findings of the share of the `k` images nearest to the finding's text that carry it.
pub fn text_to_image_precision_at(
    text_emb: &[(String, Vec<f32>)],
    emb: &[Vec<f32>],
    carries: &dyn Fn(usize, &str) -> bool,
    k: usize,
) -> f64 {
    if text_emb.is_empty() {
        return 0.0;
    }
    let mut s = 0.0;
    for (finding, t) in text_emb {
        let nn = nearest(t, emb, k, None);
        s += nn.iter().filter(|&&j| carries(j, finding)).count() as f64 / nn.len().max(1) as f64;
    }
    s / text_emb.len() as f64
}

/// Area under the ROC curve of `scores` for `positive` labels (ties count half); `None` when
/// one class is absent.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// What a random ranking scores on the same data: the expected label precision@k (the mean
/// share of other images sharing a label), same-patient recall@k (1 − C(N−1−m, k)/C(N−1, k)
/// for a query with m other images of its patient) and, per finding, text→image precision (its
/// base rate).
pub fn chance_levels(
    labels: &[Vec<String>],
    patients: &[String],
    base_rates: &[f64],
    k: usize,
) -> RetrievalScore {
    let n = labels.len();
    if n < 2 {
        return RetrievalScore::default();
    }
    let mut lp = 0.0;
    for i in 0..n {
        let share = (0..n)
            .filter(|&j| j != i && labels[j].iter().any(|l| labels[i].contains(l)))
            .count() as f64
            / (n - 1) as f64;
        lp += share;
    }
    // P(none of the m partners among k draws without replacement from n − 1)
    let miss = |m: usize| -> f64 {
        let mut p = 1.0;
        for t in 0..k.min(n - 1) {
            let left = (n - 1 - t) as f64;
            p *= ((left - m as f64) / left).max(0.0);
        }
        p
    };
    let (mut sr, mut sn) = (0.0, 0);
    for i in 0..n {
        let m = (0..n)
            .filter(|&j| j != i && patients[j] == patients[i])
            .count();
        if m > 0 {
            sr += 1.0 - miss(m);
            sn += 1;
        }
    }
    RetrievalScore {
        label_p10: lp / n as f64,
        same_patient_r5: if sn == 0 { 0.0 } else { sr / sn as f64 },
        t2i_p10: (!base_rates.is_empty())
            .then(|| base_rates.iter().sum::<f64>() / base_rates.len() as f64),
    }
}

/// The retrieval block of `eval`'s output.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct RetrievalScore {
    /// Label precision@10.
    #[serde(rename = "label_p@10")]
    pub label_p10: f64,
    /// Same-patient recall@5.
    #[serde(rename = "same_patient_r@5")]
    pub same_patient_r5: f64,
    /// Text→image precision@10 (absent for embeddings without a text side).
    #[serde(rename = "t2i_p@10", skip_serializing_if = "Option::is_none")]
    pub t2i_p10: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn hand_made_retrieval() {
        let emb = vec![
            e(&[1.0, 0.0]),
            e(&[0.9, 0.1]),
            e(&[0.0, 1.0]),
            e(&[0.1, 0.9]),
        ];
        let labels: Vec<Vec<String>> = vec![
            vec!["a".into()],
            vec!["a".into()],
            vec!["b".into()],
            vec!["a".into()],
        ];
        // k = 1: 0→1 (a,a ✓), 1→0 ✓, 2→3 (b vs a ✗), 3→2 ✗
        assert!((label_precision_at(&emb, &labels, 1) - 0.5).abs() < 1e-9);
        let pats: Vec<String> = vec!["p".into(), "q".into(), "p".into(), "r".into()];
        // only images 0 and 2 have a same-patient partner; at k = 1 neither finds it
        assert_eq!(same_patient_recall_at(&emb, &pats, 1), 0.0);
        // at k = 3 both do
        assert_eq!(same_patient_recall_at(&emb, &pats, 3), 1.0);
        let carries = |j: usize, f: &str| labels[j].iter().any(|l| l == f);
        let t = vec![
            ("a".to_string(), e(&[1.0, 0.0])),
            ("b".to_string(), e(&[0.0, 1.0])),
        ];
        // a: nearest 2 = {0, 1} both a → 1; b: {2, 3} one b → 0.5
        assert!((text_to_image_precision_at(&t, &emb, &carries, 2) - 0.75).abs() < 1e-9);
        // random ranking: image 0 shares "a" with 1 and 3 of 3 others (2/3), 1 likewise, 2
        // with none, 3 with 0 and 1 (2/3) → 0.5; patients: image 0 and 2 each have one partner
        // among 3 others, found in a random single draw with probability 1/3
        let c = chance_levels(&labels, &pats, &[0.75, 0.25], 1);
        assert!((c.label_p10 - 0.5).abs() < 1e-9);
        assert!((c.same_patient_r5 - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.t2i_p10, Some(0.5));
    }

    #[test]
    fn auroc_by_hand() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        // one positive tied with one negative: half a pair
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        // positives 0.4, 0.8 against negatives 0.3, 0.6: 3 of 4 pairs ordered
        assert_eq!(
            auroc(&[0.4, 0.8, 0.3, 0.6], &[true, true, false, false]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.4], &[true]), None);
    }
}
