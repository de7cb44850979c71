//! The AI commands (`ground`, `describe`, `findings`): thin edges over
//! [`crate::service::AiService`], printing the interface.md JSON.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::commands::{load_image, load_model, open_store};
use super::Cli;
use crate::model::tasks::EncodedImage;
use crate::service::{AiService, AiTask, NO_DESCRIPTION};
use crate::util::Cancel;

/// A service over the model alone, and the image encoded by it.
fn encoded(cli: &Cli, image: &Path) -> Result<(AiService, EncodedImage, Cancel)> {
    let svc = AiService::new(Arc::new(load_model(cli)?), None);
    let cancel = Cancel::new();
    let enc = svc.encode(&load_image(image)?, &cancel)?;
    Ok((svc, enc, cancel))
}

/// `ground`: boxes for a phrase, with the presence decision and in-context shots.
pub fn ground(cli: &Cli, image: &Path, phrase: &str, shots: usize) -> Result<Value> {
    let m = Arc::new(load_model(cli)?);
    let img = load_image(image)?;
    let t0 = std::time::Instant::now();
    let store = if shots > 0 {
        Some(Arc::from(open_store(cli, &m)?))
    } else {
        None
    };
    let svc = AiService::new(m.clone(), store.clone());
    let cancel = Cancel::new();
    let enc = svc.encode(&img, &cancel)?;
    let task = AiTask::Ground {
        phrase: phrase.to_string(),
        shots,
        exclude_patient: None,
    };
    let answer = svc.run(&enc, &task, &cancel)?;
    let f = answer
        .findings
        .first()
        .context("grounding gave no answer")?;
    let boxes: Vec<Value> = f
        .boxes
        .iter()
        .map(|b| json!({"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "score": b.score}))
        .collect();
    let mut out = json!({
        "width": img.width(), "height": img.height(), "phrase": phrase,
        "boxes": boxes, "presence": f.presence, "present": f.present,
        "presence_threshold": answer.presence_threshold, "model": m.model_id(),
        "elapsed_ms": t0.elapsed().as_secs_f64() * 1000.0,
    });
    if shots > 0 {
        out["shots_requested"] = json!(shots);
        out["shots_found"] = json!(answer.used.len());
        out["shots"] = json!(answer
            .used
            .iter()
            .map(|u| json!({"path": u.record.meta.path, "phrase": u.phrase, "score": u.score}))
            .collect::<Vec<_>>());
        if answer.used.len() < shots {
            out["shots_note"] = json!(format!(
                "only {} of {} in-context examples found in the store {}",
                answer.used.len(),
                shots,
                store
                    .map(|s: Arc<dyn crate::store::PriorStore>| s.describe())
                    .unwrap_or_default()
            ));
        }
    }
    Ok(out)
}

/// `describe`: the model's text for a box.
pub fn describe(cli: &Cli, image: &Path, bbox: [f32; 4]) -> Result<Value> {
    let (svc, enc, cancel) = encoded(cli, image)?;
    let a = svc.run(&enc, &AiTask::Describe(bbox), &cancel)?;
    let text = a
        .findings
        .first()
        .map(|f| f.phrase.clone())
        .filter(|t| t != NO_DESCRIPTION)
        .unwrap_or_default();
    Ok(json!({"text": text, "model": svc.model().model_id()}))
}

/// `findings`: every finding with its box (one region per box).
pub fn findings(cli: &Cli, image: &Path) -> Result<Value> {
    let (svc, enc, cancel) = encoded(cli, image)?;
    let a = svc.run(&enc, &AiTask::FindAll, &cancel)?;
    let regions: Vec<Value> = a
        .findings
        .iter()
        .flat_map(|f| {
            f.boxes.iter().map(move |b| {
                json!({"phrase": f.phrase, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "score": b.score})
            })
        })
        .collect();
    Ok(json!({"regions": regions, "model": svc.model().model_id()}))
}
