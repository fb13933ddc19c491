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
//!
//! ```
//! use weightspace::testing::diagnostics::{ess_bulk, rhat, summarize};
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
//! # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
//! ```

use thiserror::Error;

use super::special::normal_quantile;

/// Why a diagnostic could not be computed.
///
/// ```
/// use weightspace::testing::diagnostics::{rhat, DiagnosticsError};
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

/// Splits every chain into its first and second half (dropping the middle draw when the length
/// is odd), doubling the number of chains. Input is not validated.
///
/// ```
/// use weightspace::testing::diagnostics::split_chains;
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
/// use weightspace::testing::diagnostics::rank_normalize;
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
    if w.is_nan() || w <= 0.0 {
        return Err(DiagnosticsError::Constant { what });
    }
    Ok(((b_over_n * n / w + n - 1.0) / n).sqrt())
}

/// Classic split R-hat (Gelman et al., BDA3 §11.4) on the raw draws.
///
/// Prefer [`rhat`], which also catches chains that differ in scale or have heavy tails.
///
/// ```
/// use weightspace::testing::diagnostics::split_rhat;
///
/// // one chain that drifts: its halves disagree
/// let drift: Vec<f64> = (0..100).map(|t| t as f64 / 10.0).collect();
/// assert!(split_rhat(&[drift])? > 1.5);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn split_rhat(chains: &[Vec<f64>]) -> Result<f64> {
    validate("split_rhat", chains, 4)?;
    rhat_of("split_rhat", &split_chains(chains))
}

/// Rank-normalised split R-hat (Vehtari et al. 2021): the larger of the split R-hat of the
/// rank-normalised draws (bulk) and of the rank-normalised draws folded around the median
/// (tail). Values above 1.01 signal that the chains have not mixed.
///
/// ```
/// use weightspace::testing::diagnostics::rhat;
///
/// // two chains that agree in location but not in scale: only the folded part sees it
/// let a: Vec<f64> = (0..200).map(|t| ((t * 37) % 200) as f64 / 100.0 - 1.0).collect();
/// let b: Vec<f64> = a.iter().map(|x| 10.0 * x).collect();
/// assert!(rhat(&[a, b])? > 1.1);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn rhat(chains: &[Vec<f64>]) -> Result<f64> {
    validate("rhat", chains, 4)?;
    let split = split_chains(chains);
    let bulk = rhat_of("rhat (bulk)", &rank_normalize(&split))?;
    let mut all: Vec<f64> = split.iter().flatten().copied().collect();
    let med = median(&mut all);
    let folded: Vec<Vec<f64>> = split.iter().map(|c| c.iter().map(|x| (x - med).abs()).collect()).collect();
    let tail = rhat_of("rhat (tail)", &rank_normalize(&folded))?;
    Ok(bulk.max(tail))
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
    let nf = n as f64;
    let means: Vec<f64> = chains.iter().map(|c| c.iter().sum::<f64>() / nf).collect();
    let acov_mean = |lag: usize| -> f64 { chains.iter().zip(&means).map(|(c, mu)| autocov(c, *mu, lag)).sum::<f64>() / m as f64 };
    let mean_var = acov_mean(0) * nf / (nf - 1.0);
    let mut var_plus = mean_var * (nf - 1.0) / nf;
    if m > 1 {
        let grand = means.iter().sum::<f64>() / m as f64;
        var_plus += means.iter().map(|mu| (mu - grand).powi(2)).sum::<f64>() / (m as f64 - 1.0);
    }
    if var_plus.is_nan() || var_plus <= 0.0 || mean_var.is_nan() || mean_var <= 0.0 {
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
/// use weightspace::testing::diagnostics::ess_mean;
///
/// // a perfectly antithetic chain has ESS above the number of draws
/// let alt: Vec<f64> = (0..100).map(|t| if t % 2 == 0 { 1.0 } else { -1.0 }).collect();
/// assert!(ess_mean(&[alt])? > 100.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_mean(chains: &[Vec<f64>]) -> Result<f64> {
    validate("ess_mean", chains, 6)?;
    ess_of("ess_mean", &split_chains(chains))
}

/// Bulk ESS: the ESS of the rank-normalised split chains (Vehtari et al. 2021). Robust to heavy
/// tails; the ESS to look at for the center of the distribution.
///
/// ```
/// use weightspace::testing::diagnostics::ess_bulk;
///
/// let sticky: Vec<f64> = (0..400).map(|t| ((t / 20) % 7) as f64 + (t % 20) as f64 * 1e-3).collect();
/// assert!(ess_bulk(&[sticky])? < 100.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_bulk(chains: &[Vec<f64>]) -> Result<f64> {
    validate("ess_bulk", chains, 6)?;
    ess_of("ess_bulk", &rank_normalize(&split_chains(chains)))
}

