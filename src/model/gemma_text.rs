//! Frozen Gemma 3 270M as the text feature extractor of a locked-text model: a text's feature is
//! the mean of Gemma's final-normed hidden states over its tokens (the `<bos>` attention sink left
//! out). Only a small head on top of it is trained (`text_model.head`, see [`super::text`]).
//!
//! The weights are the base GGUF ([`super::base::GEMMA3_270M_GGUF`]), dequantised once at load.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::base;
use super::decoder::Decoder;
use super::ModelError;

/// Gemma 3 as a text encoder.
pub struct GemmaText {
    decoder: Decoder,
    tokenizer: tokenizers::Tokenizer,
    bos: u32,
    device: Device,
}

impl std::fmt::Debug for GemmaText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmaText")
            .field("hidden", &self.decoder.hidden_size())
            .finish()
    }
}

/// Longest text encoded, in Gemma tokens (longer texts are cut).
pub const MAX_TEXT_TOKENS: usize = 64;

impl GemmaText {
    /// Load from the base folder (GGUF and its tokenizer), on `device` in `dtype`.
    pub fn load_base(device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let gguf = base::base_file(base::GEMMA3_270M_GGUF)?;
        let tok = base::base_file(base::GEMMA3_TOKENIZER)?;
        Self::load(&gguf, &tok, device, dtype)
    }

    /// Load a Gemma 3 GGUF and a tokenizer file.
    pub fn load(
        gguf: &Path,
        tokenizer: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let (cfg, w) = base::gemma_weights_from_gguf(gguf, "model.", dtype, device)?;
        let vb = VarBuilder::from_tensors(w, dtype, device);
        let decoder = Decoder::new(&cfg, None, vb)?;
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer.display())))?;
        let bos = tokenizer
            .token_to_id("<bos>")
            .ok_or_else(|| ModelError::Tokenizer("Gemma tokenizer has no <bos>".into()))?;
        Ok(Self {
            decoder,
            tokenizer,
            bos,
            device: device.clone(),
        })
    }

    /// Feature width (Gemma's hidden size).
    pub fn hidden_size(&self) -> usize {
        self.decoder.hidden_size()
    }

    /// Mean-pooled features `(N, H)` (f32) of `texts`, one forward pass per text.
    pub fn features(&self, texts: &[&str]) -> Result<Tensor, ModelError> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self
                .tokenizer
                .encode(t.trim(), false)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            let mut ids = vec![self.bos];
            ids.extend(enc.get_ids().iter().take(MAX_TEXT_TOKENS));
            let n = ids.len();
            let x = Tensor::from_vec(ids, (1, n), &self.device)?;
            let h = self
                .decoder
                .forward_embeds(&self.decoder.embed(&x)?, None)?;
            let row = if n > 1 {
                h.narrow(1, 1, n - 1)?.mean(1)?
            } else {
                h.mean(1)?
            };
            rows.push(row.to_dtype(DType::F32)?);
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.hidden_size()),
                DType::F32,
                &self.device,
            )?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}
