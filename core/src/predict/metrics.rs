//! Predictive and calibration metrics, shared by the whole library.
//!
//! There is one implementation of each metric, and everything in weightspace that reports a
//! predictive score (the predictive types, the examples, the inference tests in
//! `weightspace::testing`) calls these functions. They work on plain `f64` slices, so they can be
//! fed from any tensor after one host copy.
//!
//! | metric | function | input |
//! | --- | --- | --- |
//! | mean log predictive density (the negative of the NLL) | [`mean_log_predictive_density`], [`pointwise_log_predictive_density`] | S×N per-sample log-likelihoods |
//! | Gaussian NLL | [`gaussian_negative_log_likelihood`] | predictive means and variances |
//! | KL divergence between two Gaussian predictives | [`gaussian_kl`] | two sets of means and variances |
//! | RMSE | [`rmse`] | point predictions |
//! | accuracy, categorical NLL | [`accuracy`], [`categorical_negative_log_likelihood`] | N×K class probabilities |
//! | ECE, reliability diagram | [`expected_calibration_error`], [`reliability_diagram`] | N×K class probabilities |
//! | interval coverage | [`interval_coverage`], [`gaussian_interval_coverage`] | interval bounds, or Gaussian predictives |
//! | standard error of a mean | [`mean_and_se`] | per-point scores |
//! | OOD detection: AUROC of a score | [`auroc`] | scores of in-distribution and OOD inputs |
//! | OOD scores: predictive entropy, mutual information | [`predictive_entropy`], [`mutual_information`] | N×K class probabilities; S×N×K per-sample class probabilities |
//!
//! Every function checks its input and returns a [`MetricError`] naming the problem (empty input,
//! mismatched lengths, a NaN, a probability row that does not sum to one, ...); none of them
//! panics.
//!
//! Matrices are passed row-major: `probs[i * n_classes + k]` is the probability of class `k` for
//! point `i`, and `loglik[s * n + i]` is the log-likelihood of point `i` under posterior sample `s`.
//!
//! A reliability diagram can be drawn to a PNG with
//! `weightspace::testing::plot::write_reliability_diagram_png`.
//!
//! ```
//! use weightspace::metrics::{accuracy, expected_calibration_error, mean_and_se,
//!     pointwise_log_predictive_density};
//!
//! // two posterior samples (rows), three test points (columns)
//! let loglik = [-1.0, -2.0, -0.5,
//!               -1.2, -1.8, -0.7];
//! let lpd = pointwise_log_predictive_density(&loglik, 2, 3)?;
//! let (mean_lpd, se) = mean_and_se(&lpd)?;
//! assert!(mean_lpd < 0.0 && se > 0.0);
//!
//! let probs = [0.9, 0.1,
//!              0.2, 0.8];
//! assert_eq!(accuracy(&probs, 2, &[0, 0])?, 0.5);
//! let ece = expected_calibration_error(&probs, 2, &[0, 0], 10)?;
//! assert!((ece - 0.45).abs() < 1e-12); // (|1 - 0.9| + |0 - 0.8|) / 2
//! # Ok::<(), weightspace::MetricError>(())
//! ```

use crate::num::special::normal_quantile;

/// How far a row of class probabilities may sum from one.
///
/// Probabilities computed in `f32` (a softmax on the GPU, say) and converted to `f64` do not sum
/// to one exactly; this tolerance admits them while still catching logits passed by mistake.
///
/// ```
/// use weightspace::metrics::{accuracy, PROB_SUM_TOLERANCE};
/// // rows of class probabilities off by less than the tolerance are accepted ...
/// let almost = [0.7 + PROB_SUM_TOLERANCE / 2.0, 0.3];
/// assert_eq!(accuracy(&almost, 2, &[0])?, 1.0);
/// // ... logits are not
/// assert!(accuracy(&[2.0, -1.0], 2, &[0]).is_err());
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub const PROB_SUM_TOLERANCE: f64 = 1e-3;

pub use crate::error::MetricError;

type Result<T> = std::result::Result<T, MetricError>;

fn nonempty(metric: &'static str, what: &'static str, xs: &[f64]) -> Result<()> {
    if xs.is_empty() {
        Err(MetricError::Empty { metric, what })
    } else {
        Ok(())
    }
}

fn finite(metric: &'static str, what: &'static str, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(MetricError::NonFinite { metric, what, index, value: xs[index] }),
        None => Ok(()),
    }
}

fn same_len(metric: &'static str, what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(MetricError::LengthMismatch { metric, what, expected, got })
    }
}

