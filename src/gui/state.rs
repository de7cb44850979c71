//! The viewer's state: what the panels read and what [`super::command::AppCommand`]s change.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Pos2, Rect};
use serde::{Deserialize, Serialize};

use super::view::ViewTransform;
use crate::dicom::lut::{default_voi, modality_value};
use crate::dicom::study::Scan;
use crate::dicom::{DisplayParams, LoadedImage, Voi, VoiFunction};

/// A named window preset (absolute centre/width in modality units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// Name shown in menus.
    pub name: String,
    /// Centre.
    pub center: f64,
    /// Width.
    pub width: f64,
}

/// How many recently opened files/folders the File menu keeps.
pub const RECENT_MAX: usize = 10;

/// Settings kept between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Bilinear interpolation when zoomed.
    pub smooth: bool,
    /// Show the study browser.
    pub show_browser: bool,
    /// Show the tag browser.
    pub show_tags: bool,
    /// Two viewports side by side.
    pub two_up: bool,
    /// Keep window and zoom of the two viewports in step.
    pub sync: bool,
    /// User window presets (after the file's own windows on the number keys).
    pub presets: Vec<Preset>,
    /// Folder of the last open dialog.
    pub last_dir: Option<PathBuf>,
    /// Show the AI panel.
    pub show_ai: bool,
    /// Phrases asked before.
    pub ai_history: Vec<String>,
    /// Model folder chosen in the GUI (overrides the default).
    pub model_dir: Option<PathBuf>,
    /// Recently opened files and folders, most recent first.
    pub recent: Vec<PathBuf>,
    /// Width of the AI panel in points (set by the user's resize).
    pub ai_panel_width: f32,
    /// Named archive nodes.
    pub pacs_nodes: Vec<crate::pacs::Node>,
    /// The node searches and retrieves use.
    pub pacs_node: usize,
    /// The storage SCP's settings.
    pub pacs_listener: super::pacs::ListenerSettings,
    /// Where retrieved and received studies are filed (default: the data dir's `studies`).
    pub study_cache: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            smooth: true,
            show_browser: true,
            show_tags: false,
            two_up: false,
            sync: true,
            presets: Vec::new(),
            last_dir: None,
            show_ai: true,
            ai_history: Vec::new(),
            model_dir: None,
            recent: Vec::new(),
            ai_panel_width: 340.0,
            pacs_nodes: Vec::new(),
            pacs_node: 0,
            pacs_listener: Default::default(),
            study_cache: None,
        }
    }
}

impl Settings {
    /// Put `paths` at the front of the recent list (no duplicates, at most [`RECENT_MAX`]).
    pub fn remember(&mut self, paths: &[PathBuf]) {
        for p in paths.iter().rev() {
            self.recent.retain(|q| q != p);
            self.recent.insert(0, p.clone());
        }
        self.recent.truncate(RECENT_MAX);
    }
}

/// What the primary mouse button does in a viewport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PointerTool {
    /// Drag pans.
    #[default]
    Pan,
    /// Drag measures a distance.
    Ruler,
    /// Drag draws a region for the model to describe.
    DescribeRegion,
}

/// One image pane.
#[derive(Default)]
pub struct Viewport {
    /// File shown.
    pub path: Option<PathBuf>,
    /// Its decoded image.
    pub image: Option<Arc<LoadedImage>>,
    /// Frame shown.
    pub frame: usize,
    /// Window in use (None = the image's default).
    pub voi: Option<Voi>,
    /// User inversion.
    pub invert: bool,
    /// Placement.
    pub view: ViewTransform,
    /// Cine running.
    pub playing: bool,
    /// Time of the last cine frame.
    pub last_tick: f64,
    /// Ruler end points in image pixels.
    pub ruler: Option<[Pos2; 2]>,
    /// Load or display error.
    pub error: Option<String>,
    /// Waiting for a load.
    pub loading: bool,
    /// Last viewport rectangle on screen.
    pub rect: Option<Rect>,
}

impl Viewport {
    /// The window in use.
    pub fn current_voi(&self) -> Option<Voi> {
        let img = self.image.as_ref()?;
        let f = img.frames.get(self.frame)?;
        Some(self.voi.unwrap_or_else(|| default_voi(&img.info, f)))
    }

    /// Display parameters in use.
    pub fn params(&self) -> Option<DisplayParams> {
        Some(DisplayParams {
            voi: self.current_voi()?,
            invert: self.invert,
        })
    }

    /// Reset window, view, inversion and ruler.
    pub fn reset(&mut self) {
        self.voi = None;
        self.invert = false;
        self.view = ViewTransform::default();
        self.ruler = None;
    }

    /// The key under which this pane's AI results are kept.
    pub fn ai_key(&self) -> Option<String> {
        Some(super::ai::image_key(
            &self.image.as_ref()?.info,
            self.path.as_ref()?,
        ))
    }
}

/// The "full range" window of a frame: centre and width spanning its stored values (padding
/// excluded), in modality units.
pub fn full_range_window(img: &LoadedImage, frame: usize) -> Voi {
    let (center, width) = match img.frames.get(frame) {
        Some(f) => {
            let (lo, hi) = f.min_max(crate::dicom::lut::padding_range(&img.info));
            let (a, b) = (modality_value(lo, &img.info), modality_value(hi, &img.info));
            ((a + b) / 2.0, (b - a).abs().max(1.0))
        }
        None => (0.5, 1.0),
    };
    Voi::Window {
        center,
        width,
        function: VoiFunction::Linear,
    }
}

