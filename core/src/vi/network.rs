//! The batched forward pass: `S` weight samples over `N` inputs in one call, no loop over samples.

use dfdx::prelude::*;

use crate::kernels::mean_field;
use crate::model::arch::Architecture;
use crate::model::bnn::Weights;
use crate::model::params::NormalView;
use crate::{Error, Real, Result};

pub(crate) use crate::kernels::activation::{activate, softplus};

/// Checks that the guide has one `(loc, log scale)` pair of the right length per layer.
fn check_guide<E: Real, D: Device<E>>(arch: &Architecture, params: &[NormalView<E, D>]) -> Result<()> {
    if params.len() != arch.layers.len() {
        return Err(Error::Shape { what: "guide (layers)".into(), expected: arch.layers.len().to_string(), got: params.len().to_string() });
    }
    for (spec, p) in arch.layers.iter().zip(params) {
        let want = spec.num_weights();
        if p.loc.shape().0 != want || p.log_scale.shape().0 != want {
            return Err(Error::Shape {
                what: format!("guide of layer `{}`", spec.name),
                expected: format!("{want} locations and scales"),
                got: format!("{} and {}", p.loc.shape().0, p.log_scale.shape().0),
            });
        }
    }
    Ok(())
}

/// Checks that `x` has `arch.d_in()` columns and no NaN/Inf.
pub(crate) fn check_input<E: Real, D: Device<E>>(arch: &Architecture, x: &Tensor<(usize, usize), E, D>) -> Result<()> {
    let (n, d) = *x.shape();
    if d != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("({n}, {d})") });
    }
    if n == 0 {
        return Err(Error::Empty { what: "x (inputs)".into() });
    }
    let v = x.as_vec();
    if let Some(index) = v.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "x (inputs)".into(), index });
    }
    Ok(())
}

/// Network outputs for every weight sample: `(S, N, d_out)`.
///
/// `x` is `(N, d_in)`; every layer's weights are `(S, d_out, d_in + 1)`. The tape, if any, travels
/// with the weights. Inputs are assumed validated (see [`check_input`]).
///
/// ```
/// // users reach it as `model.forward(weights, &x)`
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<1.0>> }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let w = Weights::<f64, Cpu> { layers: vec![dev.tensor_from_vec(vec![1.0, 2.0, 0.5], (1usize, 1usize, 3usize))] };
/// let x = dev.tensor_from_vec(vec![1.0, 1.0], (1usize, 2usize));
/// let f = model.forward(w, &x).unwrap();
/// assert_eq!(f.as_vec(), vec![3.5]);
/// ```
pub(crate) fn forward<E: Real, D: Device<E>, T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
    arch: &Architecture,
    weights: Weights<E, D, T>,
    x: &Tensor<(usize, usize), E, D>,
) -> Result<crate::model::bnn::Tensor3<E, D, T>> {
    if weights.layers.len() != arch.layers.len() {
        return Err(Error::Shape {
            what: "weights (layers)".into(),
            expected: arch.layers.len().to_string(),
            got: weights.layers.len().to_string(),
        });
    }
    crate::model::bnn::check_weights(arch, &weights)?;
    if x.shape().1 != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("{:?}", x.shape()) });
    }
    let mut h = crate::kernels::dense::LayerInput::Shared(x.clone());
    let last = arch.layers.len() - 1;
    for (li, (spec, w)) in arch.layers.iter().zip(weights.layers).enumerate() {
        let a = crate::kernels::dense::dense(h, w, spec.activation);
        if li == last {
            return Ok(a);
        }
        h = crate::kernels::dense::LayerInput::Batched(a);
    }
    unreachable!("loop returns at the last layer")
}

type Matrix2<E, D> = Tensor<(usize, usize), E, D>;

/// The value of an activation at `z` and, unless it is the identity, its derivative there.
fn activation_and_derivative<E: Real, D: Device<E>>(
    act: crate::model::arch::Activation,
    z: Matrix2<E, D>,
) -> (Matrix2<E, D>, Option<Matrix2<E, D>>) {
    if act == crate::model::arch::Activation::Identity {
        return (z, None);
    }
    let a = activate(act, z.clone().leaky_trace());
    let value = a.retaped::<NoneTape>();
    let grads = a.sum::<(), _>().backward();
    (value, Some(grads.get(&z)))
}

