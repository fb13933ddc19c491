//! Mean-field Gaussian guides: initialisation, reparameterised sampling, closed-form KL and the
//! local reparameterisation trick.
//!
//! Layout: each layer's guide parameters are the `d_out · (d_in + 1)` entries of `[W | b]`, row by
//! row (unit `d`'s incoming weights, then its bias). Scales are stored as `ln σ`.

use dfdx::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::model::arch::Architecture;
use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::params::NormalView;
use crate::vi::prior::{param, Taped};
use crate::{Error, Real, Result};

/// How a mean-field guide starts.
///
/// ```
/// use weightspace::MeanFieldInit;
/// let init = MeanFieldInit { scale: 0.05, ..Default::default() };
/// assert_eq!(init.scale, 0.05);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanFieldInit {
    /// Initial standard deviation of every weight. Default 0.1 (as NumPyro's `AutoNormal`).
    pub scale: f64,
    /// Means start at the prior mean plus this many prior standard deviations of noise
    /// (`0` = exactly the prior mean). Default 0.
    pub jitter: f64,
    /// Seed for the jitter.
    pub seed: u64,
}

impl Default for MeanFieldInit {
    fn default() -> Self {
        Self { scale: 0.1, jitter: 0.0, seed: 0 }
    }
}

/// Builds a model's mean-field guide: means at the prior mean (plus optional jitter), every scale
/// `init.scale`.
pub(crate) fn init_mean_field<E: Real, D: Device<E>, M: Bnn<E, D>>(model: &M, init: MeanFieldInit) -> Result<M::Guide> {
    if !(init.scale.is_finite() && init.scale > 0.0) {
        return Err(Error::config("MeanFieldInit::scale", init.scale, "must be finite and > 0"));
    }
    if !(init.jitter.is_finite() && init.jitter >= 0.0) {
        return Err(Error::config("MeanFieldInit::jitter", init.jitter, "must be finite and >= 0"));
    }
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(init.seed);
    let priors = crate::vi::prior::expand(M::ARCH.layers, &model.prior_params(), false);
    let values = priors
        .into_iter()
        .map(|p| {
            let loc: Vec<f64> = p.loc.as_vec().iter().map(|v| v.cast_to_f64()).collect();
            let sd: Vec<f64> = p.log_scale.as_vec().iter().map(|v| v.cast_to_f64().exp()).collect();
            let loc = loc
                .iter()
                .zip(&sd)
                .map(|(m, s)| if init.jitter > 0.0 { m + init.jitter * s * rng.sample::<f64, _>(StandardNormal) } else { *m })
                .collect();
            (loc, vec![init.scale; sd.len()])
        })
        .collect::<Vec<_>>();
    model.guide_from_values(&values)
}

pub use crate::kernels::normal::standard_normal;

/// Reparameterised samples `W = μ + σ ⊙ ε` of every layer (one `u64` of `rng` per layer seeds the
/// noise of its samples). With `trace`, the result is on the tape of the guide parameters.
pub(crate) fn sample_mean_field<E: Real, D: Device<E>>(
    arch: &Architecture,
    params: &[NormalView<E, D>],
    s: usize,
    rng: &mut impl Rng,
    trace: bool,
) -> Result<Weights<E, D, OwnedTape<E, D>>> {
    if s == 0 {
        return Err(Error::config("samples", 0, "at least one weight sample is needed"));
    }
    let layers = arch
        .layers
        .iter()
        .zip(params)
        .map(|(spec, p)| {
            let shape = (s, spec.d_out, spec.d_in + 1);
            let seed = rng.next_u64();
            let per = spec.num_weights();
            let mut eps = vec![E::zero(); s * per];
            eps.chunks_exact_mut(per).enumerate().for_each(|(k, e)| crate::kernels::normal::sample_noise(seed, k, e));
            let eps = p.loc.device().tensor_from_vec(eps, shape);
            let mu = param(&p.loc, trace).reshape_like(&(shape.1, shape.2)).broadcast_like::<_, Axis<0>>(&shape);
            let sd = param(&p.log_scale, trace).exp().reshape_like(&(shape.1, shape.2)).broadcast_like::<_, Axis<0>>(&shape);
            mu + sd * eps
        })
        .collect();
    Ok(Weights { layers })
}

/// `s` weight samples from a mean-field guide, off the tape (for prediction and tests).
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let model = Lin::<f64, Cpu>::new(&Cpu::default());
/// let guide = model.mean_field();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = weightspace::sample_guide(Lin::<f64, Cpu>::ARCH, &guide, 5, &mut rng)?;
/// assert_eq!(*w.layers[0].shape(), (5, 1, 3));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_guide<E: Real, D: Device<E>, G: MeanFieldGuide<E, D>>(
    arch: &Architecture,
    guide: &G,
    s: usize,
    rng: &mut impl Rng,
) -> Result<Weights<E, D>> {
    let w = sample_mean_field(arch, &guide.layer_params(), s, rng, false)?;
    Ok(Weights { layers: w.layers.into_iter().map(|t| t.split_tape().0).collect() })
}

