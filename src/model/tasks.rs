//! The inference tasks on a loaded model: embeddings, grounding (with optional in-context
//! examples), region description, captioning and findings, with greedy KV-cached decoding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use image::GrayImage;

use super::config::Config;
use super::decoder::KvCache;
use super::image::{letterbox, Letterbox};
use super::load::{inference_dtype, mmap_var_builder, open_device, DeviceChoice, ModelFiles};
use super::prompt::{build_prompt, ground_response, parse_boxes, Instruction, Turn, UnitBox};
use super::tokenizer::LofiTokenizer;
use super::{l2_normalize, LofiModel, ModelError};

/// A loaded model ready for inference.
#[derive(Debug, Clone)]
pub struct Lofi {
    /// The network.
    pub model: LofiModel,
    /// Its tokenizer.
    pub tokenizer: LofiTokenizer,
    /// Where it runs.
    pub device: Device,
    /// Its compute dtype.
    pub dtype: DType,
    /// The model directory it came from.
    pub dir: PathBuf,
    /// Set to abandon a generation between tokens.
    pub cancel: crate::util::Cancel,
    /// Mean pooled image feature of the training images (`embedding_center` in the weights),
    /// subtracted before normalisation when present: it removes the direction every image
    /// shares, so cosine similarity compares what differs between images.
    pub embedding_center: Option<Tensor>,
}

/// Name of the optional centring vector in `model.safetensors`.
pub const EMBEDDING_CENTER: &str = "embedding_center";

/// An image encoded once, reused by every task on it.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// Letterbox geometry (original pixels ↔ model square).
    pub letterbox: Letterbox,
    /// Decoder prefix `(1, M, H)`.
    pub prefix: Tensor,
    /// L2-normalised pooled embedding.
    pub embedding: Vec<f32>,
    /// The backbone's patch tokens, mean-pooled, before any trained head (linear-probe features).
    pub backbone_mean: Vec<f32>,
}

/// A box in original image pixels with a confidence in (0, 1].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
    /// exp(mean log-probability of the box's tokens).
    pub score: f32,
}

/// A finding with its box (dense captioning).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    /// The finding's phrase.
    pub phrase: String,
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
    /// Confidence in (0, 1].
    pub score: f32,
}

impl ScoredBox {
    /// A box given in the model square (0–1), in the original pixels of the image of `letterbox`.
    fn from_unit(letterbox: &Letterbox, unit: UnitBox, score: f32) -> Self {
        let [x1, y1, x2, y2] = letterbox.to_pixels(unit);
        Self {
            x1,
            y1,
            x2,
            y2,
            score,
        }
    }
}

/// A grounding answer with its presence decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Grounding {
    /// Boxes, best first (empty when the finding is judged absent).
    pub boxes: Vec<ScoredBox>,
    /// Image–text presence score in (0, 1).
    pub presence: f32,
    /// The model's presence threshold, if it has one.
    pub threshold: Option<f32>,
    /// Whether the finding is judged present.
    pub present: bool,
}

/// A solved grounding example for in-context grounding.
#[derive(Debug, Clone)]
pub struct Shot {
    /// The example image, encoded.
    pub image: EncodedImage,
    /// Its phrase.
    pub phrase: String,
    /// Its boxes in the example image's own original pixels.
    pub boxes_px: Vec<[f32; 4]>,
}

/// Output of greedy decoding.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Generated ids (without the closing `<end_of_turn>`).
    pub ids: Vec<u32>,
    /// Decoded text.
    pub text: String,
    /// Log-probability of each generated id.
    pub logprobs: Vec<f32>,
    /// Byte range of each generated id in `text`.
    pub spans: Vec<std::ops::Range<usize>>,
}

