//! The named presets of [`Config`]: the paper's, the SigLIP base, the from-scratch tiny model,
//! and the two on the pretrained DINOv2 / Gemma 3 towers.

use super::config::*;
use super::ModelError;

/// Named configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// SigLIP 2 So400m/16-512 + Gemma 3 270M, as in the paper.
    Paper,
    /// SigLIP 2 base/16-224 + Gemma 3 270M.
    Base,
    /// Trained from scratch, small enough for a 2-core CPU (the earlier bundled default).
    Tiny,
    /// Pretrained DINOv2-small vision tower (224 px) and frozen Gemma 3 270M text features from
    /// the base folder, with a small decoder: the bundled default.
    Dino,
    /// `Dino`'s towers at 448 px with the pretrained Gemma 3 270M decoder from the base GGUF
    /// (Gemma tokenizer, M = 128): the GPU recipe (`configs/lofi-dino-gemma-gpu.toml`).
    DinoGemma,
}

impl std::str::FromStr for Preset {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "lofi-paper" | "paper" => Ok(Self::Paper),
            "lofi-base" | "base" => Ok(Self::Base),
            "lofi-tiny" | "tiny" => Ok(Self::Tiny),
            "lofi-dino" | "dino" => Ok(Self::Dino),
            "lofi-dino-gemma" | "dino-gemma" => Ok(Self::DinoGemma),
            other => Err(ModelError::Config(format!(
                "unknown preset {other:?} (expected lofi-paper, lofi-base, lofi-tiny, lofi-dino or lofi-dino-gemma)"
            ))),
        }
    }
}

/// Vocabulary of Gemma 3's tokenizer.
pub const GEMMA3_VOCAB: usize = 262_144;

/// Gemma 3 270M's decoder configuration.
pub fn gemma3_270m() -> DecoderConfig {
    DecoderConfig {
        hidden_activation: HiddenActivation::GeluPytorchTanh,
        vocab_size: GEMMA3_VOCAB,
        hidden_size: 640,
        intermediate_size: 2048,
        num_hidden_layers: 18,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_local_base_freq: 10_000.0,
        query_pre_attn_scalar: 256,
        sliding_window: 512,
        sliding_window_pattern: 6,
        layer_types: None,
        max_position_embeddings: 32_768,
        attention_bias: false,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
    }
}

fn gemma_tokens() -> SpecialTokens {
    SpecialTokens {
        image: "<start_of_image>".into(),
        ..SpecialTokens::default()
    }
}

