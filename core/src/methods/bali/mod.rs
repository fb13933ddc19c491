//! **BALI**: Bayesian layerwise inference with Kronecker-factored matrix-normal posteriors
//! (Kurle, Klushyn & Herbrich, arXiv 2411.12102).
//!
//! A network made of dense layers is treated as a stack of multivariate Bayesian linear
//! regressions, one per layer. If every layer's *target outputs* were known, each layer's posterior
//! would be exact and matrix-normal. BALI makes up those targets — **pseudo-targets** — from the
//! forward pass and the backpropagated gradient, solves every layer's regression in closed form,
//! and repeats.
//!
//! Only the paper's abstract (and the opening of its introduction) could be read, so the algorithm
//! below is a reconstruction consistent with it (`docs/methods.md` §2). Every choice it makes is
//! listed under [Choices](#choices) and is a knob of [`BaliConfig`].
//!
//! # The update
//!
//! Layer `l` maps its augmented input `φ = [a^{l−1}, 1] ∈ R^{d_in+1}` to `z = W φ ∈ R^{d_out}`,
//! with `W = [W | b]` laid out as in [`Weights`]. For a batch `B` of a dataset of `N` points and
//! linearisation weights `W` (see [`Linearisation`]):
//!
//! 1. **Forward and backward** (on the device). Keep every `φ_n` and `z_n`, and backpropagate
//!    `g_n = ∂ℓ_n/∂z_n` with `ℓ_n = −ln p(y_n | x_n, W)`.
//! 2. **Pseudo-noise** `Σ_l = (G_l + δ_l I)⁻¹`, where `G_l` is the curvature of the per-point loss
//!    in the layer's outputs, averaged over points ([`SigmaEstimate`]) and `δ_l` the damping
//!    ([`BaliConfig::damping`] for hidden layers, [`BaliConfig::output_damping`] for a classifier's
//!    output layer).
//!    At a Gaussian output layer `G_L = I/σ²` exactly, so `Σ_L = σ² I`, undamped.
//! 3. **Pseudo-targets** `t_n = z_n − α Σ_l g_n`. With `α = 1` they minimise the second-order
//!    Taylor expansion of `ℓ_n` in `z_n` (with the curvature replaced by its average `G_l`, the price
//!    of the Kronecker structure): the pseudo-likelihood `t_n ~ N(W φ_n, Σ_l)` is that quadratic
//!    approximation of the loss.
//! 4. **Natural-parameter terms** of the batch, scaled to the dataset:
//!    `A_B = (N/|B|) Σ_{n∈B} φ_n φ_nᵀ` and `T_B = (N/|B|) Σ_{n∈B} t_n φ_nᵀ`, folded into
//!    exponential moving averages `Ā ← ρ Ā + (1−ρ) A_B` and `T̄ ← ρ T̄ + (1−ρ) T_B` (bias-corrected
//!    as in Adam, so that the very first update is not shrunk towards zero). Full-batch updates
//!    use `ρ = 0` unless told otherwise: each update is then a fresh closed-form regression.
//! 5. **Closed-form posterior** (on the host, `f64`): with the prior `MN(M_0, Σ_l, Λ_0⁻¹)`,
//!    `Λ = Λ_0 + Ā` and `M_new = (M_0 Λ_0 + T̄) Λ⁻¹`; the posterior is `MN(M_new, Σ_l, Λ⁻¹)`,
//!    i.e. `Cov(vec W) = Λ⁻¹ ⊗ Σ_l` (column-stacked; `Σ_l ⊗ Λ⁻¹` row-stacked). Only `Λ`
//!    (`(d_in+1)²`) and `G_l + δ_l I` (`d_out²`) are factorised. For `α ≠ 1`, `M_0` is replaced
//!    by the damped prior pseudo-observation `M − α (M − M_0)` (see [Choices](#choices)).
//!
//! **Why it converges fast.** With the mean as linearisation point and one full batch,
//! `M_new = M − α (Σ_l ∇_W L + (M − M_0) Λ_0) Λ⁻¹`: a Kronecker-factored Gauss–Newton (K-FAC)
//! step on the negative log-posterior with step `α`, whose fixed points are stationary points of
//! the log-posterior (under the matrix-normal prior, whose precision `Λ_0 ⊗ Σ_l⁻¹` follows the
//! curvature). The posterior covariance `Λ⁻¹ ⊗ Σ_l = (Λ_0 + N·E[φφᵀ])⁻¹ ⊗ (G_l + δ)⁻¹` is
//! the Kronecker-factored Laplace approximation at that point. With sampled linearisation weights
//! the statistics become posterior expectations, and the mean update is a natural-gradient step on
//! the *expected* loss, as in noisy K-FAC.
//!
//! **Consistency.** At a Gaussian output layer with `α = 1`, `t_n = z_n − σ² (z_n − y_n)/σ² = y_n`
//! exactly, whatever the weights: the last layer's update is exact Bayesian linear regression on
//! the features of the layers below (tested against the exact BLR posterior in f64).
//!
//! # Choices
//!
//! | choice | default | knob |
//! |---|---|---|
//! | step `α` in the pseudo-targets | `1` (exact BLR at a Gaussian output) | [`BaliConfig::alpha`] |
//! | how `Σ_l` is estimated for hidden layers | exact Gauss–Newton factor `G_l = mean_n J_nᵀ H_n J_n`, i.e. K-FAC's `G` averaged over targets drawn from the model; output layer: exact `I/σ²` (Gaussian), `mean(diag p − ppᵀ)` (categorical), `mean p(1−p)` (Bernoulli) | [`BaliConfig::sigma`] |
//! | damping | hidden layers `δ_l = 0.1 · tr(G_l)/d_out` (relative Tikhonov); a categorical or Bernoulli output layer `1 · tr(G_L)/d_out`, a categorical one's logit-shift direction given `tr(G_L)/(d_out − 1)`; never at a Gaussian output | [`BaliConfig::damping`], [`BaliConfig::output_damping`] |
//! | prior precision `Λ_0` | from the model's declared Normal prior: `Λ_0 = κ diag(1/c_j)` with `c_j` the prior variance of input `j` (precisions averaged over units when they differ per unit or per weight) and `κ = d_out / tr(Σ_l⁻¹)`, so that the prior precision `Λ_0 ⊗ Σ_l⁻¹` equals the model's on average; `M_0` = the prior mean. For a Gaussian output `κ = σ²`, which is exactly the model's prior | [`BaliConfig::prior`] |
//! | prior in the mean step | the model's own prior: `M_new = M − α Σ_l (∇_W L + (M − M_0) ⊘ C) Λ'⁻¹`, with a preconditioner `Λ'` whose prior part `κ' = max(κ, λ_max(Σ_l))` dominates the prior's curvature; fixed points are the model's MAP; identical to the matrix-normal prior at a Gaussian output | [`BaliConfig::model_prior_in_mean`] |
//! | forgetting factor `ρ` | full batch: `0`; minibatches: `1 − |B|/N` (an averaging window of about one epoch) | [`BaliConfig::rho`] |
//! | linearisation point | 4 posterior samples | [`BaliConfig::linearisation`] |
//! | noise `σ` of a Gaussian likelihood | learned when declared `Learned`: `σ² ← ` EMA of the mean squared residual of the linearisation weights (the M-step of variational EM), written back into the model | [`BaliConfig::learn_noise`] |
//! | initial means | `M_0 + init_scale · (draw − M_0)`, `draw` from the model's prior (the prior mean plus `init_scale` prior standard deviations of standard-normal noise), every layer (breaks the symmetry between units; a last layer at its prior mean would leave the hidden layers without gradient, curvature or information at the first update, and the precision-matched prior would then pin them to the prior mean) | [`BaliConfig::init_scale`] |
//! | damped steps | `α < 1` moves the prior's pseudo-observation `M − α(M − M_0)` by the same step as the data's, so the fixed points stay those of `α = 1` (the likelihood is not tempered) | [`BaliConfig::alpha`] |
//! | where the algebra runs | forward/backward and the `Σ φφᵀ`, `Σ tφᵀ`, `Σ ggᵀ` reductions on the device in `E`; the small factorisations on the host in `f64` | — |
//!
//! Learned prior hyperparameters are read at their current values and not updated by BALI.
//!
//! # Known limitations (measured)
//!
//! - **Full-batch updates of deep models** with `α = 1` update every layer by a full
//!   Gauss–Newton step from the same linearisation point and can oscillate (seen on the wine data
//!   with 50 ReLU units). Minibatches, whose moving averages act as step damping, or `α < 1`
//!   avoid it. A Gaussian output layer alone is always solved exactly.
//! - **Classifiers.** The output curvature `diag p − ppᵀ` vanishes as predictions become
//!   confident, so `Σ_L` grows and the sampled posterior widens, and the pseudo-targets can
//!   overflow without damping ([`BaliConfig::output_damping`]). The network evaluated at posterior
//!   samples is less confident than it should be: the hidden layer's covariance, measured as local
//!   curvature, moves the network far out of the region where that curvature holds. The
//!   linearised predictive ([`BaliPosterior::linearised`]), which is what a curvature-based
//!   covariance describes, avoids that. On iris every Gaussian at the mode, BALI's and the
//!   exact full Gauss–Newton Laplace alike, stays well above the exact posterior's NLL (NUTS); see
//!   the `bali_uci` example and the README's BALI section for the figures.
//!
//! # Predicting
//!
//! A [`BaliPosterior`] is a weight source: `Predictive::new(k).evaluate(&model, posterior, &test)`
//! runs the network at `k` posterior samples. `posterior.linearised()` runs the network linearised
//! around the posterior means at the same samples ([`Linearised`](crate::predict::predictive::Linearised)),
//! the predictive that a Laplace-type covariance is built for; on the classification sets of the
//! `bali_uci` example (iris, breast cancer, digits) it had the lower NLL and ECE on all three.
//!
//! # Example
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::bali::{fit_bali, BaliConfig};
//!
//! #[bnn]
//! struct Net {
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     hidden: Dense<1, 16, Tanh>,
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     out: Dense<16, 1>,
//!     #[likelihood]
//!     noise: Gaussian<Fixed<0.1>>,
//! }
//!
//! let dev = Cpu::default();
//! let x: Vec<f64> = (0..64).map(|i| i as f64 / 16.0 - 2.0).collect();
//! let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
//! let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
//! let mut model = Net::<f64, Cpu>::new(&dev);
//! let (posterior, report) = fit_bali(&mut model, &data, &BaliConfig { epochs: 15, progress: false, ..Default::default() })?;
//! let first = report.history.first().unwrap().train_nll;
//! let last = report.history.last().unwrap().train_nll;
//! assert!(last < first);
//! // K = 100 posterior samples for the predictive
//! let metrics = Predictive::new(100).evaluate(&model, posterior.clone(), &data)?;
//! assert!(metrics.rmse.unwrap() < 0.2);
//! # Ok::<(), weightspace::Error>(())
//! ```