/// The network linearised in its weights around `mean` (one weight sample, `S = 1`), evaluated at
/// every sample of `weights`: `f(x; M) + J(x; M) (W − M)`, `(S, N, d_out)`, where `J` is the
/// Jacobian of the outputs in the weights at `M`. The tangent `J (W − M)` is pushed forward layer
/// by layer (`dz_l = ΔW_l φ_{l−1} + M_l dφ_{l−1}`, `dφ_l = ψ'(z_l) ⊙ dz_l`), so it costs about two
/// forward passes, never a Jacobian. Exact for a network without hidden layers and an identity
/// output. Inputs are assumed validated (see [`check_input`]).
pub(crate) fn forward_linearised<E: Real, D: Device<E>>(
    arch: &Architecture,
    mean: &Weights<E, D>,
    weights: Weights<E, D>,
    x: &Tensor<(usize, usize), E, D>,
) -> Result<crate::model::bnn::Tensor3<E, D>> {
    crate::model::bnn::check_weights(arch, &weights)?;
    crate::model::bnn::check_weights(arch, mean)?;
    if mean.num_samples() != 1 {
        return Err(Error::Shape {
            what: "linearisation point (weight samples)".into(),
            expected: "1".into(),
            got: mean.num_samples().to_string(),
        });
    }
    if x.shape().1 != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("{:?}", x.shape()) });
    }
    let (s, n) = (weights.num_samples(), x.shape().0);
    let dev = x.device().clone();
    let last = arch.layers.len() - 1;
    // the network at the mean, (N, ·), and the tangent, (S, N, ·): zero at the inputs
    let mut h = x.clone();
    let mut dh: Option<crate::model::bnn::Tensor3<E, D>> = None;
    for (l, (spec, w)) in arch.layers.iter().zip(weights.layers).enumerate() {
        let (o, i1) = (spec.d_out, spec.d_in + 1);
        let m = mean.layers[l].clone().reshape_like(&(o, i1));
        let phi = (h, dev.ones_like(&(n, 1usize))).concat_along(Axis::<1>);
        let z = phi.clone().matmul(m.clone().permute::<_, Axes2<1, 0>>());
        let delta = w - m.clone().broadcast_like::<_, Axis<0>>(&(s, o, i1));
        let mut dz = phi.broadcast_like::<_, Axis<0>>(&(s, n, i1)).matmul(delta.permute::<_, Axes3<0, 2, 1>>());
        if let Some(dh) = dh.take() {
            let m_in = m.slice((.., ..spec.d_in)).permute::<_, Axes2<1, 0>>();
            dz = dz + dh.matmul(m_in.broadcast_like::<_, Axis<0>>(&(s, spec.d_in, o)));
        }
        let (a, da) = activation_and_derivative(spec.activation, z);
        let da = match da {
            Some(d) => dz * d.broadcast_like::<_, Axis<0>>(&(s, n, o)),
            None => dz,
        };
        if l == last {
            return Ok(a.broadcast_like::<_, Axis<0>>(&(s, n, o)) + da);
        }
        h = a;
        dh = Some(da);
    }
    unreachable!("loop returns at the last layer")
}

