//! How many independent chains are needed to visit every functionally distinct mode: the
//! generalised coupon collector with Markov's inequality (SYM-MCMC, docs/methods.md §4).

use crate::{Error, Result};

/// Above this many modes the inclusion–exclusion sum (2^ν terms, alternating signs) is replaced by
/// the equivalent integral `∫₀^∞ 1 − Π_j (1 − e^{−π_j t}) dt`.
const MAX_SUBSET_MODES: usize = 16;

fn check_probabilities(probs: &[f64]) -> Result<Vec<f64>> {
    if probs.is_empty() {
        return Err(Error::Empty { what: "mode probabilities".into() });
    }
    if let Some(&p) = probs.iter().find(|p| !(p.is_finite() && **p > 0.0)) {
        return Err(Error::config("mode probability", p, "every probability must be positive and finite"));
    }
    let total: f64 = probs.iter().sum();
    Ok(probs.iter().map(|p| p / total).collect())
}

/// Expected number of independent chains `E[G]` until each of `ν = probs.len()` modes has been
/// reached at least once, when a chain reaches mode `j` with probability `π_j` (`probs` are
/// normalised first):
///
/// ```text
/// E[G] = Σ_{q=0}^{ν−1} (−1)^{ν−1−q} Σ_{|J|=q} 1 / (1 − Σ_{j∈J} π_j)
/// ```
///
/// which is `ν·H_ν` for uniform probabilities. Exact inclusion–exclusion up to 16 modes, the
/// equivalent integral `∫₀^∞ 1 − Π_j (1 − e^{−π_j t}) dt` beyond.
///
/// ```
/// use weightspace::mcmc::expected_chains;
/// // two equally likely modes: 1 + 2 = 3 chains on average
/// assert!((expected_chains(&[0.5, 0.5])? - 3.0).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn expected_chains(probs: &[f64]) -> Result<f64> {
    let p = check_probabilities(probs)?;
    let nu = p.len();
    if nu <= MAX_SUBSET_MODES {
        let mut total = 0.0;
        for mask in 0u32..(1u32 << nu) {
            let q = mask.count_ones() as usize;
            if q == nu {
                continue;
            }
            let mass: f64 = (0..nu).filter(|j| mask & (1 << j) != 0).map(|j| p[j]).sum();
            let sign = if (nu - 1 - q).is_multiple_of(2) { 1.0 } else { -1.0 };
            total += sign / (1.0 - mass).max(f64::MIN_POSITIVE);
        }
        Ok(total)
    } else {
        Ok(expected_chains_integral(&p))
    }
}

/// `∫₀^∞ 1 − Π_j (1 − e^{−π_j t}) dt` by composite Simpson on `u = ln(1 + t)`.
fn expected_chains_integral(p: &[f64]) -> f64 {
    let pmin = p.iter().copied().fold(f64::INFINITY, f64::min);
    // beyond t_max the integrand is below ν e^{−π_min t_max} ≈ 1e−16 ν
    let t_max = 40.0 / pmin;
    let u_max = t_max.ln_1p();
    let n = 200_000usize;
    let h = u_max / n as f64;
    let integrand = |u: f64| {
        let t = u.exp_m1();
        let prod: f64 = p.iter().map(|pj| -(-pj * t).exp_m1()).product();
        (1.0 - prod) * (1.0 + t)
    };
    let mut s = integrand(0.0) + integrand(u_max);
    for i in 1..n {
        s += integrand(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0
}

/// The number of chains `ρ = ⌈E[G] / δ⌉` that sees every mode with probability at least `1 − δ`
/// (Markov's inequality on the coupon-collector time [`expected_chains`]).
///
/// ```
/// use weightspace::mcmc::{chains_needed, paper_mode_probabilities};
/// // the SYM-MCMC defaults: ν = 3 modes, HalfNormal(1) weights, δ = 0.01
/// assert_eq!(chains_needed(&paper_mode_probabilities(), 0.01)?, 1274);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn chains_needed(probs: &[f64], delta: f64) -> Result<usize> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(Error::config("delta", delta, "the failure probability must lie strictly between 0 and 1"));
    }
    let eg = expected_chains(probs)?;
    // guard against 1273.0000000001-style rounding of an exact quotient
    let ratio = eg / delta;
    let r = ratio.ceil();
    Ok(if r - ratio > 1.0 - 1e-9 { ratio.round() } else { r } as usize)
}

/// The SYM-MCMC paper's default mode probabilities: `ν = 3` modes with `π ∝` the HalfNormal(1)
/// density at `(0, 0.98, 1.96)`, i.e. about `(0.5665, 0.3505, 0.0830)`.
///
/// ```
/// use weightspace::mcmc::paper_mode_probabilities;
/// let p = paper_mode_probabilities();
/// assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
/// assert!((p[0] - 0.5665).abs() < 1e-4 && (p[2] - 0.0830).abs() < 1e-4);
/// assert!(p[0] > p[1] && p[1] > p[2]);
/// ```
pub fn paper_mode_probabilities() -> [f64; 3] {
    let d = [0.0f64, 0.98, 1.96].map(|x| (-0.5 * x * x).exp());
    let t: f64 = d.iter().sum();
    d.map(|v| v / t)
}
