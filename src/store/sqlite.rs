//! The embedded backend: records in SQLite (WAL, synchronous=FULL — a committed batch survives a
//! crash), searched exactly below [`EXACT_THRESHOLD`](super::EXACT_THRESHOLD) vectors and through
//! an HNSW graph above it. The graph is a cache (`index.hnsw`): extended with new rows when it
//! lags behind the database, rebuilt when missing, stale or damaged.
//!
//! Why SQLite: one file, transactions, concurrent readers while indexing runs (WAL snapshot
//! isolation), a corruption check, and no server. Why our own HNSW: deterministic builds,
//! filtered search, and a persisted graph that is validated on load.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::hnsw::{exact_search, Hnsw, HnswParams};
use super::{
    same_model, Filter, Hit, NewRecord, PriorStore, RecordInfo, RecordMeta, StoreError,
    EXACT_THRESHOLD,
};

fn db(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Corrupt(e.to_string())
        }
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
            StoreError::Corrupt(inner.to_string())
        }
        _ => StoreError::Db(e),
    }
}

struct Row {
    id: i64,
    patient: String,
    view: String,
    labels: Vec<String>,
    annotated: bool,
}

/// In-memory copy of the searchable part of the table.
#[derive(Default)]
struct Cache {
    model: String,
    dim: usize,
    rows: Vec<Row>,
    data: Vec<f32>,
    hnsw: Option<Hnsw>,
    hnsw_saved_len: usize,
}

/// The embedded store.
pub struct SqliteStore {
    dir: PathBuf,
    conn: Mutex<Connection>,
    cache: Mutex<Cache>,
    /// ANN parameters.
    pub params: HnswParams,
    /// Exact search up to this many vectors.
    pub exact_threshold: usize,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    embedding_version INTEGER NOT NULL DEFAULT 1,
    embedding BLOB NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    sop_uid TEXT NOT NULL DEFAULT '',
    view TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '[]',
    report TEXT,
    regions TEXT NOT NULL DEFAULT '[]',
    path TEXT NOT NULL,
    thumbnail BLOB,
    added_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE INDEX IF NOT EXISTS records_sop ON records(sop_uid);
CREATE INDEX IF NOT EXISTS records_patient ON records(patient_id);
";

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl SqliteStore {
    /// Open (creating if needed) the store in folder `dir`; a damaged database is an error.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        let path = dir.join("store.sqlite");
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(db)?;
        if check != "ok" {
            return Err(StoreError::Corrupt(check));
        }
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
            cache: Mutex::new(Cache::default()),
            params: HnswParams::default(),
            exact_threshold: EXACT_THRESHOLD,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.hnsw")
    }

