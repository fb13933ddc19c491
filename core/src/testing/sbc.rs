//! Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).
//!
//! If `θ ~ p(θ)`, `y ~ p(y | θ)` and `θ₁..θ_L` are draws from the exact posterior `p(θ | y)`, then
//! the rank of `θ` among `θ₁..θ_L` is uniform on `{0, …, L}`. [`run_sbc`] repeats this for many
//! simulated data sets, and [`SbcReport`] tests the ranks of each scalar parameter for
//! uniformity with a chi-square test. An inference routine that is too confident piles the ranks
//! up at both ends; one that is biased piles them at one end; one that is too diffuse piles them
//! in the middle.
//!
//! Measured by this module's tests on a normal–normal model (θ ~ N(0, 1), five observations
//! with unit noise) with the default settings (200 replicates, 99 draws, 10 bins) at
//! `alpha = 0.05`: the exact posterior sampler is rejected in 4.2% of 1000 seeded runs (binomial
//! standard error 0.7%); samplers with the posterior sd halved, the sd doubled, or the mean
//! shifted by 0.3 prior sd (0.73 posterior sd) are each rejected in 50 of 50 runs.
//!
//! The inference routine is reached through the [`PosteriorSampler`] trait, which closures
//! implement too. Posterior draws must be (nearly) independent: thin MCMC output to about one
//! draw per effective sample, otherwise the ranks are not uniform even for a correct sampler.
//!
//! ```
//! use rand::{Rng, RngCore};
//! use rand_distr::StandardNormal;
//! use weightspace::testing::sbc::{run_sbc, SbcSettings};
//!
//! // θ ~ N(0, 1), y | θ ~ N(θ, 1): the posterior is N(y/2, 1/2)
//! let prior = |rng: &mut dyn RngCore| vec![rng.sample::<f64, _>(StandardNormal)];
//! let simulate = |theta: &[f64], rng: &mut dyn RngCore| theta[0] + rng.sample::<f64, _>(StandardNormal);
//! let mut exact = |y: &f64, n: usize, rng: &mut dyn RngCore| {
//!     Ok::<_, std::convert::Infallible>((0..n)
//!         .map(|_| vec![y / 2.0 + 0.5f64.sqrt() * rng.sample::<f64, _>(StandardNormal)])
//!         .collect::<Vec<_>>())
//! };
//! let report = run_sbc(&SbcSettings::default(), prior, simulate, &mut exact)?;
//! assert!(report.check(0.01).passed);
//! # Ok::<(), weightspace::testing::sbc::SbcError>(())
//! ```

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use thiserror::Error;

use super::assert::TestOutcome;
use crate::num::special::chi_square_sf;

/// The boundary to an inference routine under test: given simulated data, return posterior
/// draws of the scalar parameters.
///
/// Closures `FnMut(&D, usize, &mut dyn RngCore) -> Result<Vec<Vec<f64>>, E>` implement it.
///
/// ```
/// use rand::RngCore;
/// use weightspace::testing::sbc::PosteriorSampler;
///
/// /// Returns the data as the only "draw" of every parameter (a useless sampler).
/// struct Echo;
/// impl PosteriorSampler<Vec<f64>> for Echo {
///     type Error = std::convert::Infallible;
///     fn sample_posterior(&mut self, data: &Vec<f64>, n_draws: usize, _rng: &mut dyn RngCore)
///         -> Result<Vec<Vec<f64>>, Self::Error> {
///         Ok(vec![data.clone(); n_draws])
///     }
/// }
/// let draws = Echo.sample_posterior(&vec![1.0, 2.0], 3, &mut rand::thread_rng()).unwrap();
/// assert_eq!(draws.len(), 3);
/// ```
pub trait PosteriorSampler<D> {
    /// Error of the inference routine; use [`std::convert::Infallible`] if it cannot fail.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Returns `n_draws` posterior draws given `data`, each a vector with one entry per scalar
    /// parameter (in the order the prior closure of [`run_sbc`] uses). The draws should be
    /// independent, and all randomness should come from `rng` so that runs are reproducible.
    fn sample_posterior(&mut self, data: &D, n_draws: usize, rng: &mut dyn RngCore) -> Result<Vec<Vec<f64>>, Self::Error>;
}

