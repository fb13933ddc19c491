//! Layer priors: expanding prior hyperparameters to every weight, log densities and KL divergences.
//!
//! Every layer's prior is a product of Normals over the entries of `[W | b]` (shape
//! `(d_out, d_in + 1)`). Parameters shared per layer or per unit are broadcast; fan-in scaling
//! divides the scale by `sqrt(d_in + 1)`.

use dfdx::prelude::*;
use rand::Rng;

use crate::model::arch::{Granularity, LayerSpec};
use crate::model::bnn::{Bnn, Weights};
use crate::model::params::{NormalView, PriorView};
use crate::{Error, Real, Result};

pub use crate::num::Taped;

/// Adds `term` to a running taped sum that starts at `None` (the per-layer and per-task sums).
pub(crate) fn add_term<S: Shape, E: Real, D: Device<E>>(total: Option<Taped<S, E, D>>, term: Taped<S, E, D>) -> Option<Taped<S, E, D>> {
    Some(match total {
        None => term,
        Some(t) => t + term,
    })
}

/// Puts a parameter on a fresh tape when it is learned. A fixed parameter is copied to a tensor with
/// a new id, so that no optimiser ever sees a gradient for it.
pub(crate) fn param<S: Shape, E: Real, D: Device<E>>(t: &Tensor<S, E, D>, learned: bool) -> Taped<S, E, D> {
    if learned {
        t.leaky_trace()
    } else {
        (t.clone() + E::zero()).retaped()
    }
}

/// A layer prior expanded to one `(loc, ln σ)` per entry of `[W | b]`, shape `(d_out, d_in + 1)`.
pub(crate) struct ExpandedNormal<E: Dtype, D: Storage<E>> {
    /// Locations.
    pub loc: Taped<(usize, usize), E, D>,
    /// Log scales.
    pub log_scale: Taped<(usize, usize), E, D>,
}

fn expand_part<E: Real, D: Device<E>>(v: Taped<(usize,), E, D>, per: Granularity, rows: usize, cols: usize) -> Taped<(usize, usize), E, D> {
    match per {
        Granularity::Layer => v.reshape_like(&()).broadcast_like(&(rows, cols)),
        Granularity::Unit => v.broadcast_like::<_, Axis<1>>(&(rows, cols)),
        Granularity::Weight => v.reshape_like(&(rows, cols)),
    }
}

/// Expands one layer's prior parameters. `trace` puts learned parameters on the tape.
pub(crate) fn expand_layer<E: Real, D: Device<E>>(spec: &LayerSpec, view: &PriorView<E, D>, trace: bool) -> ExpandedNormal<E, D> {
    let (o, i) = (spec.d_out, spec.d_in);
    let w = &spec.prior;
    let b = spec.bias_spec();
    let half_ln = |fan: bool| if fan { crate::num::cast::from_f64::<E>(-0.5 * ((i + 1) as f64).ln()) } else { E::zero() };
    let part = |nv: &NormalView<E, D>, loc_l: bool, sc_l: bool| (param(&nv.loc, trace && loc_l), param(&nv.log_scale, trace && sc_l));
    let (wl, ws) = part(&view.weight, w.loc.is_learned(), w.scale.is_learned());
    // the bias part: its own entries, or the weight entries when tied per layer / per unit
    let tied = spec.bias_prior.is_none() && w.per != Granularity::Weight;
    let (bl, bs, bper) = match (&view.bias, tied) {
        (Some(bias), false) => {
            let (bl, bs) = part(bias, b.loc.is_learned(), b.scale.is_learned());
            let per = if b.per == Granularity::Layer { Granularity::Layer } else { Granularity::Unit };
            (bl, bs, per)
        }
        // tied per layer or per unit (or a view without bias entries): reuse the weight entries
        _ => {
            let (bl, bs) = part(&view.weight, w.loc.is_learned(), w.scale.is_learned());
            (bl, bs, if w.per == Granularity::Weight { Granularity::Unit } else { w.per })
        }
    };
    let wl = expand_part(wl, w.per, o, i);
    let ws = expand_part(ws, w.per, o, i) + half_ln(w.fan_in_scaled);
    let bl = expand_part(bl, bper, o, 1);
    let bs = expand_part(bs, bper, o, 1) + half_ln(b.fan_in_scaled);
    ExpandedNormal { loc: (wl, bl).concat_along(Axis::<1>), log_scale: (ws, bs).concat_along(Axis::<1>) }
}

