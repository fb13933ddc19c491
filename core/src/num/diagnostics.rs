//! MCMC convergence diagnostics: split R-hat, rank-normalised bulk and tail ESS, and MCSE
//! (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-normalization, folding, and
//! localization: an improved R-hat for assessing convergence of MCMC").
//!
//! Draws of one scalar quantity are passed as chains, `&[Vec<f64>]`: `chains[c][t]` is draw `t`
//! of chain `c`. All chains must have the same length. A single chain is fine: every estimator
//! splits each chain in half first (dropping the middle draw of an odd-length chain).
//!
//! The ESS estimator is the one of Stan and the R package `posterior` (`ess_rfun`): biased
//! autocovariances averaged over chains, combined with the between-chain variance, summed with
//! Geyer's initial positive sequence made monotone, and the "improved" truncation term. The tests
//! check every function against ArviZ on fixed arrays.
//!
//! | quantity | function | recommended threshold |
//! | --- | --- | --- |
//! | rank-normalised split R-hat | [`rhat`] | < 1.01 |
//! | bulk ESS | [`ess_bulk`] | > 100 per chain |
//! | tail ESS (5% and 95% quantiles) | [`ess_tail`] | > 100 per chain |
//! | MCSE of the mean | [`mcse_mean`] | small relative to the posterior sd |
//! | MCSE of the sd | [`mcse_sd`] | small relative to the posterior sd |
//! | highest-density interval | [`hdi`] | |
//! | all of the above, per quantity | [`summarize`], [`SummaryTable`] (prints like `az.summary`) | |
//!
//! Every column of [`SummaryTable`] agrees with `az.summary` of ArviZ 0.23.4 (the version
//! `scripts/requirements.txt` pins) to 1e-6 on the fixtures in this module's tests (in practice to
//! ~1e-12), including ArviZ's answers for degenerate draws: constant draws have an ESS equal to
//! their number and a NaN R-hat, chains each stuck at a different value an infinite R-hat, and a
//! single chain a NaN R-hat. The standalone estimators ([`ess_bulk`], [`rhat`], ...) refuse
//! constant draws with [`DiagnosticsError::Constant`] instead.
//!
//! ```
//! use weightspace::diagnostics::{ess_bulk, rhat, summarize};
//!
//! // four chains of an AR(1) process with coefficient 0.5, driven by a fixed sequence
//! let chains: Vec<Vec<f64>> = (0..4)
//!     .map(|c| {
//!         let mut x = 0.0;
//!         (0..500)
//!             .map(|t| {
//!                 let u = ((c * 7919 + t * 104_729) % 1000) as f64 / 1000.0 - 0.5;
//!                 x = 0.5 * x + u;
//!                 x
//!             })
//!             .collect()
//!     })
//!     .collect();
//! let s = summarize(&chains)?;
//! assert!(s.rhat < 1.05);
//! assert!(s.ess_bulk > 100.0 && s.ess_bulk <= 4.0 * 500.0 * 3.0);
//! assert_eq!(s.ess_bulk, ess_bulk(&chains)?);
//! assert_eq!(s.rhat, rhat(&chains)?);
//! # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
//! ```

use thiserror::Error;

use super::special::normal_quantile;

/// Why a diagnostic could not be computed.
///
/// ```
/// use weightspace::diagnostics::{rhat, DiagnosticsError};
///
/// let err = rhat(&[vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 2.0]]).unwrap_err();
/// assert_eq!(err, DiagnosticsError::Ragged { chain: 1, expected: 4, got: 2 });
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DiagnosticsError {
    /// No chains were given.
    #[error("no chains given")]
    NoChains,
    /// Chains differ in length.
    #[error("chain {chain} has {got} draws, but chain 0 has {expected}; chains must be equally long")]
    Ragged {
        /// Index of the first chain whose length differs.
        chain: usize,
        /// Length of chain 0.
        expected: usize,
        /// Length of that chain.
        got: usize,
    },
    /// Too few draws per chain for the estimator.
    #[error("{what} needs at least {needed} draws per chain, got {got}")]
    TooFewDraws {
        /// The estimator.
        what: &'static str,
        /// Draws per chain needed.
        needed: usize,
        /// Draws per chain given.
        got: usize,
    },
    /// A draw is NaN or infinite.
    #[error("draw {draw} of chain {chain} is {value}")]
    NonFinite {
        /// Chain index.
        chain: usize,
        /// Draw index.
        draw: usize,
        /// The value.
        value: f64,
    },
    /// All draws (or all transformed draws) are equal, so the estimator is undefined.
    #[error("{what}: the draws are constant, so the estimate is undefined")]
    Constant {
        /// The estimator.
        what: &'static str,
    },
    /// A probability argument (the HDI mass) outside `(0, 1)`.
    #[error("{what}: probability {value} must lie strictly between 0 and 1")]
    InvalidProbability {
        /// The estimator.
        what: &'static str,
        /// The value given.
        value: f64,
    },
}

type Result<T> = std::result::Result<T, DiagnosticsError>;

fn validate(what: &'static str, chains: &[Vec<f64>], needed: usize) -> Result<usize> {
    let first = chains.first().ok_or(DiagnosticsError::NoChains)?;
    let n = first.len();
    for (chain, c) in chains.iter().enumerate() {
        if c.len() != n {
            return Err(DiagnosticsError::Ragged { chain, expected: n, got: c.len() });
        }
        if let Some(draw) = c.iter().position(|x| !x.is_finite()) {
            return Err(DiagnosticsError::NonFinite { chain, draw, value: c[draw] });
        }
    }
    if n < needed {
        return Err(DiagnosticsError::TooFewDraws { what, needed, got: n });
    }
    Ok(n)
}

/// NumPy's `finfo(float).resolution`: ArviZ treats draws whose range is below it as constant.
const RESOLUTION: f64 = 1e-15;

fn range(chains: &[Vec<f64>]) -> f64 {
    let (lo, hi) = chains.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    hi - lo
}

