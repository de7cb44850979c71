//! `index`: add images to the store — recursive over DICOM/PNG/JPEG, labels/regions/reports from
//! a manifest, incremental (files already stored, by content hash, are skipped), resumable after
//! a kill (each batch is one transaction), decoding on a background thread pipelined with
//! embedding, failures listed without stopping the run. `--reembed` migrates a store to the
//! current model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use serde::Serialize;

use crate::manifest::{Manifest, Record};
use crate::model::Lofi;
use crate::util::Cancel;

use super::{NewRecord, PriorStore, RecordMeta, StoreError};

/// One file that could not be indexed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// The file.
    pub path: String,
    /// Why.
    pub error: String,
}

/// The JSON of `index`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct IndexReport {
    /// Records added.
    pub added: usize,
    /// Files already stored.
    pub skipped: usize,
    /// Files that failed.
    pub failed: Vec<Failure>,
    /// Records re-embedded (with `--reembed`).
    #[serde(skip_serializing_if = "is_zero")]
    pub reembedded: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Options.
pub struct IndexOptions<'a> {
    /// Labels, regions, reports by image path.
    pub manifest: Option<&'a Manifest>,
    /// Images per embedding batch (and per transaction).
    pub batch: usize,
    /// Stop between batches when set.
    pub cancel: Cancel,
    /// Progress (done, total).
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
}

/// Every DICOM/PNG/JPEG file under `paths` (sorted, DICOMDIR files left out).
pub fn collect_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > 64 {
            return;
        }
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            v.sort();
            for e in v {
                walk(&e, out, depth + 1);
            }
        } else if p.is_file()
            && !p
                .file_name()
                .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
        {
            out.push(p.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out, 0);
    }
    out
}

struct Decoded {
    path: PathBuf,
    hash: String,
    gray: image::GrayImage,
    thumb: Vec<u8>,
    ids: (String, String, String, String, String),
}

