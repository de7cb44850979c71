//! The application: state, one frame of UI, persistence, and the screenshot mode.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use egui::{Color32, Pos2, Rect, Sense, Vec2};
use serde::{Deserialize, Serialize};

use super::jobs::{JobEvent, Jobs};
use super::renderer::{ImageCallback, ImageRenderer, Uniforms};
use super::view::ViewTransform;
use super::ShotOutcome;
use crate::dicom::lut::{default_voi, modality_value};
use crate::dicom::study::Scan;
use crate::dicom::{DisplayParams, LoadedImage, Pixels, Voi, VoiFunction};
use crate::util::Cancel;

/// Command-line arguments of the GUI.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Files/folders to open.
    pub paths: Vec<PathBuf>,
    /// Run grounding for this phrase once the image is open.
    pub phrase: Option<String>,
    /// Save a screenshot here and exit.
    pub screenshot: Option<PathBuf>,
    /// Model directory.
    pub model: Option<PathBuf>,
    /// Prior-case store.
    pub store: Option<String>,
    /// Compute device.
    pub device: crate::model::load::DeviceChoice,
    /// Run "Similar to this image" once image, model and store are ready.
    pub similar: bool,
    /// Ground `phrase` with this many in-context cases from the store.
    pub shots: Option<usize>,
}

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
        }
    }
}

const SETTINGS_KEY: &str = "lofi-viewer-settings";

/// Mouse tool of the primary button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tool {
    /// Drag pans.
    #[default]
    Pan,
    /// Drag measures.
    Ruler,
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
    last_tick: f64,
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

/// The application.
pub struct LofiApp {
    /// Persisted settings.
    pub settings: Settings,
    /// Study tree.
    pub scan: Scan,
    /// Background jobs.
    pub jobs: Jobs,
    /// The two panes.
    pub viewports: [Viewport; 2],
    /// The pane keyboard and browser act on.
    pub active: usize,
    /// Mouse tool.
    pub tool: Tool,
    /// Decoded images (small LRU).
    cache: HashMap<PathBuf, Arc<LoadedImage>>,
    cache_order: VecDeque<PathBuf>,
    /// Thumbnails by file.
    pub thumbnails: HashMap<PathBuf, Option<egui::TextureHandle>>,
    /// Tag browser filter.
    pub tag_filter: String,
    /// Last error shown in the status bar.
    pub message: Option<(String, bool)>,
    /// Value under the cursor.
    pub probe: Probe,
    /// Progress of background work (name → done/total).
    pub progress: HashMap<String, (usize, usize)>,
    scan_cancel: Option<Cancel>,
    /// AI state.
    pub ai: super::ai::AiState,
    /// Similar-cases panel.
    pub similar: super::similar::SimilarState,
    gray: HashMap<(PathBuf, usize), Arc<image::GrayImage>>,
    phrase_started: bool,
    similar_started: bool,
    png_export: Arc<Mutex<Option<Result<(), String>>>>,
    args: Args,
    shot: Option<ShotState>,
    outcome: Arc<Mutex<ShotOutcome>>,
    has_gpu: bool,
}

struct ShotState {
    path: PathBuf,
    ready_frames: u32,
    requested: bool,
    started: std::time::Instant,
    done: Arc<Mutex<Option<Result<(), String>>>>,
}

fn image_key(path: &std::path::Path, frame: usize) -> u64 {
    crate::manifest::fnv64(frame as u64, path.to_string_lossy().as_bytes())
}

