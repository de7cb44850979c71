//! Where the bundled default model and the bundled tokenizers are: next to the executable (an
//! installed tree), in the working directory, or in the source tree. `$LOFI_MODEL` overrides the
//! model. The GUI and the CLI both ask here.

use std::path::{Path, PathBuf};

/// Folder name of the bundled default model under `models/`.
pub const DEFAULT_MODEL: &str = "lofi-dino";

/// A bundled file or folder (relative to the repository root), looked up next to the
/// executable, then in the working directory, then in the source tree.
pub fn bundled_path(rel: &Path) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            let c = dir.join(rel);
            if c.exists() {
                return c;
            }
        }
    }
    if rel.exists() {
        return rel.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The default model directory: `$LOFI_MODEL`, else the bundled `models/lofi-dino`.
pub fn default_model_dir() -> PathBuf {
    if let Ok(p) = std::env::var("LOFI_MODEL") {
        return PathBuf::from(p);
    }
    bundled_path(&Path::new("models").join(DEFAULT_MODEL))
}

/// The bundled WordPiece tokenizer (used by random-weight benchmark models).
pub fn default_tokenizer() -> PathBuf {
    bundled_path(Path::new(
        "assets/tokenizer/all-MiniLM-L6-v2/tokenizer.json",
    ))
}

/// A path from a training config: as written when it exists from the working directory, else
/// relative to the repository the config file sits in (`configs/x.toml` → `x/..`), else to the
/// config's own folder. Configs name bundled files relative to the repository root, so a run
/// can start from any working directory.
pub fn resolve_config_path(p: &Path, config_file: Option<&Path>) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    if let Some(dir) = config_file.and_then(Path::parent) {
        for base in [dir.parent(), Some(dir)].into_iter().flatten() {
            let c = base.join(p);
            if c.exists() {
                return c;
            }
        }
    }
    let c = bundled_path(p);
    if c.exists() {
        c
    } else {
        p.to_path_buf()
    }
}
