//! The side and bar panels: menu, status bar, study browser, DICOM tag browser.

use std::path::PathBuf;

use dicom_core::value::Value;
use egui::{Color32, RichText};

use super::app::{LofiApp, Tool};
use super::jobs::JobEvent;

struct PickedPaths(Vec<PathBuf>);

fn pick_in_background(app: &LofiApp, folder: bool) {
    let start = app.settings.last_dir.clone();
    app.jobs.spawn("file dialog", move |h| {
        let mut d = rfd::FileDialog::new();
        if let Some(s) = start {
            d = d.set_directory(s);
        }
        let picked = if folder {
            d.pick_folder().map(|p| vec![p])
        } else {
            d.add_filter("Images", &["dcm", "dicom", "png", "jpg", "jpeg", "DCM"])
                .add_filter("All files", &["*"])
                .pick_files()
        };
        if let Some(p) = picked {
            h.send(JobEvent::Other(Box::new(PickedPaths(p))));
        }
    });
}

/// Handle events of the file dialog job (called from the app's poll loop via `Other`).
pub fn take_picked(ev: &JobEvent) -> Option<Vec<PathBuf>> {
    match ev {
        JobEvent::Other(b) => b.downcast_ref::<PickedPaths>().map(|p| p.0.clone()),
        _ => None,
    }
}

/// The menu bar.
pub fn menu_ui(app: &mut LofiApp, ui: &mut egui::Ui) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open files…").clicked() {
                    pick_in_background(app, false);
                    ui.close();
                }
                if ui.button("Open folder…").clicked() {
                    pick_in_background(app, true);
                    ui.close();
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("View", |ui| {
                let a = app.active;
                let ppp = ui.ctx().pixels_per_point();
                let vp = &mut app.viewports[a];
                if ui.button("Fit (F)").clicked() {
                    vp.view.fit = true;
                }
                if ui.button("1:1 (Z)").clicked() {
                    vp.view.one_to_one(ppp);
                }
                if ui.button("Rotate 90° (R)").clicked() {
                    vp.view.rotate_cw();
                }
                if ui.button("Flip horizontal (H)").clicked() {
                    vp.view.flip_h = !vp.view.flip_h;
                }
                if ui.button("Flip vertical (V)").clicked() {
                    vp.view.flip_v = !vp.view.flip_v;
                }
                ui.checkbox(&mut vp.invert, "Invert (I)");
                if ui.button("Reset (Esc)").clicked() {
                    vp.reset();
                }
                ui.separator();
                ui.checkbox(&mut app.settings.two_up, "Two-up layout");
                ui.checkbox(&mut app.settings.sync, "Synchronise window and zoom");
                ui.checkbox(&mut app.settings.smooth, "Smooth when zoomed");
                ui.checkbox(&mut app.settings.show_browser, "Study browser");
                ui.checkbox(&mut app.settings.show_tags, "DICOM tags");
            });
            ui.menu_button("Window", |ui| {
                let presets = app.presets(app.active);
                for (i, (name, voi)) in presets.iter().enumerate() {
                    let label = if i < 9 {
                        format!("{}  ({})", name, i + 1)
                    } else {
                        name.clone()
                    };
                    if ui.button(label).clicked() {
                        app.viewports[app.active].voi = Some(*voi);
                    }
                }
                ui.separator();
                if ui.button("Save current window as preset").clicked() {
                    if let Some(crate::dicom::Voi::Window { center, width, .. }) =
                        app.viewports[app.active].current_voi()
                    {
                        let n = app.settings.presets.len() + 1;
                        app.settings.presets.push(super::app::Preset {
                            name: format!("Preset {n} (W {width:.0} C {center:.0})"),
                            center,
                            width,
                        });
                    }
                }
                if !app.settings.presets.is_empty() && ui.button("Clear saved presets").clicked() {
                    app.settings.presets.clear();
                }
            });
            ui.menu_button("Tools", |ui| {
                ui.radio_value(&mut app.tool, Tool::Pan, "Pan (drag)");
                ui.radio_value(&mut app.tool, Tool::Ruler, "Ruler (M, or Shift+drag)");
                ui.label("Right-drag: window/level · wheel: zoom about the cursor");
            });
        });
    });
}

