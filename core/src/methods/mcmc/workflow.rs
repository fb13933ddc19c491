//! The SYM-MCMC workflow (Wiese et al. 2023; docs/methods.md §4) as one call: `ρ` chains from
//! random initialisations, `W` warm-up steps and a few draws per chain, pooled and canonicalised,
//! then the posterior predictive, the mean test LPPD and convergence diagnostics.

use std::time::Instant;

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::chees::{sample_many_chains_on, sample_many_chains_sharded, ManyChainRun, ManyChainSettings};
use super::nuts::NutsSettings;
use super::nuts_chains::run_chains;
use super::shard::ChainShard;
use super::target::{BnnPosterior, LogDensity, NoisePrior};
use super::GaussianWeightPrior;
use crate::communicator::{share, Communicator, SingleProcess};
use crate::model::arch::Architecture;
use crate::model::bnn::{Bnn, Weights};
use crate::model::data::Dataset;
use crate::num::diagnostics::{ess_bulk, rhat};
use crate::vi::bnn_ext::BnnExt;
use crate::{Error, Real, Result};

/// Maps weight samples to one representative of their symmetry class (the reference set `S₁`).
///
/// The symmetry module provides the exact tanh canonicalisation (sign flips, then sorting by
/// bias); [`NoCanonicalisation`] is the identity. Closures `Fn(&Architecture, &Weights) ->
/// Result<Weights>` implement it too.
///
/// ```
/// use weightspace::mcmc::Canonicalise;
/// use weightspace::prelude::*;
/// /// Sorts nothing: a (trivially function-preserving) canonicalisation of our own.
/// struct Keep;
/// impl<E: Real, D: Device<E>> Canonicalise<E, D> for Keep {
///     fn canonicalise(&self, _arch: &Architecture, w: &Weights<E, D>) -> Result<Weights<E, D>> {
///         Ok(w.clone())
///     }
/// }
/// #[bnn]
/// struct F1 { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
/// let model = F1::<f64, Cpu>::new(&Cpu::default());
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = model.sample_prior(4, &mut rng)?;
/// let arch = F1::<f64, Cpu>::ARCH;
/// assert_eq!(Keep.canonicalise(arch, &w)?.to_flat(), w.to_flat());
/// // a closure works too; the exact tanh rule makes every hidden bias non-negative
/// let exact = |a: &Architecture, w: &Weights<f64, Cpu>| Canonicalisation::Exact.canonicalise(a, w);
/// let c = exact.canonicalise(arch, &w)?.to_flat();
/// assert!(c.iter().all(|row| row[1] >= 0.0 && row[3] >= 0.0));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait Canonicalise<E: Real, D: Device<E>> {
    /// Canonicalises every sample of `weights`; must not change the network function.
    fn canonicalise(&self, arch: &Architecture, weights: &Weights<E, D>) -> Result<Weights<E, D>>;
}

/// The identity map: a stand-in until a real canonicalisation is plugged in.
///
/// ```
/// use weightspace::mcmc::{Canonicalise, NoCanonicalisation};
/// use weightspace::prelude::*;
/// #[bnn]
/// struct F1 { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
/// let model = F1::<f64, Cpu>::new(&Cpu::default());
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = model.sample_prior(4, &mut rng)?;
/// let same = NoCanonicalisation.canonicalise(F1::<f64, Cpu>::ARCH, &w)?;
/// assert_eq!(same.to_flat(), w.to_flat());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCanonicalisation;

impl<E: Real, D: Device<E>> Canonicalise<E, D> for NoCanonicalisation {
    fn canonicalise(&self, _arch: &Architecture, weights: &Weights<E, D>) -> Result<Weights<E, D>> {
        Ok(weights.clone())
    }
}

impl<E: Real, D: Device<E>, F: Fn(&Architecture, &Weights<E, D>) -> Result<Weights<E, D>>> Canonicalise<E, D> for F {
    fn canonicalise(&self, arch: &Architecture, weights: &Weights<E, D>) -> Result<Weights<E, D>> {
        self(arch, weights)
    }
}

/// Which sampler runs the chains.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, ChainSampler, NoCanonicalisation, NutsSettings, SamplerReport, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// assert!(matches!(SymMcmcSettings::default().sampler, ChainSampler::ManyChain(_)));
/// // one NUTS chain after the other instead
/// let settings = SymMcmcSettings {
///     chains: 2, warmup: 100, draws_per_chain: 5,
///     sampler: ChainSampler::Nuts(NutsSettings::default()),
///     ..Default::default()
/// };
/// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// assert!(matches!(&run.report, SamplerReport::Nuts(per_chain) if per_chain.len() == 2));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum ChainSampler {
    /// All chains together in the batched ChEES-HMC sampler (the fast path).
    ManyChain(ManyChainSettings),
    /// NUTS in every chain, as in the paper: each chain with its own tree, step size and mass
    /// matrix, all chains advanced together by the batched [`sample_nuts_chains`](super::sample_nuts_chains).
    Nuts(NutsSettings),
}

