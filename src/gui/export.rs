//! Exports of the active image's AI findings: JSON, a PNG of the viewport with its overlay, and a
//! DICOM Structured Report. Every file is written crash-safely (temp, fsync, rename).

use std::path::{Path, PathBuf};

use egui::Rect;

use super::app::LofiApp;
use super::jobs::{JobEvent, Picked};
use super::state::StatusMessage;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// JSON.
    Json,
    /// PNG with the overlay.
    Png,
    /// DICOM Structured Report.
    Sr,
}

impl LofiApp {
    /// Export the active image's results as JSON.
    pub fn export_json(&self, path: &Path) -> Result<(), String> {
        let r = self
            .state
            .current_results()
            .ok_or("no AI results for this image")?;
        let s = serde_json::to_vec_pretty(&r.to_json()).map_err(|e| e.to_string())?;
        crate::util::atomic_write(path, &s).map_err(|e| e.to_string())
    }

    /// Export the active image's results as a DICOM Structured Report.
    pub fn export_sr(&self, path: &Path) -> Result<(), String> {
        let r = self
            .state
            .current_results()
            .ok_or("no AI results for this image")?;
        let vp = &self.state.viewports[self.state.active];
        let img = vp.image.as_ref().ok_or("no image")?;
        let frame = (img.frames.len() > 1).then_some(vp.frame as u32);
        crate::dicom::sr::write(r, &img.info, frame, path).map_err(|e| e.to_string())
    }

    /// Ask where to write an export (a dialog on a background thread).
    pub(crate) fn export_dialog(&mut self, kind: ExportKind) {
        let (name, ext) = match kind {
            ExportKind::Json => ("ai-findings.json", "json"),
            ExportKind::Png => ("ai-findings.png", "png"),
            ExportKind::Sr => ("ai-findings-sr.dcm", "dcm"),
        };
        let dir = self.state.settings.last_dir.clone();
        self.jobs.spawn("export dialog", move |h| {
            let mut d = rfd::FileDialog::new()
                .set_file_name(name)
                .add_filter(ext, &[ext]);
            if let Some(s) = dir {
                d = d.set_directory(s);
            }
            if let Some(p) = d.save_file() {
                h.send(JobEvent::Picked(Picked::ExportTo(kind, p)));
            }
        });
    }

    /// Write an export to `path` (PNG is taken from the next rendered frame).
    pub fn export_to(&mut self, kind: ExportKind, path: PathBuf, ctx: &egui::Context) {
        let r = match kind {
            ExportKind::Json => self.export_json(&path),
            ExportKind::Sr => self.export_sr(&path),
            ExportKind::Png => {
                let Some(rect) = self.state.viewports[self.state.active].rect else {
                    return;
                };
                let ppp = ctx.pixels_per_point();
                let tx = self.jobs.sender();
                ctx.request_screenshot(move |img| {
                    let r = crop_and_save(&img, rect, ppp, &path).map(|()| path);
                    tx.send(JobEvent::Exported(r));
                });
                return;
            }
        };
        self.state.message = Some(match r {
            Ok(()) => StatusMessage::info(format!("exported {}", path.display())),
            Err(e) => StatusMessage::error(format!("export failed: {e}")),
        });
    }
}

/// Save the part of a screenshot under `rect` (points) as PNG.
pub fn crop_and_save(
    img: &egui::ColorImage,
    rect: Rect,
    ppp: f32,
    path: &Path,
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
pub fn save_color_image(img: &egui::ColorImage, path: &Path) -> Result<(), String> {
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
