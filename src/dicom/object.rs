//! Opening DICOM files safely and reading the metadata the viewer and the pipeline need.

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use serde::Serialize;

use super::{preflight, DicomError};

/// Largest file accepted.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// A lookup table (modality LUT or VOI LUT sequence item).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lut {
    /// First input value mapped.
    pub first_mapped: i32,
    /// Bits per output entry.
    pub bits: u16,
    /// Output values.
    pub data: Vec<u16>,
    /// LUT Explanation, if any.
    pub explanation: Option<String>,
}

impl Lut {
    /// Output for input `x` (clamped to the table's ends).
    pub fn lookup(&self, x: f64) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        let i = (x.floor() as i64 - self.first_mapped as i64).clamp(0, self.data.len() as i64 - 1);
        self.data[i as usize] as f64
    }
    /// Largest output value.
    pub fn max_out(&self) -> f64 {
        ((1u32 << self.bits.clamp(1, 16)) - 1) as f64
    }
}

/// VOI LUT Function (0028,1056).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VoiFunction {
    /// PS3.3 C.11.2.1.2.1.
    #[default]
    Linear,
    /// PS3.3 C.11.2.1.3.2.
    LinearExact,
    /// PS3.3 C.11.2.1.3.1.
    Sigmoid,
}

/// One window stored in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Window centre (modality units).
    pub center: f64,
    /// Window width.
    pub width: f64,
    /// Window Center & Width Explanation.
    pub explanation: Option<String>,
}

/// Metadata of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ImageInfo {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Study Date.
    pub study_date: String,
    /// Study Description.
    pub study_description: String,
    /// Series Description.
    pub series_description: String,
    /// Series Number.
    pub series_number: Option<i32>,
    /// Instance Number.
    pub instance_number: Option<i32>,
    /// Modality.
    pub modality: String,
    /// View Position.
    pub view: String,
    /// Transfer Syntax UID.
    pub transfer_syntax: String,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// Number of Frames.
    pub frames: u32,
    /// Samples per Pixel.
    pub samples_per_pixel: u16,
    /// Bits Allocated.
    pub bits_allocated: u16,
    /// Bits Stored.
    pub bits_stored: u16,
    /// High Bit.
    pub high_bit: u16,
    /// Pixel Representation is signed.
    pub signed: bool,
    /// Photometric Interpretation.
    pub photometric: String,
    /// Rescale Slope.
    pub rescale_slope: f64,
    /// Rescale Intercept.
    pub rescale_intercept: f64,
    /// Modality LUT Sequence (first item).
    pub modality_lut: Option<Lut>,
    /// Windows stored in the file.
    pub windows: Vec<Window>,
    /// VOI LUT Function.
    pub voi_function: VoiFunction,
    /// VOI LUT Sequence items.
    pub voi_luts: Vec<Lut>,
    /// Presentation LUT Shape (IDENTITY / INVERSE).
    pub presentation_lut_shape: Option<String>,
    /// Pixel Padding Value.
    pub pixel_padding_value: Option<i32>,
    /// Pixel Padding Range Limit.
    pub pixel_padding_range_limit: Option<i32>,
    /// Pixel Spacing (row, column) in mm, at the patient.
    pub pixel_spacing_mm: Option<[f64; 2]>,
    /// Imager Pixel Spacing (row, column) in mm, at the detector.
    pub imager_pixel_spacing_mm: Option<[f64; 2]>,
    /// Frame Time (ms) for cine.
    pub frame_time_ms: Option<f64>,
    /// Whether the object has pixel data.
    pub has_pixels: bool,
}

impl ImageInfo {
    /// MONOCHROME1 (minimum value displayed white).
    pub fn is_monochrome1(&self) -> bool {
        self.photometric == "MONOCHROME1"
    }
    /// Greyscale.
    pub fn is_grey(&self) -> bool {
        self.samples_per_pixel == 1
    }
}

/// An opened DICOM file.
#[derive(Debug)]
pub struct DicomFile {
    /// The parsed object.
    pub obj: DefaultDicomObject,
    /// Its metadata.
    pub info: ImageInfo,
}