/// How chains start.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, ChainInit, NoCanonicalisation, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// assert_eq!(SymMcmcSettings::default().init, ChainInit::Uniform(2.0));
/// let settings = SymMcmcSettings { chains: 4, warmup: 50, draws_per_chain: 2, init: ChainInit::Prior, ..Default::default() };
/// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// assert_eq!(run.pooled().len(), 8);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChainInit {
    /// Every coordinate (weights and `ln σ`) uniform on `(−a, a)`.
    Uniform(f64),
    /// Weights from the prior (the model's, or [`SymMcmcSettings::weight_prior`]), `ln σ = 0`.
    Prior,
}

/// Settings of [`sym_mcmc`].
///
/// ```
/// use weightspace::mcmc::SymMcmcSettings;
/// let s = SymMcmcSettings::default();
/// assert_eq!((s.chains, s.warmup, s.draws_per_chain), (1274, 1024, 1));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SymMcmcSettings {
    /// Number of chains `ρ` (see [`super::chains_needed`]). Default 1274.
    pub chains: usize,
    /// Warm-up steps per chain `W`. Default 1024.
    pub warmup: usize,
    /// Draws kept per chain. Default 1.
    pub draws_per_chain: usize,
    /// The sampler; its own warm-up and draw counts are overridden by the two fields above.
    /// Default the many-chain sampler with its defaults.
    pub sampler: ChainSampler,
    /// Initialisation. Default `Uniform(2.0)`.
    pub init: ChainInit,
    /// Noise treatment. Default HalfNormal(1).
    pub noise: NoisePrior,
    /// The weight prior; `None` (the default) uses the model's own priors. Set it to sample under
    /// a meta-learned prior ([`crate::methods::bnnp::AmortisedGuide::weight_prior`]); [`ChainInit::Prior`]
    /// then draws from it too.
    pub weight_prior: Option<GaussianWeightPrior>,
    /// Threads for the fused CPU log density and for the chains' own work between its calls
    /// (leapfrog updates with the many-chain sampler, the trees with NUTS; 0: all cores).
    /// Default 0, every core. Under MPI, with one rank per core, set 1.
    pub threads: usize,
    /// Seed (initial positions, sampler seeds).
    pub seed: u64,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a
    /// terminal): over the iterations with the many-chain sampler, over the chains with NUTS.
    pub progress: bool,
}

impl Default for SymMcmcSettings {
    fn default() -> Self {
        Self {
            chains: 1274,
            warmup: 1024,
            draws_per_chain: 1,
            sampler: ChainSampler::ManyChain(ManyChainSettings::default()),
            init: ChainInit::Uniform(2.0),
            noise: NoisePrior::default(),
            weight_prior: None,
            threads: 0,
            seed: 0,
            progress: false,
        }
    }
}

/// Mean test LPPD with its standard error over test points.
///
/// ```
/// use weightspace::mcmc::{lppd, Lppd};
/// // (S = 2, N = 2) log-likelihoods that agree across samples: the LPPD is the log-likelihood
/// let l: Lppd = lppd(&[-1.0, -2.0, -1.0, -2.0], 2, 2)?;
/// assert!((l.pointwise[0] + 1.0).abs() < 1e-12 && (l.pointwise[1] + 2.0).abs() < 1e-12);
/// assert!((l.mean + 1.5).abs() < 1e-12);
/// assert!((l.se - 0.5).abs() < 1e-12); // sample sd 0.5·√2 over √2 points
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Lppd {
    /// `(1/n) Σ_i ln((1/S) Σ_s p(y_i | θ_s))`, by logsumexp, no point dropped.
    pub mean: f64,
    /// Standard error of `mean` over test points.
    pub se: f64,
    /// Per-point values.
    pub pointwise: Vec<f64>,
}

/// Mean LPPD from a row-major `(S, N)` matrix of log-likelihoods (logsumexp over samples; a
/// sample whose likelihood underflows only contributes zero, and no point is dropped).
///
/// ```
/// use weightspace::mcmc::lppd;
/// // two samples, two points: ln((e^{-1} + e^{-3})/2) and ln((e^{-2} + e^{-2})/2)
/// let l = lppd(&[-1.0, -2.0, -3.0, -2.0], 2, 2)?;
/// let p0 = ((-1f64).exp() + (-3f64).exp()).ln() - 2f64.ln();
/// assert!((l.pointwise[0] - p0).abs() < 1e-12 && (l.pointwise[1] + 2.0).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn lppd(loglik: &[f64], s: usize, n: usize) -> Result<Lppd> {
    let pointwise = crate::predict::metrics::pointwise_log_predictive_density(loglik, s, n)?;
    let (mean, se) = if n >= 2 { crate::predict::metrics::mean_and_se(&pointwise)? } else { (pointwise[0], f64::NAN) };
    Ok(Lppd { mean, se, pointwise })
}

/// Convergence diagnostics over chains (needs at least 4 draws per chain).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, ChainDiagnostics, NoCanonicalisation, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 4, warmup: 200, draws_per_chain: 20, ..Default::default() };
/// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// let d: ChainDiagnostics = run.diagnostics(&model, &data)?;
/// assert!(d.max_rhat_function.is_finite() && d.max_rhat_weights.is_finite());
/// assert!(d.min_ess_function > 0.0 && d.min_ess_weights > 0.0);
/// // one draw per chain gives no diagnostics
/// let one = sym_mcmc(&model, &data, &SymMcmcSettings { chains: 4, warmup: 50, ..Default::default() }, &NoCanonicalisation)?;
/// assert!(one.diagnostics(&model, &data).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChainDiagnostics {
    /// Largest rank-normalised split R-hat of the network outputs at the evaluation inputs.
    pub max_rhat_function: f64,
    /// Smallest bulk ESS of those outputs.
    pub min_ess_function: f64,
    /// Largest R-hat of the canonicalised weights (and `ln σ`).
    pub max_rhat_weights: f64,
    /// Smallest bulk ESS of the canonicalised weights.
    pub min_ess_weights: f64,
}

