//! A runtime-shaped parameter store with its own Adam optimiser and safetensors checkpoints.
//!
//! BNNP's parameters (the learnable prior, the inference networks and the noise) have shapes that
//! come from the runtime [`Architecture`](crate::model::arch::Architecture), not from const generics.
//! dfdx 0.13's `TensorCollection` machinery (its optimisers and safetensors I/O) can only describe
//! const-shaped tensors: `TensorOptions` has constructors for `ConstShape`s only and is
//! `#[non_exhaustive]`. So the store keeps every parameter as a flat `(n,)` tensor with a logical
//! shape and a stable hierarchical name, and implements Adam with dfdx tensor ops (so it runs on
//! every device) and checkpoints in the safetensors format directly.

use std::collections::HashMap;
use std::path::Path;

use dfdx::prelude::*;

use crate::model::checkpoint::{write_safetensors, SafetensorsFile};
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

/// Index of a parameter in a [`ParamStore`], handed out by [`ParamStore::add`] and
/// [`ParamStore::find`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::ParamStore;
/// let mut store = ParamStore::<f32, Cpu>::new(&Cpu::default());
/// let id = store.add("w", &[2], &[1.0, 2.0])?;
/// assert_eq!(store.find("w"), Some(id));
/// assert_eq!((store.name(id), store.shape(id)), ("w", &[2][..]));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

#[derive(Debug, Clone)]
struct Entry<E: Dtype, D: Storage<E>> {
    name: String,
    shape: Vec<usize>,
    value: Tensor<(usize,), E, D>,
    /// 1 where the entry learns, 0 where it is frozen (partial trainability).
    mask: Option<Tensor<(usize,), E, D>>,
    trainable: bool,
}

/// Named, runtime-shaped parameters on a device.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::ParamStore;
/// let dev = Cpu::default();
/// let mut store = ParamStore::<f32, Cpu>::new(&dev);
/// let w = store.add("net.w", &[2, 3], &[0.5; 6])?;
/// assert_eq!(store.shape(w), &[2, 3]);
/// assert_eq!(store.values(w), vec![0.5; 6]);
/// assert_eq!(store.num_trainable(), 6);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParamStore<E: Dtype, D: Storage<E>> {
    dev: D,
    entries: Vec<Entry<E, D>>,
}

