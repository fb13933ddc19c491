//! Statistical assertions with a stated false-alarm rate.
//!
//! Every check takes the false-alarm rate `alpha` (the probability of rejecting when the
//! inference is right) and returns a [`TestOutcome`] that records the statistic, the bound it was
//! compared with, the p-value and the sample sizes. The `assert_*` twins panic with that record,
//! for use inside `#[test]` functions; the `check_*` functions return it, for code that wants to
//! count rejections or combine tests.
//!
//! | check | null hypothesis | statistic | reference distribution |
//! | --- | --- | --- | --- |
//! | [`check_mean`] | `E[x] = μ` | `t = (x̄ − μ) / MCSE`, `MCSE = sd / √ESS` | Student t, `ESS − 1` df |
//! | [`check_variance`] | `Var[x] = σ²` | `t = (s² − σ²) / MCSE(s²)` | Student t, `ESS − 1` df |
//! | [`check_covariance`] | `Cov[x] = Σ` | `max |t|` over the `d(d+1)/2` entries | Bonferroni over the entries |
//! | [`check_ks`] | `x ~ F` (iid) | Kolmogorov–Smirnov `D` | Kolmogorov, Stephens' small-n correction |
//! | [`check_two_sample`] | `x` and `y` have one distribution | energy distance | permutations (seeded) |
//!
//! For correlated draws (MCMC) pass [`Draws::chains`] / [`VectorDraws::chains`]: the standard
//! errors then use the ESS of [`crate::num::diagnostics::ess_mean`] computed on the chains of the
//! relevant statistic (the draws, their squared deviations, or their cross-products), as in
//! Vehtari et al. (2021). The KS and energy tests assume independent draws: thin MCMC output to
//! about one draw per effective sample first.
//!
//! # Measured false-alarm rate and power
//!
//! Measured by this module's tests over 1000 seeded repetitions at `alpha = 0.05` (the binomial
//! standard error of a rate near 0.05 over 1000 repetitions is 0.007):
//!
//! | check | data under the null | false alarms | power against |
//! | --- | --- | --- | --- |
//! | mean, independent | n = 200, N(0, 1) | 0.057 | 0.988: mean shifted by 0.3 sd |
//! | mean, chains | 4 AR(1) chains × 250, φ = 0.5 | 0.054 | 0.999: mean shifted by 0.3 sd |
//! | variance, independent | n = 1000, N(0, 1) | 0.046 | 0.988: sd inflated by 10% |
//! | variance, chains | 4 AR(1) chains × 500, φ = 0.5 | 0.057 | 0.996: sd inflated by 10% |
//! | covariance, independent | n = 2000, 2-d, ρ = 0.5 | 0.040 | 0.957: ρ = 0.6 |
//! | covariance, chains | 4 chains × 500 of 2-d AR(1), φ = 0.7 | 0.069 | (see note) |
//! | Kolmogorov–Smirnov | n = 500, N(0, 1) | 0.049 | 1.000: shift 0.3 sd; 0.722 at n = 2000: sd × 1.1 |
//! | energy distance | n = m = 60, 2-d, 99 permutations | 0.049 | 0.918: shift 0.7 sd in one coordinate |
//!
//! The tests assert these figures (false-alarm counts within three binomial standard errors of
//! `alpha`, power above a floor), so they cannot drift silently. Notes:
//!
//! * The chain-aware tests estimate the ESS, and that estimate is noisy for short or
//!   heavy-tailed series (cross-products of correlated chains are both), which makes the
//!   covariance test on chains slightly anti-conservative despite its Bonferroni correction:
//!   run it at a smaller `alpha` in CI, or with longer chains. Treating the same chains as
//!   independent draws instead gives false-alarm rates of 26% (mean, φ = 0.5) and 41%
//!   (covariance, φ = 0.7): always pass chains as chains.
//! * KS has little power against a change of scale; pair it with [`check_variance`].
//!
//! ```
//! use rand::{rngs::StdRng, SeedableRng};
//! use rand_distr::{Distribution, Normal};
//! use weightspace::testing::assert::{assert_mean, check_mean, Draws};
//!
//! let mut rng = StdRng::seed_from_u64(1);
//! let x: Vec<f64> = (0..500).map(|_| Normal::new(2.0, 1.0).unwrap().sample(&mut rng)).collect();
//! assert_mean(&x, 2.0, 0.01);
//! let outcome = check_mean(&x, 2.5, 0.01)?;
//! assert!(!outcome.passed);
//! println!("{outcome}"); // mean test FAILED: |t| = ... > bound ...
//! # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
//! ```

use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use thiserror::Error;

use crate::num::dense::Matrix;
use crate::num::diagnostics::{ess_mean, DiagnosticsError};
use crate::num::special::{kolmogorov_sf, student_t_cdf, student_t_quantile};

/// The record of one statistical test.
///
/// ```
/// use weightspace::testing::assert::check_variance;
///
/// let x = [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0];
/// let o = check_variance(&x[..], 8.0 / 7.0, 0.05)?;
/// assert!(o.passed);
/// assert_eq!(o.sample_sizes, vec![8]);
/// assert!(o.to_string().starts_with("variance test passed"));
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    /// Which test: `"mean"`, `"variance"`, `"covariance"`, `"kolmogorov-smirnov"`,
    /// `"energy distance"`, `"sbc"`.
    pub test: &'static str,
    /// Name of the statistic, e.g. `"|t|"`, `"D"`.
    pub statistic_name: &'static str,
    /// The statistic.
    pub statistic: f64,
    /// The critical value: the test passes when `statistic <= bound`.
    pub bound: f64,
    /// The p-value: the test passes when `p_value > alpha` (equivalent to the bound up to
    /// rounding and the discreteness of permutation p-values).
    pub p_value: f64,
    /// The false-alarm rate the test was run at.
    pub alpha: f64,
    /// Number of draws in each sample.
    pub sample_sizes: Vec<usize>,
    /// Effective sample size behind the standard error, where one was used.
    pub ess: Option<f64>,
    /// Human-readable estimate versus expectation.
    pub detail: String,
    /// Whether the null hypothesis was kept.
    pub passed: bool,
}

