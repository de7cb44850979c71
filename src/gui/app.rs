//! The application: state, one frame (panels push commands, [`LofiApp::apply`] runs them),
//! background-job results, file opening, persistence and the screenshot run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use egui::{Rect, Vec2};

use super::ai::AiInputs;
use super::command::AppCommand;
use super::jobs::{JobEvent, Jobs, Picked};
use super::renderer::ImageRenderer;
use super::screenshot::{Observation, ScreenshotPlan, ScreenshotRun};
use super::similar::SimilarInputs;
use super::state::{AppState, Settings, StatusMessage};
use super::viewport::PointerState;
use super::ShotOutcome;
use crate::dicom::study::Scan;
use crate::util::Cancel;

/// Command-line arguments of the GUI.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Files/folders to open.
    pub paths: Vec<PathBuf>,
    /// Run grounding for this phrase once the image is open (screenshot runs).
    pub phrase: Option<String>,
    /// Save a screenshot here and exit.
    pub screenshot: Option<PathBuf>,
    /// Model directory.
    pub model: Option<PathBuf>,
    /// Prior-case store.
    pub store: Option<String>,
    /// Compute device.
    pub device: crate::model::load::DeviceChoice,
    /// Run "Similar to this image" once image, model and store are ready (screenshot runs).
    pub similar: bool,
    /// Ground `phrase` with this many in-context cases from the store (screenshot runs).
    pub shots: Option<usize>,
    /// Run "Find all" once image and model are ready (screenshot runs).
    pub find_all: bool,
    /// Start two-up, the first two images side by side, synchronised.
    pub two_up: bool,
    /// Driven by a test harness: default settings, nothing persisted, no screenshot.
    pub harness: bool,
    /// An archive node for this session (`AET@HOST:PORT` or a DICOMweb URL), selected.
    pub pacs_node: Option<String>,
    /// Screenshot runs: open the PACS window and search the node.
    pub pacs_find: bool,
    /// Screenshot runs: retrieve this study from the node and show it.
    pub pacs_retrieve: Option<String>,
    /// Where retrieved studies go (overrides the setting).
    pub study_cache: Option<PathBuf>,
}

/// How the app runs.
#[derive(Debug)]
pub enum RunMode {
    /// A person uses it: settings and results are kept.
    Interactive,
    /// A test drives it: default settings, nothing kept.
    Harness,
    /// Show what the command line asked, save a screenshot, close.
    Screenshot(ScreenshotRun),
}

const SETTINGS_KEY: &str = "lofi-viewer-settings";

/// What the panels edit in place: text fields and sliders that are theirs alone.
#[derive(Default)]
pub struct UiInputs {
    /// AI panel.
    pub ai: AiInputs,
    /// Similar-cases panel.
    pub similar: SimilarInputs,
    /// Tag browser search.
    pub tag_filter: String,
    /// PACS window.
    pub pacs: super::pacs::panel::PacsInputs,
}

