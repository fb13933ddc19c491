//! The sampler boundary ([`LogDensity`], [`BatchLogDensity`]) and the BNN posterior over the
//! weights and, optionally, the log noise scale ([`BnnPosterior`]).

use std::any::TypeId;

use dfdx::prelude::*;

use super::fused::{FusedMlp, FusedNoise};
use super::GaussianWeightPrior;
use crate::model::arch::LikelihoodSpec;
use crate::model::bnn::{Bnn, Weights};
use crate::model::data::Dataset;
use crate::vi::prior::Taped;
use crate::workers::Workers;
use crate::{Error, Real, Result};

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// A differentiable log density on `R^dim`: what the single-chain sampler ([`super::sample_nuts`])
/// needs.
///
/// A non-finite value is not an error: the sampler treats it as a divergence. Return `Err` only for
/// failures that make sampling pointless (a device error, a shape mismatch).
///
/// ```
/// use weightspace::mcmc::LogDensity;
/// /// An isotropic Gaussian N(mu, I).
/// struct Gauss { mu: Vec<f64> }
/// impl LogDensity for Gauss {
///     fn dim(&self) -> usize { self.mu.len() }
///     fn logp(&mut self, x: &[f64], grad: &mut [f64]) -> weightspace::Result<f64> {
///         let mut lp = 0.0;
///         for ((g, xi), mi) in grad.iter_mut().zip(x).zip(&self.mu) {
///             *g = mi - xi;
///             lp -= 0.5 * (xi - mi).powi(2);
///         }
///         Ok(lp)
///     }
/// }
/// let mut target = Gauss { mu: vec![1.0, -1.0] };
/// let mut grad = [0.0; 2];
/// assert_eq!(target.logp(&[1.0, -1.0], &mut grad)?, 0.0);
/// assert_eq!(target.logp(&[2.0, -1.0], &mut grad)?, -0.5);
/// assert_eq!(grad, [-1.0, 0.0]);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait LogDensity {
    /// Dimension of a position.
    fn dim(&self) -> usize;
    /// `ln p(position)` up to a constant; writes `∇ ln p` into `grad` (length [`LogDensity::dim`]).
    fn logp(&mut self, position: &[f64], grad: &mut [f64]) -> Result<f64>;
}

