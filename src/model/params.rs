//! The trainable parameter store: a named map of `Var`s with deterministic, seeded initialisation
//! (candle's CPU RNG cannot be seeded), optional initial values from a checkpoint, and freezing
//! (frozen parameters are handed out detached, so backprop never computes their gradients).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Decides which parameter names are trained.
pub type TrainableFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Named parameters.
pub struct ParamStore {
    vars: Mutex<BTreeMap<String, Var>>,
    seed: u64,
    source: Option<Box<dyn SimpleBackend>>,
    trainable: TrainableFn,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .finish()
    }
}

fn name_hash(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed: init does not depend on creation order.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn init_values(shape: &Shape, init: Init, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let dims = shape.dims();
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                // Box–Muller
                let u1: f64 = rng.random::<f64>().max(1e-12);
                let u2: f64 = rng.random::<f64>();
                (mean + stdev * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
                    as f32
            })
            .collect(),
        Init::Kaiming { .. } => {
            let bound = (6.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        }
    }
}

impl ParamStore {
    /// An empty store. `source` supplies initial values by name (a checkpoint or HF weights);
    /// names it lacks are initialised from `seed`.
    pub fn new(
        seed: u64,
        source: Option<Box<dyn SimpleBackend>>,
        trainable: TrainableFn,
    ) -> Arc<Self> {
        Arc::new(Self {
            vars: Mutex::new(BTreeMap::new()),
            seed,
            source,
            trainable,
        })
    }

    /// A `VarBuilder` that creates/reads parameters in this store.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Handle(self.clone())), dtype, device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        self.vars.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Trainable parameters, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .filter(|(k, _)| (self.trainable)(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every parameter's current value, sorted by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrite values by name (resume). Every name must exist with the same shape.
    pub fn load(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        let vars = self.lock();
        for (k, v) in vars.iter() {
            let Some(t) = values.get(k) else {
                candle_core::bail!("checkpoint lacks tensor {k}");
            };
            if t.shape() != v.shape() {
                candle_core::bail!(
                    "tensor {k}: checkpoint shape {:?}, model shape {:?}",
                    t.dims(),
                    v.dims()
                );
            }
            v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
        }
        Ok(())
    }

    /// Overwrite the named tensors (each must exist, same shape) and leave the others alone.
    pub fn set(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        let vars = self.lock();
        for (k, t) in values {
            let Some(v) = vars.get(k) else {
                candle_core::bail!("no parameter {k}");
            };
            if t.shape() != v.shape() {
                candle_core::bail!("tensor {k}: shape {:?}, parameter {:?}", t.dims(), v.dims());
            }
            v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?.detach())?;
        }
        Ok(())
    }

    /// Total number of scalar parameters, and of trainable ones.
    pub fn counts(&self) -> (usize, usize) {
        let vars = self.lock();
        let all = vars.values().map(|v| v.elem_count()).sum();
        let tr = vars
            .iter()
            .filter(|(k, _)| (self.trainable)(k))
            .map(|(_, v)| v.elem_count())
            .sum();
        (all, tr)
    }
}

struct Handle(Arc<ParamStore>);

impl SimpleBackend for Handle {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let store = &self.0;
        let mut vars = store.lock();
        let var = match vars.get(name) {
            Some(v) => {
                if v.shape() != &s {
                    candle_core::bail!(
                        "tensor {name}: requested shape {:?}, stored {:?}",
                        s.dims(),
                        v.dims()
                    );
                }
                v.clone()
            }
            None => {
                let value = match &store.source {
                    Some(src) if src.contains_tensor(name) => {
                        src.get(s.clone(), name, h, dtype, dev)?
                    }
                    _ => {
                        let mut rng = ChaCha8Rng::seed_from_u64(name_hash(store.seed, name));
                        Tensor::from_vec(init_values(&s, h, &mut rng), s.clone(), dev)?
                            .to_dtype(dtype)?
                    }
                };
                let v = Var::from_tensor(&value.to_dtype(dtype)?)?;
                vars.insert(name.to_string(), v.clone());
                v
            }
        };
        if (store.trainable)(name) {
            Ok(var.as_tensor().clone())
        } else {
            Ok(var.as_tensor().detach())
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.0.lock().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("tensor {name} is not in the parameter store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().contains_key(name)
            || self
                .0
                .source
                .as_ref()
                .is_some_and(|s| s.contains_tensor(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_init_is_reproducible_and_order_free() {
        let all: TrainableFn = Arc::new(|_| true);
        let a = ParamStore::new(7, None, all.clone());
        let b = ParamStore::new(7, None, all.clone());
        let va = a.var_builder(DType::F32, &Device::Cpu);
        let vb = b.var_builder(DType::F32, &Device::Cpu);
        let x1 = va
            .get_with_hints((3, 4), "x", crate::model::nn::W_INIT)
            .unwrap();
        let _ = vb.get_with_hints((2,), "y", Init::Const(1.0)).unwrap();
        let x2 = vb
            .get_with_hints((3, 4), "x", crate::model::nn::W_INIT)
            .unwrap();
        let d = (x1 - x2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        let c = ParamStore::new(8, None, all);
        let x3 = c
            .var_builder(DType::F32, &Device::Cpu)
            .get_with_hints((3, 4), "x", crate::model::nn::W_INIT)
            .unwrap();
        let x1 = a.tensors()["x"].clone();
        assert!(
            (x1 - x3)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
}
