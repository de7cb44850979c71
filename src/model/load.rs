//! Loading weights: our model directory (`config.json`, `model.safetensors`, `tokenizer.json`) and
//! Hugging Face SigLIP / SigLIP 2 and Gemma 3 folders by their own key names.
//!
//! Weights are memory-mapped safetensors; shapes are checked against the config when each tensor
//! is fetched (the error names the tensor). Pickle checkpoints are refused, never executed.

use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use serde::Deserialize;

use super::config::{Config, DecoderConfig, PatchEmbedding, TextConfig, TextPooling, VisionConfig};
use super::ModelError;

/// Which compute device to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA if compiled in and present, else Metal, else CPU.
    #[default]
    Best,
    /// CPU (f32).
    Cpu,
    /// NVIDIA GPU (bf16), needs the `cuda` feature.
    Cuda,
    /// Apple GPU (f16), needs the `metal` feature.
    Metal,
}

impl std::str::FromStr for DeviceChoice {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "best" | "auto" => Ok(Self::Best),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            o => Err(ModelError::Device(format!(
                "unknown device {o:?} (cpu, cuda or metal)"
            ))),
        }
    }
}

/// Open the chosen device.
pub fn open_device(choice: DeviceChoice) -> Result<Device, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device(
                    "CUDA requested but this build has no `cuda` feature".into(),
                ));
            }
            Device::new_cuda(0).map_err(|e| ModelError::Device(format!("CUDA: {e}")))
        }
        DeviceChoice::Metal => {
            if !candle_core::utils::metal_is_available() {
                return Err(ModelError::Device(
                    "Metal requested but this build has no `metal` feature".into(),
                ));
            }
            Device::new_metal(0).map_err(|e| ModelError::Device(format!("Metal: {e}")))
        }
        DeviceChoice::Best => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// Inference dtype: f32 on CPU, bf16 on CUDA, f16 on Metal.
pub fn inference_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        Device::Cuda(_) => DType::BF16,
        Device::Metal(_) => DType::F16,
    }
}

/// The files of our model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// Safetensors shards.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
}

fn refuse_pickle(dir: &Path) -> Result<(), ModelError> {
    for name in ["pytorch_model.bin", "model.pt", "model.pth", "model.bin"] {
        if dir.join(name).exists() {
            return Err(ModelError::Weights(format!(
                "{} holds only a pickle checkpoint ({name}); pickle files are never executed — convert it to safetensors",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The safetensors files of a folder: `model.safetensors`, or the shards an index lists.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            what: format!("reading {}", index.display()),
            source: e,
        })?;
        let idx: Index = serde_json::from_str(&text)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", index.display())))?;
        let mut files: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(ModelError::MissingFile(f.clone()));
            }
        }
        return Ok(files);
    }
    refuse_pickle(dir)?;
    Err(ModelError::MissingFile(single))
}

impl ModelFiles {
    /// Locate the files of a model directory, with a clear error for each missing one.
    pub fn locate(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile(dir.to_path_buf()));
        }
        let config = dir.join("config.json");
        if !config.exists() {
            return Err(ModelError::MissingFile(config));
        }
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.exists() {
            return Err(ModelError::MissingFile(tokenizer));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights: safetensors_files(dir)?,
            tokenizer,
        })
    }
}

impl ModelFiles {
    /// The weight files to read for `cfg`: the pretrained base backbone first (when the config
    /// names one), then the model's own, so a tensor in both is taken from the model's.
    pub fn weights_for(&self, cfg: &Config) -> Result<Vec<PathBuf>, ModelError> {
        let mut w = Vec::with_capacity(self.weights.len() + 1);
        if let Some(b) = &cfg.vision.base {
            w.push(super::base::base_file(b)?);
        }
        w.extend(self.weights.iter().cloned());
        Ok(w)
    }
}

/// Memory-map safetensors files.
pub fn mmap(files: &[PathBuf]) -> Result<MmapedSafetensors, ModelError> {
    for f in files {
        if !f.exists() {
            return Err(ModelError::MissingFile(f.clone()));
        }
    }
    // SAFETY: the files are opened read-only and mapped for the lifetime of the returned value;
    // modifying a weight file while a model uses it is outside our contract (as for every mmap).
    #[expect(
        unsafe_code,
        reason = "memory-mapped weights, as the style notes allow"
    )]
    let st = unsafe { MmapedSafetensors::multi(files) };
    st.map_err(|e| ModelError::Weights(format!("{}: {e}", files[0].display())))
}

