//! DICOM and plain-image loading: safe opening (structural preflight before parsing), metadata,
//! pixel decoding for every transfer syntax a hospital produces, the display pipeline (CPU
//! reference of the GPU shader) and study organisation.

pub mod jpeg;
pub mod lut;
pub mod object;
pub mod pixels;
pub mod preflight;
pub mod sr;
pub mod study;

use std::path::Path;

use image::GrayImage;

pub use lut::{DisplayParams, Voi};
pub use object::{DicomFile, ImageInfo, VoiFunction};
pub use pixels::{Frame, Pixels};

/// Errors loading images.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// Reading the file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a readable DICOM object.
    #[error("not a readable DICOM file: {0}")]
    Parse(String),
    /// The pixel data could not be decoded.
    #[error("pixel data: {0}")]
    Decode(String),
    /// A feature of the file is not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The object has no image (structured report, presentation state, …).
    #[error("this object has no image")]
    NoPixels,
    /// A frame beyond the last was asked for.
    #[error("frame {frame} out of range (the image has {frames})")]
    FrameOutOfRange {
        /// Asked for.
        frame: u32,
        /// Available.
        frames: u32,
    },
    /// A PNG/JPEG could not be decoded.
    #[error("image: {0}")]
    Image(String),
}

/// Whether the bytes start like a PNG or JPEG file.
pub fn is_plain_image(head: &[u8]) -> bool {
    head.starts_with(&[0x89, b'P', b'N', b'G']) || head.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// An image ready for display: a DICOM instance or a PNG/JPEG treated as one.
#[derive(Debug)]
pub struct LoadedImage {
    /// Metadata (synthesised for PNG/JPEG: 8-bit MONOCHROME2 or RGB).
    pub info: ImageInfo,
    /// Decoded frames.
    pub frames: Vec<Frame>,
    /// The parsed DICOM object (None for PNG/JPEG).
    pub dicom: Option<DicomFile>,
}

/// Decode a PNG/JPEG into a one-frame image.
pub fn load_plain(bytes: &[u8], name: &str) -> Result<LoadedImage, DicomError> {
    let img = object::guard("decoding image", || {
        image::load_from_memory(bytes).map_err(|e| DicomError::Image(e.to_string()))
    })?;
    let (w, h) = (img.width(), img.height());
    let grey = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    let (pixels, spp, bits) = if grey {
        if matches!(img.color(), image::ColorType::L16 | image::ColorType::La16) {
            (
                Pixels::Mono(
                    img.to_luma16()
                        .into_raw()
                        .into_iter()
                        .map(i32::from)
                        .collect(),
                ),
                1,
                16,
            )
        } else {
            (
                Pixels::Mono(
                    img.to_luma8()
                        .into_raw()
                        .into_iter()
                        .map(i32::from)
                        .collect(),
                ),
                1,
                8,
            )
        }
    } else {
        (Pixels::Rgb(img.to_rgb8().into_raw()), 3, 8)
    };
    let info = ImageInfo {
        sop_uid: name.to_string(),
        study_uid: name.to_string(),
        series_uid: name.to_string(),
        rows: h,
        columns: w,
        frames: 1,
        samples_per_pixel: spp,
        bits_allocated: bits,
        bits_stored: bits,
        high_bit: bits - 1,
        photometric: if grey {
            "MONOCHROME2".into()
        } else {
            "RGB".into()
        },
        rescale_slope: 1.0,
        has_pixels: true,
        windows: vec![object::Window {
            center: if bits == 8 { 127.5 } else { 32767.5 },
            width: if bits == 8 { 256.0 } else { 65536.0 },
            explanation: Some("full range".into()),
        }],
        ..Default::default()
    };
    Ok(LoadedImage {
        info,
        frames: vec![Frame {
            width: w,
            height: h,
            pixels,
        }],
        dicom: None,
    })
}

/// Open any supported file and decode all its frames.
pub fn load(path: &Path) -> Result<LoadedImage, DicomError> {
    let bytes = object::read_limited(path)?;
    if is_plain_image(&bytes) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return load_plain(&bytes, &name);
    }
    load_dicom_bytes(&bytes)
}

/// Parse and decode DICOM bytes (used by `load` and the fuzz target).
pub fn load_dicom_bytes(bytes: &[u8]) -> Result<LoadedImage, DicomError> {
    let obj = object::parse(bytes)?;
    let info = object::image_info(&obj);
    let file = DicomFile { obj, info };
    let mut frames = Vec::with_capacity(file.info.frames.min(4096) as usize);
    for f in 0..file.info.frames {
        frames.push(pixels::decode_frame(&file, f)?);
    }
    Ok(LoadedImage {
        info: file.info.clone(),
        frames,
        dicom: Some(file),
    })
}

/// Load any supported image as the 8-bit grey picture a radiologist sees first (default window,
/// MONOCHROME1 inverted, first frame); colour images are converted to grey.
pub fn load_gray8(path: &Path) -> Result<GrayImage, DicomError> {
    let img = load(path)?;
    let frame = img.frames.first().ok_or(DicomError::NoPixels)?;
    let p = DisplayParams {
        voi: lut::default_voi(&img.info, frame),
        invert: false,
    };
    Ok(lut::render(frame, &img.info, &p).to_luma8())
}
