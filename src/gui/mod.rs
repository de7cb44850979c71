//! The desktop viewer (eframe on wgpu). Depends on every core module; nothing depends on it.

pub mod ai;
pub mod app;
pub mod command;
pub mod export;
pub mod interaction;
pub mod jobs;
pub mod pacs;
pub mod panels;
pub mod renderer;
pub mod screenshot;
pub mod similar;
pub mod state;
pub mod view;
pub mod viewport;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use app::{Args, LofiApp, RunMode};
pub use command::AppCommand;

/// How a screenshot run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ShotOutcome {
    /// Not a screenshot run, or still running.
    #[default]
    Pending,
    /// Saved.
    Saved(PathBuf),
    /// Failed with a message.
    Failed(String),
}

/// Open the viewer window; returns when it closes. With `args.screenshot`, returns after the
/// screenshot is saved (or fails).
pub fn run(args: Args) -> anyhow::Result<ShotOutcome> {
    let outcome = Arc::new(Mutex::new(ShotOutcome::Pending));
    let out2 = outcome.clone();
    // a screenshot run neither reads nor writes the user's window and panel memory
    let scratch = match args.screenshot {
        Some(_) => Some(tempfile::tempdir()?),
        None => None,
    };
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: egui::ViewportBuilder::default()
            .with_title("lofi-viewer")
            .with_inner_size([1440.0, 900.0])
            .with_min_inner_size([640.0, 400.0])
            .with_drag_and_drop(true),
        persist_window: args.screenshot.is_none(),
        persistence_path: scratch.as_ref().map(|d| d.path().to_path_buf()),
        ..Default::default()
    };
    eframe::run_native(
        "lofi-viewer",
        options,
        Box::new(move |cc| Ok(Box::new(LofiApp::new(cc, args, out2)))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))?;
    let o = outcome.lock().map(|o| o.clone()).unwrap_or_default();
    Ok(o)
}
