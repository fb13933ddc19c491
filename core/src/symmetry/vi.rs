//! SYM-VI: the symmetrised guide `q^G(ω) = (1/|G|) Σ_g q(g⁻¹ω)` and its training objective.

use dfdx::prelude::*;
use rand::Rng;

use super::group::{GroupElement, SymmetryGroup};
use crate::arch::Architecture;
use crate::data::Dataset;
use crate::elbo::{ElboConfig, ElboEstimate, Objective};
use crate::model::{Bnn, MeanFieldGuide, Weights};
use crate::prior::{param, Taped};
use crate::{Error, Real, Result};

/// A guide whose log density can be evaluated: what [`SymmetrisedGuide`] and the information bound
/// need. Every mean-field guide implements it (with a fast path for transformed densities); other
/// guide types can implement [`draw`](Self::draw) and [`log_density`](Self::log_density) and get
/// the rest.
pub trait GuideLogDensity<E: Real, D: Device<E>> {
    /// `s` weight samples; with `trace`, reparameterised on the tape of the guide's parameters.
    fn draw<R: Rng>(&self, arch: &Architecture, s: usize, rng: &mut R, trace: bool) -> Result<Weights<E, D, OwnedTape<E, D>>>;

    /// `ln q(ω_s)` per sample, `(S,)`; with `trace`, on the tape of the guide's parameters.
    fn log_density(&self, arch: &Architecture, weights: Weights<E, D, OwnedTape<E, D>>, trace: bool) -> Result<Taped<(usize,), E, D>>;

    /// `ln q(h_k·ω_s)` for every element `h_k` and sample, shape `(K, S)`.
    ///
    /// The default applies each element to the weights and calls [`log_density`](Self::log_density)
    /// (`K` evaluations). Mean-field guides instead move the parameters: `ln q(h·ω) = ln
    /// N(ω | h⁻¹·μ, h⁻¹·σ)`, an `O(K·d)` gather with no extra forward pass.
    fn log_density_transformed(
        &self,
        group: &SymmetryGroup,
        weights: Weights<E, D, OwnedTape<E, D>>,
        elements: &[GroupElement],
        trace: bool,
    ) -> Result<Taped<(usize, usize), E, D>> {
        if elements.is_empty() {
            return Err(Error::Empty { what: "group elements".into() });
        }
        let arch = *group.architecture();
        let mut rows = Vec::with_capacity(elements.len());
        let mut original = Some(weights);
        for (k, h) in elements.iter().enumerate() {
            // the last evaluation consumes the weights (and their tape); the others use tape-less copies
            let w = if k + 1 == elements.len() {
                original.take().expect("consumed only at the last element")
            } else {
                let w = original.as_ref().expect("present until the last element");
                Weights { layers: w.layers.iter().map(|t| t.with_empty_tape()).collect() }
            };
            rows.push(self.log_density(&arch, group.apply(h, w)?, trace)?);
        }
        Ok(rows.stack())
    }
}

impl<E: Real, D: Device<E>, G: MeanFieldGuide<E, D>> GuideLogDensity<E, D> for G {
    fn draw<R: Rng>(&self, arch: &Architecture, s: usize, rng: &mut R, trace: bool) -> Result<Weights<E, D, OwnedTape<E, D>>> {
        crate::guide::sample_mean_field(arch, &self.layer_params(), s, rng, trace)
    }

    fn log_density(&self, arch: &Architecture, weights: Weights<E, D, OwnedTape<E, D>>, trace: bool) -> Result<Taped<(usize,), E, D>> {
        crate::model::check_weights(arch, &weights)?;
        Ok(crate::guide::log_q(arch, &self.layer_params(), weights, trace))
    }

