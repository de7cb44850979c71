//! The pretrained towers on their real weights (imported by `scripts/setup-weights.sh`, which
//! `check.sh` runs first; a missing file fails these tests with the set-up command's name):
//! DINOv2 against candle-transformers' `dinov2` and against the ONNX file's own output, Gemma 3
//! 270M against candle-transformers' `quantized_gemma3`, the GGUF tokenizer, and a LoRA step.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Optimizer, VarBuilder};
use candle_transformers::models::{dinov2, gemma3, quantized_gemma3};
use lofi_viewer::model::base;
use lofi_viewer::model::config::{VisionConfig, VisionKind};
use lofi_viewer::model::decoder::{Decoder, KvCache};
use lofi_viewer::model::dinov2::Dinov2;
use lofi_viewer::model::nn::{Activation, LoraSpec};
use lofi_viewer::model::params::ParamStore;

use super::common::{fixtures, max_abs_diff};

fn dinov2_small_cfg(image_size: usize) -> VisionConfig {
    VisionConfig {
        kind: VisionKind::Dinov2,
        hidden_size: 384,
        intermediate_size: 1536,
        num_hidden_layers: 12,
        num_attention_heads: 6,
        num_channels: 3,
        image_size,
        patch_size: 14,
        layer_norm_eps: 1e-6,
        patch_embedding: Default::default(),
        vision_use_head: false,
        base: None,
    }
}