/// [`validate`], and constant draws are an error (ArviZ returns the number of draws as their ESS
/// and NaN as their R-hat; the standalone estimators refuse them, the summary follows ArviZ).
fn validate_varying(what: &'static str, chains: &[Vec<f64>], needed: usize) -> Result<usize> {
    let n = validate(what, chains, needed)?;
    if range(chains) < RESOLUTION {
        return Err(DiagnosticsError::Constant { what });
    }
    Ok(n)
}

/// Splits every chain into its first and second half (dropping the middle draw when the length
/// is odd), doubling the number of chains. Input is not validated.
///
/// ```
/// use weightspace::diagnostics::split_chains;
///
/// let s = split_chains(&[vec![1.0, 2.0, 3.0, 4.0, 5.0]]);
/// assert_eq!(s, vec![vec![1.0, 2.0], vec![4.0, 5.0]]);
/// ```
pub fn split_chains(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(2 * chains.len());
    for c in chains {
        let half = c.len() / 2;
        out.push(c[..half].to_vec());
    }
    for c in chains {
        let half = c.len() / 2;
        out.push(c[c.len() - half..].to_vec());
    }
    out
}

/// Average ranks (1-based, ties get the mean of their positions) of all draws pooled.
fn pooled_ranks(chains: &[Vec<f64>]) -> Vec<f64> {
    let all: Vec<f64> = chains.iter().flatten().copied().collect();
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.sort_by(|&a, &b| all[a].total_cmp(&all[b]));
    let mut ranks = vec![0.0; all.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && all[idx[j + 1]] == all[idx[i]] {
            j += 1;
        }
        let r = 0.5 * ((i + 1) + (j + 1)) as f64;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Rank-normalises draws: pooled average ranks `r` mapped to `Φ⁻¹((r − 3/8) / (S + 1/4))`
/// (Blom's offset, as in Vehtari et al. 2021), keeping the chain structure.
///
/// ```
/// use weightspace::diagnostics::rank_normalize;
///
/// let z = rank_normalize(&[vec![10.0, 30.0], vec![20.0, 1000.0]]);
/// assert!(z[0][0] < z[1][0] && z[1][0] < z[0][1] && z[0][1] < z[1][1]);
/// assert!((z[0][0] + z[1][1]).abs() < 1e-12); // symmetric around 0
/// ```
pub fn rank_normalize(chains: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let ranks = pooled_ranks(chains);
    let s = ranks.len() as f64;
    let mut it = ranks.into_iter();
    chains.iter().map(|c| c.iter().map(|_| normal_quantile((it.next().expect("same count") - 0.375) / (s + 0.25))).collect()).collect()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Sample quantile, linear interpolation between order statistics (R's type 7, NumPy's default).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Classic R-hat of (already split or not) chains: `√((W (n−1)/n + B/n) / W)`.
fn rhat_of(what: &'static str, chains: &[Vec<f64>]) -> Result<f64> {
    let m = chains.len() as f64;
    let n = chains[0].len() as f64;
    let means: Vec<f64> = chains.iter().map(|c| c.iter().sum::<f64>() / n).collect();
    let w = chains.iter().zip(&means).map(|(c, mu)| c.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0)).sum::<f64>() / m;
    let grand = means.iter().sum::<f64>() / m;
    let b_over_n = means.iter().map(|mu| (mu - grand).powi(2)).sum::<f64>() / (m - 1.0);
    // chains constant within but different between give W = 0 and R-hat = ∞, as in ArviZ
    if w.is_nan() || (w <= 0.0 && b_over_n <= 0.0) {
        return Err(DiagnosticsError::Constant { what });
    }
    Ok(((b_over_n * n / w + n - 1.0) / n).sqrt())
}

/// Classic split R-hat (Gelman et al., BDA3 §11.4) on the raw draws.
///
/// Prefer [`rhat`], which also catches chains that differ in scale or have heavy tails.
///
/// ```
/// use weightspace::diagnostics::split_rhat;
///
/// // one chain that drifts: its halves disagree
/// let drift: Vec<f64> = (0..100).map(|t| t as f64 / 10.0).collect();
/// assert!(split_rhat(&[drift])? > 1.5);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn split_rhat(chains: &[Vec<f64>]) -> Result<f64> {
    validate_varying("split_rhat", chains, 4)?;
    rhat_of("split_rhat", &split_chains(chains))
}

/// Rank-normalised split R-hat (Vehtari et al. 2021): the larger of the split R-hat of the
/// rank-normalised draws (bulk) and of the rank-normalised draws folded around the median
/// (tail). Values above 1.01 signal that the chains have not mixed.
///
/// ```
/// use weightspace::diagnostics::rhat;
///
/// // two chains that agree in location but not in scale: only the folded part sees it
/// let a: Vec<f64> = (0..200).map(|t| ((t * 37) % 200) as f64 / 100.0 - 1.0).collect();
/// let b: Vec<f64> = a.iter().map(|x| 10.0 * x).collect();
/// assert!(rhat(&[a, b])? > 1.1);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn rhat(chains: &[Vec<f64>]) -> Result<f64> {
    validate_varying("rhat", chains, 4)?;
    let split = split_chains(chains);
    let mut all: Vec<f64> = split.iter().flatten().copied().collect();
    rank_rhat(&split, median(&mut all))
}

/// The larger of the bulk R-hat (rank-normalised split chains) and the tail R-hat (the same,
/// folded around `center` first).
fn rank_rhat(split: &[Vec<f64>], center: f64) -> Result<f64> {
    let bulk = rhat_of("rhat (bulk)", &rank_normalize(split))?;
    let folded: Vec<Vec<f64>> = split.iter().map(|c| c.iter().map(|x| (x - center).abs()).collect()).collect();
    // folded draws can be constant (two values symmetric about the median); ArviZ's tail R-hat is
    // NaN then, and its `max(bulk, tail)` keeps the bulk value
    let tail = rhat_of("rhat (tail)", &rank_normalize(&folded)).unwrap_or(f64::NAN);
    Ok(bulk.max(tail))
}

