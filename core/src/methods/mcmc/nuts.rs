//! Single-chain NUTS through [nuts-rs](https://docs.rs/nuts-rs) (PyMC's Rust NUTS, the sampler
//! behind nutpie): multinomial NUTS with step-size and diagonal mass-matrix adaptation.
//!
//! nuts-rs is used as it is: it takes exactly the `logp(position, grad)` boundary of
//! [`LogDensity`], adapts the step size by dual averaging towards [`NutsSettings::target_accept`]
//! and a diagonal mass matrix from draws and gradients, and reports divergences, tree depths and
//! step sizes per draw. A non-finite log density becomes a recoverable error there, which nuts-rs
//! treats as a divergence.

use std::collections::HashMap;
use std::time::Instant;

use nuts_rs::{Chain, CpuLogpFunc, CpuMath, CpuMathError, DiagNutsSettings, HasDims, LogpError, Settings};

use super::target::LogDensity;
use crate::error::SourceError;
use crate::{Error, Result};

/// Settings of [`sample_nuts`].
///
/// ```
/// use weightspace::mcmc::NutsSettings;
/// let s = NutsSettings { warmup: 500, draws: 200, seed: 3, ..Default::default() };
/// assert_eq!((s.target_accept, s.max_tree_depth), (0.8, 10));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NutsSettings {
    /// Warm-up (tuning) iterations. Default 1000.
    pub warmup: usize,
    /// Draws kept after warm-up. Default 1000.
    pub draws: usize,
    /// Target acceptance probability of the step-size adaptation. Default 0.8.
    pub target_accept: f64,
    /// Maximum tree depth (at most `2^depth − 1` leapfrog steps per draw). Default 10.
    pub max_tree_depth: u64,
    /// Energy error above which a trajectory counts as divergent. Default 1000.
    pub max_energy_error: f64,
    /// Seed.
    pub seed: u64,
    /// Threads for the per-chain work of the batched [`sample_nuts_chains`](super::sample_nuts_chains)
    /// (0 = all cores), on which the target evaluates too if it takes them
    /// ([`BatchLogDensity::share_workers`](super::BatchLogDensity::share_workers)). The
    /// single-chain sampler ignores it. Default 0.
    pub threads: usize,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal).
    pub progress: bool,
}

impl Default for NutsSettings {
    fn default() -> Self {
        Self {
            warmup: 1000,
            draws: 1000,
            target_accept: 0.8,
            max_tree_depth: 10,
            max_energy_error: 1000.0,
            seed: 0,
            threads: 0,
            progress: false,
        }
    }
}

impl NutsSettings {
    /// Checks the settings; the error names the field.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.draws == 0 {
            return Err(Error::config("NutsSettings::draws", 0, "at least one draw is needed"));
        }
        if !(self.target_accept > 0.0 && self.target_accept < 1.0) {
            return Err(Error::config("NutsSettings::target_accept", self.target_accept, "must lie strictly between 0 and 1"));
        }
        if !(1..=30).contains(&self.max_tree_depth) {
            return Err(Error::config("NutsSettings::max_tree_depth", self.max_tree_depth, "must lie in 1..=30"));
        }
        if self.max_energy_error.is_nan() || self.max_energy_error <= 0.0 {
            return Err(Error::config("NutsSettings::max_energy_error", self.max_energy_error, "must be positive"));
        }
        Ok(())
    }
}

/// What happened in one NUTS transition.
///
/// ```
/// use weightspace::mcmc::{sample_nuts, LogDensity, NutsSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// use weightspace::mcmc::DrawStats;
/// let run = sample_nuts(&mut StdNormal, &[1.0], &NutsSettings { warmup: 100, draws: 50, ..Default::default() })?;
/// let last: DrawStats = run.stats[149];
/// assert!(!last.warmup && run.stats[0].warmup);
/// assert!(last.step_size > 0.0 && last.leapfrog_steps >= 1);
/// assert!(last.tree_depth <= 10 && !last.max_depth_reached);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawStats {
    /// Whether this was a warm-up transition.
    pub warmup: bool,
    /// Whether the trajectory diverged.
    pub diverging: bool,
    /// Depth of the trajectory tree.
    pub tree_depth: u64,
    /// Whether the maximum depth stopped the trajectory.
    pub max_depth_reached: bool,
    /// Leapfrog steps taken.
    pub leapfrog_steps: u64,
    /// Step size used.
    pub step_size: f64,
}

