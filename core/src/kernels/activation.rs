//! The elementwise activations: the [`Activation`] enum that a declaration names, its scalar
//! reference evaluation, and its taped evaluation on tensors.
//!
//! dfdx's CPU `tanh` calls libm's scalar `tanhf`, which dominated the ELBO step in profiles (about
//! half of it for a 1-50-1 tanh net). For `f32` on the CPU we evaluate tanh with a vectorisable
//! rational approximation (the one Eigen uses for `float`: max error a few ulp, exact ±1 beyond
//! |x| ≈ 9) and attach the exact derivative `1 − y²` with a first-order surrogate built from dfdx
//! ops, so the tape stays dfdx's own. Other dtypes and devices use dfdx's `tanh`.

use std::any::TypeId;
use std::fmt;

use dfdx::prelude::*;

use crate::Real;

/// Elementwise activation applied after a dense layer.
///
/// ```
/// use weightspace::Activation;
/// assert_eq!(Activation::Tanh.to_string(), "tanh");
/// assert!(Activation::Tanh.is_odd());
/// assert!(!Activation::Relu.is_odd());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `f(z) = z`.
    Identity,
    /// `f(z) = tanh z`.
    Tanh,
    /// `f(z) = max(z, 0)`.
    Relu,
    /// `f(z) = 1 / (1 + e^{-z})`.
    Sigmoid,
    /// `f(z) = ln(1 + e^z)`.
    Softplus,
    /// `f(z) = z · sigmoid(z)`.
    Silu,
    /// `f(z) = z · Φ(z)` (the tanh approximation used by dfdx's `fast_gelu`).
    Gelu,
}

impl Activation {
    /// Every activation the `#[bnn]` macro accepts, with its spelling in a declaration.
    pub const ALL: [(&'static str, Activation); 7] = [
        ("Identity", Activation::Identity),
        ("Tanh", Activation::Tanh),
        ("Relu", Activation::Relu),
        ("Sigmoid", Activation::Sigmoid),
        ("Softplus", Activation::Softplus),
        ("Silu", Activation::Silu),
        ("Gelu", Activation::Gelu),
    ];

    /// True when `f(-z) = -f(z)`, so that flipping the sign of a neuron's incoming weights, bias and
    /// outgoing weights leaves the network function unchanged.
    pub fn is_odd(self) -> bool {
        matches!(self, Activation::Identity | Activation::Tanh)
    }

    /// Scalar evaluation in f64 (reference implementation used by tests and host-side code).
    pub fn eval(self, z: f64) -> f64 {
        match self {
            Activation::Identity => z,
            Activation::Tanh => z.tanh(),
            Activation::Relu => z.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
            Activation::Softplus => z.max(0.0) + (-z.abs()).exp().ln_1p(),
            Activation::Silu => z / (1.0 + (-z).exp()),
            Activation::Gelu => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * z * (1.0 + (c * (z + 0.044715 * z * z * z)).tanh())
            }
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Activation::Identity => "identity",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Softplus => "softplus",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
        };
        f.write_str(s)
    }
}

