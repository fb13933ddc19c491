//! Prior transfer: a meta-learned prior as the prior of other inference methods.
//!
//! - [`LearnedPriorElbo`]: the ELBO of a `#[bnn]` model's mean-field guide with the KL taken
//!   against a learned prior (any family, closed form), for [`crate::vi::fit::fit_objective`].
//! - [`LearnedPrior::log_density`]: `ln p(w)` per sample, differentiable in the weights, for
//!   samplers (MCMC) that need the prior's log density and its gradient.
//! - [`LearnedPriorSource`]: prior draws for [`crate::Predictive::run`].
//! - [`AmortisedGuide::weight_prior`]: the prior as a [`GaussianWeightPrior`], so that the samplers
//!   of [`crate::methods::mcmc`] (NUTS, the many-chain sampler, the SYM-MCMC workflow) run under it.

use dfdx::prelude::*;
use rand::Rng;

use super::guide::AmortisedGuide;
use super::params::ParamStore;
use super::prior::LearnedPrior;
use crate::methods::mcmc::GaussianWeightPrior;
use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::data::Dataset;
use crate::vi::elbo::{ElboEstimate, Objective};
use crate::vi::prior::{param, Taped};
use crate::{Error, Real, Result};

/// A learned prior's per-group moments in natural form on the device (constants).
struct Constants<E: Dtype, D: Storage<E>> {
    /// `Σ⁻¹`, `(G, K, K)`.
    prec: Tensor<(usize, usize, usize), E, D>,
    /// `μ`, `(G, K)`.
    mean: Tensor<(usize, usize), E, D>,
    /// `Σ_g ln det Σ_g`.
    logdet: f64,
    g: usize,
    k: usize,
}

fn constants<E: Real, D: Device<E>>(prior: &LearnedPrior, store: &ParamStore<E, D>, l: usize) -> Result<Constants<E, D>> {
    let (mean, mut sigma, g, k) = prior.moments(store, l);
    let mut inv = vec![0.0; g * k * k];
    let mut work = vec![0.0; k * k];
    let mut logdet = 0.0;
    for gi in 0..g {
        let blk = &mut sigma[gi * k * k..(gi + 1) * k * k];
        crate::num::dense::cholesky(blk, k).map_err(|pivot| Error::NotPositiveDefinite {
            what: format!("learned prior of layer `{}`", prior.arch().layers[l].name),
            index: gi,
            pivot,
        })?;
        logdet += crate::num::dense::chol_logdet(blk, k);
        crate::num::dense::chol_inverse(blk, k, &mut inv[gi * k * k..(gi + 1) * k * k], &mut work);
    }
    let dev = store.device();
    let to = |v: Vec<f64>| v.into_iter().map(|x| crate::num::cast::from_f64::<E>(x)).collect::<Vec<E>>();
    Ok(Constants { prec: dev.tensor_from_vec(to(inv), (g, k, k)), mean: dev.tensor_from_vec(to(mean), (g, k)), logdet, g, k })
}

impl LearnedPrior {
    /// `ln p(w_s)` per sample `(S,)`, on the tape of the weights (the prior's parameters are held
    /// constant). For samplers that need the prior's log density and its gradient.
    pub fn log_density<E: Real, D: Device<E>, T: Tape<E, D>>(
        &self,
        store: &ParamStore<E, D>,
        weights: Weights<E, D, T>,
    ) -> Result<Taped<(usize,), E, D>>
    where
        OwnedTape<E, D>: Merge<T>,
    {
        crate::model::bnn::check_weights(self.arch(), &weights)?;
        let s = weights.num_samples();
        let mut total: Option<Taped<(usize,), E, D>> = None;
        for (l, w) in weights.layers.into_iter().enumerate() {
            let c = constants(self, store, l)?;
            let (g, k) = (c.g, c.k);
            // z = w − μ as (G, K, S); quad_s = Σ_g zᵀ Σ⁻¹ z
            // an owned tape merged with the weights' own (if any)
            let base: Taped<(usize, usize, usize), E, D> = w.device().zeros_like(&(s, g, k)).retaped();
            let wt = (base + w.reshape_like(&(s, g, k))).permute::<_, Axes3<1, 2, 0>>();
            let z = wt - c.mean.broadcast_like::<_, Axis<2>>(&(g, k, s));
            let (zz, tape) = z.split_tape();
            let pz = c.prec.put_tape(tape).matmul(zz.clone());
            let quad = (pz * zz).sum::<_, Axes2<0, 1>>();
            let cst = -0.5 * c.logdet - 0.5 * (g * k) as f64 * (2.0 * std::f64::consts::PI).ln();
            let lp = quad * crate::num::cast::from_f64::<E>(-0.5) + crate::num::cast::from_f64::<E>(cst);
            total = crate::vi::prior::add_term(total, lp);
        }
        Ok(total.expect("at least one layer"))
    }
}