/// Many positions at once: what the many-chain sampler ([`super::sample_many_chains`]) needs.
///
/// `positions` is row-major `(C, dim)`; the implementation writes `C` log densities and the
/// row-major `(C, dim)` gradients. As for [`LogDensity`], a non-finite entry marks a divergence of
/// that chain only. The default evaluates the rows one by one with [`LogDensity::logp`]; targets
/// with a batched evaluation override it. The dimension is [`LogDensity::dim`].
///
/// ```
/// use weightspace::mcmc::{BatchLogDensity, LogDensity};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 2 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         g[1] = -x[1];
///         Ok(-0.5 * (x[0] * x[0] + x[1] * x[1]))
///     }
/// }
/// impl BatchLogDensity for StdNormal {} // row by row
/// let (mut logp, mut grad) = ([0.0; 3], [0.0; 6]);
/// StdNormal.logp_batch(&[0.0, 0.0, 1.0, 0.0, 1.0, 1.0], &mut logp, &mut grad)?;
/// assert_eq!(logp, [0.0, -0.5, -1.0]);
/// assert_eq!(grad, [0.0, 0.0, -1.0, 0.0, -1.0, -1.0]);
/// // a shape mismatch is an error
/// assert!(StdNormal.logp_batch(&[0.0; 5], &mut logp, &mut grad).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait BatchLogDensity: LogDensity {
    /// Evaluates every row of `positions`.
    fn logp_batch(&mut self, positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        let d = self.dim();
        check_batch(positions, logp, grad, d)?;
        for ((lp, x), g) in logp.iter_mut().zip(positions.chunks_exact(d.max(1))).zip(grad.chunks_exact_mut(d.max(1))) {
            *lp = self.logp(x, g)?;
        }
        Ok(())
    }

    /// Evaluates only the listed rows of `positions` (`rows` strictly increasing, each below the
    /// number of rows), writing the same rows of `logp` and `grad` and leaving the others as they
    /// are: what a batched sampler calls when some of its chains have finished their trajectory.
    /// The default gathers the rows into a batch for [`logp_batch`](Self::logp_batch) and
    /// scatters the results back; the `#[bnn]` posterior ([`BnnPosterior`]) evaluates them
    /// where they are. A row that is not increasing or out of range is an error.
    ///
    /// ```
    /// use weightspace::mcmc::{BatchLogDensity, LogDensity};
    /// struct StdNormal;
    /// impl LogDensity for StdNormal {
    ///     fn dim(&self) -> usize { 1 }
    ///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
    ///         g[0] = -x[0];
    ///         Ok(-0.5 * x[0] * x[0])
    ///     }
    /// }
    /// impl BatchLogDensity for StdNormal {}
    /// let (mut logp, mut grad) = ([9.0; 3], [9.0; 3]);
    /// StdNormal.logp_batch_rows(&[0, 2], &[1.0, 2.0, 3.0], &mut logp, &mut grad)?;
    /// assert_eq!(logp, [-0.5, 9.0, -4.5]); // row 1 untouched
    /// assert_eq!(grad, [-1.0, 9.0, -3.0]);
    /// assert!(StdNormal.logp_batch_rows(&[2, 0], &[1.0, 2.0, 3.0], &mut logp, &mut grad).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn logp_batch_rows(&mut self, rows: &[usize], positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        check_rows(rows, positions, logp, grad, self.dim())?;
        gather_rows(self, rows, positions, logp, grad)
    }

    /// Offers the worker threads of the sampler that calls this target. The many-chain samplers
    /// ([`sample_many_chains`](crate::mcmc::sample_many_chains),
    /// [`sample_nuts_chains`](crate::mcmc::sample_nuts_chains)) call it once, before their first
    /// evaluation; a target that evaluates its rows in parallel should run them on these threads
    /// ([`Workers::install`]) rather than on a pool of its own, which would put more threads than
    /// cores on the machine. The default ignores them; [`BnnPosterior`] evaluates on them from then
    /// on.
    ///
    /// ```
    /// use weightspace::comm::Workers;
    /// use weightspace::mcmc::{BatchLogDensity, LogDensity};
    /// struct StdNormal {
    ///     workers: Workers,
    /// }
    /// impl LogDensity for StdNormal {
    ///     fn dim(&self) -> usize { 1 }
    ///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
    ///         g[0] = -x[0];
    ///         Ok(-0.5 * x[0] * x[0])
    ///     }
    /// }
    /// impl BatchLogDensity for StdNormal {
    ///     fn share_workers(&mut self, workers: &Workers) {
    ///         self.workers = workers.clone();
    ///     }
    /// }
    /// let mut target = StdNormal { workers: Workers::new(1)? };
    /// target.share_workers(&Workers::new(2)?);
    /// assert_eq!(target.workers.threads(), 2);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn share_workers(&mut self, workers: &Workers) {
        let _ = workers;
    }
}

/// The shapes of a batched call: `(C, dim)` positions and gradients for `C` log densities.
fn check_batch(positions: &[f64], logp: &[f64], grad: &[f64], d: usize) -> Result<()> {
    let c = logp.len();
    if positions.len() != c * d || grad.len() != c * d {
        return Err(Error::Shape {
            what: "positions and gradients".into(),
            expected: format!("({c}, {d}) each"),
            got: format!("{} and {} values", positions.len(), grad.len()),
        });
    }
    Ok(())
}