/// Posterior predictive of a Gaussian model at some inputs, with each draw's own σ.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, PosteriorPredictive, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 8, warmup: 200, draws_per_chain: 4, ..Default::default() };
/// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// let pp: PosteriorPredictive = run.predictive(&model, &data)?;
/// assert_eq!(pp.mean.len(), 10);
/// // the predictive spread adds the noise to the spread of the network output
/// assert!(pp.std.iter().zip(&pp.f_std).all(|(s, f)| s >= f));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PosteriorPredictive {
    /// Predictive mean per input.
    pub mean: Vec<f64>,
    /// Predictive standard deviation (network spread plus noise) per input.
    pub std: Vec<f64>,
    /// Standard deviation of the network output alone.
    pub f_std: Vec<f64>,
}

impl PosteriorPredictive {
    /// `KL(self ‖ other)` of the two predictives as Gaussians per input, averaged over the inputs
    /// ([`gaussian_kl`](crate::metrics::gaussian_kl)): with `self` a reference run's predictive,
    /// how much of it `other` misses. Both must be at the same inputs.
    ///
    /// ```
    /// use weightspace::mcmc::PosteriorPredictive;
    /// let wide = PosteriorPredictive { mean: vec![0.0], std: vec![2.0], f_std: vec![1.0] };
    /// let narrow = PosteriorPredictive { mean: vec![0.0], std: vec![1.0], f_std: vec![0.5] };
    /// assert_eq!(wide.kl(&wide)?, 0.0);
    /// assert!(wide.kl(&narrow)? > narrow.kl(&wide)?); // missing the spread costs more
    /// assert!(wide.kl(&PosteriorPredictive { mean: vec![], std: vec![], f_std: vec![] }).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn kl(&self, other: &PosteriorPredictive) -> Result<f64> {
        let var = |s: &[f64]| s.iter().map(|s| s * s).collect::<Vec<_>>();
        Ok(crate::predict::metrics::gaussian_kl(&self.mean, &var(&self.std), &other.mean, &var(&other.std))?)
    }
}

/// Which sampler produced a [`SymMcmcRun`], with its own report.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SamplerReport, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 4, warmup: 50, draws_per_chain: 2, ..Default::default() };
/// let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// match &run.report {
///     SamplerReport::ManyChain(mc) => {
///         assert_eq!(mc.step_sizes.len(), 4);
///         assert_eq!(mc.iterations.len(), 50 + 2);
///     }
///     SamplerReport::Nuts(_) => unreachable!("the default sampler is the many-chain one"),
/// }
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum SamplerReport {
    /// The batched sampler's report (its draws are also in [`SymMcmcRun::draws`]).
    ManyChain(Box<ManyChainRun>),
    /// Per chain: divergences after warm-up, mean tree depth, final step size.
    Nuts(Vec<(usize, f64, f64)>),
}

/// The output of [`sym_mcmc`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcRun, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 4, warmup: 50, draws_per_chain: 3, ..Default::default() };
/// let run: SymMcmcRun = sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?;
/// assert_eq!((run.draws.len(), run.draws[0].len()), (4, 3));
/// assert_eq!(run.num_weights, 2);
/// assert!(run.samples_noise); // the learned σ is sampled: ln σ is the last coordinate
/// assert_eq!(run.draws[0][0].len(), 3);
/// assert_eq!(run.canonical, run.draws); // the identity canonicalisation
/// assert!(run.gradient_evaluations > 0);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SymMcmcRun {
    /// Raw draws `[chain][draw]` (positions: weights, then `ln σ` when sampled).
    pub draws: Vec<Vec<Vec<f64>>>,
    /// The same draws with canonicalised weights.
    pub canonical: Vec<Vec<Vec<f64>>>,
    /// Number of weights in a position.
    pub num_weights: usize,
    /// Whether `ln σ` is the last coordinate.
    pub samples_noise: bool,
    /// Divergences after warm-up, over all chains.
    pub divergences: usize,
    /// Positions evaluated (gradient evaluations) over the run.
    pub gradient_evaluations: u64,
    /// Seconds spent sampling (not canonicalising), on rank 0.
    pub seconds: f64,
    /// Of [`seconds`](Self::seconds), those rank 0 spent in collectives (cross-chain reductions,
    /// gathering the draws); 0-cost copies on a single process.
    pub communication_seconds: f64,
    /// Processes the chains were split across ([`sym_mcmc_on`]); 1 otherwise.
    pub ranks: usize,
    /// The sampler's own report.
    pub report: SamplerReport,
}

