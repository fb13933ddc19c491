//! Datasets: validated inputs and targets on a device, and minibatches.

use dfdx::prelude::*;

use crate::error::check_finite;
use crate::model::arch::{Architecture, LikelihoodSpec};
use crate::{Error, Real, Result};

/// What the targets are.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::Targets;
/// let dev = Cpu::default();
/// let clf = Dataset::<f32, _>::classification(&dev, &[0.0, 1.0, 2.0], 1, &[0, 2, 1], 3)?;
/// assert_eq!(clf.targets, Targets::Labels { classes: 3, labels: vec![0, 2, 1] });
/// let reg = Dataset::<f32, _>::regression(&dev, &[0.0, 1.0], 1, &[1.0, 2.0, 3.0, 4.0], 2)?;
/// assert_eq!(reg.targets, Targets::Real { d_out: 2 });
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Real-valued targets, `d_out` per row.
    Real {
        /// Number of target columns.
        d_out: usize,
    },
    /// Class labels in `0..classes`.
    Labels {
        /// Number of classes.
        classes: usize,
        /// The labels, one per row.
        labels: Vec<usize>,
    },
}

/// A validated dataset on a device.
///
/// Inputs are `(N, d_in)`. Regression targets are `(N, d_out)`; class labels are stored one-hot,
/// `(N, classes)`.
///
/// ```
/// use weightspace::prelude::*;
/// let dev = Cpu::default();
/// let data = Dataset::<f32, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.1, 0.9, 2.1], 1).unwrap();
/// assert_eq!(data.len(), 3);
/// // NaN in the data is an error, not a silent NaN later
/// let err = Dataset::<f32, _>::regression(&dev, &[0.0, f64::NAN], 1, &[0.0, 1.0], 1).unwrap_err();
/// assert!(err.to_string().contains("NaN"));
/// ```
#[derive(Debug, Clone)]
pub struct Dataset<E: Dtype, D: Storage<E>> {
    /// Inputs, `(N, d_in)`.
    pub x: Tensor<(usize, usize), E, D>,
    /// Targets, `(N, d_out)` or one-hot `(N, classes)`.
    pub y: Tensor<(usize, usize), E, D>,
    /// Target kind (and host copy of labels).
    pub targets: Targets,
}

fn to_e<E: Real>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| crate::num::cast::from_f64::<E>(x)).collect()
}

/// The number of rows in a row-major buffer of `cols` columns; `Err` if it is empty, ragged or not
/// finite, naming `what`.
pub(crate) fn check_rows(what: &str, v: &[f64], cols: usize) -> Result<usize> {
    if cols == 0 {
        return Err(Error::Shape { what: what.into(), expected: "at least one column".into(), got: "0 columns".into() });
    }
    if v.is_empty() {
        return Err(Error::Empty { what: what.into() });
    }
    if !v.len().is_multiple_of(cols) {
        return Err(Error::Shape {
            what: what.into(),
            expected: format!("a multiple of {cols} values (rows of {cols})"),
            got: format!("{} values", v.len()),
        });
    }
    check_finite(what, v)?;
    Ok(v.len() / cols)
}

impl<E: Real, D: Device<E>> Dataset<E, D> {
    /// Regression data from row-major host buffers.
    pub fn regression(dev: &D, x: &[f64], d_in: usize, y: &[f64], d_out: usize) -> Result<Self> {
        let n = check_rows("x (inputs)", x, d_in)?;
        let ny = check_rows("y (targets)", y, d_out)?;
        if n != ny {
            return Err(Error::Shape {
                what: "y (targets)".into(),
                expected: format!("({n}, {d_out}) to match x's {n} rows"),
                got: format!("({ny}, {d_out})"),
            });
        }
        Ok(Self {
            x: dev.tensor_from_vec(to_e(x), (n, d_in)),
            y: dev.tensor_from_vec(to_e(y), (n, d_out)),
            targets: Targets::Real { d_out },
        })
    }

