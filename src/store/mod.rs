//! The prior-case store: one interface, two backends — an embedded SQLite + HNSW store on the
//! radiologist's machine (default) and Milvus for a hospital-scale archive. Records carry the
//! embedding with its model id (embeddings of different models never mix), DICOM identifiers,
//! labels, report, regions (for in-context grounding), source path, content hash and a thumbnail.

pub mod demo;
pub mod hnsw;
pub mod index;
#[cfg(feature = "milvus")]
pub mod milvus;
pub mod sqlite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, Record, Region};

/// Below this many vectors search is exact; above it, HNSW.
pub const EXACT_THRESHOLD: usize = 20_000;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file is damaged.
    #[error("the prior-case store is damaged ({0}); move it aside and re-index")]
    Corrupt(String),
    /// The store holds another model's embeddings.
    #[error("the store holds embeddings of model {store}, not {model}; run `index --reembed` to migrate")]
    ModelMismatch {
        /// Model of the store.
        store: String,
        /// Model in use.
        model: String,
    },
    /// Dimension mismatch.
    #[error("embedding has {got} dimensions, the store {want}")]
    Dimension {
        /// Store dimension.
        want: usize,
        /// Given.
        got: usize,
    },
    /// Database error.
    #[error("store database: {0}")]
    Db(#[source] rusqlite::Error),
    /// The model failed while embedding.
    #[error("embedding: {0}")]
    Model(#[from] crate::model::ModelError),
    /// A stored or bundled image could not be read.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: crate::dicom::DicomError,
    },
    /// A thumbnail could not be encoded.
    #[error("thumbnail: {0}")]
    Encode(#[from] image::ImageError),
    /// JSON could not be written or read.
    #[error("store JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Server error (Milvus).
    #[error("store server: {0}")]
    Server(String),
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the store keeps about an image besides its embedding: ids, labels, findings and where it
/// came from. Shared by a record to add and a stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RecordMeta {
    /// Embedding space (`name@version` of the model).
    pub model_id: String,
    /// Patient ID.
    pub patient_id: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// SOP Instance UID.
    pub sop_uid: String,
    /// View position.
    pub view: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Report.
    pub report: Option<String>,
    /// Annotated regions (pixels of the source image).
    pub regions: Vec<Region>,
    /// Source file.
    pub path: String,
    /// SHA-256 of the source file.
    pub content_hash: String,
}

/// A record to add.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewRecord {
    /// L2-normalised image embedding.
    pub embedding: Vec<f32>,
    /// What it says about the image.
    pub meta: RecordMeta,
    /// Small PNG thumbnail.
    pub thumbnail_png: Vec<u8>,
}

/// A stored record without its embedding and thumbnail (serialised flat: `id` beside the fields
/// of [`RecordMeta`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RecordInfo {
    /// Row id.
    pub id: i64,
    /// What it says about the image.
    #[serde(flatten)]
    pub meta: RecordMeta,
}

/// Search restrictions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Leave out this patient's images.
    pub exclude_patient: Option<String>,
    /// Only this view.
    pub view: Option<String>,
    /// Only records carrying at least one of these labels.
    pub labels: Vec<String>,
    /// Only records with annotated regions.
    pub annotated: bool,
}

