//! `lofi-viewer` binary: parses the command line and hands over to the GUI or a headless command.

use clap::Parser;
use lofi_viewer::cli::{commands, Cli};
use lofi_viewer::util::Cancel;

fn main() {
    // Two thread pools share the cores: rayon's (gemm's matmuls, our CPU kernels; Intel
    // OpenMP's in `mkl` builds) and candle's barrier pool (elementwise ops), which by default
    // spins 25,000 times before sleeping and so takes the cores the matmuls need. Measured on the
    // bundled model (2 cores, `bench model`, interleaved): embed 126–128 → 100–104 ms (minima)
    // in the default build with a limit of 1,000, 150 → 107 ms (medians) in the mkl build. Set
    // before any candle call reads it; a value the user exported wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
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
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{v}").and_then(|()| out.flush()) {
                    Ok(()) => 0,
                    // the reader went away (`| head`): nothing left to tell anyone
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                    Err(e) => {
                        eprintln!("error: writing the result: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
                1
            }
        }
    } else {
        run_gui(&cli)
    };
    std::process::exit(code);
}

#[cfg(feature = "gui")]
fn run_gui(cli: &Cli) -> i32 {
    use lofi_viewer::gui::{self, ShotOutcome};
    let device = match commands::device_choice(cli) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let args = gui::Args {
        paths: cli.paths.clone(),
        phrase: cli.phrase.clone(),
        screenshot: cli.screenshot.clone(),
        model: cli.model.clone(),
        store: cli.store.clone(),
        device,
        similar: cli.similar,
        shots: cli.shots,
        find_all: cli.find_all,
        two_up: cli.two_up,
        harness: false,
        pacs_node: cli.pacs_node.clone(),
        pacs_find: cli.pacs_find,
        pacs_retrieve: cli.pacs_retrieve.clone(),
        study_cache: cli.study_cache.clone(),
    };
    let shot = args.screenshot.is_some();
    match gui::run(args) {
        Ok(ShotOutcome::Failed(e)) => {
            eprintln!("error: screenshot failed: {e}");
            1
        }
        Ok(ShotOutcome::Pending) if shot => {
            eprintln!("error: the window closed before the screenshot was taken");
            1
        }
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    }
}

#[cfg(not(feature = "gui"))]
fn run_gui(_cli: &Cli) -> i32 {
    eprintln!("error: this build has no GUI (built without the `gui` feature); use --headless");
    2
}
