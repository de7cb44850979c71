//! The training/indexing manifest (JSON Lines, one image per line; see interface.md) and the
//! importer for the NIH ChestX-ray14 CSV layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not a valid record.
    #[error("manifest line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A CSV file of the NIH layout is malformed.
    #[error("NIH layout: {0}")]
    Nih(String),
}

/// A finding's box and phrase in one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Grounding phrase (may carry side/zone words).
    pub phrase: String,
    /// The phrase without location words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase_basic: Option<String>,
    /// Finding class (e.g. `Effusion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    /// Other names for the finding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synonyms: Vec<String>,
    /// `[x1, y1, x2, y2]` in pixels of the original image.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// One image of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Record {
    /// Image path, relative to the manifest's folder or absolute (DICOM, PNG or JPEG).
    pub image: String,
    /// Patient id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// Study id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_id: Option<String>,
    /// View (PA, AP, LL…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Report text.
    #[serde(default)]
    pub report: Option<String>,
    /// Image-level labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Boxes with phrases.
    #[serde(default)]
    pub regions: Vec<Region>,
}

/// A manifest with its folder (to resolve relative image paths).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// Folder relative paths are resolved against.
    pub base: PathBuf,
    /// Records in file order.
    pub records: Vec<Record>,
}

impl Manifest {
    /// Read a JSONL manifest; blank lines are skipped.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Io {
            what: format!("reading manifest {}", path.display()),
            source: e,
        })?;
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(line).map_err(|e| ManifestError::Parse {
                line: i + 1,
                message: e.to_string(),
            })?;
            records.push(r);
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self { base, records })
    }

    /// Write as JSONL atomically.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let mut out = String::new();
        for r in &self.records {
            out.push_str(&serde_json::to_string(r).map_err(|e| ManifestError::Parse {
                line: 0,
                message: e.to_string(),
            })?);
            out.push('\n');
        }
        crate::util::atomic_write(path, out.as_bytes()).map_err(|e| ManifestError::Io {
            what: format!("writing manifest {}", path.display()),
            source: e,
        })
    }

    /// Absolute path of a record's image.
    pub fn image_path(&self, r: &Record) -> PathBuf {
        let p = Path::new(&r.image);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The same records with absolute image paths (to write the manifest elsewhere).
    pub fn with_absolute_paths(&self) -> Manifest {
        let records = self
            .records
            .iter()
            .map(|r| Record {
                image: self.image_path(r).to_string_lossy().into_owned(),
                ..r.clone()
            })
            .collect();
        Manifest {
            base: self.base.clone(),
            records,
        }
    }

    /// Number of regions over all records.
    pub fn region_count(&self) -> usize {
        self.records.iter().map(|r| r.regions.len()).sum()
    }

    /// Patient-level split: a patient goes to validation when a hash of its id falls under
    /// `val_fraction` (records without a patient id use the image path). Returns (train, val).
    pub fn split(&self, val_fraction: f64, seed: u64) -> (Manifest, Manifest) {
        let mut train = Manifest {
            base: self.base.clone(),
            records: Vec::new(),
        };
        let mut val = train.clone();
        for r in &self.records {
            let key = r.patient_id.clone().unwrap_or_else(|| r.image.clone());
            let h = fnv64(seed, key.as_bytes());
            if (h % 10_000) as f64 / 10_000.0 < val_fraction {
                val.records.push(r.clone());
            } else {
                train.records.push(r.clone());
            }
        }
        (train, val)
    }
}

/// FNV-1a hash mixed with a seed (stable across platforms and versions).
pub fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lower-case phrase naming an NIH label, as used in captions and label texts.
pub fn label_phrase(label: &str) -> String {
    match label {
        "Effusion" => "pleural effusion".into(),
        "Infiltration" | "Infiltrate" => "infiltrate".into(),
        "Pleural_Thickening" => "pleural thickening".into(),
        "No Finding" => "no finding".into(),
        other => other.replace('_', " ").to_lowercase(),
    }
}

/// The text built from image-level labels (for the sigmoid loss and label-only captioning).
pub fn labels_text(labels: &[String]) -> String {
    if labels.is_empty() {
        return "no finding.".into();
    }
    let parts: Vec<String> = labels.iter().map(|l| label_phrase(l)).collect();
    format!("{}.", parts.join(", "))
}

#[derive(Deserialize)]
struct NihPhrase {
    image: String,
    finding: String,
    bbox_xywh: [f32; 4],
    phrase: String,
    #[serde(default)]
    phrase_basic: Option<String>,
    #[serde(default)]
    synonyms: Vec<String>,
}