impl TestOutcome {
    /// `Ok(self)` if the test passed, `Err(InferenceTestError::Rejected)` otherwise.
    pub fn into_result(self) -> std::result::Result<TestOutcome, InferenceTestError> {
        if self.passed {
            Ok(self)
        } else {
            Err(InferenceTestError::Rejected(Box::new(self)))
        }
    }

    /// Panics with the full record if the test failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.passed {
            panic!("{self}");
        }
    }
}

impl fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verdict, cmp) = if self.passed { ("passed", "<=") } else { ("FAILED", ">") };
        write!(
            f,
            "{} test {verdict}: {} = {:.4} {cmp} bound {:.4} (alpha = {}, p = {:.3e}); n = {:?}",
            self.test, self.statistic_name, self.statistic, self.bound, self.alpha, self.p_value, self.sample_sizes
        )?;
        if let Some(ess) = self.ess {
            write!(f, ", ESS = {ess:.1}")?;
        }
        if !self.detail.is_empty() {
            write!(f, "; {}", self.detail)?;
        }
        Ok(())
    }
}

/// Why a check could not run, or (as [`InferenceTestError::Rejected`]) that it rejected.
///
/// ```
/// use weightspace::testing::assert::{check_mean, InferenceTestError};
///
/// let err = check_mean(&[1.0, f64::NAN, 2.0][..], 0.0, 0.05).unwrap_err();
/// assert_eq!(err.to_string(), "mean: `draws[1]` is NaN, expected a finite number");
/// assert!(matches!(check_mean(&[1.0, 2.0][..], 0.0, 1.5),
///                  Err(InferenceTestError::InvalidAlpha { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InferenceTestError {
    /// The test ran and rejected the null hypothesis.
    #[error("{0}")]
    Rejected(Box<TestOutcome>),
    /// Too few draws for the test.
    #[error("{test}: `{what}` has {got} draws, needs at least {needed}")]
    TooFew {
        /// The test.
        test: &'static str,
        /// The argument.
        what: &'static str,
        /// Draws needed.
        needed: usize,
        /// Draws given.
        got: usize,
    },
    /// Inputs disagree in shape.
    #[error("{test}: `{what}` has {got} entries, expected {expected}")]
    LengthMismatch {
        /// The test.
        test: &'static str,
        /// The argument.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A draw is NaN or infinite.
    #[error("{test}: `{what}[{index}]` is {value}, expected a finite number")]
    NonFinite {
        /// The test.
        test: &'static str,
        /// The argument.
        what: &'static str,
        /// Flat index of the draw.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// `alpha` is not in (0, 1).
    #[error("{test}: alpha = {alpha} is not in (0, 1)")]
    InvalidAlpha {
        /// The test.
        test: &'static str,
        /// The value given.
        alpha: f64,
    },
    /// Another invalid argument.
    #[error("{test}: {reason}")]
    Invalid {
        /// The test.
        test: &'static str,
        /// Why.
        reason: String,
    },
    /// The chains could not be diagnosed (ragged, too short, constant).
    #[error("{test}: {source}")]
    Diagnostics {
        /// The test.
        test: &'static str,
        /// The diagnostics error.
        #[source]
        source: DiagnosticsError,
    },
}

impl From<InferenceTestError> for crate::Error {
    fn from(e: InferenceTestError) -> Self {
        crate::Error::Testing(crate::error::TestingError::new(e))
    }
}

type Result<T> = std::result::Result<T, InferenceTestError>;

/// Draws of a scalar: independent, or correlated chains from MCMC.
///
/// ```
/// use weightspace::testing::assert::Draws;
///
/// let iid = vec![1.0, 2.0, 3.0];
/// let d: Draws = (&iid).into();
/// assert_eq!(d.len(), 3);
/// let chains = vec![vec![1.0; 10], vec![2.0; 10]];
/// assert_eq!(Draws::chains(&chains).len(), 20);
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Draws<'a> {
    /// Independent draws (exact samplers, importance resampling, thinned chains).
    Independent(&'a [f64]),
    /// MCMC chains, `chains[c][t]`; all chains equally long, at least 6 draws each.
    Chains(&'a [Vec<f64>]),
}

impl<'a> Draws<'a> {
    /// Independent draws.
    pub fn independent(x: &'a [f64]) -> Self {
        Draws::Independent(x)
    }

    /// MCMC chains.
    pub fn chains(chains: &'a [Vec<f64>]) -> Self {
        Draws::Chains(chains)
    }

    /// Total number of draws.
    pub fn len(&self) -> usize {
        match self {
            Draws::Independent(x) => x.len(),
            Draws::Chains(c) => c.iter().map(Vec::len).sum(),
        }
    }

    /// Whether there are no draws.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn as_chains(&self) -> Vec<&'a [f64]> {
        match *self {
            Draws::Independent(x) => vec![x],
            Draws::Chains(c) => c.iter().map(Vec::as_slice).collect(),
        }
    }
}

impl<'a> From<&'a [f64]> for Draws<'a> {
    fn from(x: &'a [f64]) -> Self {
        Draws::Independent(x)
    }
}

impl<'a> From<&'a Vec<f64>> for Draws<'a> {
    fn from(x: &'a Vec<f64>) -> Self {
        Draws::Independent(x)
    }
}

impl<'a, const N: usize> From<&'a [f64; N]> for Draws<'a> {
    fn from(x: &'a [f64; N]) -> Self {
        Draws::Independent(x)
    }
}

