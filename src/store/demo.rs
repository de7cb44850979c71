//! The bundled demo prior store (`assets/demo-priors`): the NIH training images embedded by the
//! bundled model, so "similar cases" and in-context grounding work on the first start.
//!
//! Layout: `priors.jsonl` (one [`RecordMeta`] a line, `path` relative to the folder),
//! `embeddings.safetensors` (`embeddings`, `(N, D)` f16, row i = line i) and `images/` (each
//! image downscaled: 256 px on the long side when it carries boxes, so it can serve as a solved
//! example, 128 px otherwise; boxes are in those pixels). [`build`] writes it
//! (`lofi-viewer --headless demo-priors`, run by `scripts/build-demo-priors.sh` whenever the
//! model changes); [`seed`] copies it into an empty store. The folder itself is never modified
//! by the app: the user's store gets copies, and the user's own cases join them there.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{NewRecord, PriorStore, RecordMeta, StoreError};
use crate::manifest::Manifest;

/// The demo store's folder, relative to the repository / installation root.
pub const DEMO_DIR: &str = "assets/demo-priors";
/// Long side of the stored image of an annotated case (a usable in-context example).
pub const ANNOTATED_SIDE: u32 = 256;
/// Long side of the stored image of other cases (a thumbnail).
pub const PLAIN_SIDE: u32 = 128;

/// The bundled demo store's folder, if present.
pub fn bundled_dir() -> Option<PathBuf> {
    let d = crate::model::bundled::bundled_path(Path::new(DEMO_DIR));
    d.join("priors.jsonl").is_file().then_some(d)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// A PNG thumbnail (128 px on the long side), as the store keeps for every record.
pub fn thumbnail_png(gray: &image::GrayImage) -> Result<Vec<u8>, image::ImageError> {
    let img = resize_long_side(gray, 128);
    encode(&img, image::ImageFormat::Png)
}

fn resize_long_side(gray: &image::GrayImage, side: u32) -> image::GrayImage {
    let s = side as f32 / gray.width().max(gray.height()).max(1) as f32;
    if s >= 1.0 {
        return gray.clone();
    }
    image::imageops::thumbnail(
        gray,
        ((gray.width() as f32 * s).round() as u32).max(1),
        ((gray.height() as f32 * s).round() as u32).max(1),
    )
}

fn encode(img: &image::GrayImage, fmt: image::ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut out), fmt)?;
    Ok(out)
}

