//! One training step: the model over its parameter store, the frozen encoder's feature cache, the
//! label-text bank of a locked-text model, and a batch's losses and gradients.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::model::config::{Config, LoraConfig, Preset};
use crate::model::params::{ParamStore, TrainableFn};
use crate::model::prompt::{build_prompt, Turn};
use crate::model::tokenizer::LofiTokenizer;
use crate::model::{l2_normalize, LofiModel};

use super::config::{Freeze, SigmoidPositives, TrainConfig};
use super::data::{Sample, TaskKind, TrainImage};
use super::loss;
use super::metrics::{mean_off_diagonal_cosine, LossParts};
use super::TrainError;

/// Cached encoder features of one image (frozen-encoder training): the backbone's tokens; the
/// pooled embedding is computed from them by the (trained) MAP head in each step.
#[derive(Debug, Clone)]
pub(crate) struct Features {
    pub(crate) tokens: Tensor,
}

/// The label texts of a locked-text (Gemma-kind) model with their frozen Gemma features: every
/// image of a batch is scored against every text, and a text is a positive for the images that
/// carry its finding (multi-label sigmoid loss).
#[derive(Debug, Clone)]
pub struct TextBank {
    /// The texts (label phrases and their synonyms, and "no finding").
    pub texts: Vec<String>,
    /// The label phrase each text stands for; empty for "no finding".
    pub keys: Vec<String>,
    /// Frozen features `(T, H)`.
    pub features: Tensor,
}

impl TextBank {
    /// Sigmoid targets `(B, T)`: +1 where sample i carries text j's finding, −1 elsewhere.
    pub fn targets(&self, samples: &[Sample], device: &Device) -> Result<Tensor, TrainError> {
        let t = self.keys.len();
        let mut z = vec![-1f32; samples.len() * t];
        for (i, s) in samples.iter().enumerate() {
            for (j, k) in self.keys.iter().enumerate() {
                let pos = if k.is_empty() {
                    s.label_keys.is_empty()
                } else {
                    s.label_keys.contains(k)
                };
                if pos {
                    z[i * t + j] = 1.0;
                }
            }
        }
        Ok(Tensor::from_vec(z, (samples.len(), t), device)?)
    }
}

/// Everything a training step needs.
pub struct Trainer {
    /// The model (built over `store`).
    pub model: LofiModel,
    /// Its parameters.
    pub store: Arc<ParamStore>,
    /// Tokenizer.
    pub tokenizer: LofiTokenizer,
    /// Model configuration.
    pub model_cfg: Config,
    /// Training configuration.
    pub cfg: TrainConfig,
    /// Device.
    pub device: Device,
    pub(crate) cache: Option<Vec<Features>>,
    /// Label texts and their frozen features (Gemma-kind text side), see [`Trainer::build_text_bank`].
    pub text_bank: Option<TextBank>,
}

/// The model config and tokenizer a run starts from, and where initial weights come from.
#[allow(clippy::type_complexity)]
pub fn resolve_model(
    cfg: &TrainConfig,
) -> Result<
    (
        Config,
        LofiTokenizer,
        Option<Box<dyn candle_nn::var_builder::SimpleBackend>>,
    ),
    TrainError,
