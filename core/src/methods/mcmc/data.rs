//! The SYM-MCMC regression benchmarks as host tables: the sinusoidal and regression2d generators
//! of docs/methods.md §4, standardisation and an 80/20 split.
//!
//! The diabetes data (442 × 10) are not generated; the `symmetry_mcmc` example reads them from a
//! crate that ships all 442 rows and builds a [`Table`] with [`Table::new`].

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::model::data::Dataset;
use crate::model::protocol::column_stats;
use crate::{Error, Real, Result};
use dfdx::prelude::Device;

/// A regression table on the host: row-major inputs `(n, d_in)` and one target per row.
///
/// ```
/// use weightspace::mcmc::data::Table;
/// let t = Table::new(vec![1.0, 2.0, 3.0], 1, vec![2.0, 4.0, 6.0])?;
/// let (s, _) = t.standardise();
/// assert!(s.y.iter().sum::<f64>().abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Inputs, row-major `(n, d_in)`.
    pub x: Vec<f64>,
    /// Input width.
    pub d_in: usize,
    /// Targets, one per row.
    pub y: Vec<f64>,
}

/// Column means and standard deviations used by [`Table::standardise`] (inputs, then the target).
///
/// ```
/// use weightspace::mcmc::data::{Standardisation, Table};
/// let t = Table::new(vec![1.0, 2.0, 3.0], 1, vec![2.0, 4.0, 6.0])?;
/// let (_, s): (Table, Standardisation) = t.standardise();
/// assert_eq!((s.x_mean.clone(), s.y_mean), (vec![2.0], 4.0));
/// assert!((s.x_sd[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12); // population sd
/// assert!((s.y_sd - 2.0 * s.x_sd[0]).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Standardisation {
    /// Means of the input columns.
    pub x_mean: Vec<f64>,
    /// Standard deviations (population, `n` in the denominator) of the input columns.
    pub x_sd: Vec<f64>,
    /// Mean of the target.
    pub y_mean: f64,
    /// Standard deviation of the target.
    pub y_sd: f64,
}

impl Table {
    /// Checks shapes and finiteness.
    pub fn new(x: Vec<f64>, d_in: usize, y: Vec<f64>) -> Result<Self> {
        if d_in == 0 || x.len() != y.len() * d_in {
            return Err(Error::Shape {
                what: "table inputs".into(),
                expected: format!("({}, {d_in})", y.len()),
                got: format!("{} values", x.len()),
            });
        }
        if y.is_empty() {
            return Err(Error::Empty { what: "table".into() });
        }
        crate::error::check_finite("table inputs", &x)?;
        crate::error::check_finite("table targets", &y)?;
        Ok(Self { x, d_in, y })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Every column, the target included, standardised with this table's own means and
    /// (population) standard deviations. A constant column is only centred.
    pub fn standardise(&self) -> (Table, Standardisation) {
        let (x_mean, x_sd) = column_stats(&self.x, self.d_in);
        let (y_mean, y_sd) = column_stats(&self.y, 1);
        let (y_mean, y_sd) = (y_mean[0], y_sd[0]);
        (
            self.apply(&Standardisation { x_mean: x_mean.clone(), x_sd: x_sd.clone(), y_mean, y_sd }),
            Standardisation { x_mean, x_sd, y_mean, y_sd },
        )
    }

    /// Applies given statistics (e.g. a training split's to its test split).
    pub fn apply(&self, s: &Standardisation) -> Table {
        let x = self.x.iter().enumerate().map(|(i, v)| (v - s.x_mean[i % self.d_in]) / s.x_sd[i % self.d_in]).collect();
        let y = self.y.iter().map(|v| (v - s.y_mean) / s.y_sd).collect();
        Table { x, d_in: self.d_in, y }
    }

    /// A seeded random split: the first `round(fraction · n)` rows of a permutation, and the rest.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Table, Table)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::config("fraction", fraction, "must lie strictly between 0 and 1"));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let k = ((fraction * self.len() as f64).round() as usize).clamp(1, self.len() - 1);
        Ok((self.rows(&idx[..k]), self.rows(&idx[k..])))
    }

    /// The rows `idx`.
    pub fn rows(&self, idx: &[usize]) -> Table {
        let x = idx.iter().flat_map(|&i| self.x[i * self.d_in..(i + 1) * self.d_in].iter().copied()).collect();
        Table { x, d_in: self.d_in, y: idx.iter().map(|&i| self.y[i]).collect() }
    }

    /// A regression [`Dataset`] on a device.
    pub fn to_dataset<E: Real, D: Device<E>>(&self, dev: &D) -> Result<Dataset<E, D>> {
        Dataset::regression(dev, &self.x, self.d_in, &self.y, 1)
    }
}

/// The sinusoidal data: `x ~ U(0, 8)`, `y = sin x + N(0, 0.3²)`; the paper uses `n = 150`.
///
/// ```
/// let t = weightspace::mcmc::data::sinusoidal(150, 0);
/// assert_eq!((t.len(), t.d_in), (150, 1));
/// assert!(t.x.iter().all(|x| (0.0..8.0).contains(x)));
/// ```
pub fn sinusoidal(n: usize, seed: u64) -> Table {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f64> = (0..n).map(|_| rng.gen_range(0.0..8.0)).collect();
    let y = x.iter().map(|&v| v.sin() + 0.3 * rng.sample::<f64, _>(StandardNormal)).collect();
    Table { x, d_in: 1, y }
}

/// The regression2d data: `x₁, x₂ ~ U(−2, 2)`, `y = x₁ (sin x₁ + cos x₂) + N(0, 0.1²)`; the paper
/// uses `n = 256`.
///
/// ```
/// let t = weightspace::mcmc::data::regression2d(256, 0);
/// assert_eq!((t.len(), t.d_in), (256, 2));
/// ```
pub fn regression2d(n: usize, seed: u64) -> Table {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0));
        x.extend([a, b]);
        y.push(a * (f64::sin(a) + f64::cos(b)) + 0.1 * rng.sample::<f64, _>(StandardNormal));
    }
    Table { x, d_in: 2, y }
}
