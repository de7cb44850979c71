//! `eval`: grounding and retrieval metrics of a model on a manifest (interface.md), with the
//! lookup-table and raw-pixel baselines and optional in-context shots.

pub mod baselines;
pub mod grounding;
pub mod probe;
pub mod retrieval;

use std::path::Path;

use serde_json::{json, Value};

use crate::manifest::{label_phrase, Manifest, Record};
use crate::model::tasks::{EncodedImage, Shot};
use crate::model::{Lofi, ModelError};

use self::baselines::{thumbnail_vector, Priors};
use self::grounding::{score, PxBox, Query};
use self::retrieval::{
    label_precision_at, same_patient_recall_at, text_to_image_precision_at, RetrievalScore,
};

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An image could not be read.
    #[error("{path}: {source}")]
    Image {
        /// File.
        path: String,
        /// Why.
        source: crate::dicom::DicomError,
    },
    /// Nothing to evaluate.
    #[error("the manifest has no images")]
    Empty,
}

/// Which phrase of each region is the grounding query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PhraseField {
    /// `phrase` (may carry side/zone words).
    #[default]
    Phrase,
    /// `phrase_basic` (no location words).
    PhraseBasic,
}

impl std::str::FromStr for PhraseField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "phrase" => Ok(Self::Phrase),
            "phrase_basic" => Ok(Self::PhraseBasic),
            o => Err(format!(
                "unknown phrase field {o:?} (phrase or phrase_basic)"
            )),
        }
    }
}

fn phrase_of(r: &crate::manifest::Region, f: PhraseField) -> String {
    match f {
        PhraseField::Phrase => r.phrase.clone(),
        PhraseField::PhraseBasic => r
            .phrase_basic
            .clone()
            .unwrap_or_else(|| label_phrase(r.finding.as_deref().unwrap_or(&r.phrase))),
    }
}

fn finding_of(r: &crate::manifest::Region) -> String {
    r.finding.clone().unwrap_or_else(|| r.phrase.clone())
}

/// How retrieved solved cases take part in grounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShotMode {
    /// As solved examples in the decoder prompt (in-context grounding).
    #[default]
    Prompt,
    /// Fused with the answer to the plain prompt (boxes within IoU 0.1 averaged in).
    Fuse,
}

impl std::str::FromStr for ShotMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prompt" => Ok(Self::Prompt),
            "fuse" => Ok(Self::Fuse),
            o => Err(format!("unknown shot mode `{o}` (prompt or fuse)")),
        }
    }
}

/// Options of one evaluation.
#[derive(Default)]
pub struct EvalOptions<'a> {
    /// Query field.
    pub phrase_field: PhraseField,
    /// In-context examples per query.
    pub shots: usize,
    /// Annotated cases the shots are drawn from (nearest by LoFi image embedding, same finding).
    pub shot_pool: Option<&'a Manifest>,
    /// How the shots are used.
    pub shot_mode: ShotMode,
    /// Training manifest for the lookup-table baselines.
    pub baseline_from: Option<&'a Manifest>,
    /// L2 penalties of the presence linear probe (the first is the headline figure).
    pub probe_l2: Vec<f64>,
    /// Progress callback (done, total).
    pub progress: Option<&'a dyn Fn(usize, usize)>,
}

fn load(m: &Manifest, r: &Record) -> Result<image::GrayImage, EvalError> {
    let p = m.image_path(r);
    crate::dicom::load_gray8(&p).map_err(|source| EvalError::Image {
        path: p.display().to_string(),
        source,
    })
}

/// Encoded images of a manifest (batches of 8).
pub fn encode_all(
    lofi: &Lofi,
    m: &Manifest,
    progress: &dyn Fn(usize),
) -> Result<(Vec<image::GrayImage>, Vec<EncodedImage>), EvalError> {
    let mut imgs = Vec::with_capacity(m.records.len());
    let mut enc = Vec::with_capacity(m.records.len());
    for chunk in m.records.chunks(8) {
        let batch: Vec<image::GrayImage> =
            chunk.iter().map(|r| load(m, r)).collect::<Result<_, _>>()?;
        let refs: Vec<&image::GrayImage> = batch.iter().collect();
        enc.extend(lofi.encode_batch(&refs)?);
        imgs.extend(batch);
        progress(enc.len());
    }
    Ok((imgs, enc))
}

