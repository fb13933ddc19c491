//! SYM-VI: the symmetrised guide `q^G(ω) = (1/|G|) Σ_g q(g⁻¹ω)` and its training objective.

use dfdx::prelude::*;
use rand::Rng;

use super::group::{GroupElement, SymmetryGroup};
use crate::model::arch::Architecture;
use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::data::Dataset;
use crate::vi::elbo::{ElboConfig, ElboEstimate, Objective};
use crate::vi::prior::{param, Taped};
use crate::{Error, Real, Result};

/// A guide whose log density can be evaluated: what [`SymmetrisedGuide`] and the information bound
/// need. Every mean-field guide implements it (with fast paths for transformed densities and the
/// information term); other guide types implement [`draw`](Self::draw) and
/// [`log_density`](Self::log_density) and get the rest.
///
/// ```
/// use rand::Rng;
/// use weightspace::prelude::*;
/// use weightspace::Architecture;
/// use weightspace::Taped;
/// use weightspace::symmetry::{information, GuideLogDensity, InfoBound, SymmetryGroup};
/// use weightspace::dfdx::prelude::OwnedTape;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
///
/// /// A guide of one's own (here it just wraps a mean-field guide).
/// struct MyGuide(NetGuide<f64, Cpu>);
/// impl GuideLogDensity<f64, Cpu> for MyGuide {
///     fn draw<R: Rng>(&self, arch: &Architecture, s: usize, rng: &mut R, trace: bool) -> weightspace::Result<Weights<f64, Cpu, OwnedTape<f64, Cpu>>> {
///         self.0.draw(arch, s, rng, trace)
///     }
///     fn log_density(&self, arch: &Architecture, w: Weights<f64, Cpu, OwnedTape<f64, Cpu>>, trace: bool) -> weightspace::Result<Taped<(usize,), f64, Cpu>> {
///         self.0.log_density(arch, w, trace)
///     }
/// }
/// let model = Net::<f64, Cpu>::new(&Cpu::default());
/// let mine = MyGuide(model.mean_field_with(MeanFieldInit { jitter: 1.0, ..Default::default() })?);
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let exact = information(&group, &mine, InfoBound::Exact, 16, &mut rng)?;
/// assert!(exact.value > 0.0 && exact.value <= 8f64.ln() + 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait GuideLogDensity<E: Real, D: Device<E>> {
    /// `s` weight samples; with `trace`, reparameterised on the tape of the guide's parameters.
    fn draw<R: Rng>(&self, arch: &Architecture, s: usize, rng: &mut R, trace: bool) -> Result<Weights<E, D, OwnedTape<E, D>>>;

    /// `ln q(ω_s)` per sample, `(S,)`; with `trace`, on the tape of the guide's parameters.
    fn log_density(&self, arch: &Architecture, weights: Weights<E, D, OwnedTape<E, D>>, trace: bool) -> Result<Taped<(usize,), E, D>>;

    /// `ln q(ω_s)` per sample of untaped weights, on the host: [`log_density`](Self::log_density)
    /// without the tape.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::GuideLogDensity;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Lin::<f64, Cpu>::new(&dev);
    /// let guide = model.mean_field_with(MeanFieldInit { scale: 1.0, ..Default::default() })?;
    /// let at_mean = Weights::<f64, Cpu> { layers: vec![dev.tensor_from_vec(vec![0.0, 0.0], (1usize, 1usize, 2usize))] };
    /// let lq = guide.log_density_untaped(Lin::<f64, Cpu>::ARCH, &at_mean)?;
    /// // two standard normals at their mean: -ln(2π)
    /// assert!((lq[0] + (2.0 * std::f64::consts::PI).ln()).abs() < 1e-12);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn log_density_untaped(&self, arch: &Architecture, weights: &Weights<E, D>) -> Result<Vec<f64>> {
        let taped = Weights { layers: weights.layers.iter().map(|t| t.retaped()).collect() };
        let lq = self.log_density(arch, taped, false)?;
        Ok(crate::num::cast::to_f64s(&lq.split_tape().0.as_vec()))
    }

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

    /// The information term for the elements `h_1 = e, h_2, …, h_K`: the mean over samples of
    /// `ln_k + ln q(ω_s) − ln Σ_k q(h_k·ω_s)` (on the tape of the guide's parameters when `trace`,
    /// and of the weights), and its per-sample values.
    ///
    /// The default reduces [`log_density_transformed`](Self::log_density_transformed) with a
    /// log-sum-exp. Mean-field guides compute it on the host in `f64` in `O(K·S·d)` and attach the
    /// exact gradient with a first-order surrogate (the value is exact; only first derivatives,
    /// which is all dfdx has).
    fn information_term(
        &self,
        group: &SymmetryGroup,
        weights: Weights<E, D, OwnedTape<E, D>>,
        elements: &[GroupElement],
        ln_k: f64,
        trace: bool,
    ) -> Result<(Taped<(), E, D>, Vec<f64>)> {
        let s = weights.num_samples();
        let lq = self.log_density_transformed(group, weights, elements, trace)?;
        let dev = lq.device().clone();
        let lse = lq.with_empty_tape().logsumexp::<_, Axis<0>>();
        let first = lq.select(dev.tensor(0usize));
        let per = (first - lse) + crate::num::cast::from_f64::<E>(ln_k);
        let per_sample: Vec<f64> = per.with_empty_tape().split_tape().0.as_vec().iter().map(|v| v.cast_to_f64()).collect();
        Ok((per.sum::<(), _>() * crate::num::cast::from_f64::<E>(1.0 / s as f64), per_sample))
    }
}