/// ESS of the empirical CDF at the `prob` quantile: the ESS of the split indicator chains
/// `I(x ≤ q̂)`, with `q̂` the type-7 sample quantile of all draws.
///
/// ```
/// use weightspace::testing::diagnostics::ess_quantile;
///
/// let x: Vec<f64> = (0..200).map(|t| ((t * 61) % 200) as f64).collect();
/// assert!(ess_quantile(&[x], 0.5)? > 0.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_quantile(chains: &[Vec<f64>], prob: f64) -> Result<f64> {
    validate("ess_quantile", chains, 6)?;
    let mut all: Vec<f64> = chains.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let q = quantile(&all, prob.clamp(0.0, 1.0));
    let ind: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| f64::from(u8::from(*x <= q))).collect()).collect();
    ess_of("ess_quantile", &split_chains(&ind))
}

/// Tail ESS: the smaller of the ESS of the 5% and the 95% quantile (Vehtari et al. 2021).
///
/// ```
/// use weightspace::testing::diagnostics::{ess_bulk, ess_tail};
///
/// let x: Vec<f64> = (0..400).map(|t| ((t * 163) % 400) as f64).collect();
/// assert!(ess_tail(&[x.clone()])? > 0.0 && ess_bulk(&[x])? > 0.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn ess_tail(chains: &[Vec<f64>]) -> Result<f64> {
    Ok(ess_quantile(chains, 0.05)?.min(ess_quantile(chains, 0.95)?))
}

/// Monte-Carlo standard error of the mean: `sd / √ess_mean`, with the `n − 1` sd of all draws.
///
/// ```
/// use weightspace::testing::diagnostics::mcse_mean;
///
/// let x: Vec<f64> = (0..1000).map(|t| ((t * 7919) % 1000) as f64 / 1000.0).collect();
/// let mcse = mcse_mean(&[x])?;
/// assert!(mcse > 0.0 && mcse < 0.02);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
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

/// The usual per-quantity summary of an MCMC run.
///
/// ```
/// use weightspace::testing::diagnostics::summarize;
///
/// let x: Vec<f64> = (0..400).map(|t| ((t * 163) % 400) as f64 / 400.0).collect();
/// let s = summarize(&[x[..200].to_vec(), x[200..].to_vec()])?;
/// assert!((s.mean - 0.49875).abs() < 1e-12);
/// assert!(s.mcse_mean > 0.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Mean of all draws.
    pub mean: f64,
    /// Standard deviation of all draws (`n − 1`).
    pub sd: f64,
    /// Monte-Carlo standard error of the mean.
    pub mcse_mean: f64,
    /// ESS of the mean ([`ess_mean`]).
    pub ess_mean: f64,
    /// Bulk ESS ([`ess_bulk`]).
    pub ess_bulk: f64,
    /// Tail ESS ([`ess_tail`]).
    pub ess_tail: f64,
    /// Rank-normalised split R-hat ([`rhat`]).
    pub rhat: f64,
}

/// Computes every field of [`Summary`].
///
/// ```
/// use weightspace::testing::diagnostics::summarize;
/// // two well-mixed chains of a deterministic low-discrepancy sequence in [0, 1)
/// let chain = |k: usize| -> Vec<f64> { (0..300).map(|t| ((t * 163 + k) % 300) as f64 / 300.0).collect() };
/// let s = summarize(&[chain(0), chain(7)])?;
/// assert!((s.mean - 0.5).abs() < 0.01);
/// assert!((s.rhat - 1.0).abs() < 0.05);
/// assert!(s.ess_bulk > 100.0 && s.sd > 0.0);
/// # Ok::<(), weightspace::testing::diagnostics::DiagnosticsError>(())
/// ```
pub fn summarize(chains: &[Vec<f64>]) -> Result<Summary> {
    validate("summarize", chains, 6)?;
    let n = chains.iter().map(Vec::len).sum::<usize>() as f64;
    let ess_mean = ess_mean(chains)?;
    let sd = pooled_sd(chains);
    Ok(Summary {
        mean: chains.iter().flatten().sum::<f64>() / n,
        sd,
        mcse_mean: sd / ess_mean.sqrt(),
        ess_mean,
        ess_bulk: ess_bulk(chains)?,
        ess_tail: ess_tail(chains)?,
        rhat: rhat(chains)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four chains of 500 draws of a Gaussian AR(1) process `x_t = φ x_{t−1} + e_t`, driven by
    /// a fixed 64-bit LCG (Knuth's MMIX constants) and Box–Muller, so the data are the same on
    /// every platform. Chain `c` starts at `x = offset * c`.
    pub(crate) fn ar1_chains(phi: f64, offset: f64) -> Vec<Vec<f64>> {
        let mut state: u64 = 42;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..4)
            .map(|c| {
                let mut x = offset * c as f64;
                (0..500)
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