/// `ln Σ exp(xᵢ)`, computed without overflow or underflow.
///
/// The empty sum is zero, so an empty slice gives `-inf`; a slice of `-inf` gives `-inf`; any
/// `+inf` gives `+inf`; any NaN gives NaN. This is the one helper that does not return a
/// `Result`, because every input has a well-defined answer.
///
/// ```
/// use weightspace::metrics::logsumexp;
///
/// assert!((logsumexp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-12);
/// assert_eq!(logsumexp(&[-800.0, f64::NEG_INFINITY]), -800.0);
/// assert_eq!(logsumexp(&[]), f64::NEG_INFINITY);
/// ```
pub fn logsumexp(xs: &[f64]) -> f64 {
    if xs.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// `ln( (1/n) Σ exp(xᵢ) )`, the log of a mean of likelihoods, computed stably.
///
/// `-inf` entries (a sample under which the point is impossible, or whose likelihood underflowed)
/// are allowed and simply contribute zero; the result is finite as long as one entry is.
///
/// ```
/// use weightspace::metrics::log_mean_exp;
///
/// let v = log_mean_exp(&[-1000.0, f64::NEG_INFINITY])?;
/// assert!((v - (-1000.0 - 2f64.ln())).abs() < 1e-12);
/// assert!(log_mean_exp(&[]).is_err());
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn log_mean_exp(xs: &[f64]) -> Result<f64> {
    const M: &str = "log_mean_exp";
    nonempty(M, "xs", xs)?;
    if let Some(index) = xs.iter().position(|x| x.is_nan() || *x == f64::INFINITY) {
        return Err(MetricError::NonFinite { metric: M, what: "xs", index, value: xs[index] });
    }
    Ok(logsumexp(xs) - (xs.len() as f64).ln())
}

fn check_loglik(metric: &'static str, loglik: &[f64], s: usize, n: usize) -> Result<()> {
    if s == 0 {
        return Err(MetricError::Empty { metric, what: "s (posterior samples)" });
    }
    if n == 0 {
        return Err(MetricError::Empty { metric, what: "n (data points)" });
    }
    same_len(metric, "loglik (S×N, row-major)", s * n, loglik.len())?;
    if let Some(index) = loglik.iter().position(|x| x.is_nan() || *x == f64::INFINITY) {
        return Err(MetricError::NonFinite { metric, what: "loglik", index, value: loglik[index] });
    }
    Ok(())
}

/// Per-point log predictive density `lpdᵢ = ln( (1/S) Σₛ p(yᵢ | θₛ) )`.
///
/// `loglik` is row-major S×N: `loglik[s * n + i] = ln p(yᵢ | θₛ)`. Each point is kept (none is
/// dropped), and the log-mean-exp over samples stays finite when some samples underflow to
/// `-inf`; a point that every sample finds impossible gets `-inf`. NaN and `+inf` are errors.
///
/// Use this with [`mean_and_se`] to report the mean lpd with its standard error.
///
/// ```
/// use weightspace::metrics::pointwise_log_predictive_density;
///
/// // sample 0 finds point 1 impossible; sample 1 does not
/// let loglik = [-1.0, f64::NEG_INFINITY,
///               -1.0, -3.0];
/// let lpd = pointwise_log_predictive_density(&loglik, 2, 2)?;
/// assert!((lpd[0] + 1.0).abs() < 1e-12);
/// assert!((lpd[1] - (-3.0 - 2f64.ln())).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn pointwise_log_predictive_density(loglik: &[f64], s: usize, n: usize) -> Result<Vec<f64>> {
    check_loglik("pointwise_log_predictive_density", loglik, s, n)?;
    let ln_s = (s as f64).ln();
    let mut column = vec![0.0; s];
    Ok((0..n)
        .map(|i| {
            for (k, c) in column.iter_mut().enumerate() {
                *c = loglik[k * n + i];
            }
            logsumexp(&column) - ln_s
        })
        .collect())
}

/// Mean log predictive density: the mean over points of [`pointwise_log_predictive_density`].
///
/// This is the negative of the test NLL. `loglik` is row-major S×N. The result is `-inf` when a
/// point is impossible under every sample (it is never silently dropped).
///
/// ```
/// use weightspace::metrics::mean_log_predictive_density;
///
/// // one sample: the mean lpd is the mean log-likelihood
/// let m = mean_log_predictive_density(&[-1.0, -2.0, -3.0], 1, 3)?;
/// assert!((m + 2.0).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn mean_log_predictive_density(loglik: &[f64], s: usize, n: usize) -> Result<f64> {
    check_loglik("mean_log_predictive_density", loglik, s, n)?;
    let lpd = pointwise_log_predictive_density(loglik, s, n)?;
    Ok(lpd.iter().sum::<f64>() / n as f64)
}

/// Sample mean and its standard error `sd / √n` (with the `n − 1` sample standard deviation).
///
/// Needs at least two finite values.
///
/// ```
/// use weightspace::metrics::mean_and_se;
///
/// let (m, se) = mean_and_se(&[1.0, 2.0, 3.0, 4.0])?;
/// assert_eq!(m, 2.5);
/// assert!((se - (5.0f64 / 12.0).sqrt() ).abs() < 1e-12); // sd² = 5/3, n = 4
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn mean_and_se(xs: &[f64]) -> Result<(f64, f64)> {
    const M: &str = "mean_and_se";
    if xs.len() < 2 {
        return Err(MetricError::TooFew { metric: M, what: "xs", needed: 2, got: xs.len() });
    }
    finite(M, "xs", xs)?;
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Ok((mean, (var / n).sqrt()))
}

/// Root-mean-square error between point predictions and targets.
///
/// ```
/// use weightspace::metrics::rmse;
///
/// assert!((rmse(&[1.0, 2.0], &[2.0, 4.0])? - 2.5f64.sqrt()).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn rmse(pred: &[f64], y: &[f64]) -> Result<f64> {
    const M: &str = "rmse";
    nonempty(M, "pred", pred)?;
    same_len(M, "y", pred.len(), y.len())?;
    finite(M, "pred", pred)?;
    finite(M, "y", y)?;
    let sse: f64 = pred.iter().zip(y).map(|(p, t)| (p - t).powi(2)).sum();
    Ok((sse / pred.len() as f64).sqrt())
}

