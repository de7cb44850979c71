//! Everything the user can ask for, as values. Keys, menus, panels, toolbar buttons and the
//! screenshot run push [`AppCommand`]s; [`LofiApp::apply`] runs them once per frame, and is the
//! one place that keeps two-up panes in step and remembers settings.

use std::path::PathBuf;

use egui::{Pos2, Vec2};

use super::app::LofiApp;
use super::export::ExportKind;
use super::state::{full_range_window, PointerTool, Preset};
use crate::dicom::Voi;
use crate::report::Review;

/// One user intent.
#[derive(Debug, Clone, PartialEq)]
pub enum AppCommand {
    /// Fit the active pane to its viewport.
    Fit,
    /// One image pixel per screen pixel.
    OneToOne,
    /// Rotate 90° clockwise.
    RotateCw,
    /// Mirror left–right.
    FlipHorizontal,
    /// Mirror top–bottom.
    FlipVertical,
    /// Invert grey levels.
    ToggleInvert,
    /// Window, view, inversion and ruler back to the file's.
    Reset,
    /// Window preset `n` of [`super::state::AppState::presets`].
    ApplyPreset(usize),
    /// A window for the active pane.
    SetWindow(Voi),
    /// Save the active pane's window as a user preset.
    SavePreset,
    /// Forget the user presets.
    ClearPresets,
    /// Next frame of a multi-frame image.
    NextFrame,
    /// Previous frame.
    PrevFrame,
    /// Show frame `n` (0-based).
    SetFrame(usize),
    /// Start/stop cine.
    TogglePlay,
    /// Pan pane `idx` by a screen offset.
    Pan(usize, Vec2),
    /// Zoom pane `idx` by a factor about a screen point.
    ZoomAbout(usize, Pos2, f32),
    /// Change pane `idx`'s window by a right-drag offset.
    WindowDrag(usize, Vec2),
    /// Fit pane `idx` (double click).
    FitPane(usize),
    /// Set or clear pane `idx`'s ruler (image pixels).
    SetRuler(usize, Option<[Pos2; 2]>),
    /// Make pane `idx` the one keys and panels act on.
    SetActive(usize),
    /// Choose the primary-button tool.
    SetTool(PointerTool),
    /// Two panes side by side.
    SetTwoUp(bool),
    /// Keep the two panes in step.
    SetSync(bool),
    /// Bilinear interpolation when zoomed.
    SetSmooth(bool),
    /// Show the study browser.
    ShowBrowser(bool),
    /// Show the DICOM tag browser.
    ShowTags(bool),
    /// Show the AI panel.
    ShowAi(bool),
    /// Show the key and mouse help.
    ToggleHelp,
    /// Ask for files (or a folder) to open.
    OpenDialog {
        /// A folder instead of files.
        folder: bool,
    },
    /// Scan and open these paths (and remember them as recent).
    OpenPaths(Vec<PathBuf>),
    /// Show a file in pane `idx`.
    ShowFile(usize, PathBuf),
    /// Close the window.
    Quit,
    /// Show/hide the AI layer.
    ToggleAiLayer,
    /// Ground a typed finding on the active image.
    Ground(String),
    /// Every finding the model reports on the active image.
    FindAll,
    /// Describe a region (image pixels) of pane `idx`.
    Describe(usize, [f32; 4]),
    /// Stop the running AI job.
    CancelAi,
    /// Review a box: (finding, box, state).
    Review(usize, usize, Review),
    /// Remove the active image's findings.
    ClearFindings,
    /// Zoom the active pane onto (finding, box).
    ZoomTo(usize, usize),
    /// Ask where to export the active image's findings.
    ExportDialog(ExportKind),
    /// Export the active image's findings here.
    ExportTo(ExportKind, PathBuf),
    /// Ask for a model folder.
    OpenModelDialog,
    /// Load a model folder.
    LoadModel(PathBuf),
    /// Search the store by the active image.
    SimilarByImage,
    /// Search the store by the last drawn region.
    SimilarByRegion,
    /// Search the store by the typed text.
    SimilarByText,
    /// Open a stored case two-up beside the current image.
    Compare(PathBuf),
    /// Ask for a folder of prior cases to index.
    IndexFolderDialog,
    /// Index a folder into the store.
    IndexFolder(PathBuf),
    /// Stop indexing.
    CancelIndexing,
    /// Show the PACS window.
    ShowPacs(bool),
    /// Use archive node `n`.
    PacsSelectNode(usize),
    /// Save a node (replacing node `i`, or added when None).
    PacsSaveNode(Option<usize>, crate::pacs::Node),
    /// Forget node `n`.
    PacsRemoveNode(usize),
    /// C-ECHO (or a QIDO-RS probe) the current node.
    PacsEcho,
    /// Search the current node.
    PacsSearch(crate::pacs::Query),
    /// Retrieve a study (or one series) into the study cache.
    PacsRetrieve {
        /// StudyInstanceUID.
        study_uid: String,
        /// SeriesInstanceUID.
        series_uid: Option<String>,
        /// What the user sees.
        label: String,
    },
    /// Stop the running search, retrieve or send.
    PacsCancel,
    /// Send the active image's AI results as a Structured Report to the current node.
    PacsSendSr,
    /// Start or stop the storage SCP.
    PacsListen(bool),
    /// Change the storage SCP's settings.
    PacsSetListener(super::pacs::ListenerSettings),
}

impl LofiApp {
    /// Run every queued command, then keep the panes in step where a command changed the
    /// active pane's window or view.
    pub fn apply(&mut self, ctx: &egui::Context) {
        let cmds = std::mem::take(&mut self.commands);
        for c in cmds {
            let synced = self.apply_view(&c, ctx);
            if let Some(idx) = synced {
                self.sync_from(idx);
            } else if !self.apply_layout(&c, ctx) && !self.apply_pacs(&c) {
                self.apply_ai(c);
            }
        }
    }

