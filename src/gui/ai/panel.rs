//! The AI panel: reads [`AiState`], edits only its own inputs ([`AiInputs`]) and pushes
//! commands for everything else.

use egui::{Color32, RichText, Vec2};

use super::{AiState, StoreStatus, PALETTE};
use crate::gui::command::AppCommand;
use crate::gui::export::ExportKind;
use crate::gui::state::PointerTool;
use crate::report::{AiFinding, Review};

/// Known finding phrases offered as completions (NIH box findings with side words).
pub const KNOWN_PHRASES: &[&str] = &[
    "cardiomegaly",
    "pleural effusion",
    "left pleural effusion",
    "right pleural effusion",
    "atelectasis",
    "left lower zone atelectasis",
    "right lower zone atelectasis",
    "infiltrate",
    "pneumonia",
    "pneumothorax",
    "left pneumothorax",
    "right pneumothorax",
    "mass",
    "nodule",
    "consolidation",
    "enlarged cardiac silhouette",
];

const ERROR: Color32 = Color32::from_rgb(240, 120, 110);

/// What the user types and sets in the panel.
pub struct AiInputs {
    /// The phrase being typed.
    pub phrase: String,
    /// Use in-context grounding.
    pub use_icl: bool,
    /// K for in-context grounding.
    pub shots: usize,
    /// Overlay opacity.
    pub opacity: f32,
}

impl Default for AiInputs {
    fn default() -> Self {
        Self {
            phrase: String::new(),
            use_icl: false,
            shots: 3,
            opacity: 0.9,
        }
    }
}

/// Completions for the typed text: history and known phrases that contain it.
pub fn completions(history: &[String], typed: &str) -> Vec<String> {
    let t = typed.trim().to_lowercase();
    if t.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for c in history
        .iter()
        .map(String::as_str)
        .chain(KNOWN_PHRASES.iter().copied())
    {
        if c.to_lowercase().contains(&t) && c != t && !out.iter().any(|o| o == c) {
            out.push(c.to_string());
        }
    }
    out.truncate(6);
    out
}

/// The AI panel for the image with results key `key`.
pub fn panel_ui(
    ui: &mut egui::Ui,
    ai: &AiState,
    inputs: &mut AiInputs,
    key: Option<&str>,
    tool: PointerTool,
    cmds: &mut Vec<AppCommand>,
) {
    header_ui(ui, ai, cmds);
    query_ui(ui, ai, inputs, tool, cmds);
    ui.separator();
    let Some(key) = key else {
        ui.label("No image.");
        return;
    };
    if let Some(results) = ai.results.get(key) {
        egui::ScrollArea::vertical()
            .id_salt("ai-results")
            .max_height(300.0)
            .show(ui, |ui| {
                for (fi, f) in results.findings.iter().enumerate() {
                    finding_ui(ui, fi, f, ai.selected, cmds);
                }
            });
        if !results.findings.is_empty() {
            ui.horizontal_wrapped(|ui| {
                ui.label("Export:");
                for (label, kind) in [
                    ("JSON", ExportKind::Json),
                    ("PNG", ExportKind::Png),
                    ("DICOM SR", ExportKind::Sr),
                ] {
                    if ui.button(label).clicked() {
                        cmds.push(AppCommand::ExportDialog(kind));
                    }
                }
                if ui
                    .button("Send SR to PACS")
                    .on_hover_text("Send these findings as a DICOM Structured Report to the selected archive node (File → PACS)")
                    .clicked()
                {
                    cmds.push(AppCommand::PacsSendSr);
                }
                if ui.button("Clear").clicked() {
                    cmds.push(AppCommand::ClearFindings);
                }
            });
        }
    }
    used_cases_ui(ui, ai);
}

fn header_ui(ui: &mut egui::Ui, ai: &AiState, cmds: &mut Vec<AppCommand>) {
    ui.heading("AI findings");
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("Model: {}", ai.model_status)).strong());
        if ui
            .small_button("Open model…")
            .on_hover_text("Load another model folder")
            .clicked()
        {
            cmds.push(AppCommand::OpenModelDialog);
        }
    });
    if let StoreStatus::Failed(e) = &ai.store_status {
        ui.label(RichText::new(format!("Prior-case store error: {e}")).color(ERROR));
    }
    ui.label(RichText::new(crate::report::disclaimer()).color(Color32::from_rgb(255, 150, 120)));
    ui.separator();
}