/// Mean negative log-likelihood of targets under independent Gaussian predictives
/// `N(meanᵢ, varianceᵢ)`.
///
/// Use this when the predictive is summarised by its first two moments; for a Monte-Carlo
/// predictive use [`mean_log_predictive_density`].
///
/// ```
/// use weightspace::metrics::gaussian_negative_log_likelihood;
///
/// let nll = gaussian_negative_log_likelihood(&[0.0], &[1.0], &[0.0])?;
/// assert!((nll - 0.5 * (2.0 * std::f64::consts::PI).ln()).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn gaussian_negative_log_likelihood(mean: &[f64], variance: &[f64], y: &[f64]) -> Result<f64> {
    const M: &str = "gaussian_negative_log_likelihood";
    nonempty(M, "mean", mean)?;
    same_len(M, "variance", mean.len(), variance.len())?;
    same_len(M, "y", mean.len(), y.len())?;
    finite(M, "mean", mean)?;
    finite(M, "variance", variance)?;
    finite(M, "y", y)?;
    if let Some(i) = variance.iter().position(|v| *v <= 0.0) {
        return Err(MetricError::InvalidArgument {
            metric: M,
            what: "variance",
            reason: format!("variance[{i}] = {} is not positive", variance[i]),
        });
    }
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let total: f64 = mean.iter().zip(variance).zip(y).map(|((m, v), t)| 0.5 * (ln_2pi + v.ln() + (t - m).powi(2) / v)).sum();
    Ok(total / mean.len() as f64)
}

/// Mean over points of the KL divergence `KL(N(mean_pᵢ, var_pᵢ) ‖ N(mean_qᵢ, var_qᵢ))` between two
/// sets of independent Gaussian predictives, in nats per point.
///
/// With `p` a reference predictive and `q` an approximation, it measures how much of the reference
/// the approximation misses: an approximation that is too narrow or off-centre pays for it. Two
/// predictives given by draws are compared through their first two moments (moment-matched
/// Gaussians per point), not as the mixtures the draws define.
///
/// ```
/// use weightspace::metrics::gaussian_kl;
///
/// assert_eq!(gaussian_kl(&[0.0, 1.0], &[1.0, 2.0], &[0.0, 1.0], &[1.0, 2.0])?, 0.0);
/// // KL(N(0, 1) ‖ N(1, 4)) = ½ (ln 4 + (1 + 1) / 4 − 1)
/// let kl = gaussian_kl(&[0.0], &[1.0], &[1.0], &[4.0])?;
/// assert!((kl - 0.5 * (4f64.ln() + 0.5 - 1.0)).abs() < 1e-12);
/// assert!(gaussian_kl(&[0.0], &[1.0], &[0.0], &[0.0]).is_err()); // a variance must be positive
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn gaussian_kl(mean_p: &[f64], var_p: &[f64], mean_q: &[f64], var_q: &[f64]) -> Result<f64> {
    const M: &str = "gaussian_kl";
    nonempty(M, "mean_p", mean_p)?;
    for (what, v) in [("var_p", var_p), ("mean_q", mean_q), ("var_q", var_q)] {
        same_len(M, what, mean_p.len(), v.len())?;
    }
    for (what, v) in [("mean_p", mean_p), ("var_p", var_p), ("mean_q", mean_q), ("var_q", var_q)] {
        finite(M, what, v)?;
    }
    for (what, v) in [("var_p", var_p), ("var_q", var_q)] {
        if let Some(i) = v.iter().position(|v| *v <= 0.0) {
            return Err(MetricError::InvalidArgument { metric: M, what, reason: format!("{what}[{i}] = {} is not positive", v[i]) });
        }
    }
    let total: f64 =
        (0..mean_p.len()).map(|i| 0.5 * ((var_q[i] / var_p[i]).ln() + (var_p[i] + (mean_p[i] - mean_q[i]).powi(2)) / var_q[i] - 1.0)).sum();
    Ok(total / mean_p.len() as f64)
}

fn check_probs(metric: &'static str, probs: &[f64], n_classes: usize, labels: &[usize]) -> Result<()> {
    if n_classes == 0 {
        return Err(MetricError::Empty { metric, what: "n_classes" });
    }
    if labels.is_empty() {
        return Err(MetricError::Empty { metric, what: "labels" });
    }
    same_len(metric, "probs (N×K, row-major)", labels.len() * n_classes, probs.len())?;
    finite(metric, "probs", probs)?;
    for (index, &label) in labels.iter().enumerate() {
        if label >= n_classes {
            return Err(MetricError::LabelOutOfRange { metric, index, label, n_classes });
        }
    }
    for (row, p) in probs.chunks(n_classes).enumerate() {
        if let Some(k) = p.iter().position(|x| *x < 0.0) {
            return Err(MetricError::NotAProbability { metric, row, reason: format!("entry {k} is negative ({})", p[k]) });
        }
        let sum: f64 = p.iter().sum();
        if (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
            return Err(MetricError::NotAProbability {
                metric,
                row,
                reason: format!(
                    "entries sum to {sum}, not 1 (tolerance {PROB_SUM_TOLERANCE}); \
                     pass probabilities, not logits"
                ),
            });
        }
    }
    Ok(())
}

/// Index and value of the largest entry; ties go to the lowest index.
fn top(p: &[f64]) -> (usize, f64) {
    let mut best = (0, p[0]);
    for (k, &x) in p.iter().enumerate().skip(1) {
        if x > best.1 {
            best = (k, x);
        }
    }
    best
}

/// Fraction of points whose most probable class (ties: the lowest index) is the label.
///
/// `probs` is row-major N×`n_classes`; each row must be a probability vector (see
/// [`PROB_SUM_TOLERANCE`]).
///
/// ```
/// use weightspace::metrics::accuracy;
///
/// let probs = [0.7, 0.3,
///              0.4, 0.6,
///              0.5, 0.5];
/// assert!((accuracy(&probs, 2, &[0, 0, 0])? - 2.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn accuracy(probs: &[f64], n_classes: usize, labels: &[usize]) -> Result<f64> {
    check_probs("accuracy", probs, n_classes, labels)?;
    let correct = probs.chunks(n_classes).zip(labels).filter(|(p, &l)| top(p).0 == l).count();
    Ok(correct as f64 / labels.len() as f64)
}