fn s(o: &InMemDicomObject, t: Tag) -> String {
    o.get(t)
        .and_then(|e| e.to_str().ok())
        .map(|v| v.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

fn int_i64(o: &InMemDicomObject, t: Tag) -> Option<i64> {
    o.get(t).and_then(|e| e.to_int::<i64>().ok())
}

fn int_u16(o: &InMemDicomObject, t: Tag) -> Option<u16> {
    int_i64(o, t).and_then(|v| u16::try_from(v).ok())
}

fn int_u32(o: &InMemDicomObject, t: Tag) -> Option<u32> {
    int_i64(o, t).and_then(|v| u32::try_from(v).ok())
}

fn int_i32(o: &InMemDicomObject, t: Tag) -> Option<i32> {
    int_i64(o, t).and_then(|v| i32::try_from(v).ok())
}

fn floats(o: &InMemDicomObject, t: Tag) -> Vec<f64> {
    o.get(t)
        .and_then(|e| e.to_multi_float64().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.is_finite())
        .collect()
}

fn pair(o: &InMemDicomObject, t: Tag) -> Option<[f64; 2]> {
    match floats(o, t).as_slice() {
        [a, b, ..] if *a > 0.0 && *b > 0.0 => Some([*a, *b]),
        [a] if *a > 0.0 => Some([*a, *a]),
        _ => None,
    }
}

fn lut_from_item(item: &InMemDicomObject, signed_first: bool) -> Option<Lut> {
    let desc = item.get(tags::LUT_DESCRIPTOR)?;
    let d: Vec<i64> = desc.to_multi_int::<i64>().ok()?;
    if d.len() < 3 {
        return None;
    }
    let n = if d[0] == 0 {
        65536
    } else {
        (d[0] as u64 & 0xFFFF) as usize
    };
    let first = if signed_first {
        (d[1] as u16) as i16 as i32
    } else {
        (d[1] as u64 & 0xFFFF) as i32
    };
    let bits = (d[2].clamp(1, 16)) as u16;
    let data_el = item.get(tags::LUT_DATA)?;
    let mut data: Vec<u16> = match data_el.to_multi_int::<u16>() {
        Ok(v) if v.len() >= n => v,
        _ => {
            let b = data_el.to_bytes().ok()?;
            if bits <= 8 && b.len() >= n {
                b[..n].iter().copied().map(u16::from).collect()
            } else {
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            }
        }
    };
    if data.len() < n {
        return None;
    }
    data.truncate(n);
    Some(Lut {
        first_mapped: first,
        bits,
        data,
        explanation: Some(s(item, tags::LUT_EXPLANATION)).filter(|e| !e.is_empty()),
    })
}

/// Read the metadata of an object.
pub fn image_info(obj: &DefaultDicomObject) -> ImageInfo {
    let o: &InMemDicomObject = obj;
    let signed = int_u16(o, tags::PIXEL_REPRESENTATION) == Some(1);
    let bits_allocated = int_u16(o, tags::BITS_ALLOCATED).unwrap_or(0);
    let bits_stored = int_u16(o, tags::BITS_STORED).unwrap_or(bits_allocated);
    let centers = floats(o, tags::WINDOW_CENTER);
    let widths = floats(o, tags::WINDOW_WIDTH);
    let expl: Vec<String> = o
        .get(tags::WINDOW_CENTER_WIDTH_EXPLANATION)
        .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
        .unwrap_or_default();
    let windows = centers
        .iter()
        .zip(&widths)
        .enumerate()
        .filter(|(_, (_, w))| **w > 0.0)
        .map(|(i, (c, w))| Window {
            center: *c,
            width: *w,
            explanation: expl
                .get(i)
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty()),
        })
        .collect();
    let voi_function = match s(o, tags::VOILUT_FUNCTION).as_str() {
        "LINEAR_EXACT" => VoiFunction::LinearExact,
        "SIGMOID" => VoiFunction::Sigmoid,
        _ => VoiFunction::Linear,
    };
    let items = |t: Tag| -> Vec<InMemDicomObject> {
        o.get(t)
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default()
    };
    let voi_luts = items(tags::VOILUT_SEQUENCE)
        .iter()
        .filter_map(|i| lut_from_item(i, false))
        .collect();
    let modality_lut = items(tags::MODALITY_LUT_SEQUENCE)
        .first()
        .and_then(|i| lut_from_item(i, signed));
    let padding = |t: Tag| -> Option<i32> {
        let e = o.get(t)?;
        if let Ok(v) = e.to_int::<i32>() {
            return Some(v);
        }
        let b = e.to_bytes().ok()?;
        (b.len() >= 2).then(|| {
            let u = u16::from_le_bytes([b[0], b[1]]);
            if signed {
                u as i16 as i32
            } else {
                u as i32
            }
        })
    };
    let slope = floats(o, tags::RESCALE_SLOPE)
        .first()
        .copied()
        .filter(|v| *v != 0.0)
        .unwrap_or(1.0);
    let intercept = floats(o, tags::RESCALE_INTERCEPT)
        .first()
        .copied()
        .unwrap_or(0.0);
    let mut frame_time_ms = floats(o, tags::FRAME_TIME).first().copied();
    if frame_time_ms.is_none() {
        frame_time_ms = floats(o, tags::CINE_RATE)
            .first()
            .filter(|r| **r > 0.0)
            .map(|r| 1000.0 / r);
    }
    ImageInfo {
        sop_class_uid: s(o, tags::SOP_CLASS_UID),
        sop_uid: s(o, tags::SOP_INSTANCE_UID),
        study_uid: s(o, tags::STUDY_INSTANCE_UID),
        series_uid: s(o, tags::SERIES_INSTANCE_UID),
        patient_id: s(o, tags::PATIENT_ID),
        patient_name: s(o, tags::PATIENT_NAME)
            .replace('^', " ")
            .trim()
            .to_string(),
        study_date: s(o, tags::STUDY_DATE),
        study_description: s(o, tags::STUDY_DESCRIPTION),
        series_description: s(o, tags::SERIES_DESCRIPTION),
        series_number: int_i32(o, tags::SERIES_NUMBER),
        instance_number: int_i32(o, tags::INSTANCE_NUMBER),
        modality: s(o, tags::MODALITY),
        view: s(o, tags::VIEW_POSITION),
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_string(),
        rows: int_u32(o, tags::ROWS).unwrap_or(0),
        columns: int_u32(o, tags::COLUMNS).unwrap_or(0),
        frames: int_u32(o, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
        samples_per_pixel: int_u16(o, tags::SAMPLES_PER_PIXEL).unwrap_or(1),
        bits_allocated,
        bits_stored,
        high_bit: int_u16(o, tags::HIGH_BIT).unwrap_or(bits_stored.saturating_sub(1)),
        signed,
        photometric: s(o, tags::PHOTOMETRIC_INTERPRETATION),
        rescale_slope: slope,
        rescale_intercept: intercept,
        modality_lut,
        windows,
        voi_function,
        voi_luts,
        presentation_lut_shape: Some(s(o, tags::PRESENTATION_LUT_SHAPE)).filter(|v| !v.is_empty()),
        pixel_padding_value: padding(tags::PIXEL_PADDING_VALUE),
        pixel_padding_range_limit: padding(tags::PIXEL_PADDING_RANGE_LIMIT),
        pixel_spacing_mm: pair(o, tags::PIXEL_SPACING),
        imager_pixel_spacing_mm: pair(o, tags::IMAGER_PIXEL_SPACING),
        frame_time_ms,
        has_pixels: o.get(tags::PIXEL_DATA).is_some(),
    }
}

/// Run `f`, turning a panic inside a third-party decoder into an error.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, DicomError>) -> Result<T, DicomError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(DicomError::Decode(format!(
            "{what}: the decoder failed on malformed data"
        ))),
    }
}