    /// View commands; returns the pane to mirror when one changed.
    fn apply_view(&mut self, c: &AppCommand, ctx: &egui::Context) -> Option<usize> {
        use AppCommand as C;
        let s = &mut self.state;
        let a = s.active;
        let idx = match c {
            C::Pan(i, _) | C::ZoomAbout(i, ..) | C::WindowDrag(i, _) | C::FitPane(i) => *i,
            _ => a,
        };
        let preset = match c {
            C::ApplyPreset(n) => Some(s.presets(a).get(*n).map(|p| p.1)?),
            _ => None,
        };
        let vp = &mut s.viewports[idx];
        match c {
            C::Fit | C::FitPane(_) => vp.view.fit = true,
            C::OneToOne => vp.view.one_to_one(ctx.pixels_per_point()),
            C::RotateCw => vp.view.rotate_cw(),
            C::FlipHorizontal => vp.view.flip_h = !vp.view.flip_h,
            C::FlipVertical => vp.view.flip_v = !vp.view.flip_v,
            C::ToggleInvert => vp.invert = !vp.invert,
            C::Reset => vp.reset(),
            C::SetWindow(v) => vp.voi = Some(*v),
            C::ApplyPreset(_) => vp.voi = preset,
            C::Pan(_, d) => {
                vp.view.pan += *d;
                vp.view.fit = false;
            }
            C::ZoomAbout(_, at, f) => {
                let (rect, img) = (vp.rect?, vp.image.clone()?);
                let fr = img.frames.get(vp.frame)?;
                let size = Vec2::new(fr.width as f32, fr.height as f32);
                vp.view.zoom_about(rect, size, *at, *f);
            }
            C::WindowDrag(_, d) => {
                let img = vp.image.clone()?;
                let (c0, w0, function) = match vp.current_voi()? {
                    Voi::Window {
                        center,
                        width,
                        function,
                    } => (center, width, function),
                    Voi::Lut(_) => match full_range_window(&img, vp.frame) {
                        Voi::Window {
                            center,
                            width,
                            function,
                        } => (center, width, function),
                        Voi::Lut(_) => return None,
                    },
                };
                let k = w0.max(1.0) / 256.0;
                vp.voi = Some(Voi::Window {
                    center: c0 + d.y as f64 * k,
                    width: (w0 + d.x as f64 * k).max(1.0),
                    function,
                });
            }
            _ => return None,
        }
        Some(idx)
    }

    /// Layout, file, frame and settings commands; false when `c` is not one of them.
    fn apply_layout(&mut self, c: &AppCommand, ctx: &egui::Context) -> bool {
        use AppCommand as C;
        let s = &mut self.state;
        let a = s.active;
        match c {
            C::SavePreset => {
                if let Some(Voi::Window { center, width, .. }) = s.viewports[a].current_voi() {
                    let n = s.settings.presets.len() + 1;
                    s.settings.presets.push(Preset {
                        name: format!("Preset {n} (W {width:.0} C {center:.0})"),
                        center,
                        width,
                    });
                }
            }
            C::ClearPresets => s.settings.presets.clear(),
            C::NextFrame | C::PrevFrame | C::SetFrame(_) => {
                let vp = &mut s.viewports[a];
                let n = vp.image.as_ref().map_or(1, |im| im.frames.len());
                vp.frame = match c {
                    C::NextFrame => (vp.frame + 1).min(n - 1),
                    C::PrevFrame => vp.frame.saturating_sub(1),
                    C::SetFrame(f) => (*f).min(n - 1),
                    _ => vp.frame,
                };
            }
            C::TogglePlay => s.viewports[a].playing = !s.viewports[a].playing,
            C::SetRuler(i, r) => s.viewports[*i].ruler = *r,
            C::SetActive(i) => s.active = *i,
            C::SetTool(t) => s.tool = *t,
            C::SetTwoUp(v) => s.settings.two_up = *v,
            C::SetSync(v) => s.settings.sync = *v,
            C::SetSmooth(v) => s.settings.smooth = *v,
            C::ShowBrowser(v) => s.settings.show_browser = *v,
            C::ShowTags(v) => s.settings.show_tags = *v,
            C::ShowAi(v) => s.settings.show_ai = *v,
            C::ToggleHelp => s.help_open = !s.help_open,
            C::ToggleAiLayer => s.ai.show_layer = !s.ai.show_layer,
            C::OpenDialog { folder } => self.pick_in_background(*folder),
            C::OpenPaths(p) => {
                self.state.settings.remember(p);
                self.open_paths(p.clone(), true);
            }
            C::ShowFile(i, p) => self.show_file(*i, p.clone()),
            C::Quit => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
            C::ExportTo(kind, path) => self.export_to(*kind, path.clone(), ctx),
            C::ExportDialog(kind) => self.export_dialog(*kind),
            C::ZoomTo(fi, bi) => self.zoom_to(self.state.active, *fi, *bi),
            _ => return false,
        }
        true
    }

    /// Mirror pane `idx`'s window and view onto the other one when two-up and synchronised.
    pub(crate) fn sync_from(&mut self, idx: usize) {
        let s = &mut self.state;
        if !(s.settings.two_up && s.settings.sync) || idx > 1 {
            return;
        }
        let other = 1 - idx;
        if s.viewports[other].image.is_none() {
            return;
        }
        let (voi, invert, view) = {
            let v = &s.viewports[idx];
            (v.voi, v.invert, v.view)
        };
        let o = &mut s.viewports[other];
        o.voi = voi;
        o.invert = invert;
        o.view = view;
    }
}
