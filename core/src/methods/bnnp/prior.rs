//! Learnable Gaussian priors over a network's weights, in three families, with partial
//! trainability.
//!
//! The details are in the docs of [`PriorFamily`].

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::params::{ParamId, ParamStore};
use crate::model::arch::{Architecture, LayerSpec};
use crate::model::bnn::Weights;
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

/// The covariance structure of a learnable prior.
///
/// Every family is Gaussian over the rows of `[W | b]` (one row per output unit, `k = d_in + 1`
/// entries):
///
/// | family | covariance | parameters per layer |
/// |---|---|---|
/// | [`PriorFamily::UnitFullRank`] (default) | per unit, `Σ_d = L_d L_dᵀ / k` | mean `(d_out, k)`, `ln σ` `(d_out, k)`, strict lower part `U` `(d_out, k, k)` |
/// | [`PriorFamily::WeightDiagonal`] | `diag(σ²) / k` | mean `(d_out, k)`, `ln σ` `(d_out, k)` |
/// | [`PriorFamily::LayerFullRank`] | one `L Lᵀ / k` over all `d_out·k` weights | mean, `ln σ` `(d_out·k,)`, strict lower part `U` `(d_out·k, d_out·k)` |
///
/// The full-rank factors are `L = (I + U) diag(σ)` with `U` strictly lower triangular: an `L D Lᵀ`
/// form, in which the correlations are relative to the scales, so that a narrow prior stays
/// well-conditioned while it learns. With `fan_in_scaled = false` the `/ k` is dropped. Every family starts at `N(0, I/k)` (the usual
/// `1/fan-in` prior) with all parameters at zero. The layer-wise family couples all units of a
/// layer, so its posterior is one `(d_out·k)²` system per sample: use it for small layers only.
///
/// Internally a prior is handed to the guide in *natural* form per group of units (one unit, or the
/// whole layer): the precision `Π = Σ⁻¹ + jitter·I`, the mean, and a way to draw `N(0, Π)` noise
/// that is a differentiable function of the parameters (needed for perturb-and-solve sampling).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, PriorConfig, PriorFamily};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let model = Net::<f64, Cpu>::new(&dev);
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
/// // (groups, size) of the first layer's posterior blocks under each family
/// let blocks = |family| -> weightspace::Result<(usize, usize)> {
///     let guide = model.amortised_guide(GuideConfig { prior: PriorConfig { family, ..Default::default() }, ..Default::default() })?;
///     let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
///     let post = guide.posterior_moments(&ctx, 2, &mut rng)?;
///     Ok((post[0].groups, post[0].size))
/// };
/// assert_eq!(blocks(PriorFamily::UnitFullRank)?, (4, 2)); // one block per unit, [w, b]
/// assert_eq!(blocks(PriorFamily::WeightDiagonal)?, (4, 2));
/// assert_eq!(blocks(PriorFamily::LayerFullRank)?, (1, 8)); // the whole layer at once
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorFamily {
    /// A full covariance per output unit (BNNP's default).
    #[default]
    UnitFullRank,
    /// An independent Normal per weight.
    WeightDiagonal,
    /// One full covariance over all weights of a layer.
    LayerFullRank,
}

/// Which prior parameters learn.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, PriorConfig, PriorTraining};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let model = Net::<f64, Cpu>::new(&Cpu::default());
/// // whether `prior.out.mean` and `prior.out.log_scale` learn
/// let learns = |training| -> weightspace::Result<(bool, bool)> {
///     let guide = model.amortised_guide(GuideConfig { prior: PriorConfig { training, ..Default::default() }, ..Default::default() })?;
///     let s = guide.store();
///     Ok((s.is_trainable(s.find("prior.out.mean").unwrap()), s.is_trainable(s.find("prior.out.log_scale").unwrap())))
/// };
/// assert_eq!(learns(PriorTraining::All)?, (true, true));
/// assert_eq!(learns(PriorTraining::MeanOnly)?, (true, false));
/// assert_eq!(learns(PriorTraining::Frozen)?, (false, false));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PriorTraining {
    /// Every parameter (the default).
    #[default]
    All,
    /// Only the means; covariances stay at their initial values.
    MeanOnly,
    /// Nothing: the prior is fixed (e.g. at the true prior, for ELBO comparisons).
    Frozen,
    /// A random fraction of the weights of each layer learn their mean, their scale and (for
    /// full-rank families) their covariances with each other; the rest stay fixed. For
    /// meta-learning from very few datasets.
    Fraction {
        /// Fraction of weights that learn, in `(0, 1]`.
        fraction: f64,
        /// Seed of the random choice.
        seed: u64,
    },
}