/// Runs the SYM-MCMC workflow on `model` and training data `train`, canonicalising the pooled
/// draws with `canon`. The model's own priors are used (so learned or meta-learned prior
/// parameters carry over); the noise gets [`SymMcmcSettings::noise`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcSettings};
/// #[bnn]
/// struct F1 { #[layer(prior = Normal(0.0, 1.0))] hidden: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let table = weightspace::mcmc::data::sinusoidal(60, 0).standardise().0;
/// let (train, test) = table.split(0.8, 0)?;
/// let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
/// let model = F1::<f32, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 16, warmup: 200, draws_per_chain: 4, ..Default::default() };
/// let run = sym_mcmc(&model, &train, &settings, &NoCanonicalisation)?;
/// let lppd = run.lppd(&model, &test)?;
/// assert!(lppd.mean.is_finite() && lppd.se > 0.0);
/// assert_eq!(run.pooled().len(), 64);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sym_mcmc<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    train: &Dataset<E, D>,
    settings: &SymMcmcSettings,
    canon: &impl Canonicalise<E, D>,
) -> Result<SymMcmcRun> {
    sym_mcmc_on(&SingleProcess, model, train, settings, canon)?
        .ok_or_else(|| Error::Communication { what: "single process".into(), reason: "rank 0 received no draws".into() })
}

/// [`sym_mcmc`] with the chains split across the processes of `comm` (see
/// [`comm`](crate::comm)): every rank calls it with the same arguments; rank 0 gets `Some(run)`
/// with every chain's draws, canonicalised there, and the other ranks `None`.
///
/// Every rank draws all `ρ` initial positions from the one seeded stream and keeps its own share,
/// so each chain starts where it would on one process. The many-chain sampler runs through
/// [`sample_many_chains_on`](super::sample_many_chains_on) (the same draws for any number of
/// ranks); NUTS chains are independent and dealt out in contiguous shares (chain `i` keeps seed
/// `seed + i`). Progress is shown on rank 0 only.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::comm::SingleProcess;
/// use weightspace::mcmc::{sym_mcmc, sym_mcmc_on, NoCanonicalisation, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..8).map(|i| i as f64 / 4.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 12, warmup: 40, draws_per_chain: 2, ..Default::default() };
/// let run = sym_mcmc_on(&SingleProcess, &model, &data, &settings, &NoCanonicalisation)?.expect("rank 0");
/// assert_eq!((run.ranks, run.draws.len()), (1, 12));
/// assert_eq!(run.draws, sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?.draws);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sym_mcmc_on<E: Real, D: Device<E>, M: Bnn<E, D>>(
    comm: &dyn Communicator,
    model: &M,
    train: &Dataset<E, D>,
    settings: &SymMcmcSettings,
    canon: &impl Canonicalise<E, D>,
) -> Result<Option<SymMcmcRun>> {
    let (mut post, init) = posterior_and_starts(model, train, settings)?;
    let Some(sampled) = sample_chains(comm, &mut post, init, settings, true)? else { return Ok(None) };
    finish(M::ARCH, &post, sampled, canon, comm.size()).map(Some)
}

/// [`sym_mcmc_on`] for runs too large to gather on rank 0: every rank samples its share of the
/// chains, exactly as `sym_mcmc_on` would, and writes them to a safetensors shard in `dir`
/// (`sym_mcmc.rank-<r>-of-<R>.safetensors`, atomically; `dir` is created if needed) instead of
/// sending them to rank 0. Returns the shard's path on every rank. Canonicalisation and everything
/// after it happen later, on one process, in [`sym_mcmc_merge`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::comm::SingleProcess;
/// use weightspace::mcmc::{sym_mcmc, sym_mcmc_merge, sym_mcmc_shard, NoCanonicalisation, SymMcmcSettings};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..8).map(|i| i as f64 / 4.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let settings = SymMcmcSettings { chains: 12, warmup: 40, draws_per_chain: 2, ..Default::default() };
/// let dir = std::env::temp_dir().join(format!("weightspace_doc_sym_shards_{}", std::process::id()));
/// // every rank of the MPI job (here, the one process) writes its shard
/// sym_mcmc_shard(&SingleProcess, &model, &data, &settings, &dir)?;
/// // then one process joins them
/// let run = sym_mcmc_merge(&model, &data, &settings, &NoCanonicalisation, &dir)?;
/// assert_eq!(run.draws, sym_mcmc(&model, &data, &settings, &NoCanonicalisation)?.draws);
/// std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sym_mcmc_shard<E: Real, D: Device<E>, M: Bnn<E, D>>(
    comm: &dyn Communicator,
    model: &M,
    train: &Dataset<E, D>,
    settings: &SymMcmcSettings,
    dir: impl AsRef<std::path::Path>,
) -> Result<std::path::PathBuf> {
    let (mut post, init) = posterior_and_starts(model, train, settings)?;
    let sampled = sample_chains(comm, &mut post, init, settings, false)?
        .ok_or_else(|| Error::Communication { what: "sharded run".into(), reason: "this rank kept no part of the run".into() })?;
    sampled.into_shard(comm, settings, LogDensity::dim(&post))?.write(dir.as_ref(), SYM_STEM)
}