/// The output of [`sample_nuts`].
///
/// ```
/// use weightspace::mcmc::{sample_nuts, LogDensity, NutsSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// let run = sample_nuts(&mut StdNormal, &[1.0], &NutsSettings { warmup: 100, draws: 50, ..Default::default() })?;
/// assert_eq!(run.draws.len(), 50);
/// assert_eq!(run.stats.len(), 150); // warm-up transitions too
/// assert_eq!(run.divergences(), 0);
/// assert!(run.step_size().unwrap() > 0.0);
/// assert!(run.mean_tree_depth() >= 1.0 && run.leapfrog_steps() >= 150);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NutsRun {
    /// The kept draws (positions), in order.
    pub draws: Vec<Vec<f64>>,
    /// Statistics of every transition, warm-up first.
    pub stats: Vec<DrawStats>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl NutsRun {
    /// Divergent transitions after warm-up.
    pub fn divergences(&self) -> usize {
        self.stats.iter().filter(|s| !s.warmup && s.diverging).count()
    }
    /// Divergent transitions during warm-up.
    pub fn warmup_divergences(&self) -> usize {
        self.stats.iter().filter(|s| s.warmup && s.diverging).count()
    }
    /// Mean tree depth after warm-up.
    pub fn mean_tree_depth(&self) -> f64 {
        let v: Vec<f64> = self.stats.iter().filter(|s| !s.warmup).map(|s| s.tree_depth as f64).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
    /// The step size after warm-up.
    pub fn step_size(&self) -> Option<f64> {
        self.stats.iter().rev().find(|s| !s.warmup).map(|s| s.step_size)
    }
    /// Leapfrog steps over the whole run.
    pub fn leapfrog_steps(&self) -> u64 {
        self.stats.iter().map(|s| s.leapfrog_steps).sum()
    }
}

/// The error nuts-rs sees from a log density.
#[derive(Debug, thiserror::Error)]
enum AdapterError {
    #[error("the log density or its gradient is not finite")]
    NonFinite,
    #[error("{0}")]
    Fatal(String),
}

impl LogpError for AdapterError {
    fn is_recoverable(&self) -> bool {
        matches!(self, AdapterError::NonFinite)
    }
}

struct Adapter<'t, T: ?Sized> {
    target: &'t mut T,
    dim: usize,
    /// The first unrecoverable error, kept to be returned as it is.
    fatal: std::sync::Arc<std::sync::Mutex<Option<Error>>>,
}

impl<T: LogDensity + ?Sized> HasDims for Adapter<'_, T> {
    fn dim_sizes(&self) -> HashMap<String, u64> {
        HashMap::from([("unconstrained_parameter".to_string(), self.dim as u64), ("expanded_parameter".to_string(), self.dim as u64)])
    }
}

impl<T: LogDensity + ?Sized> CpuLogpFunc for Adapter<'_, T> {
    type LogpError = AdapterError;
    type FlowParameters = ();
    type ExpandedVector = Vec<f64>;

    fn dim(&self) -> usize {
        self.dim
    }

    fn logp(&mut self, position: &[f64], gradient: &mut [f64]) -> std::result::Result<f64, AdapterError> {
        match self.target.logp(position, gradient) {
            Ok(v) if v.is_finite() && gradient.iter().all(|g| g.is_finite()) => Ok(v),
            Ok(_) => Err(AdapterError::NonFinite),
            Err(e) => {
                let msg = e.to_string();
                self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
                Err(AdapterError::Fatal(msg))
            }
        }
    }

    fn expand_vector<R: nuts_rs::rand::Rng + ?Sized>(
        &mut self,
        _rng: &mut R,
        array: &[f64],
    ) -> std::result::Result<Vec<f64>, CpuMathError> {
        Ok(array.to_vec())
    }
}