/// R-hat as `az.summary` reports it: like [`rhat`], but folding around the median of all draws
/// (the middle draw of odd-length chains included), and NaN for a single chain.
fn summary_rhat(chains: &[Vec<f64>]) -> Result<f64> {
    if chains.len() < 2 {
        return Ok(f64::NAN);
    }
    let mut all: Vec<f64> = chains.iter().flatten().copied().collect();
    rank_rhat(&split_chains(chains), median(&mut all))
}

/// Biased autocovariance at `lag` of one chain around its mean, divided by the chain length.
fn autocov(c: &[f64], mean: f64, lag: usize) -> f64 {
    let n = c.len();
    c[..n - lag].iter().zip(&c[lag..]).map(|(a, b)| (a - mean) * (b - mean)).sum::<f64>() / n as f64
}

/// ESS of chains as they are (no split, no transformation): Stan's / `posterior`'s `ess_rfun`.
fn ess_of(what: &'static str, chains: &[Vec<f64>]) -> Result<f64> {
    let m = chains.len();
    let n = chains[0].len();
    if n < 3 {
        return Err(DiagnosticsError::TooFewDraws { what, needed: 6, got: 2 * n });
    }
    if range(chains) < RESOLUTION {
        // ArviZ: the ESS of constant draws is their number
        return Ok((m * n) as f64);
    }
    let nf = n as f64;
    let means: Vec<f64> = chains.iter().map(|c| c.iter().sum::<f64>() / nf).collect();
    let acov_mean = |lag: usize| -> f64 { chains.iter().zip(&means).map(|(c, mu)| autocov(c, *mu, lag)).sum::<f64>() / m as f64 };
    let mean_var = acov_mean(0) * nf / (nf - 1.0);
    let mut var_plus = mean_var * (nf - 1.0) / nf;
    if m > 1 {
        let grand = means.iter().sum::<f64>() / m as f64;
        var_plus += means.iter().map(|mu| (mu - grand).powi(2)).sum::<f64>() / (m as f64 - 1.0);
    }
    if var_plus.is_nan() || var_plus <= 0.0 {
        return Err(DiagnosticsError::Constant { what });
    }
    // rho[k] is the combined autocorrelation at lag k (0-based; posterior's R code is 1-based)
    let mut rho = vec![0.0; n + 1];
    let mut rho_even = 1.0;
    rho[0] = rho_even;
    let mut rho_odd = 1.0 - (mean_var - acov_mean(1)) / var_plus;
    rho[1] = rho_odd;
    // Geyer's initial positive sequence
    let mut t = 0usize;
    while t + 5 < n && rho_even + rho_odd > 0.0 {
        t += 2;
        rho_even = 1.0 - (mean_var - acov_mean(t)) / var_plus;
        rho_odd = 1.0 - (mean_var - acov_mean(t + 1)) / var_plus;
        if rho_even + rho_odd >= 0.0 {
            rho[t] = rho_even;
            rho[t + 1] = rho_odd;
        }
    }
    let max_t = t;
    // the last positive even term reduces variance for antithetic chains
    if rho_even > 0.0 {
        rho[max_t] = rho_even;
    }
    // Geyer's initial monotone sequence
    let mut t = 0usize;
    while t + 4 <= max_t {
        t += 2;
        if rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1] {
            rho[t] = 0.5 * (rho[t - 2] + rho[t - 1]);
            rho[t + 1] = rho[t];
        }
    }
    let total = (m * n) as f64;
    let head: f64 = rho[..max_t].iter().sum();
    let tau = (-1.0 + 2.0 * head + rho[max_t]).max(1.0 / total.log10());
    Ok(total / tau)
}

/// ESS of the mean of the raw draws (split chains, no rank normalisation): `posterior::ess_mean`,
/// ArviZ `method="mean"`. This is the ESS to use for the MCSE of a posterior mean.
///
/// ```
/// use weightspace::diagnostics::ess_mean;
///
/// // a perfectly antithetic chain has ESS above the number of draws
/// let alt: Vec<f64> = (0..100).map(|t| if t % 2 == 0 { 1.0 } else { -1.0 }).collect();
/// assert!(ess_mean(&[alt])? > 100.0);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_mean(chains: &[Vec<f64>]) -> Result<f64> {
    validate_varying("ess_mean", chains, 6)?;
    ess_of("ess_mean", &split_chains(chains))
}

/// Bulk ESS: the ESS of the rank-normalised split chains (Vehtari et al. 2021). Robust to heavy
/// tails; the ESS to look at for the center of the distribution.
///
/// ```
/// use weightspace::diagnostics::ess_bulk;
///
/// let sticky: Vec<f64> = (0..400).map(|t| ((t / 20) % 7) as f64 + (t % 20) as f64 * 1e-3).collect();
/// assert!(ess_bulk(&[sticky])? < 100.0);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_bulk(chains: &[Vec<f64>]) -> Result<f64> {
    validate_varying("ess_bulk", chains, 6)?;
    ess_of("ess_bulk", &rank_normalize(&split_chains(chains)))
}

/// ESS of the empirical CDF at the `prob` quantile: the ESS of the split indicator chains
/// `I(x ≤ q̂)`, with `q̂` the type-7 sample quantile of all draws.
///
/// ```
/// use weightspace::diagnostics::ess_quantile;
///
/// let x: Vec<f64> = (0..200).map(|t| ((t * 61) % 200) as f64).collect();
/// assert!(ess_quantile(&[x], 0.5)? > 0.0);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_quantile(chains: &[Vec<f64>], prob: f64) -> Result<f64> {
    validate_varying("ess_quantile", chains, 6)?;
    let mut all: Vec<f64> = chains.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let q = quantile(&all, prob.clamp(0.0, 1.0));
    let ind: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| f64::from(u8::from(*x <= q))).collect()).collect();
    ess_of("ess_quantile", &split_chains(&ind))
}