/// Draws of a vector: independent (`draws[t][i]`) or chains (`chains[c][t][i]`).
///
/// ```
/// use weightspace::testing::assert::VectorDraws;
///
/// let iid = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
/// assert_eq!(VectorDraws::independent(&iid).dim(), Some(2));
/// ```
#[derive(Debug, Clone, Copy)]
pub enum VectorDraws<'a> {
    /// Independent draws, each a vector of the same length.
    Independent(&'a [Vec<f64>]),
    /// MCMC chains of vector draws.
    Chains(&'a [Vec<Vec<f64>>]),
}

impl<'a> VectorDraws<'a> {
    /// Independent draws.
    pub fn independent(draws: &'a [Vec<f64>]) -> Self {
        VectorDraws::Independent(draws)
    }

    /// MCMC chains.
    pub fn chains(chains: &'a [Vec<Vec<f64>>]) -> Self {
        VectorDraws::Chains(chains)
    }

    /// Dimension of the first draw, if any.
    pub fn dim(&self) -> Option<usize> {
        match self {
            VectorDraws::Independent(d) => d.first().map(Vec::len),
            VectorDraws::Chains(c) => c.first().and_then(|c| c.first()).map(Vec::len),
        }
    }

    fn as_chains(&self) -> Vec<&'a [Vec<f64>]> {
        match *self {
            VectorDraws::Independent(d) => vec![d],
            VectorDraws::Chains(c) => c.iter().map(Vec::as_slice).collect(),
        }
    }

    fn is_independent(&self) -> bool {
        matches!(self, VectorDraws::Independent(_))
    }
}

impl<'a> From<&'a [Vec<f64>]> for VectorDraws<'a> {
    fn from(x: &'a [Vec<f64>]) -> Self {
        VectorDraws::Independent(x)
    }
}

impl<'a> From<&'a Vec<Vec<f64>>> for VectorDraws<'a> {
    fn from(x: &'a Vec<Vec<f64>>) -> Self {
        VectorDraws::Independent(x)
    }
}

fn check_alpha(test: &'static str, alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(InferenceTestError::InvalidAlpha { test, alpha })
    }
}

fn check_finite(test: &'static str, what: &'static str, xs: &[f64], offset: usize) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(InferenceTestError::NonFinite { test, what, index: offset + i, value: xs[i] }),
        None => Ok(()),
    }
}

/// Validates scalar draws and returns them as chains (one chain for independent draws).
fn scalar_chains<'a>(test: &'static str, draws: &Draws<'a>, needed: usize) -> Result<Vec<&'a [f64]>> {
    let chains = draws.as_chains();
    let mut offset = 0;
    for c in &chains {
        check_finite(test, "draws", c, offset)?;
        offset += c.len();
    }
    let n = draws.len();
    if n < needed {
        return Err(InferenceTestError::TooFew { test, what: "draws", needed, got: n });
    }
    Ok(chains)
}

/// ESS for the mean of `series` laid out like `chains`: `n` for independent draws, otherwise
/// the split-chain ESS of [`ess_mean`].
fn ess_of_series(test: &'static str, independent: bool, series: &[Vec<f64>]) -> Result<f64> {
    if independent {
        return Ok(series.iter().map(Vec::len).sum::<usize>() as f64);
    }
    ess_mean(series).map_err(|source| InferenceTestError::Diagnostics { test, source })
}

fn mean_sd(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64, usize) {
    let n = xs.clone().count();
    let mean = xs.clone().sum::<f64>() / n as f64;
    let var = xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    (mean, var.sqrt(), n)
}

/// Two-sided t outcome for `estimate` against `expected` with standard error `se`.
#[allow(clippy::too_many_arguments)]
fn t_outcome(test: &'static str, estimate: f64, expected: f64, se: f64, ess: f64, alpha: f64, n: usize, independent: bool) -> TestOutcome {
    let df = (ess - 1.0).max(1.0);
    let t = if se > 0.0 {
        (estimate - expected).abs() / se
    } else if estimate == expected {
        0.0
    } else {
        f64::INFINITY
    };
    let bound = student_t_quantile(1.0 - 0.5 * alpha, df);
    let p_value = 2.0 * student_t_cdf(-t, df);
    TestOutcome {
        test,
        statistic_name: "|t|",
        statistic: t,
        bound,
        p_value,
        alpha,
        sample_sizes: vec![n],
        ess: (!independent).then_some(ess),
        detail: format!("estimate {estimate:.6} ± MCSE {se:.3e} vs expected {expected:.6}"),
        passed: t <= bound,
    }
}

/// Tests `E[x] = expected` with a t-test whose standard error is the MCSE `sd / √ESS`.
///
/// For independent draws ESS = n and this is the one-sample t-test; for chains the ESS is
/// estimated ([`crate::num::diagnostics::ess_mean`]). Needs at least 2 independent draws, or chains
/// of at least 6 draws each.
///
/// ```
/// use weightspace::testing::assert::{check_mean, Draws};
///
/// // a slowly mixing chain: its ESS is far below n, so the bound is wide
/// let chain: Vec<f64> = (0..1000).map(|t| ((t / 50) as f64 * 0.37).sin()).collect();
/// let o = check_mean(Draws::chains(&[chain]), 0.0, 0.05)?;
/// assert!(o.ess.unwrap() < 100.0);
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
pub fn check_mean<'a>(draws: impl Into<Draws<'a>>, expected: f64, alpha: f64) -> Result<TestOutcome> {
    const T: &str = "mean";
    check_alpha(T, alpha)?;
    let draws = draws.into();
    let chains = scalar_chains(T, &draws, 2)?;
    let independent = matches!(draws, Draws::Independent(_));
    let owned: Vec<Vec<f64>> = chains.iter().map(|c| c.to_vec()).collect();
    let ess = ess_of_series(T, independent, &owned)?;
    let (mean, sd, n) = mean_sd(chains.iter().flat_map(|c| c.iter().copied()));
    Ok(t_outcome(T, mean, expected, sd / ess.sqrt(), ess, alpha, n, independent))
}