    fn log_density_transformed(
        &self,
        group: &SymmetryGroup,
        weights: Weights<E, D, OwnedTape<E, D>>,
        elements: &[GroupElement],
        trace: bool,
    ) -> Result<Taped<(usize, usize), E, D>> {
        let arch = *group.architecture();
        crate::model::check_weights(&arch, &weights)?;
        if elements.is_empty() {
            return Err(Error::Empty { what: "group elements".into() });
        }
        let params = self.layer_params();
        group.check_params(&params)?;
        let inverses = elements
            .iter()
            .map(|h| {
                group.check_element(h)?;
                Ok(h.inverse())
            })
            .collect::<Result<Vec<_>>>()?;
        let k = elements.len();
        let s = weights.num_samples();
        let mut total: Option<Taped<(usize, usize), E, D>> = None;
        for (l, (w, view)) in weights.layers.into_iter().zip(&params).enumerate() {
            let p = view.len();
            let dev = view.loc.device().clone();
            // ln q(h·ω) = ln N(ω | h⁻¹·μ, h⁻¹·σ): gather the parameters once per element
            let mut idx = Vec::with_capacity(k * p);
            let mut sign = Vec::with_capacity(k * p);
            let mut any_neg = false;
            for g in &inverses {
                let m = group.layer_map(g, l);
                any_neg |= m.any_neg();
                idx.extend(m.src.iter().copied());
                sign.extend(m.neg.iter().map(|&n| if n { -E::one() } else { E::one() }));
            }
            let idx = dev.tensor_from_vec(idx, (k * p,));
            let mu = param(&view.loc, trace).gather(idx.clone()).reshape_like(&(k, p));
            let mu = if any_neg { mu * dev.tensor_from_vec(sign, (k, p)) } else { mu };
            let ls = param(&view.log_scale, trace).gather(idx).reshape_like(&(k, p));
            let shape = (k, s, p);
            let inv_sd = ls.with_empty_tape().negate().exp().broadcast_like::<_, Axis<1>>(&shape);
            let omega = w.reshape_like(&(s, p)).broadcast_like::<_, Axis<0>>(&shape);
            let z = (omega - mu.broadcast_like::<_, Axis<1>>(&shape)) * inv_sd;
            let quad = (z.square() * E::from_f64(-0.5).unwrap()).sum::<_, Axis<2>>();
            let c = E::from_f64(0.5 * (2.0 * std::f64::consts::PI).ln() * p as f64).unwrap();
            let norm = (ls.sum::<_, Axis<1>>() + c).broadcast_like::<_, Axis<1>>(&(k, s));
            let lq = quad - norm;
            total = Some(match total {
                None => lq,
                Some(t) => t + lq,
            });
        }
        total.ok_or_else(|| Error::Empty { what: "architecture layers".into() })
    }
}

/// How the mutual information `I(g; ω)` between the group element and the weights of `q^G` is
/// bounded in the symmetrised objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoBound {
    /// The `I_K` bound: the identity plus `k − 1` independent uniform elements,
    /// `I_K = E[ln K + ln q(ω₀) − ln Σ_k q(h_k·ω₀)]`, with `0 ≤ I_K ≤ min(I, ln K)`, increasing in
    /// `K`. `k = 1` gives `I_1 = 0` (the plain ELBO).
    Sampled {
        /// `K ≥ 1`, the identity included.
        k: usize,
    },
    /// `I` itself, by enumerating `G` (tiny networks only: `|G| ≤` [`super::ENUMERATION_LIMIT`];
    /// the cost is `O(|G|·d)` per weight sample).
    Exact,
}

impl Default for InfoBound {
    fn default() -> Self {
        InfoBound::Sampled { k: 16 }
    }
}

/// One estimate of the information term.
#[derive(Debug)]
pub struct InfoEstimate<E: Dtype, D: Storage<E>> {
    /// The Monte-Carlo mean over weight samples, on the tape of the guide's parameters.
    pub term: Taped<(), E, D>,
    /// Its value.
    pub value: f64,
    /// The per-sample terms `ln K + ln q(ω₀) − ln Σ_k q(h_k·ω₀)`; their mean is `value`.
    pub per_sample: Vec<f64>,
    /// The number of elements summed over, `K` (or `|G|` for the exact term).
    pub k: usize,
}

