//! The toolkit for writing **inference tests**: tests that show statistically whether an
//! inference result is right, with a stated false-alarm rate instead of hand-tuned thresholds.
//!
//! # What is here
//!
//! | module | what it gives you |
//! | --- | --- |
//! | [`reference`](mod@reference) | exact answers: the Bayesian linear regression posterior and evidence for any basis, Gaussian targets, a tiny tanh network by quadrature |
//! | [`assert`](mod@assert) | `check_*` / `assert_*` for means, variances, covariances (MCSE with ESS), Kolmogorov–Smirnov, and an energy-distance permutation test |
//! | [`sbc`] | simulation-based calibration through the [`sbc::PosteriorSampler`] trait, with a chi-square test of the ranks |
//! | [`crate::diagnostics`] | split R-hat, rank-normalised bulk/tail ESS, MCSE (Vehtari et al. 2021), the `az.summary` table |
//! | [`plot`] | PNG rank histograms and reliability diagrams |
//! | [`ranks`] | several ranks on threads of one process ([`ranks::on_threads`]), to test data-parallel code without MPI |
//! | [`special`] | the special functions underneath (the host matrices are in [`crate::linalg`]) |
//! | [`crate::metrics`] | the predictive metrics (NLL/LPD, RMSE, ECE, coverage), shared with the rest of the library |
//!
//! # How to write an inference test
//!
//! An inference test has three parts: a **reference** whose answer you know, an **inference
//! run** on it, and a **statistical comparison** whose false-alarm rate you choose.
//!
//! 1. **Pick a reference.** The best reference is one where your `#[bnn]` model's posterior is
//!    known exactly. A model whose only random layer is the last, linear one, with a Gaussian
//!    prior and Gaussian likelihood of known noise, *is* Bayesian linear regression on the
//!    features of the frozen layers: compute those features for your data, put them in a
//!    [`reference::BlrProblem`], and [`reference::BlrPosterior`] gives the exact posterior mean,
//!    covariance and log evidence. For sampler tests, a [`reference::Gaussian`] target is often
//!    enough. For end-to-end tests of nonlinear models, [`reference::TanhNetReference`] gives a
//!    tiny tanh network's posterior moments, predictive and evidence by quadrature.
//! 2. **Run inference** with fixed seeds, and collect the draws as `f64`: one `Vec<f64>` per
//!    chain for MCMC, or one flat `Vec<f64>` for independent draws (a mean-field guide, an exact
//!    sampler).
//! 3. **Compare** with an `assert_*` at a small `alpha` (say 0.01 or 0.001 for tests that run on
//!    every commit): the test fails by chance with probability `alpha` when the inference is
//!    right, and the failure message prints the statistic, the bound and the sample sizes. For
//!    MCMC first check [`diagnostics::rhat`](crate::diagnostics::rhat) and the ESS, then pass [`assert::Draws::chains`], so
//!    the standard errors account for autocorrelation.
//! 4. **When no exact posterior exists**, use [`sbc::run_sbc`]: draw parameters from the prior,
//!    simulate data, run your inference on it, and test that the ranks are uniform.
//!
//! The same comparison must also *fail* when inference is slightly wrong; see the measured
//! false-alarm rates and power in [`assert`](mod@assert).
//!
//! ## Example: a conjugate model, an MCMC-like sampler and an exact check
//!
//! ```
//! use rand::{rngs::StdRng, Rng, SeedableRng};
//! use rand_distr::StandardNormal;
//! use weightspace::testing::assert::{assert_mean, assert_variance, Draws};
//! use weightspace::diagnostics::{ess_bulk, rhat};
//! use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};
//!
//! // 1. the reference: y = w0 + w1·x + noise, features φ(x) = (1, x)
//! let xs: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
//! let problem = BlrProblem {
//!     design: xs.iter().map(|&x| vec![1.0, x]).collect(),
//!     targets: xs.iter().map(|&x| 0.5 - 2.0 * x + 0.1 * (13.0 * x).sin()).collect(),
//!     prior_mean: vec![0.0, 0.0],
//!     prior_covariance: PriorCovariance::Isotropic(4.0),
//!     noise_std: 0.2,
//! };
//! let exact = BlrPosterior::compute(&problem)?;
//!
//! // 2. the inference under test: here a random-walk Metropolis sampler on the slope w1
//! //    with w0 fixed at its posterior mean (its conditional posterior is known exactly too)
//! let cov = exact.covariance();
//! let (m0, m1) = (exact.mean()[0], exact.mean()[1]);
//! let cond_mean = m1; // conditioning on w0 = m0 does not move w1's mean
//! let cond_var = cov[(1, 1)] - cov[(0, 1)].powi(2) / cov[(0, 0)];
//! let log_target = |w1: f64| -0.5 * (w1 - cond_mean).powi(2) / cond_var;
//! let chains: Vec<Vec<f64>> = (0..4u64)
//!     .map(|c| {
//!         let mut rng = StdRng::seed_from_u64(c);
//!         let mut w = cond_mean;
//!         (0..2000)
//!             .map(|_| {
//!                 let prop = w + 2.0 * cond_var.sqrt() * rng.sample::<f64, _>(StandardNormal);
//!                 if rng.gen::<f64>().ln() < log_target(prop) - log_target(w) {
//!                     w = prop;
//!                 }
//!                 w
//!             })
//!             .collect()
//!     })
//!     .collect();
//!
//! // 3. the comparison: convergence first, then moments with ESS-aware bounds
//! assert!(rhat(&chains)? < 1.01);
//! assert!(ess_bulk(&chains)? > 400.0);
//! assert_mean(Draws::chains(&chains), cond_mean, 0.001);
//! assert_variance(Draws::chains(&chains), cond_var, 0.001);
//! # let _ = m0;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: an inference test for your own `#[bnn]` model
//!
//! A one-layer identity network with a Gaussian likelihood of known noise is Bayesian linear
//! regression, so the exact posterior predictive mean at a test input is known. The fitted
//! mean-field guide's predictive draws must match it within their Monte-Carlo error (the
//! mean-field optimum has the exact posterior mean), and the comparison is a 1 % test:
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::testing::assert::assert_mean;
//! use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};
//!
//! #[bnn]
//! struct Line {
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     out: Dense<1, 1>,
//!     #[likelihood]
//!     noise: Gaussian<Fixed<0.3>>,
//! }
//!
//! let xs: Vec<f64> = (0..30).map(|i| i as f64 / 15.0 - 1.0).collect();
//! let ys: Vec<f64> = xs.iter().map(|x| 0.8 * x - 0.2 + 0.3 * (7.0 * x).sin()).collect();
//! // 1. the reference: features [x, 1], in the layer's [W | b] order
//! let exact = BlrPosterior::compute(&BlrProblem {
//!     design: xs.iter().map(|&x| vec![x, 1.0]).collect(),
//!     targets: ys.clone(),
//!     prior_mean: vec![0.0; 2],
//!     prior_covariance: PriorCovariance::Isotropic(1.0),
//!     noise_std: 0.3,
//! })?;
//! let (want, _) = exact.predictive(&[1.5, 1.0])?;
//!
//! // 2. the inference under test
//! let dev = Cpu::default();
//! let data = Dataset::<f64, _>::regression(&dev, &xs, 1, &ys, 1)?;
//! let mut model = Line::<f64, Cpu>::new(&dev);
//! let mut guide = model.mean_field();
//! let cfg = FitConfig { steps: 2000, lr: 0.03, lr_end: Some(1e-4), progress: false, ..Default::default() };
//! fit(&mut model, &mut guide, &data, &cfg)?;
//!
//! // 3. the comparison: 4000 independent draws of f(1.5) from the guide
//! let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
//! let w = weightspace::sample_guide(Line::<f64, Cpu>::ARCH, &guide, 4000, &mut rng)?;
//! let x_star = dev.tensor_from_vec(vec![1.5], (1usize, 1usize));
//! let draws = model.forward(w, &x_star)?.as_vec();
//! assert_mean(&draws, want, 0.01);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: SBC of a guide you cannot solve exactly
//!
//! See [`sbc`] and the `inference_test_demo` example
//! (`cargo run --release --example inference_test_demo`), which runs SBC on a conjugate model
//! with the exact posterior sampler and with an over-confident one, and prints both p-values.

pub mod assert;
pub mod plot;
pub mod ranks;
pub mod reference;
pub mod sbc;

/// Special functions (re-exported from the numerics layer).
pub use crate::num::special;
