//! The greyscale display pipeline, CPU reference: stored value → modality LUT (rescale or LUT
//! sequence) → VOI (window with LINEAR / LINEAR_EXACT / SIGMOID, or a VOI LUT) → presentation
//! (MONOCHROME1 / Presentation LUT Shape inversion, user invert) → 8-bit; pixel padding shows
//! black. The GPU shader (`shaders/window_level.wgsl`) implements the same formulas.

use serde::{Deserialize, Serialize};

use super::object::{ImageInfo, VoiFunction};
use super::pixels::{Frame, Pixels};

/// The VOI transform in use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Voi {
    /// Window centre/width (modality units) with a VOI LUT Function.
    Window {
        /// Centre.
        center: f64,
        /// Width.
        width: f64,
        /// Function.
        function: VoiFunction,
    },
    /// The file's i-th VOI LUT.
    Lut(usize),
}

impl Voi {
    /// Centre and width, when a window.
    pub fn window(&self) -> Option<(f64, f64)> {
        match self {
            Voi::Window { center, width, .. } => Some((*center, *width)),
            Voi::Lut(_) => None,
        }
    }
}

/// What the user chose on top of the file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DisplayParams {
    /// VOI.
    pub voi: Voi,
    /// Invert the output (on top of MONOCHROME1).
    pub invert: bool,
}

/// Modality value of a stored value.
pub fn modality_value(stored: i32, info: &ImageInfo) -> f64 {
    match &info.modality_lut {
        Some(l) => l.lookup(stored as f64),
        None => stored as f64 * info.rescale_slope + info.rescale_intercept,
    }
}

/// The padding range in stored values, if the file declares one.
pub fn padding_range(info: &ImageInfo) -> Option<(i32, i32)> {
    let p = info.pixel_padding_value?;
    Some(match info.pixel_padding_range_limit {
        Some(l) => (p.min(l), p.max(l)),
        None => (p, p),
    })
}

/// The window shown first: the file's first window, else its first VOI LUT, else the full range
/// of modality values in the frame.
pub fn default_voi(info: &ImageInfo, frame: &Frame) -> Voi {
    if let Some(w) = info.windows.first() {
        return Voi::Window {
            center: w.center,
            width: w.width,
            function: info.voi_function,
        };
    }
    if !info.voi_luts.is_empty() {
        return Voi::Lut(0);
    }
    let (lo, hi) = frame.min_max(padding_range(info));
    let (a, b) = (modality_value(lo, info), modality_value(hi, info));
    let (a, b) = (a.min(b), a.max(b));
    Voi::Window {
        center: (a + b + 1.0) / 2.0,
        width: (b - a + 1.0).max(1.0),
        function: VoiFunction::Linear,
    }
}

/// Whether the output is inverted: MONOCHROME1, a Presentation LUT Shape of INVERSE on a
/// MONOCHROME2 image, and the user's invert toggle each flip it.
pub fn output_inverted(info: &ImageInfo, user_invert: bool) -> bool {
    let file_inverse = info.is_monochrome1()
        ^ (info.photometric == "MONOCHROME2"
            && info.presentation_lut_shape.as_deref() == Some("INVERSE"));
    file_inverse ^ user_invert
}

/// VOI of a modality value, in [0, 1].
pub fn voi_value(m: f64, voi: &Voi, info: &ImageInfo) -> f64 {
    match *voi {
        Voi::Window {
            center: c,
            width: w,
            function,
        } => match function {
            VoiFunction::Linear => {
                let w = w.max(1.0);
                if m <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if m > c - 0.5 + (w - 1.0) / 2.0 {
                    1.0
                } else {
                    (m - (c - 0.5)) / (w - 1.0) + 0.5
                }
            }
            VoiFunction::LinearExact => {
                let w = w.max(f64::MIN_POSITIVE);
                if m <= c - w / 2.0 {
                    0.0
                } else if m > c + w / 2.0 {
                    1.0
                } else {
                    (m - c) / w + 0.5
                }
            }
            VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (m - c) / w.max(f64::MIN_POSITIVE)).exp()),
        },
        Voi::Lut(i) => match info.voi_luts.get(i) {
            Some(l) => l.lookup(m) / l.max_out(),
            None => 0.0,
        },
    }
}