fn bound_elements(group: &SymmetryGroup, bound: InfoBound, rng: &mut impl Rng) -> Result<(Vec<GroupElement>, f64)> {
    match bound {
        InfoBound::Sampled { k } => {
            if k == 0 {
                return Err(Error::config("InfoBound::Sampled::k", 0, "K counts the identity, so it must be >= 1"));
            }
            let mut v = Vec::with_capacity(k);
            v.push(group.identity());
            v.extend((1..k).map(|_| group.random(rng)));
            Ok((v, (k as f64).ln()))
        }
        InfoBound::Exact => {
            let v: Vec<GroupElement> = group.elements()?.collect();
            let ln_order = group.log_order();
            Ok((v, ln_order))
        }
    }
}

/// Estimates the information term of the symmetrised ELBO for `guide` with `samples` draws
/// `ω₀ ~ q`: the `I_K` bound or the exact `I`. The `K − 1` random elements are shared by the
/// samples of one call, which keeps the bound valid.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{information, InfoBound, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Net::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed: 2 })?;
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let ik = information(&group, &guide, InfoBound::Sampled { k: 8 }, 32, &mut rng)?;
/// assert!(ik.per_sample.iter().all(|v| *v <= 8f64.ln() + 1e-9));
/// // narrow, well-separated copies: both terms sit at their ceilings, ln K and ln |G|
/// assert!((ik.value - 8f64.ln()).abs() < 0.05);
/// let exact = information(&group, &guide, InfoBound::Exact, 32, &mut rng)?;
/// assert!((exact.value - 48f64.ln()).abs() < 0.05);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn information<E: Real, D: Device<E>, G: GuideLogDensity<E, D>>(
    group: &SymmetryGroup,
    guide: &G,
    bound: InfoBound,
    samples: usize,
    rng: &mut impl Rng,
) -> Result<InfoEstimate<E, D>> {
    if samples == 0 {
        return Err(Error::config("information samples", 0, "at least one weight sample is needed"));
    }
    let arch = *group.architecture();
    let (elements, ln_k) = bound_elements(group, bound, rng)?;
    let w = guide.draw(&arch, samples, rng, true)?;
    let lq = guide.log_density_transformed(group, w, &elements, true)?;
    let dev = lq.device().clone();
    let lse = lq.with_empty_tape().logsumexp::<_, Axis<0>>();
    let first = lq.select(dev.tensor(0usize));
    let per = (first - lse) + E::from_f64(ln_k).unwrap();
    let per_sample: Vec<f64> = per.with_empty_tape().split_tape().0.as_vec().iter().map(|v| v.to_f64().unwrap()).collect();
    let term = per.sum::<(), _>() * E::from_f64(1.0 / samples as f64).unwrap();
    let value = per_sample.iter().sum::<f64>() / samples as f64;
    Ok(InfoEstimate { term, value, per_sample, k: elements.len() })
}

/// The symmetrised ELBO, `ELBO(q^G) ≥ E_q[ln p(D|ω)] − KL(q ‖ p) + I_K`: a training
/// [`Objective`] for [`crate::fit::fit_objective`].
///
/// The plain ELBO part is [`crate::elbo::elbo`] with [`SymmetrisedElbo::elbo`]'s settings (local
/// reparameterisation, KL estimator, hyperparameter learning all apply); the information term uses
/// its own `info_samples` draws. In the reported [`ElboEstimate`], `elbo` is the symmetrised value
/// and `kl` is `KL(q ‖ p) − I_K`, the bound on `KL(q^G ‖ p)`.
///
/// The bound is valid when the prior is invariant under the group; every estimate checks
/// [`SymmetryGroup::prior_is_invariant`] (learned hyperparameters can break invariance, e.g. a
/// per-unit prior scale) and returns [`Error::InvalidConfig`] if not.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{InfoBound, SymmetrisedElbo, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 8, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<8, 1>, #[likelihood] noise: Gaussian<Fixed<0.2>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..32).map(|i| i as f64 / 8.0 - 2.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
/// let data = Dataset::<f32, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Net::<f32, Cpu>::new(&dev);
/// let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, ..Default::default() })?;
/// let mut objective = SymmetrisedElbo::new(SymmetryGroup::of(Net::<f32, Cpu>::ARCH), InfoBound::Sampled { k: 8 });
/// let report = fit_objective(&mut model, &mut guide, &data, &FitConfig { steps: 50, progress: false, ..Default::default() }, &mut objective)?;
/// assert!(report.history.last().unwrap().elbo.is_finite());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetrisedElbo {
    /// Settings of the plain ELBO part.
    pub elbo: ElboConfig,
    /// The symmetry group (its architecture must be the model's).
    pub group: SymmetryGroup,
    /// The information bound: `I_K` or exact.
    pub bound: InfoBound,
    /// Weight samples `ω₀ ~ q` for the information term; `None` uses `elbo.samples`.
    pub info_samples: Option<usize>,
}