/// Mean negative log probability of the true class, `−(1/N) Σ ln pᵢ[labelᵢ]`.
///
/// It is `+inf` when a true class has probability zero.
///
/// ```
/// use weightspace::metrics::categorical_negative_log_likelihood;
///
/// let nll = categorical_negative_log_likelihood(&[0.5, 0.5, 0.25, 0.75], 2, &[0, 1])?;
/// assert!((nll - 0.5 * (2f64.ln() + (4.0f64 / 3.0).ln())).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn categorical_negative_log_likelihood(probs: &[f64], n_classes: usize, labels: &[usize]) -> Result<f64> {
    check_probs("categorical_negative_log_likelihood", probs, n_classes, labels)?;
    let total: f64 = probs.chunks(n_classes).zip(labels).map(|(p, &l)| -p[l].ln()).sum();
    Ok(total / labels.len() as f64)
}

/// One bin of a reliability diagram.
///
/// ```
/// use weightspace::metrics::ReliabilityBin;
///
/// let bin = ReliabilityBin { lower: 0.9, upper: 1.0, count: 10,
///                            mean_confidence: Some(0.95), accuracy: Some(0.8) };
/// assert!((bin.gap().unwrap() - 0.15).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge of the bin (included).
    pub lower: f64,
    /// Upper edge of the bin (excluded, except for the last bin, which includes 1).
    pub upper: f64,
    /// Number of points whose top-label confidence falls in the bin.
    pub count: usize,
    /// Mean top-label confidence of those points; `None` for an empty bin.
    pub mean_confidence: Option<f64>,
    /// Fraction of those points whose top label is right; `None` for an empty bin.
    pub accuracy: Option<f64>,
}

impl ReliabilityBin {
    /// `|accuracy − mean_confidence|`, or `None` for an empty bin.
    pub fn gap(&self) -> Option<f64> {
        Some((self.accuracy? - self.mean_confidence?).abs())
    }
}

/// Reliability-diagram data: top-label confidence against accuracy in `n_bins` equal-width bins.
///
/// The confidence of a point is its largest class probability; bin `b` holds confidences in
/// `[b/B, (b+1)/B)`, and the last bin also holds `1`. All `n_bins` bins are returned, empty ones
/// with `count == 0`. Draw it with `weightspace::testing::plot::write_reliability_diagram_png`.
///
/// ```
/// use weightspace::metrics::reliability_diagram;
///
/// let probs = [0.95, 0.05,
///              0.15, 0.85,
///              0.9, 0.1];
/// let bins = reliability_diagram(&probs, 2, &[0, 0, 0], 2)?;
/// assert_eq!(bins.len(), 2);
/// assert_eq!(bins[0].count, 0);
/// assert_eq!(bins[1].count, 3);
/// assert!((bins[1].accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn reliability_diagram(probs: &[f64], n_classes: usize, labels: &[usize], n_bins: usize) -> Result<Vec<ReliabilityBin>> {
    reliability_bins("reliability_diagram", probs, n_classes, labels, n_bins)
}

fn reliability_bins(metric: &'static str, probs: &[f64], n_classes: usize, labels: &[usize], n_bins: usize) -> Result<Vec<ReliabilityBin>> {
    if n_bins == 0 {
        return Err(MetricError::Empty { metric, what: "n_bins" });
    }
    check_probs(metric, probs, n_classes, labels)?;
    let mut count = vec![0usize; n_bins];
    let mut conf_sum = vec![0.0; n_bins];
    let mut correct = vec![0usize; n_bins];
    for (p, &l) in probs.chunks(n_classes).zip(labels) {
        let (k, conf) = top(p);
        let conf = conf.min(1.0);
        let b = ((conf * n_bins as f64).floor() as usize).min(n_bins - 1);
        count[b] += 1;
        conf_sum[b] += conf;
        correct[b] += usize::from(k == l);
    }
    Ok((0..n_bins)
        .map(|b| {
            let c = count[b];
            ReliabilityBin {
                lower: b as f64 / n_bins as f64,
                upper: (b + 1) as f64 / n_bins as f64,
                count: c,
                mean_confidence: (c > 0).then(|| conf_sum[b] / c as f64),
                accuracy: (c > 0).then(|| correct[b] as f64 / c as f64),
            }
        })
        .collect())
}

/// Top-label expected calibration error with `n_bins` equal-width bins (Guo et al. 2017):
/// `ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|`.
///
/// Binning is as in [`reliability_diagram`]. 15 bins is the common choice in the literature.
///
/// ```
/// use weightspace::metrics::expected_calibration_error;
///
/// // perfectly calibrated: confidence 0.75, three of four right
/// let probs = [0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.25, 0.75];
/// let ece = expected_calibration_error(&probs, 2, &[0, 0, 0, 0], 15)?;
/// assert!(ece.abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn expected_calibration_error(probs: &[f64], n_classes: usize, labels: &[usize], n_bins: usize) -> Result<f64> {
    let bins = reliability_bins("expected_calibration_error", probs, n_classes, labels, n_bins)?;
    let n = labels.len() as f64;
    Ok(bins.iter().filter_map(|b| Some(b.count as f64 / n * b.gap()?)).sum())
}