/// Stored value, modality value and position under the cursor.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Image pixel.
    pub pixel: Option<(u32, u32)>,
    /// Stored value.
    pub stored: Option<i32>,
    /// Modality value.
    pub modality: Option<f64>,
    /// Position in mm and whether at the detector.
    pub mm: Option<(f64, f64, bool)>,
}

/// A line in the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMessage {
    /// The text.
    pub text: String,
    /// Shown as an error.
    pub error: bool,
}

impl StatusMessage {
    /// A notice.
    pub fn info(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            error: false,
        }
    }

    /// An error (also logged).
    pub fn error(text: impl Into<String>) -> Self {
        let text = text.into();
        tracing::error!("{text}");
        Self { text, error: true }
    }
}

/// Everything the panels read.
#[derive(Default)]
pub struct AppState {
    /// Persisted settings.
    pub settings: Settings,
    /// Study tree.
    pub scan: Scan,
    /// The two panes.
    pub viewports: [Viewport; 2],
    /// The pane keyboard and browser act on.
    pub active: usize,
    /// Primary-button tool.
    pub tool: PointerTool,
    /// Thumbnails by file.
    pub thumbnails: HashMap<PathBuf, Option<egui::TextureHandle>>,
    /// Last status-bar message.
    pub message: Option<StatusMessage>,
    /// Value under the cursor.
    pub probe: Probe,
    /// Progress of background work (name → done/total).
    pub progress: HashMap<String, (usize, usize)>,
    /// AI state.
    pub ai: super::ai::AiState,
    /// Similar-cases panel.
    pub similar: super::similar::SimilarState,
    /// The PACS window.
    pub pacs: super::pacs::PacsState,
    /// The key and mouse help is shown.
    pub help_open: bool,
    /// Decoded images (small LRU).
    pub(crate) cache: HashMap<PathBuf, Arc<LoadedImage>>,
    pub(crate) cache_order: VecDeque<PathBuf>,
    /// The 8-bit pictures the model sees, by file and frame.
    pub(crate) gray: HashMap<(PathBuf, usize), Arc<image::GrayImage>>,
}

impl AppState {
    /// The window presets offered on the number keys: the file's windows and VOI LUTs, the full
    /// range, then the user's presets.
    pub fn presets(&self, idx: usize) -> Vec<(String, Voi)> {
        let vp = &self.viewports[idx];
        let Some(img) = vp.image.as_ref() else {
            return Vec::new();
        };
        if img.frames.get(vp.frame).is_none() {
            return Vec::new();
        }
        let info = &img.info;
        let mut out = Vec::new();
        for (i, w) in info.windows.iter().enumerate() {
            let name = w
                .explanation
                .clone()
                .unwrap_or_else(|| format!("File window {}", i + 1));
            out.push((
                name,
                Voi::Window {
                    center: w.center,
                    width: w.width,
                    function: info.voi_function,
                },
            ));
        }
        for (i, l) in info.voi_luts.iter().enumerate() {
            out.push((
                l.explanation
                    .clone()
                    .unwrap_or_else(|| format!("VOI LUT {}", i + 1)),
                Voi::Lut(i),
            ));
        }
        out.push(("Full range".into(), full_range_window(img, vp.frame)));
        for p in &self.settings.presets {
            out.push((
                p.name.clone(),
                Voi::Window {
                    center: p.center,
                    width: p.width,
                    function: VoiFunction::Linear,
                },
            ));
        }
        out
    }

    /// The 8-bit picture the model sees of pane `idx` (default window), cached, with its key;
    /// makes sure the image has a results entry.
    pub fn model_input(&mut self, idx: usize) -> Option<(String, Arc<image::GrayImage>)> {
        let vp = &self.viewports[idx];
        let img = vp.image.as_ref()?;
        let path = vp.path.clone()?;
        let f = img.frames.get(vp.frame)?;
        let key = super::ai::image_key(&img.info, &path);
        let gray = self
            .gray
            .entry((path, vp.frame))
            .or_insert_with(|| {
                let p = DisplayParams {
                    voi: default_voi(&img.info, f),
                    invert: false,
                };
                Arc::new(crate::dicom::lut::render(f, &img.info, &p).to_luma8())
            })
            .clone();
        self.ai.ensure_results(&key, f.width, f.height);
        Some((key, gray))
    }

    /// The active image's AI results.
    pub fn current_results(&self) -> Option<&crate::report::AiResults> {
        let key = self.viewports[self.active].ai_key()?;
        self.ai.results.get(&key)
    }

    /// The patient of pane `idx` (empty IDs are none).
    pub fn patient_of(&self, idx: usize) -> Option<String> {
        self.viewports[idx]
            .image
            .as_ref()
            .map(|i| i.info.patient_id.clone())
            .filter(|p| !p.is_empty())
    }

    /// Keep a decoded image (the panes' images are never evicted).
    pub fn cache_put(&mut self, path: PathBuf, img: Arc<LoadedImage>) {
        self.cache.insert(path.clone(), img);
        self.cache_order.push_back(path);
        while self.cache_order.len() > 12 {
            if let Some(old) = self.cache_order.pop_front() {
                if !self.viewports.iter().any(|v| v.path.as_ref() == Some(&old)) {
                    self.cache.remove(&old);
                }
            }
        }
    }

    /// A cached decoded image.
    pub fn cached(&self, path: &Path) -> Option<Arc<LoadedImage>> {
        self.cache.get(path).cloned()
    }
}
