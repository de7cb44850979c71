//! One image pane: the pointer-tool state machine (input → commands), the image through the GPU
//! shader, the AI layer, the ruler, the corner annotations and the value probe.

use egui::{Color32, Pos2, Rect, Sense, Vec2};

use super::command::AppCommand;
use super::renderer::{ImageCallback, Uniforms, UploadingCallback};
use super::state::{AppState, PointerTool, Probe, Viewport};
use crate::dicom::lut::modality_value;
use crate::dicom::{LoadedImage, Pixels, Voi};

/// What a drag in progress is doing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Gesture {
    /// No drag.
    #[default]
    Idle,
    /// Moving the image.
    Panning,
    /// Changing the window.
    Windowing,
    /// Measuring from `start` (image pixels).
    Measuring {
        /// Start point.
        start: Pos2,
    },
    /// Drawing a region to describe (image pixels).
    Drawing {
        /// Start corner.
        start: Pos2,
        /// Current corner.
        end: Pos2,
    },
}

/// The pointer's state across frames: which pane a drag belongs to and what it does.
#[derive(Debug, Clone, Copy, Default)]
pub struct PointerState {
    /// The gesture in progress.
    pub gesture: Gesture,
    /// Its pane.
    pub pane: usize,
}

/// Where the image lies: its pane, viewport rectangle and frame size, and the active tool.
#[derive(Clone, Copy)]
struct Placement {
    idx: usize,
    rect: Rect,
    size: Vec2,
    tool: PointerTool,
}

impl PointerState {
    /// Turn this frame's pointer input on pane `idx` into commands.
    fn input(
        &mut self,
        resp: &egui::Response,
        ui: &egui::Ui,
        vp: &Viewport,
        at: Placement,
        cmds: &mut Vec<AppCommand>,
    ) {
        use egui::PointerButton as B;
        let (idx, tool) = (at.idx, at.tool);
        let to_image = |p: Pos2| vp.view.screen_to_image(at.rect, at.size, p);
        if resp.clicked() || resp.drag_started() {
            cmds.push(AppCommand::SetActive(idx));
        }
        if let Some(hover) = resp.hover_pos() {
            let (scroll, pinch) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
            if scroll != 0.0 || pinch != 1.0 {
                cmds.push(AppCommand::ZoomAbout(
                    idx,
                    hover,
                    (scroll * 0.0025).exp() * pinch,
                ));
            }
        }
        if resp.double_clicked() {
            cmds.push(AppCommand::FitPane(idx));
        }
        let here = resp.interact_pointer_pos().or(resp.hover_pos());
        if resp.drag_started() {
            let start = here.map(|p| to_image(p - resp.drag_delta()));
            let shift = ui.input(|i| i.modifiers.shift);
            let tool = if shift { PointerTool::Ruler } else { tool };
            self.pane = idx;
            self.gesture = match (resp.dragged_by(B::Primary), start) {
                (true, Some(s)) if tool == PointerTool::Ruler => Gesture::Measuring { start: s },
                (true, Some(s)) if tool == PointerTool::DescribeRegion => {
                    Gesture::Drawing { start: s, end: s }
                }
                (true, _) => Gesture::Panning,
                (false, _) if resp.dragged_by(B::Secondary) => Gesture::Windowing,
                (false, _) if resp.dragged_by(B::Middle) => Gesture::Panning,
                _ => Gesture::Idle,
            };
        }
        if self.pane != idx {
            return;
        }
        let d = resp.drag_delta();
        match (&mut self.gesture, here) {
            (Gesture::Panning, _) if d != Vec2::ZERO => cmds.push(AppCommand::Pan(idx, d)),
            (Gesture::Windowing, _) if d != Vec2::ZERO => cmds.push(AppCommand::WindowDrag(idx, d)),
            (Gesture::Measuring { start }, Some(p)) if resp.dragged() => {
                cmds.push(AppCommand::SetRuler(idx, Some([*start, to_image(p)])))
            }
            (Gesture::Drawing { end, .. }, Some(p)) if resp.dragged() => *end = to_image(p),
            _ => {}
        }
        if resp.drag_stopped() {
            if let Gesture::Drawing { start, end } = self.gesture {
                let (x1, x2) = (start.x.min(end.x), start.x.max(end.x));
                let (y1, y2) = (start.y.min(end.y), start.y.max(end.y));
                let (x1, x2) = (x1.clamp(0.0, at.size.x), x2.clamp(0.0, at.size.x));
                let (y1, y2) = (y1.clamp(0.0, at.size.y), y2.clamp(0.0, at.size.y));
                if x2 - x1 > 2.0 && y2 - y1 > 2.0 {
                    cmds.push(AppCommand::Describe(idx, [x1, y1, x2, y2]));
                }
            }
            self.gesture = Gesture::Idle;
        }
    }
}