impl Filter {
    /// Whether a record passes.
    pub fn accepts(&self, patient: &str, view: &str, labels: &[String], annotated: bool) -> bool {
        if self
            .exclude_patient
            .as_deref()
            .is_some_and(|p| !p.is_empty() && p == patient)
        {
            return false;
        }
        if self
            .view
            .as_deref()
            .is_some_and(|v| !v.eq_ignore_ascii_case(view))
        {
            return false;
        }
        if !self.labels.is_empty()
            && !labels
                .iter()
                .any(|l| self.labels.iter().any(|f| f.eq_ignore_ascii_case(l)))
        {
            return false;
        }
        !self.annotated || annotated
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Cosine similarity.
    pub score: f32,
    /// The record.
    pub record: RecordInfo,
}

/// Whether a store holding `stored`'s embeddings can answer a `model_id` query: `Ok(false)` for
/// an empty store, an error for another model's embeddings (they never mix).
pub(crate) fn same_model(stored: Option<String>, model_id: &str) -> Result<bool, StoreError> {
    match stored {
        None => Ok(false),
        Some(s) if s == model_id => Ok(true),
        Some(s) => Err(StoreError::ModelMismatch {
            store: s,
            model: model_id.to_string(),
        }),
    }
}

/// The store interface both backends implement.
pub trait PriorStore: Send + Sync {
    /// Human-readable location.
    fn describe(&self) -> String;
    /// Whether the store holds no record.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// The embedding space the store holds (None while empty).
    fn model_id(&self) -> Result<Option<String>, StoreError>;
    /// Number of records.
    fn len(&self) -> Result<usize, StoreError>;
    /// Whether a file with this content hash is stored.
    fn has_hash(&self, hash: &str) -> Result<bool, StoreError>;
    /// Add records atomically (all or none). Refuses another model's embeddings.
    fn insert(&self, records: &[NewRecord]) -> Result<Vec<i64>, StoreError>;
    /// The `k` nearest records passing `filter`, best first. Refuses a query of another model.
    fn search(
        &self,
        query: &[f32],
        model_id: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, StoreError>;
    /// Every record's metadata, by id.
    fn records(&self) -> Result<Vec<RecordInfo>, StoreError>;
    /// A record's thumbnail PNG.
    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replace embeddings (re-embedding with a new model); the store's model becomes `model_id`
    /// once no record of another model is left.
    fn replace_embeddings(
        &self,
        updates: &[(i64, Vec<f32>)],
        model_id: &str,
    ) -> Result<(), StoreError>;
    /// Delete records.
    fn delete(&self, ids: &[i64]) -> Result<(), StoreError>;
}

/// Where the store lives when the user names none: `priors` in the platform data directory.
pub fn default_location() -> PathBuf {
    directories::ProjectDirs::from("org", "lofi", "lofi-viewer")
        .map(|d| d.data_dir().join("priors"))
        .unwrap_or_else(|| PathBuf::from("priors"))
}

/// Open a store from `--store` (a path or `milvus://HOST:PORT/COLLECTION`).
pub fn open(spec: Option<&str>) -> Result<Box<dyn PriorStore>, StoreError> {
    match spec {
        #[cfg(feature = "milvus")]
        Some(s) if s.starts_with("milvus://") => Ok(Box::new(milvus::MilvusStore::connect(s)?)),
        #[cfg(not(feature = "milvus"))]
        Some(s) if s.starts_with("milvus://") => Err(StoreError::Server(
            "this build has no Milvus support (built without the `milvus` feature)".into(),
        )),
        Some(s) => Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
            s,
        ))?)),
        None => {
            let store = sqlite::SqliteStore::open(&default_location())?;
            // first start: the user's own store gets a copy of the bundled demo cases
            if let Some(dir) = demo::bundled_dir() {
                if let Err(e) = demo::seed(&store, &dir) {
                    tracing::warn!("demo cases not added to the store: {e}");
                }
            }
            Ok(Box::new(store))
        }
    }
}

/// The store's annotated cases as a manifest (the pool for in-context grounding).
pub fn annotated_manifest(store: &dyn PriorStore) -> Result<Manifest, StoreError> {
    let records = store
        .records()?
        .into_iter()
        .filter(|r| !r.meta.regions.is_empty())
        .map(|r| Record {
            image: r.meta.path,
            patient_id: Some(r.meta.patient_id).filter(|p| !p.is_empty()),
            study_id: Some(r.meta.study_uid).filter(|p| !p.is_empty()),
            view: Some(r.meta.view).filter(|v| !v.is_empty()),
            report: r.meta.report,
            labels: r.meta.labels,
            regions: r.meta.regions,
        })
        .collect();
    Ok(Manifest {
        base: PathBuf::new(),
        records,
    })
}

/// Words of a phrase, lower-case.
fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(String::from)
        .collect()
}

/// How well a stored region answers a query phrase (shared words over the region's phrase,
/// basic phrase, finding and synonyms); 0 when nothing is shared.
pub fn phrase_match(query: &str, r: &Region) -> f32 {
    let q = words(query);
    if q.is_empty() {
        return 0.0;
    }
    let mut best = 0.0f32;
    let mut names = vec![r.phrase.clone()];
    names.extend(r.phrase_basic.clone());
    names.extend(r.finding.clone().map(|f| crate::manifest::label_phrase(&f)));
    names.extend(r.synonyms.clone());
    for n in names {
        let w = words(&n);
        let shared = q.iter().filter(|x| w.contains(x)).count();
        if shared > 0 {
            best = best.max(shared as f32 / (q.len().max(w.len())) as f32);
        }
    }
    best
}