impl Config {
    /// A named preset.
    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Paper => Self {
                name: "lofi-paper".into(),
                version: "1".into(),
                image_size: 512,
                vision: VisionConfig {
                    kind: VisionKind::Siglip,
                    hidden_size: 1152,
                    intermediate_size: 4304,
                    num_hidden_layers: 27,
                    num_attention_heads: 16,
                    num_channels: 3,
                    image_size: 512,
                    patch_size: 16,
                    layer_norm_eps: 1e-6,
                    patch_embedding: PatchEmbedding::Conv,
                    vision_use_head: true,
                    base: None,
                },
                text: TextConfig {
                    kind: TextKind::Siglip,
                    vocab_size: 256_000,
                    hidden_size: 1152,
                    intermediate_size: 4304,
                    num_hidden_layers: 27,
                    num_attention_heads: 16,
                    max_position_embeddings: 64,
                    pad_left: false,
                    pooling: TextPooling::Last,
                    layer_norm_eps: 1e-6,
                    projection_size: None,
                },
                projector: ProjectorConfig {
                    num_tokens: 128,
                    pool: 2,
                    num_heads: 16,
                    mlp_hidden: 288,
                    layout: ProjectorLayout::SingleBlock,
                },
                decoder: gemma3_270m(),
                tokens: gemma_tokens(),
                lora: None,
                max_new_tokens: 64,
                presence_threshold: None,
                finding_phrases: Vec::new(),
            },
            Preset::Base => Self {
                name: "lofi-base".into(),
                version: "1".into(),
                image_size: 224,
                vision: VisionConfig {
                    kind: VisionKind::Siglip,
                    hidden_size: 768,
                    intermediate_size: 3072,
                    num_hidden_layers: 12,
                    num_attention_heads: 12,
                    num_channels: 3,
                    image_size: 224,
                    patch_size: 16,
                    layer_norm_eps: 1e-6,
                    patch_embedding: PatchEmbedding::Conv,
                    vision_use_head: true,
                    base: None,
                },
                text: TextConfig {
                    kind: TextKind::Siglip,
                    vocab_size: 256_000,
                    hidden_size: 768,
                    intermediate_size: 3072,
                    num_hidden_layers: 12,
                    num_attention_heads: 12,
                    max_position_embeddings: 64,
                    pad_left: false,
                    pooling: TextPooling::Last,
                    layer_norm_eps: 1e-6,
                    projection_size: None,
                },
                projector: ProjectorConfig {
                    num_tokens: 128,
                    pool: 1,
                    num_heads: 12,
                    mlp_hidden: 192,
                    layout: ProjectorLayout::SingleBlock,
                },
                decoder: gemma3_270m(),
                tokens: gemma_tokens(),
                lora: None,
                max_new_tokens: 64,
                presence_threshold: None,
                finding_phrases: Vec::new(),
            },
            Preset::Tiny => Self {
                name: "lofi-tiny".into(),
                version: "1".into(),
                image_size: 224,
                vision: VisionConfig {
                    kind: VisionKind::Siglip,
                    hidden_size: 192,
                    intermediate_size: 768,
                    num_hidden_layers: 6,
                    num_attention_heads: 3,
                    num_channels: 1,
                    image_size: 224,
                    patch_size: 16,
                    layer_norm_eps: 1e-6,
                    patch_embedding: PatchEmbedding::Conv,
                    vision_use_head: true,
                    base: None,
                },
                text: TextConfig {
                    kind: TextKind::Siglip,
                    vocab_size: TINY_VOCAB,
                    hidden_size: 128,
                    intermediate_size: 512,
                    num_hidden_layers: 2,
                    num_attention_heads: 2,
                    max_position_embeddings: 24,
                    layer_norm_eps: 1e-6,
                    projection_size: Some(192),
                    pad_left: true,
                    pooling: TextPooling::Mean,
                },
                projector: ProjectorConfig {
                    num_tokens: 49,
                    pool: 1,
                    num_heads: 3,
                    mlp_hidden: 192,
                    layout: ProjectorLayout::SingleBlock,
                },
                decoder: DecoderConfig {
                    hidden_activation: HiddenActivation::GeluPytorchTanh,
                    vocab_size: TINY_VOCAB,
                    hidden_size: 192,
                    intermediate_size: 768,
                    num_hidden_layers: 4,
                    num_attention_heads: 4,
                    num_key_value_heads: 1,
                    head_dim: 48,
                    rms_norm_eps: 1e-6,
                    rope_theta: 1_000_000.0,
                    rope_local_base_freq: 10_000.0,
                    query_pre_attn_scalar: 48,
                    sliding_window: 512,
                    sliding_window_pattern: 2,
                    layer_types: None,
                    max_position_embeddings: 4096,
                    attention_bias: false,
                    final_logit_softcapping: None,
                    attn_logit_softcapping: None,
                },
                tokens: SpecialTokens::default(),
                lora: None,
                max_new_tokens: 64,
                presence_threshold: None,
                finding_phrases: Vec::new(),
            },
            Preset::Dino => {
                let tiny = Self::preset(Preset::Tiny);
                Self {
                    name: "lofi-dino".into(),
                    version: "1".into(),
                    image_size: 224,
                    vision: VisionConfig {
                        kind: VisionKind::Dinov2,
                        hidden_size: 384,
                        intermediate_size: 1536,
                        num_hidden_layers: 12,
                        num_attention_heads: 6,
                        num_channels: 3,
                        image_size: 518,
                        patch_size: 14,
                        layer_norm_eps: 1e-6,
                        patch_embedding: PatchEmbedding::Conv,
                        vision_use_head: true,
                        base: Some(super::base::DINOV2_SMALL.into()),
                    },
                    text: TextConfig {
                        kind: TextKind::Gemma,
                        vocab_size: GEMMA3_VOCAB,
                        hidden_size: 640,
                        intermediate_size: 2048,
                        num_hidden_layers: 18,
                        num_attention_heads: 4,
                        max_position_embeddings: 64,
                        layer_norm_eps: 1e-6,
                        projection_size: Some(384),
                        pad_left: false,
                        pooling: TextPooling::Mean,
                    },
                    projector: ProjectorConfig {
                        num_tokens: 64,
                        pool: 1,
                        num_heads: 6,
                        mlp_hidden: 384,
                        layout: ProjectorLayout::SingleBlock,
                    },
                    decoder: tiny.decoder,
                    tokens: SpecialTokens::default(),
                    lora: None,
                    max_new_tokens: 64,
                    presence_threshold: None,
                    finding_phrases: Vec::new(),
                }
            }
            Preset::DinoGemma => {
                let dino = Self::preset(Preset::Dino);
                Self {
                    name: "lofi-dino-gemma".into(),
                    image_size: 448,
                    projector: ProjectorConfig {
                        num_tokens: 128,
                        pool: 2,
                        ..dino.projector.clone()
                    },
                    decoder: gemma3_270m(),
                    tokens: gemma_tokens(),
                    ..dino
                }
            }
        }
    }
}