/// Network outputs `(S, N, d_out)` for `S` fresh reparameterised samples `W = μ + σ ⊙ ε` of a
/// mean-field guide, on the tape of the guide's parameters: the same as
/// [`rsample_guide`](crate::rsample_guide) followed by [`BnnExt::forward`](crate::BnnExt::forward)
/// (the same weights for the same `rng` state), and on the CPU one fused op whose backward yields the guide's gradients directly, with
/// the samples split over threads.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::forward_mean_field;
/// use weightspace::dfdx::prelude::{Backward, SumTo};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 8, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<8, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).mean_field();
/// let x = dev.tensor_from_vec(vec![-1.0, 0.0, 1.0], (3usize, 1usize));
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let f = forward_mean_field(Net::<f64, Cpu>::ARCH, &guide.layer_params(), &x, 4, &mut rng)?;
/// assert_eq!(*f.shape(), (4, 3, 1));
/// let _grads = f.sum::<(), _>().backward(); // gradients of every guide location and log scale
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn forward_mean_field<E: Real, D: Device<E>>(
    arch: &Architecture,
    params: &[NormalView<E, D>],
    x: &Tensor<(usize, usize), E, D>,
    s: usize,
    rng: &mut impl rand::Rng,
) -> Result<crate::model::bnn::Tensor3<E, D, OwnedTape<E, D>>> {
    if s == 0 {
        return Err(Error::config("samples", 0, "at least one weight sample is needed"));
    }
    if x.shape().1 != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("{:?}", x.shape()) });
    }
    check_guide(arch, params)?;
    let layers: Vec<mean_field::Layer> = arch.layers.iter().map(|l| mean_field::Layer::new(l.d_in, l.d_out, l.activation)).collect();
    let guides: Vec<mean_field::LayerGuide<E, D>> =
        params.iter().map(|p| mean_field::LayerGuide { loc: p.loc.clone(), log_scale: p.log_scale.clone() }).collect();
    match mean_field::forward(&layers, &guides, x, s, rng) {
        Some(f) => f,
        None => {
            let w = crate::vi::guide::sample_mean_field(arch, params, s, rng, true)?;
            forward(arch, w, x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::{Activation, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
    use rand::{Rng, SeedableRng};

    const PRIOR: NormalSpec =
        NormalSpec { loc: Param::Fixed(0.0), scale: Param::Fixed(1.0), per: Granularity::Layer, fan_in_scaled: false };

    const fn layer(name: &'static str, d_in: usize, d_out: usize, activation: Activation) -> LayerSpec {
        LayerSpec { name, d_in, d_out, activation, prior: PRIOR, bias_prior: None }
    }

    /// The fused op against `sample_mean_field` + `network::forward` (dfdx ops and the per-layer
    /// dense op): same values and same gradients of every location and log scale, for every
    /// activation (each in a hidden and in the output layer), with one and with three threads.
    /// In f64 both paths use `matrixmultiply`; in f32 (on AVX-512 CPUs) the fused op applies tanh
    /// and its derivative inside the products and the composed path does not, and the widths
    /// (20 and 17) take every kernel branch.
    #[test]
    fn fused_mean_field_forward_matches_the_composed_path() {
        check_fused_against_composed::<f64>(1e-12, 1e-10);
        // f32: rounding of sums over at most 20 terms, and the tanh approximation (a few ulp)
        check_fused_against_composed::<f32>(2e-5, 1e-4);
    }

    fn check_fused_against_composed<E: Real>(tol_value: f64, tol_grad: f64)
    where
        Cpu: Device<E>,
    {
        let dev = Cpu::default();
        let acts = [
            Activation::Identity,
            Activation::Tanh,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Softplus,
            Activation::Silu,
            Activation::Gelu,
        ];
        let e = |v: f64| crate::num::cast::from_f64::<E>(v);
        let f = |v: E| v.cast_to_f64();
        for act in acts {
            let layers: &'static [LayerSpec] =
                Box::leak(vec![layer("a", 2, 20, act), layer("b", 20, 17, Activation::Tanh), layer("c", 17, 3, act)].into_boxed_slice());
            let arch = Architecture {
                name: "T",
                layers,
                likelihood_name: "y",
                likelihood: LikelihoodSpec::Gaussian { scale: Param::Fixed(1.0), upper: None },
            };
            let mut init = rand::rngs::StdRng::seed_from_u64(7);
            let params: Vec<NormalView<E, Cpu>> = layers
                .iter()
                .map(|l| {
                    let p = l.num_weights();
                    let loc: Vec<E> = (0..p).map(|_| e(init.gen_range(-0.5..0.5))).collect();
                    let ls: Vec<E> = (0..p).map(|_| e(init.gen_range(-2.0..-0.5))).collect();
                    NormalView { loc: dev.tensor_from_vec(loc, (p,)), log_scale: dev.tensor_from_vec(ls, (p,)) }
                })
                .collect();
            let xv: Vec<E> = (0..14).map(|_| e(init.gen_range(-2.0..2.0))).collect();
            let x = dev.tensor_from_vec(xv, (7usize, 2usize));
            let s = 5;
            // a loss with different weights per output entry, so that every path of the backward matters
            let mix: Vec<E> = (0..s * 7 * 3).map(|_| e(init.gen_range(-1.0..1.0))).collect();
            let mix = dev.tensor_from_vec(mix, (s, 7usize, 3usize));
            let reference = {
                let mut rng = rand::rngs::StdRng::seed_from_u64(3);
                let w = crate::vi::guide::sample_mean_field(&arch, &params, s, &mut rng, true).unwrap();
                let out = forward(&arch, w, &x).unwrap();
                let v = out.as_vec();
                let g = (out * mix.clone()).sum().backward();
                (v, params.iter().map(|p| (g.get(&p.loc).as_vec(), g.get(&p.log_scale).as_vec())).collect::<Vec<_>>())
            };
            for threads in [1, 3] {
                let mut rng = rand::rngs::StdRng::seed_from_u64(3);
                let layers: Vec<mean_field::Layer> =
                    arch.layers.iter().map(|l| mean_field::Layer::new(l.d_in, l.d_out, l.activation)).collect();
                let guides: Vec<mean_field::LayerGuide<E, Cpu>> =
                    params.iter().map(|p| mean_field::LayerGuide { loc: p.loc.clone(), log_scale: p.log_scale.clone() }).collect();
                let out = mean_field::forward_cpu(&layers, &guides, &x, s, &mut rng, Some(threads)).unwrap();
                let v = out.as_vec();
                for (a, b) in v.iter().zip(&reference.0) {
                    assert!((f(*a) - f(*b)).abs() < tol_value * (1.0 + f(*b).abs()), "{act:?}, {threads} threads: output {a} vs {b}");
                }
                let g = (out * mix.clone()).sum().backward();
                for (p, (rl, rs)) in params.iter().zip(&reference.1) {
                    for (a, b) in g.get(&p.loc).as_vec().iter().zip(rl).chain(g.get(&p.log_scale).as_vec().iter().zip(rs)) {
                        assert!((f(*a) - f(*b)).abs() < tol_grad * (1.0 + f(*b).abs()), "{act:?}, {threads} threads: gradient {a} vs {b}");
                    }
                }
            }
        }
    }
}