fn dinov2_weights() -> HashMap<String, Tensor> {
    let path = base::base_file(base::DINOV2_SMALL).unwrap();
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn ours(weights: &HashMap<String, Tensor>, eps: f64) -> Dinov2 {
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let cfg = VisionConfig {
        layer_norm_eps: eps,
        ..dinov2_small_cfg(518)
    };
    Dinov2::new(&cfg, None, vb.pp("vision_model")).unwrap()
}

/// Our keys (HF Dinov2 layout) → candle-transformers' (timm layout: fused qkv, ls1.gamma, …).
fn to_timm(w: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let g = |k: &str| w[&format!("vision_model.{k}")].clone();
    let mut out = HashMap::new();
    out.insert("cls_token".into(), g("embeddings.cls_token"));
    out.insert("pos_embed".into(), g("embeddings.position_embeddings"));
    out.insert(
        "patch_embed.proj.weight".into(),
        g("embeddings.patch_embeddings.projection.weight"),
    );
    out.insert(
        "patch_embed.proj.bias".into(),
        g("embeddings.patch_embeddings.projection.bias"),
    );
    out.insert("norm.weight".into(), g("layernorm.weight"));
    out.insert("norm.bias".into(), g("layernorm.bias"));
    out.insert(
        "head.weight".into(),
        Tensor::zeros((1000, 768), DType::F32, &Device::Cpu).unwrap(),
    );
    out.insert(
        "head.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    for i in 0..12 {
        let l = |k: &str| g(&format!("encoder.layer.{i}.{k}"));
        let b = format!("blocks.{i}");
        for (ours, theirs) in [
            ("norm1", "norm1"),
            ("norm2", "norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
            ("attention.output.dense", "attn.proj"),
        ] {
            out.insert(format!("{b}.{theirs}.weight"), l(&format!("{ours}.weight")));
            out.insert(format!("{b}.{theirs}.bias"), l(&format!("{ours}.bias")));
        }
        for p in ["weight", "bias"] {
            let qkv = Tensor::cat(
                &[
                    l(&format!("attention.attention.query.{p}")),
                    l(&format!("attention.attention.key.{p}")),
                    l(&format!("attention.attention.value.{p}")),
                ],
                0,
            )
            .unwrap();
            out.insert(format!("{b}.attn.qkv.{p}"), qkv);
        }
        out.insert(format!("{b}.ls1.gamma"), l("layer_scale1.lambda1"));
        out.insert(format!("{b}.ls2.gamma"), l("layer_scale2.lambda1"));
    }
    out
}

#[test]
fn dinov2_matches_candle_transformers_on_the_imported_weights() {
    let w = dinov2_weights();
    // candle-transformers' dinov2 uses layer-norm eps 1e-5 (DINOv2's config: 1e-6) and the
    // tanh GELU (DINOv2: erf, as the ONNX test checks): the same here
    let ours = ours(&w, 1e-5).with_mlp_activation(Activation::GeluTanh);
    let stock = dinov2::vit_small(VarBuilder::from_tensors(
        to_timm(&w),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    // 518 px = the pretrained 37 × 37 grid: candle-transformers interpolates only other sizes
    // (with nearest neighbours, where DINOv2 and we use bicubic)
    let x = Tensor::randn(0f32, 1.0, (1, 3, 518, 518), &Device::Cpu).unwrap();
    let o = ours.forward_normalised(&x).unwrap();
    let s = stock
        .get_intermediate_layers(&x, &[11], false, false, true)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = max_abs_diff(&o.patches, &s);
    assert!(d < 1e-3, "patch tokens differ by {d}");
}

#[test]
fn dinov2_matches_the_onnx_output_on_a_real_image() {
    let ours = ours(&dinov2_weights(), 1e-6);
    let r = candle_core::safetensors::load(
        fixtures().join("dinov2/onnx-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = r["input"].to_dtype(DType::F32).unwrap();
    assert_eq!(x.dims(), &[1, 3, 224, 224]);
    // 224 px: the 37 × 37 position grid is resized to 16 × 16 (bicubic), as in the ONNX graph
    let o = ours.forward_normalised(&x).unwrap();
    let y = Tensor::cat(&[o.cls.unsqueeze(1).unwrap(), o.patches], 1).unwrap();
    let d = max_abs_diff(&y, &r["output"]);
    assert!(d <= 1e-3, "DINOv2 differs from the ONNX output by {d}");
}

#[test]
fn dinov2_takes_our_grey_pixels_at_448() {
    let ours = ours(&dinov2_weights(), 1e-6);
    let grey = Tensor::rand(-1f32, 1.0, (2, 1, 448, 448), &Device::Cpu).unwrap();
    let o = ours.forward(&grey).unwrap();
    assert_eq!(o.patches.dims(), &[2, 32 * 32, 384]);
    assert_eq!(o.cls.dims(), &[2, 384]);
    // grey in [-1, 1] is the same as its RGB copy ImageNet-normalised by hand
    let rgb = ((grey.repeat((1, 3, 1, 1)).unwrap() + 1.0).unwrap() / 2.0).unwrap();
    let mean = Tensor::new(&[0.485f32, 0.456, 0.406], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let std = Tensor::new(&[0.229f32, 0.224, 0.225], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let rgb = rgb
        .broadcast_sub(&mean)
        .unwrap()
        .broadcast_div(&std)
        .unwrap();
    let o2 = ours.forward_normalised(&rgb).unwrap();
    assert!(max_abs_diff(&o.patches, &o2.patches) < 1e-3);
}

fn gemma_tokens(text: &str) -> Vec<u32> {
    let tok =
        tokenizers::Tokenizer::from_file(base::base_file(base::GEMMA3_TOKENIZER).unwrap()).unwrap();
    let mut ids = vec![tok.token_to_id("<bos>").unwrap()];
    ids.extend(tok.encode(text, false).unwrap().get_ids());
    ids
}

fn argmax(logits: &Tensor) -> u32 {
    logits
        .flatten_all()
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}

fn quantized_continuation(prompt: &[u32], n_new: usize) -> Vec<u32> {
    let gguf = base::base_file(base::GEMMA3_270M_GGUF).unwrap();
    let mut f = std::fs::File::open(&gguf).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut q = quantized_gemma3::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for _ in 0..n_new {
        let x = Tensor::new(input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = q.forward(&x, pos).unwrap();
        pos += input.len();
        let next = argmax(&logits);
        out.push(next);
        input = vec![next];
    }
    out
}

fn our_gemma(lora: Option<LoraSpec>) -> (Decoder, Arc<ParamStore>) {
    let gguf = base::base_file(base::GEMMA3_270M_GGUF).unwrap();
    let (cfg, w) =
        base::gemma_weights_from_gguf(&gguf, "model.", DType::F32, &Device::Cpu).unwrap();
    let store = ParamStore::new(
        0,
        Some(Box::new(w)),
        Arc::new(|n: &str| n.contains("lora_")),
    );
    let dec = Decoder::new(&cfg, lora, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    (dec, store)
}

fn greedy(dec: &Decoder, prompt: &[u32], n_new: usize) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..n_new {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = dec
            .forward_embeds(&dec.embed(&ids).unwrap(), Some(&mut cache))
            .unwrap();
        let last = h.i((.., h.dim(1).unwrap() - 1, ..)).unwrap();
        let next = argmax(&dec.logits(&last).unwrap());
        out.push(next);
        input = vec![next];
    }
    out
}

fn decode(ids: &[u32]) -> String {
    let tok =
        tokenizers::Tokenizer::from_file(base::base_file(base::GEMMA3_TOKENIZER).unwrap()).unwrap();
    tok.decode(ids, true).unwrap()
}

const PROMPT: &str = "The chest X-ray shows a large right pleural effusion. The heart";

/// candle-transformers' `quantized_gemma3` applies SiLU in the MLP where Gemma 3 (HF
/// `gelu_pytorch_tanh`, and candle-transformers' own `gemma3`) applies GELU; with our decoder's
/// activation set to SiLU the two must agree token for token. Its weights are dequantised as ours
/// are (CANDLE_DEQUANTIZE_ALL, read once per thread when its first QMatMul is built), so both
/// models hold the same numbers; kept quantized, its matmuls also quantize the activations (Q8_K)
/// and the paths part after a few tokens.
#[test]
fn gemma_from_gguf_continues_like_quantized_gemma3() {
    let prompt = gemma_tokens(PROMPT);
    assert_eq!(prompt[0], 2, "<bos> is id 2 in Gemma 3");
    let n_new = 20;
    let p = prompt.clone();
    let theirs = std::thread::spawn(move || {
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        quantized_continuation(&p, n_new)
    })
    .join()
    .unwrap();
    let gguf = base::base_file(base::GEMMA3_270M_GGUF).unwrap();
    let (mut cfg, w) =
        base::gemma_weights_from_gguf(&gguf, "model.", DType::F32, &Device::Cpu).unwrap();
    cfg.hidden_activation = lofi_viewer::model::config::HiddenActivation::Silu;
    let dec = Decoder::new(
        &cfg,
        None,
        VarBuilder::from_tensors(w, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mine = greedy(&dec, &prompt, n_new);
    eprintln!("quantized_gemma3: {:?}", decode(&theirs));
    eprintln!("ours (SiLU):      {:?}", decode(&mine));
    assert_eq!(mine, theirs);
}

/// With Gemma 3's own activation our decoder continues like candle-transformers' `gemma3` on the
/// same dequantised weights, and the continuation is fluent English.
#[test]
fn gemma_from_gguf_continues_like_stock_gemma3() {
    let prompt = gemma_tokens(PROMPT);
    let gguf = base::base_file(base::GEMMA3_270M_GGUF).unwrap();
    let (cfg, w) =
        base::gemma_weights_from_gguf(&gguf, "model.", DType::F32, &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let dec = Decoder::new(&cfg, None, vb.clone()).unwrap();
    let n_new = 20;
    let mine = greedy(&dec, &prompt, n_new);
    let stock_cfg = gemma3::Config {
        attention_bias: false,
        head_dim: cfg.head_dim,
        hidden_activation: candle_nn::Activation::GeluPytorchTanh,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_attention_heads: cfg.num_attention_heads,
        num_hidden_layers: cfg.num_hidden_layers,
        num_key_value_heads: cfg.num_key_value_heads,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta,
        rope_local_base_freq: cfg.rope_local_base_freq,
        vocab_size: cfg.vocab_size,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        query_pre_attn_scalar: cfg.query_pre_attn_scalar,
        sliding_window: cfg.sliding_window,
        sliding_window_pattern: cfg.sliding_window_pattern,
        max_position_embeddings: 4096,
    };
    let mut stock = gemma3::Model::new(false, &stock_cfg, vb).unwrap();
    let mut theirs = Vec::new();
    let mut input = prompt.clone();
    let mut pos = 0;
    for _ in 0..n_new {
        let x = Tensor::new(input.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = stock.forward(&x, pos).unwrap();
        pos += input.len();
        let next = argmax(&logits);
        theirs.push(next);
        input = vec![next];
    }
    let text = decode(&mine);
    eprintln!("gemma3: {:?}", decode(&theirs));
    eprintln!("ours:   {text:?}");
    assert_eq!(mine, theirs);
    assert!(
        text.contains("normal") || text.contains("lung") || text.contains("heart"),
        "{text}"
    );
}

#[test]
fn gemma_lora_lowers_the_loss_in_a_few_steps() {
    let (dec, store) = our_gemma(Some(LoraSpec {
        rank: 4,
        alpha: 4.0,
    }));
    let ids = gemma_tokens("Detect all instances of \"cardiomegaly\".\n[[193,193,410,369]]");
    let t = ids.len();
    let x = Tensor::new(&ids[..t - 1], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let y = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let loss = || {
        let h = dec
            .forward_embeds(&dec.embed(&x).unwrap(), None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let l = dec.logits(&h).unwrap();
        candle_nn::loss::cross_entropy(&l, &y).unwrap()
    };
    let vars: Vec<candle_core::Var> = store.trainable().into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        vars.len(),
        18 * 2 * 2,
        "LoRA A and B on q and v of 18 layers"
    );
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let first = loss().to_scalar::<f32>().unwrap();
    let t0 = std::time::Instant::now();
    let steps = 4;
    for _ in 0..steps {
        opt.backward_step(&loss()).unwrap();
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    let last = loss().to_scalar::<f32>().unwrap();
    eprintln!(
        "Gemma 270M LoRA: loss {first:.3} → {last:.3}, {per_step:.2} s per step ({t} tokens)"
    );
    assert!(last < first, "loss {first} → {last}");
}

#[test]
fn gemma_tokenizer_spells_digits_one_by_one() {
    let tok =
        tokenizers::Tokenizer::from_file(base::base_file(base::GEMMA3_TOKENIZER).unwrap()).unwrap();
    let e = tok.encode("[[120,340,410,720]]", false).unwrap();
    let digits = e
        .get_tokens()
        .iter()
        .filter(|t| t.chars().all(|c| c.is_ascii_digit()))
        .count();
    assert_eq!(digits, 12);
    let ids = gemma_tokens("The heart");
    assert_eq!(tok.decode(&ids, true).unwrap(), "The heart");
    for special in [
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<pad>",
    ] {
        let e = tok.encode(format!("a{special}b"), false).unwrap();
        assert!(
            e.get_tokens().contains(&special.to_string()),
            "{special} is one token"
        );
    }
}

/// The GPU recipe with both pretrained parts (`configs/lofi-dino-gemma-gpu.toml`) builds from the
/// base folder and takes a training step: DINOv2 at 448 px with LoRA, Gemma 3 270M with LoRA and
/// its own tokenizer; the loss is finite and the gradients reach both LoRA sides and the heads.
#[test]
fn gemma_gpu_recipe_builds_and_takes_a_step() {
    use lofi_viewer::train::data::{make_sample, prepare, Augment, TaskMix};
    use lofi_viewer::train::{TrainConfig, Trainer};
    let root = super::common::root();
    let mut cfg = TrainConfig::from_toml(&root.join("configs/lofi-dino-gemma-gpu.toml")).unwrap();
    cfg.steps = 1;
    cfg.batch_size = 1;
    let mut tr = Trainer::new(cfg, Device::Cpu).unwrap();
    assert_eq!(tr.model_cfg.decoder.num_hidden_layers, 18);
    assert_eq!(tr.tokenizer.vocab_size(), 262_144);
    let d = tempfile::tempdir().unwrap();
    let man = super::common::nih_manifest(d.path());
    let imgs = prepare(&man, tr.model_cfg.image_size as u32, 1, &|_| {}).unwrap();
    tr.build_text_bank(&imgs).unwrap();
    let mix = TaskMix {
        grounding: 1.0,
        ..TaskMix::default()
    };
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let s = make_sample(&imgs[0], &Augment::none(), &mix, None, &mut rng);
    let (g, parts) = tr.grads(&[s], &[0]).unwrap();
    assert!(parts.total.is_finite() && parts.loc > 0.0, "{parts:?}");
    for side in [
        "decoder.model.layers.0.self_attn.q_proj.lora_B",
        "vision_model.encoder.layer.0.attention.attention.query.lora_B",
        "projector.",
        "vision_model.head.",
    ] {
        assert!(
            g.keys().any(|k| k.starts_with(side)),
            "no gradient for {side}"
        );
    }
}
