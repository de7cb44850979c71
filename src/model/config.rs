//! Serde configuration of every LoFi component, read from `config.json`, and the named presets.
//!
//! Field names follow the Hugging Face configs (`SiglipVisionConfig`, `SiglipTextConfig`,
//! `Gemma3TextConfig`) so an HF `config.json` maps onto these structs with little translation.

use serde::{Deserialize, Serialize};

pub use super::presets::{Preset, GEMMA3_VOCAB};
use super::ModelError;

fn default_eps() -> f64 {
    1e-6
}
fn default_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_text_len() -> usize {
    64
}

/// How the patch embedding weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PatchEmbedding {
    /// `Conv2d(C, D, p, stride p)`: weight `(D, C, p, p)` (SigLIP, fixed-resolution SigLIP 2).
    #[default]
    Conv,
    /// `Linear(p·p·C, D)` over patches flattened as `(p, p, C)` (SigLIP 2 NaFlex).
    Linear,
}

/// Which ViT family the image encoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VisionKind {
    /// SigLIP / SigLIP 2 (`vision_model.embeddings.patch_embedding`, `encoder.layers`, …).
    #[default]
    Siglip,
    /// DINOv2 (HF `Dinov2Model` keys: CLS token, LayerScale, patch 14, ImageNet normalisation).
    Dinov2,
}

/// ViT image encoder (SigLIP-style by default, or DINOv2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// The ViT family.
    #[serde(default)]
    pub kind: VisionKind,
    /// Token width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3 for HF checkpoints; 1 is enough for radiographs trained from scratch).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Image size the position embeddings were trained at (its grid is interpolated to others).
    pub image_size: usize,
    /// Square patch side in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Layout of the patch embedding weight.
    #[serde(default)]
    pub patch_embedding: PatchEmbedding,
    /// Whether the pooled-embedding MAP head exists (`vision_model.head.*`).
    #[serde(default = "default_true")]
    pub vision_use_head: bool,
    /// Pretrained backbone weights in the base folder (e.g. `dinov2-small-imgfocus.safetensors`)
    /// that this model reads under its own weights: `model.safetensors` then holds only what was
    /// trained, and a tensor in both is taken from `model.safetensors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl VisionConfig {
    /// Patches per side at the pretrained image size.
    pub fn base_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// What produces the text features under the trained `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// A SigLIP-style text tower in the model's own weights (`text_model.*`).
    #[default]
    Siglip,
    /// Frozen Gemma 3 270M from the base folder, mean-pooled; only `text_model.head` is ours
    /// (locked-text training). `hidden_size` is Gemma's width.
    Gemma,
}

/// Text encoder: SigLIP-style (last-token pooling + `head` Linear) or frozen Gemma + `head`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Where the features come from.
    #[serde(default)]
    pub kind: TextKind,
    /// Token vocabulary of the text tower.
    pub vocab_size: usize,
    /// Token width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Fixed text length (SigLIP pads every text to this length).
    #[serde(default = "default_text_len")]
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Output width of `head` (must equal the vision width for the sigmoid loss).
    #[serde(default)]
    pub projection_size: Option<usize>,
    /// Pad on the left, so that last-token pooling reads the text's closing token instead of a
    /// padding token. HF SigLIP checkpoints pad on the right (`false`); a small tower trained
    /// from scratch learns far faster when the pooled position carries the text.
    #[serde(default)]
    pub pad_left: bool,
    /// How the token states become one text embedding.
    #[serde(default)]
    pub pooling: TextPooling,
}

/// Pooling of the text tower's token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// The last position (SigLIP / SigLIP 2 checkpoints).
    #[default]
    Last,
    /// Mean over the non-padding tokens. A tower trained from scratch on short label texts
    /// starts with near-identical last-position states for every text (the position's own
    /// embedding dominates), which stalls the sigmoid loss; the mean sees every word at once.
    Mean,
}

/// Layout of the MAP projector weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorLayout {
    /// One MAP block with M probes (our own configs; small).
    #[default]
    SingleBlock,
    /// M separate MAP heads of one probe each (the official LoFi checkpoints).
    SeparateHeads,
}

/// Image-to-decoder projector: MAP pooling to M tokens, then a 2-layer MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectorConfig {
    /// M, the number of image tokens the decoder reads.
    pub num_tokens: usize,
    /// Average-pool the patch grid by this factor first (1 = none, 2 = 2×2).
    #[serde(default = "one")]
    pub pool: usize,
    /// Attention heads of the MAP block.
    pub num_heads: usize,
    /// Hidden width of the MAP block's MLP.
    pub mlp_hidden: usize,
    /// Weight layout.
    #[serde(default)]
    pub layout: ProjectorLayout,
}

fn one() -> usize {
    1
}

/// The decoder MLP's gate activation (HF `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HiddenActivation {
    /// `gelu_pytorch_tanh`, Gemma 3's.
    #[default]
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu")]
    GeluPytorchTanh,
    /// SiLU (what candle-transformers' `quantized_gemma3` applies; kept to test against it).
    Silu,
}