/// Panicking twin of [`check_mean`].
///
/// ```should_panic
/// use weightspace::testing::assert::assert_mean;
///
/// assert_mean(&[0.9, 1.1, 1.0, 0.95, 1.05], 0.0, 0.05); // panics: "mean test FAILED: ..."
/// ```
#[track_caller]
pub fn assert_mean<'a>(draws: impl Into<Draws<'a>>, expected: f64, alpha: f64) {
    match check_mean(draws, expected, alpha) {
        Ok(o) => o.assert_passed(),
        Err(e) => panic!("{e}"),
    }
}

/// Tests `Var[x] = expected_variance` with a t-test on the sample variance `s²`, whose MCSE is
/// the standard deviation of the squared deviations over `√ESS` (ESS of the squared deviations
/// for chains, `n` for independent draws).
///
/// This makes no normality assumption, but it relies on the fourth moment, so it wants a few
/// hundred effective draws.
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use rand_distr::{Distribution, Normal};
/// use weightspace::testing::assert::check_variance;
///
/// let mut rng = StdRng::seed_from_u64(2);
/// let x: Vec<f64> = (0..2000).map(|_| Normal::new(0.0, 1.5).unwrap().sample(&mut rng)).collect();
/// assert!(check_variance(&x, 2.25, 0.01)?.passed);
/// assert!(!check_variance(&x, 1.0, 0.01)?.passed);
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
pub fn check_variance<'a>(draws: impl Into<Draws<'a>>, expected_variance: f64, alpha: f64) -> Result<TestOutcome> {
    const T: &str = "variance";
    check_alpha(T, alpha)?;
    let draws = draws.into();
    let chains = scalar_chains(T, &draws, 3)?;
    let independent = matches!(draws, Draws::Independent(_));
    let (mean, _, n) = mean_sd(chains.iter().flat_map(|c| c.iter().copied()));
    let sq: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| (x - mean).powi(2)).collect()).collect();
    let ess = ess_of_series(T, independent, &sq)?;
    let s2 = sq.iter().flatten().sum::<f64>() / (n as f64 - 1.0);
    let (_, sd_sq, _) = mean_sd(sq.iter().flatten().copied());
    Ok(t_outcome(T, s2, expected_variance, sd_sq / ess.sqrt(), ess, alpha, n, independent))
}

/// Panicking twin of [`check_variance`].
///
/// ```
/// use weightspace::testing::assert::assert_variance;
/// use weightspace::testing::special::normal_quantile;
///
/// // evenly spread N(0, 1) quantiles
/// let x: Vec<f64> = (0..1000).map(|i| normal_quantile((i as f64 + 0.5) / 1000.0)).collect();
/// assert_variance(&x, 1.0, 0.05);
/// ```
#[track_caller]
pub fn assert_variance<'a>(draws: impl Into<Draws<'a>>, expected_variance: f64, alpha: f64) {
    match check_variance(draws, expected_variance, alpha) {
        Ok(o) => o.assert_passed(),
        Err(e) => panic!("{e}"),
    }
}

/// Tests `Cov[x] = expected` entry by entry.
///
/// Each of the `d(d+1)/2` entries `Ĉᵢⱼ` gets a t statistic with the MCSE of the mean of the
/// cross-products `(xᵢ − x̄ᵢ)(xⱼ − x̄ⱼ)` (ESS of those products for chains); the test rejects when
/// the smallest p-value is below `alpha / (d(d+1)/2)` (Bonferroni), so its false-alarm rate is
/// at most `alpha`. The outcome reports the worst entry.
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use weightspace::testing::assert::check_covariance;
/// use weightspace::linalg::Matrix;
/// use weightspace::testing::reference::Gaussian;
///
/// let cov = Matrix::from_rows(&[vec![1.0, 0.5], vec![0.5, 1.0]])?;
/// let g = Gaussian::new(vec![0.0, 0.0], cov.clone())?;
/// let draws = g.sample_n(&mut StdRng::seed_from_u64(3), 2000);
/// assert!(check_covariance(&draws, &cov, 0.01)?.passed);
/// assert!(!check_covariance(&draws, &Matrix::identity(2), 0.01)?.passed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_covariance<'a>(draws: impl Into<VectorDraws<'a>>, expected: &Matrix, alpha: f64) -> Result<TestOutcome> {
    const T: &str = "covariance";
    check_alpha(T, alpha)?;
    let draws = draws.into();
    let d = expected.rows();
    if expected.cols() != d || d == 0 {
        return Err(InferenceTestError::Invalid { test: T, reason: format!("expected covariance is {:?}, not square", expected.shape()) });
    }
    let chains = draws.as_chains();
    let independent = draws.is_independent();
    let mut index = 0;
    for c in &chains {
        for x in c.iter() {
            if x.len() != d {
                return Err(InferenceTestError::LengthMismatch { test: T, what: "draw", expected: d, got: x.len() });
            }
            check_finite(T, "draws (flattened)", x, index * d)?;
            index += 1;
        }
    }
    let n = index;
    if n < 3 {
        return Err(InferenceTestError::TooFew { test: T, what: "draws", needed: 3, got: n });
    }
    let mut mean = vec![0.0; d];
    for x in chains.iter().flat_map(|c| c.iter()) {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n as f64;
        }
    }
    let m_tests = d * (d + 1) / 2;
    let mut worst: Option<(f64, usize, usize, TestOutcome)> = None;
    for i in 0..d {
        for j in 0..=i {
            let prod: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| (x[i] - mean[i]) * (x[j] - mean[j])).collect()).collect();
            let ess = ess_of_series(T, independent, &prod)?;
            let est = prod.iter().flatten().sum::<f64>() / (n as f64 - 1.0);
            let (_, sd, _) = mean_sd(prod.iter().flatten().copied());
            let o = t_outcome(T, est, expected[(i, j)], sd / ess.sqrt(), ess, alpha / m_tests as f64, n, independent);
            if worst.as_ref().map(|w| o.p_value < w.0).unwrap_or(true) {
                worst = Some((o.p_value, i, j, o));
            }
        }
    }
    let (p_min, i, j, o) = worst.expect("d > 0");
    Ok(TestOutcome {
        alpha,
        p_value: (p_min * m_tests as f64).min(1.0),
        statistic_name: "max |t|",
        detail: format!("worst entry ({i}, {j}) of {m_tests}: {}; bound is Bonferroni-corrected", o.detail),
        ..o
    })
}

