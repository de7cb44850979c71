//! The AI layer over the image: each finding's boxes in its colour, and labels placed inside the
//! viewport, apart from each other, on a dark backing so they stay legible.

use egui::{Color32, Pos2, Rect, Vec2};

use super::PALETTE;
use crate::gui::view::ViewTransform;
use crate::report::{AiBox, AiResults, Review, Source};

/// Screen polygon of an image-space box (follows rotation and flips).
pub fn box_on_screen(view: &ViewTransform, rect: Rect, size: Vec2, b: &AiBox) -> [Pos2; 4] {
    let f = |x: f32, y: f32| view.image_to_screen(rect, size, Pos2::new(x, y));
    [f(b.x1, b.y1), f(b.x2, b.y1), f(b.x2, b.y2), f(b.x1, b.y2)]
}

const GAP: f32 = 3.0;

fn clamp_into(r: Rect, bounds: Rect) -> Rect {
    let x = r.left().clamp(
        bounds.left() + GAP,
        (bounds.right() - r.width() - GAP).max(bounds.left() + GAP),
    );
    let y = r.top().clamp(
        bounds.top() + GAP,
        (bounds.bottom() - r.height() - GAP).max(bounds.top() + GAP),
    );
    Rect::from_min_size(Pos2::new(x, y), r.size())
}

/// Where to put each label: `labels[i]` is (the screen rectangle of box i, the size of its
/// label). Every label lies inside `bounds` (when it fits) and overlaps no other: it goes above
/// its box, else inside the box's top edge, else below it, else as near as free space allows.
pub fn place_labels(labels: &[(Rect, Vec2)], bounds: Rect) -> Vec<Rect> {
    let mut placed: Vec<Rect> = Vec::with_capacity(labels.len());
    let free =
        |r: &Rect, placed: &[Rect]| placed.iter().all(|p| !p.expand(GAP / 2.0).intersects(*r));
    for &(anchor, size) in labels {
        let candidates = [
            Pos2::new(anchor.left(), anchor.top() - size.y - GAP),
            Pos2::new(anchor.left() + GAP, anchor.top() + GAP),
            Pos2::new(anchor.left(), anchor.bottom() + GAP),
        ]
        .map(|p| clamp_into(Rect::from_min_size(p, size), bounds));
        let mut chosen = candidates.iter().copied().find(|r| free(r, &placed));
        if chosen.is_none() {
            // slide the first choice down, then up, a line at a time, until it is free
            let step = size.y + GAP;
            let first = candidates[0];
            let max_steps = (bounds.height() / step.max(1.0)).ceil() as i32 + 1;
            'search: for k in 1..=max_steps {
                for dir in [1.0, -1.0] {
                    let r = first.translate(Vec2::new(0.0, dir * k as f32 * step));
                    if r.top() >= bounds.top() && r.bottom() <= bounds.bottom() && free(&r, &placed)
                    {
                        chosen = Some(r);
                        break 'search;
                    }
                }
            }
        }
        placed.push(chosen.unwrap_or(candidates[0]));
    }
    placed
}

fn label_text(phrase: &str, source: Source, b: &AiBox) -> String {
    let mark = match b.review {
        Review::Accepted => " (accepted)",
        Review::Rejected => " (rejected)",
        Review::Pending => "",
    };
    if source == Source::Described {
        format!("{phrase}{mark}")
    } else {
        format!("{phrase} {:.2}{mark}", b.score)
    }
}

/// Draw the AI layer of an image.
pub fn overlay(
    painter: &egui::Painter,
    view: &ViewTransform,
    rect: Rect,
    size: Vec2,
    r: &AiResults,
    opacity: f32,
    selected: Option<(usize, usize)>,
) {
    let max_label_width = (rect.width() * 0.6).max(60.0);
    let mut galleys = Vec::new();
    for (fi, f) in r.findings.iter().enumerate() {
        let base = PALETTE[fi % PALETTE.len()];
        for (bi, b) in f.boxes.iter().enumerate() {
            let alpha = if b.review == Review::Rejected {
                0.3 * opacity
            } else {
                opacity
            };
            let col = base.gamma_multiply(alpha);
            let pts = box_on_screen(view, rect, size, b);
            let width = if selected == Some((fi, bi)) { 3.5 } else { 2.0 };
            let mut closed = pts.to_vec();
            closed.push(pts[0]);
            painter.add(egui::Shape::line(closed, egui::Stroke::new(width, col)));
            let mut job = egui::text::LayoutJob::simple_singleline(
                label_text(&f.phrase, f.source, b),
                egui::FontId::proportional(13.0),
                col,
            );
            job.wrap = egui::text::TextWrapping::truncate_at_width(max_label_width);
            let galley = painter.layout_job(job);
            galleys.push((Rect::from_points(&pts), galley, alpha));
        }
    }
    let specs: Vec<(Rect, Vec2)> = galleys.iter().map(|(a, g, _)| (*a, g.size())).collect();
    let spots = place_labels(&specs, rect);
    for ((_, galley, alpha), spot) in galleys.into_iter().zip(spots) {
        painter.rect_filled(
            spot.expand(2.0),
            2.0,
            Color32::from_black_alpha((170.0 * alpha.max(0.5)) as u8),
        );
        painter.galley(spot.min, galley, Color32::WHITE);
    }
    if !r.findings.iter().all(|f| f.boxes.is_empty()) {
        let text = format!("{} · {}", crate::report::disclaimer(), r.model);
        painter.text(
            rect.right_bottom() + Vec2::new(-8.0, -8.0),
            egui::Align2::RIGHT_BOTTOM,
            text,
            egui::FontId::proportional(12.0),
            Color32::from_rgb(255, 150, 120),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x1: f32, y1: f32, x2: f32, y2: f32) -> Rect {
        Rect::from_min_max(Pos2::new(x1, y1), Pos2::new(x2, y2))
    }

    #[test]
    fn labels_of_overlapping_boxes_near_the_edge_stay_inside_and_apart() {
        let bounds = r(0.0, 0.0, 800.0, 600.0);
        // two boxes overlapping almost fully, at the right edge; the labels are wider than the
        // space to the right of the boxes' left edge
        let labels = [
            (r(700.0, 100.0, 795.0, 300.0), Vec2::new(220.0, 16.0)),
            (r(705.0, 105.0, 798.0, 310.0), Vec2::new(260.0, 16.0)),
            (r(0.0, 0.0, 100.0, 100.0), Vec2::new(150.0, 16.0)),
        ];
        let spots = place_labels(&labels, bounds);
        for s in &spots {
            assert!(bounds.contains_rect(*s), "{s:?} outside {bounds:?}");
        }
        for i in 0..spots.len() {
            for j in i + 1..spots.len() {
                assert!(
                    !spots[i].intersects(spots[j]),
                    "{i} and {j} overlap: {spots:?}"
                );
            }
        }
        // the box at the top-left corner: no room above, so its label sits inside the viewport
        assert!(spots[2].top() >= 0.0);
    }

    #[test]
    fn a_lone_label_sits_just_above_its_box() {
        let bounds = r(0.0, 0.0, 800.0, 600.0);
        let spots = place_labels(
            &[(r(100.0, 200.0, 300.0, 400.0), Vec2::new(80.0, 16.0))],
            bounds,
        );
        assert_eq!(spots[0].left(), 100.0);
        assert!(spots[0].bottom() <= 200.0 && spots[0].bottom() > 190.0);
    }
}
