//! The PACS window's widgets: nodes, search form, results table, retrieve progress, retrieved
//! studies and the listener. They read [`AppState`] and push [`AppCommand`]s.

use egui::RichText;

use super::ListenerSettings;
use crate::gui::command::AppCommand;
use crate::gui::state::AppState;
use crate::pacs::node::RetrieveMethod;
use crate::pacs::{self, Auth, Level, Node, Query};

/// What the user types in the PACS window.
#[derive(Default)]
pub struct PacsInputs {
    /// Search fields (StudyDate is built from the two date fields).
    pub query: Query,
    /// Study date from (YYYYMMDD).
    pub date_from: String,
    /// Study date to (YYYYMMDD).
    pub date_to: String,
    /// A node being edited: its index (None: a new one) and the draft.
    pub editing: Option<(Option<usize>, Node)>,
    /// The listener's settings being edited, with the allow-list as typed.
    pub listener: Option<(ListenerSettings, String)>,
}

impl PacsInputs {
    /// The query the form describes.
    pub fn to_query(&self) -> Query {
        let mut q = self.query.clone();
        let (f, t) = (self.date_from.trim(), self.date_to.trim());
        q.study_date = match (f.is_empty(), t.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("{f}-"),
            (true, false) => format!("-{t}"),
            (false, false) if f == t => f.to_string(),
            (false, false) => format!("{f}-{t}"),
        };
        q
    }
}

/// The PACS window (shown when `state.pacs.open`).
pub fn pacs_window_ui(
    ctx: &egui::Context,
    state: &AppState,
    inputs: &mut PacsInputs,
    cmds: &mut Vec<AppCommand>,
) {
    let mut open = state.pacs.open;
    egui::Window::new("PACS")
        .open(&mut open)
        .default_size([820.0, 420.0])
        .default_pos([240.0, 440.0])
        .resizable(true)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("pacs-scroll")
                .show(ui, |ui| {
                    nodes_ui(ui, state, inputs, cmds);
                    ui.separator();
                    search_ui(ui, state, inputs, cmds);
                    results_ui(ui, state, cmds);
                    retrieve_ui(ui, state, cmds);
                    ui.separator();
                    listener_ui(ui, state, inputs, cmds);
                    if let Some(m) = &state.pacs.message {
                        ui.separator();
                        ui.label(RichText::new(&m.text).color(if m.error {
                            ui.visuals().error_fg_color
                        } else {
                            ui.visuals().text_color()
                        }));
                    }
                });
        });
    if open != state.pacs.open {
        cmds.push(AppCommand::ShowPacs(open));
    }
}

fn nodes_ui(
    ui: &mut egui::Ui,
    state: &AppState,
    inputs: &mut PacsInputs,
    cmds: &mut Vec<AppCommand>,
) {
    let s = &state.settings;
    ui.horizontal(|ui| {
        ui.label("Archive:");
        let current = s
            .pacs_nodes
            .get(s.pacs_node)
            .map(|n| format!("{} ({})", n.name, n.address))
            .unwrap_or_else(|| "none — add one".into());
        egui::ComboBox::from_id_salt("pacs-node")
            .selected_text(current)
            .width(320.0)
            .show_ui(ui, |ui| {
                for (i, n) in s.pacs_nodes.iter().enumerate() {
                    if ui
                        .selectable_label(i == s.pacs_node, format!("{} ({})", n.name, n.address))
                        .clicked()
                    {
                        cmds.push(AppCommand::PacsSelectNode(i));
                    }
                }
            });
        let has = s.pacs_nodes.get(s.pacs_node).is_some();
        if ui.add_enabled(has, egui::Button::new("Echo")).clicked() {
            cmds.push(AppCommand::PacsEcho);
        }
        if ui.add_enabled(has, egui::Button::new("Edit")).clicked() {
            inputs.editing = s
                .pacs_nodes
                .get(s.pacs_node)
                .map(|n| (Some(s.pacs_node), n.clone()));
        }
        if ui.button("New node").clicked() {
            inputs.editing = Some((None, Node::default()));
        }
        if ui.add_enabled(has, egui::Button::new("Remove")).clicked() {
            cmds.push(AppCommand::PacsRemoveNode(s.pacs_node));
        }
        match &state.pacs.echo {
            Some(Ok(ms)) => {
                ui.label(
                    RichText::new(format!("echo OK, {ms:.0} ms"))
                        .color(egui::Color32::from_rgb(80, 200, 120)),
                );
            }
            Some(Err(e)) => {
                ui.label(
                    RichText::new(format!("echo failed: {e}")).color(ui.visuals().error_fg_color),
                );
            }
            None => {}
        }
    });
    node_editor_ui(ui, inputs, cmds);
}