/// The ELBO of a `#[bnn]` model's mean-field guide, `E_q[ln p(y | w)] − KL(q ‖ p_learned)`, with a
/// learned prior taken from an [`AmortisedGuide`] (held fixed). The KL is in closed form for every
/// prior family. Use it with [`crate::vi::fit::fit_objective`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, LearnedPriorElbo};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let mut model = Net::<f32, Cpu>::new(&dev);
/// let bnnp = model.amortised_guide(GuideConfig::default())?; // meta-train it first
/// let data = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.2, 0.0, -0.3], 1)?;
/// let mut mf = model.mean_field();
/// let mut objective = LearnedPriorElbo::new(&bnnp, 4)?;
/// fit_objective(&mut model, &mut mf, &data, &FitConfig { steps: 20, progress: false, ..Default::default() }, &mut objective)?;
/// # Ok::<(), weightspace::Error>(())
/// ```
pub struct LearnedPriorElbo<'a, E: Dtype, D: Storage<E>> {
    guide: &'a AmortisedGuide<E, D>,
    /// Monte-Carlo weight samples per estimate.
    pub samples: usize,
    /// Also learn the model's likelihood parameters (a learned noise). Default false.
    pub learn_noise: bool,
    cache: Vec<Constants<E, D>>,
}

impl<'a, E: Real, D: Device<E>> LearnedPriorElbo<'a, E, D> {
    /// An objective using `guide`'s learned prior, with `samples` weight samples per estimate.
    pub fn new(guide: &'a AmortisedGuide<E, D>, samples: usize) -> Result<Self> {
        if samples == 0 {
            return Err(Error::config("samples", 0, "at least one weight sample is needed"));
        }
        let cache = (0..guide.arch().layers.len()).map(|l| constants(guide.prior(), guide.store(), l)).collect::<Result<Vec<_>>>()?;
        Ok(Self { guide, samples, learn_noise: false, cache })
    }

    /// `KL(q ‖ p)` for mean-field parameters `(loc, ln σ)` per layer.
    fn kl(&self, params: &[crate::model::params::NormalView<E, D>]) -> Taped<(), E, D> {
        let mut total: Option<Taped<(), E, D>> = None;
        for (c, q) in self.cache.iter().zip(params) {
            let (g, k) = (c.g, c.k);
            let m = param(&q.loc, true).reshape_like(&(g, k));
            let ls = param(&q.log_scale, true).reshape_like(&(g, k));
            // ½[Σ diag(Σ⁻¹) s² + (m−μ)ᵀΣ⁻¹(m−μ) − K + ln|Σ| − Σ 2 ln s]
            let diag = (c.prec.clone()
                * crate::methods::bnnp::prior::eye::<E, D>(c.prec.device(), k).broadcast_like::<_, Axis<0>>(&(g, k, k)))
            .sum::<_, Axis<2>>();
            let var = (ls.with_empty_tape() * crate::num::cast::from_f64::<E>(2.0)).exp();
            let tr = (var * diag).sum::<(), _>();
            let e = m - c.mean.clone();
            let (ee, tape) = e.reshape_like(&(g, k, 1usize)).split_tape();
            let pe = c.prec.clone().put_tape(tape).matmul(ee.clone());
            let quad = (pe * ee).sum::<(), _>();
            let logs = ls.sum::<(), _>() * crate::num::cast::from_f64::<E>(2.0);
            let kl = (tr + quad - logs) * crate::num::cast::from_f64::<E>(0.5)
                + crate::num::cast::from_f64::<E>(0.5 * (c.logdet - (g * k) as f64));
            total = crate::vi::prior::add_term(total, kl);
        }
        total.expect("at least one layer")
    }
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> Objective<E, D, M> for LearnedPriorElbo<'_, E, D> {
    fn estimate(
        &mut self,
        model: &M,
        guide: &M::Guide,
        batch: &Dataset<E, D>,
        n_total: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<ElboEstimate<E, D>> {
        if M::ARCH.layers != self.guide.arch().layers {
            return Err(Error::config("LearnedPriorElbo", M::ARCH.name, "the learned prior belongs to a different architecture"));
        }
        batch.check_for(M::ARCH)?;
        let s = self.samples;
        let params = guide.layer_params();
        let w = crate::vi::guide::sample_mean_field(M::ARCH, &params, s, rng, true)?;
        let f = crate::vi::network::forward(M::ARCH, w, &batch.x)?;
        let ll = crate::vi::likelihood::log_lik(&M::ARCH.likelihood, model.likelihood_params(), self.learn_noise, f, batch)?;
        let ell = ll.sum::<(), _>() * crate::num::cast::from_f64::<E>(n_total as f64 / (batch.len() * s) as f64);
        let kl = self.kl(&params);
        let ell_v = ell.retaped::<NoneTape>().as_vec()[0].cast_to_f64();
        let kl_v = kl.retaped::<NoneTape>().as_vec()[0].cast_to_f64();
        Ok(ElboEstimate { loss: kl - ell, elbo: ell_v - kl_v, expected_log_lik: ell_v, kl: kl_v })
    }

    /// Yes: weight samples and a KL that does not depend on the batch.
    fn splits_over_points(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::config("LearnedPriorElbo::samples", 0, "at least one weight sample is needed"));
        }
        Ok(())
    }
}

