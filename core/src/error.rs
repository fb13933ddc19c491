//! The library's error type: every fallible entry point returns [`Result<T>`].

use std::fmt;

/// Everything that can go wrong at run time. Messages say what was wrong and where.
///
/// ```
/// use weightspace::Error;
/// let e = Error::NonFinite { what: "x".into(), index: 3 };
/// assert_eq!(e.to_string(), "x contains a NaN or infinite value at flat index 3");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor or buffer had the wrong shape.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape {
        /// What was being checked (e.g. `"x"`).
        what: String,
        /// Expected shape, as text.
        expected: String,
        /// Shape received.
        got: String,
    },
    /// A NaN or infinity in user data.
    #[error("{what} contains a NaN or infinite value at flat index {index}")]
    NonFinite {
        /// What was being checked.
        what: String,
        /// Row-major flat index of the first offending value.
        index: usize,
    },
    /// A dataset (or batch) with no rows.
    #[error("{what} is empty: at least one data point is needed")]
    Empty {
        /// What was empty.
        what: String,
    },
    /// A class label outside `0..classes`.
    #[error("label {label} at row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// Row index.
        row: usize,
        /// The label.
        label: usize,
        /// Number of classes the model predicts.
        classes: usize,
    },
    /// A setting that cannot be used (zero samples, negative learning rate, ...).
    #[error("invalid setting {name} = {value}: {reason}")]
    InvalidConfig {
        /// The setting's name.
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Training produced a NaN or infinite loss or gradient. Parameters hold their last finite values.
    #[error("training diverged at step {step}: {what} is not finite; parameters were left at their last finite values")]
    Diverged {
        /// Zero-based optimisation step.
        step: usize,
        /// What went non-finite (`"loss"`, `"gradient"`, ...).
        what: String,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// File path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A device (allocation, kernel) error.
    #[error("device error: {0}")]
    Device(String),
    /// An MCMC sampler could not run (settings its backend rejects, an unrecoverable error inside
    /// the sampler).
    #[error("sampler: {0}")]
    Sampler(String),
    /// A metric could not be computed.
    #[error("metric: {0}")]
    Metric(String),
    /// A plotting error.
    #[error("plot {path}: {reason}")]
    Plot {
        /// Output path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A matrix that must be symmetric positive definite is not, numerically (see
    /// [`crate::linalg`]).
    #[error("{what}: matrix {index} of the batch is not positive definite (Cholesky pivot {pivot})")]
    NotPositiveDefinite {
        /// The operation.
        what: String,
        /// Index of the matrix in its batch.
        index: usize,
        /// The first pivot that was not positive and finite.
        pivot: usize,
    },
}

impl From<crate::metrics::MetricError> for Error {
    fn from(e: crate::metrics::MetricError) -> Self {
        Error::Metric(e.to_string())
    }
}

/// `std::result::Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn device(e: impl fmt::Debug) -> Self {
        Error::Device(format!("{e:?}"))
    }
    pub(crate) fn config(name: &'static str, value: impl fmt::Display, reason: &'static str) -> Self {
        Error::InvalidConfig { name, value: value.to_string(), reason }
    }
}

/// Returns `Err(NonFinite)` at the first non-finite value of `values`.
pub(crate) fn check_finite(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.to_string(), index }),
        None => Ok(()),
    }
}