/// Tail ESS: the smaller of the ESS of the 5% and the 95% quantile (Vehtari et al. 2021).
///
/// ```
/// use weightspace::diagnostics::{ess_bulk, ess_tail};
///
/// let x: Vec<f64> = (0..400).map(|t| ((t * 163) % 400) as f64).collect();
/// assert!(ess_tail(&[x.clone()])? > 0.0 && ess_bulk(&[x])? > 0.0);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_tail(chains: &[Vec<f64>]) -> Result<f64> {
    Ok(ess_quantile(chains, 0.05)?.min(ess_quantile(chains, 0.95)?))
}

/// Monte-Carlo standard error of the mean: `sd / √ess_mean`, with the `n − 1` sd of all draws.
///
/// ```
/// use weightspace::diagnostics::mcse_mean;
///
/// let x: Vec<f64> = (0..1000).map(|t| ((t * 7919) % 1000) as f64 / 1000.0).collect();
/// let mcse = mcse_mean(&[x])?;
/// assert!(mcse > 0.0 && mcse < 0.02);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn mcse_mean(chains: &[Vec<f64>]) -> Result<f64> {
    let ess = ess_mean(chains)?;
    Ok(pooled_sd(chains) / ess.sqrt())
}

fn pooled_sd(chains: &[Vec<f64>]) -> f64 {
    let n = chains.iter().map(Vec::len).sum::<usize>() as f64;
    let mean = chains.iter().flatten().sum::<f64>() / n;
    (chains.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Monte-Carlo standard error of the posterior sd, as ArviZ 0.23 computes it for `az.summary`
/// (`mcse_sd`): with `s_t = (x_t − x̄)²`, `Var(s) / ess_mean(s)` is the variance of the variance
/// estimate, and the delta method divides it by `4 · mean(s)` to reach the sd:
/// `√(((mean(s²) − mean(s)²) / ess_mean(s)) / mean(s) / 4)`.
///
/// ```
/// use weightspace::diagnostics::{mcse_mean, mcse_sd};
///
/// let x: Vec<f64> = (0..1000).map(|t| ((t * 7919) % 1000) as f64 / 1000.0).collect();
/// let (m, s) = (mcse_mean(&[x.clone()])?, mcse_sd(&[x])?);
/// // uniform draws: the sd is estimated about as precisely as the mean
/// assert!(s > 0.0 && s < m);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn mcse_sd(chains: &[Vec<f64>]) -> Result<f64> {
    validate_varying("mcse_sd", chains, 6)?;
    let n = chains.iter().map(Vec::len).sum::<usize>() as f64;
    let mean = chains.iter().flatten().sum::<f64>() / n;
    let sq: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| (x - mean).powi(2)).collect()).collect();
    let ess = ess_of("mcse_sd", &split_chains(&sq))?;
    let evar = sq.iter().flatten().sum::<f64>() / n;
    let varvar = (sq.iter().flatten().map(|v| v * v).sum::<f64>() / n - evar * evar) / ess;
    Ok((varvar / evar / 4.0).sqrt())
}

/// Highest-density interval of mass `prob` of all draws pooled (ArviZ 0.23's `az.hdi`, unimodal):
/// with the `n` draws sorted and `k = ⌊prob · n⌋`, the narrowest window `[x₍ᵢ₎, x₍ᵢ₊ₖ₎]`, the
/// first one when several are equally narrow. `az.summary` reports it with `prob = 0.94`, as
/// `hdi_3%` and `hdi_97%`.
///
/// ```
/// use weightspace::diagnostics::hdi;
///
/// // 0..=99 with one far outlier: the 94% HDI keeps to the dense part
/// let mut x: Vec<f64> = (0..100).map(f64::from).collect();
/// x.push(1e6);
/// let (lo, hi) = hdi(&[x], 0.94)?;
/// assert_eq!((lo, hi), (0.0, 94.0)); // k = ⌊0.94 · 101⌋ = 94
/// assert!(hdi(&[vec![1.0; 10]], 1.5).is_err());
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn hdi(chains: &[Vec<f64>], prob: f64) -> Result<(f64, f64)> {
    validate("hdi", chains, 1)?;
    if !(prob > 0.0 && prob < 1.0) {
        return Err(DiagnosticsError::InvalidProbability { what: "hdi", value: prob });
    }
    let mut all: Vec<f64> = chains.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let n = all.len();
    let k = (prob * n as f64).floor() as usize;
    if k >= n {
        return Err(DiagnosticsError::TooFewDraws { what: "hdi", needed: n + 1, got: n });
    }
    let mut best = 0;
    let mut width = f64::INFINITY;
    for i in 0..n - k {
        let w = all[i + k] - all[i];
        if w < width {
            width = w;
            best = i;
        }
    }
    Ok((all[best], all[best + k]))
}

/// The per-quantity summary of an MCMC run: the columns of ArviZ's `az.summary` (plus the ESS of
/// the mean), computed as ArviZ 0.23.4 computes them. [`Summary::columns`] lists them in
/// `az.summary`'s order.
///
/// ```
/// use weightspace::diagnostics::summarize;
///
/// let x: Vec<f64> = (0..400).map(|t| ((t * 163) % 400) as f64 / 400.0).collect();
/// let s = summarize(&[x[..200].to_vec(), x[200..].to_vec()])?;
/// assert!((s.mean - 0.49875).abs() < 1e-12);
/// assert!(s.mcse_mean > 0.0 && s.mcse_sd > 0.0);
/// assert!(s.hdi_lower < s.mean && s.mean < s.hdi_upper);
/// assert_eq!(s.columns()[0], s.mean);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Mean of all draws.
    pub mean: f64,
    /// Standard deviation of all draws (`n − 1`, as `az.summary`).
    pub sd: f64,
    /// Lower end of the highest-density interval ([`hdi`]; 94% unless asked otherwise).
    pub hdi_lower: f64,
    /// Upper end of the highest-density interval.
    pub hdi_upper: f64,
    /// Monte-Carlo standard error of the mean.
    pub mcse_mean: f64,
    /// Monte-Carlo standard error of the sd ([`mcse_sd`]).
    pub mcse_sd: f64,
    /// ESS of the mean ([`ess_mean`]).
    pub ess_mean: f64,
    /// Bulk ESS ([`ess_bulk`]).
    pub ess_bulk: f64,
    /// Tail ESS ([`ess_tail`]).
    pub ess_tail: f64,
    /// Rank-normalised split R-hat as `az.summary` reports it: the tail part folds around the
    /// median of all draws, and a single chain gives NaN (with several chains of even length it
    /// equals [`rhat`]).
    pub rhat: f64,
}