impl<E: Real, D: Device<E>, G: MeanFieldGuide<E, D>> GuideLogDensity<E, D> for G {
    fn draw<R: Rng>(&self, arch: &Architecture, s: usize, rng: &mut R, trace: bool) -> Result<Weights<E, D, OwnedTape<E, D>>> {
        let params = self.layer_params();
        super::group::check_params_for(arch, &params)?;
        crate::vi::guide::sample_mean_field(arch, &params, s, rng, trace)
    }

    fn log_density(&self, arch: &Architecture, weights: Weights<E, D, OwnedTape<E, D>>, trace: bool) -> Result<Taped<(usize,), E, D>> {
        crate::model::bnn::check_weights(arch, &weights)?;
        let params = self.layer_params();
        super::group::check_params_for(arch, &params)?;
        Ok(crate::vi::guide::log_q(arch, &params, weights, trace))
    }

    fn log_density_transformed(
        &self,
        group: &SymmetryGroup,
        weights: Weights<E, D, OwnedTape<E, D>>,
        elements: &[GroupElement],
        trace: bool,
    ) -> Result<Taped<(usize, usize), E, D>> {
        let arch = *group.architecture();
        crate::model::bnn::check_weights(&arch, &weights)?;
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
            // With ε = (ω − μ) / σ under q itself, a = (μ − μ_k) / σ_k and b = σ / σ_k:
            //   Σ_p ((ω − μ_k) / σ_k)² = Σ_p a² + 2 (a ⊙ b) εᵀ + b² (ε²)ᵀ,
            // two (K, P) × (P, S) products instead of (K, S, P) elementwise work. The terms stay
            // well conditioned: a and b are O(1) unless the copies are far apart, where the
            // density ratio is negligible anyway.
            let mu_k = param(&view.loc, trace).gather(idx.clone()).reshape_like(&(k, p));
            let mu_k = if any_neg { mu_k * dev.tensor_from_vec(sign, (k, p)) } else { mu_k };
            let ls_k = param(&view.log_scale, trace).gather(idx).reshape_like(&(k, p));
            let eps = (w.reshape_like(&(s, p)) - param(&view.loc, trace).broadcast_like::<_, Axis<0>>(&(s, p)))
                * param(&view.log_scale, trace).negate().exp().broadcast_like::<_, Axis<0>>(&(s, p));
            let inv_k = ls_k.with_empty_tape().negate().exp();
            let a = (param(&view.loc, trace).broadcast_like::<_, Axis<0>>(&(k, p)) - mu_k) * inv_k;
            let b = (param(&view.log_scale, trace).broadcast_like::<_, Axis<0>>(&(k, p)) - ls_k.with_empty_tape()).exp();
            let a2 = a.with_empty_tape().square().sum::<_, Axis<1>>().broadcast_like::<_, Axis<1>>(&(k, s));
            let cross =
                (a * b.with_empty_tape()).matmul(eps.with_empty_tape().permute::<_, Axes2<1, 0>>()) * crate::num::cast::from_f64::<E>(2.0);
            let sq = b.square().matmul(eps.square().permute::<_, Axes2<1, 0>>());
            let quad = (a2 + cross + sq) * crate::num::cast::from_f64::<E>(-0.5);
            let c = crate::num::cast::from_f64::<E>(0.5 * (2.0 * std::f64::consts::PI).ln() * p as f64);
            let norm = (ls_k.sum::<_, Axis<1>>() + c).broadcast_like::<_, Axis<1>>(&(k, s));
            let lq = quad - norm;
            total = crate::vi::prior::add_term(total, lq);
        }
        total.ok_or_else(|| Error::Empty { what: "architecture layers".into() })
    }

    fn information_term(
        &self,
        group: &SymmetryGroup,
        weights: Weights<E, D, OwnedTape<E, D>>,
        elements: &[GroupElement],
        ln_k: f64,
        trace: bool,
    ) -> Result<(Taped<(), E, D>, Vec<f64>)> {
        mean_field_information(group, &self.layer_params(), weights, elements, ln_k, trace)
    }
}