fn node_editor_ui(ui: &mut egui::Ui, inputs: &mut PacsInputs, cmds: &mut Vec<AppCommand>) {
    let Some((idx, node)) = &mut inputs.editing else {
        return;
    };
    let mut done = false;
    egui::Frame::group(ui.style()).show(ui, |ui| {
        egui::Grid::new("pacs-node-editor")
            .num_columns(2)
            .show(ui, |ui| {
                ui.label("Name");
                ui.text_edit_singleline(&mut node.name);
                ui.end_row();
                ui.label("Address");
                ui.add(
                    egui::TextEdit::singleline(&mut node.address)
                        .hint_text("AET@HOST:PORT or https://host/dicom-web"),
                );
                ui.end_row();
                ui.label("Our AE title");
                ui.text_edit_singleline(&mut node.our_ae_title);
                ui.end_row();
                ui.label("DIMSE over TLS");
                ui.checkbox(&mut node.tls, "");
                ui.end_row();
                ui.label("CA certificate (PEM)");
                let mut ca = node
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if ui.text_edit_singleline(&mut ca).changed() {
                    node.ca_file = (!ca.trim().is_empty()).then(|| ca.trim().into());
                }
                ui.end_row();
                ui.label("DICOMweb login");
                ui.horizontal(|ui| {
                    let kind = match node.auth {
                        Auth::None => 0,
                        Auth::Basic { .. } => 1,
                        Auth::Bearer { .. } => 2,
                    };
                    for (k, label) in [(0, "none"), (1, "user/password"), (2, "token")] {
                        if ui.radio(kind == k, label).clicked() && kind != k {
                            node.auth = match k {
                                1 => Auth::Basic {
                                    user: String::new(),
                                    password: String::new(),
                                },
                                2 => Auth::Bearer {
                                    token: String::new(),
                                },
                                _ => Auth::None,
                            };
                        }
                    }
                });
                ui.end_row();
                match &mut node.auth {
                    Auth::Basic { user, password } => {
                        ui.label("User / password");
                        ui.horizontal(|ui| {
                            ui.add(egui::TextEdit::singleline(user).desired_width(120.0));
                            ui.add(
                                egui::TextEdit::singleline(password)
                                    .password(true)
                                    .desired_width(120.0),
                            );
                        });
                        ui.end_row();
                    }
                    Auth::Bearer { token } => {
                        ui.label("Token");
                        ui.add(egui::TextEdit::singleline(token).password(true));
                        ui.end_row();
                    }
                    Auth::None => {}
                }
                ui.label("Retrieve by");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut node.retrieve, RetrieveMethod::Get, "C-GET");
                    ui.radio_value(&mut node.retrieve, RetrieveMethod::Move, "C-MOVE to port");
                    ui.add(egui::DragValue::new(&mut node.move_port).range(1..=65535));
                });
                ui.end_row();
            });
        let valid = node.validate();
        if let Err(e) = &valid {
            ui.label(RichText::new(e.to_string()).color(ui.visuals().error_fg_color));
        }
        ui.horizontal(|ui| {
            if ui
                .add_enabled(valid.is_ok(), egui::Button::new("Save node"))
                .clicked()
            {
                let mut n = node.clone();
                if n.name.trim().is_empty() {
                    n.name = n.address.clone();
                }
                cmds.push(AppCommand::PacsSaveNode(*idx, n));
                done = true;
            }
            if ui.button("Cancel").clicked() {
                done = true;
            }
        });
    });
    if done {
        inputs.editing = None;
    }
}

