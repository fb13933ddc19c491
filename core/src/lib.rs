//! # weightspace-core
//!
//! The algorithms behind [weightspace](https://docs.rs/weightspace): priors, mean-field guides,
//! ELBO estimators, fitting, streamed predictive sampling, metrics and the inference-testing
//! toolkit. Everything is generic over the dtype `E` (`f32`, `f64`) and the dfdx device `D`
//! (`Cpu`, or `Cuda` with the `cuda` feature). Users normally depend on the `weightspace` facade and
//! declare models with `#[bnn]`; this crate holds the code those declarations call.
#![warn(missing_docs)]

// The layers, bottom to top. A module imports only from its own layer or the layers below it
// (`core/tests/architecture.rs` checks this), and nothing but `testing` imports `testing`.
mod communicator;
mod error;
mod kernels;
mod methods;
mod model;
mod num;
mod predict;
mod progress;
pub mod testing;
mod vi;
mod workers;

// The public surface: one explicit list (the facade re-exports the same items).

// the foundation
/// The dfdx version weightspace is built on, for users who need its tensor API directly.
pub use dfdx;
pub use error::{DataError, Error, ExportError, MetricError, Result, SourceError, TestingError};
pub use num::{Real, Taped};
pub use progress::Progress;

// the model description
pub use model::arch::{Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
pub use model::bnn::{Bnn, MeanFieldGuide, Tensor3, Weights};
pub use model::checkpoint::{load, save};
pub use model::data::{Dataset, Targets};
pub use model::params::{DensePrior, LikelihoodParams, NormalParams, NormalView, PriorView};
pub use model::protocol::{Split, Standardiser, UciSplits};
pub use model::table::{Column, CsvOptions, DataTable, TableTargets, TargetKind};

// variational inference
pub use vi::bnn_ext::BnnExt;
pub use vi::elbo::{elbo, ElboConfig, ElboEstimate, KlEstimator, Objective};
pub use vi::fit::{fit, fit_objective, fit_on, FitConfig, FitRecord, FitReport, Svi};
pub use vi::guide::{rsample_guide, sample_guide, standard_normal, MeanFieldInit};
pub use vi::network::forward_mean_field;

// prediction
pub use predict::plot::{band_plot, line_plot, probability_map, BandPlot, LinePlot};
pub use predict::predictive::{Linearised, Predictive, PredictiveMetrics, PredictiveSummary, WeightSource};

/// Metrics on predictions given as plain `f64` slices: log predictive density, RMSE, NLL,
/// accuracy, calibration, interval coverage, OOD scores and their AUROC. Each checks its input and returns a [`MetricError`]
/// naming the problem.
pub mod metrics {
    pub use crate::predict::metrics::{
        accuracy, auroc, categorical_negative_log_likelihood, expected_calibration_error, gaussian_interval_coverage, gaussian_kl,
        gaussian_negative_log_likelihood, interval_coverage, log_mean_exp, logsumexp, mean_and_se, mean_log_predictive_density,
        mutual_information, pointwise_log_predictive_density, predictive_entropy, reliability_diagram, rmse, ReliabilityBin,
        PROB_SUM_TOLERANCE,
    };
}

/// Linear algebra: batched symmetric-positive-definite operations on the tape, on every device
/// (Cholesky, solves, inverses and log-determinants with exact first-order gradients), and the
/// small dense host matrices (`f64`) that BALI and the inference-test references work in.
pub mod linalg {
    pub use crate::num::dense::{dot, Cholesky, DenseError, Matrix, SymmetricEigen};
    pub use crate::num::linalg::{cholesky, spd_inverse, spd_logdet, spd_solve, Batch};
}

/// MCMC convergence diagnostics as ArviZ 0.23 computes them: rank-normalised split R-hat, bulk
/// and tail ESS, MCSE of the mean and of the sd, the HDI, and [`SummaryTable`](diagnostics::SummaryTable),
/// a table like `az.summary` that prints itself.
pub mod diagnostics {
    pub use crate::num::diagnostics::{
        ess_bulk, ess_mean, ess_quantile, ess_tail, hdi, mcse_mean, mcse_sd, rank_normalize, rhat, split_chains, split_rhat, summarize,
        summarize_with, DiagnosticsError, Summary, SummaryTable, DEFAULT_HDI_PROB,
    };
}

/// Results out to NumPy and ArviZ: `.npz` archives whose array names and dimension orders follow
/// ArviZ (`chain`, `draw`, then the quantity's own dimensions), written atomically.
///
/// | what | how |
/// | --- | --- |
/// | any named arrays | [`Npz`](export::Npz): `add_f64`/`add_i64`/`add_bool`, then `write` |
/// | MCMC draws, raw or canonicalised | [`SymMcmcRun::posterior_npz`](crate::mcmc::SymMcmcRun::posterior_npz) |
/// | the `az.summary` table | [`Npz::from_summary`](export::Npz::from_summary) |
/// | predictive draws at given inputs | [`Predictive::draws`](crate::Predictive::draws), [`SymMcmcRun::predictive_draws`](crate::mcmc::SymMcmcRun::predictive_draws), then [`PredictiveDraws::write_npz`](export::PredictiveDraws::write_npz) |
/// | a fit history | [`FitReport::to_npz`](crate::FitReport::to_npz) |
///
/// In Python, one group per file:
///
/// ```python
/// import numpy as np, arviz as az
/// load = lambda path: dict(np.load(path))
/// idata = az.from_dict(posterior=load("canonical.npz"), posterior_predictive=load("predictive.npz"))
/// ```
pub mod export {
    pub use crate::model::npz::Npz;
    pub use crate::predict::draws::PredictiveDraws;
}

/// The processes a run is spread over: [`Communicator`](comm::Communicator), with
/// [`SingleProcess`](comm::SingleProcess) (the default everywhere) and, with the `mpi` feature,
/// [`Mpi`](comm::Mpi). The samplers' `_on` functions take one. Within a process, the threads a
/// run uses are [`Workers`](comm::Workers).
pub mod comm {
    #[cfg(feature = "mpi")]
    pub use crate::communicator::Mpi;
    pub use crate::communicator::{Communicator, SingleProcess};
    pub use crate::workers::Workers;
}

// the methods, each with its own explicit list
pub use methods::{bali, bnnp, mcmc, symmetry};

/// Everything a user of the library needs, in one import.
pub mod prelude {
    pub use crate::methods::symmetry::{Canonicalisation, GroupElement, InfoBound, SymmetrisedElbo, SymmetrisedGuide, SymmetryGroup};
    pub use crate::model::arch::{Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
    pub use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
    pub use crate::model::checkpoint::{load, save};
    pub use crate::model::data::Dataset;
    pub use crate::model::protocol::{Standardiser, UciSplits};
    pub use crate::model::table::{CsvOptions, DataTable};
    pub use crate::predict::predictive::{Predictive, PredictiveSummary};
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