/// Empirical coverage: the fraction of targets with `lower[i] <= y[i] <= upper[i]`.
///
/// For a central 90% predictive interval of a calibrated model, this is close to 0.9.
///
/// ```
/// use weightspace::metrics::interval_coverage;
///
/// let c = interval_coverage(&[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0], &[0.5, 1.0, 2.0])?;
/// assert!((c - 2.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn interval_coverage(lower: &[f64], upper: &[f64], y: &[f64]) -> Result<f64> {
    const M: &str = "interval_coverage";
    nonempty(M, "lower", lower)?;
    same_len(M, "upper", lower.len(), upper.len())?;
    same_len(M, "y", lower.len(), y.len())?;
    finite(M, "lower", lower)?;
    finite(M, "upper", upper)?;
    finite(M, "y", y)?;
    if let Some(i) = lower.iter().zip(upper).position(|(l, u)| l > u) {
        return Err(MetricError::InvalidArgument {
            metric: M,
            what: "upper",
            reason: format!("interval {i} has lower {} > upper {}", lower[i], upper[i]),
        });
    }
    let inside = lower.iter().zip(upper).zip(y).filter(|((l, u), t)| *l <= *t && *t <= *u).count();
    Ok(inside as f64 / y.len() as f64)
}

/// Coverage of central `level` intervals `meanᵢ ± z·stdᵢ` of Gaussian predictives, with
/// `z = Φ⁻¹((1 + level) / 2)`.
///
/// ```
/// use weightspace::metrics::gaussian_interval_coverage;
///
/// // z(0.95) = 1.95996...: 1.9 is inside, 2.0 is outside
/// let c = gaussian_interval_coverage(&[0.0, 0.0], &[1.0, 1.0], &[1.9, -2.0], 0.95)?;
/// assert_eq!(c, 0.5);
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn gaussian_interval_coverage(mean: &[f64], std: &[f64], y: &[f64], level: f64) -> Result<f64> {
    const M: &str = "gaussian_interval_coverage";
    if !(level > 0.0 && level < 1.0) {
        return Err(MetricError::InvalidArgument { metric: M, what: "level", reason: format!("{level} is not in (0, 1)") });
    }
    nonempty(M, "mean", mean)?;
    same_len(M, "std", mean.len(), std.len())?;
    same_len(M, "y", mean.len(), y.len())?;
    finite(M, "mean", mean)?;
    finite(M, "std", std)?;
    finite(M, "y", y)?;
    if let Some(i) = std.iter().position(|s| *s < 0.0) {
        return Err(MetricError::InvalidArgument { metric: M, what: "std", reason: format!("std[{i}] = {} is negative", std[i]) });
    }
    let z = normal_quantile(0.5 + 0.5 * level);
    let inside = mean.iter().zip(std).zip(y).filter(|((m, s), t)| (*t - *m).abs() <= z * *s).count();
    Ok(inside as f64 / y.len() as f64)
}

/// Area under the ROC curve of a score that should be higher out of distribution: the
/// probability that a random OOD input scores higher than a random in-distribution input, ties
/// counting one half. It equals the Mann–Whitney `U` of the OOD scores divided by
/// `n_in · n_out`, computed from mid-ranks in `O((n_in + n_out) log(n_in + n_out))`.
///
/// 1 separates perfectly, 0.5 is chance. Either set empty, or a NaN or infinite score, is an
/// error.
///
/// ```
/// use weightspace::metrics::auroc;
///
/// // 2 × 2 pairs: (0.1 < 0.4) (0.1 < 0.9) (0.4 = 0.4: one half) (0.4 < 0.9) → 3.5 / 4
/// assert_eq!(auroc(&[0.1, 0.4], &[0.4, 0.9])?, 0.875);
/// assert_eq!(auroc(&[0.0, 0.1], &[0.5, 0.6])?, 1.0);
/// assert_eq!(auroc(&[1.0, 1.0], &[1.0])?, 0.5); // all tied
/// assert!(auroc(&[], &[1.0]).is_err());
/// assert!(auroc(&[f64::NAN], &[1.0]).is_err());
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn auroc(scores_in: &[f64], scores_out: &[f64]) -> Result<f64> {
    const M: &str = "auroc";
    nonempty(M, "scores_in", scores_in)?;
    nonempty(M, "scores_out", scores_out)?;
    finite(M, "scores_in", scores_in)?;
    finite(M, "scores_out", scores_out)?;
    let mut all: Vec<(f64, bool)> = scores_in.iter().map(|&s| (s, false)).chain(scores_out.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // sum of the OOD scores' mid-ranks (1-based), tied runs sharing their mean rank
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (n_in, n_out) = (scores_in.len() as f64, scores_out.len() as f64);
    let u = rank_sum - n_out * (n_out + 1.0) / 2.0;
    Ok(u / (n_in * n_out))
}

/// Checks `N×K` rows of class probabilities (no labels): returns `N`.
fn check_prob_rows(metric: &'static str, what: &'static str, probs: &[f64], n_classes: usize) -> Result<usize> {
    if n_classes == 0 {
        return Err(MetricError::Empty { metric, what: "n_classes" });
    }
    nonempty(metric, what, probs)?;
    if !probs.len().is_multiple_of(n_classes) {
        return Err(MetricError::InvalidArgument {
            metric,
            what,
            reason: format!("{} values is not a whole number of rows of {n_classes} classes", probs.len()),
        });
    }
    finite(metric, what, probs)?;
    for (row, p) in probs.chunks(n_classes).enumerate() {
        if let Some(k) = p.iter().position(|x| *x < 0.0) {
            return Err(MetricError::NotAProbability { metric, row, reason: format!("entry {k} is negative ({})", p[k]) });
        }
        let sum: f64 = p.iter().sum();
        if (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
            return Err(MetricError::NotAProbability {
                metric,
                row,
                reason: format!("entries sum to {sum}, not 1 (tolerance {PROB_SUM_TOLERANCE}); pass probabilities, not logits"),
            });
        }
    }
    Ok(probs.len() / n_classes)
}

/// `−Σ_k p_k ln p_k` in nats, with `0 ln 0 = 0`.
fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>()
}