impl LofiApp {
    /// Create the app (restores settings, registers the GPU pipeline, starts loading `args.paths`).
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        args: Args,
        outcome: Arc<Mutex<ShotOutcome>>,
    ) -> Self {
        let mut has_gpu = false;
        if let Some(rs) = cc.wgpu_render_state.as_ref() {
            let r = ImageRenderer::new(&rs.device, rs.target_format);
            rs.renderer.write().callback_resources.insert(r);
            has_gpu = true;
        }
        let settings = if args.screenshot.is_some() {
            Settings::default()
        } else {
            cc.storage
                .and_then(|s| eframe::get_value::<Settings>(s, SETTINGS_KEY))
                .unwrap_or_default()
        };
        let mut app = Self::with_context(cc.egui_ctx.clone(), settings, args, outcome);
        app.has_gpu = has_gpu;
        app
    }

    /// Create without a window (tests drive it through egui_kittest).
    pub fn with_context(
        ctx: egui::Context,
        settings: Settings,
        args: Args,
        outcome: Arc<Mutex<ShotOutcome>>,
    ) -> Self {
        let shot = args.screenshot.clone().map(|path| ShotState {
            path,
            ready_frames: 0,
            requested: false,
            started: std::time::Instant::now(),
            done: Arc::new(Mutex::new(None)),
        });
        let mut app = Self {
            settings,
            scan: Scan::default(),
            jobs: Jobs::new(ctx),
            viewports: [Viewport::default(), Viewport::default()],
            active: 0,
            tool: Tool::Pan,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            thumbnails: HashMap::new(),
            tag_filter: String::new(),
            message: None,
            probe: Probe::default(),
            progress: HashMap::new(),
            scan_cancel: None,
            ai: super::ai::AiState::default(),
            similar: super::similar::SimilarState::default(),
            gray: HashMap::new(),
            phrase_started: false,
            similar_started: false,
            png_export: Arc::new(Mutex::new(None)),
            args: args.clone(),
            shot,
            outcome,
            has_gpu: false,
        };
        if !args.paths.is_empty() {
            app.open_paths(args.paths.clone(), true);
        }
        app.ai.history = app.settings.ai_history.clone();
        if args.screenshot.is_none() {
            app.ai.results_dir =
                Some(crate::store::default_location().with_file_name("ai-results"));
        }
        let model_dir = args
            .model
            .clone()
            .or_else(|| app.settings.model_dir.clone())
            .unwrap_or_else(crate::model::bundled::default_model_dir);
        app.ai.load_model(&app.jobs, model_dir, args.device);
        app.ai.open_store(&app.jobs, args.store.clone());
        app
    }

    /// The 8-bit picture the model sees of pane `idx` (default window), cached.
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

    /// Ground a phrase on the active pane's image.
    pub fn ground(&mut self, phrase: String) {
        let a = self.active;
        if let Some((key, gray)) = self.model_input(a) {
            self.ai.ground(&self.jobs, key, gray, phrase);
            self.settings.ai_history = self.ai.history.clone();
        }
    }

    /// Zoom pane `idx` onto a box of its results.
    pub fn zoom_to(&mut self, idx: usize, fi: usize, bi: usize) {
        let Some((key, _)) = self.model_input(idx) else {
            return;
        };
        let Some(b) = self
            .ai
            .results
            .get(&key)
            .and_then(|r| r.findings.get(fi))
            .and_then(|f| f.boxes.get(bi))
            .cloned()
        else {
            return;
        };
        self.ai.selected = Some((fi, bi));
        let vp = &mut self.viewports[idx];
        let (Some(rect), Some(img)) = (vp.rect, vp.image.as_ref()) else {
            return;
        };
        let Some(f) = img.frames.get(vp.frame) else {
            return;
        };
        let size = Vec2::new(f.width as f32, f.height as f32);
        let bw = vp.view.rotated_size(Vec2::new(b.x2 - b.x1, b.y2 - b.y1));
        vp.view.zoom = (0.6 * (rect.width() / bw.x.max(1.0)).min(rect.height() / bw.y.max(1.0)))
            .clamp(0.01, 64.0);
        vp.view.fit = false;
        vp.view.pan = Vec2::ZERO;
        let c = vp.view.image_to_screen(
            rect,
            size,
            Pos2::new((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0),
        );
        vp.view.pan = rect.center() - c;
    }

    /// The current image's AI results.
    pub fn current_results(&self) -> Option<&crate::report::AiResults> {
        let vp = &self.viewports[self.active];
        let img = vp.image.as_ref()?;
        let key = super::ai::image_key(&img.info, vp.path.as_ref()?);
        self.ai.results.get(&key)
    }

    /// Export the active image's results as JSON.
    pub fn export_json(&self, path: &std::path::Path) -> Result<(), String> {
        let r = self
            .current_results()
            .ok_or("no AI results for this image")?;
        let s = serde_json::to_vec_pretty(&r.to_json()).map_err(|e| e.to_string())?;
        crate::util::atomic_write(path, &s).map_err(|e| e.to_string())
    }

    /// Export the active image's results as a DICOM Structured Report.
    pub fn export_sr(&self, path: &std::path::Path) -> Result<(), String> {
        let r = self
            .current_results()
            .ok_or("no AI results for this image")?;
        let vp = &self.viewports[self.active];
        let img = vp.image.as_ref().ok_or("no image")?;
        let frame = (img.frames.len() > 1).then_some(vp.frame as u32);
        crate::dicom::sr::write(r, &img.info, frame, path).map_err(|e| e.to_string())
    }

    /// Scan paths in the background; with `show_first`, the first image opens when found.
    pub fn open_paths(&mut self, paths: Vec<PathBuf>, show_first: bool) {
        if let Some(c) = self.scan_cancel.take() {
            c.cancel();
        }
        let c = self.jobs.spawn("scan", move |h| {
            let hh = h.clone();
            let scan = crate::dicom::study::scan(&paths, &h.cancel, &|done, total| {
                if done % 16 == 0 || done == total {
                    hh.send(JobEvent::Progress {
                        job: "Scanning".into(),
                        done,
                        total,
                    });
                }
            });
            h.send(JobEvent::Scanned(scan));
        });
        self.scan_cancel = Some(c);
        if show_first {
            self.viewports[self.active].loading = true;
        }
    }

    /// Open a file in pane `idx` (decoded in the background unless cached).
    pub fn show_file(&mut self, idx: usize, path: PathBuf) {
        let vp = &mut self.viewports[idx];
        vp.path = Some(path.clone());
        vp.frame = 0;
        vp.ruler = None;
        vp.error = None;
        vp.playing = false;
        if let Some(img) = self.cache.get(&path) {
            vp.image = Some(img.clone());
            vp.loading = false;
            return;
        }
        vp.image = None;
        vp.loading = true;
        let p = path.clone();
        self.jobs.spawn("decode", move |h| {
            let result = crate::dicom::load(&p)
                .map(Arc::new)
                .map_err(|e| e.to_string());
            h.send(JobEvent::Loaded { path: p, result });
        });
    }

    fn cache_put(&mut self, path: PathBuf, img: Arc<LoadedImage>) {
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

    fn start_thumbnails(&mut self) {
        let paths: Vec<PathBuf> = self
            .scan
            .images()
            .iter()
            .map(|i| i.path.clone())
            .filter(|p| !self.thumbnails.contains_key(p))
            .collect();
        if paths.is_empty() {
            return;
        }
        for p in &paths {
            self.thumbnails.insert(p.clone(), None);
        }
        self.jobs.spawn("thumbnails", move |h| {
            for p in paths {
                if h.cancel.is_cancelled() {
                    break;
                }
                let image = crate::dicom::load_gray8(&p).ok().map(|g| {
                    let s = 96.0 / g.width().max(g.height()) as f32;
                    let t = image::imageops::thumbnail(
                        &g,
                        ((g.width() as f32 * s) as u32).max(1),
                        ((g.height() as f32 * s) as u32).max(1),
                    );
                    egui::ColorImage::from_gray(
                        [t.width() as usize, t.height() as usize],
                        t.as_raw(),
                    )
                });
                h.send(JobEvent::Thumbnail { path: p, image });
            }
        });
    }

    /// Apply finished background work.
    pub fn poll_jobs(&mut self, ctx: &egui::Context) {
        if let Some(r) = self.png_export.lock().ok().and_then(|mut s| s.take()) {
            self.message = Some(match r {
                Ok(()) => ("exported PNG".into(), false),
                Err(e) => (format!("PNG export failed: {e}"), true),
            });
        }
        for ev in self.jobs.poll() {
            if self.similar.store_info.is_none() && !self.similar.info_pending {
                if let Some(st) = self.ai.store.clone() {
                    self.similar.refresh_info(&self.jobs, st);
                }
            }
            let Some(ev) = self.ai.handle(ev, ctx) else {
                continue;
            };
            let ev = match self.similar.handle(ev, ctx) {
                Ok(folder) => {
                    if let (Some(dir), Some(m), Some(st)) =
                        (folder, self.ai.model.clone(), self.ai.store.clone())
                    {
                        self.similar.index_folder(&self.jobs, m, st, dir);
                    }
                    continue;
                }
                Err(ev) => ev,
            };
            match ev {
                JobEvent::Scanned(scan) => {
                    self.progress.remove("Scanning");
                    let first = scan.images().first().map(|i| i.path.clone());
                    if !scan.skipped.is_empty() {
                        self.message = Some((
                            format!(
                                "{} file(s) skipped (see the study browser)",
                                scan.skipped.len()
                            ),
                            false,
                        ));
                    }
                    merge_scan(&mut self.scan, scan);
                    self.start_thumbnails();
                    let a = self.active;
                    if self.viewports[a].loading && self.viewports[a].path.is_none() {
                        match first {
                            Some(p) => self.show_file(a, p),
                            None => {
                                self.viewports[a].loading = false;
                                self.viewports[a].error =
                                    Some("no image found in what was opened".into());
                            }
                        }
                    }
                }
                JobEvent::Loaded { path, result } => match result {
                    Ok(img) => {
                        self.cache_put(path.clone(), img.clone());
                        for vp in self.viewports.iter_mut() {
                            if vp.path.as_ref() == Some(&path) {
                                vp.image = Some(img.clone());
                                vp.loading = false;
                            }
                        }
                    }
                    Err(e) => {
                        for vp in self.viewports.iter_mut() {
                            if vp.path.as_ref() == Some(&path) {
                                vp.loading = false;
                                vp.error = Some(e.clone());
                            }
                        }
                        self.message = Some((format!("{}: {e}", path.display()), true));
                    }
                },
                JobEvent::Thumbnail { path, image } => {
                    let tex = image.map(|i| {
                        ctx.load_texture(path.to_string_lossy(), i, egui::TextureOptions::LINEAR)
                    });
                    self.thumbnails.insert(path, tex);
                }
                JobEvent::Progress { job, done, total } => {
                    self.progress.insert(job, (done, total));
                }
                JobEvent::Failed { job, error } => {
                    self.progress.remove(&job);
                    self.message = Some((format!("{job}: {error}"), true));
                }
                JobEvent::Other(b) if b.is::<ModelFolder>() => {
                    if let Ok(m) = b.downcast::<ModelFolder>() {
                        self.settings.model_dir = Some(m.0.clone());
                        self.ai.load_model(&self.jobs, m.0, self.args.device);
                    }
                }
                JobEvent::Other(b) if b.is::<ExportTo>() => {
                    if let Ok(e) = b.downcast::<ExportTo>() {
                        let ExportTo(kind, path) = *e;
                        self.export_to(kind, path, ctx);
                    }
                }
                other => {
                    if let Some(paths) = super::panels::take_picked(&other) {
                        if let Some(d) = paths.first().and_then(|p| p.parent()) {
                            self.settings.last_dir = Some(d.to_path_buf());
                        }
                        self.open_paths(paths, true);
                    }
                }
            }
        }
    }

    /// The window presets offered on the number keys: the file's windows and VOI LUTs, the full
    /// range, then the user's presets.
    pub fn presets(&self, idx: usize) -> Vec<(String, Voi)> {
        let vp = &self.viewports[idx];
        let Some(img) = vp.image.as_ref() else {
            return Vec::new();
        };
        let Some(f) = img.frames.get(vp.frame) else {
            return Vec::new();
        };
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
        let (lo, hi) = f.min_max(crate::dicom::lut::padding_range(info));
        let (a, b) = (modality_value(lo, info), modality_value(hi, info));
        out.push((
            "Full range".into(),
            Voi::Window {
                center: (a + b) / 2.0,
                width: (b - a).abs().max(1.0),
                function: VoiFunction::Linear,
            },
        ));
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

    /// Apply a change of window/zoom to pane `idx`, mirrored to the other when synchronised.
    fn sync_from(&mut self, idx: usize) {
        if !(self.settings.two_up && self.settings.sync) {
            return;
        }
        let other = 1 - idx;
        if self.viewports[other].image.is_none() {
            return;
        }
        let (voi, invert, view) = {
            let v = &self.viewports[idx];
            (v.voi, v.invert, v.view)
        };
        let o = &mut self.viewports[other];
        o.voi = voi;
        o.invert = invert;
        o.view.zoom = view.zoom;
        o.view.pan = view.pan;
        o.view.rotation = view.rotation;
        o.view.flip_h = view.flip_h;
        o.view.flip_v = view.flip_v;
        o.view.fit = view.fit;
    }

    fn handle_keys(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let idx = self.active;
        let presets = self.presets(idx);
        let ppp = ctx.pixels_per_point();
        let mut changed = false;
        ctx.input(|i| {
            let vp = &mut self.viewports[idx];
            use egui::Key;
            if i.key_pressed(Key::F) {
                vp.view.fit = true;
                changed = true;
            }
            if i.key_pressed(Key::Z) {
                vp.view.one_to_one(ppp);
                changed = true;
            }
            if i.key_pressed(Key::R) {
                vp.view.rotate_cw();
                changed = true;
            }
            if i.key_pressed(Key::H) {
                vp.view.flip_h = !vp.view.flip_h;
                changed = true;
            }
            if i.key_pressed(Key::V) {
                vp.view.flip_v = !vp.view.flip_v;
                changed = true;
            }
            if i.key_pressed(Key::I) {
                vp.invert = !vp.invert;
                changed = true;
            }
            if i.key_pressed(Key::Escape) || i.key_pressed(Key::Backspace) {
                vp.reset();
                changed = true;
            }
            if i.key_pressed(Key::A) {
                self.ai.show_layer = !self.ai.show_layer;
            }
            if i.key_pressed(Key::D) {
                self.ai.region_tool = !self.ai.region_tool;
            }
            if i.key_pressed(Key::M) {
                self.tool = if self.tool == Tool::Ruler {
                    Tool::Pan
                } else {
                    Tool::Ruler
                };
            }
            if i.key_pressed(Key::Space) {
                vp.playing = !vp.playing;
            }
            let n = vp.image.as_ref().map_or(1, |im| im.frames.len());
            if i.key_pressed(Key::ArrowRight) && vp.frame + 1 < n {
                vp.frame += 1;
            }
            if i.key_pressed(Key::ArrowLeft) && vp.frame > 0 {
                vp.frame -= 1;
            }
            let keys = [
                Key::Num1,
                Key::Num2,
                Key::Num3,
                Key::Num4,
                Key::Num5,
                Key::Num6,
                Key::Num7,
                Key::Num8,
                Key::Num9,
            ];
            for (k, key) in keys.iter().enumerate() {
                if i.key_pressed(*key) {
                    if let Some((_, v)) = presets.get(k) {
                        vp.voi = Some(*v);
                        changed = true;
                    }
                }
            }
        });
        if changed {
            self.sync_from(idx);
        }
    }

    /// Draw one pane and handle its mouse input.
    pub fn viewport_ui(&mut self, ui: &mut egui::Ui, idx: usize) {
        let (rect, resp) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 0.0, Color32::BLACK);
        if resp.clicked() || resp.drag_started() {
            self.active = idx;
        }
        if self.settings.two_up && self.active == idx {
            painter.rect_stroke(
                rect.shrink(1.0),
                0.0,
                (1.0, Color32::from_rgb(60, 120, 200)),
                egui::StrokeKind::Inside,
            );
        }
        let vp = &mut self.viewports[idx];
        vp.rect = Some(rect);
        let Some(img) = vp.image.clone() else {
            let text = if vp.loading {
                "Loading…".to_string()
            } else if let Some(e) = &vp.error {
                format!("Cannot show this file:\n{e}")
            } else {
                "Drop DICOM files or folders here, or use File → Open".to_string()
            };
            let color = if vp.error.is_some() {
                Color32::from_rgb(240, 120, 110)
            } else {
                Color32::GRAY
            };
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                text,
                egui::FontId::proportional(16.0),
                color,
            );
            if vp.loading {
                ui.ctx().request_repaint();
            }
            return;
        };
        if vp.frame >= img.frames.len() {
            vp.frame = 0;
        }
        let frame = &img.frames[vp.frame];
        let size = Vec2::new(frame.width as f32, frame.height as f32);
        if vp.view.fit {
            vp.view.fit_to(rect, size);
        }
        // cine
        if vp.playing && img.frames.len() > 1 {
            let now = ui.input(|i| i.time);
            let dt = img.info.frame_time_ms.unwrap_or(100.0).max(10.0) / 1000.0;
            if now - vp.last_tick >= dt {
                vp.frame = (vp.frame + 1) % img.frames.len();
                vp.last_tick = now;
            }
            ui.ctx().request_repaint();
        }
        // interaction
        let mut changed = false;
        if let Some(hover) = resp.hover_pos() {
            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
            let pinch = ui.input(|i| i.zoom_delta());
            if scroll != 0.0 || pinch != 1.0 {
                let f = (scroll * 0.0025).exp() * pinch;
                vp.view.zoom_about(rect, size, hover, f);
                changed = true;
            }
        }
        let shift = ui.input(|i| i.modifiers.shift);
        if resp.dragged_by(egui::PointerButton::Secondary) {
            let d = resp.drag_delta();
            if let Some(voi) = vp.current_voi() {
                let (c, w, function) = match voi {
                    Voi::Window {
                        center,
                        width,
                        function,
                    } => (center, width, function),
                    Voi::Lut(_) => {
                        let p = self_presets_full_range(&img, vp.frame);
                        (p.0, p.1, VoiFunction::Linear)
                    }
                };
                let k = w.max(1.0) / 256.0;
                vp.voi = Some(Voi::Window {
                    center: c + d.y as f64 * k,
                    width: (w + d.x as f64 * k).max(1.0),
                    function,
                });
                changed = true;
            }
        }
        let ruler_mode = self.tool == Tool::Ruler || shift;
        let mut describe: Option<[f32; 4]> = None;
        if self.ai.region_tool
            && (resp.dragged_by(egui::PointerButton::Primary) || resp.drag_stopped())
        {
            if let Some(p) = resp.interact_pointer_pos().or(resp.hover_pos()) {
                let here = vp.view.screen_to_image(rect, size, p);
                let start = match (resp.drag_started(), self.ai.drawing) {
                    (false, Some([a, _])) => a,
                    _ => vp.view.screen_to_image(rect, size, p - resp.drag_delta()),
                };
                self.ai.drawing = Some([start, here]);
            }
            if resp.drag_stopped() {
                if let Some([a, b]) = self.ai.drawing.take() {
                    let (x1, x2) = (
                        a.x.min(b.x).clamp(0.0, size.x),
                        a.x.max(b.x).clamp(0.0, size.x),
                    );
                    let (y1, y2) = (
                        a.y.min(b.y).clamp(0.0, size.y),
                        a.y.max(b.y).clamp(0.0, size.y),
                    );
                    if x2 - x1 > 2.0 && y2 - y1 > 2.0 {
                        describe = Some([x1, y1, x2, y2]);
                    }
                }
            }
        } else if resp.dragged_by(egui::PointerButton::Primary) && ruler_mode {
            if let (Some(o), Some(p)) = (
                resp.interact_pointer_pos(),
                resp.hover_pos().or(resp.interact_pointer_pos()),
            ) {
                let start = o - resp.drag_delta();
                let a = if resp.drag_started() {
                    vp.view.screen_to_image(rect, size, start)
                } else {
                    vp.ruler
                        .map_or_else(|| vp.view.screen_to_image(rect, size, start), |r| r[0])
                };
                vp.ruler = Some([a, vp.view.screen_to_image(rect, size, p)]);
            }
        } else if resp.dragged_by(egui::PointerButton::Primary)
            || resp.dragged_by(egui::PointerButton::Middle)
        {
            vp.view.pan += resp.drag_delta();
            vp.view.fit = false;
            changed = true;
        }
        if resp.double_clicked() {
            vp.view.fit = true;
            changed = true;
        }
        // draw the image through the shader
        let key = image_key(
            vp.path.as_deref().unwrap_or(std::path::Path::new("")),
            vp.frame,
        );
        if let (Some(params), true) = (vp.params(), self.has_gpu) {
            let mut u = Uniforms::new(&img.info, frame, &params).with_rgb_invert(params.invert);
            u.corners = vp.view.clip_corners(rect, size);
            u.smooth = (self.settings.smooth && vp.view.zoom > 1.0) as u32;
            let cb = UploadingCallback {
                slot: idx as u32,
                image: (key, img.clone(), vp.frame),
                draw: ImageCallback {
                    slot: idx as u32,
                    uniforms: u,
                },
            };
            painter.add(egui_wgpu_callback(rect, cb));
        }
        // AI layer (image coordinates: follows zoom, pan, rotation and flips)
        let ai_key = super::ai::image_key(
            &img.info,
            vp.path.as_deref().unwrap_or(std::path::Path::new("")),
        );
        if self.ai.show_layer {
            if let Some(r) = self.ai.results.get(&ai_key) {
                let sel = if self.active == idx {
                    self.ai.selected
                } else {
                    None
                };
                super::ai::overlay(&painter, &vp.view, rect, size, r, self.ai.opacity, sel);
            }
        }
        if let Some([a, b]) = self.ai.drawing {
            let pa = vp.view.image_to_screen(rect, size, a);
            let pb = vp.view.image_to_screen(rect, size, b);
            painter.rect_stroke(
                Rect::from_two_pos(pa, pb),
                0.0,
                (1.5, Color32::WHITE),
                egui::StrokeKind::Middle,
            );
        }
        // overlays
        let info = &img.info;
        let (spacing, at_detector) = match (info.pixel_spacing_mm, info.imager_pixel_spacing_mm) {
            (Some(s), _) => (Some(s), false),
            (None, Some(s)) => (Some(s), true),
            _ => (None, false),
        };
        if let Some([a, b]) = vp.ruler {
            let sa = vp.view.image_to_screen(rect, size, a);
            let sb = vp.view.image_to_screen(rect, size, b);
            painter.line_segment([sa, sb], (2.0, Color32::from_rgb(255, 210, 60)));
            for s in [sa, sb] {
                painter.circle_filled(s, 3.0, Color32::from_rgb(255, 210, 60));
            }
            let (dx, dy) = ((b.x - a.x) as f64, (b.y - a.y) as f64);
            let label = match spacing {
                Some([row, col]) => {
                    let mm = ((dx * col).powi(2) + (dy * row).powi(2)).sqrt();
                    if at_detector {
                        format!("{mm:.1} mm (at detector)")
                    } else {
                        format!("{mm:.1} mm")
                    }
                }
                None => format!("{:.1} px (no pixel spacing)", (dx * dx + dy * dy).sqrt()),
            };
            painter.text(
                sb + Vec2::new(8.0, -8.0),
                egui::Align2::LEFT_BOTTOM,
                label,
                egui::FontId::proportional(14.0),
                Color32::from_rgb(255, 210, 60),
            );
        }
        let corner = |t: String, pos: Pos2, a: egui::Align2| {
            painter.text(
                pos,
                a,
                t,
                egui::FontId::monospace(12.0),
                Color32::from_gray(220),
            );
        };
        let tl = format!(
            "{}\n{} {}\n{}",
            info.patient_name, info.patient_id, info.study_date, info.study_description
        );
        corner(
            tl,
            rect.left_top() + Vec2::new(6.0, 6.0),
            egui::Align2::LEFT_TOP,
        );
        let w = match vp.current_voi() {
            Some(Voi::Window { center, width, .. }) => format!("W {width:.0} C {center:.0}"),
            Some(Voi::Lut(i)) => format!("VOI LUT {}", i + 1),
            None => String::new(),
        };
        let tr = format!(
            "{} {}\n{}{}\nzoom {:.0}%",
            info.modality,
            info.view,
            w,
            if vp.invert { " inv" } else { "" },
            vp.view.zoom * ui.ctx().pixels_per_point() * 100.0
        );
        corner(
            tr,
            rect.right_top() + Vec2::new(-6.0, 6.0),
            egui::Align2::RIGHT_TOP,
        );
        if img.frames.len() > 1 {
            corner(
                format!("frame {}/{}", vp.frame + 1, img.frames.len()),
                rect.left_bottom() + Vec2::new(6.0, -6.0),
                egui::Align2::LEFT_BOTTOM,
            );
        }
        // probe
        if let Some(h) = resp.hover_pos() {
            let p = vp.view.screen_to_image(rect, size, h);
            if p.x >= 0.0 && p.y >= 0.0 && p.x < size.x && p.y < size.y {
                let (x, y) = (p.x as u32, p.y as u32);
                let stored = match &frame.pixels {
                    Pixels::Mono(v) => v.get((y * frame.width + x) as usize).copied(),
                    Pixels::Rgb(_) => None,
                };
                self.probe = Probe {
                    pixel: Some((x, y)),
                    stored,
                    modality: stored.map(|s| modality_value(s, info)),
                    mm: spacing.map(|[row, col]| (p.x as f64 * col, p.y as f64 * row, at_detector)),
                };
            }
        }
        if changed {
            self.sync_from(idx);
        }
        if let Some(b) = describe {
            self.similar.region = Some(b);
            self.active = idx;
            if let Some((key, gray)) = self.model_input(idx) {
                self.ai.describe(&self.jobs, key, gray, b);
            }
        }
    }
}

