//! Checkpoints that survive anything: each is a folder `step-NNNNNNNN` holding
//! `checkpoint.safetensors` (parameters and both Adam moments) and `state.json` (step, best
//! validation, and the SHA-256 of the tensors). A checkpoint is written in a temporary folder,
//! fsynced and renamed into place; only then is the `latest` pointer replaced atomically. A kill
//! at any moment leaves the previous checkpoint intact; loading verifies the hash and falls back to
//! the newest intact checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::TrainError;
use crate::util::{atomic_write, sha256_hex, sync_dir};

/// Training progress stored with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Adam's update counter.
    pub adam_t: u64,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// Step of the best validation loss.
    pub best_step: Option<usize>,
    /// SHA-256 of `checkpoint.safetensors`.
    pub sha256: String,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Parameters by name.
    pub params: BTreeMap<String, Tensor>,
    /// Optimizer state.
    pub optim: AdamW,
    /// Progress.
    pub state: TrainState,
    /// Folder it came from.
    pub dir: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> TrainError {
    move |e| TrainError::Io { what, source: e }
}

/// Name of the folder for a step.
pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint under `root` (`root/step-N`), point `latest` at it, and prune to the newest
/// `keep_last` plus the best one.
pub fn save(
    root: &Path,
    params: &BTreeMap<String, Tensor>,
    optim: &AdamW,
    mut state: TrainState,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let name = step_dir_name(state.step);
    let final_dir = root.join(&name);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in params {
        tensors.insert(format!("param/{k}"), v.clone());
    }
    for (k, v) in &optim.m {
        tensors.insert(format!("adam_m/{k}"), v.clone());
    }
    for (k, v) in &optim.v {
        tensors.insert(format!("adam_v/{k}"), v.clone());
    }
    let bytes = safetensors::serialize(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| TrainError::Checkpoint(format!("serialising tensors: {e}")))?;
    state.sha256 = sha256_hex(&bytes);
    state.adam_t = optim.t;
    if !final_dir.exists() {
        let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        write_synced(&tmp.join("checkpoint.safetensors"), &bytes)?;
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        write_synced(&tmp.join("state.json"), &json)?;
        sync_dir(&tmp);
        std::fs::rename(&tmp, &final_dir).map_err(io(format!("renaming {}", tmp.display())))?;
        sync_dir(root);
    }
    atomic_write(&root.join("latest"), name.as_bytes()).map_err(io("writing latest".into()))?;
    prune(root, keep_last, state.best_step)?;
    Ok(final_dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", path.display())))
}

/// Step folders under `root`, newest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

fn prune(root: &Path, keep_last: usize, best: Option<usize>) -> Result<(), TrainError> {
    for (i, (step, dir)) in list(root).into_iter().enumerate() {
        if i >= keep_last.max(1) && Some(step) != best {
            std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
        }
    }
    // leftovers of interrupted writes
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(".tmp-") && !n.ends_with(&format!("-{}", std::process::id())) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Load and verify one checkpoint folder.
pub fn load_dir(dir: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
    let state_path = dir.join("state.json");
    let text =
        std::fs::read(&state_path).map_err(io(format!("reading {}", state_path.display())))?;
    let state: TrainState = serde_json::from_slice(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    let tpath = dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&tpath).map_err(io(format!("reading {}", tpath.display())))?;
    if sha256_hex(&bytes) != state.sha256 {
        return Err(TrainError::Checkpoint(format!(
            "{} is damaged (hash mismatch)",
            tpath.display()
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", tpath.display())))?;
    let mut params = BTreeMap::new();
    let mut optim = AdamW::default();
    for (k, v) in tensors {
        if let Some(n) = k.strip_prefix("param/") {
            params.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix("adam_m/") {
            optim.m.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix("adam_v/") {
            optim.v.insert(n.to_string(), v);
        }
    }
    optim.t = state.adam_t;
    Ok(Checkpoint {
        params,
        optim,
        state,
        dir: dir.to_path_buf(),
    })
}

/// The newest intact checkpoint: the one `latest` names, else the newest folder that verifies.
pub fn load_latest(root: &Path, device: &Device) -> Result<Option<Checkpoint>, TrainError> {
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        match load_dir(&dir, device) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => tracing::warn!("latest checkpoint unusable ({e}); looking for an older one"),
        }
    }
    for (_, dir) in list(root) {
        match load_dir(&dir, device) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => tracing::warn!("skipping checkpoint: {e}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            adam_t: step as u64,
            best_val: None,
            best_step: None,
            sha256: String::new(),
        }
    }

    #[test]
    fn save_load_prune_and_corruption_fallback() {
        let d = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut p = BTreeMap::new();
        for step in 1..=4 {
            p.insert("w".to_string(), Tensor::new(&[step as f32], &dev).unwrap());
            let mut o = AdamW {
                t: step as u64,
                ..Default::default()
            };
            o.m.insert("w".into(), Tensor::new(&[0.5f32], &dev).unwrap());
            o.v.insert("w".into(), Tensor::new(&[0.25f32], &dev).unwrap());
            save(d.path(), &p, &o, state(step), 2).unwrap();
        }
        assert_eq!(list(d.path()).len(), 2);
        let c = load_latest(d.path(), &dev).unwrap().unwrap();
        assert_eq!(c.state.step, 4);
        assert_eq!(c.optim.t, 4);
        let w: Vec<f32> = c.params["w"].to_vec1().unwrap();
        assert_eq!(w, vec![4.0]);
        // damage the latest: loading falls back to step 3
        let f = d.path().join("step-00000004/checkpoint.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xFF;
        std::fs::write(&f, bytes).unwrap();
        let c = load_latest(d.path(), &dev).unwrap().unwrap();
        assert_eq!(c.state.step, 3);
    }
}
