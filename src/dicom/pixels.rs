//! Decoding pixel data into stored values, one frame at a time.
//!
//! JPEG baseline/extended (1.2.840.10008.1.2.4.50/.51) goes through our own decoder (8 and
//! 12 bit); every other transfer syntax through dicom-rs' codecs (native, deflate, RLE, JPEG
//! lossless, JPEG-LS via CharLS, JPEG 2000 via OpenJPEG). Declared sizes are checked against the
//! data before anything large is allocated.

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

use super::jpeg;
use super::object::{guard, DicomFile, ImageInfo};
use super::DicomError;

/// Largest decoded frame accepted (bytes of stored values).
pub const MAX_FRAME_BYTES: u64 = 1 << 31;

/// Stored pixel values of one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Greyscale stored values (signed where the file says so), row-major.
    Mono(Vec<i32>),
    /// 8-bit RGB, interleaved.
    Rgb(Vec<u8>),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Values.
    pub pixels: Pixels,
}

impl Frame {
    /// Smallest and largest stored value (greyscale), ignoring the padding range.
    pub fn min_max(&self, padding: Option<(i32, i32)>) -> (i32, i32) {
        match &self.pixels {
            Pixels::Mono(v) => {
                let mut lo = i32::MAX;
                let mut hi = i32::MIN;
                for &x in v {
                    if padding.is_some_and(|(a, b)| x >= a && x <= b) {
                        continue;
                    }
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
                if lo > hi {
                    (0, 0)
                } else {
                    (lo, hi)
                }
            }
            Pixels::Rgb(_) => (0, 255),
        }
    }
}

fn check_geometry(info: &ImageInfo) -> Result<u64, DicomError> {
    if !info.has_pixels {
        return Err(DicomError::NoPixels);
    }
    if info.rows == 0 || info.columns == 0 {
        return Err(DicomError::Decode("rows or columns is zero".into()));
    }
    if info.samples_per_pixel != 1 && info.samples_per_pixel != 3 {
        return Err(DicomError::Unsupported(format!(
            "{} samples per pixel",
            info.samples_per_pixel
        )));
    }
    if !matches!(info.bits_allocated, 8 | 16 | 32) {
        return Err(DicomError::Unsupported(format!(
            "{} bits allocated",
            info.bits_allocated
        )));
    }
    if info.bits_stored == 0 || info.bits_stored > info.bits_allocated {
        return Err(DicomError::Decode(format!(
            "bits stored {} does not fit bits allocated {}",
            info.bits_stored, info.bits_allocated
        )));
    }
    let frame_bytes = info.rows as u64
        * info.columns as u64
        * info.samples_per_pixel as u64
        * (info.bits_allocated as u64 / 8);
    if frame_bytes > MAX_FRAME_BYTES || frame_bytes * info.frames as u64 > 4 * MAX_FRAME_BYTES {
        return Err(DicomError::Decode(format!(
            "declared image of {} × {} × {} frames is too large",
            info.columns, info.rows, info.frames
        )));
    }
    Ok(frame_bytes)
}

fn frame_fragments(file: &DicomFile, frame: u32) -> Result<Vec<u8>, DicomError> {
    let el = file
        .obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| DicomError::NoPixels)?;
    let Value::PixelSequence(seq) = el.value() else {
        return Err(DicomError::Decode(
            "compressed transfer syntax without encapsulated pixel data".into(),
        ));
    };
    let frags = seq.fragments();
    let frames = file.info.frames as usize;
    let f = frame as usize;
    if frames == 1 {
        return Ok(frags.iter().flat_map(|x| x.iter().copied()).collect());
    }
    if frags.len() == frames {
        return Ok(frags[f].clone());
    }
    // group fragments into frames at JPEG start-of-image markers
    let mut starts: Vec<usize> = frags
        .iter()
        .enumerate()
        .filter(|(_, x)| x.starts_with(&[0xFF, 0xD8]))
        .map(|(i, _)| i)
        .collect();
    if starts.len() != frames {
        return Err(DicomError::Decode(format!(
            "{} fragments cannot be split into {frames} frames",
            frags.len()
        )));
    }
    starts.push(frags.len());
    Ok(frags[starts[f]..starts[f + 1]]
        .iter()
        .flat_map(|x| x.iter().copied())
        .collect())
}

/// Sign-extend / mask a raw sample per Bits Stored, High Bit and Pixel Representation. Native
/// data is masked (bits above Bits Stored may hold other things); unsigned values out of a codec
/// are clamped instead, since a lossy decoder may overshoot the range by a code or two.
fn stored_value(raw: u32, info: &ImageInfo, from_codec: bool) -> i32 {
    let bs = info.bits_stored.min(32) as u32;
    if from_codec && !info.signed {
        let max = if bs >= 32 { u32::MAX } else { (1u32 << bs) - 1 };
        return raw.min(max).min(i32::MAX as u32) as i32;
    }
    let shift = (info.high_bit as u32 + 1).saturating_sub(bs).min(31);
    let v = raw >> shift;
    let v = if bs >= 32 { v } else { v & ((1u32 << bs) - 1) };
    if info.signed && bs < 32 && (v >> (bs - 1)) & 1 == 1 {
        (v as i64 - (1i64 << bs)) as i32
    } else {
        v as i32
    }
}