impl Lofi {
    /// Load a model directory on a device.
    pub fn load(dir: &Path, device: DeviceChoice) -> Result<Self, ModelError> {
        let files = ModelFiles::locate(dir)?;
        let cfg = Config::from_file(&files.config)?;
        let device = open_device(device)?;
        let dtype = inference_dtype(&device);
        let weights = files.weights_for(&cfg)?;
        let vb = mmap_var_builder(&weights, dtype, &device)?;
        let mut model = LofiModel::new(&cfg, vb).map_err(|e| match e {
            ModelError::Candle(c) => {
                ModelError::Weights(format!("{}: {c}", files.weights[0].display()))
            }
            o => o,
        })?;
        if cfg.text.kind == super::config::TextKind::Gemma {
            let g = super::gemma_text::GemmaText::load_base(&device, dtype)?;
            model.text.attach_gemma(std::sync::Arc::new(g));
        }
        let tokenizer = LofiTokenizer::from_file(&files.tokenizer, &cfg.tokens)?;
        if tokenizer.vocab_size() > cfg.decoder.vocab_size {
            return Err(ModelError::Config(format!(
                "tokenizer has {} tokens but the decoder only {}",
                tokenizer.vocab_size(),
                cfg.decoder.vocab_size
            )));
        }
        let embedding_center = load_center(&weights, &device, cfg.vision.hidden_size)?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dtype,
            dir: dir.to_path_buf(),
            cancel: crate::util::Cancel::new(),
            embedding_center,
        })
    }

    /// Wrap an in-memory model (tests, training-time evaluation).
    pub fn from_parts(model: LofiModel, tokenizer: LofiTokenizer, device: Device) -> Self {
        let dtype = model.decoder.dtype();
        Self {
            model,
            tokenizer,
            device,
            dtype,
            dir: PathBuf::new(),
            cancel: crate::util::Cancel::new(),
            embedding_center: None,
        }
    }

    /// A handle sharing the weights whose generations stop when `cancel` is set.
    pub fn with_cancel(&self, cancel: crate::util::Cancel) -> Self {
        Self {
            cancel,
            ..self.clone()
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// Cap on generated tokens.
    pub fn set_max_new_tokens(&mut self, n: usize) {
        self.model.set_max_new_tokens(n);
    }

    /// `name@version`, the id of this model's embedding space.
    pub fn model_id(&self) -> String {
        self.config().embedding_id()
    }

    /// Letterbox + normalise an 8-bit grey image into `(1, C, S, S)`.
    pub fn preprocess(&self, img: &GrayImage) -> Result<(Tensor, Letterbox), ModelError> {
        let s = self.config().image_size as u32;
        let (v, lb) = letterbox(img, s);
        let c = self.config().vision.num_channels;
        let t = Tensor::from_vec(v, (1, 1, s as usize, s as usize), &self.device)?;
        let t = if c > 1 { t.repeat((1, c, 1, 1))? } else { t };
        Ok((t.to_dtype(self.dtype)?, lb))
    }

    /// Letterboxed, normalised pixels of several images as one `(B, C, S, S)` batch.
    fn pixel_batch(&self, imgs: &[&GrayImage]) -> Result<(Tensor, Vec<Letterbox>), ModelError> {
        let mut px = Vec::with_capacity(imgs.len());
        let mut lbs = Vec::with_capacity(imgs.len());
        for img in imgs {
            let (t, lb) = self.preprocess(img)?;
            px.push(t);
            lbs.push(lb);
        }
        Ok((Tensor::cat(&px, 0)?, lbs))
    }

    /// The retrieval embedding of a vision output: the pooled feature (head, or the mean of the
    /// patch tokens), less the training-set centre, L2-normalised; `(B, D)` in f32.
    fn retrieval_embedding(&self, out: &super::vision::VisionOutput) -> Result<Tensor, ModelError> {
        let pooled = match &out.pooled {
            Some(p) => p.clone(),
            None => out.tokens.mean(1)?,
        };
        let pooled = pooled.to_dtype(DType::F32)?;
        let pooled = match &self.embedding_center {
            Some(c) => pooled.broadcast_sub(c)?,
            None => pooled,
        };
        Ok(l2_normalize(&pooled)?)
    }

    /// Encode several images in one batch: the retrieval embedding and the decoder prefix.
    pub fn encode_batch(&self, imgs: &[&GrayImage]) -> Result<Vec<EncodedImage>, ModelError> {
        let _fused = super::nn::inference(&self.device);
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let (px, lbs) = self.pixel_batch(imgs)?;
        let out = self.model.encode_images(&px)?;
        let prefix = self.model.projector.forward(&out.tokens)?;
        let backbone_mean = out.tokens.mean(1)?.to_dtype(DType::F32)?;
        let emb = self.retrieval_embedding(&out)?;
        let mut res = Vec::with_capacity(imgs.len());
        for (i, lb) in lbs.into_iter().enumerate() {
            res.push(EncodedImage {
                letterbox: lb,
                prefix: prefix.i(i..i + 1)?,
                embedding: emb.i(i)?.to_vec1()?,
                backbone_mean: backbone_mean.i(i)?.to_vec1()?,
            });
        }
        Ok(res)
    }

    /// Retrieval embeddings only (what indexing and search need): the vision tower and its
    /// head, without the projector's decoder prefix. Equal to `encode_batch(..).embedding`.
    pub fn embed_batch(&self, imgs: &[&GrayImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _fused = super::nn::inference(&self.device);
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let (px, _) = self.pixel_batch(imgs)?;
        let out = self.model.encode_images(&px)?;
        Ok(self.retrieval_embedding(&out)?.to_vec2()?)
    }

    /// The retrieval embedding of one image (see [`Lofi::embed_batch`]).
    pub fn embed_image(&self, img: &GrayImage) -> Result<Vec<f32>, ModelError> {
        self.embed_batch(&[img])?
            .pop()
            .ok_or_else(|| ModelError::Config("embedding produced no output".into()))
    }

    /// Raw pooled image features (before centring and normalisation), one row per image.
    pub fn pooled_features(&self, imgs: &[&GrayImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _fused = super::nn::inference(&self.device);
        let mut px = Vec::with_capacity(imgs.len());
        for img in imgs {
            px.push(self.preprocess(img)?.0);
        }
        if px.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.model.encode_images(&Tensor::cat(&px, 0)?)?;
        let pooled = match out.pooled {
            Some(p) => p,
            None => out.tokens.mean(1)?,
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// Encode one image.
    pub fn encode(&self, img: &GrayImage) -> Result<EncodedImage, ModelError> {
        let mut v = self.encode_batch(&[img])?;
        v.pop()
            .ok_or_else(|| ModelError::Config("encoding produced no output".into()))
    }

    /// L2-normalised text embedding (text tower + head).
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let _fused = super::nn::inference(&self.device);
        if self.model.text.kind() == super::config::TextKind::Gemma {
            let e = self.model.text.embed_texts(&[text])?;
            return Ok(l2_normalize(&e.to_dtype(DType::F32)?)?.i(0)?.to_vec1()?);
        }
        let len = self.model.text.max_len();
        let ids = self
            .tokenizer
            .encode_fixed(text, len, self.model.text.pad_left())?;
        let ids = Tensor::from_vec(ids, (1, len), &self.device)?;
        let e = self.model.text.embed(&ids, self.tokenizer.pad)?;
        Ok(l2_normalize(&e.to_dtype(DType::F32)?)?.i(0)?.to_vec1()?)
    }

    /// Greedy decoding of the answer to the last turn; `prefixes[i]` is turn i's image.
    pub fn generate(&self, turns: &[Turn], prefixes: &[&Tensor]) -> Result<Generated, ModelError> {
        let _fused = super::nn::inference(&self.device);
        let m = self.config().projector.num_tokens;
        let prompt = build_prompt(&self.tokenizer, turns, m)?;
        let ids = Tensor::from_vec(prompt.ids.clone(), (1, prompt.ids.len()), &self.device)?;
        let prefixes: Vec<Tensor> = prefixes.iter().map(|t| (*t).clone()).collect();
        let embeds = self
            .model
            .prompt_embeds(&ids, &prompt.image_starts, &prefixes)?;
        let mut cache = KvCache::default();
        let mut hidden = self
            .model
            .decoder
            .forward_embeds(&embeds, Some(&mut cache))?;
        let eot = self.tokenizer.end_of_turn;
        let mut out = Vec::new();
        let mut logprobs = Vec::new();
        let max_new = self.config().max_new_tokens;
        for _ in 0..max_new {
            if self.cancel.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            let last = hidden.i((0, hidden.dim(1)? - 1))?;
            let logits = self.model.decoder.logits(&last)?.to_dtype(DType::F32)?;
            let lsm = candle_nn::ops::log_softmax(&logits, 0)?;
            let next = lsm.argmax(0)?.to_scalar::<u32>()?;
            let lp = lsm.i(next as usize)?.to_scalar::<f32>()?;
            if next == eot {
                break;
            }
            out.push(next);
            logprobs.push(lp);
            let x = Tensor::from_vec(vec![next], (1, 1), &self.device)?;
            let e = self.model.decoder.embed(&x)?;
            hidden = self.model.decoder.forward_embeds(&e, Some(&mut cache))?;
        }
        // byte span of every generated token in the decoded text (incremental decoding)
        let mut spans = Vec::with_capacity(out.len());
        let mut prev = String::new();
        for k in 1..=out.len() {
            let t = self.tokenizer.decode(&out[..k])?;
            let start = if t.starts_with(&prev) { prev.len() } else { 0 };
            spans.push(start.min(t.len())..t.len());
            prev = t;
        }
        Ok(Generated {
            ids: out,
            text: prev,
            logprobs,
            spans,
        })
    }

    /// How likely the image shows what `phrase` names: the sigmoid image–text score
    /// σ(exp(t′)·cos(image, text) + b) the sigmoid loss trains, in (0, 1).
    pub fn presence(&self, img: &EncodedImage, phrase: &str) -> Result<f32, ModelError> {
        let t = self.embed_text(phrase)?;
        let cos: f32 = img.embedding.iter().zip(&t).map(|(a, b)| a * b).sum();
        let (scale, bias) = self.sigmoid_params()?;
        Ok(1.0 / (1.0 + (-(scale * cos + bias)).exp()))
    }

    /// The sigmoid loss's temperature t = exp(t′) and bias b.
    pub fn sigmoid_params(&self) -> Result<(f32, f32), ModelError> {
        let first = |t: &Tensor| -> Result<f32, ModelError> {
            Ok(t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0))
        };
        Ok((
            first(&self.model.logit_scale)?.exp(),
            first(&self.model.logit_bias)?,
        ))
    }

    /// Grounding that first asks whether the finding is there: the presence score, and the
    /// boxes only when it reaches the model's threshold (all boxes when the model has none).
    pub fn ground_checked(
        &self,
        img: &EncodedImage,
        phrase: &str,
        shots: &[Shot],
    ) -> Result<Grounding, ModelError> {
        let presence = self.presence(img, phrase)?;
        let threshold = self.config().presence_threshold;
        let present = threshold.is_none_or(|t| presence >= t);
        let boxes = if present {
            self.ground(img, phrase, shots)?
        } else {
            Vec::new()
        };
        Ok(Grounding {
            boxes,
            presence,
            threshold,
            present,
        })
    }

    /// Phrase grounding with `shots` solved examples before the query (K = shots.len()).
    pub fn ground(
        &self,
        img: &EncodedImage,
        phrase: &str,
        shots: &[Shot],
    ) -> Result<Vec<ScoredBox>, ModelError> {
        let mut turns = Vec::with_capacity(shots.len() + 1);
        let mut prefixes = Vec::with_capacity(shots.len() + 1);
        for s in shots {
            let unit: Vec<UnitBox> = s
                .boxes_px
                .iter()
                .map(|b| s.image.letterbox.to_unit(*b))
                .collect();
            turns.push(Turn {
                instruction: Instruction::Ground(s.phrase.clone()),
                response: Some(ground_response(&unit)),
                supervised: false,
            });
            prefixes.push(&s.image.prefix);
        }
        turns.push(Turn {
            instruction: Instruction::Ground(phrase.to_string()),
            response: None,
            supervised: false,
        });
        prefixes.push(&img.prefix);
        let g = self.generate(&turns, &prefixes)?;
        let mut boxes: Vec<ScoredBox> = parse_boxes(&g.text)
            .into_iter()
            .map(|pb| {
                let lps: Vec<f32> = g
                    .spans
                    .iter()
                    .zip(&g.logprobs)
                    .filter(|(sp, _)| sp.start < pb.span.end && sp.end > pb.span.start)
                    .map(|(_, lp)| *lp)
                    .collect();
                let score = if lps.is_empty() {
                    0.0
                } else {
                    (lps.iter().sum::<f32>() / lps.len() as f32).exp()
                };
                ScoredBox::from_unit(&img.letterbox, pb.unit, score)
            })
            .filter(|b| b.x2 > b.x1 && b.y2 > b.y1)
            .collect();
        boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(boxes)
    }

    /// Phrase grounding without examples in the prompt, each predicted box then fused with the
    /// nearest boxes of the retrieved solved cases (`fusion::fuse_with_cases`).
    pub fn ground_fused(
        &self,
        img: &EncodedImage,
        phrase: &str,
        cases: &[Shot],
    ) -> Result<Vec<ScoredBox>, ModelError> {
        let pred: Vec<(UnitBox, f32)> = self
            .ground(img, phrase, &[])?
            .into_iter()
            .map(|b| (img.letterbox.to_unit([b.x1, b.y1, b.x2, b.y2]), b.score))
            .collect();
        let case_boxes: Vec<Vec<UnitBox>> = cases
            .iter()
            .map(|c| {
                c.boxes_px
                    .iter()
                    .map(|b| c.image.letterbox.to_unit(*b))
                    .collect()
            })
            .collect();
        Ok(super::fusion::fuse_with_cases(&pred, &case_boxes)
            .into_iter()
            .map(|(u, score)| ScoredBox::from_unit(&img.letterbox, u, score))
            .collect())
    }

    /// Grounded captioning of one region given in original pixels.
    pub fn describe(&self, img: &EncodedImage, box_px: [f32; 4]) -> Result<String, ModelError> {
        let unit = img.letterbox.to_unit(box_px);
        let turn = Turn {
            instruction: Instruction::Describe(vec![unit]),
            response: None,
            supervised: false,
        };
        Ok(self
            .generate(&[turn], &[&img.prefix])?
            .text
            .trim()
            .to_string())
    }

    /// Report text.
    pub fn caption(&self, img: &EncodedImage) -> Result<String, ModelError> {
        let turn = Turn {
            instruction: Instruction::Caption,
            response: None,
            supervised: false,
        };
        Ok(self
            .generate(&[turn], &[&img.prefix])?
            .text
            .trim()
            .to_string())
    }

    /// Every finding the model reports, with boxes: the findings its caption names, and those of
    /// the model's `finding_phrases` whose presence score reaches its threshold; each is
    /// grounded, and each box is described back (dense captioning) for its phrase.
    pub fn findings(&self, img: &EncodedImage) -> Result<Vec<Region>, ModelError> {
        let caption = self.caption(img)?;
        let mut asked = split_findings(&caption);
        if let Some(t) = self.config().presence_threshold {
            for p in &self.config().finding_phrases {
                let p = p.trim().to_lowercase();
                if !asked.contains(&p) && self.presence(img, &p)? >= t {
                    asked.push(p);
                }
            }
        }
        let mut regions = Vec::new();
        for finding in asked {
            for b in self.ground(img, &finding, &[])? {
                let described = self.describe(img, [b.x1, b.y1, b.x2, b.y2])?;
                let phrase = if described.is_empty() {
                    finding.clone()
                } else {
                    described
                };
                regions.push(Region {
                    phrase,
                    x1: b.x1,
                    y1: b.y1,
                    x2: b.x2,
                    y2: b.y2,
                    score: b.score,
                });
            }
        }
        regions.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(regions)
    }
}

/// Finding phrases of a caption ("cardiomegaly, small left effusion." → two), skipping
/// normal statements.
pub fn split_findings(caption: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in caption.split([',', ';', '.', '\n']) {
        let p = part.trim().to_lowercase();
        if p.is_empty() || p.starts_with("no finding") || p.starts_with("no acute") || p == "normal"
        {
            continue;
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn load_center(
    files: &[PathBuf],
    device: &Device,
    dim: usize,
) -> Result<Option<Tensor>, ModelError> {
    let st = super::load::mmap(files)?;
    if st.get(EMBEDDING_CENTER).is_err() {
        return Ok(None);
    }
    let t = st.load(EMBEDDING_CENTER, device)?.to_dtype(DType::F32)?;
    if t.dims() != [dim] {
        return Err(ModelError::Weights(format!(
            "{EMBEDDING_CENTER}: shape {:?}, expected [{dim}]",
            t.dims()
        )));
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_split() {
        assert_eq!(
            split_findings("Cardiomegaly, effusion. cardiomegaly"),
            vec!["cardiomegaly", "effusion"]
        );
        assert!(split_findings("No finding.").is_empty());
        assert!(split_findings("").is_empty());
    }
}
