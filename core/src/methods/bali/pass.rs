//! The device half of one BALI update: a forward pass that keeps every layer's input `φ` and
//! pre-activation `z`, a backward pass of `∂ℓ/∂z` layer by layer, the curvature factors, and the
//! sufficient statistics `Σ φφᵀ` and `Σ t φᵀ`. Only small `(d_in+1)²`, `d_out × (d_in+1)` and
//! `d_out²` matrices leave the device.

use dfdx::prelude::*;

use crate::model::arch::{Activation, Architecture, LikelihoodSpec};
use crate::model::bnn::Weights;
use crate::model::data::Dataset;
use crate::model::params::LikelihoodParams;
use crate::{Error, Real, Result};

use super::SigmaEstimate;

type T2<E, D> = Tensor<(usize, usize), E, D>;
type T3<E, D> = Tensor<(usize, usize, usize), E, D>;

/// A layer's augmented input `φ = [a, 1]`: the data (shared by every weight sample) or one per
/// sample.
pub(crate) enum Phi<E: Dtype, D: Storage<E>> {
    Shared(T2<E, D>),
    Batched(T3<E, D>),
}

/// What one forward/backward pass over a batch leaves behind.
pub(crate) struct Pass<E: Dtype, D: Storage<E>> {
    /// Every layer's input.
    pub phi: Vec<Phi<E, D>>,
    /// Every layer's pre-activation, `(S, N, d_out)`.
    pub z: Vec<T3<E, D>>,
    /// `∂ℓ_n/∂z_n` per layer, `(S, N, d_out)`, with `ℓ_n = −ln p(y_n | x_n, W)`.
    pub grad: Vec<T3<E, D>>,
    /// Per layer, the batch estimate of the curvature factor `G_l` (`d_out²`, row-major), or `None`
    /// for a Gaussian output layer, whose curvature is exactly `I/σ²`.
    pub curvature: Vec<Option<Vec<f64>>>,
    /// Per layer, `(1/S) Σ_s Σ_n φ φᵀ` over the batch (`(d_in+1)²`, row-major).
    pub aa: Vec<Vec<f64>>,
    /// Mean negative log-likelihood per point (over samples and points).
    pub nll: f64,
    /// Gaussian likelihood: mean squared residual per output, `(1/(S N K)) Σ ‖y − f‖²`.
    pub sq_residual: Option<f64>,
}

pub(crate) fn host<S: Shape, E: Real, D: Device<E>>(t: &Tensor<S, E, D>) -> Vec<f64> {
    t.as_vec().iter().map(|v| v.cast_to_f64()).collect()
}

fn upload<S: Shape, E: Real, D: Device<E>>(dev: &D, v: &[f64], shape: S) -> Tensor<S, E, D> {
    dev.tensor_from_vec(v.iter().map(|&x| crate::num::cast::from_f64::<E>(x)).collect(), shape)
}

/// `(1/S) Σ_s a_sᵀ b_s` for `(S, N, p)` and `(S, N, q)`: a `p × q` host matrix.
fn gram<E: Real, D: Device<E>>(a: &T3<E, D>, b: &T3<E, D>) -> Vec<f64> {
    let s = a.shape().0 as f64;
    let g = a.clone().permute::<_, Axes3<0, 2, 1>>().matmul(b.clone()).sum::<(usize, usize), Axis<0>>();
    host(&g).into_iter().map(|v| v / s).collect()
}

/// `(1/S) Σ_s t_sᵀ φ_s` for a layer input.
pub(crate) fn cross<E: Real, D: Device<E>>(t: &T3<E, D>, phi: &Phi<E, D>) -> Vec<f64> {
    match phi {
        Phi::Shared(x) => {
            let s = t.shape().0 as f64;
            let tsum = t.clone().sum::<(usize, usize), Axis<0>>();
            host(&tsum.permute::<_, Axes2<1, 0>>().matmul(x.clone())).into_iter().map(|v| v / s).collect()
        }
        Phi::Batched(h) => gram(t, h),
    }
}

/// `ψ'(z)`, or `None` for the identity.
fn activation_derivative<E: Real, D: Device<E>>(act: Activation, z: &T3<E, D>) -> Option<T3<E, D>> {
    if act == Activation::Identity {
        return None;
    }
    let a = crate::vi::network::activate(act, z.clone().leaky_trace());
    let grads = a.sum::<(), _>().backward();
    Some(grads.get(z))
}

