//! The side and bar panels: menu, status bar, study browser, DICOM tag browser. Each reads the
//! state and pushes [`AppCommand`]s; none changes the app itself.

use std::path::PathBuf;

use dicom_core::value::Value;
use egui::{Color32, RichText};

use super::command::AppCommand;
use super::state::{AppState, PointerTool};
use crate::dicom::study::Instance;

/// A checkbox over a copy of `value` that pushes `make(new)` when clicked.
fn toggle(
    ui: &mut egui::Ui,
    value: bool,
    text: &str,
    make: fn(bool) -> AppCommand,
    cmds: &mut Vec<AppCommand>,
) {
    let mut v = value;
    if ui.checkbox(&mut v, text).changed() {
        cmds.push(make(v));
    }
}

/// A menu button that pushes `c` when clicked.
fn item(ui: &mut egui::Ui, text: &str, c: AppCommand, cmds: &mut Vec<AppCommand>) {
    if ui.button(text).clicked() {
        cmds.push(c);
        ui.close();
    }
}

/// The menu bar.
pub fn menu_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| file_menu_ui(ui, state, cmds));
            ui.menu_button("View", |ui| view_menu_ui(ui, state, cmds));
            ui.menu_button("Window", |ui| window_menu_ui(ui, state, cmds));
            ui.menu_button("Tools", |ui| {
                for (tool, text) in [
                    (PointerTool::Pan, "Pan (drag)"),
                    (PointerTool::Ruler, "Ruler (M, or Shift+drag)"),
                    (PointerTool::DescribeRegion, "Describe a region (D)"),
                ] {
                    if ui.radio(state.tool == tool, text).clicked() {
                        cmds.push(AppCommand::SetTool(tool));
                    }
                }
                ui.label("Right-drag: window/level · wheel: zoom about the cursor");
            });
            ui.menu_button("Help", |ui| {
                item(ui, "Keys and mouse (F1)", AppCommand::ToggleHelp, cmds);
            });
        });
    });
}

fn file_menu_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    item(
        ui,
        "Open files… (Ctrl+O)",
        AppCommand::OpenDialog { folder: false },
        cmds,
    );
    item(
        ui,
        "Open folder…",
        AppCommand::OpenDialog { folder: true },
        cmds,
    );
    ui.menu_button("Recent studies", |ui| {
        if state.settings.recent.is_empty() {
            ui.label(RichText::new("Nothing opened yet").weak());
        }
        for p in &state.settings.recent {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            if ui
                .button(name)
                .on_hover_text(p.display().to_string())
                .clicked()
            {
                cmds.push(AppCommand::OpenPaths(vec![p.clone()]));
                ui.close();
            }
        }
    });
    ui.separator();
    item(
        ui,
        "PACS: search, retrieve, receive…",
        AppCommand::ShowPacs(!state.pacs.open),
        cmds,
    );
    ui.separator();
    item(ui, "Quit", AppCommand::Quit, cmds);
}

fn view_menu_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    let vp = &state.viewports[state.active];
    item(ui, "Fit (F)", AppCommand::Fit, cmds);
    item(ui, "1:1 (Z)", AppCommand::OneToOne, cmds);
    item(ui, "Rotate 90° (R)", AppCommand::RotateCw, cmds);
    item(ui, "Flip horizontal (H)", AppCommand::FlipHorizontal, cmds);
    item(ui, "Flip vertical (V)", AppCommand::FlipVertical, cmds);
    let mut inv = vp.invert;
    if ui.checkbox(&mut inv, "Invert (I)").changed() {
        cmds.push(AppCommand::ToggleInvert);
    }
    item(ui, "Reset (Esc)", AppCommand::Reset, cmds);
    ui.separator();
    let s = &state.settings;
    toggle(ui, s.two_up, "Two-up layout", AppCommand::SetTwoUp, cmds);
    toggle(
        ui,
        s.sync,
        "Synchronise window and zoom",
        AppCommand::SetSync,
        cmds,
    );
    toggle(
        ui,
        s.smooth,
        "Smooth when zoomed",
        AppCommand::SetSmooth,
        cmds,
    );
    toggle(
        ui,
        s.show_browser,
        "Study browser",
        AppCommand::ShowBrowser,
        cmds,
    );
    toggle(ui, s.show_ai, "AI panel", AppCommand::ShowAi, cmds);
    toggle(ui, s.show_tags, "DICOM tags", AppCommand::ShowTags, cmds);
}

