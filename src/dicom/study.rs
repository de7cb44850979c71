//! Organising opened files into patient → study → series → instance, sorted by instance number.
//! Folders are walked recursively (files that are neither DICOM nor PNG/JPEG are skipped and
//! reported), DICOMDIR files are followed, PNG/JPEG files become single-image studies, and
//! non-image objects (structured reports, presentation states) are listed with their kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use serde::Serialize;

use super::object::{self, ImageInfo};
use crate::util::Cancel;

/// One file of a series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Instance {
    /// File path.
    pub path: PathBuf,
    /// SOP Instance UID (file name for PNG/JPEG).
    pub sop_uid: String,
    /// What kind of object it is ("CR image", "Structured report", …).
    pub kind: String,
    /// Instance Number.
    pub instance_number: Option<i32>,
    /// Frames.
    pub frames: u32,
    /// Whether it can be displayed.
    pub is_image: bool,
    /// Columns × rows.
    pub size: (u32, u32),
    /// View Position.
    pub view: String,
}

/// A series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// Series Instance UID.
    pub uid: String,
    /// Series Number.
    pub number: Option<i32>,
    /// Modality.
    pub modality: String,
    /// Series Description.
    pub description: String,
    /// Instances sorted by instance number.
    pub instances: Vec<Instance>,
}

/// A study.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Study {
    /// Study Instance UID.
    pub uid: String,
    /// Study Date.
    pub date: String,
    /// Study Description.
    pub description: String,
    /// Series sorted by number.
    pub series: Vec<Series>,
}

/// A patient.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Patient {
    /// Patient ID.
    pub id: String,
    /// Patient's Name.
    pub name: String,
    /// Studies, newest first.
    pub studies: Vec<Study>,
}

/// A file that was not added, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Result of scanning paths.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Scan {
    /// Patients, sorted by id.
    pub patients: Vec<Patient>,
    /// Files not added.
    pub skipped: Vec<Skipped>,
}

impl Scan {
    /// Every displayable instance in browser order.
    pub fn images(&self) -> Vec<&Instance> {
        self.patients
            .iter()
            .flat_map(|p| &p.studies)
            .flat_map(|s| &s.series)
            .flat_map(|s| &s.instances)
            .filter(|i| i.is_image)
            .collect()
    }
}

/// A readable name of a SOP class.
pub fn sop_class_name(uid: &str, modality: &str) -> String {
    let n = match uid {
        "1.2.840.10008.5.1.4.1.1.1" => "CR image",
        "1.2.840.10008.5.1.4.1.1.1.1" | "1.2.840.10008.5.1.4.1.1.1.1.1" => "DX image",
        "1.2.840.10008.5.1.4.1.1.7" => "Secondary capture",
        "1.2.840.10008.5.1.4.1.1.11.1" => "Presentation state",
        "1.2.840.10008.5.1.4.1.1.88.59" => "Key object selection",
        "1.2.840.10008.1.3.10" => "DICOMDIR",
        u if u.starts_with("1.2.840.10008.5.1.4.1.1.88.") => "Structured report",
        "" => "image",
        _ => "",
    };
    if n.is_empty() {
        if modality.is_empty() {
            "object".into()
        } else {
            format!("{modality} object")
        }
    } else {
        n.into()
    }
}