impl Summary {
    /// The values in `az.summary`'s column order: mean, sd, HDI lower, HDI upper, mcse_mean,
    /// mcse_sd, ess_bulk, ess_tail, r_hat (see [`SummaryTable::column_names`]).
    ///
    /// ```
    /// use weightspace::diagnostics::summarize;
    /// let x: Vec<f64> = (0..100).map(|t| ((t * 37) % 100) as f64).collect();
    /// let s = summarize(&[x[..50].to_vec(), x[50..].to_vec()])?;
    /// let c = s.columns();
    /// assert_eq!((c[1], c[6], c[8]), (s.sd, s.ess_bulk, s.rhat));
    /// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
    /// ```
    pub fn columns(&self) -> [f64; 9] {
        [self.mean, self.sd, self.hdi_lower, self.hdi_upper, self.mcse_mean, self.mcse_sd, self.ess_bulk, self.ess_tail, self.rhat]
    }
}

/// Computes every field of [`Summary`], with the 94% HDI that `az.summary` reports by default.
///
/// ```
/// use weightspace::diagnostics::summarize;
/// // two well-mixed chains of a deterministic low-discrepancy sequence in [0, 1)
/// let chain = |k: usize| -> Vec<f64> { (0..300).map(|t| ((t * 163 + k) % 300) as f64 / 300.0).collect() };
/// let s = summarize(&[chain(0), chain(7)])?;
/// assert!((s.mean - 0.5).abs() < 0.01);
/// assert!((s.rhat - 1.0).abs() < 0.05);
/// assert!(s.ess_bulk > 100.0 && s.sd > 0.0);
/// // a single chain has no R-hat in az.summary
/// assert!(summarize(&[chain(0)])?.rhat.is_nan());
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn summarize(chains: &[Vec<f64>]) -> Result<Summary> {
    summarize_with(chains, DEFAULT_HDI_PROB)
}

/// ArviZ's default HDI mass in `az.summary`: 94%.
///
/// ```
/// use weightspace::diagnostics::{summarize, summarize_with, DEFAULT_HDI_PROB};
/// let chains: Vec<Vec<f64>> = (0..4).map(|c| (0..100).map(|i| ((i * 37 + c * 11) % 100) as f64).collect()).collect();
/// assert_eq!(summarize(&chains)?.hdi_lower, summarize_with(&chains, DEFAULT_HDI_PROB)?.hdi_lower);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub const DEFAULT_HDI_PROB: f64 = 0.94;

/// [`summarize`] with an HDI of mass `hdi_prob`.
///
/// ```
/// use weightspace::diagnostics::{summarize, summarize_with};
/// let x: Vec<f64> = (0..200).map(|t| ((t * 61) % 200) as f64).collect();
/// let wide = summarize(&[x.clone()])?;
/// let narrow = summarize_with(&[x], 0.5)?;
/// assert!(narrow.hdi_upper - narrow.hdi_lower < wide.hdi_upper - wide.hdi_lower);
/// assert_eq!(narrow.mean, wide.mean);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
pub fn summarize_with(chains: &[Vec<f64>], hdi_prob: f64) -> Result<Summary> {
    validate("summarize", chains, 6)?;
    let n = chains.iter().map(Vec::len).sum::<usize>() as f64;
    if range(chains) < RESOLUTION {
        // what az.summary reports for constant draws
        let x = chains[0][0];
        let (lo, hi) = hdi(chains, hdi_prob)?;
        let size = split_chains(chains).iter().map(Vec::len).sum::<usize>() as f64;
        return Ok(Summary {
            mean: x,
            sd: 0.0,
            hdi_lower: lo,
            hdi_upper: hi,
            mcse_mean: 0.0,
            mcse_sd: f64::NAN,
            ess_mean: size,
            ess_bulk: size,
            ess_tail: size,
            rhat: f64::NAN,
        });
    }
    let ess_mean = ess_mean(chains)?;
    let sd = pooled_sd(chains);
    let (hdi_lower, hdi_upper) = hdi(chains, hdi_prob)?;
    Ok(Summary {
        mean: chains.iter().flatten().sum::<f64>() / n,
        sd,
        hdi_lower,
        hdi_upper,
        mcse_mean: sd / ess_mean.sqrt(),
        mcse_sd: mcse_sd(chains)?,
        ess_mean,
        ess_bulk: ess_bulk(chains)?,
        ess_tail: ess_tail(chains)?,
        rhat: summary_rhat(chains)?,
    })
}

/// A table like ArviZ's `az.summary`: one named row per scalar quantity, with the columns
/// `mean sd hdi_3% hdi_97% mcse_mean mcse_sd ess_bulk ess_tail r_hat` (for the default 94% HDI).
/// Its `Display` prints it aligned, as users know it from ArviZ.
///
/// Row names follow ArviZ: `w[3]` for element 3 of a vector `w`, `f[2, 0]` for a matrix element.
///
/// ```
/// use weightspace::diagnostics::SummaryTable;
///
/// let a: Vec<f64> = (0..200).map(|t| ((t * 37) % 200) as f64 / 200.0).collect();
/// let b: Vec<f64> = a.iter().map(|x| 3.0 * x - 1.0).collect();
/// let mut table = SummaryTable::new();
/// table.push("theta[0]", &[a[..100].to_vec(), a[100..].to_vec()])?;
/// table.push("theta[1]", &[b[..100].to_vec(), b[100..].to_vec()])?;
/// assert_eq!(table.column_names()[2], "hdi_3%");
/// let printed = table.to_string();
/// assert!(printed.lines().next().unwrap().contains("mcse_sd"));
/// assert!(printed.contains("theta[1]"));
/// assert!((table.get("theta[1]").unwrap().mean - (3.0 * table.rows[0].1.mean - 1.0)).abs() < 1e-12);
/// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTable {
    /// The HDI mass (default [`DEFAULT_HDI_PROB`]).
    pub hdi_prob: f64,
    /// The rows, in the order they were pushed.
    pub rows: Vec<(String, Summary)>,
}

