//! A sequential-DCT JPEG decoder (ITU T.81 processes 1, 2 and 4: baseline and extended, Huffman
//! coding, 8- or 12-bit samples). DICOM's JPEG Extended transfer syntax (1.2.840.10008.1.2.4.51)
//! carries 12-bit CR/DX images that the pure-Rust `jpeg-decoder` and `zune-jpeg` reject; this
//! decoder fills that gap. Progressive, lossless and arithmetic-coded streams are reported as
//! unsupported (dicom-rs' decoders handle lossless).
//!
//! Every length and count is checked against the bytes actually present; malformed input gives
//! an error, never a panic or an allocation beyond the declared image size.

/// Decoding errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JpegError {
    /// The stream ended early or a segment is malformed.
    #[error("malformed JPEG: {0}")]
    Malformed(&'static str),
    /// A JPEG process this decoder does not implement.
    #[error("unsupported JPEG: {0}")]
    Unsupported(&'static str),
}

type R<T> = Result<T, JpegError>;

/// Decoded samples, interleaved per pixel, one `u16` per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Components (1 grey, 3 colour).
    pub components: usize,
    /// Sample precision in bits (8 or 12).
    pub precision: u8,
    /// `width × height × components` samples.
    pub data: Vec<u16>,
}

const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

const AAN: [f32; 8] = [
    1.0,
    1.387_039_8,
    1.306_563,
    1.175_875_6,
    1.0,
    0.785_694_96,
    0.541_196_1,
    0.275_899_38,
];

/// Largest image this decoder accepts (samples); larger declared sizes are refused before any
/// allocation.
pub const MAX_SAMPLES: usize = 1 << 28;

#[derive(Clone, Default)]
struct Huffman {
    // canonical decoding tables
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
    // 9-bit lookahead: (length, value), length 0 = slow path
    fast: Vec<(u8, u8)>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> R<Self> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total != values.len() || total > 256 {
            return Err(JpegError::Malformed("Huffman table size"));
        }
        let mut h = Huffman {
            values,
            fast: vec![(0, 0); 512],
            ..Default::default()
        };
        let mut code: i32 = 0;
        let mut k: i32 = 0;
        for l in 1..=16usize {
            let n = counts[l - 1] as i32;
            h.valptr[l] = k;
            h.mincode[l] = code;
            if n > 0 {
                for i in 0..n {
                    if l <= 9 {
                        let c = (code + i) as usize;
                        if c >= (1 << l) {
                            return Err(JpegError::Malformed("Huffman code overflow"));
                        }
                        let shift = 9 - l;
                        for j in 0..(1usize << shift) {
                            h.fast[(c << shift) | j] = (l as u8, h.values[(k + i) as usize]);
                        }
                    }
                }
                code += n;
                k += n;
                h.maxcode[l] = code - 1;
            } else {
                h.maxcode[l] = -1;
            }
            if code > (1 << l) {
                return Err(JpegError::Malformed("Huffman code overflow"));
            }
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        Ok(h)
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    marker_hit: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            n: 0,
            marker_hit: false,
        }
    }

    fn fill(&mut self) {
        while self.n <= 48 {
            let mut byte = 0u8;
            if !self.marker_hit && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    let next = self.data.get(self.pos + 1).copied().unwrap_or(0);
                    if next == 0x00 {
                        self.pos += 2;
                    } else {
                        // a marker: feed zeros from here on
                        self.marker_hit = true;
                        byte = 0;
                    }
                } else {
                    self.pos += 1;
                }
            }
            self.acc |= (byte as u64) << (56 - self.n);
            self.n += 8;
        }
    }

    fn peek(&mut self, k: u32) -> u32 {
        if self.n < k {
            self.fill();
        }
        (self.acc >> (64 - k)) as u32
    }

    fn skip(&mut self, k: u32) {
        self.acc <<= k;
        self.n -= k;
    }

    fn get(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        let v = self.peek(k);
        self.skip(k);
        v
    }

    fn decode(&mut self, h: &Huffman) -> R<u8> {
        let look = self.peek(9) as usize;
        let (l, v) = h.fast[look];
        if l > 0 {
            self.skip(l as u32);
            return Ok(v);
        }
        let mut code = self.get(9) as i32;
        let mut l = 9usize;
        while code > h.maxcode[l] {
            code = (code << 1) | self.get(1) as i32;
            l += 1;
            if l > 16 {
                return Err(JpegError::Malformed("bad Huffman code"));
            }
        }
        let idx = h.valptr[l] + code - h.mincode[l];
        h.values
            .get(idx as usize)
            .copied()
            .ok_or(JpegError::Malformed("bad Huffman code"))
    }

    fn receive_extend(&mut self, s: u8) -> R<i32> {
        if s == 0 {
            return Ok(0);
        }
        if s > 16 {
            return Err(JpegError::Malformed("coefficient magnitude"));
        }
        let v = self.get(s as u32) as i32;
        Ok(if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        })
    }

    /// Discard buffered bits and consume an RSTn marker.
    fn restart(&mut self) -> R<()> {
        self.acc = 0;
        self.n = 0;
        self.marker_hit = false;
        // skip fill bytes up to the marker
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            self.pos += 1;
        }
        Err(JpegError::Malformed("missing restart marker"))
    }
}