impl SymmetrisedElbo {
    /// Default ELBO settings, the given group and bound.
    pub fn new(group: SymmetryGroup, bound: InfoBound) -> Self {
        Self { elbo: ElboConfig::default(), group, bound, info_samples: None }
    }
}

/// One estimate of the symmetrised ELBO with its parts.
#[derive(Debug)]
pub struct SymmetrisedEstimate<E: Dtype, D: Storage<E>> {
    /// The symmetrised objective: the loss to minimise, its value, the expected log-likelihood and
    /// the bound `KL(q ‖ p) − I` on `KL(q^G ‖ p)`.
    pub estimate: ElboEstimate<E, D>,
    /// The plain ELBO part.
    pub plain_elbo: f64,
    /// The information term (`I_K` or `I`).
    pub information: f64,
}

/// Estimates the symmetrised ELBO of `guide` on a minibatch, with its parts.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{symmetrised_elbo, InfoBound, SymmetrisedElbo, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[-0.8, 0.1, 0.9], 1)?;
/// let model = Net::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field();
/// let cfg = SymmetrisedElbo::new(SymmetryGroup::of(Net::<f64, Cpu>::ARCH), InfoBound::Exact);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let est = symmetrised_elbo(&model, &guide, &data, 3, &cfg, &mut rng)?;
/// assert!((est.estimate.elbo - (est.plain_elbo + est.information)).abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn symmetrised_elbo<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    guide: &M::Guide,
    batch: &Dataset<E, D>,
    n_total: usize,
    cfg: &SymmetrisedElbo,
    rng: &mut impl Rng,
) -> Result<SymmetrisedEstimate<E, D>> {
    cfg.group.check_arch(M::ARCH)?;
    if !cfg.group.prior_is_invariant(model)? {
        return Err(Error::config(
            "SymmetrisedElbo::group",
            M::ARCH.name,
            "the prior is not invariant under the group (use layer-wise priors, zero means for sign flips), so the symmetrised bound would not be valid",
        ));
    }
    let plain = crate::elbo::elbo(model, guide, batch, n_total, &cfg.elbo, rng)?;
    let info = information(&cfg.group, guide, cfg.bound, cfg.info_samples.unwrap_or(cfg.elbo.samples), rng)?;
    let ElboEstimate { loss, elbo, expected_log_lik, kl } = plain;
    let estimate = ElboEstimate { loss: loss - info.term, elbo: elbo + info.value, expected_log_lik, kl: kl - info.value };
    Ok(SymmetrisedEstimate { estimate, plain_elbo: elbo, information: info.value })
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> Objective<E, D, M> for SymmetrisedElbo {
    fn estimate(
        &mut self,
        model: &M,
        guide: &M::Guide,
        batch: &Dataset<E, D>,
        n_total: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<ElboEstimate<E, D>> {
        Ok(symmetrised_elbo(model, guide, batch, n_total, self, rng)?.estimate)
    }

    fn validate(&self) -> Result<()> {
        <ElboConfig as Objective<E, D, M>>::validate(&self.elbo)?;
        self.group.check_arch(M::ARCH)?;
        if self.info_samples == Some(0) {
            return Err(Error::config("SymmetrisedElbo::info_samples", 0, "at least one weight sample is needed"));
        }
        match self.bound {
            InfoBound::Sampled { k: 0 } => Err(Error::config("InfoBound::Sampled::k", 0, "K counts the identity, so it must be >= 1")),
            InfoBound::Exact => self.group.elements().map(|_| ()),
            InfoBound::Sampled { .. } => Ok(()),
        }
    }
}

/// The symmetrised guide `q^G(ω) = (1/|G|) Σ_g q(g⁻¹ω)`: sample `ω₀ ~ q`, then a uniform `g`, and
/// return `g·ω₀`.
///
/// Its predictions equal the guide's (`E_{q^G}[p(y|x,ω)] = E_q[p(y|x,ω)]`); it implements
/// [`crate::predictive::WeightSource`] for use with [`crate::predictive::Predictive::run_source`].
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{SymmetrisedGuide, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Net::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.01, seed: 4 })?;
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let sym = SymmetrisedGuide::new(&group, &guide);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = sym.sample(200, &mut rng)?;
/// // the first weight's sign is flipped half of the time
/// let positive = w.to_flat().iter().filter(|r| r[0] > 0.0).count();
/// assert!((60..140).contains(&positive));
/// // the exact density of q^G: a mixture of |G| = 8 copies
/// assert_eq!(sym.log_density(&w)?.len(), 200);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SymmetrisedGuide<'a, G> {
    group: &'a SymmetryGroup,
    guide: &'a G,
}