impl Default for SummaryTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SummaryTable {
    /// An empty table with the 94% HDI.
    pub fn new() -> Self {
        Self::with_hdi_prob(DEFAULT_HDI_PROB)
    }

    /// An empty table with an HDI of mass `hdi_prob` (checked when rows are pushed).
    ///
    /// ```
    /// use weightspace::diagnostics::SummaryTable;
    /// let t = SummaryTable::with_hdi_prob(0.9);
    /// assert_eq!(&t.column_names()[2..4], &["hdi_5%".to_string(), "hdi_95%".to_string()]);
    /// ```
    pub fn with_hdi_prob(hdi_prob: f64) -> Self {
        Self { hdi_prob, rows: Vec::new() }
    }

    /// Summarises `chains` (`[chain][draw]`) as the row `name`.
    pub fn push(&mut self, name: impl Into<String>, chains: &[Vec<f64>]) -> Result<()> {
        let s = summarize_with(chains, self.hdi_prob)?;
        self.rows.push((name.into(), s));
        Ok(())
    }

    /// The row called `name`.
    pub fn get(&self, name: &str) -> Option<&Summary> {
        self.rows.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// The column names, as `az.summary` writes them (`hdi_3%`, `hdi_97%` for the 94% HDI).
    pub fn column_names(&self) -> [String; 9] {
        let alpha = 1.0 - self.hdi_prob;
        [
            "mean".into(),
            "sd".into(),
            format!("hdi_{}%", format_g(100.0 * alpha / 2.0)),
            format!("hdi_{}%", format_g(100.0 * (1.0 - alpha / 2.0))),
            "mcse_mean".into(),
            "mcse_sd".into(),
            "ess_bulk".into(),
            "ess_tail".into(),
            "r_hat".into(),
        ]
    }

    /// Column `j` (in [`column_names`](Self::column_names) order) over the rows.
    ///
    /// ```
    /// use weightspace::diagnostics::SummaryTable;
    /// let x: Vec<f64> = (0..100).map(|t| ((t * 37) % 100) as f64).collect();
    /// let mut t = SummaryTable::new();
    /// t.push("x", &[x.clone()])?;
    /// t.push("y", &[x.iter().map(|v| -v).collect()])?;
    /// assert_eq!(t.column(0), vec![49.5, -49.5]);
    /// # Ok::<(), weightspace::diagnostics::DiagnosticsError>(())
    /// ```
    pub fn column(&self, j: usize) -> Vec<f64> {
        self.rows.iter().map(|(_, s)| s.columns().get(j).copied().unwrap_or(f64::NAN)).collect()
    }
}

/// Python's `format(x, "g")`: six significant digits, trailing zeros dropped.
fn format_g(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (5 - x.abs().log10().floor() as i64).max(0) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Prints the table aligned like `az.summary`: the moments, HDI and MCSE with 3 decimals, the
/// ESS as whole numbers, R-hat with 2 decimals (NaN for a single chain).
impl std::fmt::Display for SummaryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.column_names();
        let w0 = self.rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
        let cells = |s: &Summary| -> Vec<String> {
            s.columns()
                .iter()
                .enumerate()
                .map(|(j, v)| match j {
                    6 | 7 => format!("{v:.0}"),
                    8 => format!("{v:.2}"),
                    _ => format!("{v:.3}"),
                })
                .collect()
        };
        let body: Vec<Vec<String>> = self.rows.iter().map(|(_, s)| cells(s)).collect();
        let widths: Vec<usize> =
            (0..9).map(|j| body.iter().map(|r| r[j].len()).chain(std::iter::once(names[j].len())).max().unwrap_or(0)).collect();
        write!(f, "{:w0$}", "")?;
        for (n, w) in names.iter().zip(&widths) {
            write!(f, "  {n:>w$}")?;
        }
        for ((name, _), row) in self.rows.iter().zip(&body) {
            writeln!(f)?;
            write!(f, "{name:<w0$}")?;
            for (c, w) in row.iter().zip(&widths) {
                write!(f, "  {c:>w$}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four chains of 500 draws of a Gaussian AR(1) process `x_t = φ x_{t−1} + e_t`, driven by
    /// a fixed 64-bit LCG (Knuth's MMIX constants) and Box–Muller, so the data are the same on
    /// every platform. Chain `c` starts at `x = offset * c`.
    pub(crate) fn ar1_chains(phi: f64, offset: f64) -> Vec<Vec<f64>> {
        ar1(phi, offset, 4, 500)
    }

    /// `chains` chains of `draws` draws of the AR(1) process above (the same generator).
    fn ar1(phi: f64, offset: f64, chains: usize, draws: usize) -> Vec<Vec<f64>> {
        let mut state: u64 = 42;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..chains)
            .map(|c| {
                let mut x = offset * c as f64;
                (0..draws)
                    .map(|_| {
                        let (u1, u2) = (uniform(), uniform());
                        let e = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                        x = phi * x + e;
                        x
                    })
                    .collect()
            })
            .collect()
    }

    // The reference values below come from ArviZ 0.23.4 (NumPy 2.4.6, SciPy 1.17.1), whose
    // `ess`/`rhat`/`mcse` implement the published formulas of Vehtari et al. (2021) with an FFT
    // autocovariance (our direct sums agree with it to rounding). The same LCG + Box–Muller
    // generator written in Python produces identical arrays:
    //
    //   import numpy as np, arviz as az
    //   def ar1(phi, offset):
    //       state = 42; M = 2**64
    //       def u():
    //           nonlocal state
    //           state = (state * 6364136223846793005 + 1442695040888963407) % M
    //           return ((state >> 11) + 0.5) / 2**53
    //       out = []
    //       for c in range(4):
    //           x = offset * c; ch = []
    //           for _ in range(500):
    //               u1, u2 = u(), u()
    //               e = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    //               x = phi * x + e; ch.append(x)
    //           out.append(ch)
    //       return np.array(out)
    //   for phi, off in [(0.5, 0.0), (0.9, 0.0), (-0.3, 0.0), (0.9, 3.0)]:
    //       a = ar1(phi, off)
    //       print(az.ess(a, method="bulk"), az.ess(a, method="tail"), az.ess(a, method="mean"),
    //             az.rhat(a, method="rank"), az.rhat(a, method="split"), az.mcse(a, method="mean"))
    //
    // (`az.rhat(method="split")` is the classic split R-hat.)
    const REFERENCE: [(f64, f64, [f64; 6]); 4] = [
        (0.5, 0.0, [673.4505024184372, 1131.8552782662687, 674.0369443810675, 1.007428915236567, 1.0075058553586573, 0.04489952415950164]),
        (0.9, 0.0, [78.25637463054699, 187.66529841009614, 77.24892485151106, 1.0584140903759576, 1.059361349716026, 0.2647871080551095]),
        (
            -0.3,
            0.0,
            [3790.5784486298126, 1877.664351901311, 3807.5956109394438, 0.9997921584887531, 0.9997324125357805, 0.017084881109696533],
        ),
        (0.9, 3.0, [80.17709049840323, 187.66529841009614, 79.51168014916773, 1.0454839585453446, 1.046288964176141, 0.2684925459577174]),
    ];

    #[test]
    fn matches_arviz_on_fixed_ar1_chains() {
        for (phi, offset, r) in REFERENCE {
            let c = ar1_chains(phi, offset);
            // same arrays as in Python: print(a[0, :2]) gives [0.16326722 -0.82651432] for φ = 0.5
            if phi == 0.5 {
                assert!((c[0][0] - 0.16326722).abs() < 1e-8 && (c[0][1] + 0.82651432).abs() < 1e-8);
            }
            let got = [
                ess_bulk(&c).unwrap(),
                ess_tail(&c).unwrap(),
                ess_mean(&c).unwrap(),
                rhat(&c).unwrap(),
                split_rhat(&c).unwrap(),
                mcse_mean(&c).unwrap(),
            ];
            for (k, (g, e)) in got.iter().zip(&r).enumerate() {
                assert!((g - e).abs() <= 1e-9 * e.abs(), "phi={phi} offset={offset} quantity {k}: {g} vs arviz {e}");
            }
        }
    }

    // Every column of `az.summary` from ArviZ 0.23.4 (NumPy 2.4.6, SciPy 1.17.1, the version
    // `scripts/requirements.txt` pins), unrounded, on five fixtures made by the `ar1` generator
    // above: two 4 × 500 AR(1) runs, three odd-length chains (the R-hat of `az.summary` folds
    // around the median of *all* draws, `az.rhat` around that of the split chains: 1.00388 vs
    // 1.00392 here), a skewed two-chain run (the HDI is not symmetric) and a single chain (R-hat
    // NaN). The Python that printed them (`ar1` is the function in the comment above):
    //
    //   cases = {
    //       "ar1_0.5": ar1(0.5, 0.0),
    //       "ar1_0.9_offset3": ar1(0.9, 3.0),
    //       "ar1_-0.3_odd": ar1(-0.3, 0.0, 3, 301),
    //       "exp_ar1_0.7": np.exp(ar1(0.7, 0.0, 2, 250)),
    //       "single_chain": ar1(0.5, 0.0, 1, 400),
    //       "stuck_chains": np.repeat(np.arange(4.0)[:, None], 8, axis=1),  # 4 chains, each constant
    //       "constant": np.ones((4, 8)),
    //   }
    //   for name, draws in cases.items():
    //       s = az.summary(az.from_dict(posterior={"x": draws}), round_to="none")
    //       assert s.columns.tolist() == ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd",
    //                                     "ess_bulk", "ess_tail", "r_hat"]
    //       print(f'("{name}", [{", ".join(repr(float(v)) for v in s.loc["x"].values)}]),')
    //
    // (with `def ar1(phi, offset, chains=4, draws=500)` looping `range(chains)` and `range(draws)`).
    const AZ_SUMMARY: [(&str, [f64; 9]); 7] = [
        (
            "ar1_0.5",
            [
                -0.05202759864512005,
                1.1656913907524202,
                -2.160240911782495,
                2.224409777271711,
                0.04489952415950164,
                0.023818081357627193,
                673.4505024184372,
                1131.8552782662687,
                1.007428915236567,
            ],
        ),
        (
            "ar1_0.9_offset3",
            [
                -0.20776757805591956,
                2.394129832872911,
                -4.490072740174951,
                4.464472299585888,
                0.2684925459577173,
                0.10664304447930234,
                80.17709049840323,
                187.66529841009614,
                1.0454839585453446,
            ],
        ),
        (
            "ar1_-0.3_odd",
            [
                0.020624106427639337,
                1.0868094552966554,
                -1.7661315206931292,
                2.282263412913213,
                0.024811614744680535,
                0.029501346608338794,
                1925.6925138795032,
                923.7530366193484,
                1.0038810428865281,
            ],
        ),
        (
            "exp_ar1_0.7",
            [
                3.0212810719778362,
                5.367722192088105,
                0.027710138465051604,
                10.97857273330815,
                0.4073705741223834,
                0.8928882627938248,
                116.9317368054429,
                153.86007202373182,
                1.0059419436220514,
            ],
        ),
        (
            "single_chain",
            [
                0.11409060723669132,
                1.1658920945228197,
                -2.0865781108407138,
                2.2397545037052575,
                0.09602118708439462,
                0.05616710528393539,
                147.73134290028025,
                227.3091747931268,
                f64::NAN,
            ],
        ),
        (
            "stuck_chains",
            [1.5, 1.1359236684941296, 0.0, 3.0, 0.16367572422538576, 0.06443919706676367, 48.16479930623699, 32.0, f64::INFINITY],
        ),
        ("constant", [1.0, 0.0, 1.0, 1.0, 0.0, f64::NAN, 32.0, 32.0, f64::NAN]),
    ];

    fn fixture(name: &str) -> Vec<Vec<f64>> {
        match name {
            "ar1_0.5" => ar1(0.5, 0.0, 4, 500),
            "ar1_0.9_offset3" => ar1(0.9, 3.0, 4, 500),
            "ar1_-0.3_odd" => ar1(-0.3, 0.0, 3, 301),
            "exp_ar1_0.7" => ar1(0.7, 0.0, 2, 250).into_iter().map(|c| c.into_iter().map(f64::exp).collect()).collect(),
            "single_chain" => ar1(0.5, 0.0, 1, 400),
            "stuck_chains" => (0..4).map(|c| vec![f64::from(c); 8]).collect(),
            "constant" => vec![vec![1.0; 8]; 4],
            other => unreachable!("no fixture {other}"),
        }
    }

    /// Every column of the summary table agrees with `az.summary` to 1e-6 (absolute; the largest
    /// difference is printed with `--nocapture`), and NaN where ArviZ gives NaN.
    #[test]
    fn summary_table_matches_az_summary() {
        let mut table = SummaryTable::new();
        for (name, _) in AZ_SUMMARY {
            table.push(name, &fixture(name)).unwrap();
        }
        let cols = table.column_names();
        assert_eq!(cols, ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]);
        let mut max_diff = [0.0f64; 9];
        for ((name, expected), (row, got)) in AZ_SUMMARY.iter().zip(&table.rows) {
            assert_eq!(name, row);
            for (j, (g, e)) in got.columns().iter().zip(expected).enumerate() {
                if !e.is_finite() {
                    assert!(g.is_nan() && e.is_nan() || g == e, "{name} {}: {g} but arviz gives {e}", cols[j]);
                    continue;
                }
                let d = (g - e).abs();
                max_diff[j] = max_diff[j].max(d);
                assert!(d <= 1e-6, "{name} {}: {g} vs arviz {e}", cols[j]);
            }
        }
        for (c, d) in cols.iter().zip(max_diff) {
            println!("max |ours - az.summary| {c}: {d:.3e}");
        }
        // the constant row prints NaN for R-hat
        assert!(table.to_string().lines().last().unwrap().trim_end().ends_with("NaN"));
    }

    #[test]
    fn hdi_by_hand() {
        // sorted 1, 2, 3, 10, 11 with prob 0.5: k = 2, windows [1,3] (2), [2,10] (8), [3,11] (8)
        assert_eq!(hdi(&[vec![10.0, 1.0, 3.0, 11.0, 2.0]], 0.5).unwrap(), (1.0, 3.0));
        // ties: the first narrowest window wins, as in numpy's argmin
        assert_eq!(hdi(&[vec![0.0, 1.0, 2.0, 3.0]], 0.5).unwrap(), (0.0, 2.0));
        assert!(matches!(hdi(&[vec![1.0, 2.0]], 0.0), Err(DiagnosticsError::InvalidProbability { .. })));
    }

    #[test]
    fn format_g_like_python() {
        assert_eq!(format_g(100.0 * (1.0 - 0.94) / 2.0), "3");
        assert_eq!(format_g(100.0 * (1.0 - (1.0 - 0.94) / 2.0)), "97");
        assert_eq!(format_g(2.5), "2.5");
        assert_eq!(format_g(12.345678), "12.3457");
    }

    #[test]
    fn ess_of_ar1_is_near_theory() {
        // the integrated autocorrelation time of AR(1) is (1 + φ)/(1 − φ), so
        // ESS ≈ 2000 (1 − φ)/(1 + φ); the estimator's relative sd at this length is ~10–20%
        for phi in [0.5, 0.9] {
            let c = ar1_chains(phi, 0.0);
            let theory = 2000.0 * (1.0 - phi) / (1.0 + phi);
            let ess = ess_mean(&c).unwrap();
            assert!((ess / theory - 1.0).abs() < 0.35, "phi={phi}: {ess} vs {theory}");
        }
    }

    #[test]
    fn split_rhat_by_hand() {
        // one chain [1, 2, 3, 4, 5, 6, 7, 8] splits into [1,2,3,4] and [5,6,7,8]:
        // means 2.5 and 6.5, within variances 5/3 each, so W = 5/3, B/n = var(2.5, 6.5) = 8,
        // R̂ = sqrt((W (n−1)/n + B/n) / W) = sqrt((5/3 · 3/4 + 8) / (5/3)) = sqrt(5.55)
        let x: Vec<f64> = (1..=8).map(f64::from).collect();
        assert!((split_rhat(&[x]).unwrap() - 5.55f64.sqrt()).abs() < 1e-14);
    }

    #[test]
    fn rank_normalize_by_hand() {
        // ranks 1..4 of S = 4 draws -> Φ⁻¹((r − 3/8)/4.25)
        let z = rank_normalize(&[vec![3.0, 1.0], vec![4.0, 1.5]]);
        let q = |r: f64| normal_quantile((r - 0.375) / 4.25);
        assert_eq!(z, vec![vec![q(3.0), q(1.0)], vec![q(4.0), q(2.0)]]);
        // ties share the average rank
        let z = rank_normalize(&[vec![1.0, 1.0, 2.0]]);
        assert_eq!(z[0][0], normal_quantile((1.5 - 0.375) / 3.25));
        assert_eq!(z[0][0], z[0][1]);
    }

    #[test]
    fn errors() {
        assert_eq!(rhat(&[]), Err(DiagnosticsError::NoChains));
        assert!(matches!(ess_bulk(&[vec![1.0, 2.0, 3.0]]), Err(DiagnosticsError::TooFewDraws { needed: 6, got: 3, .. })));
        assert!(matches!(ess_mean(&[vec![1.0; 10]]), Err(DiagnosticsError::Constant { .. })));
        assert!(matches!(rhat(&[vec![0.0, 1.0, f64::NAN, 2.0]]), Err(DiagnosticsError::NonFinite { draw: 2, .. })));
    }
}