mod matrix_normal;
mod pass;

pub use matrix_normal::{BaliPosterior, MatrixNormal};

use dfdx::prelude::*;
use rand_distr::StandardNormal;

use crate::model::arch::{Architecture, LikelihoodSpec};
use crate::model::bnn::{Bnn, Weights};
use crate::model::data::Dataset;
use crate::model::minibatch::Minibatches;
use crate::num::dense::Matrix;
use crate::num::rng::{stream, Purpose};
use crate::{Error, Real, Result};

/// How the pseudo-noise covariance `Σ_l = (G_l + δ_l I)⁻¹` of a hidden layer is estimated. The
/// output layer always uses its likelihood's exact curvature.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig, SigmaEstimate};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 5.0 - 2.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Net::<f64, Cpu>::new(&dev);
/// assert_eq!(BaliConfig::default().sigma, SigmaEstimate::GaussNewton);
/// let cfg = BaliConfig { epochs: 5, sigma: SigmaEstimate::EmpiricalFisher, progress: false, ..Default::default() };
/// let (_, report) = fit_bali(&mut model, &data, &cfg)?;
/// assert!(report.history.iter().all(|e| e.train_nll.is_finite()));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaEstimate {
    /// The exact generalised Gauss–Newton factor `G_l = (1/N) Σ_n J_nᵀ H_n J_n`, with
    /// `J_n = ∂z_L/∂z_l` and `H_n` the output curvature, computed by backpropagating the columns
    /// of `H_n`'s square root (one backward pass per network output). It is the expectation of
    /// K-FAC's gradient-outer-product factor over targets drawn from the model, without the
    /// sampling noise. The default.
    #[default]
    GaussNewton,
    /// The empirical Fisher `G_l = (1/N) Σ_n g_n g_nᵀ` of the observed targets' gradients: no extra
    /// backward pass, but biased (it vanishes where the fit is perfect).
    EmpiricalFisher,
}