fn window_menu_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    for (i, (name, _)) in state.presets(state.active).iter().enumerate() {
        let label = if i < 9 {
            format!("{}  ({})", name, i + 1)
        } else {
            name.clone()
        };
        item(ui, &label, AppCommand::ApplyPreset(i), cmds);
    }
    ui.separator();
    item(
        ui,
        "Save current window as preset",
        AppCommand::SavePreset,
        cmds,
    );
    if !state.settings.presets.is_empty() {
        item(ui, "Clear saved presets", AppCommand::ClearPresets, cmds);
    }
}

/// The status bar.
pub fn status_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            let p = &state.probe;
            if let Some((x, y)) = p.pixel {
                ui.monospace(format!("x {x} y {y} px"));
            }
            if let Some((xm, ym, det)) = p.mm {
                ui.separator();
                ui.monospace(format!(
                    "{xm:.1}, {ym:.1} mm{}",
                    if det { " (at detector)" } else { "" }
                ));
            }
            if let Some(s) = p.stored {
                ui.separator();
                ui.monospace(format!("stored {s}"));
            }
            if let Some(m) = p.modality {
                ui.monospace(format!("value {m:.1}"));
            }
            let vp = &state.viewports[state.active];
            let n = vp.image.as_ref().map_or(0, |i| i.frames.len());
            if n > 1 {
                ui.separator();
                let label = if vp.playing { "Pause" } else { "Play" };
                if ui.button(label).on_hover_text("Cine (Space)").clicked() {
                    cmds.push(AppCommand::TogglePlay);
                }
                let mut f = vp.frame + 1;
                if ui
                    .add(egui::Slider::new(&mut f, 1..=n).text("frame"))
                    .changed()
                {
                    cmds.push(AppCommand::SetFrame(f - 1));
                }
            }
            for (job, (done, total)) in &state.progress {
                ui.separator();
                let frac = if *total > 0 {
                    *done as f32 / *total as f32
                } else {
                    0.0
                };
                ui.add(
                    egui::ProgressBar::new(frac)
                        .desired_width(120.0)
                        .text(format!("{job} {done}/{total}")),
                );
            }
            if let Some(m) = &state.message {
                ui.separator();
                let c = if m.error {
                    Color32::from_rgb(240, 120, 110)
                } else {
                    Color32::GRAY
                };
                ui.label(RichText::new(&m.text).color(c));
            }
        });
    });
}

/// The study browser: patient → study → series → instances with thumbnails.
pub fn browser_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    ui.heading("Studies");
    if state.scan.patients.is_empty() {
        ui.label("Nothing open yet.");
    }
    egui::ScrollArea::vertical().show(ui, |ui| {
        for p in &state.scan.patients {
            let title = if p.name.is_empty() {
                p.id.clone()
            } else {
                format!("{} ({})", p.name, p.id)
            };
            egui::CollapsingHeader::new(title)
                .id_salt(("pat", &p.id))
                .default_open(true)
                .show(ui, |ui| {
                    for s in &p.studies {
                        let desc = if s.description.is_empty() {
                            "Study"
                        } else {
                            &s.description
                        };
                        egui::CollapsingHeader::new(format!("{} {desc}", s.date))
                            .id_salt(("st", &s.uid))
                            .default_open(true)
                            .show(ui, |ui| {
                                for se in &s.series {
                                    ui.label(
                                        RichText::new(format!(
                                            "Series {} {} {}",
                                            se.number.map(|n| n.to_string()).unwrap_or_default(),
                                            se.modality,
                                            se.description
                                        ))
                                        .small(),
                                    );
                                    for inst in &se.instances {
                                        instance_ui(ui, state, inst, cmds);
                                    }
                                }
                            });
                    }
                });
        }
        if !state.scan.skipped.is_empty() {
            egui::CollapsingHeader::new(format!("{} skipped", state.scan.skipped.len())).show(
                ui,
                |ui| {
                    for s in &state.scan.skipped {
                        ui.label(
                            RichText::new(format!("{}: {}", s.path.display(), s.reason))
                                .small()
                                .weak(),
                        );
                    }
                },
            );
        }
    });
}