fn self_presets_full_range(img: &LoadedImage, frame: usize) -> (f64, f64) {
    let Some(f) = img.frames.get(frame) else {
        return (0.0, 1.0);
    };
    let (lo, hi) = f.min_max(crate::dicom::lut::padding_range(&img.info));
    let (a, b) = (modality_value(lo, &img.info), modality_value(hi, &img.info));
    ((a + b) / 2.0, (b - a).abs().max(1.0))
}

/// Merge a new scan into the tree (new patients appended, same patients' studies extended).
fn merge_scan(into: &mut Scan, new: Scan) {
    for p in new.patients {
        match into.patients.iter_mut().find(|q| q.id == p.id) {
            Some(q) => {
                for s in p.studies {
                    match q.studies.iter_mut().find(|t| t.uid == s.uid) {
                        Some(t) => {
                            for se in s.series {
                                match t.series.iter_mut().find(|x| x.uid == se.uid) {
                                    Some(x) => {
                                        for i in se.instances {
                                            if !x.instances.iter().any(|y| y.path == i.path) {
                                                x.instances.push(i);
                                            }
                                        }
                                    }
                                    None => t.series.push(se),
                                }
                            }
                        }
                        None => q.studies.push(s),
                    }
                }
            }
            None => into.patients.push(p),
        }
    }
    into.skipped.extend(new.skipped);
}

