//! BNNP: amortised pseudo-observation guides and meta-learned priors (Rochussen & Fortuin,
//! *Amortising Inference and Meta-Learning Priors in Neural Networks*, ICLR 2026).
//!
//! The posterior over a network's weights is built layer by layer. Each layer's factor is the exact
//! Bayesian-linear-regression posterior of that layer: its regressors are the layer's real inputs
//! (computed with the earlier layers' sampled weights), its targets are pseudo-observations that an
//! inference network emits for every data point, and the output layer uses the real targets. The
//! prior is learnable and can be meta-learned across many datasets, which makes the whole thing a
//! neural process whose latent variable is the weights and whose decoder is the BNN itself.
//!
//! # Pieces
//!
//! | piece | where |
//! |---|---|
//! | the guide for any dense `#[bnn]` model with a Gaussian likelihood | [`AmortisedGuide`], built by [`Amortised::amortised_guide`] |
//! | one pass: posterior from a context, outputs on context and targets through the same samples, closed-form KL | [`AmortisedGuide::forward`], [`ForwardOptions`] |
//! | within-task minibatching (context folded in chunks: the posterior is exact, the gradient a truncated, biased estimate) | [`ForwardOptions::chunk`] |
//! | per-layer posterior moments, predictions, log predictive density | [`AmortisedGuide::posterior_moments`], [`AmortisedGuide::predict`], [`AmortisedGuide::log_predictive`] |
//! | online last-layer updates on cached earlier-layer samples | [`AmortisedGuide::online`], [`OnlineLastLayer`] |
//! | learnable prior families (unit-wise full rank, weight-wise diagonal, layer-wise full rank), where they start, and partial trainability | [`LearnedPrior`], [`PriorConfig`], [`PriorFamily`], [`PriorInit`], [`PriorTraining`] |
//! | objectives: AVI, PP-AVI (β), target-only | [`TaskObjective`], [`task_terms`], [`split_task`] |
//! | the meta-learning loop | [`MetaLearner`], [`MetaConfig`], [`Checkpointing`] |
//! | task sources | [`TaskSource`], [`TaskCollection`], [`Generated`] with [`Sawtooth`], [`GpTasks`], [`BnnPriorTasks`], [`Heaviside`] |
//! | the Bayes-optimal predictor of a task family (the ceiling for a learned prior) | [`OracleLpd`] |
//! | parameters, Adam with linear decay, checkpoints, progress bar | [`ParamStore`], [`Adam`], [`linear_lr`], [`AmortisedGuide::save`], [`Progress`](crate::Progress) |
//! | prior transfer to mean-field VI and to samplers | [`LearnedPriorElbo`], [`LearnedPrior::log_density`], [`LearnedPriorSource`] |
//!
//! # How it is computed
//!
//! Per layer and output unit `d` (or per group of units, for layer-wise priors), with prior
//! `N(μ, Π⁻¹)` (`Π = Σ⁻¹ + jitter·I`), design `Φ = [a, 1]` of the context and pseudo-observations
//! `(v, λ)`: `P = Π + Φᵀ diag(λ_d) Φ`, `h = Π μ + Φᵀ(λ_d ⊙ v_d)`, `q = N(P⁻¹h, P⁻¹)`. Samples are
//! drawn by *perturb and solve*, `w = P⁻¹(h + ζ + Φᵀ(√λ_d ⊙ ε))` with `ζ ~ N(0, Π)`, which is an
//! exact reparameterised draw that needs only a solve. The factorisations, the sample and the KL
//! with its exact gradient run on the host (threads over samples), and dfdx's tape carries
//! first-order surrogates with the exact value and derivative (see [`linalg`](crate::linalg)), so the same
//! code runs on every dfdx device.
//!
//! Hidden layers' inference networks see `[x, y]` (or `[x, a, y]` with
//! [`InferenceInput::DataAndLayerInput`]) and emit `v` and `r` with `ln σ = r − 2`,
//! `λ = 1/(σ² + 10⁻⁶)`; the output layer's pseudo-precisions come from its own network or from the
//! likelihood noise ([`OutputPrecision`]).
//!
//! # Example: meta-learn, then predict from three points
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::bnnp::*;
//!
//! #[bnn]
//! struct Net {
//!     #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
//!     h: Dense<1, 16, Relu>,
//!     #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
//!     out: Dense<16, 1>,
//!     #[likelihood(upper = 0.5)]
//!     noise: Gaussian<Learned<0.1>>,
//! }
//!
//! let dev = Cpu::default();
//! let mut guide = Net::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
//! let mut tasks = Generated(Sawtooth { n_range: (20, 30), ..Default::default() });
//! let cfg = MetaConfig { steps: 20, tasks_per_step: 2, samples: 4, progress: false, ..Default::default() };
//! let report = MetaLearner::new(cfg)?.run(&mut guide, &mut tasks)?;
//! assert!(report.history.last().unwrap().objective.is_finite());
//!
//! // amortised inference on a new task: one forward pass, no optimisation
//! let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.4, -0.1, 0.3], 1)?;
//! let xs = dev.tensor_from_vec(vec![-0.5f32, 0.5], (2usize, 1usize));
//! let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
//! let f = guide.predict(Some(&ctx), &xs, 64, &mut rng)?;
//! assert_eq!(*f.shape(), (64, 2, 1));
//! # Ok::<(), weightspace::Error>(())
//! ```
mod conjugate;
mod guide;
mod infer;
mod lowrank;
mod meta;
mod objective;
mod online;
mod params;
mod prior;
mod tasks;
mod transfer;

pub use guide::{
    Amortised, AmortisedForward, AmortisedGuide, ForwardOptions, GuideConfig, InferenceInput, LayerPosterior, OutputPrecision,
};
pub use infer::InferenceNet;
pub use meta::{Checkpointing, MetaConfig, MetaLearner, MetaRecord, MetaReport};
pub use objective::{split_task, task_terms, Split, TaskObjective, TaskTerms};
pub use online::OnlineLastLayer;
pub use params::{linear_lr, Adam, AdamSettings, ParamId, ParamStore};
pub use prior::{LearnedPrior, PriorConfig, PriorFamily, PriorInit, PriorTraining};
pub use tasks::{gp_sample, BnnPriorTasks, Generated, GpTasks, Heaviside, OracleLpd, Sawtooth, TaskCollection, TaskGenerator, TaskSource};
pub use transfer::{sample_learned_prior, LearnedPriorElbo, LearnedPriorSource};