/// Joins the shards that the ranks of a [`sym_mcmc_shard`] run wrote to `dir` and finishes the
/// workflow on this process: pooling, canonicalisation with `canon`, and the run that
/// [`sym_mcmc_on`] would have returned on rank 0 (the same draws and canonical draws; `seconds` and
/// `communication_seconds` are rank 0's sampling time). `model`, `train` and `settings` must be
/// those of the sharded run.
///
/// # Errors
/// [`Error::Checkpoint`] when the set of shards is incomplete or mixes runs (another rank count,
/// other settings); [`Error::InvalidConfig`] when `settings` differ from the shards' (chains, draws,
/// warm-up, seed, sampler).
pub fn sym_mcmc_merge<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    train: &Dataset<E, D>,
    settings: &SymMcmcSettings,
    canon: &impl Canonicalise<E, D>,
    dir: impl AsRef<std::path::Path>,
) -> Result<SymMcmcRun> {
    let (post, _) = posterior_and_starts(model, train, settings)?;
    let merged = ChainShard::merge_dir(dir.as_ref(), SYM_STEM, &SHARD_SETTINGS)?;
    let ranks = merged.ranks;
    let sampled = Sampled::from_shard(&merged, settings, LogDensity::dim(&post))?;
    finish(M::ARCH, &post, sampled, canon, ranks)
}

/// File stem of the workflow's shards.
const SYM_STEM: &str = "sym_mcmc";
/// Shard metadata keys that every shard of one run shares and `settings` must match.
const SHARD_SETTINGS: [&str; 5] = [
    "weightspace.sym_mcmc.sampler",
    "weightspace.sym_mcmc.seed",
    "weightspace.sym_mcmc.warmup",
    "weightspace.sym_mcmc.draws",
    "weightspace.sym_mcmc.dim",
];

/// A posterior and every chain's initial position.
type PosteriorAndStarts<'m, E, D, M> = (BnnPosterior<'m, E, D, M>, Vec<Vec<f64>>);

/// The posterior of `model` on `train` with the settings' noise and weight priors, and every
/// chain's initial position, drawn from the one seeded stream.
fn posterior_and_starts<'m, E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &'m M,
    train: &'m Dataset<E, D>,
    settings: &SymMcmcSettings,
) -> Result<PosteriorAndStarts<'m, E, D, M>> {
    if settings.chains == 0 {
        return Err(Error::config("SymMcmcSettings::chains", 0, "at least one chain is needed"));
    }
    if settings.draws_per_chain == 0 {
        return Err(Error::config("SymMcmcSettings::draws_per_chain", 0, "at least one draw per chain is needed"));
    }
    let mut post = BnnPosterior::new(model, train, settings.noise)?.threads(settings.threads);
    if let Some(prior) = &settings.weight_prior {
        post = post.with_weight_prior(prior.clone())?;
    }
    let dim = LogDensity::dim(&post);
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let init: Vec<Vec<f64>> = match settings.init {
        ChainInit::Uniform(a) => {
            if !(a.is_finite() && a > 0.0) {
                return Err(Error::config("ChainInit::Uniform", a, "the half-width must be positive and finite"));
            }
            (0..settings.chains).map(|_| (0..dim).map(|_| rng.gen_range(-a..a)).collect()).collect()
        }
        ChainInit::Prior => {
            let w = match &settings.weight_prior {
                Some(prior) => (0..settings.chains).map(|_| prior.sample(&mut rng)).collect(),
                None => model.sample_prior(settings.chains, &mut rng)?.to_flat(),
            };
            w.into_iter()
                .map(|mut r| {
                    r.resize(dim, 0.0);
                    r
                })
                .collect()
        }
    };
    Ok((post, init))
}

/// The chains' draws and the sampler's report: of every chain (gathered) or of one rank's share.
struct Sampled {
    draws: Vec<Vec<Vec<f64>>>,
    divergences: usize,
    report: SamplerReport,
    evaluations: u64,
    seconds: f64,
    communication_seconds: f64,
    /// Global index of the first chain held, and the chains of the whole run.
    first_chain: usize,
    total_chains: usize,
    /// NUTS: the leapfrog steps (gradient evaluations) of each chain held (empty for the many-chain sampler, whose
    /// count is over the whole run).
    chain_evaluations: Vec<u64>,
}