    /// Bring the in-memory cache (and the HNSW graph) up to date with the database.
    fn refresh(&self, cache: &mut Cache, model: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let (count, max_id): (i64, Option<i64>) = conn
            .query_row(
                "SELECT count(*), max(id) FROM records WHERE model_id = ?1",
                [model],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        let have_max = cache.rows.last().map(|r| r.id);
        let consistent_prefix = cache.model == model
            && cache.rows.len() as i64 <= count
            && match (have_max, max_id) {
                (None, _) => true,
                (Some(h), Some(m)) => {
                    let n_le: i64 = conn
                        .query_row(
                            "SELECT count(*) FROM records WHERE model_id = ?1 AND id <= ?2",
                            params![model, h],
                            |r| r.get(0),
                        )
                        .map_err(db)?;
                    h <= m && n_le == cache.rows.len() as i64
                }
                (Some(_), None) => false,
            };
        if !consistent_prefix {
            *cache = Cache {
                model: model.to_string(),
                ..Default::default()
            };
        }
        if cache.rows.len() as i64 == count {
            return Ok(());
        }
        let from = cache.rows.last().map_or(i64::MIN, |r| r.id);
        let mut stmt = conn
            .prepare("SELECT id, embedding, patient_id, view, labels, regions FROM records WHERE model_id = ?1 AND id > ?2 ORDER BY id")
            .map_err(db)?;
        let mut rows = stmt.query(params![model, from]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let emb = from_blob(&r.get::<_, Vec<u8>>(1).map_err(db)?);
            if cache.dim == 0 {
                cache.dim = emb.len();
            }
            if emb.len() != cache.dim {
                return Err(StoreError::Corrupt(format!(
                    "record {} has a {}-d embedding",
                    r.get::<_, i64>(0).map_err(db)?,
                    emb.len()
                )));
            }
            let labels: Vec<String> = serde_json::from_str(&r.get::<_, String>(4).map_err(db)?)
                .map_err(|e| {
                    StoreError::Corrupt(format!(
                        "record {}: labels are not valid JSON ({e})",
                        r.get::<_, i64>(0).unwrap_or_default()
                    ))
                })?;
            let regions: String = r.get(5).map_err(db)?;
            cache.data.extend_from_slice(&emb);
            cache.rows.push(Row {
                id: r.get(0).map_err(db)?,
                patient: r.get(2).map_err(db)?,
                view: r.get(3).map_err(db)?,
                labels,
                annotated: regions.len() > 2,
            });
        }
        drop(rows);
        drop(stmt);
        drop(conn);
        self.sync_hnsw(cache)?;
        Ok(())
    }

    /// Load, extend or rebuild the graph when the store is above the exact-search size.
    fn sync_hnsw(&self, cache: &mut Cache) -> Result<(), StoreError> {
        let n = cache.rows.len();
        if n <= self.exact_threshold {
            cache.hnsw = None;
            return Ok(());
        }
        if cache.hnsw.is_none() {
            // try the persisted graph: valid when it covers a prefix of our rows
            if let Ok(bytes) = std::fs::read(self.index_path()) {
                if let Some((covered, fp, graph)) = parse_index_file(&bytes) {
                    if covered <= n && fp == ids_fingerprint(&cache.rows[..covered]) {
                        let data = cache.data[..covered * cache.dim].to_vec();
                        match Hnsw::from_bytes(graph, data, 0) {
                            Ok(h) => {
                                cache.hnsw_saved_len = covered;
                                cache.hnsw = Some(h);
                            }
                            Err(e) => tracing::warn!("rebuilding the ANN index: {e}"),
                        }
                    }
                }
            }
        }
        let h = cache
            .hnsw
            .get_or_insert_with(|| Hnsw::new(cache.dim, self.params, 0));
        let start = h.len();
        for i in start..n {
            h.insert(&cache.data[i * cache.dim..(i + 1) * cache.dim]);
        }
        // persist when the graph grew noticeably (it is only a cache)
        if n >= cache.hnsw_saved_len + cache.hnsw_saved_len / 10 + 1000 || cache.hnsw_saved_len == 0
        {
            let mut bytes = format!("{n} {}\n", ids_fingerprint(&cache.rows)).into_bytes();
            bytes.extend(h.to_bytes());
            crate::util::atomic_write(&self.index_path(), &bytes).map_err(|e| StoreError::Io {
                what: "writing the ANN index".into(),
                source: e,
            })?;
            cache.hnsw_saved_len = n;
        }
        Ok(())
    }

    fn info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordInfo> {
        Ok(RecordInfo {
            id: r.get(0)?,
            meta: RecordMeta {
                model_id: r.get(1)?,
                patient_id: r.get(2)?,
                study_uid: r.get(3)?,
                series_uid: r.get(4)?,
                sop_uid: r.get(5)?,
                view: r.get(6)?,
                labels: json_column(r, 7)?,
                report: r.get(8)?,
                regions: json_column(r, 9)?,
                path: r.get(10)?,
                content_hash: r.get(11)?,
            },
        })
    }

    const INFO_COLS: &'static str =
        "id, model_id, patient_id, study_uid, series_uid, sop_uid, view, labels, report, regions, path, content_hash";
}

/// A JSON-encoded column; damage is a conversion error naming the record, never "empty".
fn json_column<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let raw: String = r.get(idx)?;
    serde_json::from_str(&raw).map_err(|e| {
        let id: i64 = r.get(0).unwrap_or_default();
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("record {id}: column {idx} is not valid JSON ({e})").into(),
        )
    })
}

/// Header `"{covered} {fingerprint}\n"` then the graph.
fn parse_index_file(b: &[u8]) -> Option<(usize, u64, &[u8])> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let head = std::str::from_utf8(&b[..nl]).ok()?;
    let (c, f) = head.split_once(' ')?;
    Some((c.parse().ok()?, f.parse().ok()?, &b[nl + 1..]))
}

/// Fingerprint of the row ids a graph covers (node i ↔ row i).
fn ids_fingerprint(rows: &[Row]) -> u64 {
    let mut bytes = Vec::with_capacity(rows.len() * 8);
    for r in rows {
        bytes.extend_from_slice(&r.id.to_le_bytes());
    }
    crate::manifest::fnv64(0, &bytes)
}

