//! # weightspace-core
//!
//! The algorithms behind [weightspace](https://docs.rs/weightspace): priors, mean-field guides,
//! ELBO estimators, fitting, streamed predictive sampling, metrics and the inference-testing
//! toolkit. Everything is generic over the dtype `E` (`f32`, `f64`) and the dfdx device `D`
//! (`Cpu`, or `Cuda` with the `cuda` feature). Users normally depend on the `weightspace` facade and
//! declare models with `#[bnn]`; this crate holds the code those declarations call.
#![warn(missing_docs)]

pub mod arch;
pub mod bali;
pub mod bnnp;
pub mod checkpoint;
pub mod data;
pub mod elbo;
pub mod error;
pub mod fit;
pub mod guide;
mod kernels;
pub mod likelihood;
pub mod linalg;
pub mod mcmc;
pub mod metrics;
pub mod model;
pub mod network;
pub mod params;
pub mod plot;
pub mod predictive;
pub mod prior;
pub mod symmetry;
pub mod testing;

pub use error::{Error, Result};

/// The dfdx version weightspace is built on, for users who need its tensor API directly.
pub use dfdx;

/// Floating-point dtypes the library runs in: `f32` and `f64`.
///
/// Sealed: the CPU kernels behind it (matrix products, activations) exist for these two types.
pub trait Real:
    dfdx::shapes::Dtype
    + num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + dfdx::tensor::safetensors::SafeDtype
    + rand_distr::uniform::SampleUniform
    + std::fmt::Display
    + Send
    + Sync
    + kernels::sealed::Sealed
    + 'static
{
    /// `C ← α A B + β C` for strided row/column layouts (CPU kernel).
    ///
    /// # Safety
    /// The pointers and strides must describe valid `m×k`, `k×n` and `m×n` matrices.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );

    /// `tanh` as the CPU kernels evaluate it (a fast rational approximation for `f32`).
    #[doc(hidden)]
    fn tanh_kernel(self) -> Self;

    /// One standard-normal draw in this dtype.
    #[doc(hidden)]
    fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> Self;

    /// Fills `out` with standard-normal draws (in bulk: Box–Muller for `f32`, see
    /// `kernels::normal`).
    #[doc(hidden)]
    fn fill_standard_normal<R: rand::RngCore + ?Sized>(rng: &mut R, out: &mut [Self]) {
        out.iter_mut().for_each(|v| *v = Self::sample_standard_normal(rng));
    }

    /// In-place `tanh` over a buffer (vectorised for `f32`).
    #[doc(hidden)]
    fn tanh_slice(v: &mut [Self]) {
        v.iter_mut().for_each(|x| *x = x.tanh_kernel());
    }
}

impl Real for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    #[inline]
    fn tanh_kernel(self) -> f32 {
        kernels::tanh_f32(self)
    }
    fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f32 {
        rng.sample(rand_distr::StandardNormal)
    }
    fn fill_standard_normal<R: rand::RngCore + ?Sized>(rng: &mut R, out: &mut [f32]) {
        kernels::normal::fill_f32(rng, out)
    }
    #[inline(always)]
    fn tanh_slice(v: &mut [f32]) {
        match kernels::gemm::Kernels::get::<f32>() {
            // SAFETY: the kernels exist only for f32
            Some(k) => unsafe { k.tanh(v) },
            None => v.iter_mut().for_each(|x| *x = kernels::tanh_f32(*x)),
        }
    }
}

impl Real for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    fn tanh_kernel(self) -> f64 {
        self.tanh()
    }
    fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f64 {
        rng.sample(rand_distr::StandardNormal)
    }
}

/// Everything a user of the library needs, in one import.
pub mod prelude {
    pub use crate::arch::{Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
    pub use crate::checkpoint::{load, save};
    pub use crate::data::Dataset;
    pub use crate::elbo::{elbo, ElboConfig, ElboEstimate, KlEstimator, Objective};
    pub use crate::fit::{fit, fit_objective, FitConfig, FitRecord, FitReport};
    pub use crate::guide::MeanFieldInit;
    pub use crate::model::{Bnn, MeanFieldGuide, Weights};
    pub use crate::predictive::{Predictive, PredictiveConfig, PredictiveSummary};
    pub use crate::symmetry::{Canonicalisation, GroupElement, InfoBound, SymmetrisedElbo, SymmetrisedGuide, SymmetryGroup};
    pub use crate::{Error, Real, Result};
    #[cfg(feature = "cuda")]
    pub use dfdx::prelude::Cuda;
    pub use dfdx::prelude::{
        AsArray, Backward, Cpu, Device, Dtype, HasShape, Shape, Tensor, TensorFrom, TensorFromVec, Trace, ZerosTensor,
    };
}

/// Items the `#[bnn]` macro's generated code names. Not part of the stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::arch::{
        prior_bias_len, prior_weight_len, Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param,
    };
    pub use crate::model::{Bnn, MeanFieldGuide, Weights};
    pub use crate::params::{DensePrior, LikelihoodParams, NormalParams, NormalView, PriorView};
    pub use crate::{Error, Real};
    pub use core::option::Option;
    pub use core::result::Result;
    pub use dfdx::prelude::{
        Const, Cpu, Device, Dtype, HasShape, ModuleFields, ModuleVisitor, NoneTape, ReshapeTo, Storage, Tensor, TensorCollection,
    };
    pub use std::vec::Vec;
}
