//! The batched forward pass: `S` weight samples over `N` inputs in one call, no loop over samples.

use dfdx::prelude::*;

use crate::arch::{Activation, Architecture};
use crate::model::Weights;
use crate::{Error, Real, Result};

/// Applies an activation elementwise, recording on the tape when there is one.
pub fn activate<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<T>>(a: Activation, z: Tensor<S, E, D, T>) -> Tensor<S, E, D, T> {
    match a {
        Activation::Identity => z,
        Activation::Tanh => crate::kernels::fast_tanh(z),
        Activation::Relu => z.relu(),
        Activation::Sigmoid => z.sigmoid(),
        Activation::Softplus => softplus(z),
        Activation::Silu => {
            let s = z.with_empty_tape().sigmoid();
            z * s
        }
        Activation::Gelu => z.fast_gelu(),
    }
}

/// Numerically stable `ln(1 + e^z) = max(z, 0) + ln(1 + e^{-|z|})`.
pub fn softplus<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<T>>(z: Tensor<S, E, D, T>) -> Tensor<S, E, D, T> {
    let tail = z.with_empty_tape().abs().negate().exp();
    let tail = (tail + E::one()).ln();
    z.relu() + tail
}

/// Appends a column of ones: `(…, k) -> (…, k + 1)`.
pub(crate) fn augment<E: Real, D: Device<E>, T>(a: Tensor<(usize, usize, usize), E, D, T>) -> Tensor<(usize, usize, usize), E, D, T>
where
    T: Tape<E, D> + Merge<NoneTape>,
{
    let (s, n, _) = *a.shape();
    let ones = a.device().ones_like(&(s, n, 1usize));
    (a, ones).concat_along(Axis::<2>)
}

/// Checks that `x` has `arch.d_in()` columns and no NaN/Inf.
pub fn check_input<E: Real, D: Device<E>>(arch: &Architecture, x: &Tensor<(usize, usize), E, D>) -> Result<()> {
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
/// use weightspace::prelude::*;
/// use weightspace::network::forward;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<1.0>> }
/// let dev = Cpu::default();
/// let w = Weights::<f64, Cpu> { layers: vec![dev.tensor_from_vec(vec![1.0, 2.0, 0.5], (1usize, 1usize, 3usize))] };
/// let x = dev.tensor_from_vec(vec![1.0, 1.0], (1usize, 2usize));
/// let f = forward(Lin::<f64, Cpu>::ARCH, w, &x).unwrap();
/// assert_eq!(f.as_vec(), vec![3.5]);
/// ```
pub fn forward<E: Real, D: Device<E>, T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
    arch: &Architecture,
    weights: Weights<E, D, T>,
    x: &Tensor<(usize, usize), E, D>,
) -> Result<crate::model::Tensor3<E, D, T>> {
    if weights.layers.len() != arch.layers.len() {
        return Err(Error::Shape {
            what: "weights (layers)".into(),
            expected: arch.layers.len().to_string(),
            got: weights.layers.len().to_string(),
        });
    }
    crate::model::check_weights(arch, &weights)?;
    if x.shape().1 != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("{:?}", x.shape()) });
    }
    let mut h = crate::kernels::LayerInput::Shared(x.clone());
    let last = arch.layers.len() - 1;
    for (li, (spec, w)) in arch.layers.iter().zip(weights.layers).enumerate() {
        let a = crate::kernels::dense(h, w, spec.activation);
        if li == last {
            return Ok(a);
        }
        h = crate::kernels::LayerInput::Batched(a);
    }
    unreachable!("loop returns at the last layer")
}

/// Network outputs `(S, N, d_out)` for `S` fresh reparameterised samples `W = μ + σ ⊙ ε` of a
/// mean-field guide, on the tape of the guide's parameters: the same as
/// [`crate::guide::sample_mean_field`] followed by [`forward`] (the same weights for the same `rng`
/// state), and on the CPU one fused op whose backward yields the guide's gradients directly, with
/// the samples split over threads.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::network::forward_mean_field;
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
    params: &[crate::params::NormalView<E, D>],
    x: &Tensor<(usize, usize), E, D>,
    s: usize,
    rng: &mut impl rand::Rng,
) -> Result<crate::model::Tensor3<E, D, OwnedTape<E, D>>> {
    if s == 0 {
        return Err(Error::config("samples", 0, "at least one weight sample is needed"));
    }
    if x.shape().1 != arch.d_in() {
        return Err(Error::Shape { what: "x (inputs)".into(), expected: format!("(n, {})", arch.d_in()), got: format!("{:?}", x.shape()) });
    }
    match crate::kernels::mean_field::forward(arch, params, x, s, rng) {
        Some(f) => f,
        None => {
            let w = crate::guide::sample_mean_field(arch, params, s, rng, true)?;
            forward(arch, w, x)
        }
    }
}
