//! The evidence lower bound: a reparameterised Monte-Carlo estimate with explicit minibatch scaling,
//! returned as a taped loss **and** as its parts.
//!
//! For a minibatch `B` of a dataset of `N` points and `S` weight samples `w_s ~ q`:
//!
//! ```text
//! ELBO ≈ (N / |B|) · (1/S) Σ_s Σ_{n∈B} ln p(y_n | x_n, w_s)  −  KL(q ‖ p)
//!        └───────────── expected_log_lik ─────────────┘        └─ kl ─┘
//! ```
//!
//! The KL is analytic for mean-field Gaussian guides under Normal priors ([`KlEstimator::Analytic`]),
//! or the Monte-Carlo estimate `(1/S) Σ_s [ln q(w_s) − ln p(w_s)]` ([`KlEstimator::MonteCarlo`]).
//! The estimate of the expected log-likelihood is unbiased for the full-data term whatever the batch
//! size, so the minibatch ELBO's expectation equals the full-batch ELBO (tested).

use dfdx::prelude::*;
use rand::Rng;

use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::data::Dataset;
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

/// How the KL term is estimated.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0], 1, &[0.0, 1.0], 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field(); // every weight N(0, 0.1²) against the prior N(0, 1)
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let exact = elbo(&model, &guide, &data, 2, &ElboConfig::default(), &mut rng)?.kl;
/// assert!((exact - 2.0 * (10f64.ln() + 0.005 - 0.5)).abs() < 1e-9);
/// let mc = ElboConfig { samples: 4000, kl: KlEstimator::MonteCarlo, ..Default::default() };
/// let estimate = elbo(&model, &guide, &data, 2, &mc, &mut rng)?.kl;
/// assert!((estimate - exact).abs() < 0.1);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlEstimator {
    /// Closed form (Gaussian guide, Normal prior). The default.
    #[default]
    Analytic,
    /// `(1/S) Σ_s [ln q(w_s) − ln p(w_s)]` on the same samples as the likelihood term.
    MonteCarlo,
}

/// Settings of one ELBO estimate.
///
/// ```
/// use weightspace::prelude::*;
/// let cfg = ElboConfig { samples: 16, local_reparam: true, ..Default::default() };
/// assert_eq!(cfg.kl, KlEstimator::Analytic);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElboConfig {
    /// Monte-Carlo weight samples `S` (≥ 1). Default 8.
    pub samples: usize,
    /// Sample pre-activations instead of weights (local reparameterisation; lower variance, same
    /// expectation). Needs [`KlEstimator::Analytic`]. Default false.
    pub local_reparam: bool,
    /// KL estimator. Default analytic.
    pub kl: KlEstimator,
    /// Put learned prior and likelihood parameters on the tape (type-II maximum likelihood of the
    /// hyperparameters). Default true.
    pub learn_hyperparameters: bool,
}

impl Default for ElboConfig {
    fn default() -> Self {
        Self { samples: 8, local_reparam: false, kl: KlEstimator::Analytic, learn_hyperparameters: true }
    }
}

/// One ELBO estimate: the differentiable loss and its parts as numbers.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.0, 1.0, 2.0], 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
/// let est: ElboEstimate<f64, Cpu> = elbo(&model, &guide, &data, 3, &ElboConfig::default(), &mut rng)?;
/// assert!((est.loss.array() + est.elbo).abs() < 1e-9); // the loss is −ELBO
/// assert!(est.kl > 0.0 && est.expected_log_lik < 0.0);
/// let grads = est.loss.backward();
/// assert!(grads.get(&guide.out.loc).array().iter().any(|g| *g != 0.0));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug)]
pub struct ElboEstimate<E: Dtype, D: Storage<E>> {
    /// `−ELBO`, on the tape of the guide (and learned hyperparameters): call `.backward()`.
    pub loss: Taped<(), E, D>,
    /// The ELBO estimate.
    pub elbo: f64,
    /// The expected log-likelihood term, already scaled by `N / |B|`.
    pub expected_log_lik: f64,
    /// The KL term (analytic or Monte-Carlo).
    pub kl: f64,
}

/// A training objective for [`crate::vi::fit::fit_objective`]: anything that turns a minibatch into a
/// taped loss plus its reported parts. The plain ELBO implements it; so can symmetrised or tempered
/// variants built on top of [`elbo`].
///
/// ```
/// use weightspace::prelude::*;
/// /// The plain ELBO, counting how often it is estimated.
/// struct Counted { cfg: ElboConfig, calls: usize }
/// impl<E: Real, D: Device<E>, M: Bnn<E, D>> Objective<E, D, M> for Counted {
///     fn estimate(
///         &mut self,
///         model: &M,
///         guide: &M::Guide,
///         batch: &Dataset<E, D>,
///         n_total: usize,
///         rng: &mut rand::rngs::StdRng,
///     ) -> Result<ElboEstimate<E, D>> {
///         self.calls += 1;
///         elbo(model, guide, batch, n_total, &self.cfg, rng)
///     }
/// }
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.0, 1.0, 2.0], 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let mut objective = Counted { cfg: ElboConfig::default(), calls: 0 };
/// let cfg = FitConfig { steps: 20, progress: false, ..Default::default() };
/// fit_objective(&mut model, &mut guide, &data, &cfg, &mut objective)?;
/// assert_eq!(objective.calls, 20);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait Objective<E: Real, D: Device<E>, M: Bnn<E, D>> {
    /// Estimates the objective on `batch` (a minibatch of a dataset of `n_total` points).
    fn estimate(
        &mut self,
        model: &M,
        guide: &M::Guide,
        batch: &Dataset<E, D>,
        n_total: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<ElboEstimate<E, D>>;

    /// Checks the objective's own settings before training starts.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Whether the estimate splits over the points of a minibatch, so that a data-parallel step
    /// ([`Svi::step_on`](crate::Svi::step_on)) may evaluate parts of a batch on different
    /// processes and add them up: the loss must be `(n_total/|batch|)·Σ_{n∈batch} ℓ_n + c` with
    /// `c` independent of the batch, and the Monte-Carlo noise drawn from `rng` must not depend on
    /// the batch (weight samples, not per-point noise). The default, `false`, is always safe: such
    /// an objective then runs on one process only.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
    /// fn splits<O: Objective<f64, Cpu, Lin<f64, Cpu>>>(o: &O) -> bool { o.splits_over_points() }
    /// assert!(splits(&ElboConfig::default()));
    /// assert!(!splits(&ElboConfig { local_reparam: true, ..Default::default() }));
    /// ```
    fn splits_over_points(&self) -> bool {
        false
    }
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> Objective<E, D, M> for ElboConfig {
    fn estimate(
        &mut self,
        model: &M,
        guide: &M::Guide,
        batch: &Dataset<E, D>,
        n_total: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<ElboEstimate<E, D>> {
        elbo(model, guide, batch, n_total, self, rng)
    }
    fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::config("ElboConfig::samples", 0, "at least one weight sample is needed"));
        }
        Ok(())
    }
    /// Yes with weight samples; no with local reparameterisation, whose noise is drawn per point.
    fn splits_over_points(&self) -> bool {
        !self.local_reparam
    }
}

