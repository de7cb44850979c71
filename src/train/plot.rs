//! The loss-curve PNG drawn at the end of a run (training loss, smoothed, in blue; validation
//! loss in red), with a tiny built-in digit font for the axis labels.

use std::path::Path;

use image::{Rgb, RgbImage};

const W: u32 = 900;
const H: u32 = 420;
const L: u32 = 60;
const R: u32 = 20;
const T: u32 = 20;
const B: u32 = 40;

// 3×5 glyphs for 0-9 . - e
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        'e' => [0, 0b111, 0b101, 0b110, 0b111],
        _ => return None,
    })
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, col: Rgb<u8>) {
    let scale = 2;
    for (i, c) in s.chars().enumerate() {
        let Some(g) = glyph(c) else { continue };
        for (row, bits) in g.iter().enumerate() {
            for bit in 0..3 {
                if bits & (0b100 >> bit) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as u32 * 4 + bit) * scale + dx;
                            let py = y + row as u32 * scale + dy;
                            if px < W && py < H {
                                img.put_pixel(px, py, col);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), col: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, col);
        }
    }
}

/// Read `metrics.jsonl` and draw the curve.
pub fn loss_curve(metrics: &Path, out: &Path) -> Result<(), String> {
    let text_in = std::fs::read_to_string(metrics).map_err(|e| e.to_string())?;
    let mut train: Vec<(f64, f64)> = Vec::new();
    let mut val: Vec<(f64, f64)> = Vec::new();
    for l in text_in.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(x) = v.get("loss").and_then(|s| s.as_f64()) {
            train.push((step, x));
        } else if let Some(x) = v.pointer("/val/loss").and_then(|s| s.as_f64()) {
            val.push((step, x));
        }
    }
    if train.is_empty() {
        return Err("no training steps in metrics".into());
    }
    // a resumed run appends: keep the last value per step
    train.sort_by(|a, b| a.0.total_cmp(&b.0));
    train.dedup_by(|a, b| a.0 == b.0);
    let k = (train.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = (0..train.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            let w = &train[lo..=i];
            (
                train[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    let xmax = train.last().map_or(1.0, |p| p.0).max(1.0);
    let all = smooth
        .iter()
        .chain(val.iter())
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (mut ymin, mut ymax) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    ymin = ymin.min(0.0).max(ymin - 0.05 * (ymax - ymin));
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = ((W - L - R) as f64, (H - T - B) as f64);
    let map = |(x, y): (f64, f64)| {
        (
            (L as f64 + x / xmax * pw) as f32,
            (T as f64 + (1.0 - (y - ymin) / (ymax - ymin)) * ph) as f32,
        )
    };
    let grey = Rgb([200, 200, 200]);
    let black = Rgb([0, 0, 0]);
    for i in 0..=4 {
        let y = ymin + (ymax - ymin) * i as f64 / 4.0;
        let (_, py) = map((0.0, y));
        line(&mut img, (L as f32, py), ((W - R) as f32, py), grey);
        text(&mut img, 4, py as u32 - 4, &format!("{y:.2}"), black);
        let x = xmax * i as f64 / 4.0;
        let (px, _) = map((x, ymin));
        text(
            &mut img,
            px as u32,
            H - B + 8,
            &format!("{}", x as u64),
            black,
        );
    }
    line(
        &mut img,
        (L as f32, T as f32),
        (L as f32, (H - B) as f32),
        black,
    );
    line(
        &mut img,
        (L as f32, (H - B) as f32),
        ((W - R) as f32, (H - B) as f32),
        black,
    );
    for w in smooth.windows(2) {
        line(&mut img, map(w[0]), map(w[1]), Rgb([30, 90, 200]));
    }
    for w in val.windows(2) {
        line(&mut img, map(w[0]), map(w[1]), Rgb([210, 40, 40]));
    }
    for p in &val {
        let (x, y) = map(*p);
        for d in -2i32..=2 {
            line(
                &mut img,
                (x - 2.0, y + d as f32),
                (x + 2.0, y + d as f32),
                Rgb([210, 40, 40]),
            );
        }
    }
    img.save(out).map_err(|e| e.to_string())
}
