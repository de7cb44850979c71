//! Tokenizer loading (`tokenizer.json`) with the chat template's special tokens added when missing.

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use super::config::SpecialTokens;
use super::ModelError;

/// A tokenizer plus the ids of the template's special tokens.
#[derive(Clone)]
pub struct LofiTokenizer {
    inner: Tokenizer,
    /// `<bos>`.
    pub bos: u32,
    /// `<start_of_turn>`.
    pub start_of_turn: u32,
    /// `<end_of_turn>`.
    pub end_of_turn: u32,
    /// Image placeholder.
    pub image: u32,
    /// Padding.
    pub pad: u32,
}

impl std::fmt::Debug for LofiTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LofiTokenizer")
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

impl LofiTokenizer {
    /// Load `tokenizer.json`; padding and truncation are switched off and missing special tokens
    /// are appended to the vocabulary.
    pub fn from_file(path: &Path, special: &SpecialTokens) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::MissingFile(path.to_path_buf()));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(inner, special)
    }

    /// Wrap an already loaded tokenizer.
    pub fn from_tokenizer(
        mut inner: Tokenizer,
        special: &SpecialTokens,
    ) -> Result<Self, ModelError> {
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let names = [
            &special.bos,
            &special.start_of_turn,
            &special.end_of_turn,
            &special.image,
            &special.pad,
        ];
        let missing: Vec<AddedToken> = names
            .iter()
            .filter(|s| inner.token_to_id(s).is_none())
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        if !missing.is_empty() {
            inner
                .add_special_tokens(missing)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        }
        let id = |s: &str| {
            inner.token_to_id(s).ok_or_else(|| {
                ModelError::Tokenizer(format!("special token {s:?} could not be added"))
            })
        };
        Ok(Self {
            bos: id(&special.bos)?,
            start_of_turn: id(&special.start_of_turn)?,
            end_of_turn: id(&special.end_of_turn)?,
            image: id(&special.image)?,
            pad: id(&special.pad)?,
            inner,
        })
    }

    /// Save (with the added tokens) as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        crate::util::atomic_write(path, json.as_bytes()).map_err(|e| ModelError::Io {
            what: format!("writing {}", path.display()),
            source: e,
        })
    }

    /// Token ids of plain text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Fixed-length ids for the text tower: text, `<end_of_turn>`, then padding (truncated to `len`).
    pub fn encode_fixed(
        &self,
        text: &str,
        len: usize,
        pad_left: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.encode(text)?;
        ids.truncate(len.saturating_sub(1));
        ids.push(self.end_of_turn);
        if pad_left {
            let mut out = vec![self.pad; len.saturating_sub(ids.len())];
            out.extend(ids);
            return Ok(out);
        }
        ids.resize(len, self.pad);
        Ok(ids)
    }

    /// Text of ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