/// Applies an activation elementwise, recording on the tape when there is one.
pub(crate) fn activate<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<T>>(
    a: Activation,
    z: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    match a {
        Activation::Identity => z,
        Activation::Tanh => fast_tanh(z),
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
pub(crate) fn softplus<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<T>>(z: Tensor<S, E, D, T>) -> Tensor<S, E, D, T> {
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

/// Rational approximation of tanh for f32 (Eigen's `generic_fast_tanh_float`).
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let xc = x.clamp(-7.998_811_7, 7.998_811_7);
    let x2 = xc * xc;
    let mut p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p *= xc;
    let mut q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    let y = p / q;
    // below 4e-4 tanh(x) = x to f32 precision
    let small = x.abs() < 4e-4;
    if small {
        x
    } else {
        y
    }
}

/// `tanh`, taped. Fast path for `f32` on the CPU (see the module docs).
pub(crate) fn fast_tanh<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<T>>(z: Tensor<S, E, D, T>) -> Tensor<S, E, D, T> {
    if TypeId::of::<E>() != TypeId::of::<f32>() || TypeId::of::<D>() != TypeId::of::<Cpu>() {
        return z.tanh();
    }
    let shape = *z.shape();
    let dev = z.device().clone();
    let zv = z.as_vec();
    // y = tanh(z) (value), g = 1 - y² (derivative), c = y - g·z, so that y = g·z + c in value (up to
    // rounding), with dy/dz = g on the tape.
    let mut g = vec![E::zero(); zv.len()];
    let mut c = vec![E::zero(); zv.len()];
    for ((x, g), c) in zv.iter().zip(g.iter_mut()).zip(c.iter_mut()) {
        let y = x.tanh_kernel();
        *g = E::one() - y * y;
        *c = y - *g * *x;
    }
    let g = dev.tensor_from_vec(g, shape);
    let c = dev.tensor_from_vec(c, shape);
    z * g + c
}

/// Activation values and derivatives on host buffers.
#[inline(always)]
pub(crate) fn act_forward<E: Real>(act: Activation, z: &mut [E]) {
    let half = crate::num::cast::from_f64::<E>(0.5);
    match act {
        Activation::Identity => {}
        Activation::Tanh => E::tanh_slice(z),
        Activation::Relu => z.iter_mut().for_each(|v| *v = v.max(E::zero())),
        Activation::Sigmoid => z.iter_mut().for_each(|v| *v = E::one() / (E::one() + (-*v).exp())),
        Activation::Softplus => z.iter_mut().for_each(|v| *v = v.max(E::zero()) + (-v.abs()).exp().ln_1p()),
        Activation::Silu => z.iter_mut().for_each(|v| *v = *v / (E::one() + (-*v).exp())),
        Activation::Gelu => {
            let c = crate::num::cast::from_f64::<E>((2.0 / std::f64::consts::PI).sqrt());
            let k = crate::num::cast::from_f64::<E>(0.044715);
            z.iter_mut().for_each(|v| {
                let x = *v;
                *v = half * x * (E::one() + (c * (x + k * x * x * x)).tanh_kernel());
            })
        }
    }
}

/// Multiplies `g` (gradient w.r.t. the activation) by the activation's derivative, in place.
/// `a` holds the activations; `z` the pre-activations (only needed for silu and gelu).
#[inline(always)]
pub(crate) fn act_backward<E: Real>(act: Activation, a: &[E], z: Option<&[E]>, g: &mut [E]) {
    let one = E::one();
    match act {
        Activation::Identity => {}
        Activation::Tanh => g.iter_mut().zip(a).for_each(|(g, a)| *g *= one - *a * *a),
        Activation::Relu => g.iter_mut().zip(a).for_each(|(g, a)| {
            if *a <= E::zero() {
                *g = E::zero()
            }
        }),
        Activation::Sigmoid => g.iter_mut().zip(a).for_each(|(g, a)| *g = *g * *a * (one - *a)),
        Activation::Softplus => g.iter_mut().zip(a).for_each(|(g, a)| *g *= one - (-*a).exp()),
        Activation::Silu => {
            let z = z.expect("silu keeps z");
            g.iter_mut().zip(z).for_each(|(g, z)| {
                let s = one / (one + (-*z).exp());
                *g = *g * s * (one + *z * (one - s));
            })
        }
        Activation::Gelu => {
            let z = z.expect("gelu keeps z");
            let c = crate::num::cast::from_f64::<E>((2.0 / std::f64::consts::PI).sqrt());
            let k = crate::num::cast::from_f64::<E>(0.044715);
            let half = crate::num::cast::from_f64::<E>(0.5);
            let three = crate::num::cast::from_f64::<E>(3.0);
            g.iter_mut().zip(z).for_each(|(g, z)| {
                let x = *z;
                let t = (c * (x + k * x * x * x)).tanh_kernel();
                let d = half * (one + t) + half * x * (one - t * t) * c * (one + three * k * x * x);
                *g *= d;
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_matches_libm_within_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -12.0f32;
        while x < 12.0 {
            let err = (tanh_f32(x) - x.tanh()).abs();
            worst = worst.max(err / f32::EPSILON);
            x += 1e-3;
        }
        assert!(worst <= 4.0, "worst error {worst} ulp(1)");
    }

    #[test]
    fn fast_tanh_gradient_is_one_minus_y_squared() {
        let dev = Cpu::default();
        let z = dev.tensor([-2.0f32, -0.3, 0.0, 0.7, 5.0]);
        let y = fast_tanh(z.leaky_trace());
        let yv = y.array();
        let g = y.sum().backward();
        let gz = g.get(&z).array();
        for i in 0..5 {
            assert!((yv[i] - z.array()[i].tanh()).abs() < 1e-6);
            assert!((gz[i] - (1.0 - yv[i] * yv[i])).abs() < 1e-6);
        }
    }
}