/// The whole pipeline for one stored value → 8-bit grey.
pub fn display_value(
    stored: i32,
    info: &ImageInfo,
    p: &DisplayParams,
    padding: Option<(i32, i32)>,
) -> u8 {
    if padding.is_some_and(|(a, b)| stored >= a && stored <= b) {
        return 0;
    }
    let y = voi_value(modality_value(stored, info), &p.voi, info).clamp(0.0, 1.0);
    let y = if output_inverted(info, p.invert) {
        1.0 - y
    } else {
        y
    };
    (y * 255.0).round() as u8
}

/// Render a frame to 8-bit (grey, or RGB for colour images; `invert` applies to both).
pub fn render(frame: &Frame, info: &ImageInfo, p: &DisplayParams) -> image::DynamicImage {
    let (w, h) = (frame.width, frame.height);
    match &frame.pixels {
        Pixels::Mono(v) => {
            let padding = padding_range(info);
            let (lo, hi) = frame.min_max(None);
            let span = (hi as i64 - lo as i64 + 1) as usize;
            let out: Vec<u8> = if span <= (1 << 20) {
                // one table entry per possible stored value
                let table: Vec<u8> = (0..span)
                    .map(|k| display_value(lo + k as i32, info, p, padding))
                    .collect();
                v.iter().map(|&x| table[(x - lo) as usize]).collect()
            } else {
                v.iter()
                    .map(|&x| display_value(x, info, p, padding))
                    .collect()
            };
            image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w, h, out)
                    .unwrap_or_else(|| image::GrayImage::new(w, h)),
            )
        }
        Pixels::Rgb(v) => {
            let out: Vec<u8> = if p.invert {
                v.iter().map(|x| 255 - x).collect()
            } else {
                v.clone()
            };
            image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w, h, out).unwrap_or_else(|| image::RgbImage::new(w, h)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ImageInfo {
        ImageInfo {
            rescale_slope: 1.0,
            photometric: "MONOCHROME2".into(),
            samples_per_pixel: 1,
            ..Default::default()
        }
    }

    #[test]
    fn linear_window_matches_standard() {
        // PS3.3 example: c = 2048, w = 4096 over 12-bit data
        let i = info();
        let v = Voi::Window {
            center: 2048.0,
            width: 4096.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(voi_value(-1.0, &v, &i), 0.0);
        assert_eq!(voi_value(4096.0, &v, &i), 1.0);
        assert!((voi_value(2047.5, &v, &i) - 0.5).abs() < 1e-12);
        // width 1: a threshold at c − 0.5
        let t = Voi::Window {
            center: 10.0,
            width: 1.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(voi_value(9.4, &t, &i), 0.0);
        assert_eq!(voi_value(9.6, &t, &i), 1.0);
    }

    #[test]
    fn linear_exact_and_sigmoid() {
        let i = info();
        let e = Voi::Window {
            center: 100.0,
            width: 50.0,
            function: VoiFunction::LinearExact,
        };
        assert_eq!(voi_value(75.0, &e, &i), 0.0);
        assert!((voi_value(100.0, &e, &i) - 0.5).abs() < 1e-12);
        assert!((voi_value(112.5, &e, &i) - 0.75).abs() < 1e-12);
        let s = Voi::Window {
            center: 100.0,
            width: 50.0,
            function: VoiFunction::Sigmoid,
        };
        assert!((voi_value(100.0, &s, &i) - 0.5).abs() < 1e-12);
        assert!((voi_value(112.5, &s, &i) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn mono1_inverts_and_padding_is_black() {
        let mut i = info();
        i.photometric = "MONOCHROME1".into();
        i.pixel_padding_value = Some(0);
        let p = DisplayParams {
            voi: Voi::Window {
                center: 128.0,
                width: 256.0,
                function: VoiFunction::LinearExact,
            },
            invert: false,
        };
        let pad = padding_range(&i);
        assert_eq!(display_value(255, &i, &p, pad), 1);
        assert_eq!(display_value(1, &i, &p, pad), 254);
        assert_eq!(display_value(0, &i, &p, pad), 0);
        let p2 = DisplayParams { invert: true, ..p };
        assert_eq!(display_value(255, &i, &p2, pad), 254);
    }

    #[test]
    fn rescale_and_modality_lut() {
        let mut i = info();
        i.rescale_slope = 2.0;
        i.rescale_intercept = -1024.0;
        assert_eq!(modality_value(600, &i), 176.0);
        i.modality_lut = Some(super::super::object::Lut {
            first_mapped: 10,
            bits: 16,
            data: vec![100, 200, 300],
            explanation: None,
        });
        assert_eq!(modality_value(5, &i), 100.0);
        assert_eq!(modality_value(11, &i), 200.0);
        assert_eq!(modality_value(99, &i), 300.0);
    }
}