/// `s` reparameterised weight samples `W = μ + σ ⊙ ε` of a mean-field guide, on the tape of its
/// locations and log scales (gradients flow back into the guide).
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let model = Lin::<f64, Cpu>::new(&Cpu::default());
/// let guide = model.mean_field();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// use weightspace::dfdx::prelude::SumTo;
/// let w = weightspace::rsample_guide(Lin::<f64, Cpu>::ARCH, &guide, 5, &mut rng)?;
/// let Some(layer) = w.layers.into_iter().next() else { unreachable!() };
/// let grads = layer.sum::<(), _>().backward();
/// assert_eq!(grads.get(&guide.out.loc).array(), [5.0; 3]); // ∂ Σ_s W_s / ∂μ = S
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn rsample_guide<E: Real, D: Device<E>, G: MeanFieldGuide<E, D>>(
    arch: &Architecture,
    guide: &G,
    s: usize,
    rng: &mut impl Rng,
) -> Result<Weights<E, D, OwnedTape<E, D>>> {
    sample_mean_field(arch, &guide.layer_params(), s, rng, true)
}

/// Closed-form `KL(q ‖ p)` between a mean-field guide and the model's prior, summed over layers.
pub(crate) fn kl_to_prior<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    params: &[NormalView<E, D>],
    trace_prior: bool,
    trace_guide: bool,
) -> Taped<(), E, D> {
    let priors = crate::vi::prior::expand(M::ARCH.layers, &model.prior_params(), trace_prior);
    let mut total: Option<Taped<(), E, D>> = None;
    for ((spec, p), q) in M::ARCH.layers.iter().zip(priors).zip(params) {
        let shape = (spec.d_out, spec.d_in + 1);
        let ql = param(&q.loc, trace_guide).reshape_like(&shape);
        let qs = param(&q.log_scale, trace_guide).reshape_like(&shape);
        let kl = crate::vi::prior::kl_normal(ql, qs, p);
        total = crate::vi::prior::add_term(total, kl);
    }
    total.expect("an architecture has at least one layer")
}

/// `ln q(w)` per sample under a mean-field guide, `(S,)`.
pub(crate) fn log_q<E: Real, D: Device<E>, T: Tape<E, D>>(
    arch: &Architecture,
    params: &[NormalView<E, D>],
    weights: Weights<E, D, T>,
    trace: bool,
) -> Taped<(usize,), E, D>
where
    OwnedTape<E, D>: Merge<T>,
{
    let mut total: Option<Taped<(usize,), E, D>> = None;
    for ((spec, q), w) in arch.layers.iter().zip(params).zip(weights.layers) {
        let shape = (spec.d_out, spec.d_in + 1);
        let exp = crate::vi::prior::ExpandedNormal {
            loc: param(&q.loc, trace).reshape_like(&shape),
            log_scale: param(&q.log_scale, trace).reshape_like(&shape),
        };
        let lp = crate::vi::prior::log_normal(w, exp);
        total = crate::vi::prior::add_term(total, lp);
    }
    total.expect("an architecture has at least one layer")
}

/// Forward pass with the local reparameterisation trick: every layer's pre-activations are sampled
/// from their exact Gaussian marginal `N(ā μᵀ, ā² σ²ᵀ)` instead of sampling weights, which lowers the
/// gradient variance. Output `(S, N, d_out)`, on the guide's tape.
pub(crate) fn forward_local_reparam<E: Real, D: Device<E>>(
    arch: &Architecture,
    params: &[NormalView<E, D>],
    x: &Tensor<(usize, usize), E, D>,
    s: usize,
    rng: &mut impl Rng,
) -> Result<Taped<(usize, usize, usize), E, D>> {
    if s == 0 {
        return Err(Error::config("samples", 0, "at least one weight sample is needed"));
    }
    let (n, d) = *x.shape();
    let dev = x.device().clone();
    let ones = dev.ones_like(&(n, 1usize));
    let x_aug: Tensor<(usize, usize), E, D> = (x.clone(), ones).concat_along(Axis::<1>);
    let mut h: Taped<(usize, usize, usize), E, D> = x_aug.broadcast_like::<_, Axis<0>>(&(s, n, d + 1)).retaped();
    for (li, (spec, p)) in arch.layers.iter().zip(params).enumerate() {
        let shape = (spec.d_out, spec.d_in + 1);
        let mu = param(&p.loc, true).reshape_like(&shape);
        let var = (param(&p.log_scale, true) * crate::num::cast::from_f64::<E>(2.0)).exp().reshape_like(&shape);
        let h_sq = h.with_empty_tape().square();
        let mean = h.matmul(mu.permute::<_, Axes2<1, 0>>());
        let v = h_sq.matmul(var.permute::<_, Axes2<1, 0>>());
        let eps = standard_normal::<E, D, _>(&dev, rng, (s, n, spec.d_out));
        let z = mean + (v + crate::num::cast::from_f64::<E>(1e-12)).sqrt() * eps;
        let a = crate::kernels::activation::activate(spec.activation, z);
        if li + 1 == arch.layers.len() {
            return Ok(a);
        }
        h = crate::kernels::activation::augment(a);
    }
    unreachable!("returns at the last layer")
}
