//! The distributed backend: Milvus (standalone in tests, a sharded and replicated cluster in a
//! hospital) through the official Rust SDK, selected with `--store milvus://HOST:PORT/COLLECTION`.
//!
//! Each record is one row; its primary key is derived from the content hash, so re-indexing a
//! file is an idempotent upsert (no duplicates after a crash). The vector field carries an HNSW
//! index with inner-product metric (M = 16, efConstruction = 200, ef = 512, as the embedded store). Reads
//! use strong consistency. Gaps between SDK 3.0.3 and server 2.3.5 handled here: search rows need
//! `primary_field_name("id")`, deletes are `id in [..]` filters, counts ask for strong consistency.

use std::collections::HashMap;

use base64::Engine;
use milvus::v2 as sdk;
use milvus::v2::prelude::*;
use serde_json::{json, Value};
use std::result::Result;

use super::{same_model, Filter, Hit, NewRecord, PriorStore, RecordInfo, RecordMeta, StoreError};

const FIELDS: [&str; 13] = [
    "id",
    "content_hash",
    "model_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "view",
    "labels",
    "report",
    "regions",
    "path",
    "thumbnail",
];

/// A Milvus collection used as the prior-case store.
pub struct MilvusStore {
    rt: tokio::runtime::Runtime,
    client: ClientV2,
    collection: String,
    uri: String,
}

fn srv<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Server(e.to_string())
}