/// Where a learnable prior starts.
///
/// A prior centred at zero makes every weight sample an independent random-feature network: a
/// hidden unit plays a different role in every sample, so the gradients that would move its prior
/// mean cancel over samples and tasks, the hidden layers' prior never learns features, and only the
/// output layer (a Bayesian linear regression on random features) adapts. Meta-learning then
/// cannot capture structure that needs hidden features (the sawtooth's teeth, say).
/// [`PriorInit::Network`] breaks the symmetry: the hidden layers start *narrow around one network*
/// (means drawn like a network's initial weights, scales a small fraction of theirs), so that every
/// sample shares the features and the prior means learn them like a network's weights; the scales
/// are learned from there. The output layer starts centred either way: it is the conjugate layer.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, PriorConfig, PriorInit};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let model = Net::<f64, Cpu>::new(&Cpu::default());
/// let init = PriorInit::Network { spread: 0.01, seed: 3 };
/// let guide = model.amortised_guide(GuideConfig { prior: PriorConfig { init, ..Default::default() }, ..Default::default() })?;
/// let m = guide.prior().marginals(guide.store());
/// // hidden layer: means spread like N(0, 1/2), scales 0.01 of that
/// assert!(m[0].0.iter().any(|&mu| mu.abs() > 0.05));
/// assert!(m[0].1.iter().all(|&sd| (sd - 0.01 / 2f64.sqrt()).abs() < 1e-9));
/// // output layer: centred, N(0, 1/5)
/// assert!(m[1].0.iter().all(|&mu| mu == 0.0));
/// assert!(m[1].1.iter().all(|&sd| (sd - 1.0 / 5f64.sqrt()).abs() < 1e-9));
/// // a spread must be positive
/// let bad = PriorConfig { init: PriorInit::Network { spread: 0.0, seed: 0 }, ..Default::default() };
/// assert!(model.amortised_guide(GuideConfig { prior: bad, ..Default::default() }).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PriorInit {
    /// `N(0, I/(d_in+1))` in every layer (default).
    #[default]
    Centred,
    /// Hidden layers start at `N(m, spread²·I/(d_in+1))` with `m ~ N(0, I/(d_in+1))` drawn once
    /// from `seed` (without fan-in scaling: `N(m, spread²·I)`, `m ~ N(0, I)`); the output layer
    /// starts centred. The full-rank families start with no correlations.
    Network {
        /// The hidden layers' initial scale as a fraction of the fan-in scale, in `(0, 1]`.
        /// `0.01` is a good start for meta-learning features.
        spread: f64,
        /// Seed of the means.
        seed: u64,
    },
}

/// Settings of a learnable prior.
///
/// ```
/// use weightspace::bnnp::{PriorConfig, PriorFamily, PriorInit, PriorTraining};
/// let cfg = PriorConfig { family: PriorFamily::WeightDiagonal, training: PriorTraining::Fraction { fraction: 0.1, seed: 0 }, ..Default::default() };
/// assert!(cfg.fan_in_scaled);
/// assert_eq!(cfg.init, PriorInit::Centred);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorConfig {
    /// Covariance structure. Default unit-wise full rank.
    pub family: PriorFamily,
    /// What learns. Default everything.
    pub training: PriorTraining,
    /// Divide the covariance by `d_in + 1`. Default true (initial prior `N(0, I/(d_in+1))`).
    pub fan_in_scaled: bool,
    /// Where the prior starts. Default centred at zero.
    pub init: PriorInit,
    /// The output layer's family, when it differs from `family`. Default `None` (the same).
    /// A diagonal prior for the hidden layers with a full-rank one for the conjugate output layer
    /// (`Some(PriorFamily::UnitFullRank)`) learns the correlated output directions that a
    /// task family's random components need, at the hidden layers' diagonal cost.
    pub output_family: Option<PriorFamily>,
}