/// Build the demo store from a manifest with `lofi`; `progress(done, total)`.
pub fn build(
    lofi: &crate::model::Lofi,
    manifest: &Manifest,
    out: &Path,
    progress: &dyn Fn(usize, usize),
    cancel: &crate::util::Cancel,
) -> Result<usize, StoreError> {
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir)
        .map_err(io(format!("creating {}", images_dir.display())))?;
    let n = manifest.records.len();
    let mut lines = Vec::with_capacity(n);
    let mut emb: Vec<f32> = Vec::new();
    let mut dim = 0;
    for (i, chunk) in manifest.records.chunks(8).enumerate() {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let mut grays = Vec::with_capacity(chunk.len());
        let mut hashes = Vec::with_capacity(chunk.len());
        for r in chunk {
            let p = manifest.image_path(r);
            let bytes = std::fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
            hashes.push(crate::util::sha256_hex(&bytes));
            grays.push(
                crate::dicom::load_gray8(&p).map_err(|source| StoreError::Image {
                    path: p.clone(),
                    source,
                })?,
            );
        }
        let refs: Vec<&image::GrayImage> = grays.iter().collect();
        let enc = lofi.embed_batch(&refs)?;
        for ((r, g), (e, hash)) in chunk.iter().zip(&grays).zip(enc.iter().zip(hashes)) {
            dim = e.len();
            emb.extend_from_slice(e);
            let side = if r.regions.is_empty() {
                PLAIN_SIDE
            } else {
                ANNOTATED_SIDE
            };
            let small = resize_long_side(g, side);
            let scale = small.width() as f32 / g.width().max(1) as f32;
            let stem = Path::new(&r.image)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{}", lines.len()));
            let rel = format!("images/{stem}.jpg");
            let jpg = encode(&small, image::ImageFormat::Jpeg).map_err(StoreError::Encode)?;
            crate::util::atomic_write(&out.join(&rel), &jpg)
                .map_err(io(format!("writing {rel}")))?;
            let regions = r
                .regions
                .iter()
                .map(|g| {
                    let mut g = g.clone();
                    g.bbox = g.bbox.map(|v| v * scale);
                    g
                })
                .collect();
            let meta = RecordMeta {
                model_id: lofi.model_id(),
                patient_id: r.patient_id.clone().unwrap_or_default(),
                study_uid: r.study_id.clone().unwrap_or_default(),
                view: r.view.clone().unwrap_or_default(),
                labels: r.labels.clone(),
                report: r.report.clone(),
                regions,
                path: rel,
                content_hash: hash,
                ..Default::default()
            };
            lines.push(serde_json::to_string(&meta)?);
        }
        progress(((i + 1) * 8).min(n), n);
    }
    let t = Tensor::from_vec(emb, (lines.len(), dim), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F16))
        .map_err(crate::model::ModelError::from)?;
    crate::model::save_safetensors(
        &[("embeddings".into(), t)],
        &out.join("embeddings.safetensors"),
    )?;
    let mut text = Vec::new();
    for l in &lines {
        writeln!(text, "{l}").map_err(io("priors.jsonl".into()))?;
    }
    crate::util::atomic_write(&out.join("priors.jsonl"), &text)
        .map_err(io("writing priors.jsonl".into()))?;
    Ok(lines.len())
}

/// The demo store's records, ready to insert (paths made absolute under `dir`).
pub fn load(dir: &Path) -> Result<Vec<NewRecord>, StoreError> {
    let text = std::fs::read_to_string(dir.join("priors.jsonl")).map_err(io(format!(
        "reading {}",
        dir.join("priors.jsonl").display()
    )))?;
    let metas: Vec<RecordMeta> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| StoreError::Corrupt(format!("demo priors line {}: {e}", i + 1)))
        })
        .collect::<Result<_, _>>()?;
    let st = candle_core::safetensors::load(dir.join("embeddings.safetensors"), &Device::Cpu)
        .map_err(|e| StoreError::Corrupt(format!("demo priors embeddings: {e}")))?;
    let emb = st
        .get("embeddings")
        .ok_or_else(|| StoreError::Corrupt("demo priors: no `embeddings` tensor".into()))?
        .to_dtype(DType::F32)
        .and_then(|t| t.to_vec2::<f32>())
        .map_err(|e| StoreError::Corrupt(format!("demo priors embeddings: {e}")))?;
    if emb.len() != metas.len() {
        return Err(StoreError::Corrupt(format!(
            "demo priors: {} records but {} embeddings",
            metas.len(),
            emb.len()
        )));
    }
    let mut out = Vec::with_capacity(metas.len());
    for (mut meta, mut e) in metas.into_iter().zip(emb) {
        let img_path = dir.join(&meta.path);
        let gray = crate::dicom::load_gray8(&img_path)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", img_path.display())))?;
        meta.path = img_path.to_string_lossy().into_owned();
        // f16 storage: renormalise
        let n = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        e.iter_mut().for_each(|v| *v /= n);
        out.push(NewRecord {
            embedding: e,
            thumbnail_png: thumbnail_png(&gray).map_err(StoreError::Encode)?,
            meta,
        });
    }
    Ok(out)
}

/// Copy the demo store's records into `store` when it is empty; returns how many were added.
/// A store that already holds anything (the user's cases, or an earlier seed) is left alone.
pub fn seed(store: &dyn PriorStore, dir: &Path) -> Result<usize, StoreError> {
    if !store.is_empty()? {
        return Ok(0);
    }
    let recs = load(dir)?;
    let ids = store.insert(&recs)?;
    tracing::info!("seeded the prior-case store with {} demo cases", ids.len());
    Ok(ids.len())
}