/// A callback that uploads the image when its GPU slot holds another one, then draws it.
struct UploadingCallback {
    slot: u32,
    image: (u64, Arc<LoadedImage>, usize),
    draw: ImageCallback,
}

impl eframe::egui_wgpu::CallbackTrait for UploadingCallback {
    fn prepare(
        &self,
        device: &eframe::egui_wgpu::wgpu::Device,
        queue: &eframe::egui_wgpu::wgpu::Queue,
        screen: &eframe::egui_wgpu::ScreenDescriptor,
        encoder: &mut eframe::egui_wgpu::wgpu::CommandEncoder,
        resources: &mut eframe::egui_wgpu::CallbackResources,
    ) -> Vec<eframe::egui_wgpu::wgpu::CommandBuffer> {
        let (key, img, frame) = &self.image;
        if let Some(r) = resources.get_mut::<ImageRenderer>() {
            if !r.holds(self.slot, *key) {
                if let Some(f) = img.frames.get(*frame) {
                    if let Err(e) = r.upload(device, queue, self.slot, *key, f, &img.info) {
                        tracing::error!("GPU upload failed: {e}");
                    }
                }
            }
        }
        self.draw.prepare(device, queue, screen, encoder, resources)
    }

    fn paint(
        &self,
        info: egui::PaintCallbackInfo,
        pass: &mut eframe::egui_wgpu::wgpu::RenderPass<'static>,
        resources: &eframe::egui_wgpu::CallbackResources,
    ) {
        self.draw.paint(info, pass, resources)
    }
}