impl<D, E, F> PosteriorSampler<D> for F
where
    F: FnMut(&D, usize, &mut dyn RngCore) -> Result<Vec<Vec<f64>>, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    fn sample_posterior(&mut self, data: &D, n_draws: usize, rng: &mut dyn RngCore) -> Result<Vec<Vec<f64>>, E> {
        self(data, n_draws, rng)
    }
}

/// Settings of [`run_sbc`].
///
/// ```
/// use weightspace::testing::sbc::SbcSettings;
///
/// let s = SbcSettings { n_replicates: 500, ..Default::default() };
/// assert_eq!(s.n_draws, 99);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbcSettings {
    /// Number of simulated data sets. Default 200.
    pub n_replicates: usize,
    /// Posterior draws per data set, `L`; ranks take values `0..=L`. Default 99.
    pub n_draws: usize,
    /// Histogram bins for the chi-square test. Choose it so that `L + 1` is a multiple of it,
    /// and the expected count per bin (`n_replicates / n_bins`) is at least 5. Default 10.
    pub n_bins: usize,
    /// Seed of the `StdRng` passed to the prior, the simulator and the sampler. Default 0.
    pub seed: u64,
}

impl Default for SbcSettings {
    fn default() -> Self {
        SbcSettings { n_replicates: 200, n_draws: 99, n_bins: 10, seed: 0 }
    }
}

/// Why SBC could not run.
///
/// ```
/// use weightspace::testing::sbc::{SbcError, SbcSettings, run_sbc};
///
/// let settings = SbcSettings { n_bins: 0, ..Default::default() };
/// let mut sampler = |_: &f64, _: usize, _: &mut dyn rand::RngCore|
///     Ok::<_, std::convert::Infallible>(vec![]);
/// let err = run_sbc(&settings, |_| vec![0.0], |_, _| 0.0, &mut sampler).unwrap_err();
/// assert!(matches!(err, SbcError::InvalidSettings(_)));
/// ```
#[derive(Debug, Error)]
pub enum SbcError {
    /// The settings are unusable.
    #[error("invalid SBC settings: {0}")]
    InvalidSettings(String),
    /// The prior returned no parameters, or a different number than before.
    #[error("replicate {replicate}: the prior returned {got} parameters, expected {expected}")]
    PriorShape {
        /// The replicate.
        replicate: usize,
        /// Parameters in replicate 0 (or 1 at least).
        expected: usize,
        /// Parameters returned now.
        got: usize,
    },
    /// The sampler returned the wrong number of draws, or draws of the wrong length.
    #[error("replicate {replicate}: {reason}")]
    SamplerShape {
        /// The replicate.
        replicate: usize,
        /// What was wrong.
        reason: String,
    },
    /// The sampler or the prior produced a NaN or an infinity.
    #[error("replicate {replicate}: {what} parameter {param} is {value}")]
    NonFinite {
        /// The replicate.
        replicate: usize,
        /// `"prior draw of"` or `"posterior draw of"`.
        what: &'static str,
        /// Parameter index.
        param: usize,
        /// The value.
        value: f64,
    },
    /// The sampler failed.
    #[error("replicate {replicate}: the posterior sampler failed: {source}")]
    Sampler {
        /// The replicate.
        replicate: usize,
        /// The sampler's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<SbcError> for crate::Error {
    fn from(e: SbcError) -> Self {
        crate::Error::Testing(crate::error::TestingError::new(e))
    }
}

/// Ranks and uniformity tests of an SBC run.
///
/// ```
/// use weightspace::testing::sbc::SbcReport;
///
/// // 20 replicates of ranks in 0..=9, perfectly spread over 2 bins
/// let report = SbcReport::from_ranks(vec![(0..20).map(|r| r % 10).collect()], 9, 2).unwrap();
/// assert_eq!(report.histograms[0], vec![10, 10]);
/// assert_eq!(report.chi_square[0], 0.0);
/// assert!(report.check(0.05).passed);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SbcReport {
    /// `ranks[p][r]`: rank of parameter `p` in replicate `r`, in `0..=n_draws`.
    pub ranks: Vec<Vec<usize>>,
    /// Posterior draws per replicate, `L`.
    pub n_draws: usize,
    /// `histograms[p][b]`: number of replicates whose rank of parameter `p` falls in bin `b`
    /// (rank `r` goes to bin `⌊r · n_bins / (L + 1)⌋`).
    pub histograms: Vec<Vec<usize>>,
    /// Chi-square statistic of each parameter's histogram against its expected counts.
    pub chi_square: Vec<f64>,
    /// Chi-square p-value of each parameter (`n_bins − 1` degrees of freedom).
    pub p_values: Vec<f64>,
}

