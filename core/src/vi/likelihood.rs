//! Observation models: per-sample, per-point log-likelihoods of network outputs.

use dfdx::prelude::*;

use crate::model::arch::LikelihoodSpec;
use crate::model::data::Dataset;
use crate::model::params::LikelihoodParams;
use crate::vi::prior::{param, Taped};
use crate::{Real, Result};

/// The Gaussian noise scale `σ` (taped when learned and `trace`); `None` for other likelihoods.
pub fn noise_scale<E: Real, D: Device<E>>(spec: &LikelihoodSpec, p: &LikelihoodParams<E, D>, trace: bool) -> Option<Taped<(), E, D>> {
    match *spec {
        LikelihoodSpec::Gaussian { scale, upper } => {
            let raw = param(&p.raw, trace && scale.is_learned()).reshape_like(&());
            Some(match upper {
                Some(ub) => raw.sigmoid() * crate::num::cast::from_f64::<E>(ub),
                None => raw.exp(),
            })
        }
        _ => None,
    }
}

/// The noise scale as a number (Gaussian only).
pub fn noise_value<E: Real, D: Device<E>>(spec: &LikelihoodSpec, p: &LikelihoodParams<E, D>) -> Option<f64> {
    noise_scale(spec, p, false).map(|t| t.split_tape().0.as_vec()[0].cast_to_f64())
}

/// `ln p(y_n | f_s(x_n))` for every sample `s` and point `n`: `(S, N)`.
///
/// `f` is `(S, N, d_out)`: means for a Gaussian, logits for categorical and Bernoulli.
pub fn log_lik<E: Real, D: Device<E>>(
    spec: &LikelihoodSpec,
    params: &LikelihoodParams<E, D>,
    trace: bool,
    f: Taped<(usize, usize, usize), E, D>,
    data: &Dataset<E, D>,
) -> Result<Taped<(usize, usize), E, D>> {
    let shape = *f.shape();
    let (s, n, k) = shape;
    Ok(match *spec {
        LikelihoodSpec::Gaussian { .. } => {
            let sigma = noise_scale(spec, params, trace).expect("gaussian");
            let log_sigma = sigma.with_empty_tape().ln();
            let y = data.y.clone().broadcast_like::<_, Axis<0>>(&shape);
            let inv = sigma.recip().broadcast_like(&shape);
            let z = (f - y) * inv;
            let quad = (z.square() * crate::num::cast::from_f64::<E>(-0.5)).sum::<_, Axis<2>>();
            let c = crate::num::cast::from_f64::<E>(0.5 * (2.0 * std::f64::consts::PI).ln() * k as f64);
            let norm = (log_sigma * crate::num::cast::from_f64::<E>(k as f64) + c).broadcast_like(&(s, n));
            quad - norm
        }
        LikelihoodSpec::Categorical => {
            let y = data.y.clone().broadcast_like::<_, Axis<0>>(&shape);
            (f.log_softmax::<Axis<2>>() * y).sum::<_, Axis<2>>()
        }
        LikelihoodSpec::Bernoulli => {
            // ln p = y f - softplus(f), with y the label as 0/1 (second one-hot column)
            let y1 = data.y.clone().slice((.., 1..2)).reshape_like(&(n, 1usize)).broadcast_like::<_, Axis<0>>(&shape);
            let sp = crate::vi::network::softplus(f.with_empty_tape());
            (f * y1 - sp).sum::<_, Axis<2>>()
        }
    })
}