> {
    if let Some(dir) = &cfg.init {
        let files = crate::model::load::ModelFiles::locate(dir)?;
        let mc = Config::from_file(&files.config)?;
        let tok = LofiTokenizer::from_file(&files.tokenizer, &mc.tokens)?;
        let st = crate::model::load::mmap(&files.weights_for(&mc)?)?;
        return Ok((mc, tok, Some(Box::new(st))));
    }
    let preset: Preset = cfg.preset.parse()?;
    let mut mc = Config::preset(preset);
    if let Some(s) = cfg.image_size {
        mc.image_size = s;
    }
    if let Some(b) = &mc.vision.base {
        // a pretrained backbone from the base folder (and, for a Gemma-size decoder, the
        // pretrained Gemma 3 270M from the base GGUF); everything else starts fresh
        use crate::model::base;
        let gemma_decoder = mc.decoder.vocab_size == crate::model::config::GEMMA3_VOCAB;
        let source: Box<dyn candle_nn::var_builder::SimpleBackend> = if gemma_decoder {
            let mut w: std::collections::HashMap<String, Tensor> =
                candle_core::safetensors::load(base::base_file(b)?, &Device::Cpu)?
                    .into_iter()
                    .collect();
            let (gc, g) = base::gemma_weights_from_gguf(
                &base::base_file(base::GEMMA3_270M_GGUF)?,
                "decoder.model.",
                DType::F32,
                &Device::Cpu,
            )?;
            mc.decoder = crate::model::config::DecoderConfig {
                max_position_embeddings: mc.decoder.max_position_embeddings,
                ..gc
            };
            w.extend(g);
            Box::new(w)
        } else {
            Box::new(crate::model::load::mmap(&[base::base_file(b)?])?)
        };
        let tok_path = match (&cfg.tokenizer, gemma_decoder) {
            (Some(p), _) => p.clone(),
            (None, true) => base::base_file(base::GEMMA3_TOKENIZER)?,
            (None, false) => {
                return Err(TrainError::Config(
                    "a new decoder needs `tokenizer` (path to tokenizer.json)".into(),
                ))
            }
        };
        let tok = LofiTokenizer::from_file(&tok_path, &mc.tokens)?;
        if cfg.freeze == Freeze::Lora {
            mc.lora = Some(LoraConfig::default());
        }
        mc.validate()?;
        return Ok((mc, tok, Some(source)));
    }
    let hf = cfg.init_siglip.is_some() || cfg.init_gemma.is_some();
    let source: Option<Box<dyn candle_nn::var_builder::SimpleBackend>> = if hf {
        mc = crate::model::load::config_from_hf(
            mc,
            cfg.init_siglip.as_deref(),
            cfg.init_gemma.as_deref(),
        )?;
        Some(Box::new(crate::model::load::HfSources::open(
            cfg.init_siglip.as_deref(),
            cfg.init_gemma.as_deref(),
        )?))
    } else {
        None
    };
    let tok_path = match (&cfg.tokenizer, &cfg.init_gemma) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => g.join("tokenizer.json"),
        (None, None) => {
            return Err(TrainError::Config(
                "a model trained from scratch needs `tokenizer` (path to tokenizer.json)".into(),
            ))
        }
    };
    let tok = LofiTokenizer::from_file(&tok_path, &mc.tokens)?;
    if tok.vocab_size() > mc.decoder.vocab_size {
        return Err(TrainError::Config(format!(
            "tokenizer has {} tokens, decoder vocabulary {}",
            tok.vocab_size(),
            mc.decoder.vocab_size
        )));
    }
    if cfg.freeze == Freeze::Lora {
        mc.lora = Some(LoraConfig::default());
    }
    mc.validate()?;
    Ok((mc, tok, source))
}

fn trainable_fn(freeze: Freeze, freeze_text: bool, freeze_embedding: bool) -> TrainableFn {
    let inner = trainable_fn_inner(freeze);
    let inner: TrainableFn = if freeze_embedding {
        Arc::new(move |n: &str| {
            !n.starts_with("vision_model.head.")
                && !n.starts_with("text_model.head.")
                && !n.starts_with("logit_")
                && inner(n)
        })
    } else {
        inner
    };
    // fixed centring buffers, set from the data before training (`Trainer::set_centers`)
    let inner: TrainableFn = Arc::new(move |n: &str| {
        !n.ends_with(crate::model::vision::HEAD_CENTER)
            && !n.ends_with(crate::model::text::FEATURE_CENTER)
            && inner(n)
    });
    if freeze_text {
        Arc::new(move |n: &str| !n.starts_with("text_model.") && inner(n))
    } else {
        inner
    }
}

fn trainable_fn_inner(freeze: Freeze) -> TrainableFn {
    match freeze {
        Freeze::Full => Arc::new(|_| true),
        // the pooled-embedding head sits on the frozen tokens and trains
        Freeze::Encoder => Arc::new(|n: &str| {
            !n.starts_with("vision_model.") || n.starts_with("vision_model.head.")
        }),
        Freeze::Lora => Arc::new(|n: &str| {
            n.contains("lora_")
                || n.contains(".head.")
                || n.starts_with("projector.")
                || n.starts_with("logit_")
        }),
    }
}

