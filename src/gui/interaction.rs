//! Input → commands: the keyboard map (one table, also shown by the help overlay and named in
//! the menus) and the help overlay itself.

use egui::Key;

use super::command::AppCommand;
use super::state::{AppState, PointerTool};

/// Every key binding: key, what it does.
pub const KEYS: &[(&str, &str)] = &[
    ("F", "Fit to window"),
    ("Z", "1:1 (one image pixel per screen pixel)"),
    ("R", "Rotate 90° clockwise"),
    ("H / V", "Flip horizontal / vertical"),
    ("I", "Invert"),
    ("Esc / Backspace", "Reset window, view and ruler"),
    ("1 to 9", "Window presets (file windows, full range, yours)"),
    ("Left / Right arrow", "Previous / next frame"),
    ("Space", "Play / pause cine"),
    ("M", "Ruler tool on / off"),
    ("D", "Describe-region tool on / off"),
    ("A", "Show / hide the AI layer"),
    ("Ctrl+O", "Open files"),
    ("F1 or ?", "This help"),
];

/// Every mouse action: gesture, what it does.
pub const MOUSE: &[(&str, &str)] = &[
    (
        "Left drag",
        "Pan (or measure with the ruler, or draw a region to describe)",
    ),
    ("Shift + left drag", "Measure a distance"),
    ("Middle drag", "Pan"),
    ("Right drag", "Window: sideways = width, up/down = centre"),
    ("Wheel / pinch", "Zoom about the cursor"),
    ("Double click", "Fit to window"),
    ("Click", "Make the pane active (two-up)"),
];

/// The commands this frame's key presses ask for.
pub fn key_commands(ctx: &egui::Context, state: &AppState) -> Vec<AppCommand> {
    if ctx.egui_wants_keyboard_input() {
        return Vec::new();
    }
    let mut out = Vec::new();
    ctx.input(|i| {
        use AppCommand as C;
        let simple = [
            (Key::F, C::Fit),
            (Key::Z, C::OneToOne),
            (Key::R, C::RotateCw),
            (Key::H, C::FlipHorizontal),
            (Key::V, C::FlipVertical),
            (Key::I, C::ToggleInvert),
            (Key::Escape, C::Reset),
            (Key::Backspace, C::Reset),
            (Key::A, C::ToggleAiLayer),
            (Key::Space, C::TogglePlay),
            (Key::ArrowRight, C::NextFrame),
            (Key::ArrowLeft, C::PrevFrame),
            (Key::F1, C::ToggleHelp),
            (Key::Questionmark, C::ToggleHelp),
        ];
        for (k, c) in simple {
            if i.key_pressed(k) && !(k == Key::Questionmark && i.key_pressed(Key::F1)) {
                out.push(c);
            }
        }
        if i.modifiers.command && i.key_pressed(Key::O) {
            out.push(C::OpenDialog { folder: false });
        }
        let toggle =
            |t: PointerTool| C::SetTool(if state.tool == t { PointerTool::Pan } else { t });
        if i.key_pressed(Key::M) {
            out.push(toggle(PointerTool::Ruler));
        }
        if i.key_pressed(Key::D) {
            out.push(toggle(PointerTool::DescribeRegion));
        }
        let numbers = [
            Key::Num1,
            Key::Num2,
            Key::Num3,
            Key::Num4,
            Key::Num5,
            Key::Num6,
            Key::Num7,
            Key::Num8,
            Key::Num9,
        ];
        for (n, k) in numbers.iter().enumerate() {
            if i.key_pressed(*k) {
                out.push(C::ApplyPreset(n));
            }
        }
    });
    out
}

/// The help overlay: every key and mouse action.
pub fn help_ui(ctx: &egui::Context, open: bool, cmds: &mut Vec<AppCommand>) {
    if !open {
        return;
    }
    let mut still_open = true;
    egui::Window::new("Keys and mouse")
        .open(&mut still_open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            for (title, rows) in [("Keys", KEYS), ("Mouse", MOUSE)] {
                ui.heading(title);
                egui::Grid::new(title).striped(true).show(ui, |ui| {
                    for (k, what) in rows {
                        ui.monospace(*k);
                        ui.label(*what);
                        ui.end_row();
                    }
                });
                ui.add_space(6.0);
            }
        });
    if !still_open {
        cmds.push(AppCommand::ToggleHelp);
    }
}