impl PriorStore for SqliteStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn model_id(&self) -> Result<Option<String>, StoreError> {
        self.meta("model_id")
    }

    fn len(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .map_err(db)?;
        Ok(n as usize)
    }

    fn has_hash(&self, hash: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT count(*) FROM records WHERE content_hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    fn insert(&self, records: &[NewRecord]) -> Result<Vec<i64>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let store_model: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'model_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        let dim: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'dim'", [], |r| r.get(0))
            .optional()
            .map_err(db)?;
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            if let Some(m) = &store_model {
                if *m != r.meta.model_id {
                    return Err(StoreError::ModelMismatch {
                        store: m.clone(),
                        model: r.meta.model_id.clone(),
                    });
                }
            }
            if let Some(d) = dim.as_deref().and_then(|d| d.parse::<usize>().ok()) {
                if d != r.embedding.len() {
                    return Err(StoreError::Dimension {
                        want: d,
                        got: r.embedding.len(),
                    });
                }
            }
            tx.execute(
                "INSERT INTO records (content_hash, model_id, embedding, patient_id, study_uid, series_uid, sop_uid, view, labels, report, regions, path, thumbnail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(content_hash) DO NOTHING",
                params![
                    r.meta.content_hash,
                    r.meta.model_id,
                    to_blob(&r.embedding),
                    r.meta.patient_id,
                    r.meta.study_uid,
                    r.meta.series_uid,
                    r.meta.sop_uid,
                    r.meta.view,
                    serde_json::to_string(&r.meta.labels).unwrap_or_else(|_| "[]".into()),
                    r.meta.report,
                    serde_json::to_string(&r.meta.regions).unwrap_or_else(|_| "[]".into()),
                    r.meta.path,
                    r.thumbnail_png,
                ],
            )
            .map_err(db)?;
            ids.push(tx.last_insert_rowid());
        }
        if store_model.is_none() {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('model_id', ?1)",
                [&records[0].meta.model_id],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('dim', ?1)",
                [records[0].embedding.len().to_string()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(ids)
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
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut cache, model_id)?;
        if cache.rows.is_empty() {
            return Ok(Vec::new());
        }
        if query.len() != cache.dim {
            return Err(StoreError::Dimension {
                want: cache.dim,
                got: query.len(),
            });
        }
        let rows = &cache.rows;
        let pass = |i: u32| {
            let r = &rows[i as usize];
            filter.accepts(&r.patient, &r.view, &r.labels, r.annotated)
        };
        let found = match &cache.hnsw {
            Some(h) => h.search(query, k, self.params.ef_search, &pass),
            None => exact_search(&cache.data, cache.dim, query, k, &pass),
        };
        let ids: Vec<(i64, f32)> = found
            .iter()
            .map(|(i, s)| (rows[*i as usize].id, *s))
            .collect();
        drop(cache);
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM records WHERE id = ?1",
                Self::INFO_COLS
            ))
            .map_err(db)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, score) in ids {
            if let Some(record) = stmt
                .query_row([id], Self::info_from_row)
                .optional()
                .map_err(db)?
            {
                out.push(Hit { score, record });
            }
        }
        Ok(out)
    }

    fn records(&self) -> Result<Vec<RecordInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM records ORDER BY id",
                Self::INFO_COLS
            ))
            .map_err(db)?;
        let rows = stmt.query_map([], Self::info_from_row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()
            .query_row("SELECT thumbnail FROM records WHERE id = ?1", [id], |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()
            .map(|o| o.flatten())
            .map_err(db)
    }

    fn replace_embeddings(
        &self,
        updates: &[(i64, Vec<f32>)],
        model_id: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        for (id, e) in updates {
            tx.execute(
                "UPDATE records SET embedding = ?1, model_id = ?2 WHERE id = ?3",
                params![to_blob(e), model_id, id],
            )
            .map_err(db)?;
        }
        let others: i64 = tx
            .query_row(
                "SELECT count(*) FROM records WHERE model_id != ?1",
                [model_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        if others == 0 {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('model_id', ?1)",
                [model_id],
            )
            .map_err(db)?;
            if let Some((_, e)) = updates.first() {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('dim', ?1)",
                    [e.len().to_string()],
                )
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = Cache::default();
        let _ = std::fs::remove_file(self.index_path());
        Ok(())
    }

    fn delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        for id in ids {
            tx.execute("DELETE FROM records WHERE id = ?1", [id])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        drop(conn);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Cache::default();
        Ok(())
    }
}