impl Trainer {
    /// Build the model and parameters for a run (f32).
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self, TrainError> {
        Self::with_dtype(cfg, device, DType::F32)
    }

    /// Build with an explicit parameter dtype (f64 for finite-difference checks).
    pub fn with_dtype(cfg: TrainConfig, device: Device, dtype: DType) -> Result<Self, TrainError> {
        cfg.check()?;
        let (model_cfg, tokenizer, source) = resolve_model(&cfg)?;
        let store = ParamStore::new(
            cfg.seed,
            source,
            trainable_fn(cfg.freeze, cfg.freeze_text, cfg.freeze_embedding),
        );
        let vb = store.var_builder(dtype, &device);
        // the sigmoid bias is created first so a from-scratch run starts from the configured value
        let _ = vb.get_with_hints(
            1,
            "logit_bias",
            candle_nn::Init::Const(cfg.sigmoid_bias_init),
        )?;
        let model = LofiModel::new(&model_cfg, vb)?;
        Ok(Self {
            model,
            store,
            tokenizer,
            model_cfg,
            cfg,
            device,
            cache: None,
            text_bank: None,
        })
    }

    /// For a Gemma-kind text side: the label texts of `images` (each finding's label phrase, the
    /// synonyms of its regions, and "no finding") with their frozen Gemma features, computed once.
    pub fn build_text_bank(&mut self, images: &[TrainImage]) -> Result<(), TrainError> {
        if self.model_cfg.text.kind != crate::model::config::TextKind::Gemma {
            return Ok(());
        }
        let mut pairs: std::collections::BTreeSet<(String, String)> = Default::default();
        pairs.insert((String::new(), "no finding".into()));
        for img in images {
            for k in &img.label_keys {
                pairs.insert((k.clone(), k.clone()));
            }
            for r in &img.regions {
                let key = crate::manifest::label_phrase(&r.finding);
                pairs.insert((key.clone(), r.phrase_basic.clone()));
                for syn in &r.synonyms {
                    pairs.insert((key.clone(), syn.clone()));
                }
            }
        }
        let (keys, texts): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        let gemma = crate::model::gemma_text::GemmaText::load_base(&self.device, DType::F32)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let features = gemma.features(&refs)?;
        tracing::info!(
            "text bank: {} texts of {} findings",
            texts.len(),
            keys.iter().collect::<std::collections::BTreeSet<_>>().len()
        );
        self.text_bank = Some(TextBank {
            texts,
            keys,
            features,
        });
        Ok(())
    }

    /// Set the fixed centring buffers from the data when they are still zero (a new head; a
    /// model that has them keeps its own): the mean token of the cached features
    /// (`vision_model.head_center`) and the mean of the text bank's features
    /// (`text_model.feature_center`).
    pub fn set_centers(&mut self) -> Result<(), TrainError> {
        let tensors = self.store.tensors();
        let zero = |k: &str| -> Result<bool, TrainError> {
            Ok(match tensors.get(k) {
                Some(t) => {
                    t.abs()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                        == 0.0
                }
                None => false,
            })
        };
        let mut update = BTreeMap::new();
        let hk = format!("vision_model.{}", crate::model::vision::HEAD_CENTER);
        if zero(&hk)? {
            if let Some(cache) = &self.cache {
                let d = self.model_cfg.vision.hidden_size;
                let mut sum = Tensor::zeros(d, DType::F32, &self.device)?;
                for f in cache {
                    sum = (sum + f.tokens.to_dtype(DType::F32)?.mean(0)?)?;
                }
                let c = (sum / cache.len().max(1) as f64)?;
                update.insert(hk, c.to_dtype(self.model.decoder.dtype())?);
            }
        }
        let tk = format!("text_model.{}", crate::model::text::FEATURE_CENTER);
        if zero(&tk)? {
            if let Some(bank) = &self.text_bank {
                let c = bank.features.mean(0)?;
                update.insert(tk, c.to_dtype(self.model.decoder.dtype())?);
            }
        }
        if !update.is_empty() {
            tracing::info!(
                "centring buffers set: {:?}",
                update.keys().collect::<Vec<_>>()
            );
            self.store.set(&update)?;
        }
        Ok(())
    }