/// The shapes of a [`BatchLogDensity::logp_batch_rows`] call: `(C, dim)` positions and gradients,
/// `C` log densities, rows strictly increasing and below `C`.
fn check_rows(rows: &[usize], positions: &[f64], logp: &[f64], grad: &[f64], d: usize) -> Result<()> {
    check_batch(positions, logp, grad, d)?;
    let c = logp.len();
    let bad =
        |got: String| Error::Shape { what: "rows to evaluate".into(), expected: format!("strictly increasing indices below {c}"), got };
    if let Some(w) = rows.windows(2).find(|w| w[0] >= w[1]) {
        return Err(bad(format!("{} before {}", w[0], w[1])));
    }
    if let Some(&r) = rows.last().filter(|&&r| r >= c) {
        return Err(bad(format!("row {r}")));
    }
    Ok(())
}

/// [`BatchLogDensity::logp_batch_rows`] through [`BatchLogDensity::logp_batch`]: the listed rows
/// gathered into one batch, evaluated, and scattered back.
fn gather_rows<T: BatchLogDensity + ?Sized>(
    target: &mut T,
    rows: &[usize],
    positions: &[f64],
    logp: &mut [f64],
    grad: &mut [f64],
) -> Result<()> {
    let d = target.dim();
    let x: Vec<f64> = rows.iter().flat_map(|&r| positions[r * d..(r + 1) * d].iter().copied()).collect();
    let (mut lp, mut g) = (vec![0.0; rows.len()], vec![0.0; rows.len() * d]);
    target.logp_batch(&x, &mut lp, &mut g)?;
    for (k, &r) in rows.iter().enumerate() {
        logp[r] = lp[k];
        grad[r * d..(r + 1) * d].copy_from_slice(&g[k * d..(k + 1) * d]);
    }
    Ok(())
}

/// What to do with the Gaussian likelihood's noise scale σ while sampling.
///
/// ```
/// use weightspace::mcmc::NoisePrior;
/// assert_eq!(NoisePrior::default(), NoisePrior::HalfNormal(1.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoisePrior {
    /// Keep the model's current σ fixed (the only choice for classifiers, where it is ignored).
    Fixed,
    /// Sample σ with a HalfNormal(scale) prior, as the unconstrained `ln σ` (with the Jacobian of
    /// `exp`). The position gets one extra, last coordinate.
    HalfNormal(f64),
}

impl Default for NoisePrior {
    fn default() -> Self {
        NoisePrior::HalfNormal(1.0)
    }
}

/// The posterior `p(w, ln σ | data)` of a `#[bnn]` model, in unconstrained coordinates.
///
/// A position is the model's weights in [`Weights::to_flat`] order (layers in order, each layer's
/// `[W | b]` rows in order) followed, when the noise is sampled, by `ln σ`. The weight prior is the
/// model's own (including learned or meta-learned prior parameters, at their current values);
/// σ gets the HalfNormal prior of [`NoisePrior`].
///
/// Evaluation of `C` positions is one batched call. On the CPU with a Gaussian likelihood it uses a
/// fused kernel (hand-written forward and backward, chains split over threads); elsewhere, or after
/// [`BnnPosterior::generic`], the weight-sample axis of `network::forward`,
/// `elbo::log_prior_taped` and a per-chain Gaussian log-likelihood on the tape is the chain axis,
/// so any dfdx device works. Both give the same numbers (tested).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{BatchLogDensity, BnnPosterior, LogDensity, NoisePrior};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0], 1, &[0.5, 1.5], 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let mut post = BnnPosterior::new(&model, &data, NoisePrior::HalfNormal(1.0))?;
/// assert_eq!(post.dim(), 3); // w, b, ln σ
/// let (mut lp, mut g) = (vec![0.0; 2], vec![0.0; 6]);
/// post.logp_batch(&[1.0, 0.5, 0.0, 0.0, 0.0, 0.0], &mut lp, &mut g)?;
/// // at w = 1, b = 0.5, σ = 1 the fit is exact: ln p = prior + noise prior + 2 ln N(0 | 0, 1)
/// let ln_n = |z: f64| -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln();
/// let want = ln_n(1.0) + ln_n(0.5) + (2f64.ln() + ln_n(1.0)) + 2.0 * ln_n(0.0);
/// assert!((lp[0] - want).abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub struct BnnPosterior<'a, E: Real, D: Device<E>, M: Bnn<E, D>> {
    model: &'a M,
    data: &'a Dataset<E, D>,
    noise_scale: Option<f64>,
    num_weights: usize,
    fused: Option<FusedMlp<E>>,
    weight_prior: Option<GaussianWeightPrior>,
    threads: usize,
    /// The fused kernel's threads: built on first use for `threads`, or the sampler's
    /// ([`BatchLogDensity::share_workers`]).
    workers: Option<Workers>,
    evaluations: u64,
}