/// Estimates the ELBO of `guide` for `model` on a minibatch `batch` of a dataset with `n_total`
/// points.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0, 3.0], 1, &[0.1, 1.1, 1.9, 3.2], 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let est = elbo(&model, &guide, &data, data.len(), &ElboConfig::default(), &mut rng)?;
/// assert!((est.elbo - (est.expected_log_lik - est.kl)).abs() < 1e-9);
/// let _grads = est.loss.backward();
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn elbo<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    guide: &M::Guide,
    batch: &Dataset<E, D>,
    n_total: usize,
    cfg: &ElboConfig,
    rng: &mut impl Rng,
) -> Result<ElboEstimate<E, D>> {
    let arch = M::ARCH;
    batch.check_for(arch)?;
    if cfg.samples == 0 {
        return Err(Error::config("ElboConfig::samples", 0, "at least one weight sample is needed"));
    }
    if n_total < batch.len() {
        return Err(Error::config("n_total", n_total, "the dataset size cannot be smaller than the minibatch"));
    }
    if cfg.local_reparam && cfg.kl != KlEstimator::Analytic {
        return Err(Error::config(
            "ElboConfig::local_reparam",
            true,
            "local reparameterisation samples no weights, so it needs the analytic KL",
        ));
    }
    let s = cfg.samples;
    let params = guide.layer_params();
    let hyper = cfg.learn_hyperparameters;
    let scale = n_total as f64 / (batch.len() as f64 * s as f64);
    let (f, mc_kl) = if cfg.local_reparam {
        (crate::vi::guide::forward_local_reparam(arch, &params, &batch.x, s, rng)?, None)
    } else {
        match cfg.kl {
            KlEstimator::Analytic => (crate::vi::network::forward_mean_field(arch, &params, &batch.x, s, rng)?, None),
            KlEstimator::MonteCarlo => {
                let w = crate::vi::guide::sample_mean_field(arch, &params, s, rng, true)?;
                let w2 = Weights { layers: w.layers.iter().map(|t| t.with_empty_tape()).collect() };
                let w3 = Weights { layers: w.layers.iter().map(|t| t.with_empty_tape()).collect() };
                let lq = crate::vi::guide::log_q(arch, &params, w2, true);
                let lp = log_prior_taped(model, w3, hyper);
                let mc_kl = (lq - lp).sum::<(), _>() * crate::num::cast::from_f64::<E>(1.0 / s as f64);
                (crate::vi::network::forward(arch, w, &batch.x)?, Some(mc_kl))
            }
        }
    };
    let ll = crate::vi::likelihood::log_lik(&arch.likelihood, model.likelihood_params(), hyper, f, batch)?;
    let ell = ll.sum::<(), _>() * crate::num::cast::from_f64::<E>(scale);
    let kl = match mc_kl {
        Some(k) => k,
        None => crate::vi::guide::kl_to_prior(model, &params, hyper, true),
    };
    let ell_v = ell.retaped::<NoneTape>().as_vec()[0].cast_to_f64();
    let kl_v = kl.retaped::<NoneTape>().as_vec()[0].cast_to_f64();
    let loss = kl - ell;
    Ok(ElboEstimate { loss, elbo: ell_v - kl_v, expected_log_lik: ell_v, kl: kl_v })
}

/// `ln p(w)` per sample under the model's prior, `(S,)`, on the tape of the weights (and of learned
/// prior parameters when `trace_prior`).
pub(crate) fn log_prior_taped<E: Real, D: Device<E>, M: Bnn<E, D>, T: Tape<E, D>>(
    model: &M,
    weights: Weights<E, D, T>,
    trace_prior: bool,
) -> Taped<(usize,), E, D>
where
    OwnedTape<E, D>: Merge<T>,
{
    let priors = crate::vi::prior::expand(M::ARCH.layers, &model.prior_params(), trace_prior);
    let mut total: Option<Taped<(usize,), E, D>> = None;
    for (p, w) in priors.into_iter().zip(weights.layers) {
        let lp = crate::vi::prior::log_normal(w, p);
        total = crate::vi::prior::add_term(total, lp);
    }
    total.expect("an architecture has at least one layer")
}