fn decode(path: &Path) -> Result<(String, Decoded), String> {
    let bytes = crate::dicom::object::read_limited(path).map_err(|e| e.to_string())?;
    let hash = crate::util::sha256_hex(&bytes);
    let img = if crate::dicom::is_plain_image(&bytes) {
        crate::dicom::load_plain(
            &bytes,
            &path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    } else {
        crate::dicom::load_dicom_bytes(&bytes)
    }
    .map_err(|e| e.to_string())?;
    let frame = img.frames.first().ok_or("no image")?;
    let p = crate::dicom::DisplayParams {
        voi: crate::dicom::lut::default_voi(&img.info, frame),
        invert: false,
    };
    let gray = crate::dicom::lut::render(frame, &img.info, &p).to_luma8();
    let thumb = super::demo::thumbnail_png(&gray).map_err(|e| e.to_string())?;
    let i = &img.info;
    let ids = if img.dicom.is_some() {
        (
            i.patient_id.clone(),
            i.study_uid.clone(),
            i.series_uid.clone(),
            i.sop_uid.clone(),
            i.view.clone(),
        )
    } else {
        Default::default()
    };
    Ok((
        hash.clone(),
        Decoded {
            path: path.to_path_buf(),
            hash,
            gray,
            thumb,
            ids,
        },
    ))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Index files into the store.
pub fn index(
    lofi: &Lofi,
    store: &dyn PriorStore,
    paths: &[PathBuf],
    opts: &IndexOptions<'_>,
) -> Result<IndexReport, StoreError> {
    let model = lofi.model_id();
    if let Some(m) = store.model_id()? {
        if m != model {
            return Err(StoreError::ModelMismatch { store: m, model });
        }
    }
    let by_path: HashMap<PathBuf, &Record> = opts
        .manifest
        .map(|m| {
            m.records
                .iter()
                .map(|r| (canonical(&m.image_path(r)), r))
                .collect()
        })
        .unwrap_or_default();
    let files = collect_files(paths);
    let total = files.len();
    let mut report = IndexReport::default();
    let (tx, rx) = sync_channel::<Result<(String, Decoded), Failure>>(32);
    let cancel = opts.cancel.clone();
    let mut done = 0usize;
    std::thread::scope(|s| -> Result<(), StoreError> {
        let files_ref = &files;
        let cancel2 = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("index-decode".into())
            .spawn_scoped(s, move || {
                for f in files_ref {
                    if cancel2.is_cancelled() {
                        break;
                    }
                    let r = decode(f).map_err(|e| Failure {
                        path: f.display().to_string(),
                        error: e,
                    });
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(StoreError::Io {
                what: "starting the decoder thread".into(),
                source: e,
            });
        }
        let mut batch: Vec<Decoded> = Vec::new();
        let flush =
            |batch: &mut Vec<Decoded>, report: &mut IndexReport| -> Result<(), StoreError> {
                if batch.is_empty() {
                    return Ok(());
                }
                let refs: Vec<&image::GrayImage> = batch.iter().map(|d| &d.gray).collect();
                let enc = match lofi.embed_batch(&refs) {
                    Ok(e) => e,
                    Err(e) => {
                        for d in batch.drain(..) {
                            report.failed.push(Failure {
                                path: d.path.display().to_string(),
                                error: e.to_string(),
                            });
                        }
                        return Ok(());
                    }
                };
                let recs: Vec<NewRecord> = batch
                    .drain(..)
                    .zip(enc)
                    .map(|(d, e)| {
                        let m = by_path.get(&canonical(&d.path));
                        let (pid, study, series, sop, view) = d.ids;
                        NewRecord {
                            embedding: e,
                            meta: RecordMeta {
                                model_id: model.clone(),
                                patient_id: m.and_then(|r| r.patient_id.clone()).unwrap_or(pid),
                                study_uid: m.and_then(|r| r.study_id.clone()).unwrap_or(study),
                                series_uid: series,
                                sop_uid: sop,
                                view: m.and_then(|r| r.view.clone()).unwrap_or(view),
                                labels: m.map(|r| r.labels.clone()).unwrap_or_default(),
                                report: m.and_then(|r| r.report.clone()),
                                regions: m.map(|r| r.regions.clone()).unwrap_or_default(),
                                path: canonical(&d.path).display().to_string(),
                                content_hash: d.hash,
                            },
                            thumbnail_png: d.thumb,
                        }
                    })
                    .collect();
                report.added += recs.len();
                store.insert(&recs)?;
                Ok(())
            };
        for item in rx.iter() {
            done += 1;
            (opts.progress)(done, total);
            match item {
                Err(f) => report.failed.push(f),
                Ok((hash, d)) => {
                    if store.has_hash(&hash)? || batch.iter().any(|b| b.hash == hash) {
                        report.skipped += 1;
                        continue;
                    }
                    batch.push(d);
                    if batch.len() >= opts.batch.max(1) {
                        flush(&mut batch, &mut report)?;
                    }
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        flush(&mut batch, &mut report)?;
        Ok(())
    })?;
    Ok(report)
}

/// Re-embed every record whose model differs from `lofi`'s, reading the source files again.
pub fn reembed(
    lofi: &Lofi,
    store: &dyn PriorStore,
    opts: &IndexOptions<'_>,
) -> Result<IndexReport, StoreError> {
    let model = lofi.model_id();
    let todo: Vec<_> = store
        .records()?
        .into_iter()
        .filter(|r| r.meta.model_id != model)
        .collect();
    let mut report = IndexReport::default();
    let total = todo.len();
    for (ci, chunk) in todo.chunks(opts.batch.max(1)).enumerate() {
        if opts.cancel.is_cancelled() {
            break;
        }
        let mut imgs = Vec::new();
        let mut ids = Vec::new();
        for r in chunk {
            match crate::dicom::load_gray8(Path::new(&r.meta.path)) {
                Ok(g) => {
                    imgs.push(g);
                    ids.push(r.id);
                }
                Err(e) => report.failed.push(Failure {
                    path: r.meta.path.clone(),
                    error: e.to_string(),
                }),
            }
        }
        let refs: Vec<&image::GrayImage> = imgs.iter().collect();
        let enc = lofi.embed_batch(&refs)?;
        let updates: Vec<(i64, Vec<f32>)> = ids.into_iter().zip(enc).collect();
        report.reembedded += updates.len();
        store.replace_embeddings(&updates, &model)?;
        (opts.progress)(((ci + 1) * opts.batch).min(total), total);
    }
    if !report.failed.is_empty() {
        tracing::warn!(
            "{} records could not be re-embedded; the store keeps the old model until they are",
            report.failed.len()
        );
    }
    Ok(report)
}