impl<'a, E: Real, D: Device<E>, M: Bnn<E, D>> BnnPosterior<'a, E, D, M> {
    /// The posterior of `model` given `data`, with the noise treated as `noise` (Gaussian
    /// likelihoods only; ignored otherwise).
    pub fn new(model: &'a M, data: &'a Dataset<E, D>, noise: NoisePrior) -> Result<Self> {
        let arch = M::ARCH;
        data.check_for(arch)?;
        let gaussian = matches!(arch.likelihood, LikelihoodSpec::Gaussian { .. });
        let noise_scale = match (noise, gaussian) {
            (NoisePrior::HalfNormal(s), true) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(Error::config("NoisePrior::HalfNormal", s, "the scale must be positive and finite"));
                }
                Some(s)
            }
            _ => None,
        };
        let mut post = Self {
            model,
            data,
            noise_scale,
            num_weights: arch.num_weights(),
            fused: None,
            weight_prior: None,
            threads: 1,
            workers: None,
            evaluations: 0,
        };
        if gaussian && TypeId::of::<D>() == TypeId::of::<Cpu>() {
            let (loc, scale) = post.prior_values();
            let noise = match noise_scale {
                Some(s) => FusedNoise::Sampled(s),
                None => {
                    FusedNoise::Fixed(crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params()).expect("gaussian"))
                }
            };
            post.fused = Some(FusedMlp::new(arch, &data.x_host(), &data.y_host(), loc, &scale, noise));
        }
        Ok(post)
    }

    /// Samples under `prior` instead of the model's own weight priors, e.g. a meta-learned prior
    /// with full covariance per unit ([`crate::methods::bnnp::AmortisedGuide::weight_prior`]). Both the fused
    /// and the generic path use it.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{BatchLogDensity, BnnPosterior, GaussianWeightPrior, NoisePrior};
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<1.0>> }
    /// let dev = Cpu::default();
    /// let data = Dataset::<f64, _>::regression(&dev, &[0.0], 1, &[0.0], 1)?;
    /// let model = Lin::<f64, Cpu>::new(&dev);
    /// // N(1, 4) on the weight and N(0, 1) on the bias, as two blocks
    /// let prior = GaussianWeightPrior::from_blocks(2, vec![(0, vec![1.0], vec![4.0]), (1, vec![0.0], vec![1.0])])?;
    /// let mut post = BnnPosterior::new(&model, &data, NoisePrior::Fixed)?.with_weight_prior(prior)?;
    /// let (mut lp, mut g) = ([0.0], [0.0; 2]);
    /// post.logp_batch(&[1.0, 0.0], &mut lp, &mut g)?;
    /// let ln_n = |z: f64, sd: f64| -0.5 * z * z / (sd * sd) - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
    /// assert!((lp[0] - (ln_n(0.0, 2.0) + ln_n(0.0, 1.0) + ln_n(0.0, 1.0))).abs() < 1e-12);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when the prior is over a different number of weights than the model has.
    pub fn with_weight_prior(mut self, prior: GaussianWeightPrior) -> Result<Self> {
        if prior.num_weights() != self.num_weights {
            return Err(Error::Shape {
                what: "weight prior".into(),
                expected: format!("{} weights (the model's)", self.num_weights),
                got: format!("{} weights", prior.num_weights()),
            });
        }
        self.fused = self.fused.take().map(FusedMlp::without_prior);
        self.weight_prior = Some(prior);
        Ok(self)
    }

    /// The weight prior set with [`BnnPosterior::with_weight_prior`], if any.
    pub fn weight_prior(&self) -> Option<&GaussianWeightPrior> {
        self.weight_prior.as_ref()
    }

    /// Uses the generic dfdx path even where the fused CPU kernel applies (for tests and
    /// comparisons).
    pub fn generic(mut self) -> Self {
        self.fused = None;
        self
    }

    /// Splits fused-kernel evaluations over `threads` threads (default 1; `0` means all available
    /// cores). The generic path ignores it. A many-chain sampler replaces them with its own
    /// ([`BatchLogDensity::share_workers`]).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = crate::num::threads_or_all(threads);
        self.workers = None;
        self
    }

    /// Whether the fused CPU kernel is in use.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Number of weights `P` (the position has `P + 1` coordinates when σ is sampled).
    pub fn num_weights(&self) -> usize {
        self.num_weights
    }

    /// Whether `ln σ` is the position's last coordinate.
    pub fn samples_noise(&self) -> bool {
        self.noise_scale.is_some()
    }

    /// Number of positions evaluated so far (gradient evaluations, summed over chains).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// The model.
    pub fn model(&self) -> &M {
        self.model
    }

    /// The noise scale σ at a position: `exp` of its last coordinate when sampled, else the model's
    /// own σ; `None` for classifiers.
    pub fn sigma(&self, position: &[f64]) -> Option<f64> {
        match self.noise_scale {
            Some(_) => position.get(self.num_weights).map(|s| s.exp()),
            None => crate::vi::likelihood::noise_value(&M::ARCH.likelihood, self.model.likelihood_params()),
        }
    }

    /// The weight part of positions as a [`Weights`] batch (one sample per position).
    pub fn weights(&self, positions: &[Vec<f64>]) -> Result<Weights<E, D>> {
        let rows: Vec<Vec<f64>> = positions.iter().map(|p| p[..self.num_weights.min(p.len())].to_vec()).collect();
        Weights::from_flat(self.model.device(), M::ARCH, &rows)
    }

    /// Per-weight prior `(loc, scale)` in position order, from the model's current prior parameters
    /// (the model's own prior, whether or not [`BnnPosterior::with_weight_prior`] replaced it).
    pub fn prior_values(&self) -> (Vec<f64>, Vec<f64>) {
        let priors = crate::vi::prior::expand(M::ARCH.layers, &self.model.prior_params(), false);
        let mut loc = Vec::with_capacity(self.num_weights);
        let mut scale = Vec::with_capacity(self.num_weights);
        for p in priors {
            loc.extend(p.loc.split_tape().0.as_vec().iter().map(|v| v.cast_to_f64()));
            scale.extend(p.log_scale.split_tape().0.as_vec().iter().map(|v| v.cast_to_f64().exp()));
        }
        (loc, scale)
    }

    /// `ln p(y_n | x_n, w_s, σ_s)` for every position `s` and every point of `data`, row-major
    /// `(S, N)`, each position with its own σ. This is what the LPPD is computed from.
    pub fn pointwise_log_lik(&self, positions: &[Vec<f64>], data: &Dataset<E, D>) -> Result<Vec<f64>> {
        data.check_for(M::ARCH)?;
        let w = self.weights(positions)?;
        let f = crate::vi::network::forward(M::ARCH, w, &data.x)?;
        match M::ARCH.likelihood {
            LikelihoodSpec::Gaussian { .. } => {
                let (s, n, k) = *f.shape();
                let fv = f.as_vec();
                let y = data.y_host();
                let mut out = vec![0.0; s * n];
                for (si, pos) in positions.iter().enumerate() {
                    let sigma = self.sigma(pos).expect("gaussian");
                    let ls = sigma.ln();
                    for ni in 0..n {
                        let mut acc = 0.0;
                        for ki in 0..k {
                            let r = (y[ni * k + ki] - fv[(si * n + ni) * k + ki].cast_to_f64()) / sigma;
                            acc += -0.5 * r * r - ls - HALF_LN_2PI;
                        }
                        out[si * n + ni] = acc;
                    }
                }
                Ok(out)
            }
            _ => {
                let ll = crate::vi::likelihood::log_lik(&M::ARCH.likelihood, self.model.likelihood_params(), false, f.retaped(), data)?;
                Ok(ll.split_tape().0.as_vec().iter().map(|v| v.cast_to_f64()).collect())
            }
        }
    }

    /// Network outputs `(S, N, d_out)` (row-major) of the positions' weights on inputs `x`.
    pub fn outputs(&self, positions: &[Vec<f64>], x: &Tensor<(usize, usize), E, D>) -> Result<Vec<f64>> {
        crate::vi::network::check_input(M::ARCH, x)?;
        let f = crate::vi::network::forward(M::ARCH, self.weights(positions)?, x)?;
        Ok(f.as_vec().iter().map(|v| v.cast_to_f64()).collect())
    }

    fn logp_generic(&self, positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        let arch = M::ARCH;
        let d = self.dim();
        let c = logp.len();
        let dev = self.model.device();
        let mut leaves = Vec::with_capacity(arch.layers.len());
        let mut off = 0;
        for l in arch.layers {
            let nw = l.num_weights();
            let mut v = Vec::with_capacity(c * nw);
            for ci in 0..c {
                v.extend(positions[ci * d + off..ci * d + off + nw].iter().map(|x| crate::num::cast::from_f64::<E>(*x)));
            }
            leaves.push(dev.tensor_from_vec(v, (c, l.d_out, l.d_in + 1)));
            off += nw;
        }
        let fwd_w = Weights { layers: leaves.iter().map(|t| t.leaky_trace()).collect::<Vec<_>>() };
        // the model's own prior on the tape, or zero when a weight prior is added on the host
        let lp: Taped<(usize,), E, D> = match self.weight_prior {
            None => {
                crate::vi::elbo::log_prior_taped(self.model, Weights { layers: leaves.iter().map(|t| t.leaky_trace()).collect() }, false)
            }
            Some(_) => dev.zeros_like(&(c,)).leaky_traced(),
        };
        let f = crate::vi::network::forward(arch, fwd_w, &self.data.x)?;
        let mut s_leaf = None;
        let total: Taped<(usize,), E, D> = match self.noise_scale {
            Some(scale) => {
                let sv: Vec<E> = (0..c).map(|ci| crate::num::cast::from_f64::<E>(positions[ci * d + self.num_weights])).collect();
                let leaf = dev.tensor_from_vec(sv, (c,));
                let s = leaf.leaky_trace();
                s_leaf = Some(leaf);
                let shape = *f.shape();
                let nk = (shape.1 * shape.2) as f64;
                let y = self.data.y.clone().broadcast_like::<_, Axis<0>>(&shape);
                let inv = s.with_empty_tape().negate().exp().broadcast_like::<_, Axes2<1, 2>>(&shape);
                let z = (f - y) * inv;
                let quad = (z.square() * crate::num::cast::from_f64::<E>(-0.5)).sum::<_, Axes2<1, 2>>();
                let ll =
                    quad - s.with_empty_tape() * crate::num::cast::from_f64::<E>(nk) - crate::num::cast::from_f64::<E>(nk * HALF_LN_2PI);
                let sigma2 = (s.with_empty_tape() * crate::num::cast::from_f64::<E>(2.0)).exp();
                let c0 = std::f64::consts::LN_2 - scale.ln() - HALF_LN_2PI;
                let lnoise = sigma2 * crate::num::cast::from_f64::<E>(-0.5 / (scale * scale)) + s + crate::num::cast::from_f64::<E>(c0);
                lp + ll + lnoise
            }
            None => {
                let ll = crate::vi::likelihood::log_lik(&arch.likelihood, self.model.likelihood_params(), false, f, self.data)?;
                lp + ll.sum::<_, Axis<1>>()
            }
        };
        for (dst, v) in logp.iter_mut().zip(total.as_vec()) {
            *dst = v.cast_to_f64();
        }
        let g = total.sum().backward();
        let mut off = 0;
        for (l, leaf) in arch.layers.iter().zip(&leaves) {
            let nw = l.num_weights();
            let gv = g.get(leaf).as_vec();
            for ci in 0..c {
                for j in 0..nw {
                    grad[ci * d + off + j] = gv[ci * nw + j].cast_to_f64();
                }
            }
            off += nw;
        }
        if let Some(leaf) = s_leaf {
            let gv = g.get(&leaf).as_vec();
            for ci in 0..c {
                grad[ci * d + self.num_weights] = gv[ci].cast_to_f64();
            }
        }
        Ok(())
    }
}