/// The prior precision `Λ_0` of each layer's matrix-normal prior `MN(M_0, Σ_l, Λ_0⁻¹)`; `M_0` is
/// always the model's prior mean.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig, PriorPrecision};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let fitted = |prior| -> weightspace::Result<f64> {
///     let cfg = BaliConfig { epochs: 1, prior, progress: false, ..Default::default() };
///     let (post, _) = fit_bali(&mut model.clone(), &data, &cfg)?;
///     Ok(post.layers()[0].mean()[(0, 0)]) // the posterior mean of the slope
/// };
/// // the model's N(0, 1) prior barely moves the slope of 20 points off 2 ...
/// assert!((fitted(PriorPrecision::FromModel)? - 2.0).abs() < 0.1);
/// // ... a very precise prior pins it at the prior mean 0
/// assert!(fitted(PriorPrecision::Fixed(1e6))?.abs() < 0.01);
/// // λ must be positive
/// let bad = BaliConfig { prior: PriorPrecision::Fixed(0.0), ..Default::default() };
/// assert!(bad.validate(20).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PriorPrecision {
    /// Matched to the model's declared Normal prior (see the [module docs](self#choices)). The
    /// default.
    #[default]
    FromModel,
    /// `Λ_0 = λ I` for every layer, whatever `Σ_l` (so the prior variance of a weight is
    /// `Σ_l[d, d] / λ`). Must be finite and `> 0`.
    Fixed(f64),
}

/// Which weights the forward/backward pass of an update uses.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig, Linearisation};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// assert_eq!(BaliConfig::default().linearisation, Linearisation::Samples(4));
/// let slope = |linearisation| -> weightspace::Result<f64> {
///     let cfg = BaliConfig { epochs: 1, linearisation, progress: false, ..Default::default() };
///     Ok(fit_bali(&mut model.clone(), &data, &cfg)?.0.layers()[0].mean()[(0, 0)])
/// };
/// // a single linear layer with a Gaussian likelihood: the update is exact Bayesian linear
/// // regression whichever weights it is linearised at
/// assert!((slope(Linearisation::Mean)? - slope(Linearisation::Samples(4))?).abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linearisation {
    /// The posterior mean: a deterministic K-FAC/Gauss–Newton step whose covariance is the
    /// Kronecker-factored Laplace approximation.
    Mean,
    /// This many weight samples from the current posterior; the statistics are averaged over
    /// them, which turns them into posterior expectations (as in noisy K-FAC). The first update
    /// always uses the initial means. `Samples(4)` is the default: on held-out splits of the wine
    /// and iris data it was more stable than [`Linearisation::Mean`], whose fits kept sharpening
    /// (the noise estimate shrinking) epoch after epoch.
    Samples(usize),
}

impl Default for Linearisation {
    fn default() -> Self {
        Linearisation::Samples(4)
    }
}