fn search_ui(
    ui: &mut egui::Ui,
    state: &AppState,
    inputs: &mut PacsInputs,
    cmds: &mut Vec<AppCommand>,
) {
    let mut submit = false;
    egui::Grid::new("pacs-search")
        .num_columns(4)
        .show(ui, |ui| {
            let q = &mut inputs.query;
            ui.label("Patient name");
            submit |= field(ui, &mut q.patient_name, "DOE^J*");
            ui.label("Patient ID");
            submit |= field(ui, &mut q.patient_id, "");
            ui.end_row();
            ui.label("Study date from");
            submit |= field(ui, &mut inputs.date_from, "YYYYMMDD");
            ui.label("to");
            submit |= field(ui, &mut inputs.date_to, "YYYYMMDD");
            ui.end_row();
            let q = &mut inputs.query;
            ui.label("Modality");
            submit |= field(ui, &mut q.modality, "CR, DX…");
            ui.label("Accession");
            submit |= field(ui, &mut q.accession, "");
            ui.end_row();
            ui.label("Level");
            ui.horizontal(|ui| {
                ui.radio_value(&mut q.level, Level::Study, "studies");
                ui.radio_value(&mut q.level, Level::Series, "series");
            });
            ui.end_row();
        });
    ui.horizontal(|ui| {
        let searching = state.pacs.searching.is_some();
        if ui
            .add_enabled(!searching, egui::Button::new("Search the archive"))
            .clicked()
            || (submit && !searching)
        {
            cmds.push(AppCommand::PacsSearch(inputs.to_query()));
        }
        if searching {
            ui.spinner();
            if ui.button("Cancel").clicked() {
                cmds.push(AppCommand::PacsCancel);
            }
        }
        if let Some(a) = &state.pacs.answered {
            ui.label(RichText::new(a).weak());
        }
    });
}

fn field(ui: &mut egui::Ui, v: &mut String, hint: &str) -> bool {
    let r = ui.add(
        egui::TextEdit::singleline(v)
            .hint_text(hint)
            .desired_width(180.0),
    );
    r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))
}

fn results_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    let rows = &state.pacs.results;
    if rows.is_empty() {
        return;
    }
    let series_level = rows.iter().any(|r| r.contains_key("SeriesInstanceUID"));
    let busy = state.pacs.retrieving.is_some();
    egui::ScrollArea::vertical()
        .id_salt("pacs-results")
        .max_height(240.0)
        .show(ui, |ui| {
            egui::Grid::new("pacs-results-grid")
                .striped(true)
                .num_columns(8)
                .show(ui, |ui| {
                    let head = |ui: &mut egui::Ui, t: &str| {
                        ui.label(RichText::new(t).strong());
                    };
                    for h in [
                        "Patient",
                        "Patient ID",
                        "Date",
                        "Description",
                        "Modalities",
                        if series_level { "Series" } else { "Series #" },
                        "Images",
                        "",
                    ] {
                        head(ui, h);
                    }
                    ui.end_row();
                    for r in rows {
                        cell(ui, 190.0, pacs::text(r, "PatientName").replace('^', " "));
                        cell(ui, 120.0, pacs::text(r, "PatientID"));
                        let d = pacs::text(r, "StudyDate");
                        ui.label(if d.len() == 8 {
                            format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
                        } else {
                            d
                        });
                        let desc = if series_level {
                            pacs::text(r, "SeriesDescription")
                        } else {
                            pacs::text(r, "StudyDescription")
                        };
                        cell(ui, 150.0, desc);
                        ui.label(if series_level {
                            pacs::text(r, "Modality")
                        } else {
                            pacs::text(r, "ModalitiesInStudy")
                        });
                        ui.label(if series_level {
                            pacs::text(r, "SeriesNumber")
                        } else {
                            pacs::text(r, "NumberOfStudyRelatedSeries")
                        });
                        ui.label(if series_level {
                            pacs::text(r, "NumberOfSeriesRelatedInstances")
                        } else {
                            pacs::text(r, "NumberOfStudyRelatedInstances")
                        });
                        let study_uid = pacs::text(r, "StudyInstanceUID");
                        let series_uid = series_level.then(|| pacs::text(r, "SeriesInstanceUID"));
                        if ui
                            .add_enabled(
                                !busy && !study_uid.is_empty(),
                                egui::Button::new("Retrieve"),
                            )
                            .on_hover_text(&study_uid)
                            .clicked()
                        {
                            cmds.push(AppCommand::PacsRetrieve {
                                study_uid,
                                series_uid,
                                label: super::study_label(r),
                            });
                        }
                        ui.end_row();
                    }
                });
        });
}