/// Runs the settings' sampler on `post` from `init` over the ranks of `comm`: with `gather`, every
/// chain on rank 0 (`None` elsewhere); without, every rank its own share.
fn sample_chains<E: Real, D: Device<E>, M: Bnn<E, D>>(
    comm: &dyn Communicator,
    post: &mut BnnPosterior<'_, E, D, M>,
    init: Vec<Vec<f64>>,
    settings: &SymMcmcSettings,
    gather: bool,
) -> Result<Option<Sampled>> {
    let dim = LogDensity::dim(post);
    let start = Instant::now();
    let total_chains = settings.chains;
    match &settings.sampler {
        ChainSampler::ManyChain(mc) => {
            let s = ManyChainSettings {
                warmup: settings.warmup,
                draws: settings.draws_per_chain,
                threads: settings.threads,
                progress: settings.progress,
                ..mc.clone()
            };
            let run =
                if gather { sample_many_chains_on(comm, post, init, &s)? } else { Some(sample_many_chains_sharded(comm, post, init, &s)?) };
            let Some(mut run) = run else { return Ok(None) };
            let draws = std::mem::take(&mut run.draws);
            Ok(Some(Sampled {
                draws,
                divergences: run.total_divergences(),
                evaluations: run.gradient_evaluations,
                seconds: start.elapsed().as_secs_f64(),
                communication_seconds: run.communication_seconds,
                first_chain: run.first_chain,
                total_chains,
                chain_evaluations: Vec::new(),
                report: SamplerReport::ManyChain(Box::new(run)),
            }))
        }
        ChainSampler::Nuts(ns) => {
            let mine = share(settings.chains, comm.rank(), comm.size());
            // per chain: the draws, then divergences, mean tree depth, step size, leapfrog steps
            let s = NutsSettings { warmup: settings.warmup, draws: settings.draws_per_chain, threads: settings.threads, ..ns.clone() };
            let local_init: Vec<Vec<f64>> = init.into_iter().skip(mine.start).take(mine.len()).collect();
            let run = run_chains(post, local_init, mine.start, &s, settings.progress && comm.is_root())?;
            let mut local = Vec::new();
            for chain in &run.chains {
                local.extend(chain.draws.iter().flatten());
                local.extend([
                    chain.divergences() as f64,
                    chain.mean_tree_depth(),
                    chain.step_size().unwrap_or(f64::NAN),
                    chain.leapfrog_steps() as f64,
                ]);
            }
            let per_chain = settings.draws_per_chain * dim + 4;
            let t = Instant::now();
            let (all, first_chain) = if gather {
                let counts: Vec<usize> = (0..comm.size()).map(|r| share(settings.chains, r, comm.size()).len() * per_chain).collect();
                let Some(all) = comm.gather_to_root(&local, &counts)? else { return Ok(None) };
                (all, 0)
            } else {
                (local, mine.start)
            };
            let communication_seconds = t.elapsed().as_secs_f64();
            let mut draws = Vec::new();
            let mut per = Vec::new();
            let mut chain_evaluations = Vec::new();
            for chain in all.chunks(per_chain) {
                let (body, tail) = chain.split_at(settings.draws_per_chain * dim);
                draws.push(body.chunks(dim).map(<[f64]>::to_vec).collect::<Vec<_>>());
                per.push((tail[0] as usize, tail[1], tail[2]));
                chain_evaluations.push(tail[3] as u64);
            }
            let divergences = per.iter().map(|p| p.0).sum();
            Ok(Some(Sampled {
                draws,
                divergences,
                report: SamplerReport::Nuts(per),
                evaluations: chain_evaluations.iter().sum(),
                seconds: start.elapsed().as_secs_f64(),
                communication_seconds,
                first_chain,
                total_chains,
                chain_evaluations,
            }))
        }
    }
}

impl Sampled {
    /// This rank's share as a draw shard, with the settings that every shard of the run shares.
    fn into_shard(self, comm: &dyn Communicator, settings: &SymMcmcSettings, dim: usize) -> Result<ChainShard> {
        let (kind, mut shard) = match self.report {
            SamplerReport::ManyChain(mut run) => {
                run.draws = self.draws;
                ("many-chain", run.to_shard(comm.rank())?)
            }
            SamplerReport::Nuts(per) => {
                let stats =
                    per.iter().zip(&self.chain_evaluations).flat_map(|(&(d, depth, step), &e)| [d as f64, depth, step, e as f64]).collect();
                let shard = ChainShard {
                    first_chain: self.first_chain,
                    total_chains: self.total_chains,
                    rank: comm.rank(),
                    ranks: comm.size(),
                    draws: self.draws,
                    per_chain: vec![("nuts".into(), 4, stats)],
                    run: Vec::new(),
                    meta: Default::default(),
                };
                ("nuts", shard)
            }
        };
        let entries = [
            ("sampler", kind.to_string()),
            ("seed", settings.seed.to_string()),
            ("warmup", settings.warmup.to_string()),
            ("draws", settings.draws_per_chain.to_string()),
            ("dim", dim.to_string()),
            ("seconds", self.seconds.to_string()),
            ("communication_seconds", self.communication_seconds.to_string()),
        ];
        shard.meta.extend(entries.into_iter().map(|(k, v)| (format!("weightspace.sym_mcmc.{k}"), v)));
        Ok(shard)
    }