/// Settings of BALI. Plain data: override what you need with `..Default::default()`.
///
/// ```
/// use weightspace::bali::{BaliConfig, Linearisation};
/// let cfg = BaliConfig { epochs: 10, batch_size: Some(32), linearisation: Linearisation::Samples(4), ..Default::default() };
/// assert_eq!(cfg.alpha, 1.0);
/// assert!(cfg.validate(100).is_ok());
/// assert!(BaliConfig { rho: Some(1.0), ..cfg }.validate(100).is_err());
/// assert!(BaliConfig { output_damping: -1.0, ..cfg }.validate(100).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BaliConfig {
    /// Passes over the data. A full-batch epoch is one update. Default 20.
    pub epochs: usize,
    /// Minibatch size; `None` (the default) updates on the whole dataset. Batches are drawn by
    /// reshuffling once per epoch; the last, smaller batch of an epoch is used too.
    pub batch_size: Option<usize>,
    /// Step `α` in the pseudo-targets `t = z − α Σ_l ∂ℓ/∂z`. Default 1, which makes a Gaussian
    /// output layer's update exact Bayesian linear regression. Smaller values damp every layer's
    /// Gauss–Newton step without moving its fixed points (the prior term is stepped by `α` too):
    /// useful for classifiers, whose averaged curvature makes full steps overshoot, and for
    /// full-batch updates of deep models, where simultaneous full steps on every layer can
    /// oscillate.
    pub alpha: f64,
    /// Forgetting factor `ρ ∈ [0, 1)` of the moving averages. `None`: `0` for full-batch updates,
    /// `1 − |B|/N` for minibatches.
    pub rho: Option<f64>,
    /// How a hidden layer's `Σ_l` is estimated. Default [`SigmaEstimate::GaussNewton`].
    pub sigma: SigmaEstimate,
    /// Relative damping of the hidden layers: `δ_l = damping · tr(G_l)/d_out` is added to the
    /// diagonal of `G_l` before it is inverted (plus `1e-12` so that a vanishing `G_l` stays
    /// invertible). Default 0.1.
    pub damping: f64,
    /// Relative damping of a categorical or Bernoulli output layer, in the same form as
    /// [`damping`](Self::damping) (a Gaussian output layer is never damped: `Σ_L = σ² I`). Kept
    /// apart because the output layer's factor is exact (`mean(diag p − ppᵀ)`, `mean p(1−p)`)
    /// where the hidden layers' are approximations: the heavy damping that steadies a classifier's
    /// hidden layers holds its output layer back (measured on iris in the `bali_uci` example),
    /// while with none, or 0.1, the pseudo-targets overflowed on digits once predictions became
    /// confident. A categorical output's `G_L` has no curvature along 1 (the softmax ignores a
    /// constant added to every logit): that direction also gets `G_L`'s mean non-zero eigenvalue
    /// `tr(G_L)/(d_out − 1)`, which no prediction sees. Default 1.
    pub output_damping: f64,
    /// Prior precision. Default [`PriorPrecision::FromModel`].
    pub prior: PriorPrecision,
    /// Linearisation point. Default [`Linearisation::Samples`]`(4)`.
    pub linearisation: Linearisation,
    /// Learn a Gaussian noise scale (see the [module docs](self#choices)). `None` (the default)
    /// learns it exactly when the model declares it `Learned`.
    pub learn_noise: Option<bool>,
    /// Scale of the prior draw added to the initial means of every layer, the last included
    /// (`M = M_0 + init_scale · (prior draw − M_0)`). Default 1; `0` starts every layer at its
    /// prior mean.
    pub init_scale: f64,
    /// Where the mean update takes the prior's gradient from. `true` (the default): from the
    /// model's own prior, `M_new = M − α Σ_l (∇_W L + (M − M_0) ⊘ C) Λ⁻¹` with `C` the per-weight
    /// prior variances, so that the means converge to the model's MAP (or, with sampled
    /// linearisation, the minimiser of the expected loss plus the model's prior). `false`: from the
    /// matrix-normal prior `MN(M_0, Σ_l, Λ_0⁻¹)`, whose precision `Λ_0 ⊗ Σ_l⁻¹` matches the
    /// model's only on average over units and is concentrated in the directions of large
    /// curvature, many times the model's there for a classifier's hidden layer (it underfits).
    /// The two coincide at a Gaussian output layer whose prior variances are shared across
    /// outputs, where the update stays exact Bayesian linear regression. The covariance
    /// `Λ⁻¹ ⊗ Σ_l` is the same either way. With `true`, the mean step's preconditioner takes
    /// `κ' = max(κ, λ_max(Σ_l))` in place of `κ`, so that it dominates the model prior's
    /// curvature in every direction (without it the step overshoots where `Σ_l` is large, i.e.
    /// where the data constrain a hidden layer least). Applies with [`PriorPrecision::FromModel`]
    /// only; a [`PriorPrecision::Fixed`] prior is the matrix-normal one in the mean too.
    pub model_prior_in_mean: bool,
    /// Seed for the initialisation, the minibatch order and the linearisation samples.
    pub seed: u64,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal). Default true.
    pub progress: bool,
}

impl Default for BaliConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: None,
            alpha: 1.0,
            rho: None,
            sigma: SigmaEstimate::GaussNewton,
            damping: 0.1,
            output_damping: 1.0,
            prior: PriorPrecision::FromModel,
            linearisation: Linearisation::Samples(4),
            learn_noise: None,
            init_scale: 1.0,
            model_prior_in_mean: true,
            seed: 0,
            progress: true,
        }
    }
}

impl BaliConfig {
    /// Checks every setting for a dataset of `n` points.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::config("BaliConfig::epochs", 0, "at least one epoch is needed"));
        }
        if let Some(b) = self.batch_size {
            if b == 0 || b > n {
                return Err(Error::config("BaliConfig::batch_size", b, "must be between 1 and the dataset size"));
            }
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config("BaliConfig::alpha", self.alpha, "must be finite and > 0"));
        }
        if let Some(r) = self.rho {
            if !(0.0..1.0).contains(&r) {
                return Err(Error::config("BaliConfig::rho", r, "must lie in [0, 1)"));
            }
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(Error::config("BaliConfig::damping", self.damping, "must be finite and >= 0"));
        }
        if !(self.output_damping.is_finite() && self.output_damping >= 0.0) {
            return Err(Error::config("BaliConfig::output_damping", self.output_damping, "must be finite and >= 0"));
        }
        if let PriorPrecision::Fixed(l) = self.prior {
            if !(l.is_finite() && l > 0.0) {
                return Err(Error::config("BaliConfig::prior", l, "a fixed prior precision must be finite and > 0"));
            }
        }
        if self.linearisation == Linearisation::Samples(0) {
            return Err(Error::config("BaliConfig::linearisation", "Samples(0)", "at least one sample is needed"));
        }
        if !(self.init_scale.is_finite() && self.init_scale >= 0.0) {
            return Err(Error::config("BaliConfig::init_scale", self.init_scale, "must be finite and >= 0"));
        }
        Ok(())
    }

    fn rho_for(&self, batch: usize, n: usize) -> f64 {
        self.rho.unwrap_or(if batch >= n { 0.0 } else { 1.0 - batch as f64 / n as f64 })
    }
}