/// Primary key of a content hash (63-bit, stable).
pub fn key_of(hash: &str) -> i64 {
    (crate::manifest::fnv64(0x5eed, hash.as_bytes()) & 0x7FFF_FFFF_FFFF_FFFF) as i64
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn str_of(m: &serde_json::Map<String, Value>, k: &str) -> String {
    m.get(k)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// A JSON-encoded field of a row; a damaged one is an error naming the record, never "empty".
fn json_field<T: serde::de::DeserializeOwned>(
    m: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<T, StoreError> {
    let raw = str_of(m, k);
    serde_json::from_str(&raw).map_err(|e| {
        StoreError::Corrupt(format!(
            "record {}: {k} is not valid JSON ({e})",
            m.get("id").and_then(|v| v.as_i64()).unwrap_or_default()
        ))
    })
}

fn info_of(m: &serde_json::Map<String, Value>) -> Result<RecordInfo, StoreError> {
    Ok(RecordInfo {
        id: m.get("id").and_then(|v| v.as_i64()).unwrap_or_default(),
        meta: RecordMeta {
            model_id: str_of(m, "model_id"),
            patient_id: str_of(m, "patient_id"),
            study_uid: str_of(m, "study_uid"),
            series_uid: str_of(m, "series_uid"),
            sop_uid: str_of(m, "sop_uid"),
            view: str_of(m, "view"),
            labels: json_field(m, "labels")?,
            report: Some(str_of(m, "report")).filter(|r| !r.is_empty()),
            regions: json_field(m, "regions")?,
            path: str_of(m, "path"),
            content_hash: str_of(m, "content_hash"),
        },
    })
}

impl MilvusStore {
    /// Connect to `milvus://HOST:PORT/COLLECTION`.
    pub fn connect(spec: &str) -> Result<Self, StoreError> {
        let rest = spec
            .strip_prefix("milvus://")
            .ok_or_else(|| StoreError::Server(format!("not a milvus:// address: {spec}")))?;
        let (hostport, collection) = rest.split_once('/').unwrap_or((rest, "lofi_priors"));
        let collection = if collection.is_empty() {
            "lofi_priors"
        } else {
            collection
        };
        if !collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Server(format!(
                "collection name {collection:?} must be letters, digits and _"
            )));
        }
        let uri = format!("http://{hostport}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                what: "starting the Milvus client runtime".into(),
                source: e,
            })?;
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    ClientV2::new(&ConnectConfig::new().uri(uri.clone())),
                )
                .await
            })
            .map_err(|_| StoreError::Server(format!("no answer from Milvus at {uri} within 30 s")))?
            .map_err(|e| StoreError::Server(format!("connecting to {uri}: {e}")))?;
        Ok(Self {
            rt,
            client,
            collection: collection.to_string(),
            uri,
        })
    }

    fn exists(&self) -> Result<bool, StoreError> {
        self.rt.block_on(async {
            self.client
                .has_collection(
                    HasCollectionRequest::builder()
                        .collection_name(&self.collection)
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map(|r| r.exists())
                .map_err(srv)
        })
    }

    /// Create the collection (schema, HNSW index) for `dim`-d vectors and load it.
    fn ensure(&self, dim: usize) -> Result<(), StoreError> {
        if self.exists()? {
            return Ok(());
        }
        let text = |name: &str, len: u32| {
            sdk::FieldSchema::new()
                .name(name)
                .data_type(sdk::DataType::VarChar)
                .max_length(len)
        };
        let schema = sdk::CollectionSchema::new()
            .add_field(
                sdk::FieldSchema::new()
                    .name("id")
                    .data_type(sdk::DataType::Int64)
                    .primary_key(true)
                    .auto_id(false),
            )
            .add_field(
                sdk::FieldSchema::new()
                    .name("embedding")
                    .data_type(sdk::DataType::FloatVector)
                    .dimension(dim as u32),
            )
            .add_field(text("content_hash", 64))
            .add_field(text("model_id", 128))
            .add_field(text("patient_id", 128))
            .add_field(text("study_uid", 128))
            .add_field(text("series_uid", 128))
            .add_field(text("sop_uid", 128))
            .add_field(text("view", 32))
            .add_field(text("labels", 4096))
            .add_field(text("report", 16384))
            .add_field(text("regions", 16384))
            .add_field(text("path", 4096))
            .add_field(text("thumbnail", 65535));
        self.rt.block_on(async {
            self.client
                .create_collection(
                    sdk::request::collection::CreateCollectionRequest::builder()
                        .collection_name(&self.collection)
                        .schema(schema)
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            self.client
                .create_index(
                    sdk::request::index::CreateIndexRequest::builder()
                        .collection_name(&self.collection)
                        .index_params(vec![IndexParam::new()
                            .field_name("embedding")
                            .index_type(IndexType::Hnsw)
                            .metric_type(MetricType::Ip)
                            .extra_params(HashMap::from([
                                ("M".into(), "16".into()),
                                ("efConstruction".into(), "200".into()),
                            ]))])
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            self.load().await
        })
    }

    async fn load(&self) -> Result<(), StoreError> {
        self.client
            .load_collection(
                sdk::request::collection::LoadCollectionRequest::builder()
                    .collection_name(&self.collection)
                    .build()
                    .map_err(srv)?,
            )
            .await
            .map_err(srv)?;
        Ok(())
    }

    fn query(
        &self,
        filter: &str,
        fields: &[&str],
        limit: usize,
        offset: usize,
    ) -> Result<Vec<serde_json::Map<String, Value>>, StoreError> {
        if !self.exists()? {
            return Ok(Vec::new());
        }
        self.rt.block_on(async {
            self.load().await?;
            let resp = self
                .client
                .query(
                    QueryRequest::builder()
                        .collection_name(&self.collection)
                        .filter(filter)
                        .output_fields(fields.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                        .limit(limit as i64)
                        .offset(offset as i64)
                        .consistency_level(sdk::ConsistencyLevel::Strong)
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            let mut out = Vec::new();
            for row in resp.results().rows().map_err(srv)? {
                out.push(row.to_entity_row().map_err(srv)?);
            }
            Ok(out)
        })
    }

    /// Drop the collection (tests).
    pub fn drop_collection(&self) -> Result<(), StoreError> {
        if !self.exists()? {
            return Ok(());
        }
        self.rt.block_on(async {
            self.client
                .drop_collection(
                    sdk::request::collection::DropCollectionRequest::builder()
                        .collection_name(&self.collection)
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            Ok(())
        })
    }

    fn row_json(r: &NewRecord) -> Value {
        json!({
            "id": key_of(&r.meta.content_hash),
            "embedding": r.embedding,
            "content_hash": r.meta.content_hash,
            "model_id": r.meta.model_id,
            "patient_id": r.meta.patient_id,
            "study_uid": r.meta.study_uid,
            "series_uid": r.meta.series_uid,
            "sop_uid": r.meta.sop_uid,
            "view": r.meta.view,
            "labels": serde_json::to_string(&r.meta.labels).unwrap_or_else(|_| "[]".into()),
            "report": r.meta.report.clone().unwrap_or_default(),
            "regions": serde_json::to_string(&r.meta.regions).unwrap_or_else(|_| "[]".into()),
            "path": r.meta.path,
            "thumbnail": base64::engine::general_purpose::STANDARD.encode(&r.thumbnail_png),
        })
    }

    fn upsert_rows(&self, rows: Vec<Value>) -> Result<(), StoreError> {
        self.rt.block_on(async {
            self.client
                .upsert(
                    sdk::request::dml::UpsertRequest::builder()
                        .insert(
                            sdk::request::dml::InsertRequest::builder()
                                .collection_name(&self.collection)
                                .rows(rows)
                                .build()
                                .map_err(srv)?,
                        )
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            Ok(())
        })
    }
}

impl PriorStore for MilvusStore {
    fn describe(&self) -> String {
        format!("{} (Milvus collection {})", self.uri, self.collection)
    }

    fn model_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .query("id >= 0 || id < 0", &["model_id"], 1, 0)?
            .first()
            .map(|m| str_of(m, "model_id")))
    }

    fn len(&self) -> Result<usize, StoreError> {
        if !self.exists()? {
            return Ok(0);
        }
        let rows = self.rt.block_on(async {
            self.load().await?;
            let resp = self
                .client
                .query(
                    QueryRequest::builder()
                        .collection_name(&self.collection)
                        .output_fields(vec!["count(*)".to_string()])
                        .consistency_level(sdk::ConsistencyLevel::Strong)
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            let mut n = 0i64;
            for row in resp.results().rows().map_err(srv)? {
                n = row.get_i64("count(*)").map_err(srv)?;
            }
            Ok::<i64, StoreError>(n)
        })?;
        Ok(rows.max(0) as usize)
    }

    fn has_hash(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(!self
            .query(&format!("id == {}", key_of(hash)), &["id"], 1, 0)?
            .is_empty())
    }

    fn insert(&self, records: &[NewRecord]) -> Result<Vec<i64>, StoreError> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        if let Some(m) = self.model_id()? {
            if let Some(r) = records.iter().find(|r| r.meta.model_id != m) {
                return Err(StoreError::ModelMismatch {
                    store: m,
                    model: r.meta.model_id.clone(),
                });
            }
        }
        self.ensure(first.embedding.len())?;
        self.upsert_rows(records.iter().map(Self::row_json).collect())?;
        Ok(records
            .iter()
            .map(|r| key_of(&r.meta.content_hash))
            .collect())
    }

    fn search(
        &self,
        query: &[f32],
        model_id: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, StoreError> {
        if !same_model(self.model_id()?, model_id)? {
            return Ok(Vec::new());
        }
        let mut expr = vec![format!("model_id == {}", quote(model_id))];
        if let Some(p) = filter.exclude_patient.as_deref().filter(|p| !p.is_empty()) {
            expr.push(format!("patient_id != {}", quote(p)));
        }
        if let Some(v) = &filter.view {
            expr.push(format!("view == {}", quote(v)));
        }
        if filter.annotated {
            expr.push("regions != \"[]\"".into());
        }
        let expr = expr.join(" && ");
        // labels are filtered here (stored as JSON text); over-fetch until enough pass
        let mut fetch = if filter.labels.is_empty() { k } else { k * 4 };
        loop {
            let rows = self.rt.block_on(async {
                self.load().await?;
                let resp = self
                    .client
                    .search(
                        SearchRequest::builder()
                            .collection_name(&self.collection)
                            .vector_field("embedding")
                            .vectors(SearchVectors::Float(vec![query.to_vec()]))
                            .filter(expr.clone())
                            .output_fields(
                                FIELDS[1..FIELDS.len() - 1]
                                    .iter()
                                    .map(|s| s.to_string())
                                    .collect::<Vec<_>>(),
                            )
                            .limit(fetch as i64)
                            .extra_params(HashMap::from([(
                                "ef".to_string(),
                                512.max(fetch).to_string(),
                            )]))
                            .consistency_level(sdk::ConsistencyLevel::Strong)
                            .build()
                            .map_err(srv)?,
                    )
                    .await
                    .map_err(srv)?;
                let mut out = Vec::new();
                for result in resp.results() {
                    let result = result.clone().primary_field_name("id");
                    for row in result.rows().map_err(srv)? {
                        out.push(row.to_entity_row().map_err(srv)?);
                    }
                }
                Ok::<_, StoreError>(out)
            })?;
            let n_rows = rows.len();
            let hits: Vec<Hit> = rows
                .into_iter()
                .map(|m| {
                    Ok(Hit {
                        score: m.get("score").and_then(|v| v.as_f64()).unwrap_or_default() as f32,
                        record: info_of(&m)?,
                    })
                })
                .collect::<Result<Vec<Hit>, StoreError>>()?
                .into_iter()
                .filter(|h| {
                    filter.accepts(
                        &h.record.meta.patient_id,
                        &h.record.meta.view,
                        &h.record.meta.labels,
                        !h.record.meta.regions.is_empty(),
                    )
                })
                .take(k)
                .collect();
            if hits.len() >= k || n_rows < fetch || fetch >= 16_384 {
                return Ok(hits);
            }
            fetch = (fetch * 4).min(16_384);
        }
    }

    fn records(&self) -> Result<Vec<RecordInfo>, StoreError> {
        let mut out = Vec::new();
        let page = 1000;
        loop {
            let rows = self.query(
                "id >= 0 || id < 0",
                &FIELDS[..FIELDS.len() - 1],
                page,
                out.len(),
            )?;
            let n = rows.len();
            for r in &rows {
                out.push(info_of(r)?);
            }
            if n < page || out.len() + page > 16_384 {
                break;
            }
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(&format!("id == {id}"), &["thumbnail"], 1, 0)?;
        Ok(rows.first().and_then(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(str_of(m, "thumbnail"))
                .ok()
        }))
    }

    fn replace_embeddings(
        &self,
        updates: &[(i64, Vec<f32>)],
        model_id: &str,
    ) -> Result<(), StoreError> {
        for (id, e) in updates {
            let rows = self.query(&format!("id == {id}"), &FIELDS, 1, 0)?;
            let Some(mut m) = rows.into_iter().next() else {
                continue;
            };
            m.insert("embedding".into(), json!(e));
            m.insert("model_id".into(), json!(model_id));
            self.upsert_rows(vec![Value::Object(m)])?;
        }
        Ok(())
    }

    fn delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() || !self.exists()? {
            return Ok(());
        }
        let list = ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.rt.block_on(async {
            self.client
                .delete(
                    sdk::request::dml::DeleteRequest::builder()
                        .collection_name(&self.collection)
                        .filter(format!("id in [{list}]"))
                        .build()
                        .map_err(srv)?,
                )
                .await
                .map_err(srv)?;
            Ok(())
        })
    }
}
