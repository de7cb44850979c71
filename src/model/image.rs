//! Image side: letterbox + normalisation, and the mapping of boxes between original pixels and
//! the letterboxed model square.

use image::GrayImage;

use super::prompt::UnitBox;

/// Geometry of one letterboxed image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Original width (columns).
    pub width: u32,
    /// Original height (rows).
    pub height: u32,
    /// Model square side S.
    pub size: u32,
    /// Resized width round(W·s).
    pub inner_w: u32,
    /// Resized height round(H·s).
    pub inner_h: u32,
    /// Left padding (pixels of the square).
    pub pad_x: u32,
    /// Top padding.
    pub pad_y: u32,
}

impl Letterbox {
    /// Geometry for a `width × height` image into an `size²` square
    /// (s = S / max(W, H); offsets (S − round(W·s)) / 2).
    pub fn new(width: u32, height: u32, size: u32) -> Self {
        let (w, h) = (width.max(1), height.max(1));
        let s = size as f64 / w.max(h) as f64;
        let inner_w = ((w as f64 * s).round() as u32).clamp(1, size);
        let inner_h = ((h as f64 * s).round() as u32).clamp(1, size);
        Self {
            width: w,
            height: h,
            size,
            inner_w,
            inner_h,
            pad_x: (size - inner_w) / 2,
            pad_y: (size - inner_h) / 2,
        }
    }

    /// Original-pixel box `[x1, y1, x2, y2]` → unit box of the square.
    pub fn to_unit(&self, b: [f32; 4]) -> UnitBox {
        let sx = self.inner_w as f32 / self.width as f32;
        let sy = self.inner_h as f32 / self.height as f32;
        let s = self.size as f32;
        [
            ((b[0] * sx + self.pad_x as f32) / s).clamp(0.0, 1.0),
            ((b[1] * sy + self.pad_y as f32) / s).clamp(0.0, 1.0),
            ((b[2] * sx + self.pad_x as f32) / s).clamp(0.0, 1.0),
            ((b[3] * sy + self.pad_y as f32) / s).clamp(0.0, 1.0),
        ]
    }

    /// Unit box of the square → original-pixel box, clamped to the image.
    pub fn to_pixels(&self, u: UnitBox) -> [f32; 4] {
        let sx = self.width as f32 / self.inner_w as f32;
        let sy = self.height as f32 / self.inner_h as f32;
        let s = self.size as f32;
        let (w, h) = (self.width as f32, self.height as f32);
        [
            ((u[0] * s - self.pad_x as f32) * sx).clamp(0.0, w),
            ((u[1] * s - self.pad_y as f32) * sy).clamp(0.0, h),
            ((u[2] * s - self.pad_x as f32) * sx).clamp(0.0, w),
            ((u[3] * s - self.pad_y as f32) * sy).clamp(0.0, h),
        ]
    }
}

/// Letterbox an 8-bit grey image to an 8-bit `size²` square (Lanczos, black padding).
pub fn letterbox_u8(img: &GrayImage, size: u32) -> (GrayImage, Letterbox) {
    let lb = Letterbox::new(img.width(), img.height(), size);
    let resized = if (img.width(), img.height()) == (lb.inner_w, lb.inner_h) {
        img.clone()
    } else {
        resize_lanczos3(img, lb.inner_w, lb.inner_h)
    };
    let mut out = GrayImage::new(size, size);
    image::imageops::replace(&mut out, &resized, lb.pad_x as i64, lb.pad_y as i64);
    (out, lb)
}

/// `image`'s Lanczos3 kernel: `sinc(x)·sinc(x/3)` for |x| < 3, the same f32 operations.
fn lanczos3(x: f32) -> f32 {
    fn sinc(t: f32) -> f32 {
        let a = t * std::f32::consts::PI;
        if t == 0.0 {
            1.0
        } else {
            a.sin() / a
        }
    }
    if x.abs() < 3.0 {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One pass's taps, as `image` computes them: for each output index the first source index and
/// the normalised weights.
fn lanczos3_taps(len: u32, new_len: u32) -> Vec<(usize, Vec<f32>)> {
    let ratio = len as f32 / new_len as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = 3.0 * sratio;
    (0..new_len)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, i64::from(len) - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, i64::from(len));
            let centre = centre - 0.5;
            let mut ws: Vec<f32> = (left..right)
                .map(|i| lanczos3((i as f32 - centre) / sratio))
                .collect();
            let sum: f32 = ws.iter().fold(0.0, |a, w| a + w);
            for w in &mut ws {
                *w /= sum;
            }
            (left as usize, ws)
        })
        .collect()
}