impl<E: Real, D: Device<E>> ParamStore<E, D> {
    /// An empty store on `dev`.
    pub fn new(dev: &D) -> Self {
        Self { dev: dev.clone(), entries: Vec::new() }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Adds a trainable parameter. Names must be unique; values must be finite and match the shape.
    pub fn add(&mut self, name: &str, shape: &[usize], values: &[f64]) -> Result<ParamId> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(Error::Shape {
                what: format!("parameter `{name}`"),
                expected: format!("{shape:?} ({n} values)"),
                got: format!("{} values", values.len()),
            });
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::config("parameter name", name, "is already taken"));
        }
        crate::error::check_finite(&format!("parameter `{name}`"), values)?;
        let v: Vec<E> = values.iter().map(|&x| crate::num::cast::from_f64::<E>(x)).collect();
        self.entries.push(Entry {
            name: name.to_string(),
            shape: shape.to_vec(),
            value: self.dev.tensor_from_vec(v, (n,)),
            mask: None,
            trainable: true,
        });
        Ok(ParamId(self.entries.len() - 1))
    }

    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every parameter's id, in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.entries.len()).map(ParamId)
    }

    /// The id of the parameter called `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.entries.iter().position(|e| e.name == name).map(ParamId)
    }

    /// The parameter's name.
    pub fn name(&self, id: ParamId) -> &str {
        &self.entries[id.0].name
    }

    /// The parameter's logical shape.
    pub fn shape(&self, id: ParamId) -> &[usize] {
        &self.entries[id.0].shape
    }

    /// The parameter as a flat `(n,)` tensor (no tape).
    pub fn get(&self, id: ParamId) -> &Tensor<(usize,), E, D> {
        &self.entries[id.0].value
    }

    /// Host copy of the values.
    pub fn values(&self, id: ParamId) -> Vec<f64> {
        self.entries[id.0].value.as_vec().iter().map(|v| v.cast_to_f64()).collect()
    }

    /// Overwrites the values (same length, finite).
    pub fn set_values(&mut self, id: ParamId, values: &[f64]) -> Result<()> {
        let e = &mut self.entries[id.0];
        if values.len() != e.value.shape().0 {
            return Err(Error::Shape {
                what: format!("parameter `{}`", e.name),
                expected: format!("{} values", e.value.shape().0),
                got: format!("{} values", values.len()),
            });
        }
        crate::error::check_finite(&format!("parameter `{}`", e.name), values)?;
        let v: Vec<E> = values.iter().map(|&x| crate::num::cast::from_f64::<E>(x)).collect();
        e.value = self.dev.tensor_from_vec(v, (values.len(),));
        Ok(())
    }

    /// Whether the parameter is optimised.
    pub fn is_trainable(&self, id: ParamId) -> bool {
        self.entries[id.0].trainable
    }

    /// Freezes (`false`) or releases (`true`) a parameter.
    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) {
        self.entries[id.0].trainable = trainable;
    }

    /// Restricts learning to the entries where `mask` is true (partial trainability); `None` lets
    /// every entry learn.
    pub fn set_mask(&mut self, id: ParamId, mask: Option<&[bool]>) -> Result<()> {
        let e = &mut self.entries[id.0];
        e.mask = match mask {
            None => None,
            Some(m) => {
                if m.len() != e.value.shape().0 {
                    return Err(Error::Shape {
                        what: format!("mask of `{}`", e.name),
                        expected: format!("{} entries", e.value.shape().0),
                        got: format!("{} entries", m.len()),
                    });
                }
                let v: Vec<E> = m.iter().map(|&b| if b { E::one() } else { E::zero() }).collect();
                Some(self.dev.tensor_from_vec(v, (m.len(),)))
            }
        };
        Ok(())
    }

    /// Number of scalar entries that learn (trainable parameters, masks applied).
    pub fn num_trainable(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| match &e.mask {
                None => e.value.shape().0,
                Some(m) => m.as_vec().iter().filter(|v| **v != E::zero()).count(),
            })
            .sum()
    }

    /// The parameter on a fresh tape when it is trainable and `trace` is set; otherwise an untaped
    /// copy with a new id (so no gradient is ever recorded for a frozen parameter).
    pub fn param(&self, id: ParamId, trace: bool) -> Taped<(usize,), E, D> {
        crate::vi::prior::param(&self.entries[id.0].value, trace && self.entries[id.0].trainable)
    }

    /// Saves every parameter to a safetensors file, under its name and logical shape. The file is
    /// replaced atomically (written beside it, synced, renamed over it): a save that fails or is
    /// interrupted leaves the previous file intact.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path.as_ref(), Vec::new(), HashMap::new())
    }

    /// [`save`](Self::save) with `extra` named tensors and string `metadata` in the same file.
    pub(crate) fn save_with(&self, p: &Path, extra: Vec<(String, Vec<usize>, Vec<E>)>, metadata: HashMap<String, String>) -> Result<()> {
        let tensors = self.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), e.value.as_vec())).chain(extra).collect();
        write_safetensors(p, tensors, metadata)
    }

    /// Loads every parameter from a safetensors file written by [`ParamStore::save`]: names, shapes
    /// and dtype must match (other tensors in the file are ignored). On error the store is left
    /// unchanged.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = SafetensorsFile::read(path.as_ref())?;
        self.load_from(&file)
    }

    /// [`load`](Self::load) from a file already read.
    pub(crate) fn load_from(&mut self, file: &SafetensorsFile) -> Result<()> {
        let mut new = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            new.push(file.tensor::<E>(&e.name, &e.shape)?);
        }
        for (e, v) in self.entries.iter_mut().zip(new) {
            let n = v.len();
            e.value = self.dev.tensor_from_vec(v, (n,));
        }
        Ok(())
    }

    /// Whether every parameter is finite (reduced on the device, one scalar read back per tensor).
    pub fn all_finite(&self) -> bool {
        self.entries.iter().all(|e| e.value.shape().0 == 0 || (e.value.clone() * E::zero()).sum::<(), _>().as_vec()[0].is_finite())
    }
}

/// Adam settings.
///
/// ```
/// use weightspace::bnnp::AdamSettings;
/// let a = AdamSettings { lr: 3e-3, ..Default::default() };
/// assert_eq!(a.betas, (0.9, 0.999));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSettings {
    /// Learning rate. Default 1e-3.
    pub lr: f64,
    /// `(β₁, β₂)`. Default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Denominator offset. Default 1e-8.
    pub eps: f64,
}

impl Default for AdamSettings {
    fn default() -> Self {
        Self { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8 }
    }
}

/// Adam's first and second moments of one parameter.
type Moments<E, D> = (Tensor<(usize,), E, D>, Tensor<(usize,), E, D>);