/// A solved example taken from the store, with the record it came from.
pub struct IclShot {
    /// The example for the prompt.
    pub shot: crate::model::tasks::Shot,
    /// Its store record (for thumbnails in the GUI).
    pub record: RecordInfo,
    /// Similarity of its image to the query image.
    pub score: f32,
}

/// Retrieval-based in-context grounding: the `k` annotated cases nearest to the query image
/// whose regions answer the phrase, encoded as solved examples.
pub fn icl_shots(
    lofi: &crate::model::Lofi,
    store: &dyn PriorStore,
    query: &crate::model::tasks::EncodedImage,
    phrase: &str,
    k: usize,
    exclude_patient: Option<&str>,
) -> Result<Vec<IclShot>, StoreError> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let filter = Filter {
        exclude_patient: exclude_patient.map(String::from),
        annotated: true,
        ..Default::default()
    };
    let hits = store.search(
        &query.embedding,
        &lofi.model_id(),
        (k * 10).max(30),
        &filter,
    )?;
    let mut out = Vec::new();
    for h in hits {
        if out.len() >= k {
            break;
        }
        let best = h
            .record
            .meta
            .regions
            .iter()
            .map(|g| (phrase_match(phrase, g), g))
            .filter(|(m, _)| *m > 0.0)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, g)) = best else { continue };
        let img = match crate::dicom::load_gray8(std::path::Path::new(&h.record.meta.path)) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("in-context example unavailable ({e})");
                continue;
            }
        };
        let enc = lofi.encode(&img)?;
        let boxes = h
            .record
            .meta
            .regions
            .iter()
            .filter(|o| o.phrase == g.phrase)
            .map(|o| o.bbox)
            .collect();
        out.push(IclShot {
            shot: crate::model::tasks::Shot {
                image: enc,
                phrase: g.phrase.clone(),
                boxes_px: boxes,
            },
            score: h.score,
            record: h.record,
        });
    }
    Ok(out)
}

/// The patient of the stored record of the file with these bytes (found by content hash), if
/// the store holds it with a patient ID.
pub fn patient_of_file(
    store: &dyn PriorStore,
    file_bytes: &[u8],
) -> Result<Option<String>, StoreError> {
    let hash = crate::util::sha256_hex(file_bytes);
    if !store.has_hash(&hash)? {
        return Ok(None);
    }
    Ok(store
        .records()?
        .into_iter()
        .find(|r| r.meta.content_hash == hash && !r.meta.patient_id.is_empty())
        .map(|r| r.meta.patient_id))
}

/// Search by an image file: the nearest records, best first, with the file itself ranked first
/// when an identical file (same content hash) is already stored and passes the filter. An
/// identical file has the same embedding, so its similarity is 1 by definition; ranking it by
/// the computed cosine instead would leave it to rounding among near-duplicates.
/// Returns the hits and whether the first one is the identical file.
pub fn search_image_file(
    store: &dyn PriorStore,
    query: &[f32],
    file_bytes: &[u8],
    model_id: &str,
    k: usize,
    filter: &Filter,
) -> Result<(Vec<Hit>, bool), StoreError> {
    let mut hits = store.search(query, model_id, k, filter)?;
    let hash = crate::util::sha256_hex(file_bytes);
    if k == 0 || !store.has_hash(&hash)? {
        return Ok((hits, false));
    }
    let hit = match hits.iter().position(|h| h.record.meta.content_hash == hash) {
        Some(i) => hits.remove(i),
        None => {
            let found = store
                .records()?
                .into_iter()
                .find(|r| r.meta.content_hash == hash && r.meta.model_id == model_id);
            match found {
                Some(r)
                    if filter.accepts(
                        &r.meta.patient_id,
                        &r.meta.view,
                        &r.meta.labels,
                        !r.meta.regions.is_empty(),
                    ) =>
                {
                    Hit {
                        score: 1.0,
                        record: r,
                    }
                }
                _ => return Ok((hits, false)),
            }
        }
    };
    hits.insert(0, Hit { score: 1.0, ..hit });
    hits.truncate(k);
    Ok((hits, true))
}