#[derive(Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    // block grid of this component
    bw: usize,
    bh: usize,
    coefs: Vec<i32>,
    dc_table: usize,
    ac_table: usize,
    pred: i32,
}

fn u16be(d: &[u8], p: usize) -> R<usize> {
    match (d.get(p), d.get(p + 1)) {
        (Some(a), Some(b)) => Ok(((*a as usize) << 8) | *b as usize),
        _ => Err(JpegError::Malformed("truncated segment")),
    }
}

/// Decode a JPEG stream.
pub fn decode(data: &[u8]) -> R<JpegImage> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(JpegError::Malformed("no SOI marker"));
    }
    let mut pos = 2;
    let mut qt: [Option<[f32; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut comps: Vec<Component> = Vec::new();
    let (mut width, mut height, mut precision) = (0usize, 0usize, 8u8);
    let (mut hmax, mut vmax) = (1usize, 1usize);
    let mut restart_interval = 0usize;
    let mut frame_seen = false;
    loop {
        // find the next marker
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            break;
        };
        pos += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => break,
            _ => {}
        }
        let len = u16be(data, pos)?;
        if len < 2 || pos + len > data.len() {
            return Err(JpegError::Malformed("segment length"));
        }
        let seg = &data[pos + 2..pos + len];
        match marker {
            0xDB => {
                let mut i = 0;
                while i < seg.len() {
                    let pq = seg[i] >> 4;
                    let tq = (seg[i] & 15) as usize;
                    i += 1;
                    if tq > 3 {
                        return Err(JpegError::Malformed("quantisation table id"));
                    }
                    let mut t = [0f32; 64];
                    for z in ZIGZAG.iter() {
                        let v = if pq == 0 {
                            let v = *seg.get(i).ok_or(JpegError::Malformed("DQT"))? as f32;
                            i += 1;
                            v
                        } else {
                            let v = u16be(seg, i)? as f32;
                            i += 2;
                            v
                        };
                        t[*z] = v * AAN[z / 8] * AAN[z % 8];
                    }
                    qt[tq] = Some(t);
                }
            }
            0xC4 => {
                let mut i = 0;
                while i < seg.len() {
                    let tc = seg[i] >> 4;
                    let th = (seg[i] & 15) as usize;
                    if tc > 1 || th > 3 || i + 17 > seg.len() {
                        return Err(JpegError::Malformed("DHT"));
                    }
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(&seg[i + 1..i + 17]);
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    i += 17;
                    if i + n > seg.len() {
                        return Err(JpegError::Malformed("DHT"));
                    }
                    let h = Huffman::new(&counts, seg[i..i + n].to_vec())?;
                    i += n;
                    if tc == 0 {
                        dc[th] = Some(h);
                    } else {
                        ac[th] = Some(h);
                    }
                }
            }
            0xDD => restart_interval = u16be(seg, 0)?,
            0xC0 | 0xC1 => {
                if seg.len() < 6 {
                    return Err(JpegError::Malformed("SOF"));
                }
                precision = seg[0];
                if precision != 8 && precision != 12 {
                    return Err(JpegError::Unsupported(
                        "sample precision other than 8 or 12",
                    ));
                }
                height = u16be(seg, 1)?;
                width = u16be(seg, 3)?;
                let nf = seg[5] as usize;
                if width == 0 || height == 0 {
                    return Err(JpegError::Unsupported("height defined by DNL"));
                }
                if nf == 0 || nf > 4 || seg.len() < 6 + 3 * nf {
                    return Err(JpegError::Malformed("SOF components"));
                }
                if width.saturating_mul(height).saturating_mul(nf) > MAX_SAMPLES {
                    return Err(JpegError::Malformed("image too large"));
                }
                for c in 0..nf {
                    let b = &seg[6 + 3 * c..9 + 3 * c];
                    let (h, v) = ((b[1] >> 4) as usize, (b[1] & 15) as usize);
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) || b[2] > 3 {
                        return Err(JpegError::Malformed("sampling factors"));
                    }
                    comps.push(Component {
                        id: b[0],
                        h,
                        v,
                        tq: b[2] as usize,
                        bw: 0,
                        bh: 0,
                        coefs: Vec::new(),
                        dc_table: 0,
                        ac_table: 0,
                        pred: 0,
                    });
                }
                hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
                vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
                let mcux = width.div_ceil(8 * hmax);
                let mcuy = height.div_ceil(8 * vmax);
                for c in comps.iter_mut() {
                    c.bw = mcux * c.h;
                    c.bh = mcuy * c.v;
                    c.coefs = vec![0; c.bw * c.bh * 64];
                }
                frame_seen = true;
            }
            0xC2 | 0xC6 | 0xCA | 0xCE => return Err(JpegError::Unsupported("progressive JPEG")),
            0xC3 | 0xC7 | 0xCB | 0xCF => return Err(JpegError::Unsupported("lossless JPEG")),
            0xC5 | 0xC9 | 0xCD => return Err(JpegError::Unsupported("arithmetic coding")),
            0xDA => {
                if !frame_seen {
                    return Err(JpegError::Malformed("scan before frame header"));
                }
                let ns = *seg.first().ok_or(JpegError::Malformed("SOS"))? as usize;
                if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
                    return Err(JpegError::Malformed("SOS"));
                }
                let mut scan = Vec::with_capacity(ns);
                for k in 0..ns {
                    let cid = seg[1 + 2 * k];
                    let t = seg[2 + 2 * k];
                    let ci = comps
                        .iter()
                        .position(|c| c.id == cid)
                        .ok_or(JpegError::Malformed("scan component"))?;
                    comps[ci].dc_table = (t >> 4) as usize & 3;
                    comps[ci].ac_table = (t & 15) as usize & 3;
                    scan.push(ci);
                }
                pos += len;
                pos = decode_scan(
                    data,
                    pos,
                    &mut comps,
                    &scan,
                    &dc,
                    &ac,
                    restart_interval,
                    (width, height, hmax, vmax),
                )?;
                continue;
            }
            _ => {}
        }
        pos += len;
    }
    if !frame_seen {
        return Err(JpegError::Malformed("no frame header"));
    }
    // dequantise + IDCT + level shift, then upsample to full resolution
    let maxv = ((1u32 << precision) - 1) as f32;
    let shift = (1u32 << (precision - 1)) as f32;
    let nc = comps.len();
    let mut out = vec![0u16; width * height * nc];
    let mut block = [0f32; 64];
    for (ci, c) in comps.iter().enumerate() {
        let q = qt[c.tq].ok_or(JpegError::Malformed("missing quantisation table"))?;
        let pw = c.bw * 8;
        let mut plane = vec![0u16; pw * c.bh * 8];
        for by in 0..c.bh {
            for bx in 0..c.bw {
                let co = &c.coefs[(by * c.bw + bx) * 64..][..64];
                for k in 0..64 {
                    block[k] = co[k] as f32 * q[k];
                }
                idct(&mut block);
                for y in 0..8 {
                    for x in 0..8 {
                        let v = (block[y * 8 + x] / 8.0 + shift).round().clamp(0.0, maxv);
                        plane[(by * 8 + y) * pw + bx * 8 + x] = v as u16;
                    }
                }
            }
        }
        let (sx, sy) = (hmax / c.h, vmax / c.v);
        for y in 0..height {
            let row = &plane[(y / sy) * pw..];
            let o = &mut out[y * width * nc..(y + 1) * width * nc];
            for x in 0..width {
                o[x * nc + ci] = row[x / sx];
            }
        }
    }
    Ok(JpegImage {
        width,
        height,
        components: nc,
        precision,
        data: out,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "scan decoding needs the whole frame state"
)]
fn decode_scan(
    data: &[u8],
    pos: usize,
    comps: &mut [Component],
    scan: &[usize],
    dc: &[Option<Huffman>; 4],
    ac: &[Option<Huffman>; 4],
    restart_interval: usize,
    (width, height, hmax, vmax): (usize, usize, usize, usize),
) -> R<usize> {
    let mut bits = Bits::new(data, pos);
    for &ci in scan {
        comps[ci].pred = 0;
        if dc[comps[ci].dc_table].is_none() || ac[comps[ci].ac_table].is_none() {
            return Err(JpegError::Malformed("missing Huffman table"));
        }
    }
    let single = scan.len() == 1;
    let (mcux, mcuy) = if single {
        let c = &comps[scan[0]];
        (
            (width * c.h).div_ceil(8 * hmax),
            (height * c.v).div_ceil(8 * vmax),
        )
    } else {
        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
    };
    let total = mcux * mcuy;
    let mut blockbuf = [0i32; 64];
    for m in 0..total {
        if restart_interval > 0 && m > 0 && m % restart_interval == 0 {
            bits.restart()?;
            for &ci in scan {
                comps[ci].pred = 0;
            }
        }
        let (mx, my) = (m % mcux, m / mcux);
        for &ci in scan {
            let (h, v) = if single {
                (1, 1)
            } else {
                (comps[ci].h, comps[ci].v)
            };
            for by in 0..v {
                for bx in 0..h {
                    let c = &mut comps[ci];
                    let dct = dc[c.dc_table]
                        .as_ref()
                        .ok_or(JpegError::Malformed("DC table"))?;
                    let act = ac[c.ac_table]
                        .as_ref()
                        .ok_or(JpegError::Malformed("AC table"))?;
                    blockbuf.fill(0);
                    let s = bits.decode(dct)?;
                    c.pred = c.pred.wrapping_add(bits.receive_extend(s)?);
                    blockbuf[0] = c.pred;
                    let mut k = 1;
                    while k < 64 {
                        let rs = bits.decode(act)?;
                        let (r, s) = ((rs >> 4) as usize, rs & 15);
                        if s == 0 {
                            if r == 15 {
                                k += 16;
                                continue;
                            }
                            break;
                        }
                        k += r;
                        if k > 63 {
                            return Err(JpegError::Malformed("AC run past block end"));
                        }
                        blockbuf[ZIGZAG[k]] = bits.receive_extend(s)?;
                        k += 1;
                    }
                    let (gx, gy) = (mx * h + bx, my * v + by);
                    if gx < c.bw && gy < c.bh {
                        c.coefs[(gy * c.bw + gx) * 64..][..64].copy_from_slice(&blockbuf);
                    }
                }
            }
        }
    }
    // continue after the entropy-coded data: the next marker that is not RSTn
    let mut p = bits.pos.min(data.len());
    while p + 1 < data.len() {
        if data[p] == 0xFF && data[p + 1] != 0 && !(0xD0..=0xD7).contains(&data[p + 1]) {
            return Ok(p);
        }
        p += 1;
    }
    Ok(data.len())
}