fn host<E: Real, D: Device<E>, S: Shape, T>(t: &Tensor<S, E, D, T>) -> Vec<f64> {
    t.as_vec().iter().map(|v| v.cast_to_f64()).collect()
}

/// The information term of a mean-field guide, on the host in `f64`.
///
/// With `z_ksp = (ω_sp − μ_k,p) / σ_k,p` (`μ_k = h_k⁻¹·μ`, `σ_k = h_k⁻¹·σ`), `ln q(h_k·ω_s) =
/// Σ_p (−z²/2 − ln σ_k,p) − const`, and `T_s = ln K + ln q(ω_s) − LSE_k ln q(h_k·ω_s)`. With
/// `c_ks = (δ_k0 − softmax_k)/S`, the gradients of `(1/S) Σ_s T_s` are
/// `∂/∂ω_sp = −Σ_k c_ks z_ksp / σ_k,p`, `∂/∂μ_k,p = Σ_s c_ks z_ksp / σ_k,p` and
/// `∂/∂ln σ_k,p = Σ_s c_ks (z²_ksp − 1)`, scattered back through `h_k⁻¹` (with its signs).
fn mean_field_information<E: Real, D: Device<E>>(
    group: &SymmetryGroup,
    params: &[crate::model::params::NormalView<E, D>],
    weights: Weights<E, D, OwnedTape<E, D>>,
    elements: &[GroupElement],
    ln_k: f64,
    trace: bool,
) -> Result<(Taped<(), E, D>, Vec<f64>)> {
    let arch = *group.architecture();
    crate::model::bnn::check_weights(&arch, &weights)?;
    group.check_params(params)?;
    if elements.is_empty() {
        return Err(Error::Empty { what: "group elements".into() });
    }
    let maps = elements
        .iter()
        .map(|h| {
            group.check_element(h)?;
            let inv = h.inverse();
            Ok((0..arch.layers.len()).map(|l| group.layer_map(&inv, l)).collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?;
    let (k, s) = (elements.len(), weights.num_samples());
    let omega: Vec<Vec<f64>> = weights.layers.iter().map(host).collect();
    let mu: Vec<Vec<f64>> = params.iter().map(|v| host(&v.loc)).collect();
    let ls: Vec<Vec<f64>> = params.iter().map(|v| host(&v.log_scale)).collect();
    let inv_sd: Vec<Vec<f64>> = ls.iter().map(|l| l.iter().map(|x| (-x).exp()).collect()).collect();
    // ln q(h_k·ω_s) up to a constant shared by all k (the Σ ln σ_k terms are permutations of one sum)
    // (h⁻¹·μ, 1 / h⁻¹·σ) of element kk on layer l, contiguous so the inner loops vectorise
    let moved = |l: usize, kk: usize| -> (Vec<f64>, Vec<f64>) {
        let m = &maps[kk][l];
        let mk = m.src.iter().zip(&m.neg).map(|(&src, &neg)| if neg { -mu[l][src] } else { mu[l][src] }).collect();
        let ik = m.src.iter().map(|&src| inv_sd[l][src]).collect();
        (mk, ik)
    };
    let mut lq = vec![0.0; k * s];
    for (l, om) in omega.iter().enumerate() {
        let p = mu[l].len();
        for kk in 0..k {
            let (mk, ik) = moved(l, kk);
            for ss in 0..s {
                let w = &om[ss * p..(ss + 1) * p];
                let quad: f64 = w.iter().zip(&mk).zip(&ik).map(|((w, m), i)| ((w - m) * i).powi(2)).sum();
                lq[kk * s + ss] -= 0.5 * quad;
            }
        }
    }
    // per-sample terms and the weights c_ks = (δ_k0 − softmax_k) / S
    let mut per_sample = vec![0.0; s];
    let mut c = vec![0.0; k * s];
    for ss in 0..s {
        let mx = (0..k).map(|kk| lq[kk * s + ss]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..k).map(|kk| (lq[kk * s + ss] - mx).exp()).sum();
        per_sample[ss] = ln_k + lq[ss] - (mx + sum.ln());
        for kk in 0..k {
            c[kk * s + ss] = (f64::from(u8::from(kk == 0)) - (lq[kk * s + ss] - mx).exp() / sum) / s as f64;
        }
    }
    let value = per_sample.iter().sum::<f64>() / s as f64;
    // gradients, then the surrogate Σ g·θ + (value − Σ g·θ₀): exact value, exact first derivatives
    let mut term: Option<Taped<(), E, D>> = None;
    let mut offset = value;
    let to_e = |v: &[f64]| v.iter().map(|x| crate::num::cast::from_f64::<E>(*x)).collect::<Vec<E>>();
    for (l, (w, view)) in weights.layers.into_iter().zip(params).enumerate() {
        let p = mu[l].len();
        let (mut g_om, mut g_mu, mut g_ls) = (vec![0.0; s * p], vec![0.0; p], vec![0.0; p]);
        for kk in 0..k {
            let (mk, ik) = moved(l, kk);
            let (mut gm, mut gl) = (vec![0.0; p], vec![0.0; p]);
            for ss in 0..s {
                let ck = c[kk * s + ss];
                if ck == 0.0 {
                    continue;
                }
                let w = &omega[l][ss * p..(ss + 1) * p];
                let go = &mut g_om[ss * p..(ss + 1) * p];
                for j in 0..p {
                    let z = (w[j] - mk[j]) * ik[j];
                    let dz = ck * z * ik[j];
                    go[j] -= dz;
                    gm[j] += dz;
                    gl[j] += ck * (z * z - 1.0);
                }
            }
            let m = &maps[kk][l];
            for (j, (&src, &neg)) in m.src.iter().zip(&m.neg).enumerate() {
                g_mu[src] += if neg { -gm[j] } else { gm[j] };
                g_ls[src] += gl[j];
            }
        }
        let dot = |g: &[f64], x: &[f64]| g.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
        offset -= dot(&g_om, &omega[l]) + dot(&g_mu, &mu[l]) + dot(&g_ls, &ls[l]);
        let dev = view.loc.device().clone();
        let shape = *w.shape();
        let part = (w * dev.tensor_from_vec(to_e(&g_om), shape)).sum::<(), _>()
            + (param(&view.loc, trace) * dev.tensor_from_vec(to_e(&g_mu), (p,))).sum::<(), _>()
            + (param(&view.log_scale, trace) * dev.tensor_from_vec(to_e(&g_ls), (p,))).sum::<(), _>();
        term = Some(match term {
            None => part,
            Some(t) => t + part,
        });
    }
    let term = term.ok_or_else(|| Error::Empty { what: "architecture layers".into() })? + crate::num::cast::from_f64::<E>(offset);
    Ok((term, per_sample))
}

/// How the mutual information `I(g; ω)` between the group element and the weights of `q^G` is
/// bounded in the symmetrised objective.
///
/// `I ≤ ln |G|`, and it is close to `ln |G|` when the guide's symmetric copies barely overlap; the
/// sampled bound never exceeds `ln K`, so with `K ≪ |G|` it adds at most `ln K` nats.
///
/// ```
/// use weightspace::symmetry::InfoBound;
/// assert_eq!(InfoBound::default(), InfoBound::Sampled { k: 16 });
/// ```
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

/// One estimate of the information term ([`information`]).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{information, InfoBound, InfoEstimate, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let model = Net::<f64, Cpu>::new(&Cpu::default());
/// let guide = model.mean_field();
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let est: InfoEstimate<f64, Cpu> = information(&group, &guide, InfoBound::Sampled { k: 4 }, 10, &mut rng)?;
/// assert_eq!((est.k, est.per_sample.len()), (4, 10));
/// assert!((est.value - est.per_sample.iter().sum::<f64>() / 10.0).abs() < 1e-12);
/// assert!((est.term.array() - est.value).abs() < 1e-9); // the taped term has the same value
/// assert!(est.per_sample.iter().all(|v| *v <= 4f64.ln() + 1e-9)); // I_K ≤ ln K
/// # Ok::<(), weightspace::Error>(())
/// ```
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
    let (term, per_sample) = guide.information_term(group, w, &elements, ln_k, true)?;
    let value = per_sample.iter().sum::<f64>() / samples as f64;
    Ok(InfoEstimate { term, value, per_sample, k: elements.len() })
}

/// The symmetrised ELBO, `ELBO(q^G) ≥ E_q[ln p(D|ω)] − KL(q ‖ p) + I_K`: a training
/// [`Objective`] for [`crate::vi::fit::fit_objective`].
///
/// The plain ELBO part is [`crate::vi::elbo::elbo`] with [`SymmetrisedElbo::elbo`]'s settings (local
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
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{symmetrised_elbo, InfoBound, SymmetrisedElbo, SymmetrisedEstimate, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.3>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[-0.8, 0.1, 0.9], 1)?;
/// let model = Net::<f64, Cpu>::new(&dev);
/// let guide = model.mean_field();
/// let cfg = SymmetrisedElbo::new(SymmetryGroup::of(Net::<f64, Cpu>::ARCH), InfoBound::Exact);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let est: SymmetrisedEstimate<f64, Cpu> = symmetrised_elbo(&model, &guide, &data, 3, &cfg, &mut rng)?;
/// // the exact information term is at most ln |G| = ln(2! · 2²)
/// assert!(est.information <= 8f64.ln() + 1e-9);
/// assert!(est.plain_elbo.is_finite());
/// assert!((est.estimate.loss.array() + est.estimate.elbo).abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
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
    let plain = crate::vi::elbo::elbo(model, guide, batch, n_total, &cfg.elbo, rng)?;
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

    /// As the plain ELBO: the information term depends on the guide only.
    fn splits_over_points(&self) -> bool {
        <ElboConfig as Objective<E, D, M>>::splits_over_points(&self.elbo)
    }
}

/// The symmetrised guide `q^G(ω) = (1/|G|) Σ_g q(g⁻¹ω)`: sample `ω₀ ~ q`, then a uniform `g`, and
/// return `g·ω₀`.
///
/// Its predictions equal the guide's (`E_{q^G}[p(y|x,ω)] = E_q[p(y|x,ω)]`); it implements
/// [`crate::predict::predictive::WeightSource`] for use with [`crate::Predictive::run`].
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
        let lse = lq.logsumexp::<_, Axis<0>>() - crate::num::cast::from_f64::<E>(self.group.log_order());
        Ok(lse.split_tape().0.as_vec().iter().map(|v| v.cast_to_f64()).collect())
    }

    /// The information term `I_K` (or the exact `I`) of the wrapped guide; see [`information`].
    pub fn information<E: Real, D: Device<E>, R: Rng>(&self, bound: InfoBound, samples: usize, rng: &mut R) -> Result<InfoEstimate<E, D>>
    where
        G: GuideLogDensity<E, D>,
    {
        information(self.group, self.guide, bound, samples, rng)
    }
}

impl<E: Real, D: Device<E>, G: GuideLogDensity<E, D>> crate::predict::predictive::WeightSource<E, D> for SymmetrisedGuide<'_, G> {
    fn draw(&mut self, _arch: &crate::model::arch::Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        self.sample(s, rng)
    }
}