fn relative_to(path: &Path, base: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

/// Convert the NIH layout (`images/`, `labels.csv`, `phrases.jsonl` or `boxes.csv`) under `dir`
/// into a manifest whose image paths are relative to `out_dir` where possible.
pub fn import_nih(dir: &Path, out_dir: &Path) -> Result<Manifest, ManifestError> {
    let io = |what: String| move |e| ManifestError::Io { what, source: e };
    let labels_path = dir.join("labels.csv");
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&labels_path)
        .map_err(|e| ManifestError::Nih(format!("{}: {e}", labels_path.display())))?;
    let mut records: BTreeMap<String, Record> = BTreeMap::new();
    let dir_abs = std::fs::canonicalize(dir).map_err(io(format!("opening {}", dir.display())))?;
    let out_abs = std::fs::canonicalize(out_dir).unwrap_or_else(|_| out_dir.to_path_buf());
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(|e| ManifestError::Nih(format!("labels.csv row {}: {e}", i + 2)))?;
        let name = row.get(0).unwrap_or("").trim().to_string();
        if name.is_empty() {
            continue;
        }
        let labels: Vec<String> = row
            .get(1)
            .unwrap_or("")
            .split('|')
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "No Finding")
            .map(String::from)
            .collect();
        let img = dir_abs.join("images").join(&name);
        records.insert(
            name.clone(),
            Record {
                image: relative_to(&img, &out_abs),
                patient_id: row.get(3).map(|s| s.trim().to_string()),
                study_id: Some(name.trim_end_matches(".png").to_string()),
                view: row.get(6).map(|s| s.trim().to_string()),
                report: None,
                labels,
                regions: Vec::new(),
            },
        );
    }
    let phrases = dir.join("phrases.jsonl");
    if phrases.exists() {
        let text = std::fs::read_to_string(&phrases)
            .map_err(io(format!("reading {}", phrases.display())))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let p: NihPhrase = serde_json::from_str(line)
                .map_err(|e| ManifestError::Nih(format!("phrases.jsonl line {}: {e}", i + 1)))?;
            let Some(r) = records.get_mut(&p.image) else {
                return Err(ManifestError::Nih(format!(
                    "phrases.jsonl line {}: image {} is not in labels.csv",
                    i + 1,
                    p.image
                )));
            };
            let [x, y, w, h] = p.bbox_xywh;
            r.regions.push(Region {
                phrase: p.phrase,
                phrase_basic: p.phrase_basic,
                finding: Some(p.finding),
                synonyms: p.synonyms,
                bbox: [x, y, x + w, y + h],
            });
        }
    } else {
        let boxes = dir.join("boxes.csv");
        let mut rdr = csv::Reader::from_path(&boxes)
            .map_err(|e| ManifestError::Nih(format!("{}: {e}", boxes.display())))?;
        for (i, row) in rdr.records().enumerate() {
            let row =
                row.map_err(|e| ManifestError::Nih(format!("boxes.csv row {}: {e}", i + 2)))?;
            let f = |k: usize| -> Result<f32, ManifestError> {
                row.get(k)
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| {
                        ManifestError::Nih(format!("boxes.csv row {}: bad number", i + 2))
                    })
            };
            let name = row.get(0).unwrap_or("").to_string();
            let finding = row.get(1).unwrap_or("").to_string();
            let (x, y, w, h) = (f(2)?, f(3)?, f(4)?, f(5)?);
            if let Some(r) = records.get_mut(&name) {
                let phrase = label_phrase(&finding);
                r.regions.push(Region {
                    phrase: phrase.clone(),
                    phrase_basic: Some(phrase),
                    finding: Some(finding),
                    synonyms: Vec::new(),
                    bbox: [x, y, x + w, y + h],
                });
            }
        }
    }
    Ok(Manifest {
        base: out_abs,
        records: records.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_text_forms() {
        assert_eq!(labels_text(&[]), "no finding.");
        assert_eq!(
            labels_text(&["Effusion".into(), "Pleural_Thickening".into()]),
            "pleural effusion, pleural thickening."
        );
    }

    #[test]
    fn split_is_patient_level_and_stable() {
        let mut m = Manifest::default();
        for i in 0..200 {
            m.records.push(Record {
                image: format!("{i}.png"),
                patient_id: Some(format!("{}", i / 2)),
                ..Default::default()
            });
        }
        let (t, v) = m.split(0.2, 1);
        assert_eq!(t.records.len() + v.records.len(), 200);
        assert!(!v.records.is_empty() && v.records.len() < 80);
        let vp: std::collections::HashSet<_> =
            v.records.iter().map(|r| r.patient_id.clone()).collect();
        assert!(t.records.iter().all(|r| !vp.contains(&r.patient_id)));
        let (t2, _) = m.split(0.2, 1);
        assert_eq!(t.records, t2.records);
    }
}
