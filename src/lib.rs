//! # weightspace
//!
//! Bayesian neural networks as typed [dfdx](https://docs.rs/dfdx/0.13) models. Declare an
//! architecture with [`bnn`], give each layer a weight prior whose parameters are fixed or learned,
//! and get a typed model, a mean-field guide, ELBO estimators, fitting and streamed predictive
//! sampling, all generic over dtype and device.
//!
//! ```
//! use weightspace::prelude::*;
//!
//! /// A 1-D regression net; the hidden layer's prior scale is learned.
//! #[bnn]
//! struct SineNet {
//!     #[layer(prior = Normal(0.0, Learned(1.0)))]
//!     hidden: Dense<1, 16, Tanh>,
//!     #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
//!     out: Dense<16, 1>,
//!     #[likelihood]
//!     noise: Gaussian<Fixed<0.1>>,
//! }
//!
//! let dev = Cpu::default();
//! let xs: Vec<f64> = (0..32).map(|i| i as f64 / 8.0 - 2.0).collect();
//! let ys: Vec<f64> = xs.iter().map(|x| x.sin()).collect();
//! let data = Dataset::regression(&dev, &xs, 1, &ys, 1)?;
//! let mut model = SineNet::<f32, Cpu>::new(&dev);
//! let mut guide = model.mean_field();
//! let report = fit(&mut model, &mut guide, &data, &FitConfig { steps: 50, progress: false, ..Default::default() })?;
//! assert!(report.history.last().unwrap().elbo.is_finite());
//! let pred = Predictive::new(100).run(&model, &guide, &data.x)?;
//! assert_eq!(pred.mean.len(), 32);
//! # Ok::<(), weightspace::Error>(())
//! ```
#![warn(missing_docs)]

pub use weightspace_macros::bnn;

// The public surface, one explicit list (the same items as weightspace-core's root).
pub use weightspace_core::{
    band_plot, line_plot, probability_map, BandPlot, LinePlot, Linearised, Predictive, PredictiveMetrics, PredictiveSummary, WeightSource,
};
pub use weightspace_core::{dfdx, DataError, Error, ExportError, MetricError, Progress, Real, Result, SourceError, Taped, TestingError};
pub use weightspace_core::{
    elbo, fit, fit_objective, fit_on, BnnExt, ElboConfig, ElboEstimate, FitConfig, FitRecord, FitReport, KlEstimator, Objective, Svi,
};
pub use weightspace_core::{forward_mean_field, rsample_guide, sample_guide, standard_normal, MeanFieldInit};
pub use weightspace_core::{load, save, Bnn, Dataset, MeanFieldGuide, Targets, Tensor3, Weights};
pub use weightspace_core::{Activation, Architecture, Granularity, LayerSpec, LikelihoodSpec, NormalSpec, Param};
pub use weightspace_core::{Column, CsvOptions, DataTable, Split, Standardiser, TableTargets, TargetKind, UciSplits};
pub use weightspace_core::{DensePrior, LikelihoodParams, NormalParams, NormalView, PriorView};
// namespaces: metrics, batched linear algebra, diagnostics, results out, the methods and the test toolkit
pub use weightspace_core::{bali, bnnp, comm, diagnostics, export, linalg, mcmc, metrics, symmetry, testing};

#[doc(hidden)]
pub use weightspace_core::__private;

/// Everything a user needs, in one import: the macro, the traits, the entry points and the dfdx
/// device types.
pub mod prelude {
    pub use weightspace_core::prelude::*;
    pub use weightspace_macros::bnn;
}

/// The README's code blocks, compiled and run as doctests so the quickstart cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