/// A pool of solved grounding examples.
pub struct ShotPool {
    items: Vec<(EncodedImage, Record)>,
    field: PhraseField,
}

impl ShotPool {
    /// Encode the annotated records of a manifest.
    pub fn new(lofi: &Lofi, m: &Manifest, field: PhraseField) -> Result<Self, EvalError> {
        let annotated = Manifest {
            base: m.base.clone(),
            records: m
                .records
                .iter()
                .filter(|r| !r.regions.is_empty())
                .cloned()
                .collect(),
        };
        let (_, enc) = encode_all(lofi, &annotated, &|_| {})?;
        Ok(Self {
            items: enc.into_iter().zip(annotated.records).collect(),
            field,
        })
    }

    /// Wrap already-encoded cases.
    pub fn from_encoded(items: Vec<(EncodedImage, Record)>, field: PhraseField) -> Self {
        Self { items, field }
    }

    /// The `k` nearest cases (by image embedding) that show `finding`, as solved examples.
    pub fn shots(
        &self,
        query: &EncodedImage,
        finding: &str,
        k: usize,
        exclude_patient: Option<&str>,
    ) -> Vec<Shot> {
        let mut cands: Vec<(f32, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| r.regions.iter().any(|g| finding_of(g) == finding))
            .filter(|(_, (_, r))| {
                exclude_patient.is_none() || r.patient_id.as_deref() != exclude_patient
            })
            .map(|(i, (e, _))| (retrieval::dot(&query.embedding, &e.embedding), i))
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        cands
            .into_iter()
            .take(k)
            .filter_map(|(_, i)| {
                let (e, r) = &self.items[i];
                let g = r.regions.iter().find(|g| finding_of(g) == finding)?;
                let phrase = phrase_of(g, self.field);
                let boxes = r
                    .regions
                    .iter()
                    .filter(|o| phrase_of(o, self.field) == phrase)
                    .map(|o| o.bbox)
                    .collect();
                Some(Shot {
                    image: e.clone(),
                    phrase,
                    boxes_px: boxes,
                })
            })
            .collect()
    }
}

/// Every finding with boxes in `data`, in first-seen order, with its `phrase_basic` text.
fn findings_with_texts(data: &Manifest) -> Vec<(String, String)> {
    let mut findings: Vec<(String, String)> = Vec::new();
    for r in &data.records {
        for g in &r.regions {
            let f = finding_of(g);
            if !findings.iter().any(|(x, _)| *x == f) {
                findings.push((f.clone(), phrase_of(g, PhraseField::PhraseBasic)));
            }
        }
    }
    findings
}

fn retrieval_labels(r: &Record) -> Vec<String> {
    if r.labels.is_empty() {
        vec!["No Finding".into()]
    } else {
        r.labels.iter().map(|l| label_phrase(l)).collect()
    }
}