    /// The whole run held by merged shards, checked against `settings` (and the posterior's
    /// dimension `dim`).
    fn from_shard(s: &ChainShard, settings: &SymMcmcSettings, dim: usize) -> Result<Self> {
        let kind = match settings.sampler {
            ChainSampler::ManyChain(_) => "many-chain",
            ChainSampler::Nuts(_) => "nuts",
        };
        let expect = [
            ("sampler", kind.to_string()),
            ("seed", settings.seed.to_string()),
            ("warmup", settings.warmup.to_string()),
            ("draws", settings.draws_per_chain.to_string()),
        ];
        for (k, want) in expect {
            let got: String = s.meta(&format!("weightspace.sym_mcmc.{k}"))?;
            if got != want {
                return Err(Error::config(
                    "SymMcmcSettings",
                    format!("{k} = {want} (the shards': {got})"),
                    "differs from the setting the shards were written with",
                ));
            }
        }
        if s.total_chains != settings.chains {
            return Err(Error::config(
                "SymMcmcSettings::chains",
                format!("{} (the shards': {})", settings.chains, s.total_chains),
                "differs from the number of chains the shards hold",
            ));
        }
        let got_dim: usize = s.meta("weightspace.sym_mcmc.dim")?;
        if got_dim != dim {
            return Err(Error::config(
                "sym_mcmc_merge model",
                format!("{dim} coordinates (the shards': {got_dim})"),
                "the model's posterior does not have the shards' dimension",
            ));
        }
        // evaluations: counted over the whole run by the many-chain sampler, per chain by NUTS
        let (report, divergences, evaluations) = if kind == "many-chain" {
            let mut run = ManyChainRun::from_shard(s)?;
            run.draws = Vec::new();
            let (div, evals) = (run.total_divergences(), run.gradient_evaluations);
            (SamplerReport::ManyChain(Box::new(run)), div, evals)
        } else {
            let stats = s.column("nuts")?;
            let per: Vec<(usize, f64, f64)> = stats.chunks(4).map(|r| (r[0] as usize, r[1], r[2])).collect();
            let div = per.iter().map(|p| p.0).sum();
            (SamplerReport::Nuts(per), div, stats.chunks(4).map(|r| r[3] as u64).sum())
        };
        Ok(Self {
            draws: s.draws.clone(),
            divergences,
            report,
            evaluations,
            seconds: s.meta("weightspace.sym_mcmc.seconds")?,
            communication_seconds: s.meta("weightspace.sym_mcmc.communication_seconds")?,
            first_chain: 0,
            total_chains: s.total_chains,
            chain_evaluations: Vec::new(),
        })
    }
}

/// Pools `sampled`'s draws, canonicalises their weights (keeping `ln σ`) and splits them back into
/// chains.
fn finish<E: Real, D: Device<E>, M: Bnn<E, D>>(
    arch: &Architecture,
    post: &BnnPosterior<'_, E, D, M>,
    sampled: Sampled,
    canon: &impl Canonicalise<E, D>,
    ranks: usize,
) -> Result<SymMcmcRun> {
    let p = post.num_weights();
    let Sampled { draws, divergences, report, evaluations, seconds, communication_seconds, .. } = sampled;
    let pooled: Vec<Vec<f64>> = draws.iter().flatten().cloned().collect();
    let w = post.weights(&pooled)?;
    let cw = canon.canonicalise(arch, &w)?.to_flat();
    if cw.len() != pooled.len() {
        return Err(Error::Shape {
            what: "canonicalised weights".into(),
            expected: format!("{} samples", pooled.len()),
            got: format!("{} samples", cw.len()),
        });
    }
    let mut it = cw.into_iter().zip(&pooled).map(|(mut c, raw)| {
        c.extend_from_slice(&raw[p..]);
        c
    });
    let canonical = draws.iter().map(|ch| ch.iter().map(|_| it.next().expect("same count")).collect()).collect();
    Ok(SymMcmcRun {
        draws,
        canonical,
        num_weights: p,
        samples_noise: post.samples_noise(),
        divergences,
        gradient_evaluations: evaluations,
        seconds,
        communication_seconds,
        ranks,
        report,
    })
}

impl SymMcmcRun {
    /// Every canonicalised draw, pooled over chains.
    pub fn pooled(&self) -> Vec<Vec<f64>> {
        self.canonical.iter().flatten().cloned().collect()
    }

