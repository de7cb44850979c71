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

/// Largest decoded frame accepted (bytes of stored values): 256 MiB, e.g. 11,585² pixels at 16
/// bits. The largest radiographs (mammography, long-leg stitches) are under 100 MB; a header that
/// declares more is treated as damaged rather than allowed to claim gigabytes for a small file.
pub const MAX_FRAME_BYTES: u64 = 1 << 28;

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

/// The encapsulated fragments of the pixel data, or `None` when it is native (not encapsulated).
fn pixel_fragments(file: &DicomFile) -> Result<Option<&[Vec<u8>]>, DicomError> {
    let el = file
        .obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| DicomError::NoPixels)?;
    Ok(match el.value() {
        Value::PixelSequence(seq) => Some(seq.fragments()),
        _ => None,
    })
}

fn frame_fragments(file: &DicomFile, frame: u32) -> Result<Vec<u8>, DicomError> {
    let Some(frags) = pixel_fragments(file)? else {
        return Err(DicomError::Decode(
            "compressed transfer syntax without encapsulated pixel data".into(),
        ));
    };
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

/// JPEG 2000 transfer syntaxes (lossless, lossy, multi-component, HTJ2K).
fn is_j2k(ts: &str) -> bool {
    matches!(
        ts,
        "1.2.840.10008.1.2.4.90"
            | "1.2.840.10008.1.2.4.91"
            | "1.2.840.10008.1.2.4.92"
            | "1.2.840.10008.1.2.4.93"
            | "1.2.840.10008.1.2.4.201"
            | "1.2.840.10008.1.2.4.202"
            | "1.2.840.10008.1.2.4.203"
    )
}

/// Every JPEG 2000 codestream header (SOC + SIZ marker) in the encapsulated pixel data must
/// describe the image of the DICOM header: the codec adapter copies the decoded samples into a
/// buffer sized from the DICOM header without bounds checks (found by fuzzing).
fn check_j2k_headers(file: &DicomFile) -> Result<(), DicomError> {
    let Some(frags) = pixel_fragments(file)? else {
        return Ok(()); // native data under a J2K label: the decoder reports it
    };
    // A codestream starts a fragment (PS3.5 A.4); a JP2 file wrapped instead (non-conformant but
    // seen) holds it in a box. Only those places are looked at: inside entropy-coded data the
    // bytes FF 4F FF 51 can occur by chance.
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    const JP2_SIGNATURE: [u8; 8] = [0, 0, 0, 0x0C, b'j', b'P', b' ', b' '];
    let mut found = false;
    for frag in frags {
        let at = if frag.starts_with(&SOC_SIZ) {
            Some(0)
        } else if frag.starts_with(&JP2_SIGNATURE) {
            frag.windows(4).position(|w| w == SOC_SIZ)
        } else {
            None
        };
        if let Some(at) = at {
            check_j2k_siz(&frag[at + 4..], &file.info)?;
            found = true;
        }
    }
    if !found {
        return Err(DicomError::Decode(
            "JPEG 2000 pixel data without a codestream header (SOC + SIZ marker)".into(),
        ));
    }
    Ok(())
}

/// Check one SIZ marker segment (`b` starts at its length field) against the DICOM header.
fn check_j2k_siz(b: &[u8], info: &ImageInfo) -> Result<(), DicomError> {
    let truncated = || DicomError::Decode("truncated JPEG 2000 SIZ marker".into());
    let be32 = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .ok_or_else(truncated)
    };
    // Lsiz Rsiz | Xsiz Ysiz XOsiz YOsiz | XTsiz YTsiz XTOsiz YTOsiz | Csiz | (Ssiz XRsiz YRsiz)×C
    let (xs, ys, xo, yo) = (be32(4)?, be32(8)?, be32(12)?, be32(16)?);
    let c = b
        .get(36..38)
        .map(|x| u16::from_be_bytes([x[0], x[1]]))
        .ok_or_else(truncated)?;
    if xo >= xs || yo >= ys {
        return Err(DicomError::Decode(format!(
            "JPEG 2000 codestream has an empty image area ({xs}×{ys} from offset {xo},{yo})"
        )));
    }
    let (w, h) = (xs - xo, ys - yo);
    if w != info.columns || h != info.rows || c != info.samples_per_pixel {
        return Err(DicomError::Decode(format!(
            "JPEG 2000 codestream is {w}×{h}×{c} but the header says {}×{}×{}",
            info.columns, info.rows, info.samples_per_pixel
        )));
    }
    for k in 0..c as usize {
        let sub = b
            .get(38 + 3 * k + 1..38 + 3 * k + 3)
            .ok_or_else(truncated)?;
        if sub != [1, 1] {
            return Err(DicomError::Unsupported(format!(
                "JPEG 2000 component {k} is subsampled ({}×{})",
                sub[0], sub[1]
            )));
        }
    }
    Ok(())
}

/// An RLE Lossless frame (PS3.5 Annex G) must be complete before the dicom-rs adapter sees it: it
/// indexes the header, the segments and their decoded bytes without bounds checks (a short
/// segment made it panic under fuzzing). Checks the 64-byte header, one segment per byte plane,
/// increasing offsets inside the fragment, and that every segment's PackBits runs are whole and
/// decode to at least Rows × Columns bytes (runs are counted, not expanded).
fn check_rle_frame(file: &DicomFile, frame: u32) -> Result<(), DicomError> {
    let Some(frags) = pixel_fragments(file)? else {
        return Ok(()); // native data under an RLE label: the decoder reports it
    };
    let info = &file.info;
    let bad = |m: String| DicomError::Decode(format!("RLE frame {frame}: {m}"));
    let frag = frags
        .get(frame as usize)
        .ok_or_else(|| bad("no fragment for this frame".into()))?;
    if frag.len() < 64 {
        return Err(bad(format!(
            "{} bytes, shorter than the header",
            frag.len()
        )));
    }
    let word = |i: usize| u32::from_le_bytes([frag[i], frag[i + 1], frag[i + 2], frag[i + 3]]);
    let planes = info.samples_per_pixel as usize * (info.bits_allocated as usize / 8).max(1);
    let nseg = word(0) as usize;
    if nseg != planes {
        return Err(bad(format!("{nseg} segments, expected {planes}")));
    }
    let mut offsets: Vec<usize> = (0..nseg).map(|k| word(4 + 4 * k) as usize).collect();
    offsets.push(frag.len());
    if offsets[0] != 64 || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad(
            "segment offsets out of order or outside the fragment".into()
        ));
    }
    let need = info.rows as usize * info.columns as usize;
    for (k, w) in offsets.windows(2).enumerate() {
        let seg = &frag[w[0]..w[1]];
        let (mut i, mut out) = (0usize, 0usize);
        while out < need && i < seg.len() {
            let n = seg[i] as i8;
            i += 1;
            if n >= 0 {
                let len = n as usize + 1;
                if i + len > seg.len() {
                    return Err(bad(format!("segment {k} ends inside a literal run")));
                }
                out += len;
                i += len;
            } else if n != -128 {
                if i >= seg.len() {
                    return Err(bad(format!("segment {k} ends inside a repeat run")));
                }
                out += (1 - n as isize) as usize;
                i += 1;
            }
        }
        if out < need {
            return Err(bad(format!("segment {k} decodes to {out} of {need} bytes")));
        }
    }
    Ok(())
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
    if is_j2k(&info.transfer_syntax) {
        check_j2k_headers(file)?;
    }
    if info.transfer_syntax == "1.2.840.10008.1.2.5" {
        check_rle_frame(file, frame)?;
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