/// Per-point predictive entropy `H[p̄] = −Σ_k p̄_k ln p̄_k` (nats) of `N×K` predictive class
/// probabilities `p̄` (row-major, e.g. [`PredictiveSummary::mean`](crate::PredictiveSummary) of a
/// classifier): total uncertainty, an OOD score (higher = more likely out of distribution).
///
/// ```
/// use weightspace::metrics::predictive_entropy;
///
/// let h = predictive_entropy(&[0.5, 0.5, 1.0, 0.0], 2)?;
/// assert!((h[0] - 2f64.ln()).abs() < 1e-15); // uniform over two classes: ln 2
/// assert_eq!(h[1], 0.0); // certain
/// assert!(predictive_entropy(&[2.0, -1.0], 2).is_err()); // logits, not probabilities
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn predictive_entropy(probs: &[f64], n_classes: usize) -> Result<Vec<f64>> {
    check_prob_rows("predictive_entropy", "probs (N×K, row-major)", probs, n_classes)?;
    Ok(probs.chunks(n_classes).map(entropy).collect())
}

/// Per-point mutual information between the prediction and the weights,
/// `I = H[(1/S) Σ_s p_s] − (1/S) Σ_s H[p_s]` (nats): the epistemic part of the predictive
/// entropy, large where the weight samples disagree. `draw_probs` holds the class probabilities
/// of `S` weight samples at `N` points, row-major `(S, N, K)` (the layout of
/// [`PredictiveDraws::class_probabilities`](crate::export::PredictiveDraws::class_probabilities)
/// with one chain). It is `≥ 0` (up to rounding) and at most `ln K`.
///
/// ```
/// use weightspace::metrics::mutual_information;
///
/// // two samples, two points, two classes
/// let draws = [1.0, 0.0,   0.5, 0.5,   // sample 0: point 0, point 1
///              0.0, 1.0,   0.5, 0.5];  // sample 1
/// let mi = mutual_information(&draws, 2, 2, 2)?;
/// assert!((mi[0] - 2f64.ln()).abs() < 1e-15); // confident samples that disagree: all epistemic
/// assert!(mi[1].abs() < 1e-15); // samples that agree on 50/50: no epistemic part
/// assert!(mutual_information(&draws, 3, 2, 2).is_err()); // wrong length
/// # Ok::<(), weightspace::MetricError>(())
/// ```
pub fn mutual_information(draw_probs: &[f64], s: usize, n: usize, n_classes: usize) -> Result<Vec<f64>> {
    const M: &str = "mutual_information";
    if s == 0 {
        return Err(MetricError::Empty { metric: M, what: "samples S" });
    }
    if n == 0 {
        return Err(MetricError::Empty { metric: M, what: "points N" });
    }
    same_len(M, "draw_probs (S×N×K, row-major)", s * n * n_classes, draw_probs.len())?;
    check_prob_rows(M, "draw_probs (S×N×K, row-major)", draw_probs, n_classes)?;
    let k = n_classes;
    let mut mean = vec![0.0; n * k];
    let mut mean_h = vec![0.0; n];
    for sample in draw_probs.chunks(n * k) {
        for (i, p) in sample.chunks(k).enumerate() {
            mean_h[i] += entropy(p) / s as f64;
            for c in 0..k {
                mean[i * k + c] += p[c] / s as f64;
            }
        }
    }
    Ok(mean.chunks(k).zip(&mean_h).map(|(p, h)| (entropy(p) - h).max(0.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    #[test]
    fn logsumexp_edge_cases() {
        assert_eq!(logsumexp(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert_eq!(logsumexp(&[1.0, f64::INFINITY]), f64::INFINITY);
        assert!(logsumexp(&[1.0, f64::NAN]).is_nan());
        close(logsumexp(&[0.0, 0.0, 0.0]), 3f64.ln(), 1e-15);
        close(logsumexp(&[-1e4, -1e4 + 2f64.ln()]), -1e4 + 3f64.ln(), 1e-10);
        assert!(matches!(log_mean_exp(&[0.0, f64::NAN]), Err(MetricError::NonFinite { index: 1, .. })));
        assert!(log_mean_exp(&[f64::INFINITY]).is_err());
        assert_eq!(log_mean_exp(&[f64::NEG_INFINITY]).unwrap(), f64::NEG_INFINITY);
    }

    #[test]
    fn lpd_keeps_every_point_and_survives_underflow() {
        // 3 samples × 2 points; sample 2 underflows on point 0, and point 1 has huge magnitudes
        let loglik = [-2.0, -5000.0, -3.0, -5001.0, f64::NEG_INFINITY, -4999.0];
        let lpd = pointwise_log_predictive_density(&loglik, 3, 2).unwrap();
        close(lpd[0], ((-2f64).exp() + (-3f64).exp()).ln() - 3f64.ln(), 1e-12);
        let e = [0.0f64, -1.0, 1.0];
        let expect = -5000.0 + e.iter().map(|x| x.exp()).sum::<f64>().ln() - 3f64.ln();
        close(lpd[1], expect, 1e-9);
        let m = mean_log_predictive_density(&loglik, 3, 2).unwrap();
        close(m, 0.5 * (lpd[0] + lpd[1]), 1e-12);
        // an impossible point drags the mean to -inf rather than being dropped
        let m = mean_log_predictive_density(&[f64::NEG_INFINITY, -1.0], 1, 2).unwrap();
        assert_eq!(m, f64::NEG_INFINITY);
    }

    #[test]
    fn lpd_input_errors_name_the_problem() {
        let e = mean_log_predictive_density(&[0.0; 5], 2, 3).unwrap_err();
        assert_eq!(e.to_string(), "mean_log_predictive_density: `loglik (S×N, row-major)` has 5 values, expected 6");
        assert!(matches!(mean_log_predictive_density(&[], 0, 3), Err(MetricError::Empty { .. })));
        let e = mean_log_predictive_density(&[0.0, f64::NAN], 1, 2).unwrap_err();
        assert!(e.to_string().contains("`loglik[1]` is NaN"), "{e}");
    }

    #[test]
    fn mean_and_se_matches_definition_and_rejects_short_input() {
        let (m, se) = mean_and_se(&[2.0, 4.0]).unwrap();
        close(m, 3.0, 0.0);
        close(se, 1.0, 1e-15); // sd = √2, n = 2
        assert!(matches!(mean_and_se(&[1.0]), Err(MetricError::TooFew { .. })));
        assert!(mean_and_se(&[1.0, f64::INFINITY]).is_err());
    }

    #[test]
    fn regression_metrics() {
        close(rmse(&[0.0, 0.0], &[3.0, 4.0]).unwrap(), 12.5f64.sqrt(), 1e-15);
        assert!(rmse(&[], &[]).is_err());
        assert!(rmse(&[f64::NAN], &[0.0]).is_err());
        let nll = gaussian_negative_log_likelihood(&[1.0, 0.0], &[4.0, 1.0], &[3.0, 0.0]).unwrap();
        let ln_2pi = (2.0 * std::f64::consts::PI).ln();
        // point 0: ½(ln 2π + ln 4 + (3 − 1)²/4); point 1: ½ ln 2π; then the mean of the two
        let expect = (0.5 * (ln_2pi + 4f64.ln() + 1.0) + 0.5 * ln_2pi) / 2.0;
        close(nll, expect, 1e-12);
        assert!(gaussian_negative_log_likelihood(&[0.0], &[0.0], &[0.0]).is_err());
    }

    #[test]
    fn gaussian_kl_matches_the_integral_and_rejects_bad_input() {
        // ∫ p (ln p − ln q) by the midpoint rule on ±12 standard deviations of p, per point
        let (mp, vp, mq, vq): ([f64; 2], [f64; 2], [f64; 2], [f64; 2]) = ([0.5, -1.0], [0.7, 2.0], [-0.3, -1.0], [1.9, 0.4]);
        let ln_n = |y: f64, m: f64, v: f64| -0.5 * ((2.0 * std::f64::consts::PI * v).ln() + (y - m).powi(2) / v);
        let integral: f64 = (0..2)
            .map(|i| {
                let (sd, h) = (vp[i].sqrt(), 1e-3);
                (0..(24.0 * sd / h) as usize)
                    .map(|k| {
                        let y = mp[i] - 12.0 * sd + (k as f64 + 0.5) * h;
                        let lp = ln_n(y, mp[i], vp[i]);
                        h * lp.exp() * (lp - ln_n(y, mq[i], vq[i]))
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        close(gaussian_kl(&mp, &vp, &mq, &vq).unwrap(), integral, 1e-7);
        assert!(matches!(gaussian_kl(&[], &[], &[], &[]), Err(MetricError::Empty { .. })));
        assert!(gaussian_kl(&[0.0], &[1.0], &[0.0, 1.0], &[1.0, 1.0]).is_err());
        assert!(gaussian_kl(&[0.0], &[1.0], &[f64::NAN], &[1.0]).is_err());
        assert!(gaussian_kl(&[0.0], &[-1.0], &[0.0], &[1.0]).is_err());
    }

    #[test]
    fn classification_input_validation() {
        let e = accuracy(&[0.5, 0.5], 2, &[2]).unwrap_err();
        assert!(matches!(e, MetricError::LabelOutOfRange { label: 2, .. }));
        let e = accuracy(&[2.0, -1.0], 2, &[0]).unwrap_err();
        assert!(e.to_string().contains("entry 1 is negative"), "{e}");
        let e = accuracy(&[3.0, 1.0], 2, &[0]).unwrap_err();
        assert!(e.to_string().contains("not logits"), "{e}");
        // f32 rounding is admitted
        let p = [0.1f32 as f64, 0.2f32 as f64, 0.7f32 as f64];
        assert_eq!(accuracy(&p, 3, &[2]).unwrap(), 1.0);
        assert!(expected_calibration_error(&[1.0, 0.0], 2, &[0], 0).is_err());
        assert!(accuracy(&[1.0, 0.0, 1.0], 2, &[0, 1]).is_err());
        assert_eq!(categorical_negative_log_likelihood(&[1.0, 0.0], 2, &[1]).unwrap(), f64::INFINITY);
    }

    #[test]
    fn ece_by_hand() {
        // confidences 0.55 (right), 0.65 (wrong), 0.95 (right), 0.95 (right); 10 bins
        // bin 5: conf 0.55 acc 1 -> gap 0.45; bin 6: conf 0.65 acc 0 -> gap 0.65;
        // bin 9: conf 0.95 acc 1 -> gap 0.05, two points
        let probs = [0.55, 0.45, 0.35, 0.65, 0.95, 0.05, 0.05, 0.95];
        let labels = [0, 0, 0, 1];
        let ece = expected_calibration_error(&probs, 2, &labels, 10).unwrap();
        close(ece, (0.45 + 0.65 + 2.0 * 0.05) / 4.0, 1e-12);
        let bins = reliability_diagram(&probs, 2, &labels, 10).unwrap();
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!(bins[9].count, 2);
        assert_eq!(bins[0].mean_confidence, None);
        // confidence exactly 1 lands in the last bin
        let bins = reliability_diagram(&[1.0, 0.0], 2, &[0], 4).unwrap();
        assert_eq!(bins[3].count, 1);
    }

    #[test]
    fn ece_is_small_for_calibrated_and_large_for_overconfident_predictions() {
        // labels drawn from the predicted probabilities themselves are calibrated by construction
        let mut rng = StdRng::seed_from_u64(11);
        let n = 20_000;
        let mut probs = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(n);
        let mut sharp = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let p: f64 = rand::Rng::gen_range(&mut rng, 0.0..1.0);
            probs.extend([p, 1.0 - p]);
            labels.push(usize::from(rand::Rng::gen_range(&mut rng, 0.0..1.0) >= p));
            let q = if p > 0.5 { 1.0 } else { 0.0 };
            sharp.extend([q, 1.0 - q]);
        }
        let ece = expected_calibration_error(&probs, 2, &labels, 15).unwrap();
        // sampling noise of each bin's accuracy is about sqrt(0.25 / (20000/15)) = 0.014
        assert!(ece < 0.03, "calibrated ece {ece}");
        let ece_sharp = expected_calibration_error(&sharp, 2, &labels, 15).unwrap();
        // overconfident: confidence 1, accuracy E[max(p, 1-p)] = 0.75
        close(ece_sharp, 0.25, 0.02);
    }

    #[test]
    fn coverage_of_calibrated_gaussian_intervals() {
        let mut rng = StdRng::seed_from_u64(3);
        let normal = Normal::new(0.0, 1.0).unwrap();
        let n = 10_000;
        let y: Vec<f64> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        let c = gaussian_interval_coverage(&vec![0.0; n], &vec![1.0; n], &y, 0.9).unwrap();
        // binomial sd = sqrt(0.9 * 0.1 / 10000) = 0.003
        close(c, 0.9, 0.012);
        let z = normal_quantile(0.95);
        let lower: Vec<f64> = vec![-z; n];
        let upper: Vec<f64> = vec![z; n];
        assert_eq!(interval_coverage(&lower, &upper, &y).unwrap(), c);
        assert!(interval_coverage(&[1.0], &[0.0], &[0.5]).is_err());
        assert!(gaussian_interval_coverage(&[0.0], &[1.0], &[0.0], 1.0).is_err());
    }

    #[test]
    fn auroc_is_the_mann_whitney_statistic() {
        // brute force over all pairs, ties one half
        let brute = |a: &[f64], b: &[f64]| {
            let mut u = 0.0;
            for x in a {
                for y in b {
                    u += if y > x {
                        1.0
                    } else if y == x {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            u / (a.len() * b.len()) as f64
        };
        let cases: [(&[f64], &[f64]); 5] = [
            (&[0.1, 0.4], &[0.4, 0.9]),
            (&[1.0, 2.0, 3.0], &[0.0, 0.5]),
            (&[2.0, 2.0, 1.0, 3.0], &[2.0, 3.0, 3.0]),
            (&[5.0], &[5.0]),
            (&[0.3, 0.1, 0.2, 0.2], &[0.2, 0.25, 0.05, 0.4, 0.2]),
        ];
        for (a, b) in cases {
            close(auroc(a, b).unwrap(), brute(a, b), 1e-15);
        }
        // hand-computed: 3.5 of 4 pairs; reversed sets give 1 − AUROC
        close(auroc(&[0.1, 0.4], &[0.4, 0.9]).unwrap(), 0.875, 0.0);
        close(auroc(&[0.4, 0.9], &[0.1, 0.4]).unwrap(), 0.125, 0.0);
        close(auroc(&[1.0, 2.0, 3.0], &[0.0, 0.5]).unwrap(), 0.0, 0.0);
        assert!(matches!(auroc(&[], &[1.0]), Err(MetricError::Empty { what: "scores_in", .. })));
        assert!(matches!(auroc(&[1.0], &[]), Err(MetricError::Empty { what: "scores_out", .. })));
        assert!(matches!(auroc(&[1.0], &[f64::NAN]), Err(MetricError::NonFinite { what: "scores_out", index: 0, .. })));
    }

    #[test]
    fn entropy_and_mutual_information_by_hand() {
        // p̄ = (0.7, 0.2, 0.1): H = −Σ p ln p
        let h = predictive_entropy(&[0.7, 0.2, 0.1], 3).unwrap();
        close(h[0], -(0.7f64 * 0.7f64.ln() + 0.2 * 0.2f64.ln() + 0.1 * 0.1f64.ln()), 1e-15);
        // two samples at one point: (0.9, 0.1) and (0.3, 0.7); mean (0.6, 0.4)
        let hb = |p: f64| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        let mi = mutual_information(&[0.9, 0.1, 0.3, 0.7], 2, 1, 2).unwrap();
        close(mi[0], hb(0.6) - (hb(0.9) + hb(0.3)) / 2.0, 1e-15);
        // identical samples: no epistemic part, whatever the entropy
        let mi = mutual_information(&[0.2, 0.8, 0.2, 0.8, 0.2, 0.8], 3, 1, 2).unwrap();
        assert!(mi[0].abs() < 1e-15);
        // errors: empty, ragged, not probabilities, NaN
        assert!(predictive_entropy(&[], 2).is_err());
        assert!(predictive_entropy(&[0.5, 0.5, 1.0], 2).is_err());
        assert!(predictive_entropy(&[0.5, 0.5], 0).is_err());
        assert!(matches!(predictive_entropy(&[0.5, f64::NAN], 2), Err(MetricError::NonFinite { .. })));
        assert!(matches!(mutual_information(&[0.9, 0.1], 1, 2, 2), Err(MetricError::LengthMismatch { .. })));
        assert!(matches!(mutual_information(&[0.9, 0.3], 1, 1, 2), Err(MetricError::NotAProbability { row: 0, .. })));
        assert!(mutual_information(&[], 0, 1, 2).is_err());
    }
}
