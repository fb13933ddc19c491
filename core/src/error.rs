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
    /// Writing an `.npz` file failed. The file at `path` is as it was before the write (see
    /// [`export`](crate::export)).
    #[error("npz file {path}: {source}")]
    Export {
        /// The file that was to be written.
        path: String,
        /// What failed.
        #[source]
        source: ExportError,
    },
    /// A device (allocation, kernel) error. dfdx's device errors (`Storage::Err`) are only
    /// `Debug + Display` (neither `'static` nor `Send`), so the variant carries their message.
    #[error("device error: {0}")]
    Device(String),
    /// An MCMC sampler backend could not run (settings it rejects, an unrecoverable error inside
    /// it). The backend's own error is the source.
    #[error("sampler: {what}: {source}")]
    Sampler {
        /// What the sampler was doing.
        what: String,
        /// The backend's error (downcast it with [`SourceError::downcast_ref`]).
        #[source]
        source: SourceError,
    },
    /// A collective over the processes of a run ([`comm`](crate::comm)) could not be carried out:
    /// shard sizes that disagree, or an MPI set-up error.
    #[error("communication: {what}: {reason}")]
    Communication {
        /// What was being communicated.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// A metric could not be computed.
    #[error(transparent)]
    Metric(#[from] MetricError),
    /// An MCMC diagnostic (R-hat, ESS, MCSE) could not be computed.
    #[error(transparent)]
    Diagnostics(#[from] crate::num::diagnostics::DiagnosticsError),
    /// A host dense linear-algebra operation failed.
    #[error(transparent)]
    Dense(#[from] crate::num::dense::DenseError),
    /// A `testing` routine (a statistical assertion, a reference solution, SBC, a plot) could not
    /// run or rejected its hypothesis. The testing error itself is the source (downcast it with
    /// [`TestingError::downcast_ref`]).
    #[error(transparent)]
    Testing(#[from] TestingError),
    /// A plotting error.
    #[error("plot {path}: {reason}")]
    Plot {
        /// Output path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A data file or data source could not be turned into a table: the [`DataError`] names the
    /// file, and the row and column where it can.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A matrix that must be symmetric positive definite is not, numerically (see
    /// [`linalg`](crate::linalg)).
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

/// What was wrong with a data file (CSV) or data source: every message starts with the path (or
/// the name given for an in-memory source) and names the row and column where there is one.
///
/// Rows are counted from 0 over the data rows (the header is not a row), as in `DataTable::rows`;
/// `line` is the 1-based line of the file, the header included, for an editor.
///
/// ```
/// use weightspace::{CsvOptions, DataError, DataTable, Error};
/// let text = "a,b,y\n1,2,3\n4,oops,6\n";
/// let err = DataTable::from_csv_reader(text.as_bytes(), "mem.csv", &CsvOptions::default()).unwrap_err();
/// let Error::Data(DataError::Cell { row, line, column, .. }) = &err else { panic!("{err}") };
/// assert_eq!((*row, *line, column.as_str()), (1, 3, "`b` (index 1)"));
/// assert_eq!(err.to_string(), "mem.csv:3: row 1, column `b` (index 1): `oops` is not a number");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read, or a record is malformed (an unterminated quote,
    /// invalid UTF-8, a row with a different number of fields than the others). The csv crate's
    /// error is the source.
    #[error("{path}{}: {source}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Csv {
        /// The file.
        path: String,
        /// The 1-based line of the malformed record, where the reader knows it.
        line: Option<u64>,
        /// What the csv reader reported.
        #[source]
        source: std::sync::Arc<csv::Error>,
    },
    /// A cell that is empty, not a number, or not finite.
    #[error("{path}:{line}: row {row}, column {column}: {reason}")]
    Cell {
        /// The file.
        path: String,
        /// The 1-based line of the file (the header, if any, is line 1).
        line: u64,
        /// The data row, counted from 0.
        row: usize,
        /// The column: its header name and index, or its index.
        column: String,
        /// What is wrong with the cell.
        reason: String,
    },
    /// A requested column does not exist, or the column choice cannot be used.
    #[error("{path}: column {column}: {reason}")]
    Column {
        /// The file.
        path: String,
        /// The column as requested.
        column: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The file has no data rows.
    #[error("{path}: no data rows")]
    NoRows {
        /// The file.
        path: String,
    },
}

/// Two data errors are equal when they say the same thing (the csv crate's error has no `==`).
impl PartialEq for DataError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// What was wrong with the input of a metric.
///
/// ```
/// use weightspace::{metrics::rmse, MetricError};
///
/// let err = rmse(&[1.0, 2.0], &[1.0]).unwrap_err();
/// assert!(matches!(err, MetricError::LengthMismatch { expected: 2, got: 1, .. }));
/// assert_eq!(err.to_string(), "rmse: `y` has 1 values, expected 2");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// An input slice (or a dimension) is empty.
    #[error("{metric}: `{what}` is empty")]
    Empty {
        /// The metric that was called.
        metric: &'static str,
        /// The argument that is empty.
        what: &'static str,
    },
    /// Two inputs that must match in length do not.
    #[error("{metric}: `{what}` has {got} values, expected {expected}")]
    LengthMismatch {
        /// The metric that was called.
        metric: &'static str,
        /// The argument with the wrong length.
        what: &'static str,
        /// The length it should have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// A value is NaN or infinite where a finite number is needed.
    #[error("{metric}: `{what}[{index}]` is {value}, expected a finite number")]
    NonFinite {
        /// The metric that was called.
        metric: &'static str,
        /// The argument holding the value.
        what: &'static str,
        /// Its flat index.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// Fewer values than the metric needs.
    #[error("{metric}: `{what}` has {got} values, needs at least {needed}")]
    TooFew {
        /// The metric that was called.
        metric: &'static str,
        /// The argument that is too short.
        what: &'static str,
        /// How many values are needed.
        needed: usize,
        /// How many were given.
        got: usize,
    },
    /// A class label is not below `n_classes`.
    #[error("{metric}: `labels[{index}]` is {label}, but there are only {n_classes} classes")]
    LabelOutOfRange {
        /// The metric that was called.
        metric: &'static str,
        /// Index of the point.
        index: usize,
        /// The label found.
        label: usize,
        /// Number of classes.
        n_classes: usize,
    },
    /// A row of class probabilities has a negative entry or does not sum to one.
    #[error("{metric}: row {row} of `probs` is not a probability vector: {reason}")]
    NotAProbability {
        /// The metric that was called.
        metric: &'static str,
        /// Index of the row (the point).
        row: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other invalid argument (a variance that is not positive, a level outside (0, 1), ...).
    #[error("{metric}: invalid `{what}`: {reason}")]
    InvalidArgument {
        /// The metric that was called.
        metric: &'static str,
        /// The argument.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

/// Why an `.npz` file could not be written (the source of [`Error::Export`]).
///
/// ```
/// use weightspace::export::Npz;
/// use weightspace::{Error, ExportError};
///
/// let mut npz = Npz::new();
/// npz.add_f64("x", &[2], vec![1.0, 2.0])?;
/// let missing = std::env::temp_dir().join("weightspace_no_such_dir").join("x.npz");
/// match npz.write(&missing).unwrap_err() {
///     Error::Export { path, source: ExportError::Io { stage, .. } } => {
///         assert!(path.ends_with("x.npz"));
///         assert_eq!(stage, "cannot create a temporary file");
///     }
///     other => panic!("{other}"),
/// }
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file-system operation failed.
    #[error("{stage}: {source}")]
    Io {
        /// The step that failed (creating, syncing or renaming the temporary file, ...).
        stage: &'static str,
        /// The I/O error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The NumPy encoder (`ndarray-npy`) failed.
    #[error("writing the archive: {source}")]
    Npz {
        /// The encoder's error.
        #[source]
        source: std::sync::Arc<ndarray_npy::WriteNpzError>,
    },
}

/// Two export errors are equal when they say the same thing.
impl PartialEq for ExportError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// An error of the `testing` toolkit inside an [`Error`]: the toolkit's own error value (one of
/// `InferenceTestError`, `ReferenceError`, `SbcError`, `PlotError`), shared, with its message and
/// its type kept.
///
/// ```
/// use weightspace::testing::assert::{check_mean, InferenceTestError};
/// fn run() -> weightspace::Result<f64> {
///     Ok(check_mean(&[][..], 0.0, 0.01)?.p_value)
/// }
/// let weightspace::Error::Testing(e) = run().unwrap_err() else { panic!("a testing error") };
/// assert!(matches!(e.downcast_ref::<InferenceTestError>(), Some(InferenceTestError::TooFew { .. })));
/// ```
#[derive(Debug, Clone)]
pub struct TestingError(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl TestingError {
    /// Wraps a testing error.
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(e))
    }

    /// The testing error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Display for TestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TestingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two testing errors are equal when they say the same thing.
impl PartialEq for TestingError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

/// An error from another library (an MCMC backend, ...), kept as the typed source of an
/// [`Error`] variant.
///
/// ```
/// use std::error::Error as _;
/// use weightspace::{Error, SourceError};
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "backend gave up");
/// let e = Error::Sampler { what: "nuts-rs: a draw".into(), source: SourceError::new(io) };
/// assert_eq!(e.to_string(), "sampler: nuts-rs: a draw: backend gave up");
/// let source = e.source().and_then(|s| s.downcast_ref::<SourceError>()).unwrap();
/// assert!(source.downcast_ref::<std::io::Error>().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct SourceError(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl SourceError {
    /// Wraps another library's error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(std::sync::Arc::from(e.into()))
    }

    /// The wrapped error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two wrapped errors are equal when they say the same thing.
impl PartialEq for SourceError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

/// `std::result::Result` with [`Error`].
///
/// ```
/// use weightspace::prelude::*;
/// fn rows(n: usize) -> Result<Dataset<f64, Cpu>> {
///     let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
///     Dataset::regression(&Cpu::default(), &x, 1, &x, 1)
/// }
/// assert_eq!(rows(4)?.len(), 4);
/// assert!(matches!(rows(0), Err(Error::Empty { .. })));
/// # Ok::<(), weightspace::Error>(())
/// ```
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