/// Lanczos3 resize of a grey image, bit for bit what `image::imageops::resize(img, w, h,
/// FilterType::Lanczos3)` returns (unit test), about 10× faster: `image` runs both passes over
/// four f32 channels through per-pixel accessors, this over one, the vertical pass a row at a
/// time (vectorised; each output still sums its taps in the same order, so the same roundings).
pub fn resize_lanczos3(img: &GrayImage, new_w: u32, new_h: u32) -> GrayImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || new_w == 0 || new_h == 0 {
        return GrayImage::new(new_w, new_h);
    }
    if (w, h) == (new_w, new_h) {
        return img.clone();
    }
    let (wu, src) = (w as usize, img.as_raw());
    // vertical: (w × h) u8 → (w × new_h) f32
    let mut tmp = vec![0f32; wu * new_h as usize];
    for ((top, ws), out) in lanczos3_taps(h, new_h).iter().zip(tmp.chunks_exact_mut(wu)) {
        for (i, &wt) in ws.iter().enumerate() {
            let row = &src[(top + i) * wu..(top + i + 1) * wu];
            for (t, &p) in out.iter_mut().zip(row) {
                *t += f32::from(p) * wt;
            }
        }
    }
    // horizontal: (w × new_h) f32 → (new_w × new_h) u8, clamped and rounded half away from zero
    let taps = lanczos3_taps(w, new_w);
    let mut out = Vec::with_capacity(new_w as usize * new_h as usize);
    for row in tmp.chunks_exact(wu) {
        for (left, ws) in &taps {
            let t = ws
                .iter()
                .zip(&row[*left..])
                .fold(0f32, |t, (&wt, &p)| t + p * wt);
            out.push(t.clamp(0.0, 255.0).round() as u8);
        }
    }
    GrayImage::from_raw(new_w, new_h, out).unwrap_or_else(|| GrayImage::new(new_w, new_h))
}

/// Letterbox an 8-bit grey image to `size²` (Lanczos), normalised to [-1, 1] (black padding is −1).
/// Returns row-major values and the geometry.
pub fn letterbox(img: &GrayImage, size: u32) -> (Vec<f32>, Letterbox) {
    let (sq, lb) = letterbox_u8(img, size);
    (normalize(sq.as_raw()), lb)
}

/// 8-bit grey values → [-1, 1].
pub fn normalize(px: &[u8]) -> Vec<f32> {
    px.iter().map(|&p| p as f32 / 127.5 - 1.0).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_grey_lanczos3_equals_images_bit_for_bit() {
        use image::imageops::{resize, FilterType};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (w, h, nw, nh) in [
            (1024, 1024, 224, 224),
            (512, 512, 224, 224),
            (600, 451, 224, 168),
            (97, 130, 224, 300),
            (300, 40, 7, 1),
            (5, 5, 3, 9),
        ] {
            let px: Vec<u8> = (0..w * h).map(|_| rng.random()).collect();
            let img = GrayImage::from_raw(w, h, px).unwrap();
            let ours = super::resize_lanczos3(&img, nw, nh);
            let theirs = resize(&img, nw, nh, FilterType::Lanczos3);
            assert_eq!(ours.dimensions(), theirs.dimensions());
            assert!(ours == theirs, "{w}×{h} → {nw}×{nh} differs");
        }
    }

    use super::super::prompt::{format_boxes, parse_boxes};
    use super::*;

    fn roundtrip(w: u32, h: u32, size: u32) {
        let lb = Letterbox::new(w, h, size);
        let boxes = [
            [0.0, 0.0, w as f32, h as f32],
            [
                w as f32 * 0.13,
                h as f32 * 0.27,
                w as f32 * 0.55,
                h as f32 * 0.91,
            ],
            // small but above the 1/1000 quantum of the longer side (≤ 2 px here)
            [17.0, 33.0, 27.5, 41.25],
        ];
        for b in boxes {
            let text = format_boxes(&[lb.to_unit(b)]);
            let parsed = parse_boxes(&text);
            assert_eq!(parsed.len(), 1, "{text}");
            let back = lb.to_pixels(parsed[0].unit);
            for k in 0..4 {
                assert!(
                    (back[k] - b[k]).abs() <= 1.0,
                    "{w}x{h}: {b:?} -> {text} -> {back:?}"
                );
            }
        }
    }

    #[test]
    fn box_roundtrip_portrait_landscape_square() {
        for (w, h) in [
            (1841, 1955),
            (1955, 1841),
            (1024, 1024),
            (512, 512),
            (300, 1200),
            (2000, 640),
        ] {
            for s in [224, 512] {
                roundtrip(w, h, s);
            }
        }
    }

    #[test]
    fn letterbox_pads_centred() {
        let img = GrayImage::from_pixel(100, 50, image::Luma([255]));
        let (v, lb) = letterbox(&img, 20);
        assert_eq!((lb.inner_w, lb.inner_h, lb.pad_x, lb.pad_y), (20, 10, 0, 5));
        assert_eq!(v[0], -1.0);
        assert!((v[5 * 20 + 3] - 1.0).abs() < 1e-6);
        assert_eq!(v[15 * 20 + 3], -1.0);
    }
}