impl<'a, G> SymmetrisedGuide<'a, G> {
    /// Wraps a guide.
    pub fn new(group: &'a SymmetryGroup, guide: &'a G) -> Self {
        Self { group, guide }
    }

    /// The group.
    pub fn group(&self) -> &SymmetryGroup {
        self.group
    }

    /// The wrapped guide `q`.
    pub fn inner(&self) -> &G {
        self.guide
    }

    /// `s` draws from `q^G`.
    pub fn sample<E: Real, D: Device<E>, R: Rng>(&self, s: usize, rng: &mut R) -> Result<Weights<E, D>>
    where
        G: GuideLogDensity<E, D>,
    {
        Ok(self.sample_with_elements(s, rng)?.0)
    }

    /// `s` draws `g_s·ω₀_s` from `q^G`, with the elements `g_s` used.
    pub fn sample_with_elements<E: Real, D: Device<E>, R: Rng>(&self, s: usize, rng: &mut R) -> Result<(Weights<E, D>, Vec<GroupElement>)>
    where
        G: GuideLogDensity<E, D>,
    {
        let w0 = self.guide.draw(self.group.architecture(), s, rng, false)?;
        let w0 = Weights { layers: w0.layers.into_iter().map(|t| t.split_tape().0).collect() };
        let elements: Vec<GroupElement> = (0..s).map(|_| self.group.random(rng)).collect();
        Ok((self.group.apply_each(&elements, w0)?, elements))
    }

    /// `ln q^G(ω_s) = ln Σ_g q(g·ω_s) − ln |G|` per sample, exactly, by enumerating `G` (tiny
    /// networks only).
    pub fn log_density<E: Real, D: Device<E>>(&self, weights: &Weights<E, D>) -> Result<Vec<f64>>
    where
        G: GuideLogDensity<E, D>,
    {
        let elements: Vec<GroupElement> = self.group.elements()?.collect();
        let w = Weights { layers: weights.layers.iter().map(|t| t.clone().retaped()).collect() };
        let lq = self.guide.log_density_transformed(self.group, w, &elements, false)?;
        let lse = lq.logsumexp::<_, Axis<0>>() - E::from_f64(self.group.log_order()).unwrap();
        Ok(lse.split_tape().0.as_vec().iter().map(|v| v.to_f64().unwrap()).collect())
    }

    /// The information term `I_K` (or the exact `I`) of the wrapped guide; see [`information`].
    pub fn information<E: Real, D: Device<E>, R: Rng>(&self, bound: InfoBound, samples: usize, rng: &mut R) -> Result<InfoEstimate<E, D>>
    where
        G: GuideLogDensity<E, D>,
    {
        information(self.group, self.guide, bound, samples, rng)
    }
}

impl<E: Real, D: Device<E>, G: GuideLogDensity<E, D>> crate::predictive::WeightSource<E, D> for SymmetrisedGuide<'_, G> {
    fn draw(&mut self, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        self.sample(s, rng)
    }
}