/// Adam (Kingma & Ba) over a [`ParamStore`], run with dfdx tensor ops on the store's device.
/// Masked entries receive a zero gradient, so their moments stay zero and they never move.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::dfdx::tensor_ops::SumTo;
/// use weightspace::bnnp::{Adam, AdamSettings, ParamStore};
/// // minimise (w - 3)² from w = 0
/// let mut store = ParamStore::<f64, Cpu>::new(&Cpu::default());
/// let w = store.add("w", &[1], &[0.0])?;
/// let mut adam = Adam::new(AdamSettings { lr: 0.1, ..Default::default() });
/// for _ in 0..300 {
///     let loss = (store.param(w, true) - 3.0).square().sum();
///     adam.step(&mut store, &mut loss.backward())?;
/// }
/// assert_eq!(adam.steps(), 300);
/// assert!((store.values(w)[0] - 3.0).abs() < 1e-2);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adam<E: Dtype, D: Storage<E>> {
    /// Settings; `lr` may be changed between steps (schedules).
    pub settings: AdamSettings,
    moments: Vec<Option<Moments<E, D>>>,
    t: usize,
}

impl<E: Real, D: Device<E>> Adam<E, D> {
    /// A fresh optimiser.
    pub fn new(settings: AdamSettings) -> Self {
        Self { settings, moments: Vec::new(), t: 0 }
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.t
    }

    /// The moments as named tensors (`adam.m/<name>`, `adam.v/<name>`; parameters that have none
    /// yet are left out), for a checkpoint.
    pub(crate) fn state(&self, store: &ParamStore<E, D>) -> Vec<(String, Vec<usize>, Vec<E>)> {
        let mut out = Vec::new();
        for (e, mom) in store.entries.iter().zip(&self.moments) {
            if let Some((m, v)) = mom {
                out.push((format!("adam.m/{}", e.name), e.shape.clone(), m.as_vec()));
                out.push((format!("adam.v/{}", e.name), e.shape.clone(), v.as_vec()));
            }
        }
        out
    }

    /// The state after `t` steps with the moments of [`state`](Self::state) read from `file`; on
    /// error nothing changes.
    pub(crate) fn load_state(&mut self, store: &ParamStore<E, D>, file: &SafetensorsFile, t: usize) -> Result<()> {
        let mut moments = Vec::with_capacity(store.entries.len());
        for e in &store.entries {
            let (mn, vn) = (format!("adam.m/{}", e.name), format!("adam.v/{}", e.name));
            if !e.trainable || (!file.contains(&mn) && t == 0) {
                moments.push(None);
                continue;
            }
            let n = e.value.shape().0;
            let m = file.tensor::<E>(&mn, &e.shape)?;
            let v = file.tensor::<E>(&vn, &e.shape)?;
            moments.push(Some((store.dev.tensor_from_vec(m, (n,)), store.dev.tensor_from_vec(v, (n,)))));
        }
        self.moments = moments;
        self.t = t;
        Ok(())
    }

    /// One update of every trainable parameter from `grads` (parameters with no recorded gradient
    /// count as zero). On a non-finite gradient nothing changes and [`Error::Diverged`] is returned.
    pub fn step(&mut self, store: &mut ParamStore<E, D>, grads: &mut Gradients<E, D>) -> Result<()> {
        self.step_reduced(store, grads, None)
    }