impl Default for PriorConfig {
    fn default() -> Self {
        Self {
            family: PriorFamily::UnitFullRank,
            training: PriorTraining::All,
            fan_in_scaled: true,
            init: PriorInit::Centred,
            output_family: None,
        }
    }
}

#[derive(Debug, Clone)]
struct LayerIds {
    mean: ParamId,
    /// `ln σ`: the column scales of `L` (full-rank families) or the scales (diagonal).
    log_scale: ParamId,
    /// Strict lower part of `L` (full-rank families).
    off: Option<ParamId>,
}

/// A layer's prior in natural form, on the tape.
pub(crate) struct Natural<E: Dtype, D: Storage<E>> {
    /// `Π = Σ⁻¹ + jitter·I`, `(G, K, K)`.
    pub prec: Taped<(usize, usize, usize), E, D>,
    /// Mean `(G, K)`.
    pub mean: Taped<(usize, usize), E, D>,
    /// `Σ⁻¹` without jitter (full-rank) or `None` (diagonal: `prec` is diagonal).
    sigma_inv: Option<Taped<(usize, usize, usize), E, D>>,
    /// Scaled factor `L/√c` with `Σ = (L/√c)(L/√c)ᵀ`, `(G, K, K)`; or the diagonal scales `(G, K)`.
    factor: Factor<E, D>,
    jitter: f64,
}

/// `(Π, μ, ζ)` of a layer's prior, on the tape.
type T3<E, D> = Taped<(usize, usize, usize), E, D>;
type T2<E, D> = Taped<(usize, usize), E, D>;
pub(crate) type NaturalParts<E, D> = (T3<E, D>, T2<E, D>, T3<E, D>);

/// How `N(0, Π)` noise is drawn.
enum Factor<E: Dtype, D: Storage<E>> {
    Full(Taped<(usize, usize, usize), E, D>),
    /// `√Π` per entry (diagonal family).
    DiagPrecSqrt(Taped<(usize, usize), E, D>),
}

impl<E: Real, D: Device<E>> Natural<E, D> {
    /// Groups and group size `(G, K)`.
    pub fn dims(&self) -> (usize, usize) {
        let (g, k) = *self.mean.shape();
        (g, k)
    }

    /// Whether `Π` is diagonal (a diagonal prior family).
    pub fn is_diagonal(&self) -> bool {
        matches!(self.factor, Factor::DiagPrecSqrt(_))
    }

    /// Splits into `(Π, μ, ζ)` with `ζ ~ N(0, Π)` `(S, G, K)` drawn as a differentiable function of
    /// the prior's parameters. Every tape of the prior ends up in one of the three.
    pub fn into_parts(self, s: usize, rng: &mut impl Rng) -> NaturalParts<E, D> {
        let (g, k) = self.dims();
        let dev = self.mean.device().clone();
        let zeta = match self.factor {
            Factor::Full(f) => {
                // Σ⁻¹ (L/√c) ε₁ + √jitter ε₂: covariance Σ⁻¹ Σ Σ⁻¹ + jitter·I = Π
                let e1: Tensor<(usize, usize, usize), E, D> = crate::vi::guide::standard_normal(&dev, rng, (g, k, s));
                let sinv = self.sigma_inv.expect("full-rank priors keep Σ⁻¹");
                let (le, tape) = f.matmul(e1).split_tape();
                let (sinv, stape) = sinv.split_tape();
                let z = sinv.put_tape(stape.merge(tape)).matmul(le).permute::<_, Axes3<2, 0, 1>>();
                if self.jitter > 0.0 {
                    let e2: Tensor<(usize, usize, usize), E, D> = crate::vi::guide::standard_normal(&dev, rng, (s, g, k));
                    z + e2 * crate::num::cast::from_f64::<E>(self.jitter.sqrt())
                } else {
                    z + E::zero()
                }
            }
            Factor::DiagPrecSqrt(r) => {
                let e: Tensor<(usize, usize, usize), E, D> = crate::vi::guide::standard_normal(&dev, rng, (s, g, k));
                r.broadcast_like::<_, Axis<0>>(&(s, g, k)) * e
            }
        };
        (self.prec, self.mean, zeta)
    }
}

