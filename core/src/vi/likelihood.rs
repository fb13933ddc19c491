//! Observation models: per-sample, per-point log-likelihoods of network outputs.

use dfdx::prelude::*;

use crate::model::arch::LikelihoodSpec;
use crate::model::bnn::Bnn;
use crate::model::data::Dataset;
use crate::model::params::LikelihoodParams;
use crate::vi::prior::{param, Taped};
use crate::{Error, Real, Result};

/// The Gaussian noise scale `σ` (taped when learned and `trace`); `None` for other likelihoods.
pub(crate) fn noise_scale<E: Real, D: Device<E>>(
    spec: &LikelihoodSpec,
    p: &LikelihoodParams<E, D>,
    trace: bool,
) -> Option<Taped<(), E, D>> {
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
pub(crate) fn noise_value<E: Real, D: Device<E>>(spec: &LikelihoodSpec, p: &LikelihoodParams<E, D>) -> Option<f64> {
    noise_scale(spec, p, false).map(|t| t.split_tape().0.as_vec()[0].cast_to_f64())
}

/// `ln p(y_n | f_s(x_n))` for every sample `s` and point `n`: `(S, N)`.
///
/// `f` is `(S, N, d_out)`: means for a Gaussian, logits for categorical and Bernoulli.
pub(crate) fn log_lik<E: Real, D: Device<E>>(
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

/// Writes a Gaussian noise scale `σ` into a model's likelihood parameter (`raw = ln σ`, or
/// `logit(σ / upper)` when bounded), found by its path `"{likelihood}.raw"`.
///
/// Users call it as [`BnnExt::set_noise_scale`](crate::BnnExt::set_noise_scale).
pub(crate) fn set_noise_scale<E: Real, D: Device<E>, M: Bnn<E, D>>(model: &mut M, sigma: f64) -> Result<()> {
    use dfdx::nn::tensor_collection::{RecursiveWalker, TensorVisitor, ViewTensorMut, ViewTensorName};
    let raw = match M::ARCH.likelihood {
        LikelihoodSpec::Gaussian { upper: Some(ub), .. } => {
            if !(sigma > 0.0 && sigma < ub) {
                return Err(Error::config("noise scale", sigma, "must lie strictly between 0 and the declared upper bound"));
            }
            let p = sigma / ub;
            (p / (1.0 - p)).ln()
        }
        LikelihoodSpec::Gaussian { upper: None, .. } => {
            if !(sigma.is_finite() && sigma > 0.0) {
                return Err(Error::config("noise scale", sigma, "must be finite and > 0"));
            }
            sigma.ln()
        }
        _ => return Err(Error::config("noise scale", sigma, "only a Gaussian likelihood has a noise scale")),
    };
    struct Setter {
        path: String,
        raw: f64,
        found: usize,
    }
    impl<E: Real, D: Device<E>> TensorVisitor<E, D> for Setter {
        type Viewer = (ViewTensorMut, ViewTensorName);
        type Err = D::Err;
        type E2 = E;
        type D2 = D;
        fn visit<S: Shape>(
            &mut self,
            _: TensorOptions<S, E, D>,
            (t, name): (&mut Tensor<S, E, D>, String),
        ) -> std::result::Result<Option<Tensor<S, E, D>>, D::Err> {
            if name == self.path && t.shape().num_elements() == 1 {
                *t = t.device().tensor_from_vec(vec![crate::num::cast::from_f64::<E>(self.raw)], *t.shape());
                self.found += 1;
            }
            Ok(None)
        }
    }
    let mut setter = Setter { path: format!("{}.raw", M::ARCH.likelihood_name), raw, found: 0 };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut setter }).map_err(Error::device)?;
    if setter.found != 1 {
        return Err(Error::Shape {
            what: format!("likelihood parameter `{}`", setter.path),
            expected: "exactly one tensor".into(),
            got: format!("{} tensors", setter.found),
        });
    }
    Ok(())
}