    /// Classification data: row-major inputs and labels in `0..classes`.
    pub fn classification(dev: &D, x: &[f64], d_in: usize, labels: &[usize], classes: usize) -> Result<Self> {
        let n = check_rows("x (inputs)", x, d_in)?;
        if labels.len() != n {
            return Err(Error::Shape {
                what: "labels".into(),
                expected: format!("({n},) to match x's rows"),
                got: format!("({},)", labels.len()),
            });
        }
        if classes < 2 {
            return Err(Error::config("classes", classes, "at least two classes are needed"));
        }
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(Error::LabelOutOfRange { row, label, classes });
        }
        let mut onehot = vec![E::zero(); n * classes];
        for (r, &l) in labels.iter().enumerate() {
            onehot[r * classes + l] = E::one();
        }
        Ok(Self {
            x: dev.tensor_from_vec(to_e(x), (n, d_in)),
            y: dev.tensor_from_vec(onehot, (n, classes)),
            targets: Targets::Labels { classes, labels: labels.to_vec() },
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.x.shape().0
    }

    /// Whether there are no rows (never true for a constructed dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.x.shape().1
    }

    /// Checks that this dataset fits a model: input width, target width or class count, and target
    /// kind.
    pub fn check_for(&self, arch: &Architecture) -> Result<()> {
        if self.is_empty() {
            return Err(Error::Empty { what: "dataset".into() });
        }
        if self.d_in() != arch.d_in() {
            return Err(Error::Shape {
                what: format!("x (inputs) for model {}", arch.name),
                expected: format!("(n, {})", arch.d_in()),
                got: format!("({}, {})", self.len(), self.d_in()),
            });
        }
        let k = arch.d_out();
        match (&self.targets, arch.likelihood) {
            (Targets::Real { d_out }, LikelihoodSpec::Gaussian { .. }) if *d_out == k => Ok(()),
            (Targets::Real { d_out }, LikelihoodSpec::Gaussian { .. }) => Err(Error::Shape {
                what: format!("y (targets) for model {}", arch.name),
                expected: format!("(n, {k})"),
                got: format!("({}, {d_out})", self.len()),
            }),
            (Targets::Labels { classes, labels }, LikelihoodSpec::Categorical) => {
                if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
                    return Err(Error::LabelOutOfRange { row, label, classes: k });
                }
                if *classes != k {
                    return Err(Error::Shape {
                        what: format!("one-hot labels for model {}", arch.name),
                        expected: format!("{k} classes"),
                        got: format!("{classes} classes"),
                    });
                }
                Ok(())
            }
            (Targets::Labels { classes, labels }, LikelihoodSpec::Bernoulli) => {
                if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= 2) {
                    return Err(Error::LabelOutOfRange { row, label, classes: 2 });
                }
                if *classes != 2 || k != 1 {
                    return Err(Error::Shape {
                        what: format!("labels for Bernoulli model {}", arch.name),
                        expected: "2 classes and 1 network output".into(),
                        got: format!("{classes} classes and {k} outputs"),
                    });
                }
                Ok(())
            }
            (Targets::Real { .. }, _) => Err(Error::Shape {
                what: "y (targets)".into(),
                expected: "class labels for a classification likelihood".into(),
                got: "real-valued targets".into(),
            }),
            (Targets::Labels { .. }, _) => Err(Error::Shape {
                what: "y (targets)".into(),
                expected: "real-valued targets for a Gaussian likelihood".into(),
                got: "class labels".into(),
            }),
        }
    }

    /// The rows `idx` (with repetition allowed), gathered on the device.
    pub fn rows(&self, idx: &[usize]) -> Result<Self> {
        if idx.is_empty() {
            return Err(Error::Empty { what: "minibatch".into() });
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Shape { what: "row index".into(), expected: format!("< {}", self.len()), got: bad.to_string() });
        }
        let dev = self.x.device();
        let it = dev.tensor_from_vec(idx.to_vec(), (idx.len(),));
        let targets = match &self.targets {
            Targets::Real { d_out } => Targets::Real { d_out: *d_out },
            Targets::Labels { classes, labels } => Targets::Labels { classes: *classes, labels: idx.iter().map(|&i| labels[i]).collect() },
        };
        Ok(Self { x: self.x.clone().gather(it.clone()), y: self.y.clone().gather(it), targets })
    }

    /// Inputs as a row-major host buffer.
    pub fn x_host(&self) -> Vec<f64> {
        self.x.as_vec().iter().map(|v| v.cast_to_f64()).collect()
    }

    /// Real targets as a row-major host buffer (one-hot rows for labels).
    pub fn y_host(&self) -> Vec<f64> {
        self.y.as_vec().iter().map(|v| v.cast_to_f64()).collect()
    }
}