/// In-place 8×8 float AAN inverse DCT (libjpeg's jidctflt); the result is 8× the pixel value.
fn idct(b: &mut [f32; 64]) {
    fn pass(b: &mut [f32; 64], base: usize, step: usize) {
        let i = |k: usize| base + k * step;
        let (mut t0, mut t1, mut t2, mut t3) = (b[i(0)], b[i(2)], b[i(4)], b[i(6)]);
        let t10 = t0 + t2;
        let t11 = t0 - t2;
        let t13 = t1 + t3;
        let t12 = (t1 - t3) * std::f32::consts::SQRT_2 - t13;
        t0 = t10 + t13;
        t3 = t10 - t13;
        t1 = t11 + t12;
        t2 = t11 - t12;
        let (t4, t5, t6, t7) = (b[i(1)], b[i(3)], b[i(5)], b[i(7)]);
        let z13 = t6 + t5;
        let z10 = t6 - t5;
        let z11 = t4 + t7;
        let z12 = t4 - t7;
        let t7 = z11 + z13;
        let t11 = (z11 - z13) * std::f32::consts::SQRT_2;
        let z5 = (z10 + z12) * 1.847_759;
        let t10 = 1.082_392_2 * z12 - z5;
        let t12 = -2.613_126 * z10 + z5;
        let t6 = t12 - t7;
        let t5 = t11 - t6;
        let t4 = t10 + t5;
        b[i(0)] = t0 + t7;
        b[i(7)] = t0 - t7;
        b[i(1)] = t1 + t6;
        b[i(6)] = t1 - t6;
        b[i(2)] = t2 + t5;
        b[i(5)] = t2 - t5;
        b[i(4)] = t3 + t4;
        b[i(3)] = t3 - t4;
    }
    for c in 0..8 {
        pass(b, c, 8);
    }
    for r in 0..8 {
        pass(b, r * 8, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idct_of_dc_is_flat() {
        let mut b = [0f32; 64];
        b[0] = 80.0; // dequantised DC (AAN scale 1 at [0])
        idct(&mut b);
        for v in b {
            assert!((v / 8.0 - 10.0).abs() < 1e-4);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678;
        for n in 0..2000usize {
            let mut v = vec![0xFF, 0xD8];
            for _ in 0..(n % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push((x & 0xFF) as u8);
            }
            let _ = decode(&v);
        }
    }

    #[test]
    fn decodes_8bit_baseline_like_jpeg_decoder() {
        // an 8-bit baseline stream made by the `image` crate's encoder
        let img =
            image::GrayImage::from_fn(37, 23, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]));
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&img)
            .unwrap();
        let ours = decode(&buf).unwrap();
        let theirs = image::load_from_memory(&buf).unwrap().to_luma8();
        assert_eq!((ours.width, ours.height, ours.components), (37, 23, 1));
        let max = ours
            .data
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max <= 2, "max difference {max}");
    }
}
