//! Image-to-decoder projector: optional average pooling of the patch grid, MAP pooling to M
//! tokens, then `Linear(D→H) → GELU → Linear(H→H)` (`projector.*` keys).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{ProjectorConfig, ProjectorLayout};
use super::encoder::MapBlock;
use super::nn::{gelu, Linear};

/// `projector`.
#[derive(Debug, Clone)]
pub struct Projector {
    maps: Vec<MapBlock>,
    fc1: Linear,
    fc2: Linear,
    pool: usize,
}

impl Projector {
    /// Build for vision width `vision_hidden` and decoder width `decoder_hidden`.
    pub fn new(
        cfg: &ProjectorConfig,
        vision_hidden: usize,
        decoder_hidden: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let maps = match cfg.layout {
            ProjectorLayout::SingleBlock => vec![MapBlock::new(
                vision_hidden,
                cfg.mlp_hidden,
                cfg.num_heads,
                cfg.num_tokens,
                eps,
                vb.pp("map"),
            )?],
            ProjectorLayout::SeparateHeads => (0..cfg.num_tokens)
                .map(|i| {
                    MapBlock::new(
                        vision_hidden,
                        cfg.mlp_hidden,
                        cfg.num_heads,
                        1,
                        eps,
                        vb.pp("heads").pp(i),
                    )
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            maps,
            fc1: Linear::new(vision_hidden, decoder_hidden, true, None, vb.pp("fc1"))?,
            fc2: Linear::new(decoder_hidden, decoder_hidden, true, None, vb.pp("fc2"))?,
            pool: cfg.pool,
        })
    }

    /// Patch tokens `(B, g·g, D)` → decoder prefix `(B, M, H)`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, n, d) = tokens.dims3()?;
        let x = if self.pool > 1 {
            let g = (n as f64).sqrt().round() as usize;
            let p = self.pool;
            tokens
                .reshape((b, g / p, p, g / p, p, d))?
                .mean(4)?
                .mean(2)?
                .reshape((b, (g / p) * (g / p), d))?
        } else {
            tokens.clone()
        };
        let pooled = if self.maps.len() == 1 {
            self.maps[0].forward(&x)?
        } else {
            let parts = self
                .maps
                .iter()
                .map(|m| m.forward(&x))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 1)?
        };
        self.fc2.forward(&gelu(&self.fc1.forward(&pooled)?)?)
    }
}