/// Expands every layer of a model's prior.
pub(crate) fn expand<E: Real, D: Device<E>>(layers: &[LayerSpec], views: &[PriorView<E, D>], trace: bool) -> Vec<ExpandedNormal<E, D>> {
    layers.iter().zip(views).map(|(s, v)| expand_layer(s, v, trace)).collect()
}

/// Sum over entries of `KL(N(m, e^{2 ls}) ‖ N(μ, e^{2 lσ}))`, in closed form.
///
/// `q` holds the guide's `(loc, ln s)` per entry (shape `(d_out, d_in+1)`), `p` the prior's.
pub(crate) fn kl_normal<E: Real, D: Device<E>>(
    q_loc: Taped<(usize, usize), E, D>,
    q_ls: Taped<(usize, usize), E, D>,
    p: ExpandedNormal<E, D>,
) -> Taped<(), E, D> {
    let ExpandedNormal { loc: p_loc, log_scale: p_ls } = p;
    if crate::kernels::mean_field::is_cpu::<E, D>() {
        return crate::kernels::mean_field::kl_normal([q_loc, q_ls, p_loc, p_ls]);
    }
    let inv_p_var = (p_ls.with_empty_tape() * crate::num::cast::from_f64::<E>(-2.0)).exp();
    let diff = q_loc - p_loc;
    let maha = diff.square() * inv_p_var.with_empty_tape();
    let ratio = (q_ls.with_empty_tape() * crate::num::cast::from_f64::<E>(2.0)).exp() * inv_p_var;
    let kl = (p_ls - q_ls) + (ratio + maha) * crate::num::cast::from_f64::<E>(0.5) - crate::num::cast::from_f64::<E>(0.5);
    kl.sum()
}

/// `ln N(w | μ, σ²)` summed over a layer's entries, per sample: `w` is `(S, d_out, d_in + 1)`,
/// the result `(S,)`.
pub(crate) fn log_normal<E: Real, D: Device<E>, T: Tape<E, D>>(
    w: Tensor<(usize, usize, usize), E, D, T>,
    p: ExpandedNormal<E, D>,
) -> Tensor<(usize,), E, D, OwnedTape<E, D>>
where
    OwnedTape<E, D>: Merge<T>,
{
    let shape = *w.shape();
    let ExpandedNormal { loc, log_scale } = p;
    let z =
        (loc.broadcast_like::<_, Axis<0>>(&shape) - w) * (log_scale.with_empty_tape().negate().exp()).broadcast_like::<_, Axis<0>>(&shape);
    let c = 0.5 * (2.0 * std::f64::consts::PI).ln() * (shape.1 * shape.2) as f64;
    let per_sample = (z.square() * crate::num::cast::from_f64::<E>(-0.5)).sum::<_, Axes2<1, 2>>();
    let ls_sum = log_scale.sum::<(), _>();
    (per_sample - ls_sum.broadcast_like(&(shape.0,))) - crate::num::cast::from_f64::<E>(c)
}

/// Draws `s` weight samples from a model's prior.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(1.0, 0.5))] out: Dense<3, 2>, #[likelihood] noise: Gaussian<Fixed<1.0>> }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
/// let w = model.sample_prior(4000, &mut rng)?;
/// let flat = w.to_flat();
/// let mean = flat.iter().map(|r| r[0]).sum::<f64>() / 4000.0;
/// assert!((mean - 1.0).abs() < 4.0 * 0.5 / 4000f64.sqrt());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub(crate) fn sample_prior<E: Real, D: Device<E>, M: Bnn<E, D>>(model: &M, s: usize, rng: &mut impl Rng) -> Result<Weights<E, D>> {
    if s == 0 {
        return Err(Error::config("samples", 0, "at least one weight sample is needed"));
    }
    let priors = expand(M::ARCH.layers, &model.prior_params(), false);
    let layers = priors
        .into_iter()
        .map(|p| {
            let (o, i1) = *p.loc.shape();
            let shape = (s, o, i1);
            let eps = crate::kernels::normal::standard_normal::<E, D, _>(model.device(), rng, shape);
            let loc = p.loc.split_tape().0.broadcast_like::<_, Axis<0>>(&shape);
            let sd = p.log_scale.split_tape().0.exp().broadcast_like::<_, Axis<0>>(&shape);
            loc + sd * eps
        })
        .collect();
    Ok(Weights { layers })
}
