//! Structural check of a DICOM file's bytes before dicom-rs parses it.
//!
//! dicom-rs allocates each element's declared length before reading it, so a lying length field
//! could make it allocate gigabytes for a small file. This walk follows the same encoding
//! (explicit/implicit VR, little/big endian, undefined-length sequences and items, encapsulated
//! pixel data) and rejects any element whose declared length exceeds the bytes that are actually
//! left in its container, any nesting deeper than [`MAX_DEPTH`], and deflated data sets that
//! inflate beyond [`MAX_INFLATED`].

use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;

/// Deepest sequence nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Largest inflated size of a deflated data set.
pub const MAX_INFLATED: usize = 1 << 30;

/// Where the data set starts and how it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the data set (after preamble and file meta group).
    pub dataset_start: usize,
    /// Transfer syntax UID from the meta group (implicit VR LE when there is none).
    pub transfer_syntax: String,
    /// Whether the file has a `DICM` meta header.
    pub has_meta: bool,
}

/// Why a file is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PreflightError(pub String);

type R<T> = Result<T, PreflightError>;

fn err<T>(m: impl Into<String>) -> R<T> {
    Err(PreflightError(m.into()))
}

#[derive(Clone, Copy)]
struct Enc {
    explicit: bool,
    big: bool,
}

struct Walker<'a> {
    d: &'a [u8],
    enc: Enc,
}

const UNDEF: u32 = 0xFFFF_FFFF;

/// Value representations of fixed-size binary numbers and their size in bytes (PS3.5 6.2): a
/// value length must be a multiple of it.
const FIXED_SIZE_VRS: [([u8; 2], usize); 9] = [
    (*b"US", 2),
    (*b"SS", 2),
    (*b"UL", 4),
    (*b"SL", 4),
    (*b"FL", 4),
    (*b"AT", 4),
    (*b"FD", 8),
    (*b"SV", 8),
    (*b"UV", 8),
];