impl SbcReport {
    /// Builds the histograms and tests from ranks (`ranks[p][r] <= n_draws`).
    pub fn from_ranks(ranks: Vec<Vec<usize>>, n_draws: usize, n_bins: usize) -> Result<Self, SbcError> {
        if n_bins < 2 || n_bins > n_draws + 1 {
            return Err(SbcError::InvalidSettings(format!("n_bins = {n_bins} must be in 2..={} (n_draws + 1)", n_draws + 1)));
        }
        let values = n_draws + 1;
        // how many of the L + 1 rank values fall in each bin
        let mut width = vec![0usize; n_bins];
        for r in 0..values {
            width[r * n_bins / values] += 1;
        }
        let mut histograms = Vec::with_capacity(ranks.len());
        let mut chi_square = Vec::with_capacity(ranks.len());
        let mut p_values = Vec::with_capacity(ranks.len());
        for (p, rk) in ranks.iter().enumerate() {
            let mut h = vec![0usize; n_bins];
            for &r in rk {
                if r > n_draws {
                    return Err(SbcError::InvalidSettings(format!("rank {r} of parameter {p} exceeds n_draws = {n_draws}")));
                }
                h[r * n_bins / values] += 1;
            }
            let total = rk.len() as f64;
            let chi2: f64 = h
                .iter()
                .zip(&width)
                .map(|(&o, &w)| {
                    let e = total * w as f64 / values as f64;
                    (o as f64 - e).powi(2) / e
                })
                .sum();
            histograms.push(h);
            chi_square.push(chi2);
            p_values.push(chi_square_sf(chi2, (n_bins - 1) as f64));
        }
        Ok(SbcReport { ranks, n_draws, histograms, chi_square, p_values })
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.ranks.len()
    }

    /// Number of replicates.
    pub fn n_replicates(&self) -> usize {
        self.ranks.first().map_or(0, Vec::len)
    }

    /// Bonferroni-combined p-value over parameters: `min(1, P · minₚ pₚ)`.
    pub fn p_value(&self) -> f64 {
        let min = self.p_values.iter().copied().fold(1.0, f64::min);
        (min * self.n_params() as f64).min(1.0)
    }