/// A `VarBuilder` over memory-mapped weights.
pub fn mmap_var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    let st = mmap(files)?;
    Ok(VarBuilder::from_backend(
        Box::new(st),
        dtype,
        device.clone(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

fn d_vh() -> usize {
    768
}
fn d_vi() -> usize {
    3072
}
fn d_12() -> usize {
    12
}
fn d_3() -> usize {
    3
}
fn d_224() -> usize {
    224
}
fn d_16() -> usize {
    16
}
fn d_eps() -> f64 {
    1e-6
}
fn d_tv() -> usize {
    32000
}
fn d_64() -> usize {
    64
}
fn d_true() -> bool {
    true
}

/// HF `SiglipVisionConfig` with HF's defaults (HF omits defaulted fields from `config.json`).
#[derive(Debug, Deserialize)]
struct HfVision {
    #[serde(default = "d_vh")]
    hidden_size: usize,
    #[serde(default = "d_vi")]
    intermediate_size: usize,
    #[serde(default = "d_12")]
    num_hidden_layers: usize,
    #[serde(default = "d_12")]
    num_attention_heads: usize,
    #[serde(default = "d_3")]
    num_channels: usize,
    #[serde(default = "d_224")]
    image_size: usize,
    #[serde(default = "d_16")]
    patch_size: usize,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_true")]
    vision_use_head: bool,
    #[serde(default)]
    num_patches: Option<usize>,
}

/// HF `SiglipTextConfig` with HF's defaults.
#[derive(Debug, Deserialize)]
struct HfText {
    #[serde(default = "d_tv")]
    vocab_size: usize,
    #[serde(default = "d_vh")]
    hidden_size: usize,
    #[serde(default = "d_vi")]
    intermediate_size: usize,
    #[serde(default = "d_12")]
    num_hidden_layers: usize,
    #[serde(default = "d_12")]
    num_attention_heads: usize,
    #[serde(default = "d_64")]
    max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    projection_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct HfSiglip {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    #[serde(default)]
    text_config: Option<serde_json::Value>,
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    if !path.exists() {
        return Err(ModelError::MissingFile(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

fn from_value<T: for<'de> Deserialize<'de>>(
    v: serde_json::Value,
    what: &str,
) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|e| ModelError::Config(format!("{what}: {e}")))
}

/// Read an HF SigLIP / SigLIP 2 `config.json` into our vision and text configs.
pub fn hf_siglip_config(dir: &Path) -> Result<(VisionConfig, TextConfig), ModelError> {
    let raw: HfSiglip = from_value(read_json(&dir.join("config.json"))?, "SigLIP config")?;
    let naflex = raw.model_type.as_deref() == Some("siglip2");
    let v: HfVision = from_value(
        raw.vision_config.unwrap_or_else(|| serde_json::json!({})),
        "SigLIP vision_config",
    )?;
    let t: HfText = from_value(
        raw.text_config.unwrap_or_else(|| serde_json::json!({})),
        "SigLIP text_config",
    )?;
    let image_size = match (naflex, v.num_patches) {
        (true, Some(n)) => ((n as f64).sqrt().round() as usize) * v.patch_size,
        _ => v.image_size,
    };
    Ok((
        VisionConfig {
            kind: super::config::VisionKind::Siglip,
            hidden_size: v.hidden_size,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            num_channels: v.num_channels,
            image_size,
            patch_size: v.patch_size,
            layer_norm_eps: v.layer_norm_eps,
            patch_embedding: if naflex {
                PatchEmbedding::Linear
            } else {
                PatchEmbedding::Conv
            },
            vision_use_head: v.vision_use_head,
            base: None,
        },
        TextConfig {
            kind: super::config::TextKind::Siglip,
            vocab_size: t.vocab_size,
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            max_position_embeddings: t.max_position_embeddings,
            layer_norm_eps: t.layer_norm_eps,
            projection_size: t.projection_size,
            pad_left: false,
            pooling: TextPooling::Last,
        },
    ))
}

/// Read an HF Gemma 3 `config.json` (text-only, or the `text_config` of a multimodal one).
pub fn hf_gemma_config(dir: &Path) -> Result<DecoderConfig, ModelError> {
    let mut v = read_json(&dir.join("config.json"))?;
    if let Some(t) = v.get("text_config").cloned() {
        v = t;
    }
    let defaults = serde_json::json!({
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "max_position_embeddings": 131072, "attention_bias": false
    });
    let mut merged = defaults;
    if let (Some(m), Some(o)) = (merged.as_object_mut(), v.as_object()) {
        for (k, val) in o {
            if !val.is_null() || k.ends_with("softcapping") {
                m.insert(k.clone(), val.clone());
            }
        }
    }
    from_value(merged, "Gemma 3 config")
}

/// Safetensors of several sources under one name space: `decoder.X` is looked up as `X` (or
/// `language_model.X`) in the Gemma folder, everything else in the SigLIP folder.
pub struct HfSources {
    siglip: Option<MmapedSafetensors>,
    gemma: Option<MmapedSafetensors>,
}

impl HfSources {
    /// Map the weights of the given folders.
    pub fn open(siglip: Option<&Path>, gemma: Option<&Path>) -> Result<Self, ModelError> {
        let m = |d: Option<&Path>| -> Result<Option<MmapedSafetensors>, ModelError> {
            match d {
                Some(d) => Ok(Some(mmap(&safetensors_files(d)?)?)),
                None => Ok(None),
            }
        };
        Ok(Self {
            siglip: m(siglip)?,
            gemma: m(gemma)?,
        })
    }

    fn route(&self, name: &str) -> Option<(&MmapedSafetensors, String)> {
        if let Some(rest) = name.strip_prefix("decoder.") {
            let g = self.gemma.as_ref()?;
            for cand in [rest.to_string(), format!("language_model.{rest}")] {
                if g.get(&cand).is_ok() {
                    return Some((g, cand));
                }
            }
            None
        } else {
            let s = self.siglip.as_ref()?;
            s.get(name).is_ok().then(|| (s, name.to_string()))
        }
    }
}

impl SimpleBackend for HfSources {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            // conv patch embeddings may be stored 4-D while a linear view is asked for, or vice versa
            if t.elem_count() == s.elem_count() && name.ends_with("patch_embedding.weight") {
                return t.reshape(s);
            }
            candle_core::bail!(
                "tensor {name}: checkpoint shape {:?} does not match the config's {:?}",
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.route(name) {
            Some((st, key)) => st.load(&key, dev)?.to_dtype(dtype),
            None => candle_core::bail!("tensor {name} is not in the Hugging Face checkpoints"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.route(name).is_some()
    }
}

/// Our config with its vision/text towers taken from an HF SigLIP folder and its decoder from an
/// HF Gemma 3 folder (projector and the rest from `base`).
pub fn config_from_hf(
    mut base: Config,
    siglip: Option<&Path>,
    gemma: Option<&Path>,
) -> Result<Config, ModelError> {
    if let Some(d) = siglip {
        let (v, t) = hf_siglip_config(d)?;
        base.vision = v;
        base.text = t;
        if base.text.projection_size.is_none() && base.text.hidden_size != base.vision.hidden_size {
            base.text.projection_size = Some(base.vision.hidden_size);
        }
    }
    if let Some(d) = gemma {
        base.decoder = hf_gemma_config(d)?;
        base.tokens.image = "<start_of_image>".into();
    }
    base.validate()?;
    Ok(base)
}

/// Copy a model directory to `dst`, storing every floating-point tensor as `dtype` (f16 halves
/// a CPU-trained f32 model; loading converts back to the compute dtype), and write `card` as
/// `MODEL_CARD.md` when given. The destination files are written crash-safely.
pub fn convert_model_dir(
    src: &Path,
    dst: &Path,
    dtype: DType,
    card: Option<&str>,
) -> Result<(), ModelError> {
    let io = |what: String| move |source: std::io::Error| ModelError::Io { what, source };
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        if !src.join(f).exists() {
            return Err(ModelError::MissingFile(src.join(f)));
        }
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = if t.dtype().is_float() {
            t.to_dtype(dtype)?
        } else {
            t
        };
        out.push((name, t));
    }
    std::fs::create_dir_all(dst).map_err(io(format!("creating {}", dst.display())))?;
    super::save_safetensors(&out, &dst.join("model.safetensors"))?;
    for f in ["config.json", "tokenizer.json"] {
        let b = std::fs::read(src.join(f)).map_err(io(format!("reading {f}")))?;
        crate::util::atomic_write(&dst.join(f), &b).map_err(io(format!("writing {f}")))?;
    }
    if let Some(card) = card {
        crate::util::atomic_write(&dst.join("MODEL_CARD.md"), card.as_bytes())
            .map_err(io("writing MODEL_CARD.md".into()))?;
    }
    Ok(())
}

/// Add (or replace) the `embedding_center` vector in a model directory's weights, crash-safely.
pub fn write_embedding_center(dir: &Path, center: &[f32]) -> Result<(), ModelError> {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    tensors.insert(
        super::tasks::EMBEDDING_CENTER.to_string(),
        Tensor::from_slice(center, center.len(), &Device::Cpu)?,
    );
    let v: Vec<(String, Tensor)> = tensors.into_iter().collect();
    super::save_safetensors(&v, &path)
}