/// Gemma-3-style decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// MLP gate activation.
    #[serde(default, skip_serializing_if = "is_default_activation")]
    pub hidden_activation: HiddenActivation,
    /// Vocabulary (tied input/output embeddings).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// GeGLU width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers.
    pub rope_local_base_freq: f64,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: usize,
    /// Sliding window (tokens) of local layers.
    pub sliding_window: usize,
    /// Every `sliding_window_pattern`-th layer is global (6 → 5 local : 1 global).
    #[serde(default = "six", alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: usize,
    /// Explicit per-layer types (`sliding_attention` / `full_attention`), as newer HF configs write.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Longest sequence the RoPE tables cover.
    pub max_position_embeddings: usize,
    /// Bias in attention projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Optional tanh soft-capping of the final logits.
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Optional tanh soft-capping of the attention logits.
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
}

fn is_default_activation(a: &HiddenActivation) -> bool {
    *a == HiddenActivation::GeluPytorchTanh
}

fn six() -> usize {
    6
}

impl DecoderConfig {
    /// Whether layer `i` uses the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(i).is_some_and(|s| s == "sliding_attention"),
            None => !(i + 1).is_multiple_of(self.sliding_window_pattern.max(1)),
        }
    }
}

/// The strings of the chat template's special tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: String,
    /// `<start_of_turn>`.
    pub start_of_turn: String,
    /// `<end_of_turn>`.
    pub end_of_turn: String,
    /// Placeholder repeated M times for the image prefix.
    pub image: String,
    /// Padding.
    pub pad: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self {
            bos: "<bos>".into(),
            start_of_turn: "<start_of_turn>".into(),
            end_of_turn: "<end_of_turn>".into(),
            image: "<image_soft_token>".into(),
            pad: "<pad>".into(),
        }
    }
}

/// LoRA ranks per component (spec: encoder r=16 α=16 on q/k/v/out/fc1/fc2; decoder r=4 α=4 on q, v).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Encoder rank (0 = no LoRA on the encoder).
    pub encoder_rank: usize,
    /// Encoder alpha.
    pub encoder_alpha: f64,
    /// Decoder rank (0 = none).
    pub decoder_rank: usize,
    /// Decoder alpha.
    pub decoder_alpha: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            encoder_rank: 16,
            encoder_alpha: 16.0,
            decoder_rank: 4,
            decoder_alpha: 4.0,
        }
    }
}

/// The whole model's configuration (`config.json` of a model directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Model name shown to the user (e.g. `lofi-tiny`).
    pub name: String,
    /// Model version; stored with every embedding so different models never mix.
    pub version: String,
    /// Letterboxed square input size in pixels.
    pub image_size: usize,
    /// Image encoder.
    pub vision: VisionConfig,
    /// Text encoder.
    pub text: TextConfig,
    /// Image-to-decoder projector.
    pub projector: ProjectorConfig,
    /// Decoder.
    pub decoder: DecoderConfig,
    /// Chat template tokens.
    #[serde(default)]
    pub tokens: SpecialTokens,
    /// LoRA adapters present in the weights (absent once merged).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Longest generated answer, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Presence threshold on the image–text score σ(t·cos + b) of a grounding phrase: below it
    /// the finding counts as absent and grounding returns no box (chosen on a development slice
    /// of the training split; absent = no gating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_threshold: Option<f32>,
    /// Findings "find all" checks besides those its caption names: each one whose presence
    /// score reaches `presence_threshold` is grounded (the label vocabulary it was trained on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finding_phrases: Vec<String>,
}

fn default_max_new_tokens() -> usize {
    48
}

impl Config {
    /// Check internal consistency; every model constructor calls this first.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        let v = &self.vision;
        if v.patch_size == 0 || !self.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, v.patch_size
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad("vision hidden_size must divide by num_attention_heads".into());
        }
        if !self
            .text
            .hidden_size
            .is_multiple_of(self.text.num_attention_heads)
        {
            return bad("text hidden_size must divide by num_attention_heads".into());
        }
        if self.text.projection_size.unwrap_or(self.text.hidden_size) != v.hidden_size {
            return bad("text projection size must equal the vision hidden size".into());
        }
        let d = &self.decoder;
        if d.num_key_value_heads == 0
            || !d.num_attention_heads.is_multiple_of(d.num_key_value_heads)
        {
            return bad("decoder num_attention_heads must divide by num_key_value_heads".into());
        }
        let p = &self.projector;
        if p.pool == 0 || !(self.image_size / v.patch_size).is_multiple_of(p.pool) {
            return bad("projector pool must divide the patch grid".into());
        }
        if p.num_tokens == 0 || !v.hidden_size.is_multiple_of(p.num_heads) {
            return bad(
                "projector needs num_tokens > 0 and heads dividing the vision width".into(),
            );
        }
        Ok(())
    }

    /// Read `config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The unique id of this model's embedding space (stored with every embedding).
    pub fn embedding_id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// WordPiece vocabulary of the bundled tokenizer (30,522) plus the template's added tokens.
pub const TINY_VOCAB: usize = 30_528;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_roundtrip() {
        for p in [
            Preset::Paper,
            Preset::Base,
            Preset::Tiny,
            Preset::Dino,
            Preset::DinoGemma,
        ] {
            let c = Config::preset(p);
            c.validate().unwrap();
            let s = serde_json::to_string(&c).unwrap();
            let back: Config = serde_json::from_str(&s).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn sliding_pattern_matches_gemma() {
        let d = crate::model::presets::gemma3_270m();
        let globals: Vec<usize> = (0..18).filter(|&i| !d.is_sliding(i)).collect();
        assert_eq!(globals, vec![5, 11, 17]);
    }
}