/// Draw pane `idx` and turn its pointer input into commands.
pub fn viewport_ui(
    ui: &mut egui::Ui,
    idx: usize,
    state: &mut AppState,
    pointer: &mut PointerState,
    opacity: f32,
    has_gpu: bool,
    cmds: &mut Vec<AppCommand>,
) {
    let (rect, resp) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, Color32::BLACK);
    if state.settings.two_up && state.active == idx {
        painter.rect_stroke(
            rect.shrink(1.0),
            0.0,
            (1.0, Color32::from_rgb(60, 120, 200)),
            egui::StrokeKind::Inside,
        );
    }
    let vp = &mut state.viewports[idx];
    vp.rect = Some(rect);
    let Some(img) = vp.image.clone() else {
        empty_ui(ui, &painter, vp, rect);
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
    cine_tick(ui, vp, &img);
    let at = Placement {
        idx,
        rect,
        size,
        tool: state.tool,
    };
    pointer.input(&resp, ui, vp, at, cmds);
    paint_image(&painter, idx, vp, &img, at, state.settings.smooth, has_gpu);
    if let (true, Some(key)) = (state.ai.show_layer, vp.ai_key()) {
        if let Some(r) = state.ai.results.get(&key) {
            let sel = (state.active == idx).then_some(state.ai.selected).flatten();
            super::ai::overlay::overlay(&painter, &vp.view, rect, size, r, opacity, sel);
        }
    }
    if let (Gesture::Drawing { start, end }, true) = (pointer.gesture, pointer.pane == idx) {
        let pa = vp.view.image_to_screen(rect, size, start);
        let pb = vp.view.image_to_screen(rect, size, end);
        painter.rect_stroke(
            Rect::from_two_pos(pa, pb),
            0.0,
            (1.5, Color32::WHITE),
            egui::StrokeKind::Middle,
        );
    }
    paint_ruler(&painter, vp, &img, at);
    paint_corners(&painter, vp, &img, rect, ui.ctx().pixels_per_point());
    if let Some(h) = resp.hover_pos() {
        if let Some(p) = probe(vp, &img, at, h) {
            state.probe = p;
        }
    }
}