/// Prior draws from a learned prior, for [`crate::Predictive::run`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, LearnedPriorSource};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let guide = model.amortised_guide(GuideConfig::default())?; // meta-train it first
/// let x = dev.tensor_from_vec(vec![0.0], (1usize, 1usize));
/// let mut pred = Predictive::new(4000);
/// pred.include_noise = false;
/// let s = pred.run(&model, LearnedPriorSource(&guide), &x)?;
/// // the initial learned prior is N(0, I/(d_in + 1)): f(0) = b has sd √½
/// assert!((s.std[0] - 0.5f64.sqrt()).abs() < 0.05);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub struct LearnedPriorSource<'a, E: Dtype, D: Storage<E>>(pub &'a AmortisedGuide<E, D>);

impl<E: Real, D: Device<E>> crate::predict::predictive::WeightSource<E, D> for LearnedPriorSource<'_, E, D> {
    fn draw(&mut self, _arch: &crate::model::arch::Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        self.0.prior().sample(self.0.store(), s, rng)
    }
}

/// Draws `s` samples from a learned prior (no tape).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{sample_learned_prior, Amortised, GuideConfig};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let mut guide = Lin::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// guide.set_prior_diagonal(0, &[1.0, -1.0], &[0.1, 0.1])?; // slope ~ N(1, 0.1²), bias ~ N(−1, 0.1²)
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = sample_learned_prior(&guide, 1000, &mut rng)?;
/// assert_eq!(w.num_samples(), 1000);
/// let flat = w.to_flat();
/// let mean_slope = flat.iter().map(|r| r[0]).sum::<f64>() / 1000.0;
/// let mean_bias = flat.iter().map(|r| r[1]).sum::<f64>() / 1000.0;
/// assert!((mean_slope - 1.0).abs() < 0.02 && (mean_bias + 1.0).abs() < 0.02);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_learned_prior<E: Real, D: Device<E>>(guide: &AmortisedGuide<E, D>, s: usize, rng: &mut impl Rng) -> Result<Weights<E, D>> {
    guide.prior().sample(guide.store(), s, rng)
}

impl LearnedPrior {
    /// The prior as a [`GaussianWeightPrior`] for the samplers in [`crate::methods::mcmc`]: one block per
    /// output unit (or per layer, for [`super::PriorFamily::LayerFullRank`]), with the learned
    /// means and full covariances at their current values.
    ///
    /// # Errors
    /// [`Error::NotPositiveDefinite`] when a learned covariance block is not positive definite.
    pub fn weight_prior<E: Real, D: Device<E>>(&self, store: &ParamStore<E, D>) -> Result<GaussianWeightPrior> {
        let mut blocks = Vec::new();
        let mut offset = 0;
        for l in 0..self.arch().layers.len() {
            let (mean, sigma, g, k) = self.moments(store, l);
            for gi in 0..g {
                blocks.push((offset, mean[gi * k..(gi + 1) * k].to_vec(), sigma[gi * k * k..(gi + 1) * k * k].to_vec()));
                offset += k;
            }
        }
        GaussianWeightPrior::from_blocks(offset, blocks)
    }
}

impl<E: Real, D: Device<E>> AmortisedGuide<E, D> {
    /// The guide's (meta-learned) prior as a [`GaussianWeightPrior`], for MCMC under the learned
    /// prior: pass it to [`crate::methods::mcmc::BnnPosterior::with_weight_prior`] or
    /// [`crate::methods::mcmc::SymMcmcSettings::weight_prior`].
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::{Amortised, GuideConfig};
    /// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcSettings};
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.3>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let bnnp = model.amortised_guide(GuideConfig::default())?; // meta-train it first
    /// let data = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.2, 0.0, -0.3], 1)?;
    /// let settings = SymMcmcSettings { chains: 8, warmup: 100, draws_per_chain: 2, weight_prior: Some(bnnp.weight_prior()?), ..Default::default() };
    /// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
    /// assert_eq!(run.pooled().len(), 16);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn weight_prior(&self) -> Result<GaussianWeightPrior> {
        self.prior().weight_prior(self.store())
    }
}