/// Parse DICOM bytes (after the structural preflight).
pub fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, DicomError> {
    let (layout, _) = preflight::check(bytes).map_err(|e| DicomError::Parse(e.0))?;
    guard("parsing", || {
        if layout.has_meta {
            let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
                128
            } else {
                0
            };
            dicom_object::OpenFileOptions::new()
                .read_preamble(dicom_object::file::ReadPreamble::Never)
                .from_reader(std::io::Cursor::new(&bytes[start..]))
                .map_err(|e| DicomError::Parse(e.to_string()))
        } else {
            // a bare implicit-VR little-endian data set (no file meta header)
            let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
            let ds = InMemDicomObject::read_dataset_with_ts(std::io::Cursor::new(bytes), &ts)
                .map_err(|e| DicomError::Parse(e.to_string()))?;
            let class = s(&ds, tags::SOP_CLASS_UID);
            let inst = s(&ds, tags::SOP_INSTANCE_UID);
            let meta = dicom_object::meta::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2")
                .media_storage_sop_class_uid(if class.is_empty() {
                    "1.2.840.10008.5.1.4.1.1.7"
                } else {
                    &class
                })
                .media_storage_sop_instance_uid(if inst.is_empty() { "2.25.1" } else { &inst });
            ds.with_meta(meta)
                .map_err(|e| DicomError::Parse(e.to_string()))
        }
    })
}

/// Open a file: size check, read, preflight, parse, metadata.
pub fn open(path: &Path) -> Result<DicomFile, DicomError> {
    let bytes = read_limited(path)?;
    let obj = parse(&bytes)?;
    let info = image_info(&obj);
    Ok(DicomFile { obj, info })
}

/// Read a whole file, refusing anything larger than [`MAX_FILE_BYTES`].
pub fn read_limited(path: &Path) -> Result<Vec<u8>, DicomError> {
    let io = |e| DicomError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(DicomError::Parse(format!(
            "file of {len} bytes is larger than 4 GiB"
        )));
    }
    std::fs::read(path).map_err(io)
}
