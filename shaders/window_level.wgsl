// Greyscale display pipeline on the GPU — the same formulas as src/dicom/lut.rs:
// stored value → modality LUT (rescale or LUT) → VOI (LINEAR / LINEAR_EXACT / SIGMOID or a VOI
// LUT) → MONOCHROME1 / user inversion → [0, 1]. Pixel padding shows black. Stored values live in
// an R32Float texture uploaded once; changing the window only rewrites this uniform block.

struct Params {
    // image corners in clip space of the viewport: top-left, top-right, bottom-left, bottom-right
    corner_tl: vec2<f32>,
    corner_tr: vec2<f32>,
    corner_bl: vec2<f32>,
    corner_br: vec2<f32>,
    image_size: vec2<f32>,
    slope: f32,
    intercept: f32,
    center: f32,
    width: f32,
    // 0 LINEAR, 1 LINEAR_EXACT, 2 SIGMOID, 3 VOI LUT
    voi_function: u32,
    invert: u32,
    pad_lo: f32,
    pad_hi: f32,
    has_padding: u32,
    // modality LUT: used when mlut_len > 0
    mlut_first: f32,
    mlut_len: u32,
    vlut_first: f32,
    vlut_len: u32,
    vlut_max: f32,
    is_rgb: u32,
    interp: u32,
    opacity: f32,
    _pad: f32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var t_grey: texture_2d<f32>;
@group(0) @binding(2) var t_rgb: texture_2d<f32>;
@group(0) @binding(3) var t_mlut: texture_2d<f32>;
@group(0) @binding(4) var t_vlut: texture_2d<f32>;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    // image pixel coordinates (0..W, 0..H)
    @location(0) uv: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    var corners = array<vec2<f32>, 4>(p.corner_tl, p.corner_tr, p.corner_bl, p.corner_br);
    var uvs = array<vec2<f32>, 4>(vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 1.0));
    // two triangles: 0 1 2, 2 1 3
    var idx = array<u32, 6>(0u, 1u, 2u, 2u, 1u, 3u);
    let k = idx[i];
    var o: VsOut;
    o.pos = vec4<f32>(corners[k], 0.0, 1.0);
    o.uv = uvs[k] * p.image_size;
    return o;
}

fn lut_lookup(t: texture_2d<f32>, first: f32, len: u32, x: f32) -> f32 {
    let i = clamp(i32(floor(x) - first), 0, i32(len) - 1);
    return textureLoad(t, vec2<i32>(i, 0), 0).r;
}

fn stored_at(x: i32, y: i32) -> f32 {
    let sz = vec2<i32>(p.image_size);
    let c = clamp(vec2<i32>(x, y), vec2<i32>(0, 0), sz - vec2<i32>(1, 1));
    return textureLoad(t_grey, c, 0).r;
}

fn is_padding(s: f32) -> bool {
    return p.has_padding == 1u && s >= p.pad_lo && s <= p.pad_hi;
}

fn modality(s: f32) -> f32 {
    if (p.mlut_len > 0u) {
        return lut_lookup(t_mlut, p.mlut_first, p.mlut_len, s);
    }
    return s * p.slope + p.intercept;
}

fn voi(m: f32) -> f32 {
    let c = p.center;
    let w = p.width;
    if (p.voi_function == 0u) {
        let ww = max(w, 1.0);
        if (m <= c - 0.5 - (ww - 1.0) / 2.0) { return 0.0; }
        if (m > c - 0.5 + (ww - 1.0) / 2.0) { return 1.0; }
        return (m - (c - 0.5)) / (ww - 1.0) + 0.5;
    } else if (p.voi_function == 1u) {
        if (m <= c - w / 2.0) { return 0.0; }
        if (m > c + w / 2.0) { return 1.0; }
        return (m - c) / w + 0.5;
    } else if (p.voi_function == 2u) {
        return 1.0 / (1.0 + exp(-4.0 * (m - c) / w));
    }
    return lut_lookup(t_vlut, p.vlut_first, p.vlut_len, m) / p.vlut_max;
}

// displayed grey of one stored value, or -1 for padding
fn grey_of(s: f32) -> f32 {
    if (is_padding(s)) { return -1.0; }
    var y = clamp(voi(modality(s)), 0.0, 1.0);
    if (p.invert == 1u) { y = 1.0 - y; }
    return y;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    if (in.uv.x < 0.0 || in.uv.y < 0.0 || in.uv.x >= p.image_size.x || in.uv.y >= p.image_size.y) {
        discard;
    }
    if (p.is_rgb == 1u) {
        let c = textureLoad(t_rgb, vec2<i32>(floor(in.uv)), 0).rgb;
        var rgb = c;
        if (p.invert == 1u) { rgb = vec3<f32>(1.0) - c; }
        return vec4<f32>(rgb * p.opacity, p.opacity);
    }
    var g: f32;
    if (p.interp == 1u) {
        // bilinear over displayed greys of the four nearest stored values
        let f = in.uv - vec2<f32>(0.5, 0.5);
        let x0 = i32(floor(f.x));
        let y0 = i32(floor(f.y));
        let t = f - floor(f);
        let a = grey_of(stored_at(x0, y0));
        let b = grey_of(stored_at(x0 + 1, y0));
        let c = grey_of(stored_at(x0, y0 + 1));
        let d = grey_of(stored_at(x0 + 1, y0 + 1));
        g = mix(mix(max(a, 0.0), max(b, 0.0), t.x), mix(max(c, 0.0), max(d, 0.0), t.x), t.y);
    } else {
        g = max(grey_of(stored_at(i32(floor(in.uv.x)), i32(floor(in.uv.y)))), 0.0);
    }
    // 8-bit quantisation as in the CPU reference (round to the nearest level)
    let q = round(g * 255.0) / 255.0;
    return vec4<f32>(q * p.opacity, q * p.opacity, q * p.opacity, p.opacity);
}