fn instance_ui(ui: &mut egui::Ui, state: &AppState, inst: &Instance, cmds: &mut Vec<AppCommand>) {
    if !inst.is_image {
        ui.label(RichText::new(format!("  {} (not an image)", inst.kind)).weak());
        return;
    }
    let current = state.viewports[state.active].path.as_ref() == Some(&inst.path);
    let text = format!(
        "#{} {} {}×{}{}",
        inst.instance_number
            .map(|n| n.to_string())
            .unwrap_or_else(|| "–".into()),
        inst.view,
        inst.size.0,
        inst.size.1,
        if inst.frames > 1 {
            format!(" · {} frames", inst.frames)
        } else {
            String::new()
        }
    );
    let resp = match state.thumbnails.get(&inst.path).and_then(|t| t.as_ref()) {
        // image above its caption: beside it, the narrow panel would wrap the caption letter
        // by letter
        Some(tex) => {
            let r = ui
                .add(
                    egui::Button::image(egui::Image::new((tex.id(), tex.size_vec2())))
                        .selected(current),
                )
                .on_hover_text(&text);
            ui.label(RichText::new(&text).small());
            r
        }
        None => ui.add(egui::Button::new(text).selected(current)),
    };
    if resp.clicked() {
        cmds.push(AppCommand::ShowFile(
            state.active,
            PathBuf::from(&inst.path),
        ));
    }
}

fn value_text(
    v: &Value<dicom_object::InMemDicomObject, dicom_core::value::InMemFragment>,
) -> String {
    match v {
        Value::Primitive(p) => {
            let s = p.to_str();
            if s.len() > 120 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(120).map_or(s.len(), |(i, _)| i)]
                )
            } else {
                s.into_owned()
            }
        }
        Value::Sequence(s) => format!("{} item(s)", s.items().len()),
        Value::PixelSequence(s) => format!("{} fragment(s)", s.fragments().len()),
    }
}

fn elements_ui(
    ui: &mut egui::Ui,
    obj: &dicom_object::InMemDicomObject,
    filter: &str,
    depth: usize,
) {
    use dicom_core::dictionary::DataDictionary;
    for e in obj.iter() {
        let tag = e.header().tag;
        let name = dicom_dictionary_std::StandardDataDictionary
            .by_tag(tag)
            .map(|d| d.alias.to_string())
            .unwrap_or_else(|| "Private/unknown".into());
        let value = value_text(e.value());
        let line = format!("{tag} {} {name}: {value}", e.header().vr);
        let matches = filter.is_empty() || line.to_lowercase().contains(&filter.to_lowercase());
        if let Value::Sequence(seq) = e.value() {
            if matches || !filter.is_empty() {
                egui::CollapsingHeader::new(RichText::new(line).monospace().small())
                    .id_salt((tag.0, tag.1, depth, ui.next_auto_id()))
                    .default_open(!filter.is_empty())
                    .show(ui, |ui| {
                        for (i, item) in seq.items().iter().enumerate() {
                            ui.label(RichText::new(format!("item {}", i + 1)).small().weak());
                            elements_ui(ui, item, filter, depth + 1);
                        }
                    });
            }
        } else if matches {
            ui.label(RichText::new(line).monospace().small());
        }
    }
}

/// The DICOM tag browser with search.
pub fn tags_ui(ui: &mut egui::Ui, state: &AppState, filter: &mut String) {
    ui.heading("DICOM tags");
    ui.horizontal(|ui| {
        ui.label("Search");
        ui.text_edit_singleline(filter);
    });
    let vp = &state.viewports[state.active];
    let Some(img) = vp.image.as_ref() else {
        ui.label("No image.");
        return;
    };
    let Some(file) = img.dicom.as_ref() else {
        ui.label("Not a DICOM file (PNG/JPEG).");
        return;
    };
    egui::ScrollArea::both().show(ui, |ui| {
        let meta = file.obj.meta();
        ui.label(RichText::new(format!("Transfer syntax {}", meta.transfer_syntax())).small());
        elements_ui(ui, &file.obj, filter, 0);
    });
}