fn walk(path: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>, depth: usize) {
    if depth > 64 {
        return;
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(r) => r.flatten().map(|e| e.path()).collect(),
            Err(e) => {
                skipped.push(Skipped {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
                return;
            }
        };
        entries.sort();
        for e in entries {
            walk(&e, out, skipped, depth + 1);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

fn dicomdir_refs(obj: &dicom_object::DefaultDicomObject, base: &Path) -> Vec<PathBuf> {
    let Some(seq) = obj.get(tags::DIRECTORY_RECORD_SEQUENCE) else {
        return Vec::new();
    };
    let Some(items) = seq.items() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let parts = it.get(tags::REFERENCED_FILE_ID)?.to_multi_str().ok()?;
            let mut p = base.to_path_buf();
            for c in parts.iter() {
                let c = c.trim();
                if c.is_empty() || c == ".." || c.contains('/') {
                    return None;
                }
                p.push(c);
            }
            Some(p)
        })
        .collect()
}

fn looks_like_dicom(head: &[u8]) -> bool {
    (head.len() >= 132 && &head[128..132] == b"DICM") || head.starts_with(b"DICM")
}

/// Scan files and folders (recursively) into a study tree.
pub fn scan(paths: &[PathBuf], cancel: &Cancel, progress: &dyn Fn(usize, usize)) -> Scan {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        if !p.exists() {
            skipped.push(Skipped {
                path: p.clone(),
                reason: "no such file or folder".into(),
            });
            continue;
        }
        walk(p, &mut files, &mut skipped, 0);
    }
    let mut infos: Vec<(PathBuf, ImageInfo)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i < files.len() {
        if cancel.is_cancelled() {
            break;
        }
        progress(i, files.len());
        let path = files[i].clone();
        i += 1;
        if !seen.insert(path.clone()) {
            continue;
        }
        let bytes = match object::read_limited(&path) {
            Ok(b) => b,
            Err(e) => {
                skipped.push(Skipped {
                    path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if super::is_plain_image(&bytes) {
            match super::load_plain(
                &bytes,
                &path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ) {
                Ok(img) => infos.push((path, img.info)),
                Err(e) => skipped.push(Skipped {
                    path,
                    reason: e.to_string(),
                }),
            }
            continue;
        }
        let is_dicomdir_name = path
            .file_name()
            .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"));
        if !looks_like_dicom(&bytes) && !is_dicomdir_name {
            skipped.push(Skipped {
                path,
                reason: "not a DICOM, PNG or JPEG file".into(),
            });
            continue;
        }
        match object::parse(&bytes) {
            Ok(obj) => {
                let info = object::image_info(&obj);
                let class = obj
                    .meta()
                    .media_storage_sop_class_uid()
                    .trim_end_matches('\0');
                if class == "1.2.840.10008.1.3.10" || is_dicomdir_name {
                    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                    files.extend(dicomdir_refs(&obj, &base));
                    continue;
                }
                infos.push((path, info));
            }
            Err(e) => skipped.push(Skipped {
                path,
                reason: e.to_string(),
            }),
        }
    }
    progress(files.len(), files.len());
    Scan {
        patients: organise(infos),
        skipped,
    }
}

/// Group instances into the tree and sort every level.
#[allow(clippy::type_complexity)]
pub fn organise(infos: Vec<(PathBuf, ImageInfo)>) -> Vec<Patient> {
    type SeriesMap = BTreeMap<String, Series>;
    let mut tree: BTreeMap<String, (String, BTreeMap<String, (Study, SeriesMap)>)> =
        BTreeMap::new();
    for (path, info) in infos {
        let pid = if info.patient_id.is_empty() {
            "(no id)".to_string()
        } else {
            info.patient_id.clone()
        };
        let p = tree
            .entry(pid)
            .or_insert_with(|| (info.patient_name.clone(), BTreeMap::new()));
        let st = p.1.entry(info.study_uid.clone()).or_insert_with(|| {
            (
                Study {
                    uid: info.study_uid.clone(),
                    date: info.study_date.clone(),
                    description: info.study_description.clone(),
                    series: Vec::new(),
                },
                BTreeMap::new(),
            )
        });
        let se =
            st.1.entry(info.series_uid.clone())
                .or_insert_with(|| Series {
                    uid: info.series_uid.clone(),
                    number: info.series_number,
                    modality: info.modality.clone(),
                    description: info.series_description.clone(),
                    instances: Vec::new(),
                });
        se.instances.push(Instance {
            kind: if info.has_pixels {
                let k = sop_class_name(&info.sop_class_uid, &info.modality);
                if k.ends_with("object") {
                    format!("{} image", info.modality)
                } else {
                    k
                }
            } else {
                sop_class_name(&info.sop_class_uid, &info.modality)
            },
            path,
            sop_uid: info.sop_uid.clone(),
            instance_number: info.instance_number,
            frames: info.frames,
            is_image: info.has_pixels,
            size: (info.columns, info.rows),
            view: info.view.clone(),
        });
    }
    tree.into_iter()
        .map(|(id, (name, studies))| {
            let mut studies: Vec<Study> = studies
                .into_values()
                .map(|(mut st, series)| {
                    let mut series: Vec<Series> = series.into_values().collect();
                    for s in &mut series {
                        s.instances.sort_by(|a, b| {
                            (a.instance_number.unwrap_or(i32::MAX), &a.path)
                                .cmp(&(b.instance_number.unwrap_or(i32::MAX), &b.path))
                        });
                    }
                    series.sort_by_key(|s| (s.number.unwrap_or(i32::MAX), s.uid.clone()));
                    st.series = series;
                    st
                })
                .collect();
            studies.sort_by(|a, b| b.date.cmp(&a.date).then(a.uid.cmp(&b.uid)));
            Patient { id, name, studies }
        })
        .collect()
}