/// Evaluate `lofi` on `data`.
pub fn evaluate(lofi: &Lofi, data: &Manifest, opts: &EvalOptions<'_>) -> Result<Value, EvalError> {
    if data.records.is_empty() {
        return Err(EvalError::Empty);
    }
    let n_queries = data.region_count();
    let total = data.records.len() + n_queries;
    let report = |d: usize| {
        if let Some(p) = opts.progress {
            p(d, total);
        }
    };
    let (imgs, enc) = encode_all(lofi, data, &|d| report(d))?;
    let pool = match (opts.shots, opts.shot_pool) {
        (0, _) => None,
        (_, Some(m)) => Some(ShotPool::new(lofi, m, opts.phrase_field)?),
        (_, None) => None,
    };
    // grounding
    let mut queries = Vec::with_capacity(n_queries);
    let mut done = data.records.len();
    for (ri, r) in data.records.iter().enumerate() {
        for g in &r.regions {
            let phrase = phrase_of(g, opts.phrase_field);
            let gt: Vec<PxBox> = r
                .regions
                .iter()
                .filter(|o| phrase_of(o, opts.phrase_field) == phrase)
                .map(|o| o.bbox)
                .collect();
            let shots = match &pool {
                Some(p) => p.shots(
                    &enc[ri],
                    &finding_of(g),
                    opts.shots,
                    r.patient_id.as_deref(),
                ),
                None => Vec::new(),
            };
            let answer = match opts.shot_mode {
                ShotMode::Prompt => lofi.ground(&enc[ri], &phrase, &shots)?,
                ShotMode::Fuse => lofi.ground_fused(&enc[ri], &phrase, &shots)?,
            };
            let pred: Vec<PxBox> = answer
                .into_iter()
                .map(|b| [b.x1, b.y1, b.x2, b.y2])
                .collect();
            queries.push(Query {
                finding: finding_of(g),
                pred,
                gt,
            });
            done += 1;
            report(done);
        }
    }
    // retrieval
    let emb: Vec<Vec<f32>> = enc.iter().map(|e| e.embedding.clone()).collect();
    let labels: Vec<Vec<String>> = data.records.iter().map(retrieval_labels).collect();
    let patients: Vec<String> = data
        .records
        .iter()
        .map(|r| r.patient_id.clone().unwrap_or_else(|| r.image.clone()))
        .collect();
    let findings = findings_with_texts(data);
    let text_emb: Vec<(String, Vec<f32>)> = findings
        .iter()
        .map(|(f, t)| Ok((f.clone(), lofi.embed_text(t)?)))
        .collect::<Result<_, ModelError>>()?;
    let carries = |j: usize, f: &str| labels[j].contains(&label_phrase(f));
    let retrieval = RetrievalScore {
        label_p10: label_precision_at(&emb, &labels, 10),
        same_patient_r5: same_patient_recall_at(&emb, &patients, 5),
        t2i_p10: Some(text_to_image_precision_at(&text_emb, &emb, &carries, 10)),
    };
    let base_rates: Vec<f64> = findings
        .iter()
        .map(|(f, _)| (0..emb.len()).filter(|&j| carries(j, f)).count() as f64 / emb.len() as f64)
        .collect();
    let chance = retrieval::chance_levels(&labels, &patients, &base_rates, 10);
    let chance_r5 = retrieval::chance_levels(&labels, &patients, &base_rates, 5).same_patient_r5;
    // presence: every image asked for each finding's phrase_basic text; a finding the image
    // carries is a positive, any other a negative
    let (scale, bias) = lofi.sigmoid_params()?;
    let mut per_finding = serde_json::Map::new();
    let mut aurocs = Vec::new();
    for (f, t) in &text_emb {
        let scores: Vec<f32> = emb
            .iter()
            .map(|e| 1.0 / (1.0 + (-(scale * retrieval::dot(e, t) + bias)).exp()))
            .collect();
        let pos: Vec<bool> = (0..emb.len()).map(|j| carries(j, f)).collect();
        if let Some(a) = retrieval::auroc(&scores, &pos) {
            aurocs.push(a);
            per_finding.insert(
                f.clone(),
                json!({"auroc": a, "n_pos": pos.iter().filter(|&&p| p).count()}),
            );
        }
    }
    let presence = json!({
        "auroc": if aurocs.is_empty() { Value::Null } else { json!(aurocs.iter().sum::<f64>() / aurocs.len() as f64) },
        "chance": 0.5,
        "threshold": lofi.config().presence_threshold,
        "per_finding": per_finding,
    });
    let mut out = json!({
        "model": lofi.model_id(),
        "n_images": data.records.len(),
        "phrase_field": match opts.phrase_field { PhraseField::Phrase => "phrase", PhraseField::PhraseBasic => "phrase_basic" },
        "shots": opts.shots,
        "shot_mode": match opts.shot_mode { ShotMode::Prompt => "prompt", ShotMode::Fuse => "fuse" },
        "grounding": score(&queries),
        "retrieval": retrieval,
        "retrieval_chance": {"label_p@10": chance.label_p10, "same_patient_r@5": chance_r5,
                             "t2i_p@10": chance.t2i_p10},
        "presence": presence,
    });
    // baselines
    let raw: Vec<Vec<f32>> = imgs.iter().map(thumbnail_vector).collect();
    let mut base = serde_json::Map::new();
    base.insert(
        "raw_pixels_32".into(),
        json!({"retrieval": RetrievalScore {
            label_p10: label_precision_at(&raw, &labels, 10),
            same_patient_r5: same_patient_recall_at(&raw, &patients, 5),
            t2i_p10: None,
        }}),
    );
    if let Some(train) = opts.baseline_from {
        out["presence"]["linear_probe"] =
            presence_probe(lofi, train, &enc, &findings, &carries, &opts.probe_l2)?;
        let priors = priors_from(train)?;
        for (name, phrase_level) in [("class_prior", false), ("phrase_prior", true)] {
            let mut qs = Vec::with_capacity(n_queries);
            for (ri, r) in data.records.iter().enumerate() {
                let (w, h) = (imgs[ri].width() as f64, imgs[ri].height() as f64);
                for g in &r.regions {
                    let phrase = phrase_of(g, opts.phrase_field);
                    let f = finding_of(g);
                    let nb = if phrase_level {
                        priors.phrase_prior(&f, &phrase)
                    } else {
                        priors.class_prior(&f)
                    };
                    let pred = nb
                        .map(|b| {
                            vec![[
                                (b[0] * w) as f32,
                                (b[1] * h) as f32,
                                (b[2] * w) as f32,
                                (b[3] * h) as f32,
                            ]]
                        })
                        .unwrap_or_default();
                    let gt = r
                        .regions
                        .iter()
                        .filter(|o| phrase_of(o, opts.phrase_field) == phrase)
                        .map(|o| o.bbox)
                        .collect();
                    qs.push(Query {
                        finding: f,
                        pred,
                        gt,
                    });
                }
            }
            base.insert(name.into(), json!({"grounding": score(&qs)}));
        }
    }
    out["baselines"] = Value::Object(base);
    Ok(out)
}