/// Panicking twin of [`check_covariance`].
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use weightspace::testing::assert::assert_covariance;
/// use weightspace::linalg::Matrix;
/// use weightspace::testing::reference::Gaussian;
///
/// let draws = Gaussian::standard(3).sample_n(&mut StdRng::seed_from_u64(8), 1000);
/// assert_covariance(&draws, &Matrix::identity(3), 0.01);
/// ```
#[track_caller]
pub fn assert_covariance<'a>(draws: impl Into<VectorDraws<'a>>, expected: &Matrix, alpha: f64) {
    match check_covariance(draws, expected, alpha) {
        Ok(o) => o.assert_passed(),
        Err(e) => panic!("{e}"),
    }
}

fn ks_scale(n: usize) -> f64 {
    let sn = (n as f64).sqrt();
    sn + 0.12 + 0.11 / sn
}

/// Solves `kolmogorov_sf(λ) = alpha` by bisection.
fn kolmogorov_isf(alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if kolmogorov_sf(mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// One-sample Kolmogorov–Smirnov test of independent draws against a CDF.
///
/// `D = supₓ |F̂ₙ(x) − F(x)|`; the p-value is the asymptotic Kolmogorov tail at
/// `(√n + 0.12 + 0.11/√n) D` (Stephens 1970), accurate for n ≥ 5. The bound is the critical `D`.
/// The draws must be independent; the CDF continuous.
///
/// ```
/// use weightspace::testing::assert::check_ks;
/// use weightspace::testing::special::normal_cdf;
///
/// // a perfectly spread sample of N(0, 1): its empirical CDF hugs Φ
/// let x: Vec<f64> = (1..=200).map(|i| {
///     weightspace::testing::special::normal_quantile((i as f64 - 0.5) / 200.0)
/// }).collect();
/// let o = check_ks(&x, normal_cdf, 0.05)?;
/// assert!(o.passed && (o.statistic - 0.0025).abs() < 1e-9);
/// assert!(!check_ks(&x, |v| normal_cdf(v - 0.5), 0.05)?.passed);
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
pub fn check_ks(samples: &[f64], cdf: impl Fn(f64) -> f64, alpha: f64) -> Result<TestOutcome> {
    const T: &str = "kolmogorov-smirnov";
    check_alpha(T, alpha)?;
    check_finite(T, "samples", samples, 0)?;
    let n = samples.len();
    if n < 5 {
        return Err(InferenceTestError::TooFew { test: T, what: "samples", needed: 5, got: n });
    }
    let mut x = samples.to_vec();
    x.sort_by(f64::total_cmp);
    let nf = n as f64;
    let mut d: f64 = 0.0;
    let mut at = x[0];
    for (i, v) in x.iter().enumerate() {
        let f = cdf(*v);
        if !(0.0..=1.0).contains(&f) {
            return Err(InferenceTestError::Invalid { test: T, reason: format!("cdf({v}) = {f} is not a probability") });
        }
        let gap = ((i + 1) as f64 / nf - f).max(f - i as f64 / nf);
        if gap > d {
            d = gap;
            at = *v;
        }
    }
    let scale = ks_scale(n);
    let p_value = kolmogorov_sf(scale * d);
    Ok(TestOutcome {
        test: T,
        statistic_name: "D",
        statistic: d,
        bound: kolmogorov_isf(alpha) / scale,
        p_value,
        alpha,
        sample_sizes: vec![n],
        ess: None,
        detail: format!("largest CDF gap at x = {at:.6}"),
        passed: p_value > alpha,
    })
}

/// Panicking twin of [`check_ks`].
///
/// ```
/// use weightspace::testing::assert::assert_ks;
///
/// let u: Vec<f64> = (0..100).map(|i| (i as f64 + 0.5) / 100.0).collect();
/// assert_ks(&u, |x| x.clamp(0.0, 1.0), 0.05);
/// ```
#[track_caller]
pub fn assert_ks(samples: &[f64], cdf: impl Fn(f64) -> f64, alpha: f64) {
    match check_ks(samples, cdf, alpha) {
        Ok(o) => o.assert_passed(),
        Err(e) => panic!("{e}"),
    }
}

/// Settings of the permutation test in [`check_two_sample`].
///
/// ```
/// use weightspace::testing::assert::PermutationSettings;
///
/// let s = PermutationSettings { n_permutations: 199, ..Default::default() };
/// assert_eq!(s.seed, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermutationSettings {
    /// Number of random permutations. The p-value is `(1 + #{E_π ≥ E}) / (1 + n_permutations)`,
    /// so choose `alpha · (n_permutations + 1)` to be a whole number (e.g. 99, 199, 999 for
    /// `alpha` = 0.05 or 0.01). Default 499.
    pub n_permutations: usize,
    /// Seed of the `StdRng` that draws the permutations. Default 0.
    pub seed: u64,
}

impl Default for PermutationSettings {
    fn default() -> Self {
        PermutationSettings { n_permutations: 499, seed: 0 }
    }
}

/// Two-sample test of equal distributions: the energy distance (Székely & Rizzo 2004) with a
/// permutation p-value.
///
/// `E = nm/(n+m) · (2·mean|x − y| − mean|x − x'| − mean|y − y'|)` with Euclidean distances
/// (V-statistics). Cost: `O((n+m)²)` memory and `O((n+m)² · n_permutations)` time; keep
/// `n + m` in the hundreds. Draws must be independent within each sample.
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use weightspace::testing::assert::{check_two_sample, PermutationSettings};
/// use weightspace::testing::reference::Gaussian;
///
/// let mut rng = StdRng::seed_from_u64(4);
/// let g = Gaussian::standard(2);
/// let x = g.sample_n(&mut rng, 100);
/// let y = g.sample_n(&mut rng, 100);
/// let z: Vec<Vec<f64>> = g.sample_n(&mut rng, 100).into_iter().map(|v| vec![v[0] + 1.0, v[1]]).collect();
/// let s = PermutationSettings::default();
/// assert!(check_two_sample(&x, &y, 0.05, &s)?.passed);
/// assert!(!check_two_sample(&x, &z, 0.05, &s)?.passed);
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
pub fn check_two_sample(x: &[Vec<f64>], y: &[Vec<f64>], alpha: f64, settings: &PermutationSettings) -> Result<TestOutcome> {
    const T: &str = "energy distance";
    check_alpha(T, alpha)?;
    let (n, m) = (x.len(), y.len());
    if n < 2 || m < 2 {
        return Err(InferenceTestError::TooFew { test: T, what: if n < 2 { "x" } else { "y" }, needed: 2, got: n.min(m) });
    }
    if settings.n_permutations == 0 {
        return Err(InferenceTestError::Invalid { test: T, reason: "n_permutations is 0".into() });
    }
    let d = x[0].len();
    let pooled: Vec<&Vec<f64>> = x.iter().chain(y).collect();
    for (k, v) in pooled.iter().enumerate() {
        if v.len() != d {
            return Err(InferenceTestError::LengthMismatch {
                test: T,
                what: if k < n { "x draw" } else { "y draw" },
                expected: d,
                got: v.len(),
            });
        }
        check_finite(T, "x and y (flattened)", v, k * d)?;
    }
    let total = n + m;
    let mut dist = vec![0.0; total * total];
    for i in 0..total {
        for j in 0..i {
            let s: f64 = pooled[i].iter().zip(pooled[j]).map(|(a, b)| (a - b).powi(2)).sum();
            dist[i * total + j] = s.sqrt();
            dist[j * total + i] = s.sqrt();
        }
    }
    let sum_all: f64 = dist.iter().sum();
    let (nf, mf) = (n as f64, m as f64);
    // with the pooled order `idx`, the first n are "x"
    let energy = |idx: &[usize]| -> f64 {
        let mut sxx = 0.0;
        for &a in &idx[..n] {
            let row = &dist[a * total..(a + 1) * total];
            sxx += idx[..n].iter().map(|&b| row[b]).sum::<f64>();
        }
        let mut syy = 0.0;
        for &a in &idx[n..] {
            let row = &dist[a * total..(a + 1) * total];
            syy += idx[n..].iter().map(|&b| row[b]).sum::<f64>();
        }
        let sxy = 0.5 * (sum_all - sxx - syy);
        nf * mf / (nf + mf) * (2.0 * sxy / (nf * mf) - sxx / (nf * nf) - syy / (mf * mf))
    };
    let mut idx: Vec<usize> = (0..total).collect();
    let observed = energy(&idx);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut perm_stats = Vec::with_capacity(settings.n_permutations);
    for _ in 0..settings.n_permutations {
        idx.shuffle(&mut rng);
        perm_stats.push(energy(&idx));
    }
    // ties with the observed value count against it, so the p-value is never anti-conservative
    let tol = 1e-12 * observed.abs().max(1e-300);
    let exceed = perm_stats.iter().filter(|&&e| e >= observed - tol).count();
    let p_value = (1 + exceed) as f64 / (1 + settings.n_permutations) as f64;
    perm_stats.sort_by(f64::total_cmp);
    // the (1 − alpha) quantile of the permutation distribution, counting the observed value
    let k = (((1.0 - alpha) * (settings.n_permutations + 1) as f64).ceil() as usize).clamp(1, settings.n_permutations);
    Ok(TestOutcome {
        test: T,
        statistic_name: "E",
        statistic: observed,
        bound: perm_stats[k - 1],
        p_value,
        alpha,
        sample_sizes: vec![n, m],
        ess: None,
        detail: format!("{} permutations (seed {}), dimension {d}", settings.n_permutations, settings.seed),
        passed: p_value > alpha,
    })
}

/// [`check_two_sample`] for scalar draws.
///
/// ```
/// use weightspace::testing::assert::{check_two_sample_1d, PermutationSettings};
///
/// let x: Vec<f64> = (0..50).map(|i| i as f64 / 50.0).collect();
/// let y: Vec<f64> = x.iter().map(|v| v + 0.5).collect();
/// let o = check_two_sample_1d(&x, &y, 0.05, &PermutationSettings::default())?;
/// assert!(!o.passed);
/// # Ok::<(), weightspace::testing::assert::InferenceTestError>(())
/// ```
pub fn check_two_sample_1d(x: &[f64], y: &[f64], alpha: f64, settings: &PermutationSettings) -> Result<TestOutcome> {
    let wrap = |v: &[f64]| v.iter().map(|a| vec![*a]).collect::<Vec<_>>();
    check_two_sample(&wrap(x), &wrap(y), alpha, settings)
}

/// Panicking twin of [`check_two_sample`].
///
/// ```
/// use weightspace::testing::assert::{assert_two_sample, PermutationSettings};
///
/// let x: Vec<Vec<f64>> = (0..40).map(|i| vec![(i % 8) as f64]).collect();
/// let y: Vec<Vec<f64>> = (0..40).map(|i| vec![((i + 3) % 8) as f64]).collect();
/// assert_two_sample(&x, &y, 0.05, &PermutationSettings::default());
/// ```
#[track_caller]
pub fn assert_two_sample(x: &[Vec<f64>], y: &[Vec<f64>], alpha: f64, settings: &PermutationSettings) {
    match check_two_sample(x, y, alpha, settings) {
        Ok(o) => o.assert_passed(),
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::num::special::normal_cdf;
    use crate::testing::reference::Gaussian;
    use rand::Rng;
    use rand_distr::StandardNormal;

    const ALPHA: f64 = 0.05;
    const REPS: usize = 1000;

    /// Counts rejections over `REPS` seeded repetitions of `run(seed)`.
    fn rejections(run: impl Fn(u64) -> TestOutcome) -> usize {
        (0..REPS as u64).filter(|&s| !run(s).passed).count()
    }

    /// The false-alarm count must be within three binomial standard errors of `alpha · REPS`
    /// (upper side only for tests that are conservative by construction).
    fn assert_false_alarms(name: &str, count: usize, conservative: bool) {
        let mean = ALPHA * REPS as f64;
        let sd = (REPS as f64 * ALPHA * (1.0 - ALPHA)).sqrt();
        let rate = count as f64 / REPS as f64;
        eprintln!("{name}: false-alarm rate {rate:.3}");
        assert!(count as f64 <= mean + 3.0 * sd, "{name}: false-alarm rate {rate}");
        if !conservative {
            assert!(count as f64 >= mean - 3.0 * sd, "{name}: false-alarm rate {rate}");
        }
    }

    fn assert_power(name: &str, count: usize, at_least: f64) {
        let power = count as f64 / REPS as f64;
        eprintln!("{name}: power {power:.3}");
        assert!(power >= at_least, "{name}: power {power} < {at_least}");
    }

    fn normal(rng: &mut StdRng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n).map(|_| mean + sd * rng.sample::<f64, _>(StandardNormal)).collect()
    }

    /// Four AR(1) chains with coefficient φ and stationary distribution N(mean, sd²).
    fn ar1(rng: &mut StdRng, len: usize, phi: f64, mean: f64, sd: f64) -> Vec<Vec<f64>> {
        let innov = (1.0 - phi * phi).sqrt();
        (0..4)
            .map(|_| {
                let mut z: f64 = rng.sample(StandardNormal);
                (0..len)
                    .map(|_| {
                        z = phi * z + innov * rng.sample::<f64, _>(StandardNormal);
                        mean + sd * z
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn mean_false_alarm_and_power_iid() {
        let run = |shift: f64| {
            rejections(|s| {
                let x = normal(&mut StdRng::seed_from_u64(s), 200, shift, 1.0);
                check_mean(&x, 0.0, ALPHA).unwrap()
            })
        };
        assert_false_alarms("mean iid", run(0.0), false);
        assert_power("mean iid, shift 0.3", run(0.3), 0.95);
    }

    #[test]
    fn mean_false_alarm_and_power_chains() {
        let run = |shift: f64| {
            rejections(|s| {
                let c = ar1(&mut StdRng::seed_from_u64(1000 + s), 250, 0.5, shift, 1.0);
                check_mean(Draws::chains(&c), 0.0, ALPHA).unwrap()
            })
        };
        assert_false_alarms("mean chains", run(0.0), false);
        assert_power("mean chains, shift 0.3", run(0.3), 0.95);
        // ignoring the autocorrelation would be badly anti-conservative: check that the ESS
        // matters by treating the same chains as independent draws
        let naive = rejections(|s| {
            let c = ar1(&mut StdRng::seed_from_u64(1000 + s), 250, 0.5, 0.0, 1.0);
            let flat: Vec<f64> = c.concat();
            check_mean(&flat, 0.0, ALPHA).unwrap()
        });
        let rate = naive as f64 / REPS as f64;
        eprintln!("mean, chains treated as independent: false-alarm rate {rate:.3}");
        assert!(rate > 3.0 * ALPHA, "naive iid test on AR(1) chains: false-alarm rate {rate}");
    }

    #[test]
    fn variance_false_alarm_and_power() {
        let iid = |sd: f64| {
            rejections(|s| {
                let x = normal(&mut StdRng::seed_from_u64(2000 + s), 1000, 0.0, sd);
                check_variance(&x, 1.0, ALPHA).unwrap()
            })
        };
        assert_false_alarms("variance iid", iid(1.0), false);
        assert_power("variance iid, sd x1.1", iid(1.1), 0.95);
        let chains = |sd: f64| {
            rejections(|s| {
                let c = ar1(&mut StdRng::seed_from_u64(3000 + s), 500, 0.5, 0.0, sd);
                check_variance(Draws::chains(&c), 1.0, ALPHA).unwrap()
            })
        };
        assert_false_alarms("variance chains", chains(1.0), false);
        assert_power("variance chains, sd x1.1", chains(1.1), 0.85);
    }

    #[test]
    fn covariance_false_alarm_and_power() {
        let cov = |rho: f64| Matrix::from_rows(&[vec![1.0, rho], vec![rho, 1.0]]).unwrap();
        let expected = cov(0.5);
        let run = |rho: f64| {
            let g = Gaussian::new(vec![0.0, 0.0], cov(rho)).unwrap();
            rejections(|s| {
                let d = g.sample_n(&mut StdRng::seed_from_u64(4000 + s), 2000);
                check_covariance(&d, &expected, ALPHA).unwrap()
            })
        };
        assert_false_alarms("covariance iid", run(0.5), true);
        assert_power("covariance iid, rho 0.6", run(0.6), 0.9);
    }

    #[test]
    fn covariance_of_chains_uses_ess() {
        // 2-d draws whose coordinates are independent AR(1) chains: the naive iid test rejects
        // far too often, the chain-aware one does not
        let run = |as_chains: bool| {
            rejections(|s| {
                let mut rng = StdRng::seed_from_u64(5000 + s);
                let a = ar1(&mut rng, 500, 0.7, 0.0, 1.0);
                let b = ar1(&mut rng, 500, 0.7, 0.0, 1.0);
                let chains: Vec<Vec<Vec<f64>>> =
                    a.iter().zip(&b).map(|(u, v)| u.iter().zip(v).map(|(p, q)| vec![*p, *q]).collect()).collect();
                if as_chains {
                    check_covariance(VectorDraws::chains(&chains), &Matrix::identity(2), ALPHA).unwrap()
                } else {
                    check_covariance(&chains.concat(), &Matrix::identity(2), ALPHA).unwrap()
                }
            })
        };
        assert_false_alarms("covariance chains", run(true), true);
        let rate = run(false) as f64 / REPS as f64;
        eprintln!("covariance, chains treated as independent: false-alarm rate {rate:.3}");
        assert!(rate > 3.0 * ALPHA, "naive covariance test on chains: false-alarm rate {rate}");
    }

    #[test]
    fn ks_false_alarm_and_power() {
        let run = |n: usize, shift: f64, sd: f64| {
            rejections(|s| {
                let x = normal(&mut StdRng::seed_from_u64(6000 + s), n, shift, sd);
                check_ks(&x, normal_cdf, ALPHA).unwrap()
            })
        };
        assert_false_alarms("ks", run(500, 0.0, 1.0), false);
        assert_power("ks, shift 0.3", run(500, 0.3, 1.0), 0.95);
        // KS is weak against a change of scale (use check_variance for that)
        assert_power("ks n=2000, sd x1.1", run(2000, 0.0, 1.1), 0.6);
    }

    #[test]
    fn energy_false_alarm_and_power() {
        let settings = PermutationSettings { n_permutations: 99, seed: 7 };
        let g = Gaussian::standard(2);
        let run = |shift: f64| {
            rejections(|s| {
                let mut rng = StdRng::seed_from_u64(7000 + s);
                let x = g.sample_n(&mut rng, 60);
                let y: Vec<Vec<f64>> = g.sample_n(&mut rng, 60).into_iter().map(|v| vec![v[0] + shift, v[1]]).collect();
                check_two_sample(&x, &y, ALPHA, &PermutationSettings { seed: s, ..settings }).unwrap()
            })
        };
        assert_false_alarms("energy", run(0.0), false);
        assert_power("energy, shift 0.7", run(0.7), 0.9);
    }

    #[test]
    fn energy_statistic_by_hand() {
        // x = {0, 1}, y = {3}: mean|x−y| = 2.5, mean|x−x'| = (0+1+1+0)/4 = 0.5, mean|y−y'| = 0
        // E = (2·1)/(3) · (5 − 0.5 − 0) = 3; with 1-point y the test needs 2 points, so use
        // y = {3, 3}: mean|x−y| = 2.5, E = (2·2)/4 · 4.5 = 4.5
        let o = check_two_sample_1d(&[0.0, 1.0], &[3.0, 3.0], 0.5, &PermutationSettings::default()).unwrap();
        assert!((o.statistic - 4.5).abs() < 1e-12, "{}", o.statistic);
        assert_eq!(o.sample_sizes, vec![2, 2]);
    }

    #[test]
    fn ks_statistic_by_hand() {
        // U(0,1) CDF, sorted samples {0.1, 0.5, 0.6, 0.9, 0.95}: the gaps i/n − F and
        // F − (i−1)/n are 0.1/0.1, −0.1/0.3, 0.0/0.2, −0.1/0.3, 0.05/0.15 -> D = 0.3, first
        // reached at 0.5 and again at 0.9 (where rounding makes it 0.30000000000000004)
        let o = check_ks(&[0.9, 0.1, 0.6, 0.5, 0.95], |x| x, 0.05).unwrap();
        assert!((o.statistic - 0.3).abs() < 1e-12, "{}", o.statistic);
        assert!(o.detail.contains("x = 0.900000"), "{}", o.detail);
        // scipy.stats.kstwobign.isf(0.05) / (sqrt(5) + 0.12 + 0.11 / sqrt(5))
        assert!((o.bound - 1.3580986393225507 / (5f64.sqrt() + 0.12 + 0.11 / 5f64.sqrt())).abs() < 1e-9);
    }

    #[test]
    fn failure_message_shows_statistic_bound_and_sizes() {
        let x = normal(&mut StdRng::seed_from_u64(9), 100, 1.0, 1.0);
        let o = check_mean(&x, 0.0, 0.01).unwrap();
        let msg = o.to_string();
        assert!(msg.starts_with("mean test FAILED: |t| = "), "{msg}");
        assert!(msg.contains("> bound 2.6"), "{msg}");
        assert!(msg.contains("n = [100]"), "{msg}");
        assert!(msg.contains("vs expected 0.000000"), "{msg}");
        let err = o.into_result().unwrap_err();
        assert!(err.to_string().starts_with("mean test FAILED"));
        let panic = std::panic::catch_unwind(|| assert_mean(&x, 0.0, 0.01)).unwrap_err();
        let text = panic.downcast_ref::<String>().unwrap();
        assert!(text.contains("bound"), "{text}");
        let c = vec![x[..50].to_vec(), x[50..].to_vec()];
        let msg = check_mean(Draws::chains(&c), 0.0, 0.01).unwrap().to_string();
        assert!(msg.contains("ESS = "), "{msg}");
    }

    #[test]
    fn input_errors() {
        assert!(matches!(check_mean(&[1.0][..], 0.0, 0.05), Err(InferenceTestError::TooFew { .. })));
        let ragged = vec![vec![0.0; 10], vec![0.0; 8]];
        assert!(matches!(check_mean(Draws::chains(&ragged), 0.0, 0.05), Err(InferenceTestError::Diagnostics { .. })));
        assert!(matches!(
            check_covariance(&vec![vec![0.0, 1.0], vec![1.0]], &Matrix::identity(2), 0.05),
            Err(InferenceTestError::LengthMismatch { .. })
        ));
        assert!(check_ks(&[0.1, 0.2, 0.3, 0.4, 0.5], |_| 2.0, 0.05).is_err());
        assert!(check_two_sample_1d(&[1.0], &[1.0, 2.0], 0.05, &Default::default()).is_err());
        assert!(check_variance(&[1.0, f64::INFINITY, 0.0][..], 1.0, 0.05).is_err());
    }
}