    /// Compute and keep the frozen encoder's features of `images` (frozen-encoder mode).
    pub fn cache_features(&mut self, images: &[TrainImage]) -> Result<(), TrainError> {
        self.cache_features_with(images, &|_| {})
    }

    /// [`Self::cache_features`], reporting the number of images done after each batch.
    pub fn cache_features_with(
        &mut self,
        images: &[TrainImage],
        progress: &dyn Fn(usize),
    ) -> Result<(), TrainError> {
        let mut all = Vec::with_capacity(images.len());
        for chunk in images.chunks(16) {
            let px: Vec<Vec<f32>> = chunk
                .iter()
                .map(|i| crate::model::image::normalize(i.square.as_raw()))
                .collect();
            self.cache_pixel_features(&px)?;
            all.extend(self.cache.take().unwrap_or_default());
            progress(all.len());
        }
        self.cache = Some(all);
        Ok(())
    }

    /// Compute and keep the frozen encoder's features of normalised squares (frozen-encoder
    /// mode); cache index i is `pixels[i]`.
    pub fn cache_pixel_features(&mut self, pixels: &[Vec<f32>]) -> Result<(), TrainError> {
        let mut out = Vec::with_capacity(pixels.len());
        for chunk in pixels.chunks(16) {
            let t = self.pixels_tensor(chunk)?;
            let tokens = self.model.vision.tokens(&t)?;
            for i in 0..chunk.len() {
                out.push(Features {
                    tokens: tokens.get(i)?.detach(),
                });
            }
        }
        self.cache = Some(out);
        Ok(())
    }

    fn pixels_tensor(&self, px: &[Vec<f32>]) -> Result<Tensor, TrainError> {
        let s = self.model_cfg.image_size;
        let c = self.model_cfg.vision.num_channels;
        let flat: Vec<f32> = px.iter().flat_map(|p| p.iter().copied()).collect();
        let t = Tensor::from_vec(flat, (px.len(), 1, s, s), &self.device)?
            .to_dtype(self.model.decoder.dtype())?;
        Ok(if c > 1 { t.repeat((1, c, 1, 1))? } else { t })
    }

