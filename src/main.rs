//! `lofi-viewer` binary: parses the command line and hands over to the GUI or a headless command.

use clap::Parser;
use lofi_viewer::cli::{commands, Cli};
use lofi_viewer::util::Cancel;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = if cli.headless {
        let Some(cmd) = &cli.command else {
            eprintln!("error: --headless needs a command (see --help)");
            std::process::exit(2);
        };
        let cancel = Cancel::new();
        let c = cancel.clone();
        if let Err(e) = ctrlc::set_handler(move || c.cancel()) {
            tracing::warn!("Ctrl-C handler not installed: {e}");
        }
        match commands::run(&cli, cmd, &cancel) {
            Ok(v) => {
                println!("{v}");
                0
            }
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                1
            }
        }
    } else {
        eprintln!("error: the GUI is not available yet; use --headless");
        1
    };
    std::process::exit(code);
}