fn query_ui(
    ui: &mut egui::Ui,
    ai: &AiState,
    inputs: &mut AiInputs,
    tool: PointerTool,
    cmds: &mut Vec<AppCommand>,
) {
    let label = ui.label("Finding");
    let resp = ui
        .add(
            egui::TextEdit::singleline(&mut inputs.phrase)
                .hint_text("Type a finding, e.g. left pleural effusion")
                .desired_width(f32::INFINITY)
                .id_salt("ai-phrase"),
        )
        .labelled_by(label.id);
    if resp.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
        cmds.push(AppCommand::Ground(inputs.phrase.clone()));
    }
    let comps = completions(&ai.history, &inputs.phrase);
    if !comps.is_empty() && (resp.has_focus() || ai.running.is_none()) {
        ui.horizontal_wrapped(|ui| {
            for c in comps {
                if ui.small_button(&c).clicked() {
                    inputs.phrase = c.clone();
                    cmds.push(AppCommand::Ground(c));
                }
            }
        });
    }
    ui.horizontal_wrapped(|ui| {
        if ui.button("Ground").clicked() {
            cmds.push(AppCommand::Ground(inputs.phrase.clone()));
        }
        if ui
            .button("Find all")
            .on_hover_text("Every finding the model reports")
            .clicked()
        {
            cmds.push(AppCommand::FindAll);
        }
        let drawing = tool == PointerTool::DescribeRegion;
        if ui
            .selectable_label(drawing, "Describe region")
            .on_hover_text("Drag a box on the image (D)")
            .clicked()
        {
            cmds.push(AppCommand::SetTool(if drawing {
                PointerTool::Pan
            } else {
                PointerTool::DescribeRegion
            }));
        }
    });
    shots_ui(ui, ai, inputs);
    if let Some(r) = &ai.running {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(&r.what);
            if ui.button("Cancel").clicked() {
                cmds.push(AppCommand::CancelAi);
            }
        });
    }
    if let Some(m) = &ai.message {
        ui.label(RichText::new(m).color(ERROR));
    }
    ui.horizontal(|ui| {
        let mut show = ai.show_layer;
        if ui.checkbox(&mut show, "AI layer (A)").changed() {
            cmds.push(AppCommand::ToggleAiLayer);
        }
        ui.add(egui::Slider::new(&mut inputs.opacity, 0.1..=1.0).text("opacity"));
    });
}

fn shots_ui(ui: &mut egui::Ui, ai: &AiState, inputs: &mut AiInputs) {
    let annotated = ai.annotated();
    ui.horizontal(|ui| {
        let enabled = annotated > 0;
        let why = match &ai.store_status {
            StoreStatus::Opening => "The prior-case store is opening".to_string(),
            StoreStatus::Failed(e) => format!("The prior-case store failed: {e}"),
            StoreStatus::Open { .. } => "The prior-case store holds no annotated cases".into(),
        };
        ui.add_enabled(
            enabled,
            egui::Checkbox::new(&mut inputs.use_icl, "Learn from similar cases"),
        )
        .on_hover_text(format!("{annotated} annotated prior cases in the store"))
        .on_disabled_hover_text(why);
        ui.add_enabled(
            enabled && inputs.use_icl,
            egui::Slider::new(&mut inputs.shots, 1..=5).text("K"),
        );
    });
}

fn finding_ui(
    ui: &mut egui::Ui,
    fi: usize,
    f: &AiFinding,
    selected: Option<(usize, usize)>,
    cmds: &mut Vec<AppCommand>,
) {
    let col = PALETTE[fi % PALETTE.len()];
    ui.horizontal(|ui| {
        // a colour swatch (drawn: the bundled fonts have no square glyph)
        let (r, _) = ui.allocate_exact_size(Vec2::splat(10.0), egui::Sense::hover());
        ui.painter().rect_filled(r, 2.0, col);
        let shots = if f.shots > 0 {
            format!(" (K = {})", f.shots)
        } else {
            String::new()
        };
        ui.add(
            egui::Label::new(RichText::new(format!("{}{}", f.phrase, shots)).strong()).truncate(),
        );
    });
    if f.shots_requested > f.shots {
        ui.label(
            RichText::new(format!(
                "   only {} of {} similar cases found in the store",
                f.shots, f.shots_requested
            ))
            .weak(),
        );
    }
    if !f.present {
        let s = f.presence.unwrap_or(0.0);
        ui.label(RichText::new(format!("   not found (score {s:.2})")).strong());
    } else if f.boxes.is_empty() {
        ui.label(RichText::new("   no box found").weak());
    } else if let Some(s) = f.presence {
        ui.label(RichText::new(format!("   presence score {s:.2}")).weak());
    }
    for (bi, b) in f.boxes.iter().enumerate() {
        ui.horizontal_wrapped(|ui| {
            let text = format!("   box {} · score {:.2}", bi + 1, b.score);
            let place = format!(
                "{:.0},{:.0} to {:.0},{:.0} px: click to zoom to it",
                b.x1, b.y1, b.x2, b.y2
            );
            if ui
                .selectable_label(selected == Some((fi, bi)), text)
                .on_hover_text(place)
                .clicked()
            {
                cmds.push(AppCommand::ZoomTo(fi, bi));
            }
            for (label, state) in [("accept", Review::Accepted), ("reject", Review::Rejected)] {
                if ui.selectable_label(b.review == state, label).clicked() {
                    let next = if b.review == state {
                        Review::Pending
                    } else {
                        state
                    };
                    cmds.push(AppCommand::Review(fi, bi, next));
                }
            }
        });
    }
}

fn used_cases_ui(ui: &mut egui::Ui, ai: &AiState) {
    if ai.used.is_empty() {
        return;
    }
    ui.separator();
    ui.label(RichText::new("Similar cases used as examples").strong());
    ui.horizontal_wrapped(|ui| {
        for u in &ai.used {
            ui.vertical(|ui| {
                // a fixed column per case: its labels elide instead of widening the panel
                ui.set_max_width(84.0);
                if let Some(t) = &u.thumb {
                    ui.add(egui::Image::new((t.id(), Vec2::new(72.0, 72.0))));
                }
                let text = format!("{:.2} {}", u.score, u.record.meta.labels.join(", "));
                ui.add(egui::Label::new(RichText::new(&text).small()).truncate())
                    .on_hover_text(text);
            });
        }
    });
}