    /// [`step`](Self::step) with the gradients first passed, as one flat `f64` vector over the
    /// trainable parameters in store order, through `reduce` (a sum over processes).
    pub(crate) fn step_reduced(
        &mut self,
        store: &mut ParamStore<E, D>,
        grads: &mut Gradients<E, D>,
        reduce: Option<Reduce<'_>>,
    ) -> Result<()> {
        let s = self.settings;
        if !(s.lr.is_finite() && s.lr >= 0.0) {
            return Err(Error::config("AdamSettings::lr", s.lr, "must be finite and >= 0"));
        }
        self.moments.resize(store.entries.len(), None);
        // collect gradients first so that a non-finite one leaves everything unchanged
        let mut gs = Vec::with_capacity(store.entries.len());
        for e in &store.entries {
            if !e.trainable {
                gs.push(None);
                continue;
            }
            // a parameter the loss did not touch gets a zero gradient (dfdx's `get` panics otherwise)
            grads.try_alloc_for(&e.value).map_err(Error::device)?;
            let mut g = grads.get(&e.value);
            if let Some(m) = &e.mask {
                g = g * m.clone();
            }
            if !(g.clone() * E::zero()).sum::<(), _>().as_vec()[0].is_finite() {
                return Err(Error::Diverged { step: self.t, what: format!("gradient of `{}`", e.name) });
            }
            gs.push(Some(g));
        }
        if let Some(reduce) = reduce {
            let mut flat: Vec<f64> = Vec::new();
            for g in gs.iter().flatten() {
                flat.extend(crate::num::cast::to_f64s(&g.as_vec()));
            }
            reduce(&mut flat)?;
            if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
                return Err(Error::Diverged { step: self.t, what: format!("reduced gradient (flat index {i})") });
            }
            let mut at = 0;
            for g in gs.iter_mut().flatten() {
                let n = g.shape().0;
                let v: Vec<E> = flat[at..at + n].iter().map(|&x| crate::num::cast::from_f64::<E>(x)).collect();
                *g = store.dev.tensor_from_vec(v, (n,));
                at += n;
            }
        }
        self.t += 1;
        let (b1, b2) = s.betas;
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let e_ = |x: f64| crate::num::cast::from_f64::<E>(x);
        for ((e, g), mom) in store.entries.iter_mut().zip(gs).zip(self.moments.iter_mut()) {
            let Some(g) = g else { continue };
            let (m, v) = mom.take().unwrap_or_else(|| (g.device().zeros_like(g.shape()), g.device().zeros_like(g.shape())));
            let m = m * e_(b1) + g.clone() * e_(1.0 - b1);
            let v = v * e_(b2) + g.square() * e_(1.0 - b2);
            let upd = (m.clone() * e_(s.lr / c1)) / ((v.clone() * e_(1.0 / c2)).sqrt() + e_(s.eps));
            e.value = e.value.clone() - upd;
            *mom = Some((m, v));
        }
        Ok(())
    }
}

/// A sum over processes of a flat gradient vector, in place ([`Adam::step_reduced`]).
pub(crate) type Reduce<'a> = &'a mut dyn FnMut(&mut [f64]) -> Result<()>;

/// The learning rate of a linear decay from `start` to `end` over `steps` steps, at `step`.
///
/// ```
/// use weightspace::bnnp::linear_lr;
/// assert_eq!(linear_lr(3e-3, Some(1e-4), 0, 101), 3e-3);
/// assert!((linear_lr(3e-3, Some(1e-4), 100, 101) - 1e-4).abs() < 1e-15);
/// assert_eq!(linear_lr(3e-3, None, 50, 101), 3e-3);
/// ```
pub fn linear_lr(start: f64, end: Option<f64>, step: usize, steps: usize) -> f64 {
    match end {
        None => start,
        Some(end) => {
            let t = step as f64 / (steps.max(2) - 1) as f64;
            start + (end - start) * t.min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ParamStore::save` replaces the file rather than writing into it (a hard link to the old
    /// checkpoint keeps the old bytes; an in-place write would change both), leaves no temporary
    /// file behind, and round-trips bit-exactly.
    #[test]
    fn save_replaces_the_file_and_round_trips_bit_exactly() {
        let dir = std::env::temp_dir().join(format!("weightspace_paramstore_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (path, old) = (dir.join("store.safetensors"), dir.join("old.safetensors"));
        let dev = Cpu::default();
        let mut store = ParamStore::<f64, Cpu>::new(&dev);
        let w = store.add("net.w", &[2, 3], &[0.1, -0.2, 1.0 / 3.0, 1e-300, -7.5, std::f64::consts::PI]).unwrap();
        let b = store.add("net.b", &[2], &[0.25, -0.0]).unwrap();
        store.save(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        std::fs::hard_link(&path, &old).unwrap();
        store.set_values(w, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0 + f64::EPSILON * 6.0]).unwrap();
        store.save(&path).unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), first, "the save wrote into the old file in place");
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["old.safetensors", "store.safetensors"], "a temporary file was left behind");
        let mut back = ParamStore::<f64, Cpu>::new(&dev);
        let (w2, b2) = (back.add("net.w", &[2, 3], &[0.0; 6]).unwrap(), back.add("net.b", &[2], &[0.0; 2]).unwrap());
        back.load(&path).unwrap();
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(back.values(w2)), bits(store.values(w)));
        assert_eq!(bits(back.values(b2)), bits(store.values(b)));
        // the old checkpoint still loads, to the old values
        back.load(&old).unwrap();
        assert_eq!(back.values(w2)[2].to_bits(), (1.0f64 / 3.0).to_bits());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