/// Runs one NUTS chain on `target` from `init`: warm-up with step-size and diagonal mass-matrix
/// adaptation, then [`NutsSettings::draws`] draws.
///
/// ```
/// use weightspace::mcmc::{sample_nuts, LogDensity, NutsSettings};
/// /// N(3, 1) in 2-D.
/// struct Normal3;
/// impl LogDensity for Normal3 {
///     fn dim(&self) -> usize { 2 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = 3.0 - x[0];
///         g[1] = 3.0 - x[1];
///         Ok(-0.5 * ((x[0] - 3.0).powi(2) + (x[1] - 3.0).powi(2)))
///     }
/// }
/// let run = sample_nuts(&mut Normal3, &[0.0, 0.0], &NutsSettings { warmup: 300, draws: 400, ..Default::default() })?;
/// let mean = run.draws.iter().map(|d| d[0]).sum::<f64>() / 400.0;
/// assert!((mean - 3.0).abs() < 0.3);
/// assert_eq!(run.divergences(), 0);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_nuts<T: LogDensity + ?Sized>(target: &mut T, init: &[f64], settings: &NutsSettings) -> Result<NutsRun> {
    let start = Instant::now();
    let dim = target.dim();
    if init.len() != dim {
        return Err(Error::Shape { what: "initial position".into(), expected: format!("({dim},)"), got: format!("({},)", init.len()) });
    }
    crate::error::check_finite("initial position", init)?;
    settings.validate()?;
    let mut s = DiagNutsSettings {
        num_tune: settings.warmup as u64,
        num_draws: settings.draws as u64,
        maxdepth: settings.max_tree_depth,
        max_energy_error: settings.max_energy_error,
        seed: settings.seed,
        num_chains: 1,
        ..Default::default()
    };
    s.adapt_options.step_size_settings.target_accept = settings.target_accept;
    let fatal_slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let math = CpuMath::new(Adapter { target, dim, fatal: fatal_slot.clone() });
    let mut rng = <nuts_rs::rand::rngs::StdRng as nuts_rs::rand::SeedableRng>::seed_from_u64(settings.seed);
    let backend = |what: &str, e| Error::Sampler { what: format!("nuts-rs {what}"), source: SourceError::new(e) };
    let mut chain = s.new_chain(0, math, &mut rng).map_err(|e| backend("rejected the settings", e))?;
    // an error of the target itself (kept by the adapter) comes first; otherwise nuts-rs's own
    let fatal = |what: &str, e| -> Error {
        fatal_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_else(|| backend(what, e))
    };
    if let Err(e) = chain.set_position(init) {
        return Err(fatal("could not start at the initial position", e));
    }
    let total = settings.warmup + settings.draws;
    let bar = crate::progress::Progress::new(total, settings.progress, "nuts");
    let mut draws = Vec::with_capacity(settings.draws);
    let mut stats = Vec::with_capacity(total);
    for i in 0..total {
        let (draw, _expanded, st, progress) = match chain.expanded_draw() {
            Ok(v) => v,
            Err(e) => return Err(fatal("failed during a draw", e)),
        };
        let warmup = i < settings.warmup;
        stats.push(DrawStats {
            warmup,
            diverging: progress.diverging,
            tree_depth: st.depth,
            max_depth_reached: st.maxdepth_reached,
            leapfrog_steps: progress.num_steps,
            step_size: progress.step_size,
        });
        if !warmup {
            draws.push(draw.to_vec());
        }
        bar.inc();
    }
    bar.finish();
    Ok(NutsRun { draws, stats, seconds: start.elapsed().as_secs_f64() })
}
