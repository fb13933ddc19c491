//! # weightspace-core
//!
//! The algorithms behind [weightspace](https://docs.rs/weightspace): priors, mean-field guides,
//! ELBO estimators, fitting, streamed predictive sampling, metrics and the inference-testing
//! toolkit. Everything is generic over the dtype `E` (`f32`, `f64`) and the dfdx device `D`
//! (`Cpu`, or `Cuda` with the `cuda` feature). Users normally depend on the `weightspace` facade and
//! declare models with `#[bnn]`; this crate holds the code those declarations call.
#![warn(missing_docs)]
// every `unsafe` block states why it is sound (`cargo clippy` enforces it)
#![warn(clippy::undocumented_unsafe_blocks)]

// The layers, bottom to top. A module imports only from its own layer or the layers below it
// (`core/tests/architecture.rs` checks this), and nothing but `testing` imports `testing`.
mod error;
mod kernels;
mod methods;
mod model;
mod num;
mod predict;
pub mod testing;
mod vi;

pub use error::{Error, Result};
pub use methods::{bali, bnnp, mcmc, symmetry};
pub use model::{arch, checkpoint, data, params};
pub use num::{dense, linalg};
pub use predict::{metrics, plot, predictive};
pub use vi::{elbo, fit, guide, likelihood, network, prior};

/// The dfdx version weightspace is built on, for users who need its tensor API directly.
pub use dfdx;

pub use num::Real;
pub use vi::bnn_ext::BnnExt;

/// Everything a user of the library needs, in one import.
pub mod prelude {
    pub use crate::methods::symmetry::{Canonicalisation, GroupElement, InfoBound, SymmetrisedElbo, SymmetrisedGuide, SymmetryGroup};
    pub use crate::model::arch::{Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
    pub use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
    pub use crate::model::checkpoint::{load, save};
    pub use crate::model::data::Dataset;
    pub use crate::predict::predictive::{Predictive, PredictiveConfig, PredictiveSummary};
    pub use crate::vi::bnn_ext::BnnExt;
    pub use crate::vi::elbo::{elbo, ElboConfig, ElboEstimate, KlEstimator, Objective};
    pub use crate::vi::fit::{fit, fit_objective, FitConfig, FitRecord, FitReport};
    pub use crate::vi::guide::MeanFieldInit;
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
    pub use crate::model::arch::{
        prior_bias_len, prior_weight_len, Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param,
    };
    pub use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
    pub use crate::model::params::{DensePrior, LikelihoodParams, NormalParams, NormalView, PriorView};
    pub use crate::{Error, Real};
    pub use core::option::Option;
    pub use core::result::Result;
    pub use dfdx::prelude::{
        Const, Cpu, Device, Dtype, HasShape, ModuleFields, ModuleVisitor, NoneTape, ReshapeTo, Storage, Tensor, TensorCollection,
    };
    pub use std::vec::Vec;
}
