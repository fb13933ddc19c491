//! Saving and loading models and guides as safetensors files. Round trips are bit-exact.

use std::path::Path;

use dfdx::nn::{LoadFromSafetensors, SaveToSafetensors};
use dfdx::prelude::*;

use crate::{Error, Real, Result};

/// Saves every parameter of a model, guide or any dfdx tensor collection to `path`. Parameter names
/// are the declaration's field paths, e.g. `hidden.weight.log_scale`.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, Learned(1.0)))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Learned<0.3>> }
/// let dev = Cpu::default();
/// let model = Lin::<f32, Cpu>::new(&dev);
/// let path = std::env::temp_dir().join("weightspace_doc_ckpt.safetensors");
/// save(&model, &path)?;
/// let mut back = Lin::<f32, Cpu>::new(&dev);
/// load(&mut back, &path)?;
/// assert_eq!(back.noise.raw.array(), model.noise.raw.array());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn save<E: Real, D: Device<E>, M: TensorCollection<E, D>>(m: &M, path: impl AsRef<Path>) -> Result<()> {
    let p = path.as_ref();
    m.save_safetensors(p).map_err(|e| Error::Checkpoint { path: p.display().to_string(), reason: format!("{e:?}") })
}

/// Loads parameters saved by [`save`] into `m`. On error, `m` is left unchanged.
pub fn load<E: Real, D: Device<E>, M: TensorCollection<E, D> + Clone>(m: &mut M, path: impl AsRef<Path>) -> Result<()> {
    let p = path.as_ref();
    let mut tmp = m.clone();
    tmp.load_safetensors(p).map_err(|e| Error::Checkpoint { path: p.display().to_string(), reason: format!("{e:?}") })?;
    if !crate::model::params::all_finite(&tmp) {
        return Err(Error::Checkpoint { path: p.display().to_string(), reason: "the file holds NaN or infinite parameters".into() });
    }
    *m = tmp;
    Ok(())
}