fn egui_wgpu_callback(rect: Rect, cb: UploadingCallback) -> egui::Shape {
    egui::Shape::Callback(eframe::egui_wgpu::Callback::new_paint_callback(rect, cb))
}

impl eframe::App for LofiApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.frame_ui(ui, &ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.args.screenshot.is_none() {
            eframe::set_value(storage, SETTINGS_KEY, &self.settings);
        }
    }
}

impl LofiApp {
    /// One whole frame (also driven directly by the kittest harness).
    pub fn frame_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        self.poll_jobs(ctx);
        // drag and drop
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.open_paths(dropped, true);
        }
        self.handle_keys(ctx);
        super::panels::menu_ui(self, ui);
        super::panels::status_ui(self, ui);
        if self.settings.show_browser {
            egui::Panel::left("browser")
                .default_size(250.0)
                .resizable(true)
                .show(ui, |ui| {
                    super::panels::browser_ui(self, ui);
                });
        }
        if self.settings.show_ai {
            egui::Panel::right("ai")
                .default_size(340.0)
                .resizable(true)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical()
                        .id_salt("ai-side")
                        .show(ui, |ui| {
                            self.ai_panel_ui(ui);
                            ui.separator();
                            egui::CollapsingHeader::new(
                                egui::RichText::new("Similar cases").heading(),
                            )
                            .default_open(true)
                            .show(ui, |ui| {
                                self.similar_panel_ui(ui);
                            });
                        });
                });
        }
        if self.settings.show_tags {
            egui::Panel::right("tags")
                .default_size(360.0)
                .resizable(true)
                .show(ui, |ui| {
                    super::panels::tags_ui(self, ui);
                });
        }
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE)
            .show(ui, |ui| {
                if self.settings.two_up {
                    let r = ui.available_rect_before_wrap();
                    let half = Vec2::new(r.width() / 2.0 - 1.0, r.height());
                    let left = Rect::from_min_size(r.min, half);
                    let right =
                        Rect::from_min_size(r.min + Vec2::new(r.width() / 2.0 + 1.0, 0.0), half);
                    for (i, rr) in [left, right].into_iter().enumerate() {
                        let mut child = ui.new_child(egui::UiBuilder::new().max_rect(rr));
                        self.viewport_ui(&mut child, i);
                    }
                } else {
                    self.viewport_ui(ui, 0);
                }
            });
        self.screenshot_step(ctx);
    }

    fn ai_panel_ui(&mut self, ui: &mut egui::Ui) {
        let key = {
            let vp = &self.viewports[self.active];
            match (vp.image.as_ref(), vp.path.as_ref()) {
                (Some(img), Some(p)) => Some(super::ai::image_key(&img.info, p)),
                _ => None,
            }
        };
        if key.is_some() {
            let _ = self.model_input(self.active);
        }
        let act = super::ai::panel_ui(&mut self.ai, ui, key.as_deref());
        if let Some(p) = act.ground {
            self.ground(p);
        }
        if act.find_all {
            if let Some((k, g)) = self.model_input(self.active) {
                self.ai.find_all(&self.jobs, k, g);
            }
        }
        if let Some((fi, bi)) = act.zoom_to {
            self.zoom_to(self.active, fi, bi);
        }
        if act.cancel {
            if let Some(r) = self.ai.running.take() {
                r.cancel.cancel();
                self.ai.message = Some("cancelled".into());
            }
        }
        if act.reviewed {
            if let Some(k) = &key {
                self.ai.save(k);
            }
        }
        if act.open_model {
            let start = self.settings.model_dir.clone();
            self.jobs.spawn("model dialog", move |h| {
                let mut d = rfd::FileDialog::new().set_title("Open a LoFi model folder");
                if let Some(s) = start {
                    d = d.set_directory(s);
                }
                if let Some(p) = d.pick_folder() {
                    h.send(JobEvent::Other(Box::new(ModelFolder(p))));
                }
            });
        }
        if let Some(kind) = act.export {
            self.export_dialog(kind);
        }
    }

    /// The "Similar cases" panel and what its buttons start.
    pub fn similar_panel_ui(&mut self, ui: &mut egui::Ui) {
        let ready = self.ai.model.is_some() && self.ai.store.is_some();
        let act = super::similar::similar_ui(&mut self.similar, ui, ready);
        let (Some(model), Some(store)) = (self.ai.model.clone(), self.ai.store.clone()) else {
            return;
        };
        let a = self.active;
        let patient = self.viewports[a]
            .image
            .as_ref()
            .map(|i| i.info.patient_id.clone())
            .filter(|p| !p.is_empty());
        let query = if act.by_image {
            let path = self.viewports[a].path.clone();
            self.model_input(a)
                .map(|(_, g)| super::similar::Query::Image(g, path))
        } else if act.by_region {
            match (self.model_input(a), self.similar.region) {
                (Some((_, g)), Some(b)) => Some(super::similar::Query::Region(g, b)),
                _ => None,
            }
        } else if act.by_text {
            Some(super::similar::Query::Text(
                self.similar.text.trim().to_string(),
            ))
        } else {
            None
        };
        if let Some(q) = query {
            self.similar
                .search(&self.jobs, model.clone(), store.clone(), q, patient);
        }
        if let Some(p) = act.open {
            self.settings.two_up = true;
            self.settings.sync = true;
            self.show_file(1, p);
        }
        if act.index_folder {
            self.similar.pick_folder(&self.jobs);
        }
    }

    fn export_dialog(&mut self, kind: super::ai::ExportKind) {
        use super::ai::ExportKind;
        let (name, ext) = match kind {
            ExportKind::Json => ("ai-findings.json", "json"),
            ExportKind::Png => ("ai-findings.png", "png"),
            ExportKind::Sr => ("ai-findings-sr.dcm", "dcm"),
        };
        let dir = self.settings.last_dir.clone();
        self.jobs.spawn("export dialog", move |h| {
            let mut d = rfd::FileDialog::new()
                .set_file_name(name)
                .add_filter(ext, &[ext]);
            if let Some(s) = dir {
                d = d.set_directory(s);
            }
            if let Some(p) = d.save_file() {
                h.send(JobEvent::Other(Box::new(ExportTo(kind, p))));
            }
        });
    }

    /// Write an export to `path` (PNG is taken from the next rendered frame).
    pub fn export_to(&mut self, kind: super::ai::ExportKind, path: PathBuf, ctx: &egui::Context) {
        use super::ai::ExportKind;
        let r = match kind {
            ExportKind::Json => self.export_json(&path),
            ExportKind::Sr => self.export_sr(&path),
            ExportKind::Png => {
                let Some(rect) = self.viewports[self.active].rect else {
                    return;
                };
                let ppp = ctx.pixels_per_point();
                let slot = self.png_export.clone();
                ctx.request_screenshot(move |img| {
                    let r = crop_and_save(&img, rect, ppp, &path);
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(r);
                    }
                });
                return;
            }
        };
        self.message = Some(match r {
            Ok(()) => ("exported".into(), false),
            Err(e) => (format!("export failed: {e}"), true),
        });
    }

    /// Everything the screenshot waits for has arrived.
    fn ready_for_screenshot(&mut self) -> bool {
        let vp = &self.viewports[0];
        let image_ready = vp.image.is_some()
            || vp.error.is_some()
            || (!vp.loading
                && self.progress.is_empty()
                && vp.path.is_none()
                && self.scan_cancel.is_some());
        if self.args.similar {
            if !image_ready || self.ai.model.is_none() || self.ai.store.is_none() {
                return false;
            }
            if !self.similar_started {
                self.similar_started = true;
                let a = self.active;
                let path = self.viewports[a].path.clone();
                let patient = self.viewports[a]
                    .image
                    .as_ref()
                    .map(|i| i.info.patient_id.clone())
                    .filter(|p| !p.is_empty());
                if let (Some((_, g)), Some(m), Some(st)) = (
                    self.model_input(a),
                    self.ai.model.clone(),
                    self.ai.store.clone(),
                ) {
                    self.similar.search(
                        &self.jobs,
                        m,
                        st,
                        super::similar::Query::Image(g, path),
                        patient,
                    );
                }
                return false;
            }
            if self.similar.searching.is_some() || self.similar.hits.is_empty() {
                return self.similar.message.is_some();
            }
        }
        let Some(phrase) = self.args.phrase.clone() else {
            return image_ready;
        };
        if vp.error.is_some() {
            return true;
        }
        if !image_ready || vp.image.is_none() {
            return false;
        }
        if self.ai.model.is_none() {
            // a model that failed to load ends the wait too
            return self.ai.model_status.starts_with("model not loaded");
        }
        if self.args.shots.is_some() && self.ai.store.is_none() {
            return false;
        }
        if !self.phrase_started {
            self.phrase_started = true;
            if let Some(k) = self.args.shots {
                self.ai.use_icl = true;
                self.ai.shots = k;
            }
            self.active = 0;
            self.ground(phrase.clone());
            return false;
        }
        if self.ai.running.is_some() {
            return false;
        }
        self.current_results()
            .is_some_and(|r| r.findings.iter().any(|f| f.phrase == phrase.trim()))
            || self.ai.message.is_some()
    }

    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let ready = self.ready_for_screenshot();
        let Some(shot) = self.shot.as_mut() else {
            return;
        };
        ctx.request_repaint();
        if shot.started.elapsed().as_secs() > 300 {
            if let Ok(mut o) = self.outcome.lock() {
                *o = ShotOutcome::Failed("timed out waiting for the image".into());
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        let done = shot.done.lock().ok().and_then(|d| d.clone());
        if let Some(r) = done {
            if let Ok(mut o) = self.outcome.lock() {
                *o = match r {
                    Ok(()) => ShotOutcome::Saved(shot.path.clone()),
                    Err(e) => ShotOutcome::Failed(e),
                };
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if !ready {
            return;
        }
        shot.ready_frames += 1;
        if shot.ready_frames >= 5 && !shot.requested {
            shot.requested = true;
            let path = shot.path.clone();
            let slot = shot.done.clone();
            ctx.request_screenshot(move |img| {
                let r = save_color_image(&img, &path);
                if let Ok(mut s) = slot.lock() {
                    *s = Some(r);
                }
            });
        }
    }
}

/// A model folder chosen in the dialog.
struct ModelFolder(PathBuf);
/// An export destination chosen in the dialog.
struct ExportTo(super::ai::ExportKind, PathBuf);

fn crop_and_save(
    img: &egui::ColorImage,
    rect: Rect,
    ppp: f32,
    path: &std::path::Path,
) -> Result<(), String> {
    let [w, h] = img.size;
    let x0 = ((rect.left() * ppp).max(0.0) as usize).min(w);
    let y0 = ((rect.top() * ppp).max(0.0) as usize).min(h);
    let x1 = ((rect.right() * ppp) as usize).clamp(x0, w);
    let y1 = ((rect.bottom() * ppp) as usize).clamp(y0, h);
    let mut pixels = Vec::with_capacity((x1 - x0) * (y1 - y0));
    for y in y0..y1 {
        pixels.extend_from_slice(&img.pixels[y * w + x0..y * w + x1]);
    }
    save_color_image(&egui::ColorImage::new([x1 - x0, y1 - y0], pixels), path)
}

/// Save an egui screenshot as PNG.
pub fn save_color_image(img: &egui::ColorImage, path: &std::path::Path) -> Result<(), String> {
    let [w, h] = img.size;
    let raw: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    let rgba =
        image::RgbaImage::from_raw(w as u32, h as u32, raw).ok_or("screenshot size mismatch")?;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    crate::util::atomic_write(path, &png).map_err(|e| format!("{}: {e}", path.display()))
}