/// Backpropagates `v = ∂(·)/∂z_L` from the output layer to every earlier layer:
/// `v_l = (v_{l+1} W_{l+1}[:, :d_l]) ⊙ ψ'(z_l)`. Returns one tensor per layer (the last is `v`).
fn backprop<E: Real, D: Device<E>>(weights: &Weights<E, D>, dact: &[Option<T3<E, D>>], v: T3<E, D>) -> Vec<T3<E, D>> {
    let l_count = weights.layers.len();
    let mut out = vec![v];
    for l in (0..l_count - 1).rev() {
        let w = &weights.layers[l + 1];
        let d = w.shape().2 - 1;
        let w_no_bias = w.clone().slice((.., .., ..d));
        let up = out.last().expect("non-empty").clone().matmul(w_no_bias);
        out.push(match &dact[l] {
            Some(dz) => up * dz.clone(),
            None => up,
        });
    }
    out.reverse();
    out
}

/// Runs the forward and backward passes of one BALI update on `batch` with the linearisation
/// weights `weights` (`S` samples), and returns everything the host update needs.
pub(crate) fn run<E: Real, D: Device<E>>(
    arch: &Architecture,
    lik: &LikelihoodParams<E, D>,
    weights: &Weights<E, D>,
    batch: &Dataset<E, D>,
    sigma: SigmaEstimate,
    noise_sd: Option<f64>,
) -> Result<Pass<E, D>> {
    let s = weights.num_samples();
    let dev = batch.x.device().clone();
    let (n, d_in) = *batch.x.shape();
    let ones = dev.ones_like(&(n, 1usize));
    let x_aug: T2<E, D> = (batch.x.clone(), ones).concat_along(Axis::<1>);
    let last = arch.layers.len() - 1;

    // forward, keeping φ and z
    let mut phi = vec![Phi::Shared(x_aug)];
    let mut z = Vec::with_capacity(arch.layers.len());
    for (l, (spec, w)) in arch.layers.iter().zip(&weights.layers).enumerate() {
        let i1 = spec.d_in + 1;
        let wt = w.clone().permute::<_, Axes3<0, 2, 1>>();
        let zl = match &phi[l] {
            Phi::Shared(x) => x.clone().broadcast_like::<_, Axis<0>>(&(s, n, i1)).matmul(wt),
            Phi::Batched(h) => h.clone().matmul(wt),
        };
        if l < last {
            let a = crate::vi::network::activate(spec.activation, zl.clone());
            phi.push(Phi::Batched(crate::kernels::activation::augment(a)));
        }
        z.push(zl);
    }
    debug_assert_eq!(d_in, arch.d_in());

    // the likelihood and ∂ℓ/∂z_L, through the library's own log-likelihood
    let z_out = z[last].clone();
    let ll = crate::vi::likelihood::log_lik(&arch.likelihood, lik, false, z_out.leaky_trace(), batch)?;
    let ll_vals = host(&ll.retaped::<NoneTape>());
    let nll = -ll_vals.iter().sum::<f64>() / ll_vals.len() as f64;
    if !nll.is_finite() {
        return Err(Error::NonFinite {
            what: "BALI: negative log-likelihood of the batch".into(),
            index: ll_vals.iter().position(|v| !v.is_finite()).unwrap_or(0),
        });
    }
    let grads = ll.sum::<(), _>().backward();
    let g_out = grads.get(&z[last]).negate();

    let dact: Vec<Option<T3<E, D>>> =
        arch.layers[..last].iter().zip(&z).map(|(spec, zl)| activation_derivative(spec.activation, zl)).collect();
    let grad = backprop(weights, &dact, g_out);

    // curvature of the output layer, and the columns C of its factorisation H = C Cᵀ
    let k = arch.d_out();
    let sn = (s * n) as f64;
    let zv = || host(&z[last]);
    let (out_curv, columns): (Option<Vec<f64>>, Vec<Vec<f64>>) = match arch.likelihood {
        LikelihoodSpec::Gaussian { .. } => {
            let sd = noise_sd.expect("a Gaussian likelihood has a noise scale");
            let cols = (0..k)
                .map(|c| {
                    let mut v = vec![0.0; s * n * k];
                    v.iter_mut().skip(c).step_by(k).for_each(|x| *x = 1.0 / sd);
                    v
                })
                .collect();
            (None, cols)
        }
        LikelihoodSpec::Categorical => {
            let zv = zv();
            let mut p = vec![0.0; zv.len()];
            for (row, prow) in zv.chunks(k).zip(p.chunks_mut(k)) {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let tot: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for (pv, v) in prow.iter_mut().zip(row) {
                    *pv = (v - m).exp() / tot;
                }
            }
            let mut h = vec![0.0; k * k];
            for prow in p.chunks(k) {
                for a in 0..k {
                    h[a * k + a] += prow[a];
                    for b in 0..k {
                        h[a * k + b] -= prow[a] * prow[b];
                    }
                }
            }
            h.iter_mut().for_each(|v| *v /= sn);
            let cols = (0..k)
                .map(|c| {
                    let mut v = vec![0.0; p.len()];
                    for (prow, vrow) in p.chunks(k).zip(v.chunks_mut(k)) {
                        let r = prow[c].sqrt();
                        for b in 0..k {
                            vrow[b] = r * (if b == c { 1.0 } else { 0.0 } - prow[b]);
                        }
                    }
                    v
                })
                .collect();
            (Some(h), cols)
        }
        LikelihoodSpec::Bernoulli => {
            let zv = zv();
            let var: Vec<f64> = zv
                .iter()
                .map(|v| {
                    let p = 1.0 / (1.0 + (-v).exp());
                    p * (1.0 - p)
                })
                .collect();
            let h = vec![var.iter().sum::<f64>() / sn];
            (Some(h), vec![var.iter().map(|v| v.sqrt()).collect()])
        }
    };

    let mut curvature: Vec<Option<Vec<f64>>> = vec![None; arch.layers.len()];
    curvature[last] = out_curv;
    if last > 0 {
        match sigma {
            SigmaEstimate::GaussNewton => {
                let mut acc: Vec<Vec<f64>> = arch.layers[..last].iter().map(|l| vec![0.0; l.d_out * l.d_out]).collect();
                for col in &columns {
                    let c = upload::<_, E, D>(&dev, col, (s, n, k));
                    let vs = backprop(weights, &dact, c);
                    for (l, a) in acc.iter_mut().enumerate() {
                        for (x, y) in a.iter_mut().zip(gram(&vs[l], &vs[l])) {
                            *x += y / n as f64;
                        }
                    }
                }
                for (l, a) in acc.into_iter().enumerate() {
                    curvature[l] = Some(a);
                }
            }
            SigmaEstimate::EmpiricalFisher => {
                for l in 0..last {
                    curvature[l] = Some(gram(&grad[l], &grad[l]).into_iter().map(|v| v / n as f64).collect());
                }
            }
        }
    }

    let aa = phi
        .iter()
        .map(|p| match p {
            Phi::Shared(x) => host(&x.clone().permute::<_, Axes2<1, 0>>().matmul(x.clone())),
            Phi::Batched(h) => gram(h, h),
        })
        .collect();

    let sq_residual = match arch.likelihood {
        LikelihoodSpec::Gaussian { .. } => {
            let y = batch.y.clone().broadcast_like::<_, Axis<0>>(&(s, n, k));
            let r = (z[last].clone() - y).square().sum::<(), _>();
            Some(host(&r)[0] / (sn * k as f64))
        }
        _ => None,
    };

    Ok(Pass { phi, z, grad, curvature, aa, nll, sq_residual })
}

/// The pseudo-targets' statistic `(1/S) Σ_s Σ_n t φᵀ` of layer `l`, with `t = z − α ∂ℓ/∂z · Σ_l`.
pub(crate) fn target_stat<E: Real, D: Device<E>>(pass: &Pass<E, D>, l: usize, alpha: f64, sigma: &[f64]) -> Vec<f64> {
    let z = &pass.z[l];
    let (s, _, o) = *z.shape();
    let dev = z.device().clone();
    let sig = upload::<_, E, D>(&dev, sigma, (o, o)).broadcast_like::<_, Axis<0>>(&(s, o, o));
    let step = pass.grad[l].clone().matmul(sig) * crate::num::cast::from_f64::<E>(alpha);
    let t = z.clone() - step;
    cross(&t, &pass.phi[l])
}