    /// Mean test LPPD (± s.e. over test points) of the pooled draws, each with its own σ.
    pub fn lppd<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, model: &M, test: &Dataset<E, D>) -> Result<Lppd> {
        let pooled = self.pooled();
        let ll = self.posterior(model, test)?.pointwise_log_lik(&pooled, test)?;
        lppd(&ll, pooled.len(), test.len())
    }

    /// Posterior predictive at inputs `x` (Gaussian likelihoods).
    pub fn predictive<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, model: &M, data: &Dataset<E, D>) -> Result<PosteriorPredictive> {
        let pooled = self.pooled();
        let post = self.posterior(model, data)?;
        let f = post.outputs(&pooled, &data.x)?;
        let (s, n) = (pooled.len(), data.len());
        let k = M::ARCH.d_out();
        let noise_var = pooled.iter().map(|p| post.sigma(p).unwrap_or(0.0).powi(2)).sum::<f64>() / s as f64;
        let mut mean = vec![0.0; n * k];
        let mut m2 = vec![0.0; n * k];
        for si in 0..s {
            for j in 0..n * k {
                let v = f[si * n * k + j];
                let delta = v - mean[j];
                mean[j] += delta / (si + 1) as f64;
                m2[j] += delta * (v - mean[j]);
            }
        }
        let f_std: Vec<f64> = m2.iter().map(|v| (v / s as f64).sqrt()).collect();
        let std = f_std.iter().map(|v| (v * v + noise_var).sqrt()).collect();
        Ok(PosteriorPredictive { mean, std, f_std })
    }

    /// The distinct modes among the pooled canonicalised draws: [`spectral_modes`](crate::methods::symmetry::spectral_modes)
    /// (spectral clustering, `K` by the eigengap rule) on at most `max_points` of them, taken
    /// evenly (every `⌈pooled / max_points⌉`-th draw; spectral clustering is dense, `O(n³)`). With
    /// one draw per chain every draw is one chain's end point. `max_points` must be at least 2.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{sym_mcmc, SymMcmcSettings};
    /// use weightspace::symmetry::{Canonicalisation, SpectralSettings};
    /// #[bnn]
    /// struct F1 { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..20).map(|i| i as f64 / 5.0 - 2.0).collect();
    /// let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
    /// let model = F1::<f64, Cpu>::new(&dev);
    /// let settings = SymMcmcSettings { chains: 12, warmup: 100, draws_per_chain: 2, progress: false, ..Default::default() };
    /// let run = sym_mcmc(&model, &data, &settings, &Canonicalisation::Exact)?;
    /// let modes = run.modes(10, &SpectralSettings::default())?; // every 3rd of the 24 draws
    /// assert_eq!(modes.labels.len(), 8);
    /// assert!((1..=8).contains(&modes.count()));
    /// assert!(run.modes(1, &SpectralSettings::default()).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn modes(
        &self,
        max_points: usize,
        settings: &crate::methods::symmetry::SpectralSettings,
    ) -> Result<crate::methods::symmetry::Modes> {
        if max_points < 2 {
            return Err(Error::config("SymMcmcRun::modes max_points", max_points, "must be at least 2"));
        }
        let pooled = self.pooled();
        let every = pooled.len().div_ceil(max_points).max(1);
        let thinned: Vec<Vec<f64>> = pooled.into_iter().step_by(every).collect();
        crate::methods::symmetry::spectral_modes(&thinned, settings)
    }

    /// R-hat and bulk ESS of the network outputs at `data`'s inputs and of the canonicalised
    /// weights, over chains. Needs at least 4 draws per chain (the SYM-MCMC default of one draw per
    /// chain gives none: an error then).
    pub fn diagnostics<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, model: &M, data: &Dataset<E, D>) -> Result<ChainDiagnostics> {
        let per = self.canonical.first().map_or(0, |c| c.len());
        if per < 4 {
            return Err(Error::config("draws_per_chain", per, "R-hat and ESS need at least 4 draws per chain"));
        }
        let post = self.posterior(model, data)?;
        let n = data.len() * M::ARCH.d_out();
        let outs: Vec<Vec<f64>> = self.canonical.iter().map(|ch| post.outputs(ch, &data.x)).collect::<Result<_>>()?;
        let stat = |series: &dyn Fn(usize, usize) -> f64, q: usize| -> Result<(f64, f64)> {
            let (mut rmax, mut emin) = (0.0f64, f64::INFINITY);
            for j in 0..q {
                let chains: Vec<Vec<f64>> = (0..self.canonical.len()).map(|c| (0..per).map(|t| series(c, t * q + j)).collect()).collect();
                let r = rhat(&chains)?;
                let e = ess_bulk(&chains)?;
                rmax = rmax.max(r);
                emin = emin.min(e);
            }
            Ok((rmax, emin))
        };
        let (rf, ef) = stat(&|c, idx| outs[c][idx], n)?;
        let dim = self.canonical[0][0].len();
        let (rw, ew) = stat(&|c, idx| self.canonical[c][idx / dim][idx % dim], dim)?;
        Ok(ChainDiagnostics { max_rhat_function: rf, min_ess_function: ef, max_rhat_weights: rw, min_ess_weights: ew })
    }

    fn posterior<'a, E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &'a M,
        data: &'a Dataset<E, D>,
    ) -> Result<BnnPosterior<'a, E, D, M>> {
        let noise = if self.samples_noise { NoisePrior::HalfNormal(1.0) } else { NoisePrior::Fixed };
        BnnPosterior::new(model, data, noise)
    }
}

/// The symmetry module's canonicalisations (exact rule or the paper's data-driven variant) as the
/// workflow's canonicalisation step.
///
/// ```
/// use weightspace::mcmc::Canonicalise;
/// use weightspace::prelude::*;
/// #[bnn]
/// struct F1 { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
/// let dev = Cpu::default();
/// let model = F1::<f64, Cpu>::new(&dev);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = model.sample_prior(5, &mut rng)?;
/// let c = Canonicalisation::Exact.canonicalise(F1::<f64, Cpu>::ARCH, &w)?;
/// // canonical hidden biases are non-negative and sorted
/// for row in c.to_flat() {
///     let b: Vec<f64> = (0..3).map(|u| row[u * 2 + 1]).collect();
///     assert!(b.windows(2).all(|p| p[0] <= p[1]) && b[0] >= 0.0);
/// }
/// # Ok::<(), weightspace::Error>(())
/// ```
impl<E: Real, D: Device<E>> Canonicalise<E, D> for crate::methods::symmetry::Canonicalisation {
    fn canonicalise(&self, arch: &Architecture, weights: &Weights<E, D>) -> Result<Weights<E, D>> {
        let group = crate::methods::symmetry::SymmetryGroup::of(arch);
        match self {
            crate::methods::symmetry::Canonicalisation::Exact => group.canonicalise(weights),
            rule => {
                let out = group.canonicalise_batch(&weights.to_flat(), rule)?;
                let dev =
                    weights.layers.first().map(|t| t.device().clone()).ok_or_else(|| crate::Error::Empty { what: "weights".into() })?;
                Weights::from_flat(&dev, arch, &out.samples)
            }
        }
    }
}