/// A bias-corrected exponential moving average: `acc ← ρ acc + (1−ρ) u`, read as `acc / (1 − ρᵏ)`.
#[derive(Debug, Clone)]
struct Ema {
    acc: Vec<f64>,
    weight: f64,
}

impl Ema {
    fn new(len: usize) -> Self {
        Self { acc: vec![0.0; len], weight: 0.0 }
    }
    fn update(&mut self, u: &[f64], rho: f64) {
        for (a, v) in self.acc.iter_mut().zip(u) {
            *a = rho * *a + (1.0 - rho) * v;
        }
        self.weight = rho * self.weight + (1.0 - rho);
    }
    fn value(&self) -> Vec<f64> {
        self.acc.iter().map(|a| a / self.weight).collect()
    }
}

#[derive(Debug, Clone)]
struct LayerState {
    aa: Ema,
    ta: Ema,
    /// `None` at a Gaussian output layer (curvature exactly `I/σ²`).
    g: Option<Ema>,
}

/// One update's figures.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{Bali, BaliConfig, StepRecord};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut bali = Bali::new(&model, BaliConfig::default())?;
/// let first: StepRecord = bali.step(&mut model, &data, data.len())?;
/// let second = bali.step(&mut model, &data, data.len())?;
/// assert_eq!((first.step, second.step), (0, 1));
/// assert_eq!(first.rho, 0.0); // full-batch updates forget everything
/// assert!(second.nll < first.nll); // the second pass is linearised at the fitted weights
/// assert!((first.noise_std.unwrap() - 0.5).abs() < 1e-12); // the fixed noise scale
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Zero-based update index.
    pub step: usize,
    /// Mean negative log-likelihood per point of the batch under the linearisation weights (before
    /// the update).
    pub nll: f64,
    /// The forgetting factor used.
    pub rho: f64,
    /// The Gaussian noise scale after the update.
    pub noise_std: Option<f64>,
}

/// One epoch's figures.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{Bali, BaliConfig, EpochRecord};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut bali = Bali::new(&model, BaliConfig { batch_size: Some(6), ..Default::default() })?;
/// let e: EpochRecord = bali.epoch(&mut model, &data)?;
/// assert_eq!(e.epoch, 1);
/// assert_eq!(e.steps, 4); // batches of 6, 6, 6 and 2
/// assert!(e.train_nll.is_finite() && e.seconds >= 0.0);
/// assert_eq!(bali.epoch(&mut model, &data)?.epoch, 2);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// One-based epoch index.
    pub epoch: usize,
    /// Mean over the epoch's batches (weighted by size) of the per-point negative log-likelihood
    /// under the linearisation weights: a cheap training-fit figure, not a predictive NLL.
    pub train_nll: f64,
    /// The Gaussian noise scale at the end of the epoch.
    pub noise_std: Option<f64>,
    /// Updates taken in this epoch.
    pub steps: usize,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

/// What [`fit_bali`] returns beside the posterior.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig, BaliReport};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 5.0 - 2.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Net::<f64, Cpu>::new(&dev);
/// let (_, report): (_, BaliReport) = fit_bali(&mut model, &data, &BaliConfig { epochs: 3, progress: false, ..Default::default() })?;
/// assert_eq!(report.history.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![1, 2, 3]);
/// assert_eq!(report.steps, 3); // one full-batch update per epoch
/// // the learned noise scale is reported every epoch
/// assert!(report.history.iter().all(|e| e.noise_std.is_some()));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BaliReport {
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// Total updates.
    pub steps: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The state of a BALI run: the moving averages of every layer's natural-parameter terms and
/// curvature factor, the noise estimate, the current posterior and the RNG. Drive it with
/// [`Bali::step`] (one batch) or [`Bali::epoch`] (one pass), or let [`fit_bali`] do it.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{Bali, BaliConfig};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 1.0, 0.0, 1.0, 1.0], 2, &[0.1, 0.9, 2.0], 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut bali = Bali::new(&model, BaliConfig::default())?;
/// let rec = bali.step(&mut model, &data, data.len())?;
/// assert_eq!(rec.step, 0);
/// // one linear layer: the posterior is exact after a single update
/// assert_eq!(bali.posterior().layers()[0].shape(), (1, 3));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Bali<E: Dtype, D: Storage<E>> {
    cfg: BaliConfig,
    arch: &'static Architecture,
    layers: Vec<LayerState>,
    noise: Ema,
    posterior: BaliPosterior<E, D>,
    /// the minibatch schedule of the dataset `epoch` was last given (its size with it)
    batches: Option<(usize, Minibatches)>,
    steps: usize,
    epochs: usize,
}

/// The model's prior as host matrices: means `M_0` and per-entry variances, `d_out × (d_in + 1)`.
fn prior_host<E: Real, D: Device<E>, M: Bnn<E, D>>(model: &M) -> Result<Vec<(Matrix, Matrix)>> {
    crate::vi::prior::expand(M::ARCH.layers, &model.prior_params(), false)
        .into_iter()
        .map(|p| {
            let (o, i) = *p.loc.shape();
            let loc = pass::host(&p.loc.split_tape().0);
            let var = pass::host(&p.log_scale.split_tape().0).into_iter().map(|ls| (2.0 * ls).exp()).collect();
            Ok((Matrix::from_row_major(o, i, loc)?, Matrix::from_row_major(o, i, var)?))
        })
        .collect()
}

fn learns_noise(cfg: &BaliConfig, arch: &Architecture) -> bool {
    match arch.likelihood {
        LikelihoodSpec::Gaussian { scale, .. } => cfg.learn_noise.unwrap_or(scale.is_learned()),
        _ => false,
    }
}