/// The fused kernel's thread pool (`None` for the calling thread): the shared workers, or
/// `threads` of its own built on first use.
fn fused_pool(slot: &mut Option<Workers>, threads: usize) -> Result<Option<&rayon::ThreadPool>> {
    let workers = match slot {
        Some(w) => w,
        None => slot.insert(Workers::new(threads)?),
    };
    Ok(workers.pool())
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> BnnPosterior<'_, E, D, M> {
    /// Adds the weight prior's log density and gradient to the listed rows.
    fn add_weight_prior(&self, rows: impl Iterator<Item = usize>, positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        let d = self.dim();
        if let Some(prior) = &self.weight_prior {
            for r in rows {
                logp[r] += prior.log_density(&positions[r * d..(r + 1) * d], &mut grad[r * d..(r + 1) * d])?;
            }
        }
        Ok(())
    }
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> BatchLogDensity for BnnPosterior<'_, E, D, M> {
    fn logp_batch(&mut self, positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        let d = self.dim();
        let c = logp.len();
        if c == 0 {
            return Ok(());
        }
        check_batch(positions, logp, grad, d)?;
        self.evaluations += c as u64;
        match &self.fused {
            Some(f) => f.eval_batch(positions, logp, grad, fused_pool(&mut self.workers, self.threads)?),
            None => self.logp_generic(positions, logp, grad)?,
        }
        self.add_weight_prior(0..c, positions, logp, grad)
    }

    /// With the fused CPU kernel the listed rows are evaluated where they are; otherwise they are
    /// gathered into one batch.
    fn logp_batch_rows(&mut self, rows: &[usize], positions: &[f64], logp: &mut [f64], grad: &mut [f64]) -> Result<()> {
        check_rows(rows, positions, logp, grad, self.dim())?;
        let Some(f) = &self.fused else { return gather_rows(self, rows, positions, logp, grad) };
        self.evaluations += rows.len() as u64;
        f.eval_rows(rows, positions, logp, grad, fused_pool(&mut self.workers, self.threads)?);
        self.add_weight_prior(rows.iter().copied(), positions, logp, grad)
    }

    /// The fused kernel runs on `workers` from now on.
    fn share_workers(&mut self, workers: &Workers) {
        self.workers = Some(workers.clone());
    }
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> LogDensity for BnnPosterior<'_, E, D, M> {
    fn dim(&self) -> usize {
        self.num_weights + usize::from(self.noise_scale.is_some())
    }

    fn logp(&mut self, position: &[f64], grad: &mut [f64]) -> Result<f64> {
        let mut lp = [0.0];
        self.logp_batch(position, &mut lp, grad)?;
        Ok(lp[0])
    }
}