/// A learnable prior over all layers of an architecture. Its parameters live in a [`ParamStore`]
/// under `prior.{layer}.mean`, `prior.{layer}.log_scale` and (full-rank) `prior.{layer}.off_diag`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, LearnedPrior};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let guide = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// let prior: &LearnedPrior = guide.prior();
/// // layer `h` starts at N(0, I/(d_in + 1)) per unit: 4 blocks of 2 weights
/// let (mean, sigma, g, k) = prior.moments(guide.store(), 0);
/// assert_eq!((g, k), (4, 2));
/// assert!(mean.iter().all(|m| *m == 0.0));
/// assert!((sigma[0] - 0.5).abs() < 1e-12 && sigma[1].abs() < 1e-12);
/// let marginals = prior.marginals(guide.store());
/// assert!((marginals[0].1[0] - 0.5f64.sqrt()).abs() < 1e-12);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = prior.sample(guide.store(), 3, &mut rng)?;
/// assert_eq!(prior.log_prob(guide.store(), &w)?.len(), 3);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LearnedPrior {
    arch: &'static Architecture,
    cfg: PriorConfig,
    layers: Vec<LayerIds>,
}

fn layer_family(arch: &Architecture, cfg: &PriorConfig, l: usize) -> PriorFamily {
    match cfg.output_family {
        Some(f) if l + 1 == arch.layers.len() => f,
        _ => cfg.family,
    }
}

fn scale_div(spec: &LayerSpec, cfg: &PriorConfig) -> f64 {
    if cfg.fan_in_scaled {
        (spec.d_in + 1) as f64
    } else {
        1.0
    }
}

/// `(G, K, units per group)` of a layer under a family.
pub(crate) fn groups(spec: &LayerSpec, family: PriorFamily) -> (usize, usize, usize) {
    let k = spec.d_in + 1;
    match family {
        PriorFamily::LayerFullRank => (1, spec.d_out * k, spec.d_out),
        _ => (spec.d_out, k, 1),
    }
}