impl<E: Real, D: Device<E>> Bali<E, D> {
    /// Starts a run for `model`: initial means as described in the [module docs](self#choices),
    /// `Σ_l = I` (`σ² I` at a Gaussian output) and no data yet, so the initial posterior is the
    /// matrix-normal prior centred on the initial means.
    ///
    /// The output layer must have the identity activation: BALI regresses the output layer's
    /// pre-activation on the likelihood, so an output activation would be fitted as if absent.
    /// Any other returns [`Error::InvalidConfig`].
    pub fn new<M: Bnn<E, D>>(model: &M, cfg: BaliConfig) -> Result<Self> {
        cfg.validate(usize::MAX)?;
        let arch = M::ARCH;
        if let Some(out) = arch.layers.last().filter(|l| l.activation != crate::model::arch::Activation::Identity) {
            return Err(Error::config(
                "output layer activation",
                format!("{:?} (layer `{}`)", out.activation, out.name),
                "BALI fits the output layer's pre-activation to the likelihood: the last layer must have the identity activation (the likelihood's link, e.g. softmax for Categorical, is applied by the likelihood itself)",
            ));
        }
        if cfg.learn_noise == Some(true) && !matches!(arch.likelihood, LikelihoodSpec::Gaussian { .. }) {
            return Err(Error::config("BaliConfig::learn_noise", true, "only a Gaussian likelihood has a noise scale"));
        }
        let mut rng = stream(cfg.seed, Purpose::Init, &[]);
        let prior = prior_host(model)?;
        let sd = crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params());
        let last = arch.layers.len() - 1;
        let mut mns = Vec::with_capacity(arch.layers.len());
        let mut layers = Vec::with_capacity(arch.layers.len());
        for (l, (spec, (m0, var))) in arch.layers.iter().zip(&prior).enumerate() {
            let (o, i) = (spec.d_out, spec.d_in + 1);
            let mut mean = m0.clone();
            {
                for d in 0..o {
                    for j in 0..i {
                        let e: f64 = rand::Rng::sample(&mut rng, StandardNormal);
                        mean[(d, j)] += cfg.init_scale * var[(d, j)].sqrt() * e;
                    }
                }
            }
            let gaussian_out = l == last && sd.is_some();
            let sigma = if gaussian_out { Matrix::identity(o).scale(sd.unwrap_or(1.0).powi(2)) } else { Matrix::identity(o) };
            let (lambda0, _) = prior_precision(&cfg, &sigma, var)?;
            mns.push(MatrixNormal::new(mean, sigma, lambda0)?);
            layers.push(LayerState { aa: Ema::new(i * i), ta: Ema::new(o * i), g: (!gaussian_out).then(|| Ema::new(o * o)) });
        }
        let posterior = BaliPosterior::new(model.device(), arch, mns)?;
        Ok(Self { cfg, arch, layers, noise: Ema::new(1), posterior, batches: None, steps: 0, epochs: 0 })
    }

    /// The current posterior.
    pub fn posterior(&self) -> &BaliPosterior<E, D> {
        &self.posterior
    }

    /// The settings.
    pub fn config(&self) -> &BaliConfig {
        &self.cfg
    }

    /// Updates taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One BALI update on `batch`, a minibatch (or all) of a dataset of `n_total` points. A learned
    /// Gaussian noise scale is written back into `model`.
    ///
    /// On a non-finite statistic or a failed factorisation it returns [`Error::Diverged`] and leaves
    /// the state (and the model) as they were.
    pub fn step<M: Bnn<E, D>>(&mut self, model: &mut M, batch: &Dataset<E, D>, n_total: usize) -> Result<StepRecord> {
        let arch = M::ARCH;
        if arch != self.arch {
            return Err(Error::Shape { what: "model for this BALI run".into(), expected: self.arch.name.into(), got: arch.name.into() });
        }
        batch.check_for(arch)?;
        if n_total < batch.len() {
            return Err(Error::config("n_total", n_total, "the dataset size cannot be smaller than the batch"));
        }
        let step = self.steps;
        let diverged = |what: String| Error::Diverged { step, what };
        let rho = self.cfg.rho_for(batch.len(), n_total);
        let scale = n_total as f64 / batch.len() as f64;
        let weights: Weights<E, D> = match self.cfg.linearisation {
            Linearisation::Samples(s) if self.steps > 0 => {
                self.posterior.sample(s, &mut stream(self.cfg.seed, Purpose::Noise, &[step as u64]))?
            }
            _ => self.posterior.mean_weights(),
        };
        let sd = crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params());
        let pass = pass::run(arch, model.likelihood_params(), &weights, batch, self.cfg.sigma, sd)?;
        let prior = prior_host(model)?;

        // work on copies so that a failure leaves the state untouched
        let mut layers = self.layers.clone();
        let mut mns = Vec::with_capacity(layers.len());
        for (l, ((spec, st), (m0, var))) in arch.layers.iter().zip(layers.iter_mut()).zip(&prior).enumerate() {
            let (o, i) = (spec.d_out, spec.d_in + 1);
            let aa: Vec<f64> = pass.aa[l].iter().map(|v| v * scale).collect();
            if let Some(k) = aa.iter().position(|v| !v.is_finite()) {
                return Err(diverged(format!("Σφφᵀ of layer `{}` (entry {k})", spec.name)));
            }
            st.aa.update(&aa, rho);
            let sigma = match (&mut st.g, &pass.curvature[l]) {
                (Some(g), Some(gb)) => {
                    if let Some(k) = gb.iter().position(|v| !v.is_finite()) {
                        return Err(diverged(format!("curvature factor of layer `{}` (entry {k})", spec.name)));
                    }
                    g.update(gb, rho);
                    let mut gd = Matrix::from_row_major(o, o, g.value())?;
                    let tr: f64 = gd.diagonal().iter().sum::<f64>() / o as f64;
                    let output = l + 1 == arch.layers.len();
                    let damping = if output { self.cfg.output_damping } else { self.cfg.damping };
                    for d in 0..o {
                        gd[(d, d)] += damping * tr.max(0.0) + 1e-12;
                    }
                    if output && matches!(arch.likelihood, LikelihoodSpec::Categorical) && o > 1 {
                        // the softmax ignores a constant added to every logit, so `G_L` has no
                        // curvature along 1: that direction gets G_L's mean non-zero eigenvalue
                        // tr(G_L)/(o − 1), i.e. tr(G_L)/(o − 1) · 11ᵀ/o, which no prediction sees
                        let gauge = tr.max(0.0) / (o as f64 - 1.0);
                        for a in 0..o {
                            for b in 0..o {
                                gd[(a, b)] += gauge;
                            }
                        }
                    }
                    let gd = gd.symmetrize()?;
                    gd.cholesky().map_err(|e| diverged(format!("G + δI of layer `{}` ({e})", spec.name)))?.inverse()
                }
                // no curvature factor: the Gaussian output layer, whose Σ is σ² I
                _ => Matrix::identity(o).scale(sd.ok_or_else(|| diverged(format!("noise scale of layer `{}`", spec.name)))?.powi(2)),
            };
            let ta: Vec<f64> = pass::target_stat(&pass, l, self.cfg.alpha, sigma.as_slice()).into_iter().map(|v| v * scale).collect();
            if let Some(k) = ta.iter().position(|v| !v.is_finite()) {
                return Err(diverged(format!("Σ tφᵀ of layer `{}` (entry {k})", spec.name)));
            }
            st.ta.update(&ta, rho);
            let (lambda0, kappa) = prior_precision(&self.cfg, &sigma, var).map_err(|e| diverged(e.to_string()))?;
            let a_bar = Matrix::from_row_major(i, i, st.aa.value())?;
            let lambda = lambda0.add(&a_bar)?.symmetrize()?;
            let chol = lambda.cholesky().map_err(|e| diverged(format!("Λ of layer `{}` ({e})", spec.name)))?;
            let model_prior = self.cfg.model_prior_in_mean && self.cfg.prior == PriorPrecision::FromModel;
            // the mean step's preconditioner: with the model's prior gradient, its prior part
            // κ' diag(1/c̄) ⊗ Σ⁻¹ must dominate the prior's curvature diag(1/C) in every direction,
            // or the step overshoots where Σ is large: κ' = max(κ, λ_max(Σ)) (at a Gaussian output
            // Σ = σ² I and κ = σ² already)
            let (lambda0_mean, chol_mean) = if model_prior && pass.curvature[l].is_some() {
                let k_pc = kappa.max(largest_eigenvalue(&sigma)?);
                if k_pc > kappa {
                    let l0 = lambda0.scale(k_pc / kappa);
                    let c = l0.add(&a_bar)?.symmetrize()?.cholesky().map_err(|e| diverged(format!("Λ of layer `{}` ({e})", spec.name)))?;
                    (l0, c)
                } else {
                    (lambda0.clone(), chol.clone())
                }
            } else {
                (lambda0.clone(), chol.clone())
            };
            // M = (M_0 Λ_0 + T̄) Λ⁻¹, row by row: Λ M[d,:]ᵀ = Λ_0 M_0[d,:]ᵀ + T̄[d,:]ᵀ
            // the prior enters as a pseudo-observation of the mean too, moved by the same step α:
            // M_prior = M − α (M − M_0), so that α < 1 damps the whole step and keeps the fixed points
            let current = self.posterior.layers()[l].mean();
            let prior_term = if model_prior {
                // M Λ_0 − α Σ_l ((M − M_0) ⊘ C): the step M_new = M − α Σ_l (∇_W L + (M − M_0) ⊘ C) Λ⁻¹
                // preconditions the gradient of the model's own prior, so fixed points are its MAP
                let mut grad = Vec::with_capacity(o * i);
                for d in 0..o {
                    for j in 0..i {
                        grad.push((current[(d, j)] - m0[(d, j)]) / var[(d, j)]);
                    }
                }
                let sp = sigma.matmul(&Matrix::from_row_major(o, i, grad)?)?;
                current.matmul(&lambda0_mean)?.add(&sp.scale(-self.cfg.alpha))?
            } else {
                current.add(&current.add(&m0.scale(-1.0))?.scale(-self.cfg.alpha))?.matmul(&lambda0)?
            };
            let rhs = prior_term.add(&Matrix::from_row_major(o, i, st.ta.value())?)?;
            let mut mean = Vec::with_capacity(o * i);
            for d in 0..o {
                mean.extend(chol_mean.solve(rhs.row(d))?);
            }
            let mean = Matrix::from_row_major(o, i, mean)?;
            if let Some(k) = mean.as_slice().iter().position(|v| !v.is_finite()) {
                return Err(diverged(format!("posterior mean of layer `{}` (entry {k})", spec.name)));
            }
            mns.push(MatrixNormal::new(mean, sigma, lambda).map_err(|e| diverged(e.to_string()))?);
        }
        let posterior = BaliPosterior::new(model.device(), arch, mns)?;

        let mut noise = self.noise.clone();
        let mut noise_std = sd;
        if learns_noise(&self.cfg, arch) {
            let r = pass.sq_residual.ok_or_else(|| diverged("squared residual of the Gaussian likelihood".into()))?;
            noise.update(&[r], rho);
            let mut s = noise.value()[0].max(1e-24).sqrt();
            if let LikelihoodSpec::Gaussian { upper: Some(ub), .. } = arch.likelihood {
                s = s.min(ub * (1.0 - 1e-6));
            }
            if !s.is_finite() {
                return Err(diverged("noise scale".into()));
            }
            crate::vi::likelihood::set_noise_scale(model, s)?;
            noise_std = Some(s);
        }
        self.layers = layers;
        self.noise = noise;
        self.posterior = posterior;
        self.steps += 1;
        Ok(StepRecord { step, nll: pass.nll, rho, noise_std })
    }

    /// One pass over `data`: a single full-batch update, or reshuffled minibatches of
    /// [`BaliConfig::batch_size`].
    pub fn epoch<M: Bnn<E, D>>(&mut self, model: &mut M, data: &Dataset<E, D>) -> Result<EpochRecord> {
        let n = data.len();
        self.cfg.validate(n)?;
        let start = std::time::Instant::now();
        let (mut nll, mut steps) = (0.0, 0);
        let mut noise_std = crate::vi::likelihood::noise_value(&M::ARCH.likelihood, model.likelihood_params());
        let batches = match self.batches.take() {
            Some((len, batches)) if len == n => batches,
            _ => Minibatches::new(n, self.cfg.batch_size, self.cfg.seed),
        };
        match self.batches.insert((n, batches)).1.batches_per_epoch() {
            Some(count) => {
                for _ in 0..count {
                    let Some(idx) = self.batches.as_mut().and_then(|(_, b)| b.next_batch().map(<[usize]>::to_vec)) else { break };
                    let batch = data.rows(&idx)?;
                    let rec = self.step(model, &batch, n)?;
                    nll += rec.nll * idx.len() as f64;
                    noise_std = rec.noise_std;
                    steps += 1;
                }
                nll /= n as f64;
            }
            None => {
                let rec = self.step(model, data, n)?;
                nll = rec.nll;
                noise_std = rec.noise_std;
                steps = 1;
            }
        }
        self.epochs += 1;
        Ok(EpochRecord { epoch: self.epochs, train_nll: nll, noise_std, steps, seconds: start.elapsed().as_secs_f64() })
    }
}