/// A fixed-width table cell whose text is elided (the whole text on hover).
fn cell(ui: &mut egui::Ui, width: f32, text: String) {
    ui.allocate_ui_with_layout(
        egui::vec2(width, ui.spacing().interact_size.y),
        egui::Layout::left_to_right(egui::Align::Center),
        |ui| {
            ui.set_width(width);
            ui.add(egui::Label::new(text.clone()).truncate())
                .on_hover_text(text);
        },
    );
}

fn retrieve_ui(ui: &mut egui::Ui, state: &AppState, cmds: &mut Vec<AppCommand>) {
    if let Some(r) = &state.pacs.retrieving {
        ui.horizontal(|ui| {
            let (frac, text) = match r.progress.total {
                Some(t) if t > 0 => (
                    r.progress.done as f32 / t as f32,
                    format!("{}/{t}", r.progress.done),
                ),
                _ => (0.0, format!("{} received", r.progress.done)),
            };
            ui.label(format!("Retrieving {}", r.label));
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(text)
                    .desired_width(220.0)
                    .animate(true),
            );
            if ui.button("Cancel").clicked() {
                cmds.push(AppCommand::PacsCancel);
            }
        });
    }
    for s in &state.pacs.retrieved {
        ui.horizontal(|ui| {
            ui.label(format!("Retrieved {} — {} file(s)", s.label, s.files));
            if !s.failed.is_empty() {
                ui.label(
                    RichText::new(format!("{} failed", s.failed.len()))
                        .color(ui.visuals().error_fg_color),
                )
                .on_hover_text(s.failed.join("\n"));
            }
            if ui.button("Open").clicked() {
                cmds.push(AppCommand::OpenPaths(vec![s.dir.clone()]));
            }
            if ui
                .button("Add to prior-case store")
                .on_hover_text("Embed these images into the similar-cases store")
                .clicked()
            {
                cmds.push(AppCommand::IndexFolder(s.dir.clone()));
            }
        });
    }
}

fn listener_ui(
    ui: &mut egui::Ui,
    state: &AppState,
    inputs: &mut PacsInputs,
    cmds: &mut Vec<AppCommand>,
) {
    ui.label(RichText::new("Receive (storage SCP)").strong());
    let saved = &state.settings.pacs_listener;
    let (l, allow) = inputs
        .listener
        .get_or_insert_with(|| (saved.clone(), saved.allow.join(", ")));
    let running = state.pacs.listener.is_some();
    ui.add_enabled_ui(!running, |ui| {
        ui.horizontal(|ui| {
            ui.label("AE title");
            ui.add(egui::TextEdit::singleline(&mut l.ae_title).desired_width(110.0));
            ui.label("bind");
            ui.add(egui::TextEdit::singleline(&mut l.bind).desired_width(90.0));
            ui.label("port");
            ui.add(egui::DragValue::new(&mut l.port).range(1..=65535));
        });
        ui.horizontal(|ui| {
            let label = ui.label("Accept calling AE titles");
            ui.add(
                egui::TextEdit::singleline(allow)
                    .hint_text("ORTHANC, PACS1")
                    .desired_width(240.0),
            )
            .labelled_by(label.id);
        });
    });
    ui.horizontal(|ui| {
        if running {
            if ui.button("Stop listening").clicked() {
                cmds.push(AppCommand::PacsListen(false));
            }
        } else if ui.button("Start listening").clicked() {
            l.allow = allow
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            cmds.push(AppCommand::PacsSetListener(l.clone()));
            cmds.push(AppCommand::PacsListen(true));
        }
        if let Some(run) = &state.pacs.listener {
            ui.label(format!(
                "listening on {} — {} received, {} refused",
                run.listener.local_addr(),
                run.received,
                run.refused
            ));
            if let Some(p) = &run.last_problem {
                ui.label(RichText::new(p).color(ui.visuals().warn_fg_color));
            }
        } else {
            ui.label(RichText::new("off — only the listed AE titles are accepted when on").weak());
        }
    });
}