/// Whether an explicit-VR header has the 4-byte length form. PS3.5 7.1.2 lists the VRs with a
/// 2-byte length; every other VR, including an unknown one (which dicom-rs reads as UN), has 2
/// reserved bytes and a 4-byte length. Matching the parser exactly matters: a fuzzed file with an
/// unknown VR was read by dicom-rs with a 4 GB length that this check had taken for 2 bytes.
fn long_vr(vr: &[u8]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

impl Walker<'_> {
    fn u16(&self, p: usize) -> R<u16> {
        let b = self
            .d
            .get(p..p + 2)
            .ok_or_else(|| PreflightError("truncated element header".into()))?;
        Ok(if self.enc.big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }
    fn u32(&self, p: usize) -> R<u32> {
        let b = self
            .d
            .get(p..p + 4)
            .ok_or_else(|| PreflightError("truncated element header".into()))?;
        Ok(if self.enc.big {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// Header at `p`: (tag, vr, length, header size). Item tags are always implicit.
    fn header(&self, p: usize) -> R<(Tag, [u8; 2], u32, usize)> {
        let tag = Tag(self.u16(p)?, self.u16(p + 2)?);
        if tag.0 == 0xFFFE {
            return Ok((tag, *b"  ", self.u32(p + 4)?, 8));
        }
        if self.enc.explicit {
            let vr = self
                .d
                .get(p + 4..p + 6)
                .ok_or_else(|| PreflightError("truncated element header".into()))?;
            let vr = [vr[0], vr[1]];
            if long_vr(&vr) {
                Ok((tag, vr, self.u32(p + 8)?, 12))
            } else {
                Ok((tag, vr, self.u16(p + 6)? as u32, 8))
            }
        } else {
            use dicom_core::dictionary::DataDictionary;
            // the dictionary's VR, as dicom-rs will use it: sequences and the fixed-size numbers
            let vr = match StandardDataDictionary
                .by_tag(tag)
                .map(|e| format!("{:?}", e.vr))
            {
                Some(s) if s.contains("SQ") => *b"SQ",
                Some(s) if s == "Xs" => *b"US",
                Some(s) => FIXED_SIZE_VRS
                    .iter()
                    .find(|(v, _)| s == format!("Exact({})", String::from_utf8_lossy(v)))
                    .map_or(*b"UN", |(v, _)| *v),
                None => *b"UN",
            };
            Ok((tag, vr, self.u32(p + 4)?, 8))
        }
    }

    /// Walk elements in `[p, end)`; with `until_delim`, stop after the item delimiter.
    fn elements(&self, mut p: usize, end: usize, depth: usize, until_delim: bool) -> R<usize> {
        if depth > MAX_DEPTH {
            return err("sequences nested too deeply");
        }
        while p < end {
            if end - p < 8 {
                // trailing padding shorter than a header is tolerated
                return Ok(end);
            }
            let (tag, vr, len, hsz) = self.header(p)?;
            if tag == Tag(0xFFFE, 0xE00D) {
                if until_delim {
                    return Ok(p + 8);
                }
                p += 8;
                continue;
            }
            let body = p + hsz;
            if body > end {
                return err(format!(
                    "element {tag} header runs past the end of its container"
                ));
            }
            if len == UNDEF {
                if tag == Tag(0x7FE0, 0x0010) {
                    p = self.fragments(body, end)?;
                } else if &vr == b"SQ" || &vr == b"UN" || !self.enc.explicit {
                    p = self.sequence(body, end, None, depth + 1)?;
                } else {
                    return err(format!(
                        "element {tag} has an undefined length but is not a sequence"
                    ));
                }
                continue;
            }
            let len = len as usize;
            if let Some((_, size)) = FIXED_SIZE_VRS.iter().find(|(v, _)| *v == vr) {
                // a UL of 2 bytes made dicom-rs lose its place and then trust a 4 GB length
                if !len.is_multiple_of(*size) {
                    return err(format!(
                        "element {tag} ({}) has {len} bytes, not a multiple of {size}",
                        String::from_utf8_lossy(&vr)
                    ));
                }
            }
            if len > end - body {
                return err(format!(
                    "element {tag} declares {len} bytes but only {} remain",
                    end - body
                ));
            }
            if &vr == b"SQ" {
                self.sequence(body, body + len, Some(body + len), depth + 1)?;
            }
            p = body + len;
        }
        if until_delim {
            return err("item without delimiter");
        }
        Ok(end)
    }

    /// Items of a sequence starting at `p`; defined length ends at `defined_end`.
    fn sequence(
        &self,
        mut p: usize,
        end: usize,
        defined_end: Option<usize>,
        depth: usize,
    ) -> R<usize> {
        let stop = defined_end.unwrap_or(end);
        while p < stop {
            let (tag, _, len, _) = self.header(p)?;
            match tag {
                Tag(0xFFFE, 0xE0DD) => return Ok(p + 8),
                Tag(0xFFFE, 0xE000) => {
                    let body = p + 8;
                    if len == UNDEF {
                        p = self.elements(body, stop, depth, true)?;
                    } else {
                        let len = len as usize;
                        if len > stop.saturating_sub(body) {
                            return err(format!(
                                "sequence item declares {len} bytes but only {} remain",
                                stop.saturating_sub(body)
                            ));
                        }
                        self.elements(body, body + len, depth, false)?;
                        p = body + len;
                    }
                }
                _ => return err(format!("unexpected {tag} inside a sequence")),
            }
        }
        match defined_end {
            Some(e) => Ok(e),
            None => err("sequence without delimiter"),
        }
    }

    fn fragments(&self, mut p: usize, end: usize) -> R<usize> {
        loop {
            let (tag, _, len, _) = self.header(p)?;
            match tag {
                Tag(0xFFFE, 0xE0DD) => return Ok(p + 8),
                Tag(0xFFFE, 0xE000) => {
                    let len = len as usize;
                    if len == UNDEF as usize || len > end.saturating_sub(p + 8) {
                        return err("pixel data fragment runs past the end of the file");
                    }
                    p += 8 + len;
                }
                _ => return err(format!("unexpected {tag} in encapsulated pixel data")),
            }
        }
    }
}

/// Find the data set and check every declared length. Returns the layout and, for deflated
/// files, the inflated data set.
pub fn check(d: &[u8]) -> R<(Layout, Option<Vec<u8>>)> {
    let (mut p, has_meta) = if d.len() >= 132 && &d[128..132] == b"DICM" {
        (132, true)
    } else if d.len() >= 4 && &d[0..4] == b"DICM" {
        (4, true)
    } else {
        (0, false)
    };
    let mut ts = "1.2.840.10008.1.2".to_string();
    if has_meta {
        let w = Walker {
            d,
            enc: Enc {
                explicit: true,
                big: false,
            },
        };
        // dicom-rs reads (0002,0000) first and then elements until that many bytes are consumed,
        // whatever their group: the data set starts exactly there (a fuzzed file whose meta
        // group held a non-0002 element had this check inflate the wrong bytes)
        let (tag, _, len, hsz) = w.header(p)?;
        if tag != Tag(0x0002, 0x0000) || len != 4 {
            return err("file meta group does not start with its group length (0002,0000)");
        }
        let group_len = w.u32(p + hsz)? as usize;
        p += hsz + 4;
        let meta_end = p
            .checked_add(group_len)
            .filter(|&e| e <= d.len())
            .ok_or_else(|| PreflightError("file meta group length runs past the end".into()))?;
        while p < meta_end {
            let (tag, _, len, hsz) = w.header(p)?;
            let body = p + hsz;
            let len = len as usize;
            if len == UNDEF as usize || len > d.len().saturating_sub(body) {
                return err(format!("file meta element {tag} has an impossible length"));
            }
            if tag == Tag(0x0002, 0x0010) {
                ts = String::from_utf8_lossy(&d[body..body + len])
                    .trim_end_matches(['\0', ' '])
                    .to_string();
            }
            p = body + len;
        }
    } else if d.len() < 8 {
        return err("file too short to be DICOM");
    } else {
        // no meta: accept only something that looks like an implicit-VR data set
        let g = u16::from_le_bytes([d[0], d[1]]);
        if !(0x0002..=0x0010).contains(&g) && g != 0x0008 {
            return err("no DICM header and no recognisable data set");
        }
    }
    let layout = Layout {
        dataset_start: p,
        transfer_syntax: ts.clone(),
        has_meta,
    };
    let (enc, inflated) = match ts.as_str() {
        "1.2.840.10008.1.2" => (
            Enc {
                explicit: false,
                big: false,
            },
            None,
        ),
        "1.2.840.10008.1.2.2" => (
            Enc {
                explicit: true,
                big: true,
            },
            None,
        ),
        "1.2.840.10008.1.2.1.99" => {
            use std::io::Read;
            let mut out = Vec::new();
            let mut dec = flate2::read::DeflateDecoder::new(&d[p..]).take(MAX_INFLATED as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| PreflightError(format!("deflated data set: {e}")))?;
            if out.len() > MAX_INFLATED {
                return err("deflated data set inflates beyond 1 GiB");
            }
            (
                Enc {
                    explicit: true,
                    big: false,
                },
                Some(out),
            )
        }
        _ => (
            Enc {
                explicit: true,
                big: false,
            },
            None,
        ),
    };
    match &inflated {
        Some(buf) => {
            let w = Walker { d: buf, enc };
            w.elements(0, buf.len(), 0, false)?;
        }
        None => {
            let w = Walker { d, enc };
            w.elements(p, d.len(), 0, false)?;
        }
    }
    Ok((layout, inflated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_le(elems: &[(u16, u16, &[u8; 2], Vec<u8>)]) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        v.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        // (0002,0000) UL 4: the meta group length (the TS element: 8-byte header + value)
        v.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0]);
        v.extend_from_slice(&(8 + ts.len() as u32).to_le_bytes());
        v.extend_from_slice(&[2, 0, 0x10, 0, b'U', b'I']);
        v.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        v.extend_from_slice(ts);
        for (g, e, vr, val) in elems {
            v.extend_from_slice(&g.to_le_bytes());
            v.extend_from_slice(&e.to_le_bytes());
            v.extend_from_slice(*vr);
            if long_vr(*vr) {
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(&(val.len() as u32).to_le_bytes());
            } else {
                v.extend_from_slice(&(val.len() as u16).to_le_bytes());
            }
            v.extend_from_slice(val);
        }
        v
    }

    #[test]
    fn accepts_well_formed() {
        let f = explicit_le(&[
            (0x0010, 0x0020, b"LO", b"ID1 ".to_vec()),
            (0x7FE0, 0x0010, b"OW", vec![0; 8]),
        ]);
        let (l, _) = check(&f).unwrap();
        assert_eq!(l.transfer_syntax, "1.2.840.10008.1.2.1");
    }

    #[test]
    fn rejects_lying_length() {
        let mut f = explicit_le(&[(0x7FE0, 0x0010, b"OW", vec![0; 8])]);
        let n = f.len();
        // the OW length field sits 12 bytes before the value's end − 8
        f[n - 12..n - 8].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        let e = check(&f).unwrap_err();
        assert!(e.0.contains("declares"), "{e}");
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut body = Vec::new();
        for _ in 0..40 {
            body.extend_from_slice(&[
                0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let mut f = explicit_le(&[]);
        f.extend_from_slice(&body);
        assert!(check(&f).is_err());
    }
}