fn ybr_to_rgb(y: f32, cb: f32, cr: f32) -> [u8; 3] {
    let r = y + 1.402 * (cr - 128.0);
    let g = y - 0.344_136 * (cb - 128.0) - 0.714_136 * (cr - 128.0);
    let b = y + 1.772 * (cb - 128.0);
    [
        r.round().clamp(0.0, 255.0) as u8,
        g.round().clamp(0.0, 255.0) as u8,
        b.round().clamp(0.0, 255.0) as u8,
    ]
}

fn jpeg_path(info: &ImageInfo) -> bool {
    info.samples_per_pixel == 1
        && matches!(
            info.transfer_syntax.as_str(),
            "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51"
        )
}

/// Decode frame `frame` (0-based).
pub fn decode_frame(file: &DicomFile, frame: u32) -> Result<Frame, DicomError> {
    let info = &file.info;
    if frame >= info.frames {
        return Err(DicomError::FrameOutOfRange {
            frame,
            frames: info.frames,
        });
    }
    check_geometry(info)?;
    let (w, h) = (info.columns, info.rows);
    let n = w as usize * h as usize;
    if jpeg_path(info) {
        let bytes = frame_fragments(file, frame)?;
        let img = jpeg::decode(&bytes).map_err(|e| DicomError::Decode(e.to_string()))?;
        if img.width != w as usize || img.height != h as usize || img.components != 1 {
            return Err(DicomError::Decode(format!(
                "JPEG stream is {}×{}×{} but the header says {w}×{h}×1",
                img.width, img.height, img.components
            )));
        }
        let v = img
            .data
            .iter()
            .map(|&x| stored_value(x as u32, info, true))
            .collect();
        return Ok(Frame {
            width: w,
            height: h,
            pixels: Pixels::Mono(v),
        });
    }
    guard("decoding pixel data", || {
        // native data must hold every declared frame before dicom-rs slices it
        if let Ok(el) = file.obj.element(tags::PIXEL_DATA) {
            if let Value::Primitive(p) = el.value() {
                let have = p.calculate_byte_len() as u64;
                let need = check_geometry(info)? * info.frames as u64;
                if have < need {
                    return Err(DicomError::Decode(format!(
                        "pixel data holds {have} bytes, the header declares {need}"
                    )));
                }
            }
        }
        let px = file
            .obj
            .decode_pixel_data_frame(frame)
            .map_err(|e| DicomError::Decode(e.to_string()))?;
        let data = px.data();
        let from_codec = !matches!(
            info.transfer_syntax.as_str(),
            "1.2.840.10008.1.2"
                | "1.2.840.10008.1.2.1"
                | "1.2.840.10008.1.2.2"
                | "1.2.840.10008.1.2.1.99"
        );
        let ba = px.bits_allocated();
        let spp = px.samples_per_pixel() as usize;
        let bpp = (ba as usize / 8).max(1);
        if data.len() < n * spp * bpp {
            return Err(DicomError::Decode(format!(
                "decoded {} bytes, expected {}",
                data.len(),
                n * spp * bpp
            )));
        }
        let sample = |i: usize| -> u32 {
            match ba {
                8 => data[i] as u32,
                16 => u16::from_le_bytes([data[2 * i], data[2 * i + 1]]) as u32,
                _ => u32::from_le_bytes([
                    data[4 * i],
                    data[4 * i + 1],
                    data[4 * i + 2],
                    data[4 * i + 3],
                ]),
            }
        };
        if spp == 1 {
            let v = (0..n)
                .map(|i| stored_value(sample(i), info, from_codec))
                .collect();
            return Ok(Frame {
                width: w,
                height: h,
                pixels: Pixels::Mono(v),
            });
        }
        let planar = !matches!(
            px.planar_configuration(),
            dicom_pixeldata::PlanarConfiguration::PixelFirst
        );
        let max = ((1u64 << info.bits_stored.min(16)) - 1) as f32;
        let to8 = |v: u32| -> f32 {
            if ba == 8 {
                v as f32
            } else {
                v as f32 * 255.0 / max
            }
        };
        let ybr = px.photometric_interpretation().as_str().starts_with("YBR");
        let mut rgb = Vec::with_capacity(n * 3);
        for i in 0..n {
            let idx = |c: usize| if planar { c * n + i } else { i * 3 + c };
            let (a, b, c) = (
                to8(sample(idx(0))),
                to8(sample(idx(1))),
                to8(sample(idx(2))),
            );
            if ybr {
                rgb.extend_from_slice(&ybr_to_rgb(a, b, c));
            } else {
                rgb.extend_from_slice(&[a.round() as u8, b.round() as u8, c.round() as u8]);
            }
        }
        Ok(Frame {
            width: w,
            height: h,
            pixels: Pixels::Rgb(rgb),
        })
    })
}