    /// Forward pass and loss of a batch. With `cached`, `cached[i]` indexes the frozen encoder's
    /// feature cache for sample i; otherwise the images are encoded.
    pub fn batch_loss(
        &self,
        samples: &[Sample],
        cached: Option<&[usize]>,
    ) -> Result<(Tensor, LossParts), TrainError> {
        let b = samples.len();
        let (tokens, pooled) = match (&self.cache, cached) {
            (Some(cache), Some(image_idx)) => {
                let t: Vec<Tensor> = image_idx.iter().map(|&i| cache[i].tokens.clone()).collect();
                let t = Tensor::stack(&t, 0)?;
                let p = self.model.vision.pool(&t)?;
                (t, p)
            }
            _ => {
                let px: Vec<Vec<f32>> = samples.iter().map(|s| s.pixels.clone()).collect();
                let o = self.model.encode_images(&self.pixels_tensor(&px)?)?;
                let pooled = match o.pooled {
                    Some(p) => p,
                    None => o.tokens.mean(1)?,
                };
                (o.tokens, pooled)
            }
        };
        // sigmoid loss
        let (txt, sig) = self.sigmoid_part(samples, &pooled)?;
        let img = l2_normalize(&pooled)?;
        // decoder losses
        let m = self.model_cfg.projector.num_tokens;
        let prefix = self.model.projector.forward(&tokens)?;
        let prompts = samples
            .iter()
            .map(|s| {
                let mut turns: Vec<Turn> = s.shots.iter().map(|(_, t)| t.clone()).collect();
                turns.push(s.turn.clone());
                build_prompt(&self.tokenizer, &turns, m)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // every prompt's first image (an example's or the query's) sits at the same position
        let start = prompts[0].image_starts[0];
        if prompts.iter().any(|p| p.image_starts[0] != start) {
            return Err(TrainError::Data(
                "prompts disagree on the image position".into(),
            ));
        }
        // samples with in-context examples have much longer prompts: they run through the
        // decoder as a second group, so the single-image prompts are not padded to their length
        let plain: Vec<usize> = (0..b).filter(|&i| samples[i].shots.is_empty()).collect();
        let with_shots: Vec<usize> = (0..b).filter(|&i| !samples[i].shots.is_empty()).collect();
        let (mut cap_h, mut cap_tgt, mut loc_h, mut loc_tgt) = (vec![], vec![], vec![], vec![]);
        for group in [plain, with_shots] {
            if group.is_empty() {
                continue;
            }
            let n = group.len();
            let t_max = group
                .iter()
                .map(|&i| prompts[i].ids.len())
                .max()
                .unwrap_or(0);
            let mut flat_ids = Vec::with_capacity(n * t_max);
            let (mut cap_rows, mut loc_rows) = (vec![], vec![]);
            for (gi, &bi) in group.iter().enumerate() {
                let (p, s) = (&prompts[bi], &samples[bi]);
                for t in 0..t_max {
                    let id = p.ids.get(t).copied().unwrap_or(self.tokenizer.pad);
                    flat_ids.push(id);
                    if t >= 1 && p.targets.get(t).copied().unwrap_or(false) {
                        let row = (gi * t_max + t - 1) as u32;
                        match s.kind {
                            TaskKind::Caption => {
                                cap_rows.push(row);
                                cap_tgt.push(id);
                            }
                            TaskKind::Location => {
                                loc_rows.push(row);
                                loc_tgt.push(id);
                            }
                        }
                    }
                }
            }
            let ids = Tensor::from_vec(flat_ids, (n, t_max), &self.device)?;
            let embeds = if samples[group[0]].shots.is_empty() {
                let pre = if n == b {
                    prefix.clone()
                } else {
                    let rows: Vec<u32> = group.iter().map(|&i| i as u32).collect();
                    prefix.index_select(&Tensor::from_vec(rows, n, &self.device)?, 0)?
                };
                self.model.prompt_embeds(&ids, &[start], &[pre])?
            } else {
                self.embeds_with_shots(samples, &prompts, &group, &ids, &prefix)?
            };
            let hidden = self.model.decoder.forward_embeds(&embeds, None)?;
            let hidden = hidden.reshape((n * t_max, ()))?;
            for (rows, out) in [(cap_rows, &mut cap_h), (loc_rows, &mut loc_h)] {
                if !rows.is_empty() {
                    let k = rows.len();
                    out.push(hidden.index_select(&Tensor::from_vec(rows, k, &self.device)?, 0)?);
                }
            }
        }
        let ce = |h: Vec<Tensor>, tgt: Vec<u32>| -> Result<Option<Tensor>, TrainError> {
            if h.is_empty() {
                return Ok(None);
            }
            let h = if h.len() == 1 {
                h[0].clone()
            } else {
                Tensor::cat(&h, 0)?
            };
            let n = tgt.len();
            let tgt = Tensor::from_vec(tgt, n, &self.device)?;
            let logits = self.model.decoder.logits(&h)?;
            Ok(Some(loss::cross_entropy(&logits, &tgt)?))
        };
        let cap = ce(cap_h, cap_tgt)?;
        let loc = ce(loc_h, loc_tgt)?;
        let scalar = |t: &Option<Tensor>| -> Result<f64, TrainError> {
            Ok(match t {
                Some(t) => t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 0.0,
            })
        };
        let parts_dec = match (&cap, &loc) {
            (Some(c), Some(l)) => Some((c + l)?),
            (Some(c), None) => Some(c.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => None,
        };
        let total = match parts_dec {
            Some(d) => (&sig + (d * self.cfg.lambda)?)?,
            None => sig.clone(),
        };
        let parts = LossParts {
            total: total.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            sig: sig.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            cap: scalar(&cap)?,
            loc: scalar(&loc)?,
            img_sim: mean_off_diagonal_cosine(&img)?,
            txt_sim: mean_off_diagonal_cosine(&txt)?,
        };
        Ok((total, parts))
    }

    /// The sigmoid loss of a batch and the normalised text embeddings it used: against the
    /// label-text bank for a Gemma-kind text side, else against each sample's own text.
    fn sigmoid_part(
        &self,
        samples: &[Sample],
        pooled: &Tensor,
    ) -> Result<(Tensor, Tensor), TrainError> {
        let b = samples.len();
        let img = l2_normalize(pooled)?;
        if self.model_cfg.text.kind == crate::model::config::TextKind::Gemma {
            let bank = self.text_bank.as_ref().ok_or_else(|| {
                TrainError::Data(
                    "a Gemma-kind text side needs the text bank (build_text_bank)".into(),
                )
            })?;
            let f = bank.features.to_dtype(img.dtype())?;
            let txt = l2_normalize(&self.model.text.head_forward(&f)?)?;
            let z = bank.targets(samples, &self.device)?.to_dtype(img.dtype())?;
            let sig = loss::sigmoid_loss_targets(
                &img,
                &txt,
                &self.model.logit_scale,
                &self.model.logit_bias,
                &z,
            )?;
            return Ok((txt, sig));
        }
        let len = self.model.text.max_len();
        let mut ids = Vec::with_capacity(b * len);
        for s in samples {
            ids.extend(
                self.tokenizer
                    .encode_fixed(&s.text, len, self.model.text.pad_left())?,
            );
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let txt = l2_normalize(&self.model.text.embed(&ids, self.tokenizer.pad)?)?;
        let z = loss::pair_targets(
            &samples.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
            self.cfg.sigmoid_positives == SigmoidPositives::SameText,
            &self.device,
        )?;
        let sig = loss::sigmoid_loss_targets(
            &img,
            &txt,
            &self.model.logit_scale,
            &self.model.logit_bias,
            &z.to_dtype(img.dtype())?,
        )?;
        Ok((txt, sig))
    }

    /// Decoder input embeddings of a batch in which some samples carry solved examples: each
    /// sample's prompt gets its examples' prefixes (projected from the feature cache, whose index
    /// each shot holds) and then its own `prefix` row, at that prompt's own image positions.
    fn embeds_with_shots(
        &self,
        samples: &[Sample],
        prompts: &[crate::model::prompt::Prompt],
        group: &[usize],
        ids: &Tensor,
        prefix: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let cache = self.cache.as_ref().ok_or_else(|| {
            TrainError::Data("in-context examples need the frozen encoder's feature cache".into())
        })?;
        let shot_idx: Vec<usize> = group
            .iter()
            .flat_map(|&i| samples[i].shots.iter().map(|(c, _)| *c))
            .collect();
        let toks = shot_idx
            .iter()
            .map(|&c| {
                cache.get(c).map(|f| f.tokens.clone()).ok_or_else(|| {
                    TrainError::Data(format!(
                        "in-context example {c} is not in the feature cache"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shot_prefix = self.model.projector.forward(&Tensor::stack(&toks, 0)?)?;
        let mut rows = Vec::with_capacity(group.len());
        let mut next = 0;
        for (gi, &i) in group.iter().enumerate() {
            let (s, p) = (&samples[i], &prompts[i]);
            let mut pre = Vec::with_capacity(s.shots.len() + 1);
            for _ in &s.shots {
                pre.push(shot_prefix.narrow(0, next, 1)?);
                next += 1;
            }
            pre.push(prefix.narrow(0, i, 1)?);
            rows.push(
                self.model
                    .prompt_embeds(&ids.narrow(0, gi, 1)?, &p.image_starts, &pre)?,
            );
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Gradients of the trainable parameters for one batch.
    pub fn grads(
        &self,
        samples: &[Sample],
        image_idx: &[usize],
    ) -> Result<(BTreeMap<String, Tensor>, LossParts), TrainError> {
        let (total, parts) = self.batch_loss(samples, Some(image_idx))?;
        let gs = total.backward()?;
        let mut out = BTreeMap::new();
        for (name, var) in self.store.trainable() {
            if let Some(g) = gs.get(var.as_tensor()) {
                out.insert(name, g.clone());
            }
        }
        Ok((out, parts))
    }
}