/// The application.
pub struct LofiApp {
    /// What the panels read.
    pub state: AppState,
    /// What the panels edit in place.
    pub inputs: UiInputs,
    /// Background jobs.
    pub jobs: Jobs,
    /// Commands pushed this frame, applied once by [`LofiApp::apply`].
    pub(crate) commands: Vec<AppCommand>,
    pointer: PointerState,
    pub(crate) args: Args,
    mode: RunMode,
    outcome: Arc<Mutex<ShotOutcome>>,
    has_gpu: bool,
    scan_cancel: Option<Cancel>,
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
        let settings = if args.screenshot.is_some() || args.harness {
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

    /// Create without a window.
    pub fn with_context(
        ctx: egui::Context,
        settings: Settings,
        args: Args,
        outcome: Arc<Mutex<ShotOutcome>>,
    ) -> Self {
        let mode = match (&args.screenshot, args.harness) {
            (_, true) => RunMode::Harness,
            (Some(path), false) => RunMode::Screenshot(ScreenshotRun::new(ScreenshotPlan {
                path: path.clone(),
                phrase: args.phrase.clone(),
                shots: args.shots,
                similar: args.similar,
                find_all: args.find_all,
                pacs_find: args.pacs_find || args.pacs_retrieve.is_some(),
                pacs_retrieve: args.pacs_retrieve.clone(),
            })),
            (None, false) => RunMode::Interactive,
        };
        let mut settings = settings;
        if args.two_up {
            settings.two_up = true;
            settings.sync = true;
        }
        let mut inputs = UiInputs::default();
        if let Some(k) = args.shots {
            inputs.ai.use_icl = true;
            inputs.ai.shots = k;
        }
        let mut app = Self {
            state: AppState {
                settings,
                ..Default::default()
            },
            inputs,
            jobs: Jobs::new(ctx),
            commands: Vec::new(),
            pointer: PointerState::default(),
            args: args.clone(),
            mode,
            outcome,
            has_gpu: false,
            scan_cancel: None,
        };
        if !args.paths.is_empty() {
            app.open_paths(args.paths.clone(), true);
        }
        if let Some(addr) = &args.pacs_node {
            match crate::pacs::Node::from_address(addr, crate::pacs::DEFAULT_AE_TITLE) {
                Ok(n) => {
                    let s = &mut app.state.settings;
                    s.pacs_node = s
                        .pacs_nodes
                        .iter()
                        .position(|m| m.address == n.address)
                        .unwrap_or_else(|| {
                            s.pacs_nodes.push(n);
                            s.pacs_nodes.len() - 1
                        });
                }
                Err(e) => {
                    app.state.message = Some(StatusMessage::error(format!("--pacs-node: {e}")))
                }
            }
        }
        app.state.ai.history = app.state.settings.ai_history.clone();
        if let RunMode::Interactive = app.mode {
            app.state.ai.results_dir =
                Some(crate::store::default_location().with_file_name("ai-results"));
        }
        let model_dir = args
            .model
            .clone()
            .or_else(|| app.state.settings.model_dir.clone())
            .unwrap_or_else(crate::model::bundled::default_model_dir);
        app.state.ai.load_model(&app.jobs, model_dir, args.device);
        app.state.ai.open_store(&app.jobs, args.store.clone());
        app
    }

    /// Queue a command (applied at the end of the frame).
    pub fn push(&mut self, c: AppCommand) {
        self.commands.push(c);
    }

    /// How the app runs.
    pub fn mode(&self) -> &RunMode {
        &self.mode
    }

    /// One whole frame (also driven directly by the kittest harness).
    pub fn frame_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        self.poll_jobs(ctx);
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.commands.push(AppCommand::OpenPaths(dropped));
        }
        let keys = super::interaction::key_commands(ctx, &self.state);
        self.commands.extend(keys);
        {
            let (state, cmds) = (&self.state, &mut self.commands);
            super::panels::menu_ui(ui, state, cmds);
            super::panels::status_ui(ui, state, cmds);
            if state.settings.show_browser {
                egui::Panel::left("browser")
                    .default_size(250.0)
                    .resizable(true)
                    .show(ui, |ui| super::panels::browser_ui(ui, state, cmds));
            }
        }
        if self.state.settings.show_ai {
            self.side_panel_ui(ui);
        }
        if self.state.settings.show_tags {
            let (state, filter) = (&self.state, &mut self.inputs.tag_filter);
            egui::Panel::right("tags")
                .default_size(360.0)
                .resizable(true)
                .show(ui, |ui| super::panels::tags_ui(ui, state, filter));
        }
        self.viewports_ui(ui);
        if self.state.pacs.open {
            super::pacs::panel::pacs_window_ui(
                ctx,
                &self.state,
                &mut self.inputs.pacs,
                &mut self.commands,
            );
        }
        super::interaction::help_ui(ctx, self.state.help_open, &mut self.commands);
        self.apply(ctx);
        self.screenshot_step(ctx);
    }

    /// The AI and similar-cases side panel: a stable width the user sets (remembered), with
    /// long labels elided instead of widening the panel.
    fn side_panel_ui(&mut self, ui: &mut egui::Ui) {
        let key = self.state.viewports[self.state.active].ai_key();
        if key.is_some() {
            let _ = self.state.model_input(self.state.active);
        }
        let ready = self.state.ai.model.is_some() && self.state.ai.store.is_some();
        let (state, inputs, cmds) = (&self.state, &mut self.inputs, &mut self.commands);
        let resp = egui::Panel::right("ai")
            .default_size(state.settings.ai_panel_width)
            .min_size(220.0)
            .resizable(true)
            .show(ui, |ui| {
                ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
                // the bar always shown: one appearing when results arrive would widen the panel
                egui::ScrollArea::vertical()
                    .id_salt("ai-side")
                    .scroll_bar_visibility(egui::scroll_area::ScrollBarVisibility::AlwaysVisible)
                    .show(ui, |ui| {
                        super::ai::panel::panel_ui(
                            ui,
                            &state.ai,
                            &mut inputs.ai,
                            key.as_deref(),
                            state.tool,
                            cmds,
                        );
                        ui.separator();
                        egui::CollapsingHeader::new(egui::RichText::new("Similar cases").heading())
                            .default_open(true)
                            .show(ui, |ui| {
                                super::similar::similar_ui(
                                    ui,
                                    &state.similar,
                                    &mut inputs.similar,
                                    ready,
                                    cmds,
                                );
                            });
                    });
            });
        let w = resp.response.rect.width();
        if (w - self.state.settings.ai_panel_width).abs() > 0.5 {
            self.state.settings.ai_panel_width = w;
        }
    }

    fn viewports_ui(&mut self, ui: &mut egui::Ui) {
        let opacity = self.inputs.ai.opacity;
        let has_gpu = self.has_gpu;
        let (state, pointer, cmds) = (&mut self.state, &mut self.pointer, &mut self.commands);
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE)
            .show(ui, |ui| {
                if state.settings.two_up {
                    let r = ui.available_rect_before_wrap();
                    let half = Vec2::new(r.width() / 2.0 - 1.0, r.height());
                    let left = Rect::from_min_size(r.min, half);
                    let right =
                        Rect::from_min_size(r.min + Vec2::new(r.width() / 2.0 + 1.0, 0.0), half);
                    for (i, rr) in [left, right].into_iter().enumerate() {
                        let mut child = ui.new_child(egui::UiBuilder::new().max_rect(rr));
                        super::viewport::viewport_ui(
                            &mut child, i, state, pointer, opacity, has_gpu, cmds,
                        );
                    }
                } else {
                    super::viewport::viewport_ui(ui, 0, state, pointer, opacity, has_gpu, cmds);
                }
            });
    }

    /// Apply finished background work.
    pub fn poll_jobs(&mut self, ctx: &egui::Context) {
        for ev in self.jobs.poll() {
            match ev {
                JobEvent::Scanned(scan) => self.scanned(scan),
                JobEvent::Loaded { path, result } => self.loaded(path, result),
                JobEvent::Thumbnail { path, image } => {
                    let tex = image.map(|i| {
                        ctx.load_texture(path.to_string_lossy(), i, egui::TextureOptions::LINEAR)
                    });
                    self.state.thumbnails.insert(path, tex);
                }
                JobEvent::Progress { job, done, total } => {
                    self.state.progress.insert(job, (done, total));
                }
                JobEvent::Failed { job, error } => {
                    self.state.progress.remove(&job);
                    self.state.message = Some(StatusMessage::error(format!("{job}: {error}")));
                }
                JobEvent::Picked(p) => self.picked(p),
                JobEvent::Ai(e) => self.state.ai.handle(e, ctx),
                JobEvent::Similar(e) => self.state.similar.handle(e, ctx),
                JobEvent::Pacs(e) => self.pacs_event(e),
                JobEvent::Exported(r) => {
                    self.state.message = Some(match r {
                        Ok(p) => StatusMessage::info(format!("exported {}", p.display())),
                        Err(e) => StatusMessage::error(format!("PNG export failed: {e}")),
                    });
                }
                JobEvent::Shot(r) => self.shot_saved(r, ctx),
            }
        }
        self.pacs_open_arrived();
        let s = &mut self.state;
        if let (None, false, Some(st)) =
            (&s.similar.store_info, s.similar.info_pending, &s.ai.store)
        {
            s.similar.refresh_info(&self.jobs, st.clone());
        }
    }

    fn picked(&mut self, p: Picked) {
        match p {
            Picked::Open(paths) => {
                if let Some(d) = paths.first().and_then(|p| p.parent()) {
                    self.state.settings.last_dir = Some(d.to_path_buf());
                }
                self.commands.push(AppCommand::OpenPaths(paths));
            }
            Picked::ModelFolder(dir) => self.commands.push(AppCommand::LoadModel(dir)),
            Picked::ExportTo(kind, path) => self.commands.push(AppCommand::ExportTo(kind, path)),
            Picked::IndexFolder(dir) => self.commands.push(AppCommand::IndexFolder(dir)),
        }
    }

    fn scanned(&mut self, scan: Scan) {
        self.state.progress.remove("Scanning");
        let first = scan.images().first().map(|i| i.path.clone());
        let second = scan.images().get(1).map(|i| i.path.clone());
        if let (true, Some(p), None) = (
            self.state.settings.two_up,
            second,
            &self.state.viewports[1].path,
        ) {
            self.show_file(1, p);
        }
        if !scan.skipped.is_empty() {
            self.state.message = Some(StatusMessage::info(format!(
                "{} file(s) skipped (see the study browser)",
                scan.skipped.len()
            )));
        }
        merge_scan(&mut self.state.scan, scan);
        self.start_thumbnails();
        let a = self.state.active;
        let vp = &mut self.state.viewports[a];
        if vp.loading && vp.path.is_none() {
            match first {
                Some(p) => self.show_file(a, p),
                None => {
                    vp.loading = false;
                    vp.error = Some("no image found in what was opened".into());
                }
            }
        }
    }

    fn loaded(&mut self, path: PathBuf, result: Result<Arc<crate::dicom::LoadedImage>, String>) {
        match result {
            Ok(img) => {
                self.state.cache_put(path.clone(), img.clone());
                for vp in self.state.viewports.iter_mut() {
                    if vp.path.as_ref() == Some(&path) {
                        vp.image = Some(img.clone());
                        vp.loading = false;
                    }
                }
            }
            Err(e) => {
                for vp in self.state.viewports.iter_mut() {
                    if vp.path.as_ref() == Some(&path) {
                        vp.loading = false;
                        vp.error = Some(e.clone());
                    }
                }
                self.state.message = Some(StatusMessage::error(format!("{}: {e}", path.display())));
            }
        }
    }

    /// Ask for files or a folder on a background thread.
    pub(crate) fn pick_in_background(&self, folder: bool) {
        let start = self.state.settings.last_dir.clone();
        self.jobs.spawn("file dialog", move |h| {
            let mut d = rfd::FileDialog::new();
            if let Some(s) = start {
                d = d.set_directory(s);
            }
            let picked = if folder {
                d.pick_folder().map(|p| vec![p])
            } else {
                d.add_filter("Images", &["dcm", "dicom", "png", "jpg", "jpeg", "DCM"])
                    .add_filter("All files", &["*"])
                    .pick_files()
            };
            if let Some(p) = picked {
                h.send(JobEvent::Picked(Picked::Open(p)));
            }
        });
    }

    /// Scan paths in the background; with `show_first`, the first image opens when found.
    pub fn open_paths(&mut self, paths: Vec<PathBuf>, show_first: bool) {
        // a new study replaces a scan in progress; files added to the browser do not
        if show_first {
            if let Some(c) = self.scan_cancel.take() {
                c.cancel();
            }
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
        if show_first {
            self.scan_cancel = Some(c);
            let a = self.state.active;
            self.state.viewports[a].loading = true;
            self.state.viewports[a].path = None;
        }
    }

    /// Open a file in pane `idx` (decoded in the background unless cached).
    pub fn show_file(&mut self, idx: usize, path: PathBuf) {
        let cached = self.state.cached(&path);
        let vp = &mut self.state.viewports[idx];
        vp.path = Some(path.clone());
        vp.frame = 0;
        vp.ruler = None;
        vp.error = None;
        vp.playing = false;
        vp.loading = cached.is_none();
        vp.image = cached.clone();
        if cached.is_some() {
            return;
        }
        self.jobs.spawn("decode", move |h| {
            let result = crate::dicom::load(&path)
                .map(Arc::new)
                .map_err(|e| e.to_string());
            h.send(JobEvent::Loaded { path, result });
        });
    }

    fn start_thumbnails(&mut self) {
        let paths: Vec<PathBuf> = self
            .state
            .scan
            .images()
            .iter()
            .map(|i| i.path.clone())
            .filter(|p| !self.state.thumbnails.contains_key(p))
            .collect();
        if paths.is_empty() {
            return;
        }
        for p in &paths {
            self.state.thumbnails.insert(p.clone(), None);
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

    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let RunMode::Screenshot(run) = &mut self.mode else {
            return;
        };
        ctx.request_repaint();
        if run.started.elapsed().as_secs() > 300 {
            self.shot_saved(Err("timed out waiting for the image".into()), ctx);
            return;
        }
        let obs = Observation::of(&self.state, &run.plan);
        let (cmds, shoot) = run.step(&obs);
        self.commands.extend(cmds);
        if shoot {
            let path = run.plan.path.clone();
            let tx = self.jobs.sender();
            ctx.request_screenshot(move |img| {
                tx.send(JobEvent::Shot(super::export::save_color_image(&img, &path)));
            });
        }
    }

    fn shot_saved(&mut self, r: Result<(), String>, ctx: &egui::Context) {
        let RunMode::Screenshot(run) = &self.mode else {
            return;
        };
        if let Ok(mut o) = self.outcome.lock() {
            *o = match r {
                Ok(()) => ShotOutcome::Saved(run.plan.path.clone()),
                Err(e) => ShotOutcome::Failed(e),
            };
        }
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

impl eframe::App for LofiApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.frame_ui(ui, &ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if let RunMode::Interactive = self.mode {
            eframe::set_value(storage, SETTINGS_KEY, &self.state.settings);
        }
    }
}

/// Merge a new scan into the tree (new patients appended, same patients' studies extended).
fn merge_scan(into: &mut Scan, new: Scan) {
    for p in new.patients {
        let Some(q) = into.patients.iter_mut().find(|q| q.id == p.id) else {
            into.patients.push(p);
            continue;
        };
        for s in p.studies {
            let Some(t) = q.studies.iter_mut().find(|t| t.uid == s.uid) else {
                q.studies.push(s);
                continue;
            };
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
    }
    into.skipped.extend(new.skipped);
}