/// The status bar.
pub fn status_ui(app: &mut LofiApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            let p = &app.probe;
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
            let vp = &mut app.viewports[app.active];
            if let Some(img) = vp.image.clone() {
                let n = img.frames.len();
                if n > 1 {
                    ui.separator();
                    let label = if vp.playing { "Pause" } else { "Play" };
                    if ui.button(label).on_hover_text("Cine (Space)").clicked() {
                        vp.playing = !vp.playing;
                    }
                    let mut f = vp.frame + 1;
                    if ui
                        .add(egui::Slider::new(&mut f, 1..=n).text("frame"))
                        .changed()
                    {
                        vp.frame = f - 1;
                    }
                }
            }
            for (job, (done, total)) in &app.progress {
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
            if let Some((m, err)) = &app.message {
                ui.separator();
                let c = if *err {
                    Color32::from_rgb(240, 120, 110)
                } else {
                    Color32::GRAY
                };
                ui.label(RichText::new(m).color(c));
            }
        });
    });
}

/// The study browser: patient → study → series → instances with thumbnails.
pub fn browser_ui(app: &mut LofiApp, ui: &mut egui::Ui) {
    ui.heading("Studies");
    if app.scan.patients.is_empty() {
        ui.label("Nothing open yet.");
    }
    let mut open: Option<PathBuf> = None;
    egui::ScrollArea::vertical().show(ui, |ui| {
        for p in &app.scan.patients {
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
                        let st = format!(
                            "{} {}",
                            s.date,
                            if s.description.is_empty() {
                                "Study"
                            } else {
                                &s.description
                            }
                        );
                        egui::CollapsingHeader::new(st)
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
                                        if !inst.is_image {
                                            ui.label(
                                                RichText::new(format!(
                                                    "  {} (not an image)",
                                                    inst.kind
                                                ))
                                                .weak(),
                                            );
                                            continue;
                                        }
                                        let current = app.viewports[app.active].path.as_ref()
                                            == Some(&inst.path);
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
                                        let resp =
                                            match app
                                                .thumbnails
                                                .get(&inst.path)
                                                .and_then(|t| t.as_ref())
                                            {
                                                // image above its caption: beside it, the narrow
                                                // panel would wrap the caption letter by letter
                                                Some(tex) => {
                                                    let r = ui
                                                        .add(
                                                            egui::Button::image(egui::Image::new(
                                                                (tex.id(), tex.size_vec2()),
                                                            ))
                                                            .selected(current),
                                                        )
                                                        .on_hover_text(&text);
                                                    ui.label(RichText::new(&text).small());
                                                    r
                                                }
                                                None => ui
                                                    .add(egui::Button::new(text).selected(current)),
                                            };
                                        if resp.clicked() {
                                            open = Some(inst.path.clone());
                                        }
                                    }
                                }
                            });
                    }
                });
        }
        if !app.scan.skipped.is_empty() {
            egui::CollapsingHeader::new(format!("{} skipped", app.scan.skipped.len())).show(
                ui,
                |ui| {
                    for s in &app.scan.skipped {
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
    if let Some(p) = open {
        let a = app.active;
        app.show_file(a, p);
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
pub fn tags_ui(app: &mut LofiApp, ui: &mut egui::Ui) {
    ui.heading("DICOM tags");
    ui.horizontal(|ui| {
        ui.label("Search");
        ui.text_edit_singleline(&mut app.tag_filter);
    });
    let vp = &app.viewports[app.active];
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
        elements_ui(ui, &file.obj, &app.tag_filter, 0);
    });
}