/// The presence baseline: per finding, a logistic regression on the backbone's mean-pooled
/// patch features of `train`, scored on the evaluated images `enc` (AUROC per finding and mean).
fn presence_probe(
    lofi: &Lofi,
    train: &Manifest,
    enc: &[EncodedImage],
    findings: &[(String, String)],
    carries: &dyn Fn(usize, &str) -> bool,
    l2s: &[f64],
) -> Result<Value, EvalError> {
    let (_, train_enc) = encode_all(lofi, train, &|_| {})?;
    let train_labels: Vec<Vec<String>> = train.records.iter().map(retrieval_labels).collect();
    let rows: Vec<Vec<f32>> = train_enc.iter().map(|e| e.backbone_mean.clone()).collect();
    let st = probe::Standardiser::fit(&rows);
    let x: Vec<Vec<f64>> = rows.iter().map(|r| st.apply(r)).collect();
    let xe: Vec<Vec<f64>> = enc.iter().map(|e| st.apply(&e.backbone_mean)).collect();
    let mut runs = Vec::new();
    for &l2 in if l2s.is_empty() { &[0.1][..] } else { l2s } {
        let settings = probe::ProbeSettings {
            l2,
            ..Default::default()
        };
        let mut per_finding = serde_json::Map::new();
        let mut aurocs = Vec::new();
        for (f, _) in findings {
            let y: Vec<bool> = train_labels
                .iter()
                .map(|l| l.contains(&label_phrase(f)))
                .collect();
            if !y.iter().any(|&p| p) {
                continue;
            }
            let p = probe::LinearProbe::fit(&x, &y, settings);
            let scores: Vec<f32> = xe.iter().map(|r| p.score(r) as f32).collect();
            let pos: Vec<bool> = (0..enc.len()).map(|j| carries(j, f)).collect();
            // on its own training rows too: how well the probe fits at all
            let fit_scores: Vec<f32> = x.iter().map(|r| p.score(r) as f32).collect();
            let fit = retrieval::auroc(&fit_scores, &y);
            if let Some(a) = retrieval::auroc(&scores, &pos) {
                aurocs.push(a);
                per_finding.insert(f.clone(), json!({"auroc": a, "fit_auroc": fit}));
            }
        }
        let mean = if aurocs.is_empty() {
            Value::Null
        } else {
            json!(aurocs.iter().sum::<f64>() / aurocs.len() as f64)
        };
        runs.push(
            json!({"l2": l2, "steps": settings.steps, "auroc": mean, "per_finding": per_finding}),
        );
    }
    let mut head = runs.first().cloned().unwrap_or(Value::Null);
    head["features"] =
        json!("backbone patch tokens, mean-pooled, standardised on the baseline manifest");
    head["fit_on"] = json!(train.records.len());
    if runs.len() > 1 {
        head["runs"] = Value::Array(runs);
    }
    Ok(head)
}