fn empty_ui(ui: &egui::Ui, painter: &egui::Painter, vp: &Viewport, rect: Rect) {
    let text = if vp.loading {
        "Loading…".to_string()
    } else if let Some(e) = &vp.error {
        format!("Cannot show this file:\n{e}")
    } else {
        "Drop DICOM files or folders here, or use File > Open".to_string()
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
}

fn cine_tick(ui: &egui::Ui, vp: &mut Viewport, img: &LoadedImage) {
    if vp.playing && img.frames.len() > 1 {
        let now = ui.input(|i| i.time);
        let dt = img.info.frame_time_ms.unwrap_or(100.0).max(10.0) / 1000.0;
        if now - vp.last_tick >= dt {
            vp.frame = (vp.frame + 1) % img.frames.len();
            vp.last_tick = now;
        }
        ui.ctx().request_repaint();
    }
}

fn paint_image(
    painter: &egui::Painter,
    idx: usize,
    vp: &Viewport,
    img: &std::sync::Arc<LoadedImage>,
    at: Placement,
    smooth: bool,
    has_gpu: bool,
) {
    let (Some(params), true) = (vp.params(), has_gpu) else {
        return;
    };
    let frame = &img.frames[vp.frame];
    let key = crate::manifest::fnv64(
        vp.frame as u64,
        vp.path
            .as_deref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
            .as_bytes(),
    );
    let mut u = Uniforms::new(&img.info, frame, &params).with_rgb_invert(params.invert);
    u.corners = vp.view.clip_corners(at.rect, at.size);
    u.smooth = (smooth && vp.view.zoom > 1.0) as u32;
    let cb = UploadingCallback {
        slot: idx as u32,
        image: (key, img.clone(), vp.frame),
        draw: ImageCallback {
            slot: idx as u32,
            uniforms: u,
        },
    };
    painter.add(cb.into_shape(at.rect));
}

/// Pixel spacing in mm and whether it is at the detector (imager spacing only).
fn spacing_of(img: &LoadedImage) -> (Option<[f64; 2]>, bool) {
    match (img.info.pixel_spacing_mm, img.info.imager_pixel_spacing_mm) {
        (Some(s), _) => (Some(s), false),
        (None, Some(s)) => (Some(s), true),
        _ => (None, false),
    }
}

fn paint_ruler(painter: &egui::Painter, vp: &Viewport, img: &LoadedImage, at: Placement) {
    let Some([a, b]) = vp.ruler else {
        return;
    };
    let yellow = Color32::from_rgb(255, 210, 60);
    let sa = vp.view.image_to_screen(at.rect, at.size, a);
    let sb = vp.view.image_to_screen(at.rect, at.size, b);
    painter.line_segment([sa, sb], (2.0, yellow));
    for s in [sa, sb] {
        painter.circle_filled(s, 3.0, yellow);
    }
    let (dx, dy) = ((b.x - a.x) as f64, (b.y - a.y) as f64);
    let label = match spacing_of(img) {
        (Some([row, col]), at_detector) => {
            let mm = ((dx * col).powi(2) + (dy * row).powi(2)).sqrt();
            if at_detector {
                format!("{mm:.1} mm (at detector)")
            } else {
                format!("{mm:.1} mm")
            }
        }
        (None, _) => format!("{:.1} px (no pixel spacing)", (dx * dx + dy * dy).sqrt()),
    };
    painter.text(
        sb + Vec2::new(8.0, -8.0),
        egui::Align2::LEFT_BOTTOM,
        label,
        egui::FontId::proportional(14.0),
        yellow,
    );
}

fn paint_corners(painter: &egui::Painter, vp: &Viewport, img: &LoadedImage, rect: Rect, ppp: f32) {
    let corner = |t: String, pos: Pos2, a: egui::Align2| {
        painter.text(
            pos,
            a,
            t,
            egui::FontId::monospace(12.0),
            Color32::from_gray(220),
        );
    };
    let info = &img.info;
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
        vp.view.zoom * ppp * 100.0
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
}

fn probe(vp: &Viewport, img: &LoadedImage, at: Placement, hover: Pos2) -> Option<Probe> {
    let p = vp.view.screen_to_image(at.rect, at.size, hover);
    if !(p.x >= 0.0 && p.y >= 0.0 && p.x < at.size.x && p.y < at.size.y) {
        return None;
    }
    let frame = img.frames.get(vp.frame)?;
    let (x, y) = (p.x as u32, p.y as u32);
    let stored = match &frame.pixels {
        Pixels::Mono(v) => v.get((y * frame.width + x) as usize).copied(),
        Pixels::Rgb(_) => None,
    };
    let (spacing, at_detector) = spacing_of(img);
    Some(Probe {
        pixel: Some((x, y)),
        stored,
        modality: stored.map(|s| modality_value(s, &img.info)),
        mm: spacing.map(|[row, col]| (p.x as f64 * col, p.y as f64 * row, at_detector)),
    })
}
