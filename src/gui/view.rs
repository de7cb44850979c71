//! The mapping between image pixels and the screen: zoom (screen pixels per image pixel), pan,
//! rotation in 90° steps and flips. Everything drawn over the image (overlays, rulers, AI boxes)
//! goes through [`ViewTransform::image_to_screen`], so it follows every change of view.

use egui::{Pos2, Rect, Vec2};
use serde::{Deserialize, Serialize};

/// How an image is placed in its viewport.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ViewTransform {
    /// Screen points per image pixel.
    pub zoom: f32,
    /// Offset of the image centre from the viewport centre, in screen points.
    pub pan: Vec2,
    /// Clockwise quarter turns (0–3).
    pub rotation: u8,
    /// Mirror left–right (applied before rotation, in image space).
    pub flip_h: bool,
    /// Mirror top–bottom.
    pub flip_v: bool,
    /// Re-fit to the viewport on every resize until the user zooms or pans.
    pub fit: bool,
}

impl Default for ViewTransform {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            pan: Vec2::ZERO,
            rotation: 0,
            flip_h: false,
            flip_v: false,
            fit: true,
        }
    }
}

impl ViewTransform {
    fn orient(&self, mut d: Vec2) -> Vec2 {
        if self.flip_h {
            d.x = -d.x;
        }
        if self.flip_v {
            d.y = -d.y;
        }
        for _ in 0..self.rotation % 4 {
            d = Vec2::new(-d.y, d.x);
        }
        d
    }

    fn unorient(&self, mut d: Vec2) -> Vec2 {
        for _ in 0..self.rotation % 4 {
            d = Vec2::new(d.y, -d.x);
        }
        if self.flip_v {
            d.y = -d.y;
        }
        if self.flip_h {
            d.x = -d.x;
        }
        d
    }

    /// Image pixel coordinates → screen position inside `viewport`.
    pub fn image_to_screen(&self, viewport: Rect, image_size: Vec2, p: Pos2) -> Pos2 {
        let d = p.to_vec2() - image_size / 2.0;
        viewport.center() + self.pan + self.orient(d) * self.zoom
    }

    /// Screen position → image pixel coordinates.
    pub fn screen_to_image(&self, viewport: Rect, image_size: Vec2, s: Pos2) -> Pos2 {
        let d = (s - viewport.center() - self.pan) / self.zoom.max(1e-6);
        (image_size / 2.0 + self.unorient(d)).to_pos2()
    }

    /// Size of the image on screen after rotation, at zoom 1.
    pub fn rotated_size(&self, image_size: Vec2) -> Vec2 {
        if self.rotation % 2 == 1 {
            Vec2::new(image_size.y, image_size.x)
        } else {
            image_size
        }
    }

    /// Fit the whole image in the viewport, centred.
    pub fn fit_to(&mut self, viewport: Rect, image_size: Vec2) {
        let r = self.rotated_size(image_size);
        self.zoom = (viewport.width() / r.x)
            .min(viewport.height() / r.y)
            .max(1e-4);
        self.pan = Vec2::ZERO;
        self.fit = true;
    }

    /// One image pixel per screen pixel (`pixels_per_point` converts points to pixels).
    pub fn one_to_one(&mut self, pixels_per_point: f32) {
        self.zoom = 1.0 / pixels_per_point.max(1e-3);
        self.fit = false;
    }

    /// Zoom by `factor` keeping the image point under `cursor` fixed.
    pub fn zoom_about(&mut self, viewport: Rect, image_size: Vec2, cursor: Pos2, factor: f32) {
        let p = self.screen_to_image(viewport, image_size, cursor);
        self.zoom = (self.zoom * factor).clamp(0.01, 64.0);
        let d = p.to_vec2() - image_size / 2.0;
        self.pan = cursor - viewport.center() - self.orient(d) * self.zoom;
        self.fit = false;
    }

    /// Rotate a quarter turn clockwise.
    pub fn rotate_cw(&mut self) {
        self.rotation = (self.rotation + 1) % 4;
    }

    /// The four image corners on screen, in clip space of `viewport` (TL, TR, BL, BR).
    pub fn clip_corners(&self, viewport: Rect, image_size: Vec2) -> [[f32; 2]; 4] {
        let c = |p: Pos2| {
            let s = self.image_to_screen(viewport, image_size, p);
            [
                (s.x - viewport.left()) / viewport.width() * 2.0 - 1.0,
                1.0 - (s.y - viewport.top()) / viewport.height() * 2.0,
            ]
        };
        [
            c(Pos2::ZERO),
            c(Pos2::new(image_size.x, 0.0)),
            c(Pos2::new(0.0, image_size.y)),
            c(image_size.to_pos2()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp() -> Rect {
        Rect::from_min_size(Pos2::new(10.0, 20.0), Vec2::new(400.0, 300.0))
    }

    #[test]
    fn roundtrip_every_orientation() {
        let size = Vec2::new(200.0, 100.0);
        for rot in 0..4 {
            for (fh, fv) in [(false, false), (true, false), (false, true), (true, true)] {
                let t = ViewTransform {
                    zoom: 1.7,
                    pan: Vec2::new(13.0, -7.0),
                    rotation: rot,
                    flip_h: fh,
                    flip_v: fv,
                    fit: false,
                };
                let p = Pos2::new(37.0, 81.0);
                let back = t.screen_to_image(vp(), size, t.image_to_screen(vp(), size, p));
                assert!((back - p).length() < 1e-3, "{rot} {fh} {fv}");
            }
        }
    }

    #[test]
    fn zoom_keeps_point_under_cursor() {
        let size = Vec2::new(200.0, 100.0);
        let mut t = ViewTransform::default();
        t.fit_to(vp(), size);
        t.rotate_cw();
        let cursor = Pos2::new(150.0, 100.0);
        let before = t.screen_to_image(vp(), size, cursor);
        t.zoom_about(vp(), size, cursor, 2.5);
        let after = t.screen_to_image(vp(), size, cursor);
        assert!((before - after).length() < 1e-3);
    }

    #[test]
    fn rotation_moves_top_left_to_top_right() {
        let size = Vec2::new(100.0, 100.0);
        let mut t = ViewTransform::default();
        t.fit_to(vp(), size);
        t.rotate_cw();
        let s = t.image_to_screen(vp(), size, Pos2::ZERO);
        assert!(s.x > vp().center().x && s.y < vp().center().y);
        let f = ViewTransform {
            flip_h: true,
            ..Default::default()
        };
        let s = f.image_to_screen(vp(), size, Pos2::ZERO);
        assert!(s.x > vp().center().x);
    }
}