impl LearnedPrior {
    /// Adds the prior's parameters for every layer of `arch` to `store`, initialised to
    /// `N(0, I/(d_in+1))` (or `N(0, I)` without fan-in scaling).
    pub fn new<E: Real, D: Device<E>>(store: &mut ParamStore<E, D>, arch: &'static Architecture, cfg: PriorConfig) -> Result<Self> {
        if let PriorTraining::Fraction { fraction, .. } = cfg.training {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(Error::config("PriorTraining::Fraction::fraction", fraction, "must be in (0, 1]"));
            }
        }
        let mut layers = Vec::new();
        for (li, spec) in arch.layers.iter().enumerate() {
            let family = layer_family(arch, &cfg, li);
            let (g, kk, _) = groups(spec, family);
            let k = spec.d_in + 1;
            let name = |p: &str| format!("prior.{}.{p}", spec.name);
            let (mean_shape, full_shape): (Vec<usize>, Vec<usize>) = match family {
                PriorFamily::LayerFullRank => (vec![kk], vec![kk, kk]),
                _ => (vec![spec.d_out, k], vec![spec.d_out, k, k]),
            };
            let n = g * kk;
            let mean = store.add(&name("mean"), &mean_shape, &vec![0.0; n])?;
            let log_scale = store.add(&name("log_scale"), &mean_shape, &vec![0.0; n])?;
            let off = match family {
                PriorFamily::WeightDiagonal => None,
                _ => Some(store.add(&name("off_diag"), &full_shape, &vec![0.0; g * kk * kk])?),
            };
            match cfg.training {
                PriorTraining::All => {}
                PriorTraining::Frozen => {
                    store.set_trainable(mean, false);
                    store.set_trainable(log_scale, false);
                    if let Some(o) = off {
                        store.set_trainable(o, false);
                    }
                }
                PriorTraining::MeanOnly => {
                    store.set_trainable(log_scale, false);
                    if let Some(o) = off {
                        store.set_trainable(o, false);
                    }
                }
                PriorTraining::Fraction { fraction, seed } => {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(li as u64));
                    let mut idx: Vec<usize> = (0..n).collect();
                    idx.shuffle(&mut rng);
                    let chosen = ((fraction * n as f64).round() as usize).clamp(1, n);
                    let mut m = vec![false; n];
                    for &i in &idx[..chosen] {
                        m[i] = true;
                    }
                    store.set_mask(mean, Some(&m))?;
                    store.set_mask(log_scale, Some(&m))?;
                    if let Some(o) = off {
                        // covariances between two learning weights of the same group
                        let mut mo = vec![false; g * kk * kk];
                        for gi in 0..g {
                            for i in 0..kk {
                                for j in 0..kk {
                                    mo[gi * kk * kk + i * kk + j] = m[gi * kk + i] && m[gi * kk + j];
                                }
                            }
                        }
                        store.set_mask(o, Some(&mo))?;
                    }
                }
            }
            layers.push(LayerIds { mean, log_scale, off });
        }
        let prior = Self { arch, cfg, layers };
        if let PriorInit::Network { spread, seed } = cfg.init {
            if !(spread > 0.0 && spread <= 1.0) {
                return Err(Error::config("PriorInit::Network::spread", spread, "must be in (0, 1]"));
            }
            for (l, spec) in arch.layers.iter().enumerate().take(arch.layers.len().saturating_sub(1)) {
                let base = 1.0 / scale_div(spec, &cfg).sqrt();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(l as u64));
                let mean: Vec<f64> = (0..spec.num_weights()).map(|_| base * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
                prior.set_diagonal(store, l, &mean, &vec![spread * base; spec.num_weights()])?;
            }
        }
        Ok(prior)
    }

    /// The settings.
    pub fn config(&self) -> &PriorConfig {
        &self.cfg
    }

    /// The architecture.
    pub fn arch(&self) -> &'static Architecture {
        self.arch
    }

    /// Layer `l`'s family: [`PriorConfig::output_family`] for the output layer when set,
    /// [`PriorConfig::family`] otherwise.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::{Amortised, GuideConfig, PriorConfig, PriorFamily};
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
    /// let prior = PriorConfig { family: PriorFamily::WeightDiagonal, output_family: Some(PriorFamily::UnitFullRank), ..Default::default() };
    /// let guide = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig { prior, ..Default::default() })?;
    /// assert_eq!(guide.prior().family(0), PriorFamily::WeightDiagonal);
    /// assert_eq!(guide.prior().family(1), PriorFamily::UnitFullRank);
    /// assert!(guide.store().find("prior.out.off_diag").is_some() && guide.store().find("prior.h.off_diag").is_none());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn family(&self, l: usize) -> PriorFamily {
        layer_family(self.arch, &self.cfg, l)
    }

    /// Sets layer `layer` to `N(mean, diag(sd²))` exactly (every family; full-rank factors become
    /// diagonal). `mean` and `sd` are per weight in `[W | b]` row order, `sd` *after* fan-in
    /// scaling. Useful to fix the prior at a known truth.
    pub fn set_diagonal<E: Real, D: Device<E>>(&self, store: &mut ParamStore<E, D>, layer: usize, mean: &[f64], sd: &[f64]) -> Result<()> {
        let spec = self.arch.layers.get(layer).ok_or_else(|| Error::config("layer", layer, "is out of range"))?;
        let n = spec.num_weights();
        if mean.len() != n || sd.len() != n {
            return Err(Error::Shape {
                what: "prior mean / sd".into(),
                expected: format!("{n} values"),
                got: format!("{} and {}", mean.len(), sd.len()),
            });
        }
        if sd.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::config("sd", "non-positive", "prior scales must be finite and > 0"));
        }
        let c = scale_div(spec, &self.cfg).sqrt();
        let ids = &self.layers[layer];
        store.set_values(ids.mean, mean)?;
        store.set_values(ids.log_scale, &sd.iter().map(|s| (s * c).ln()).collect::<Vec<_>>())?;
        if let Some(o) = ids.off {
            let len = store.get(o).shape().0;
            store.set_values(o, &vec![0.0; len])?;
        }
        Ok(())
    }

    /// Layer `l`'s prior in natural form, taped when `trace` (frozen and masked entries get no
    /// gradient).
    pub(crate) fn natural<E: Real, D: Device<E>>(
        &self,
        store: &ParamStore<E, D>,
        l: usize,
        jitter: f64,
        trace: bool,
    ) -> Result<Natural<E, D>> {
        let spec = &self.arch.layers[l];
        let (g, kk, _) = groups(spec, self.family(l));
        let ids = &self.layers[l];
        let c = scale_div(spec, &self.cfg);
        let dev = store.device().clone();
        let mean = masked(store, ids.mean, trace).reshape_like(&(g, kk));
        let ls = masked(store, ids.log_scale, trace).reshape_like(&(g, kk));
        let eye = eye::<E, D>(&dev, kk).broadcast_like::<_, Axis<0>>(&(g, kk, kk));
        match ids.off {
            None => {
                // Π = c e^{-2 ln σ} + jitter, ζ scale √Π
                let prec_diag = (ls * crate::num::cast::from_f64::<E>(-2.0)).exp() * crate::num::cast::from_f64::<E>(c)
                    + crate::num::cast::from_f64::<E>(jitter);
                let root = prec_diag.with_empty_tape().sqrt();
                let prec = prec_diag.broadcast_like::<_, Axis<1>>(&(g, kk, kk)) * eye;
                Ok(Natural { prec, mean, sigma_inv: None, factor: Factor::DiagPrecSqrt(root), jitter })
            }
            Some(off) => {
                let f = scaled_factor(&dev, masked(store, off, trace), ls, g, kk, c);
                // a copy with its own id: dfdx cannot multiply a tensor by itself on the tape
                let ft = (f.with_empty_tape() * E::one()).permute::<_, Axes3<0, 2, 1>>();
                let sigma = f.with_empty_tape().matmul(ft);
                let sigma_inv = crate::num::linalg::spd_inverse(sigma).map_err(|e| annotate(e, spec.name))?;
                let prec = sigma_inv.with_empty_tape() + eye * crate::num::cast::from_f64::<E>(jitter);
                // the factor's own tape goes with `factor`; sigma_inv's with `sigma_inv`
                Ok(Natural { prec, mean, sigma_inv: Some(sigma_inv), factor: Factor::Full(f), jitter })
            }
        }
    }

    /// Draws `s` weight samples from the prior (no tape).
    pub fn sample<E: Real, D: Device<E>>(&self, store: &ParamStore<E, D>, s: usize, rng: &mut impl Rng) -> Result<Weights<E, D>> {
        if s == 0 {
            return Err(Error::config("samples", 0, "at least one weight sample is needed"));
        }
        let layers = (0..self.arch.layers.len())
            .map(|l| -> Result<_> {
                let w = self.sample_layer(store, l, s, rng, false)?;
                Ok(w.split_tape().0)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights { layers })
    }

    /// Layer `l`'s prior samples `μ + (L/√c) ε`, `(S, d_out, d_in + 1)`, taped when `trace`.
    pub(crate) fn sample_layer<E: Real, D: Device<E>>(
        &self,
        store: &ParamStore<E, D>,
        l: usize,
        s: usize,
        rng: &mut impl Rng,
        trace: bool,
    ) -> Result<Taped<(usize, usize, usize), E, D>> {
        let spec = &self.arch.layers[l];
        let (g, kk, _) = groups(spec, self.family(l));
        let ids = &self.layers[l];
        let c = scale_div(spec, &self.cfg);
        let dev = store.device().clone();
        let mean = masked(store, ids.mean, trace).reshape_like(&(g, kk));
        let ls = masked(store, ids.log_scale, trace).reshape_like(&(g, kk));
        let shape = (s, spec.d_out, spec.d_in + 1);
        let noise = match ids.off {
            None => {
                let e: Tensor<(usize, usize, usize), E, D> = crate::vi::guide::standard_normal(&dev, rng, (s, g, kk));
                let sd = ls.exp() * crate::num::cast::from_f64::<E>(1.0 / c.sqrt());
                sd.broadcast_like::<_, Axis<0>>(&(s, g, kk)) * e
            }
            Some(off) => {
                let f = scaled_factor(&dev, masked(store, off, trace), ls, g, kk, c);
                let e: Tensor<(usize, usize, usize), E, D> = crate::vi::guide::standard_normal(&dev, rng, (g, kk, s));
                f.matmul(e).permute::<_, Axes3<2, 0, 1>>()
            }
        };
        Ok((noise + mean.broadcast_like::<_, Axis<0>>(&(s, g, kk))).reshape_like(&shape))
    }

    /// Per-layer means and covariance blocks on the host: `(mean (G·K), Σ (G·K·K))` with
    /// `(G, K)` from the family.
    pub fn moments<E: Real, D: Device<E>>(&self, store: &ParamStore<E, D>, l: usize) -> (Vec<f64>, Vec<f64>, usize, usize) {
        let spec = &self.arch.layers[l];
        let (g, kk, _) = groups(spec, self.family(l));
        let ids = &self.layers[l];
        let c = scale_div(spec, &self.cfg);
        let mean = store.values(ids.mean);
        let ls = store.values(ids.log_scale);
        let mut sigma = vec![0.0; g * kk * kk];
        match ids.off {
            None => {
                for gi in 0..g {
                    for i in 0..kk {
                        sigma[gi * kk * kk + i * kk + i] = (2.0 * ls[gi * kk + i]).exp() / c;
                    }
                }
            }
            Some(o) => {
                let off = store.values(o);
                for gi in 0..g {
                    let mut lf = vec![0.0; kk * kk];
                    for i in 0..kk {
                        for j in 0..i {
                            lf[i * kk + j] = off[gi * kk * kk + i * kk + j] * ls[gi * kk + j].exp();
                        }
                        lf[i * kk + i] = ls[gi * kk + i].exp();
                    }
                    for i in 0..kk {
                        for j in 0..=i {
                            let v: f64 = (0..=j).map(|p| lf[i * kk + p] * lf[j * kk + p]).sum::<f64>() / c;
                            sigma[gi * kk * kk + i * kk + j] = v;
                            sigma[gi * kk * kk + j * kk + i] = v;
                        }
                    }
                }
            }
        }
        (mean, sigma, g, kk)
    }

    /// Per-weight marginal means and standard deviations of every layer, in `[W | b]` row order:
    /// what a mean-field guide or a diagonal prior can take over from a learned prior.
    pub fn marginals<E: Real, D: Device<E>>(&self, store: &ParamStore<E, D>) -> Vec<(Vec<f64>, Vec<f64>)> {
        (0..self.arch.layers.len())
            .map(|l| {
                let (mean, sigma, g, kk) = self.moments(store, l);
                let sd = (0..g * kk).map(|i| sigma[(i / kk) * kk * kk + (i % kk) * kk + (i % kk)].sqrt()).collect();
                (mean, sd)
            })
            .collect()
    }

    /// `ln p(w_s)` under the prior for every sample, on the host (f64).
    pub fn log_prob<E: Real, D: Device<E>>(&self, store: &ParamStore<E, D>, weights: &Weights<E, D>) -> Result<Vec<f64>> {
        crate::model::bnn::check_weights(self.arch, weights)?;
        let s = weights.num_samples();
        let mut out = vec![0.0; s];
        for (l, w) in weights.layers.iter().enumerate() {
            let (mean, mut sigma, g, kk) = self.moments(store, l);
            let wv = w.as_vec();
            for gi in 0..g {
                let blk = &mut sigma[gi * kk * kk..(gi + 1) * kk * kk];
                crate::num::dense::cholesky(blk, kk).map_err(|pivot| Error::NotPositiveDefinite {
                    what: format!("prior covariance of layer `{}`", self.arch.layers[l].name),
                    index: gi,
                    pivot,
                })?;
                let ld = crate::num::dense::chol_logdet(blk, kk);
                for (si, o) in out.iter_mut().enumerate() {
                    let base = si * g * kk + gi * kk;
                    let mut z: Vec<f64> = (0..kk).map(|i| wv[base + i].cast_to_f64() - mean[gi * kk + i]).collect();
                    // forward substitution L z' = z
                    for i in 0..kk {
                        let mut v = z[i];
                        for p in 0..i {
                            v -= blk[i * kk + p] * z[p];
                        }
                        z[i] = v / blk[i * kk + i];
                    }
                    *o += -0.5 * z.iter().map(|v| v * v).sum::<f64>() - 0.5 * ld - 0.5 * kk as f64 * (2.0 * std::f64::consts::PI).ln();
                }
            }
        }
        Ok(out)
    }
}