/// The largest eigenvalue of a symmetric positive-definite matrix, by power iteration from the
/// all-ones vector (Rayleigh quotient; a few hundred iterations of a `d_out²` product at most).
fn largest_eigenvalue(m: &Matrix) -> Result<f64> {
    let n = m.rows();
    let mut v = vec![1.0 / (n as f64).sqrt(); n];
    let mut lam = 0.0;
    for _ in 0..300 {
        let w = m.matvec(&v)?;
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            break;
        }
        let next: f64 = v.iter().zip(&w).map(|(a, b)| a * b).sum();
        v = w.into_iter().map(|x| x / norm).collect();
        if (next - lam).abs() <= 1e-9 * next.abs() {
            lam = next;
            break;
        }
        lam = next;
    }
    // the Rayleigh quotient approaches λ_max from below: a little headroom
    Ok(lam * 1.02)
}

/// `Λ_0` for one layer and the prior-matching factor `κ`.
fn prior_precision(cfg: &BaliConfig, sigma: &Matrix, var: &Matrix) -> Result<(Matrix, f64)> {
    let (o, i) = var.shape();
    match cfg.prior {
        PriorPrecision::Fixed(l) => Ok((Matrix::identity(i).scale(l), 1.0)),
        PriorPrecision::FromModel => {
            let tr_inv: f64 = sigma
                .cholesky()
                .map_err(|e| Error::config("BaliConfig::prior", e, "Σ_l must be positive definite"))?
                .inverse()
                .diagonal()
                .iter()
                .sum();
            let kappa = o as f64 / tr_inv;
            let prec: Vec<f64> = (0..i).map(|j| (0..o).map(|d| 1.0 / var[(d, j)]).sum::<f64>() / o as f64).collect();
            Ok((Matrix::from_diagonal(&prec.iter().map(|p| kappa * p).collect::<Vec<_>>()), kappa))
        }
    }
}

