//! MCMC over BNN weights: NUTS, a batched many-chain sampler, and the symmetry-aware SYM-MCMC
//! workflow (docs/methods.md §4).
//!
//! | piece | what it is |
//! | --- | --- |
//! | [`LogDensity`], [`BatchLogDensity`] | the sampler boundary: `logp(position, grad)`, for one or `C` positions; a non-finite value is a divergence, not a panic |
//! | [`BnnPosterior`] | `p(w, ln σ | data)` of any `#[bnn]` model under its own priors, σ ~ HalfNormal ([`NoisePrior`]); all chains in one batched call |
//! | [`sample_nuts`] | one NUTS chain (nuts-rs): step size and diagonal mass matrix adapted; divergences, tree depths and step sizes reported |
//! | [`sample_nuts_chains`] | `C` NUTS chains, each with its own tree, step size and mass matrix, every leapfrog step one batched gradient call for the chains still running |
//! | [`sample_many_chains`] | `C` chains of jittered HMC with ChEES adaptation, every leapfrog step one batched gradient call |
//! | [`chains_needed`] | the chain-count bound: generalised coupon collector plus Markov's inequality (1274 with the paper's defaults) |
//! | [`sym_mcmc`] | the workflow: `ρ` chains, `W` warm-up steps, pooled and canonicalised draws, predictive, LPPD, R-hat/ESS |
//! | [`data`] | the sinusoidal and regression2d generators, standardisation and splits |
//! | [`SymMcmcRun::weight_summary`], [`PredictiveDraws::summary`](crate::export::PredictiveDraws::summary) | `az.summary` tables of the (canonicalised) weights and of function values at test inputs |
//! | [`SymMcmcRun::posterior_npz`], [`SymMcmcRun::sample_stats_npz`], [`SymMcmcRun::predictive_draws`] | the draws out to NumPy and ArviZ (see [`export`](crate::export)) |
//!
//! The canonicalisation step is a [`Canonicalise`] implementation: [`NoCanonicalisation`] is the
//! identity stand-in, and the symmetry module's exact tanh canonicalisation plugs in the same way
//! (any `Fn(&Architecture, &Weights) -> Result<Weights>` works).
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcSettings};
//!
//! #[bnn]
//! struct F1 {
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     hidden: Dense<1, 3, Tanh>,
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     out: Dense<3, 1>,
//!     #[likelihood]
//!     noise: Gaussian<Learned<1.0>>,
//! }
//!
//! let dev = Cpu::default();
//! let (train, test) = weightspace::mcmc::data::sinusoidal(80, 1).standardise().0.split(0.8, 1)?;
//! let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
//! let model = F1::<f32, Cpu>::new(&dev);
//! // 32 chains from U(-2, 2), 300 warm-up steps, 2 draws each
//! let settings = SymMcmcSettings { chains: 32, warmup: 300, draws_per_chain: 2, ..Default::default() };
//! let run = sym_mcmc(&model, &train, &settings, &NoCanonicalisation)?;
//! let lppd = run.lppd(&model, &test)?;
//! println!("test LPPD {:.3} ± {:.3}", lppd.mean, lppd.se);
//! assert!(lppd.mean > -2.0);
//! # Ok::<(), weightspace::Error>(())
//! ```

mod bound;
mod chees;
pub mod data;
mod export;
mod fused;
mod nuts;
mod nuts_chains;
mod shard;
mod target;
mod weight_prior;
mod workflow;

pub use bound::{chains_needed, expected_chains, paper_mode_probabilities};
pub use chees::{
    sample_many_chains, sample_many_chains_on, sample_many_chains_sharded, IterationStats, ManyChainRun, ManyChainSettings,
    StepSizeAdaptation,
};
pub use export::DrawSet;
pub use nuts::{sample_nuts, DrawStats, NutsRun, NutsSettings};
pub use nuts_chains::{sample_nuts_chains, sample_nuts_chains_on, NutsChains};
pub use target::{BatchLogDensity, BnnPosterior, LogDensity, NoisePrior};
pub use weight_prior::GaussianWeightPrior;
pub use workflow::{
    lppd, sym_mcmc, sym_mcmc_merge, sym_mcmc_on, sym_mcmc_shard, Canonicalise, ChainDiagnostics, ChainInit, ChainSampler, Lppd,
    NoCanonicalisation, PosteriorPredictive, SamplerReport, SymMcmcRun, SymMcmcSettings,
};