    /// Tests uniformity of all parameters' ranks at false-alarm rate `alpha` (Bonferroni over
    /// parameters). The outcome reports the worst parameter's chi-square statistic against the
    /// Bonferroni-corrected critical value.
    pub fn check(&self, alpha: f64) -> TestOutcome {
        let (worst, chi2) = self.chi_square.iter().copied().enumerate().fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
        let df = (self.histograms.first().map_or(2, Vec::len) - 1) as f64;
        let level = alpha / self.n_params().max(1) as f64;
        // critical value: chi_square_sf(c, df) = level, by bisection
        let (mut lo, mut hi) = (0.0, 1.0);
        while chi_square_sf(hi, df) > level {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if chi_square_sf(mid, df) > level {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let p_value = self.p_value();
        TestOutcome {
            test: "sbc",
            statistic_name: "chi2",
            statistic: chi2,
            bound: 0.5 * (lo + hi),
            p_value,
            alpha,
            sample_sizes: vec![self.n_replicates()],
            ess: None,
            detail: format!(
                "worst parameter {worst} of {}, histogram {:?} ({} draws per replicate, {} df)",
                self.n_params(),
                self.histograms.get(worst).cloned().unwrap_or_default(),
                self.n_draws,
                df
            ),
            passed: p_value > alpha,
        }
    }

    /// Writes a rank-histogram PNG.
    ///
    /// Panels are laid out in a grid, one per parameter, left to right and top to bottom. In each,
    /// blue bars are the bin counts, the black line is the expected count under uniformity, and the
    /// grey band is its 99% binomial interval: a calibrated sampler's bars stay mostly inside it.
    /// The image is 320×240 pixels per panel.
    ///
    /// ```
    /// use weightspace::testing::sbc::SbcReport;
    ///
    /// let report = SbcReport::from_ranks(vec![(0..100).map(|r| r % 20).collect()], 19, 5)?;
    /// let path = std::env::temp_dir().join("weightspace_doc_ranks.png");
    /// report.write_rank_histogram_png(&path)?;
    /// assert!(std::fs::metadata(&path)?.len() > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_rank_histogram_png(&self, path: impl AsRef<std::path::Path>) -> Result<(), super::plot::PlotError> {
        super::plot::write_rank_histogram_png(&self.histograms, self.n_draws, self.n_replicates(), path.as_ref())
    }
}

/// Runs simulation-based calibration.
///
/// For each of `settings.n_replicates` replicates: draw `θ = prior(rng)`, simulate
/// `y = simulate(&θ, rng)`, ask `sampler` for `settings.n_draws` posterior draws, and record for
/// every parameter the number of draws below `θ` (ties broken at random). All randomness comes
/// from one `StdRng` seeded with `settings.seed`.
///
/// ```
/// use rand::{Rng, RngCore};
/// use rand_distr::StandardNormal;
/// use weightspace::testing::sbc::{run_sbc, SbcSettings};
///
/// // an over-confident sampler (posterior sd halved) is caught
/// let prior = |rng: &mut dyn RngCore| vec![rng.sample::<f64, _>(StandardNormal)];
/// let simulate = |t: &[f64], rng: &mut dyn RngCore| t[0] + rng.sample::<f64, _>(StandardNormal);
/// let mut narrow = |y: &f64, n: usize, rng: &mut dyn RngCore| {
///     Ok::<_, std::convert::Infallible>((0..n)
///         .map(|_| vec![y / 2.0 + 0.5 * 0.5f64.sqrt() * rng.sample::<f64, _>(StandardNormal)])
///         .collect::<Vec<_>>())
/// };
/// let report = run_sbc(&SbcSettings::default(), prior, simulate, &mut narrow)?;
/// assert!(report.p_value() < 1e-6);
/// # Ok::<(), weightspace::testing::sbc::SbcError>(())
/// ```
pub fn run_sbc<D, S>(
    settings: &SbcSettings,
    mut prior: impl FnMut(&mut dyn RngCore) -> Vec<f64>,
    mut simulate: impl FnMut(&[f64], &mut dyn RngCore) -> D,
    sampler: &mut S,
) -> Result<SbcReport, SbcError>
where
    S: PosteriorSampler<D> + ?Sized,
{
    if settings.n_replicates == 0 || settings.n_draws == 0 {
        return Err(SbcError::InvalidSettings(format!(
            "n_replicates = {} and n_draws = {} must be positive",
            settings.n_replicates, settings.n_draws
        )));
    }
    if settings.n_bins < 2 || settings.n_bins > settings.n_draws + 1 {
        return Err(SbcError::InvalidSettings(format!(
            "n_bins = {} must be in 2..={} (n_draws + 1)",
            settings.n_bins,
            settings.n_draws + 1
        )));
    }
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut ranks: Vec<Vec<usize>> = Vec::new();
    for replicate in 0..settings.n_replicates {
        let theta = prior(&mut rng);
        let expected = ranks.len().max(1);
        if theta.is_empty() || (replicate > 0 && theta.len() != expected) {
            return Err(SbcError::PriorShape { replicate, expected, got: theta.len() });
        }
        if let Some(param) = theta.iter().position(|t| !t.is_finite()) {
            return Err(SbcError::NonFinite { replicate, what: "prior draw of", param, value: theta[param] });
        }
        if replicate == 0 {
            ranks = vec![Vec::with_capacity(settings.n_replicates); theta.len()];
        }
        let data = simulate(&theta, &mut rng);
        let draws = sampler
            .sample_posterior(&data, settings.n_draws, &mut rng)
            .map_err(|e| SbcError::Sampler { replicate, source: Box::new(e) })?;
        if draws.len() != settings.n_draws {
            return Err(SbcError::SamplerShape {
                replicate,
                reason: format!("the sampler returned {} draws, expected {}", draws.len(), settings.n_draws),
            });
        }
        for (p, &t) in theta.iter().enumerate() {
            let mut below = 0usize;
            let mut ties = 0usize;
            for d in &draws {
                let v = *d.get(p).ok_or_else(|| SbcError::SamplerShape {
                    replicate,
                    reason: format!("a posterior draw has {} parameters, expected {}", d.len(), theta.len()),
                })?;
                if !v.is_finite() {
                    return Err(SbcError::NonFinite { replicate, what: "posterior draw of", param: p, value: v });
                }
                if v < t {
                    below += 1;
                } else if v == t {
                    ties += 1;
                }
            }
            let rank = below + if ties > 0 { rng.gen_range(0..=ties) } else { 0 };
            ranks[p].push(rank);
        }
    }
    SbcReport::from_ranks(ranks, settings.n_draws, settings.n_bins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::StandardNormal;
    use std::convert::Infallible;

    /// θ ~ N(0, 1), y = (y₁..y₅), yᵢ | θ ~ N(θ, 1): posterior N(Σy/6, 1/6).
    fn normal_normal(settings: &SbcSettings, sd_scale: f64, bias: f64) -> SbcReport {
        let prior = |rng: &mut dyn RngCore| vec![rng.sample::<f64, _>(StandardNormal)];
        let simulate =
            |t: &[f64], rng: &mut dyn RngCore| -> Vec<f64> { (0..5).map(|_| t[0] + rng.sample::<f64, _>(StandardNormal)).collect() };
        let mut sampler = |y: &Vec<f64>, n: usize, rng: &mut dyn RngCore| {
            let m = y.iter().sum::<f64>() / 6.0 + bias;
            let sd = (1.0f64 / 6.0).sqrt() * sd_scale;
            Ok::<_, Infallible>((0..n).map(|_| vec![m + sd * rng.sample::<f64, _>(StandardNormal)]).collect::<Vec<_>>())
        };
        run_sbc(settings, prior, simulate, &mut sampler).unwrap()
    }

    #[test]
    fn exact_sampler_is_uniform_and_false_alarms_match_alpha() {
        let alpha = 0.05;
        let reps = 1000;
        let rejections = (0..reps)
            .filter(|&s| {
                let settings = SbcSettings { seed: s, ..Default::default() };
                !normal_normal(&settings, 1.0, 0.0).check(alpha).passed
            })
            .count();
        let sd = (reps as f64 * alpha * (1.0 - alpha)).sqrt();
        eprintln!("sbc false-alarm rate {}", rejections as f64 / reps as f64);
        assert!((rejections as f64 - alpha * reps as f64).abs() <= 3.0 * sd, "{rejections}");
    }

    #[test]
    fn miscalibrated_samplers_are_caught() {
        let alpha = 0.05;
        for (scale, bias, name) in [(0.5, 0.0, "overconfident"), (2.0, 0.0, "underconfident"), (1.0, 0.3, "biased")] {
            let caught = (0..50)
                .filter(|&s| {
                    let settings = SbcSettings { seed: 100 + s, ..Default::default() };
                    !normal_normal(&settings, scale, bias).check(alpha).passed
                })
                .count();
            eprintln!("sbc power against {name}: {}", caught as f64 / 50.0);
            assert!(caught >= 48, "{name}: caught {caught}/50");
        }
        // the shape of the histogram says which way it is wrong
        let r = normal_normal(&SbcSettings::default(), 0.5, 0.0);
        let h = &r.histograms[0];
        assert!(h[0] + h[9] > 3 * (h[4] + h[5]), "{h:?}");
    }

    #[test]
    fn rank_and_tie_handling() {
        // a sampler that always returns θ itself: every draw ties, so the rank is uniform over
        // 0..=L by the random tie-break
        let prior = |rng: &mut dyn RngCore| vec![rng.gen_range(0.0..1.0)];
        let simulate = |t: &[f64], _: &mut dyn RngCore| t[0];
        let mut oracle = |y: &f64, n: usize, _: &mut dyn RngCore| Ok::<_, Infallible>(vec![vec![*y]; n]);
        let r = run_sbc(&SbcSettings::default(), prior, simulate, &mut oracle).unwrap();
        assert!(r.check(0.001).passed, "{}", r.check(0.001));
    }

    #[test]
    fn chi_square_by_hand() {
        // 3 bins over ranks 0..=5 (two values each); 12 replicates, counts (6, 3, 3):
        // expected 4 each, chi2 = (4 + 1 + 1) / 4 = 1.5, p = exp(−0.75) for 2 df
        let ranks = vec![vec![0, 1, 0, 1, 0, 1, 2, 3, 2, 4, 5, 4]];
        let r = SbcReport::from_ranks(ranks, 5, 3).unwrap();
        assert_eq!(r.histograms[0], vec![6, 3, 3]);
        assert!((r.chi_square[0] - 1.5).abs() < 1e-12);
        assert!((r.p_values[0] - (-0.75f64).exp()).abs() < 1e-12);
        // uneven bins: 4 values in 3 bins get widths (2, 1, 1)
        let r = SbcReport::from_ranks(vec![vec![0, 1, 2, 3]], 3, 3).unwrap();
        assert_eq!(r.histograms[0], vec![2, 1, 1]);
        assert_eq!(r.chi_square[0], 0.0);
    }

    #[test]
    fn errors_name_the_replicate() {
        let mut short = |_: &f64, _: usize, _: &mut dyn RngCore| Ok::<_, Infallible>(vec![vec![0.0]]);
        let e = run_sbc(&SbcSettings::default(), |_| vec![0.0], |_, _| 0.0, &mut short).unwrap_err();
        assert_eq!(e.to_string(), "replicate 0: the sampler returned 1 draws, expected 99");
        #[derive(Debug, Error)]
        #[error("diverged")]
        struct Diverged;
        let mut failing = |_: &f64, _: usize, _: &mut dyn RngCore| Err::<Vec<Vec<f64>>, _>(Diverged);
        let e = run_sbc(&SbcSettings::default(), |_| vec![0.0], |_, _| 0.0, &mut failing).unwrap_err();
        assert_eq!(e.to_string(), "replicate 0: the posterior sampler failed: diverged");
        let mut nan = |_: &f64, n: usize, _: &mut dyn RngCore| Ok::<_, Infallible>(vec![vec![f64::NAN]; n]);
        let e = run_sbc(&SbcSettings::default(), |_| vec![0.0], |_, _| 0.0, &mut nan).unwrap_err();
        assert!(matches!(e, SbcError::NonFinite { replicate: 0, param: 0, .. }));
    }
}