/// Image size without decoding pixels where the format allows.
pub fn image_size(path: &Path) -> Result<(u32, u32), EvalError> {
    if let Ok(d) = image::image_dimensions(path) {
        return Ok(d);
    }
    let f = crate::dicom::object::open(path).map_err(|source| EvalError::Image {
        path: path.display().to_string(),
        source,
    })?;
    Ok((f.info.columns, f.info.rows))
}

/// Lookup tables from a training manifest.
pub fn priors_from(train: &Manifest) -> Result<Priors, EvalError> {
    let mut p = Priors::default();
    for r in &train.records {
        if r.regions.is_empty() {
            continue;
        }
        let (w, h) = image_size(&train.image_path(r))?;
        let (w, h) = (w.max(1) as f64, h.max(1) as f64);
        for g in &r.regions {
            let b = g.bbox;
            p.add(
                &finding_of(g),
                &g.phrase,
                [
                    b[0] as f64 / w,
                    b[1] as f64 / h,
                    b[2] as f64 / w,
                    b[3] as f64 / h,
                ],
            );
        }
    }
    Ok(p)
}

/// The presence threshold that best separates, on `data` (a development slice), the images that
/// carry a finding from those that do not, over every (image, finding's `phrase_basic` text)
/// pair: the score maximising Youden's J = TPR − FPR (ties: the lower score). Returns it with
/// the TPR and FPR it gives.
pub fn calibrate_presence(
    lofi: &Lofi,
    data: &Manifest,
    progress: &dyn Fn(usize),
) -> Result<Value, EvalError> {
    if data.records.is_empty() {
        return Err(EvalError::Empty);
    }
    let (_, enc) = encode_all(lofi, data, progress)?;
    let labels: Vec<Vec<String>> = data.records.iter().map(retrieval_labels).collect();
    let findings = findings_with_texts(data);
    let (scale, bias) = lofi.sigmoid_params()?;
    let mut pairs: Vec<(f32, bool)> = Vec::new();
    for (f, t) in &findings {
        let te = lofi.embed_text(t)?;
        for (j, e) in enc.iter().enumerate() {
            let s = 1.0 / (1.0 + (-(scale * retrieval::dot(&e.embedding, &te) + bias)).exp());
            pairs.push((s, labels[j].contains(&label_phrase(f))));
        }
    }
    let n_pos = pairs.iter().filter(|p| p.1).count();
    let n_neg = pairs.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(EvalError::Empty);
    }
    // sweep thresholds from high to low: at each distinct score, everything ≥ it is "present"
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best = (f64::MIN, 1.0f32, 0.0, 0.0);
    let mut i = 0;
    while i < pairs.len() {
        let s = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == s {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let (tpr, fpr) = (tp as f64 / n_pos as f64, fp as f64 / n_neg as f64);
        if tpr - fpr > best.0 {
            best = (tpr - fpr, s, tpr, fpr);
        }
    }
    Ok(
        json!({"threshold": best.1, "youden_j": best.0, "tpr": best.2, "fpr": best.3,
              "pairs": pairs.len(), "positives": n_pos, "findings": findings.len(),
              "finding_phrases": findings.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
              "model": lofi.model_id()}),
    )
}