/// Runs BALI for [`BaliConfig::epochs`] epochs on `data`, returning the final posterior and the
/// per-epoch history. A learned Gaussian noise scale is written back into `model`, so
/// [`crate::predict::predictive::Predictive`] uses it.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig};
/// #[bnn]
/// struct Clf { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 8, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<8, 2>, #[likelihood] y: Categorical }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..40).flat_map(|i| { let s = if i % 2 == 0 { 1.0 } else { -1.0 }; [s + 0.1 * (i as f64).sin(), s] }).collect();
/// let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
/// let data = Dataset::<f32, _>::classification(&dev, &x, 2, &labels, 2)?;
/// let mut model = Clf::<f32, Cpu>::new(&dev);
/// let (post, _) = fit_bali(&mut model, &data, &BaliConfig { epochs: 10, progress: false, ..Default::default() })?;
/// let m = Predictive::new(50).evaluate(&model, post.clone(), &data)?;
/// assert_eq!(m.accuracy, Some(1.0));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn fit_bali<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &mut M,
    data: &Dataset<E, D>,
    cfg: &BaliConfig,
) -> Result<(BaliPosterior<E, D>, BaliReport)> {
    data.check_for(M::ARCH)?;
    cfg.validate(data.len())?;
    let start = std::time::Instant::now();
    let mut bali = Bali::new(model, cfg.clone())?;
    let bar = crate::progress::Progress::new(cfg.epochs, cfg.progress, "bali");
    let mut history = Vec::with_capacity(cfg.epochs);
    for _ in 0..cfg.epochs {
        let rec = match bali.epoch(model, data) {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        bar.message(format!("nll {:.4}", rec.train_nll));
        bar.inc();
        history.push(rec);
    }
    bar.finish();
    Ok((bali.posterior, BaliReport { history, steps: bali.steps, seconds: start.elapsed().as_secs_f64() }))
}