fn annotate(e: Error, layer: &str) -> Error {
    match e {
        Error::NotPositiveDefinite { index, pivot, .. } => {
            Error::NotPositiveDefinite { what: format!("prior covariance of layer `{layer}`"), index, pivot }
        }
        e => e,
    }
}

/// A parameter on the tape (when trainable and `trace`). Masks of partially trainable parameters
/// are applied to the gradient by [`super::Adam`].
fn masked<E: Real, D: Device<E>>(store: &ParamStore<E, D>, id: ParamId, trace: bool) -> Taped<(usize,), E, D> {
    store.param(id, trace)
}

pub(crate) fn eye<E: Real, D: Device<E>>(dev: &D, k: usize) -> Tensor<(usize, usize), E, D> {
    let mut v = vec![E::zero(); k * k];
    for i in 0..k {
        v[i * k + i] = E::one();
    }
    dev.tensor_from_vec(v, (k, k))
}

/// The scaled factor `L/√c` of a full-rank family, `(G, K, K)`, on the tape:
/// `L = (I + strict lower part of off) · diag(e^{ln σ})`, so that `Σ = L Lᵀ / c` is an `L D Lᵀ`
/// factorisation whose correlations (`off`) are relative to its scales (`ln σ`). An optimiser's
/// steps of similar size in every parameter then change `Σ`'s conditioning only as much as its
/// correlations change, whatever the scale; with an absolute off-diagonal a narrow prior (small
/// `σ`) became numerically singular within a few Adam steps.
fn scaled_factor<E: Real, D: Device<E>>(
    dev: &D,
    off: Taped<(usize,), E, D>,
    ls: Taped<(usize, usize), E, D>,
    g: usize,
    kk: usize,
    c: f64,
) -> Taped<(usize, usize, usize), E, D> {
    let eye = eye::<E, D>(dev, kk).broadcast_like::<_, Axis<0>>(&(g, kk, kk));
    let lower = strict_lower::<E, D>(dev, kk).broadcast_like::<_, Axis<0>>(&(g, kk, kk));
    let unit = off.reshape_like(&(g, kk, kk)) * lower + eye;
    // column j scaled by σ_j
    unit * ls.exp().broadcast_like::<_, Axis<1>>(&(g, kk, kk)) * crate::num::cast::from_f64::<E>(1.0 / c.sqrt())
}

fn strict_lower<E: Real, D: Device<E>>(dev: &D, k: usize) -> Tensor<(usize, usize), E, D> {
    let mut v = vec![E::zero(); k * k];
    for i in 0..k {
        for j in 0..i {
            v[i * k + j] = E::one();
        }
    }
    dev.tensor_from_vec(v, (k, k))
}
