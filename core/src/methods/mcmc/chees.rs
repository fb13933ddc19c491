//! The batched many-chain sampler: jittered HMC with ChEES adaptation (Hoffman, Radul & Sountsov
//! 2021, "An adaptive MCMC scheme for setting trajectory lengths in Hamiltonian Monte Carlo").
//!
//! The details are in the docs of [`sample_many_chains`].

use std::time::Instant;

use std::cell::Cell;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::shard::ChainShard;
use super::target::BatchLogDensity;
use crate::communicator::{share, Communicator, SingleProcess};
use crate::num::rng::{stream, Purpose};
use crate::progress::Progress;
use crate::workers::Workers;
use crate::{Error, Result};

/// How the many-chain sampler adapts step sizes.
///
/// ```
/// use weightspace::mcmc::{sample_many_chains, LogDensity, BatchLogDensity, ManyChainSettings, StepSizeAdaptation};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {} // the default evaluates chain by chain
/// let settings = ManyChainSettings { warmup: 100, draws: 5, step_size: StepSizeAdaptation::PerChain, ..Default::default() };
/// let run = sample_many_chains(&mut StdNormal, vec![vec![0.5]; 8], &settings)?;
/// assert_eq!(run.step_sizes.len(), 8); // one adapted step size per chain
/// assert_eq!(StepSizeAdaptation::default(), StepSizeAdaptation::Shared);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepSizeAdaptation {
    /// One step size for all chains, from the harmonic mean of their acceptance probabilities
    /// (BlackJAX's ChEES). Every chain takes the same number of leapfrog steps.
    #[default]
    Shared,
    /// One step size per chain, each from its own acceptance probability. The trajectory length
    /// stays shared, so a chain in a wide mode takes fewer leapfrog steps than one in a sharp mode
    /// and leaves the batch early: on a multimodal posterior this can save many gradient
    /// evaluations (64 chains of the 3×16 net on regression2d: 5.1 M against 10.6 M).
    PerChain,
}

/// Settings of [`sample_many_chains`].
///
/// ```
/// use weightspace::mcmc::ManyChainSettings;
/// let s = ManyChainSettings { warmup: 500, draws: 10, ..Default::default() };
/// assert_eq!(s.target_accept, 0.651);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ManyChainSettings {
    /// Warm-up (adaptation) iterations. Default 1024.
    pub warmup: usize,
    /// Draws kept per chain after warm-up. Default 1.
    pub draws: usize,
    /// Initial step size. Default 0.1.
    pub initial_step_size: f64,
    /// Target acceptance probability of the step-size adaptation. Default 0.651.
    pub target_accept: f64,
    /// Learning rate of Adam on `ln T`. Default 0.025.
    pub learning_rate: f64,
    /// Weight `t^{-decay}` of iteration `t` in the moving averages of `ln ε` and `ln T`.
    /// Default 0.5.
    pub decay_rate: f64,
    /// Cap on leapfrog steps per iteration (`T ≤ max · ε`). Default 1000.
    pub max_leapfrog_steps: usize,
    /// Fraction of the trajectory that is jittered: `u_t = 1 − jitter + jitter · halton(t)`.
    /// Default 1.
    pub jitter: f64,
    /// Step-size adaptation. Default [`StepSizeAdaptation::Shared`].
    pub step_size: StepSizeAdaptation,
    /// Adapt a diagonal mass matrix per chain. Default false (identity, as in BlackJAX).
    pub diagonal_mass_matrix: bool,
    /// Energy error above which a transition counts as divergent. Default 1000.
    pub max_energy_error: f64,
    /// Seed of the momenta and accept/reject draws.
    pub seed: u64,
    /// Threads for the per-chain work between log-density calls (the leapfrog updates, the
    /// momenta, the energy errors), 0 = all cores. The target evaluates on the same threads if it
    /// takes them ([`BatchLogDensity::share_workers`]). The draws do not depend on it. Default 0.
    pub threads: usize,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal).
    pub progress: bool,
}

impl Default for ManyChainSettings {
    fn default() -> Self {
        Self {
            warmup: 1024,
            draws: 1,
            initial_step_size: 0.1,
            target_accept: 0.651,
            learning_rate: 0.025,
            decay_rate: 0.5,
            max_leapfrog_steps: 1000,
            jitter: 1.0,
            step_size: StepSizeAdaptation::Shared,
            diagonal_mass_matrix: false,
            max_energy_error: 1000.0,
            seed: 0,
            threads: 0,
            progress: false,
        }
    }
}

impl ManyChainSettings {
    fn validate(&self) -> Result<()> {
        if self.draws == 0 {
            return Err(Error::config("ManyChainSettings::draws", 0, "at least one draw per chain is needed"));
        }
        if !(self.initial_step_size.is_finite() && self.initial_step_size > 0.0) {
            return Err(Error::config("ManyChainSettings::initial_step_size", self.initial_step_size, "must be positive and finite"));
        }
        if !(self.target_accept > 0.0 && self.target_accept < 1.0) {
            return Err(Error::config("ManyChainSettings::target_accept", self.target_accept, "must lie strictly between 0 and 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::config("ManyChainSettings::learning_rate", self.learning_rate, "must be positive and finite"));
        }
        if !(0.0..=1.0).contains(&self.decay_rate) {
            return Err(Error::config("ManyChainSettings::decay_rate", self.decay_rate, "must lie in [0, 1]"));
        }
        if self.max_leapfrog_steps == 0 {
            return Err(Error::config("ManyChainSettings::max_leapfrog_steps", 0, "must be >= 1"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::config("ManyChainSettings::jitter", self.jitter, "must lie in [0, 1]"));
        }
        if self.max_energy_error.is_nan() || self.max_energy_error <= 0.0 {
            return Err(Error::config("ManyChainSettings::max_energy_error", self.max_energy_error, "must be positive"));
        }
        Ok(())
    }
}

/// Per-iteration summary over chains.
///
/// ```
/// use weightspace::mcmc::{sample_many_chains, LogDensity, BatchLogDensity, ManyChainSettings, StepSizeAdaptation};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {} // the default evaluates chain by chain
/// let run = sample_many_chains(&mut StdNormal, vec![vec![0.5]; 8], &ManyChainSettings { warmup: 50, draws: 10, ..Default::default() })?;
/// assert_eq!(run.iterations.len(), 60); // warm-up first, then the draws
/// assert!(run.iterations[..50].iter().all(|it| it.warmup) && run.iterations[50..].iter().all(|it| !it.warmup));
/// assert!(run.iterations.iter().all(|it| it.mean_accept >= 0.0 && it.mean_accept <= 1.0 && it.step_size > 0.0));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationStats {
    /// Whether this was a warm-up iteration.
    pub warmup: bool,
    /// Mean step size over chains.
    pub step_size: f64,
    /// Trajectory length `T` (before jitter).
    pub trajectory_length: f64,
    /// Largest number of leapfrog steps any chain took.
    pub max_leapfrog_steps: usize,
    /// Mean acceptance probability over chains.
    pub mean_accept: f64,
    /// Divergent transitions in this iteration.
    pub divergences: usize,
}

/// The output of [`sample_many_chains`].
///
/// ```
/// use weightspace::mcmc::{sample_many_chains, LogDensity, BatchLogDensity, ManyChainSettings, StepSizeAdaptation};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {} // the default evaluates chain by chain
/// let run = sample_many_chains(&mut StdNormal, vec![vec![0.5]; 8], &ManyChainSettings { warmup: 50, draws: 10, ..Default::default() })?;
/// assert_eq!((run.draws.len(), run.draws[0].len(), run.draws[0][0].len()), (8, 10, 1)); // [chain][draw][coordinate]
/// assert_eq!(run.pooled().len(), 80);
/// assert_eq!(run.logp[3][7], -0.5 * run.draws[3][7][0].powi(2));
/// assert!(run.gradient_evaluations >= run.batched_calls);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManyChainRun {
    /// `draws[c][t]` is draw `t` of chain `c` (a position).
    pub draws: Vec<Vec<Vec<f64>>>,
    /// Log density of each draw, `[c][t]`.
    pub logp: Vec<Vec<f64>>,
    /// Final step size of each chain (all equal with [`StepSizeAdaptation::Shared`]).
    pub step_sizes: Vec<f64>,
    /// Final trajectory length.
    pub trajectory_length: f64,
    /// Final inverse mass matrix diagonal of each chain.
    pub inverse_mass: Vec<Vec<f64>>,
    /// Divergent transitions per chain during warm-up.
    pub warmup_divergences: Vec<usize>,
    /// Divergent transitions per chain while drawing.
    pub divergences: Vec<usize>,
    /// One entry per iteration, warm-up first.
    pub iterations: Vec<IterationStats>,
    /// Batched log-density calls (one per leapfrog step of the slowest chain); on several ranks,
    /// the most that any rank made (each rank's slowest chain is its own).
    pub batched_calls: u64,
    /// Positions evaluated in total (sum over calls of the chains in the batch).
    pub gradient_evaluations: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Of [`seconds`](Self::seconds), those this rank spent in collectives (the cross-chain
    /// reductions and the final gather, including waiting there for slower ranks; near 0 on a
    /// single process).
    pub communication_seconds: f64,
    /// Processes the chains were split across ([`sample_many_chains_on`]); 1 otherwise.
    pub ranks: usize,
    /// Global index of the chain of `draws[0]`: 0, except for one rank's part of a run
    /// ([`sample_many_chains_sharded`]).
    pub first_chain: usize,
    /// Chains of the whole run (`draws.len()`, except for one rank's part).
    pub total_chains: usize,
}

impl ManyChainRun {
    /// Every draw of every chain, chain by chain.
    pub fn pooled(&self) -> Vec<Vec<f64>> {
        self.draws.iter().flatten().cloned().collect()
    }

    /// Total divergent transitions after warm-up.
    pub fn total_divergences(&self) -> usize {
        self.divergences.iter().sum()
    }

    /// Writes this rank's part of a sharded run ([`sample_many_chains_sharded`]) to
    /// `<dir>/many_chain.rank-<r>-of-<R>.safetensors` (atomically; `dir` is created if needed) and
    /// returns the path. `rank` is the writer's rank (`comm.rank()`); [`merge_shards`](Self::merge_shards)
    /// joins the files. Draws, log densities, step sizes and mass matrices round-trip bit-exactly.
    ///
    /// ```
    /// use weightspace::comm::SingleProcess;
    /// use weightspace::mcmc::{sample_many_chains, sample_many_chains_sharded, BatchLogDensity, LogDensity, ManyChainRun, ManyChainSettings};
    /// struct StdNormal;
    /// impl LogDensity for StdNormal {
    ///     fn dim(&self) -> usize { 1 }
    ///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
    ///         g[0] = -x[0];
    ///         Ok(-0.5 * x[0] * x[0])
    ///     }
    /// }
    /// impl BatchLogDensity for StdNormal {}
    /// let settings = ManyChainSettings { warmup: 50, draws: 3, ..Default::default() };
    /// let dir = std::env::temp_dir().join(format!("weightspace_doc_shards_{}", std::process::id()));
    /// // on every rank of an MPI job (here: the one process)
    /// let part = sample_many_chains_sharded(&SingleProcess, &mut StdNormal, vec![vec![0.5]; 20], &settings)?;
    /// part.write_shard(&dir, 0)?;
    /// // later, on one process
    /// let run = ManyChainRun::merge_shards(&dir)?;
    /// assert_eq!(run.draws, sample_many_chains(&mut StdNormal, vec![vec![0.5]; 20], &settings)?.draws);
    /// std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn write_shard(&self, dir: impl AsRef<std::path::Path>, rank: usize) -> Result<std::path::PathBuf> {
        self.to_shard(rank)?.write(dir.as_ref(), MANY_CHAIN_STEM)
    }

    /// Reads the complete set of shards that the ranks of one run wrote to `dir`
    /// ([`write_shard`](Self::write_shard)) and joins them into the whole run, as
    /// [`sample_many_chains_on`] would have gathered it. `seconds` and `communication_seconds` are
    /// rank 0's.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the problem when the set is incomplete (a rank's file is
    /// missing), mixes runs (other settings, other rank counts), or a file cannot be read.
    pub fn merge_shards(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let merged = ChainShard::merge_dir(dir.as_ref(), MANY_CHAIN_STEM, &[])?;
        Self::from_shard(&merged)
    }

    /// This run (or rank's part of a run) as a draw shard written by rank `rank`.
    pub(crate) fn to_shard(&self, rank: usize) -> Result<ChainShard> {
        let d = self.inverse_mass.first().map_or(0, Vec::len);
        let logp: Vec<f64> = self.logp.iter().flatten().copied().collect();
        let n = self.draws.first().map_or(0, Vec::len);
        let mut its = Vec::with_capacity(self.iterations.len() * 6);
        for it in &self.iterations {
            its.extend([
                f64::from(u8::from(it.warmup)),
                it.step_size,
                it.trajectory_length,
                it.max_leapfrog_steps as f64,
                it.mean_accept,
                it.divergences as f64,
            ]);
        }
        let meta = [
            ("trajectory_length", self.trajectory_length.to_string()),
            ("batched_calls", self.batched_calls.to_string()),
            ("gradient_evaluations", self.gradient_evaluations.to_string()),
            ("seconds", self.seconds.to_string()),
            ("communication_seconds", self.communication_seconds.to_string()),
        ];
        Ok(ChainShard {
            first_chain: self.first_chain,
            total_chains: self.total_chains,
            rank,
            ranks: self.ranks,
            draws: self.draws.clone(),
            per_chain: vec![
                ("logp".into(), n, logp),
                ("step_size".into(), 1, self.step_sizes.clone()),
                ("inverse_mass".into(), d, self.inverse_mass.iter().flatten().copied().collect()),
                ("warmup_divergences".into(), 1, self.warmup_divergences.iter().map(|&v| v as f64).collect()),
                ("divergences".into(), 1, self.divergences.iter().map(|&v| v as f64).collect()),
            ],
            run: vec![("iterations".into(), vec![self.iterations.len(), 6], its)],
            meta: meta.into_iter().map(|(k, v)| (format!("weightspace.many_chain.{k}"), v)).collect(),
        })
    }

    /// The run held by a (merged) draw shard.
    pub(crate) fn from_shard(s: &ChainShard) -> Result<Self> {
        let c = s.draws.len();
        let n = s.draws.first().map_or(0, Vec::len);
        let per = |name: &str| s.column(name);
        let rows = |v: &[f64], w: usize| -> Vec<Vec<f64>> { (0..c).map(|i| v[i * w..(i + 1) * w].to_vec()).collect() };
        let inv = per("inverse_mass")?;
        let d = inv.len().checked_div(c).unwrap_or(0);
        let its = s.run_tensor("iterations")?;
        let meta = |k: &str| s.meta::<f64>(&format!("weightspace.many_chain.{k}"));
        let meta_u = |k: &str| s.meta::<u64>(&format!("weightspace.many_chain.{k}"));
        Ok(Self {
            draws: s.draws.clone(),
            logp: rows(per("logp")?, n),
            step_sizes: per("step_size")?.to_vec(),
            trajectory_length: meta("trajectory_length")?,
            inverse_mass: rows(inv, d),
            warmup_divergences: per("warmup_divergences")?.iter().map(|&v| v as usize).collect(),
            divergences: per("divergences")?.iter().map(|&v| v as usize).collect(),
            iterations: its
                .chunks(6)
                .map(|r| IterationStats {
                    warmup: r[0] != 0.0,
                    step_size: r[1],
                    trajectory_length: r[2],
                    max_leapfrog_steps: r[3] as usize,
                    mean_accept: r[4],
                    divergences: r[5] as usize,
                })
                .collect(),
            batched_calls: meta_u("batched_calls")?,
            gradient_evaluations: meta_u("gradient_evaluations")?,
            seconds: meta("seconds")?,
            communication_seconds: meta("communication_seconds")?,
            ranks: s.ranks,
            first_chain: s.first_chain,
            total_chains: s.total_chains,
        })
    }
}

/// File stem of [`ManyChainRun::write_shard`]'s shards.
const MANY_CHAIN_STEM: &str = "many_chain";

/// Element `i + 1` of the base-2 Halton (van der Corput) sequence, in `(0, 1)`.
fn halton(i: usize, max_bits: u32) -> f64 {
    let k = i + 1;
    (0..max_bits).map(|b| if (k >> b) & 1 == 1 { 0.5 / (1u64 << b) as f64 } else { 0.0 }).sum()
}

/// Nesterov dual averaging of `ln ε` (Hoffman & Gelman 2014; BlackJAX's update).
#[derive(Debug, Clone, Copy)]
struct DualAveraging {
    log_x: f64,
    step: f64,
    avg_error: f64,
    mu: f64,
}

impl DualAveraging {
    fn new(x0: f64) -> Self {
        Self { log_x: x0.ln(), step: 1.0, avg_error: 0.0, mu: (10.0 * x0).ln() }
    }
    /// `gradient` = target − observed acceptance.
    fn update(&mut self, gradient: f64) {
        const T0: f64 = 10.0;
        const GAMMA: f64 = 0.05;
        let reg = self.step + T0;
        let avg = (1.0 - 1.0 / reg) * self.avg_error + gradient / reg;
        let log_x = self.mu - self.step.sqrt() / GAMMA * avg;
        if log_x.is_finite() {
            self.avg_error = avg;
            self.log_x = log_x;
        }
        self.step += 1.0;
    }
}

/// Adam on one scalar.
#[derive(Debug, Clone, Copy, Default)]
struct Adam {
    m: f64,
    v: f64,
    t: i32,
}

impl Adam {
    /// The ascent update for `gradient`, clipped to ±0.35 as in TFP and BlackJAX.
    fn ascent(&mut self, gradient: f64, lr: f64) -> f64 {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        self.m = B1 * self.m + (1.0 - B1) * gradient;
        self.v = B2 * self.v + (1.0 - B2) * gradient * gradient;
        let mh = self.m / (1.0 - B1.powi(self.t));
        let vh = self.v / (1.0 - B2.powi(self.t));
        (lr * mh / (vh.sqrt() + 1e-8)).clamp(-0.35, 0.35)
    }
}

/// Runs `C = init.len()` chains of jittered HMC with ChEES adaptation on `target`, from the given
/// initial positions. `C` must be at least 1 ([`Error::InvalidConfig`] otherwise), and every
/// initial position must have `target.dim()` finite coordinates and a finite log density.
///
/// The batched many-chain sampler: jittered HMC with ChEES adaptation (Hoffman, Radul & Sountsov
/// 2021, "An adaptive MCMC scheme for setting trajectory lengths in Hamiltonian Monte Carlo").
///
/// `C` chains advance together: every leapfrog step is **one** call of a [`BatchLogDensity`] for all
/// chains still integrating (for a BNN, one batched forward/backward whose weight-sample axis is the
/// chain axis; once some chains have finished, [`BatchLogDensity::logp_batch_rows`] with the
/// others' rows). Per iteration the number of steps is `⌈u_t · T / ε⌉`, with `u_t` a Halton
/// jitter shared by all chains, `T` the trajectory length and `ε` the step size.
///
/// Warm-up adapts, as BlackJAX's `chees_adaptation` does:
/// - the step size by dual averaging towards a target acceptance (0.651 by default) of the harmonic
///   mean of the chains' acceptance probabilities ([`StepSizeAdaptation::Shared`]), or of each
///   chain's own acceptance ([`StepSizeAdaptation::PerChain`]: each chain keeps its own step size
///   and so its own number of leapfrog steps; chains that finish early drop out of the batch);
/// - the trajectory length by Adam ascent on the ChEES criterion
///   `¼ E[(‖θ' − E θ'‖² − ‖θ − E θ‖²)²]`, estimated across chains and weighted by acceptance;
/// - optionally ([`ManyChainSettings::diagonal_mass_matrix`]) a per-chain diagonal mass matrix
///   from each chain's own draws in the middle half of warm-up (regularised as in Stan), after
///   which the step-size adaptation restarts. The ChEES criterion is then computed in each chain's
///   whitened coordinates.
///
/// The final step size and trajectory length are the moving averages (decay `t^{-1/2}`) of the
/// adapted values. A transition whose energy error exceeds [`ManyChainSettings::max_energy_error`]
/// or whose log density is not finite is a divergence: it is rejected and counted, never a panic.
///
/// ```
/// use weightspace::mcmc::{sample_many_chains, BatchLogDensity, LogDensity, ManyChainSettings};
/// /// A standard normal in 2-D.
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 2 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         g[1] = -x[1];
///         Ok(-0.5 * (x[0].powi(2) + x[1].powi(2)))
///     }
/// }
/// // a batched evaluation of all chains at once (the default would call `logp` per chain)
/// impl BatchLogDensity for StdNormal {
///     fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
///         for (c, l) in lp.iter_mut().enumerate() {
///             *l = -0.5 * (x[2 * c].powi(2) + x[2 * c + 1].powi(2));
///             g[2 * c] = -x[2 * c];
///             g[2 * c + 1] = -x[2 * c + 1];
///         }
///         Ok(())
///     }
/// }
/// let init = vec![vec![1.0, -1.0]; 64];
/// let run = sample_many_chains(&mut StdNormal, init, &ManyChainSettings { warmup: 200, draws: 20, ..Default::default() })?;
/// let mean: f64 = run.pooled().iter().map(|p| p[0]).sum::<f64>() / (64.0 * 20.0);
/// assert!(mean.abs() < 0.2);
/// assert_eq!(run.total_divergences(), 0);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_many_chains<T: BatchLogDensity + ?Sized>(
    target: &mut T,
    init: Vec<Vec<f64>>,
    settings: &ManyChainSettings,
) -> Result<ManyChainRun> {
    sample_many_chains_on(&SingleProcess, target, init, settings)?
        .ok_or_else(|| Error::Communication { what: "single process".into(), reason: "rank 0 received no draws".into() })
}

/// [`sample_many_chains`] with the chains split across the processes of `comm` (see
/// [`comm`](crate::comm)): `Some(run)` on rank 0, with every chain's draws, and `None` on the
/// other ranks. Every rank passes the same `init` (all `C` positions) and `settings`; each
/// evaluates only its own share of the chains with `target`.
///
/// The chains are dealt to ranks in blocks of 8 consecutive chains. Each chain draws its momenta
/// and accept/reject uniforms from its own random stream, keyed by its global index, and the
/// cross-chain statistics of the adaptation (the harmonic-mean acceptance, the ChEES criterion's
/// means and gradient, the step-size extremes) are formed from per-block partial sums gathered and
/// added in block order. So the run does not depend on the number of ranks: 2 ranks give the same
/// draws, bit for bit, as 1. Time spent in the collectives is
/// [`ManyChainRun::communication_seconds`].
///
/// ```
/// use weightspace::comm::SingleProcess;
/// use weightspace::mcmc::{sample_many_chains, sample_many_chains_on, BatchLogDensity, LogDensity, ManyChainSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {}
/// let settings = ManyChainSettings { warmup: 50, draws: 3, ..Default::default() };
/// let run = sample_many_chains_on(&SingleProcess, &mut StdNormal, vec![vec![0.5]; 20], &settings)?.expect("rank 0 has the draws");
/// assert_eq!(run.ranks, 1);
/// assert_eq!(run.draws, sample_many_chains(&mut StdNormal, vec![vec![0.5]; 20], &settings)?.draws);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_many_chains_on<T: BatchLogDensity + ?Sized>(
    comm: &dyn Communicator,
    target: &mut T,
    init: Vec<Vec<f64>>,
    settings: &ManyChainSettings,
) -> Result<Option<ManyChainRun>> {
    sample(comm, target, init, settings, true)
}

/// [`sample_many_chains_on`] without the final gather: every rank returns its own chains' part of
/// the run ([`ManyChainRun::first_chain`] says where it starts in the whole run), for runs too large
/// to gather on rank 0. Write the parts with [`ManyChainRun::write_shard`] and join them later, on
/// one process, with [`ManyChainRun::merge_shards`]: the merged run equals the gathered one. The
/// adaptation, the chains' random streams and the run-level statistics (`iterations`,
/// `batched_calls`, `gradient_evaluations`) are the same as in the gathered run.
///
/// ```
/// use weightspace::comm::SingleProcess;
/// use weightspace::mcmc::{sample_many_chains, sample_many_chains_sharded, BatchLogDensity, LogDensity, ManyChainSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {}
/// let settings = ManyChainSettings { warmup: 50, draws: 3, ..Default::default() };
/// let part = sample_many_chains_sharded(&SingleProcess, &mut StdNormal, vec![vec![0.5]; 10], &settings)?;
/// assert_eq!((part.first_chain, part.total_chains, part.draws.len()), (0, 10, 10)); // one process holds every chain
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_many_chains_sharded<T: BatchLogDensity + ?Sized>(
    comm: &dyn Communicator,
    target: &mut T,
    init: Vec<Vec<f64>>,
    settings: &ManyChainSettings,
) -> Result<ManyChainRun> {
    sample(comm, target, init, settings, false)?
        .ok_or_else(|| Error::Communication { what: "sharded run".into(), reason: "this rank kept no part of the run".into() })
}

/// The sampler behind [`sample_many_chains_on`] (`gather`: every chain on rank 0, `None` elsewhere)
/// and [`sample_many_chains_sharded`] (every rank its own chains).
fn sample<T: BatchLogDensity + ?Sized>(
    comm: &dyn Communicator,
    target: &mut T,
    init: Vec<Vec<f64>>,
    settings: &ManyChainSettings,
    gather: bool,
) -> Result<Option<ManyChainRun>> {
    settings.validate()?;
    let s = settings;
    let start = Instant::now();
    if init.is_empty() {
        return Err(Error::config("chains", 0, "must be >= 1 (one initial position per chain)"));
    }
    let shard = Shard::new(comm, init.len());
    let local_init: Vec<Vec<f64>> = init.into_iter().skip(shard.lo).take(shard.c_local).collect();
    // one set of threads for the chains' updates and the target's evaluations
    let workers = Workers::new(s.threads)?;
    target.share_workers(&workers);
    let mut chains = Chains::start(target, local_init, shard.lo)?;
    let (c, d) = (chains.c, chains.d);
    let total_iters = s.warmup + s.draws;
    let max_bits = (usize::BITS - (total_iters + 1).leading_zeros()).max(1);
    let mut rngs: Vec<StdRng> = (0..c).map(|ci| stream(s.seed, Purpose::Transition, &[(shard.lo + ci) as u64])).collect();
    let mut adapt = Adaptation::new(s, c);
    let mut mass = MassMatrixWindow::new(s, c * d);
    let mut tr = Transition::new(c, d);
    let mut out = Collected::new(c, s.draws, total_iters);
    // the updates of at most one task's worth of chains stay on this thread
    let pool = workers.pool().filter(|_| c > CHAINS_PER_TASK);
    let bar = Progress::new(total_iters, s.progress && comm.is_root(), "chees");
    for it in 0..total_iters {
        let warm = it < s.warmup;
        let u = 1.0 - s.jitter + s.jitter * halton(it, max_bits);
        tr.plan(&adapt, u, s.max_leapfrog_steps);
        tr.draw_momenta(&chains.inv_mass, &mut rngs, pool);
        tr.integrate(target, &mut chains, &adapt, pool)?;
        tr.judge(&chains, s.max_energy_error, pool);
        out.count_divergences(&tr.divergent, warm);
        let pr = tr.proposals(&chains, u);
        let stats = shard.transition_stats(&pr, warm)?;
        // adaptation uses the proposals (before accept/reject) and the initial positions
        if warm {
            adapt.update(&pr, &stats, s, &shard)?;
        }
        chains.accept_or_reject(&tr, &mut rngs);
        if warm && mass.observe(it, &chains.theta, &mut chains.inv_mass) {
            // the metric changed: restart the step-size adaptation from the current values
            adapt.restart_step_size();
        }
        if !warm {
            out.keep_draws(&chains);
        }
        let max_steps = shard.max(tr.max_steps as f64)? as usize;
        out.iterations.push(IterationStats {
            warmup: warm,
            step_size: adapt.mean_step_size(&shard)?,
            trajectory_length: adapt.traj,
            max_leapfrog_steps: max_steps,
            mean_accept: stats.sum_accept / shard.c_total as f64,
            divergences: stats.divergences as usize,
        });
        if it + 1 == s.warmup {
            adapt.finish_warmup(s, &shard)?;
        }
        bar.inc();
    }
    bar.finish();
    out.into_run(chains, &adapt, &shard, s.draws, start, gather)
}

/// The fewest chains one thread takes on in the per-chain work between log-density calls.
const CHAINS_PER_TASK: usize = 16;

/// A chain's index and four of its rows, as the per-chain loops receive them.
type ChainRows<A, B, C, D> = (usize, ((A, B), (C, D)));

/// A chain's rows in a leapfrog pass: momentum, position, whether it has stopped, gradient, log
/// density and inverse mass matrix.
type LeapfrogRows<'a> = ChainRows<&'a mut [f64], &'a mut [f64], &'a mut bool, (&'a [f64], (&'a f64, &'a [f64]))>;

/// Runs `body` on every chain's index and rows: over `pool`'s threads in tasks of at least
/// [`CHAINS_PER_TASK`] chains when there is a pool, in chain order otherwise. `$rows` names the
/// per-chain rows as `par_…`/sequential iterator pairs zipped alike in both branches. Every
/// chain's arithmetic is the same either way.
macro_rules! per_chain {
    ($pool:expr, $par:expr, $seq:expr, $body:expr) => {
        match $pool {
            Some(pool) => pool.install(|| $par.enumerate().with_min_len(CHAINS_PER_TASK).for_each($body)),
            None => $seq.enumerate().for_each($body),
        }
    };
}

/// Chains are dealt to ranks in blocks of this many consecutive chains; the cross-chain sums are
/// formed per block and then over blocks in order, whatever the number of ranks.
const REDUCTION_BLOCK: usize = 8;

/// This rank's share of the chains and the collectives over all of them.
struct Shard<'a> {
    comm: &'a dyn Communicator,
    /// Global index of the first local chain.
    lo: usize,
    c_local: usize,
    c_total: usize,
    /// Blocks and chains of every rank.
    blocks: Vec<usize>,
    chains: Vec<usize>,
    /// Seconds spent in collectives.
    seconds: Cell<f64>,
}

/// Cross-chain statistics of one transition, over all ranks' chains.
struct TransitionStats {
    /// Σ 1/accept and count over non-divergent chains (the harmonic mean).
    sum_inv_accept: f64,
    non_divergent: f64,
    sum_accept: f64,
    divergences: f64,
    /// ChEES (warm-up only): Σ weights, Σ w·θ' and Σ θ per coordinate.
    wsum: f64,
    mean1: Vec<f64>,
    mean0: Vec<f64>,
}

impl<'a> Shard<'a> {
    fn new(comm: &'a dyn Communicator, c_total: usize) -> Self {
        let nb = c_total.div_ceil(REDUCTION_BLOCK);
        let size = comm.size();
        let chain_range = |r: usize| {
            let b = share(nb, r, size);
            (b.start * REDUCTION_BLOCK).min(c_total)..(b.end * REDUCTION_BLOCK).min(c_total)
        };
        let blocks = (0..size).map(|r| share(nb, r, size).len()).collect();
        let chains = (0..size).map(|r| chain_range(r).len()).collect();
        let mine = chain_range(comm.rank());
        Self { comm, lo: mine.start, c_local: mine.len(), c_total, blocks, chains, seconds: Cell::new(0.0) }
    }

    fn timed<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let t = Instant::now();
        let r = f();
        self.seconds.set(self.seconds.get() + t.elapsed().as_secs_f64());
        r
    }

    /// Sums over all chains of `k` per-chain quantities (`f(local chain, out)` writes them), in
    /// block order: the same bits for any number of ranks.
    fn sums(&self, k: usize, mut f: impl FnMut(usize, &mut [f64])) -> Result<Vec<f64>> {
        let mut local = Vec::with_capacity(self.c_local.div_ceil(REDUCTION_BLOCK) * k);
        let mut one = vec![0.0; k];
        for block in (0..self.c_local).collect::<Vec<_>>().chunks(REDUCTION_BLOCK) {
            let mut partial = vec![0.0; k];
            for &ci in block {
                one.iter_mut().for_each(|v| *v = 0.0);
                f(ci, &mut one);
                for (p, v) in partial.iter_mut().zip(&one) {
                    *p += v;
                }
            }
            local.extend_from_slice(&partial);
        }
        self.timed(|| self.comm.block_sums(&local, &self.blocks, k))
    }

    fn max(&self, value: f64) -> Result<f64> {
        self.timed(|| self.comm.all_max(value))
    }

    fn min(&self, value: f64) -> Result<f64> {
        self.timed(|| self.comm.all_min(value))
    }

    /// The acceptance statistics of a transition, and in warm-up the ChEES means' sums.
    fn transition_stats(&self, pr: &Proposals<'_>, warm: bool) -> Result<TransitionStats> {
        let d = pr.d;
        let k = if warm { 5 + 2 * d } else { 4 };
        let v = self.sums(k, |ci, o| {
            let (acc, div) = (pr.accept[ci], pr.divergent[ci]);
            if !div {
                o[0] = 1.0 / acc;
                o[1] = 1.0;
            }
            o[2] = acc;
            o[3] = f64::from(u8::from(div));
            if warm {
                let w = if div { 0.0 } else { acc };
                o[4] = w;
                for j in 0..d {
                    let x1 = pr.theta1[ci * d + j];
                    if x1.is_finite() {
                        o[5 + j] = w * x1;
                    }
                    o[5 + d + j] = pr.theta0[ci * d + j];
                }
            }
        })?;
        let (mean1, mean0) = if warm { (v[5..5 + d].to_vec(), v[5 + d..].to_vec()) } else { (Vec::new(), Vec::new()) };
        Ok(TransitionStats {
            sum_inv_accept: v[0],
            non_divergent: v[1],
            sum_accept: v[2],
            divergences: v[3],
            wsum: if warm { v[4] } else { 0.0 },
            mean1,
            mean0,
        })
    }
}

/// The chains' current positions, log densities, gradients and inverse mass diagonals (chain-major,
/// `c × d`), with the log-density calls spent on them.
struct Chains {
    c: usize,
    d: usize,
    theta: Vec<f64>,
    logp: Vec<f64>,
    grad: Vec<f64>,
    inv_mass: Vec<f64>,
    batched_calls: u64,
    evaluations: u64,
}

impl Chains {
    /// Checks the initial positions and evaluates them in one batched call.
    /// `lo` is the global index of the first chain (for the messages).
    fn start<T: BatchLogDensity + ?Sized>(target: &mut T, init: Vec<Vec<f64>>, lo: usize) -> Result<Self> {
        let c = init.len();
        let d = target.dim();
        if let Some(bad) = init.iter().find(|p| p.len() != d) {
            return Err(Error::Shape { what: "initial position".into(), expected: format!("({d},)"), got: format!("({},)", bad.len()) });
        }
        for (ci, p) in init.iter().enumerate() {
            crate::error::check_finite(&format!("initial position of chain {}", lo + ci), p)?;
        }
        let theta: Vec<f64> = init.into_iter().flatten().collect();
        let mut logp = vec![0.0; c];
        let mut grad = vec![0.0; c * d];
        if c > 0 {
            target.logp_batch(&theta, &mut logp, &mut grad)?;
        }
        if let Some(ci) = logp.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: format!("log density at the initial position of chain {}", lo + ci), index: lo + ci });
        }
        Ok(Self { c, d, theta, logp, grad, inv_mass: vec![1.0; c * d], batched_calls: u64::from(c > 0), evaluations: c as u64 })
    }

    /// Metropolis accept/reject of every chain's proposal (one uniform draw from the chain's own
    /// stream per non-divergent chain).
    fn accept_or_reject(&mut self, tr: &Transition, rngs: &mut [StdRng]) {
        let d = self.d;
        for (ci, rng) in rngs.iter_mut().enumerate() {
            let take = !tr.divergent[ci] && rng.gen::<f64>() < tr.accept[ci];
            if take {
                let r = ci * d..(ci + 1) * d;
                self.theta[r.clone()].copy_from_slice(&tr.th_new[r.clone()]);
                self.grad[r.clone()].copy_from_slice(&tr.g_new[r]);
                self.logp[ci] = tr.lp_new[ci];
            }
        }
    }
}

/// One jittered-HMC transition for all chains: the work buffers, the proposals with their final
/// momenta, and their acceptance probabilities.
struct Transition {
    c: usize,
    d: usize,
    /// Leapfrog steps of each chain, and the most of any chain.
    steps: Vec<usize>,
    max_steps: usize,
    /// Momenta (drawn, then integrated) and their initial kinetic energies.
    p: Vec<f64>,
    k0: Vec<f64>,
    th_new: Vec<f64>,
    g_new: Vec<f64>,
    lp_new: Vec<f64>,
    /// Chains whose trajectory reached a non-finite density or gradient.
    dead: Vec<bool>,
    accept: Vec<f64>,
    divergent: Vec<bool>,
    /// The chains still integrating.
    active: Vec<usize>,
}

impl Transition {
    fn new(c: usize, d: usize) -> Self {
        Self {
            c,
            d,
            steps: vec![0; c],
            max_steps: 1,
            p: vec![0.0; c * d],
            k0: vec![0.0; c],
            th_new: vec![0.0; c * d],
            g_new: vec![0.0; c * d],
            lp_new: vec![0.0; c],
            dead: vec![false; c],
            accept: vec![0.0; c],
            divergent: vec![false; c],
            active: Vec::with_capacity(c),
        }
    }

    /// Leapfrog steps per chain: `⌈u · T / ε⌉`, clamped to `1..=max`.
    fn plan(&mut self, adapt: &Adaptation, u: f64, max: usize) {
        for ci in 0..self.c {
            let n = (u * adapt.traj / adapt.step_size(ci)).ceil();
            self.steps[ci] = if n.is_finite() { (n as usize).clamp(1, max) } else { 1 };
        }
        self.max_steps = self.steps.iter().copied().max().unwrap_or(0);
    }

    /// Momenta `p ~ N(0, M)`, `M = diag(1 / inv_mass)`, each chain from its own stream, and their
    /// kinetic energies.
    fn draw_momenta(&mut self, inv_mass: &[f64], rngs: &mut [StdRng], pool: Option<&rayon::ThreadPool>) {
        let d = self.d;
        let body = |(_, ((p, k0), (rng, im))): ChainRows<&mut [f64], &mut f64, &mut StdRng, &[f64]>| {
            let mut k = 0.0;
            for (pj, imj) in p.iter_mut().zip(im) {
                let z: f64 = rng.sample(StandardNormal);
                *pj = z / imj.sqrt();
                k += 0.5 * imj * *pj * *pj;
            }
            *k0 = k;
        };
        per_chain!(
            pool,
            self.p.par_chunks_mut(d).zip(self.k0.par_iter_mut()).zip(rngs.par_iter_mut().zip(inv_mass.par_chunks(d))),
            self.p.chunks_mut(d).zip(self.k0.iter_mut()).zip(rngs.iter_mut().zip(inv_mass.chunks(d))),
            body
        );
    }

    /// Leapfrog integration from the chains' positions, one batched call per step for the chains
    /// still integrating. A chain that meets a non-finite density or gradient stops (`dead`).
    fn integrate<T: BatchLogDensity + ?Sized>(
        &mut self,
        target: &mut T,
        ch: &mut Chains,
        adapt: &Adaptation,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<()> {
        let (c, d) = (self.c, self.d);
        self.th_new.copy_from_slice(&ch.theta);
        self.g_new.copy_from_slice(&ch.grad);
        self.lp_new.copy_from_slice(&ch.logp);
        self.dead.iter_mut().for_each(|x| *x = false);
        // Step `k`'s second half kick and step `k + 1`'s first half kick and drift are one pass
        // over the chains (the same operations in the same order as two passes), so every
        // leapfrog step costs one pass and one batched call.
        for step in 0..=self.max_steps {
            let (steps, max_steps) = (&self.steps, self.max_steps);
            let body = |(ci, ((p, th), (dead, (g, (lp, im))))): LeapfrogRows| {
                let e = adapt.step_size(ci);
                // the second half kick of step `step - 1`, or the end of a chain whose density
                // or gradient is not finite
                if step > 0 && !*dead && steps[ci] >= step {
                    if !lp.is_finite() || g.iter().any(|g| !g.is_finite()) {
                        *dead = true;
                    } else {
                        for (pj, gj) in p.iter_mut().zip(g) {
                            *pj += 0.5 * e * gj;
                        }
                    }
                }
                // the first half kick and the drift of step `step`
                if step < max_steps && !*dead && steps[ci] > step {
                    for ((pj, gj), (tj, imj)) in p.iter_mut().zip(g).zip(th.iter_mut().zip(im)) {
                        *pj += 0.5 * e * gj;
                        *tj += e * imj * *pj;
                    }
                }
            };
            per_chain!(
                pool,
                self.p
                    .par_chunks_mut(d)
                    .zip(self.th_new.par_chunks_mut(d))
                    .zip(self.dead.par_iter_mut().zip(self.g_new.par_chunks(d).zip(self.lp_new.par_iter().zip(ch.inv_mass.par_chunks(d))))),
                self.p
                    .chunks_mut(d)
                    .zip(self.th_new.chunks_mut(d))
                    .zip(self.dead.iter_mut().zip(self.g_new.chunks(d).zip(self.lp_new.iter().zip(ch.inv_mass.chunks(d))))),
                body
            );
            if step == self.max_steps {
                break;
            }
            self.active.clear();
            self.active.extend((0..c).filter(|&ci| !self.dead[ci] && self.steps[ci] > step));
            if self.active.is_empty() {
                break;
            }
            self.evaluate_active(target)?;
            ch.batched_calls += 1;
            ch.evaluations += self.active.len() as u64;
        }
        Ok(())
    }

    /// One batched call for the active chains, evaluated where they are.
    fn evaluate_active<T: BatchLogDensity + ?Sized>(&mut self, target: &mut T) -> Result<()> {
        if self.active.len() == self.c {
            return target.logp_batch(&self.th_new, &mut self.lp_new, &mut self.g_new);
        }
        target.logp_batch_rows(&self.active, &self.th_new, &mut self.lp_new, &mut self.g_new)
    }

    /// Acceptance probabilities from the energy errors; a dead chain, a NaN error or one above
    /// `max_energy_error` is divergent (accepted with probability 0).
    fn judge(&mut self, ch: &Chains, max_energy_error: f64, pool: Option<&rayon::ThreadPool>) {
        let d = self.d;
        let (p, lp_new, k0, dead) = (&self.p, &self.lp_new, &self.k0, &self.dead);
        let body = |(ci, (divergent, accept)): (usize, (&mut bool, &mut f64))| {
            let r = ci * d..(ci + 1) * d;
            let k1: f64 = p[r.clone()].iter().zip(&ch.inv_mass[r]).map(|(pj, im)| 0.5 * im * pj * pj).sum();
            let mut delta = (-lp_new[ci] + k1) - (-ch.logp[ci] + k0[ci]);
            if dead[ci] || delta.is_nan() {
                delta = f64::INFINITY;
            }
            *divergent = delta > max_energy_error;
            *accept = if *divergent { 0.0 } else { (-delta).exp().min(1.0) };
        };
        per_chain!(
            pool,
            self.divergent.par_iter_mut().zip(self.accept.par_iter_mut()),
            self.divergent.iter_mut().zip(self.accept.iter_mut()),
            body
        );
    }

    /// What the ChEES update reads: the proposals against the positions they started from.
    fn proposals<'a>(&'a self, ch: &'a Chains, jitter: f64) -> Proposals<'a> {
        Proposals {
            theta0: &ch.theta,
            theta1: &self.th_new,
            p1: &self.p,
            inv_mass: &ch.inv_mass,
            accept: &self.accept,
            divergent: &self.divergent,
            c: self.c,
            d: self.d,
            jitter,
        }
    }
}

/// Per-chain Welford accumulators of the positions over the middle half of warm-up, for the
/// diagonal mass matrix.
struct MassMatrixWindow {
    /// Whether the mass matrix is adapted at all.
    on: bool,
    start: usize,
    end: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
    n: usize,
}

impl MassMatrixWindow {
    fn new(s: &ManyChainSettings, len: usize) -> Self {
        let on = s.diagonal_mass_matrix;
        let len = if on { len } else { 0 };
        Self { on, start: s.warmup / 4, end: (3 * s.warmup) / 4, mean: vec![0.0; len], m2: vec![0.0; len], n: 0 }
    }

    /// Adds the positions of warm-up iteration `it`; at the window's last iteration writes the
    /// regularised variances (as in Stan) into `inv_mass` and returns true.
    fn observe(&mut self, it: usize, theta: &[f64], inv_mass: &mut [f64]) -> bool {
        if !self.on || it < self.start || it >= self.end {
            return false;
        }
        self.n += 1;
        let nf = self.n as f64;
        for (j, x) in theta.iter().enumerate() {
            let delta = x - self.mean[j];
            self.mean[j] += delta / nf;
            self.m2[j] += delta * (x - self.mean[j]);
        }
        if it + 1 != self.end || self.n < 2 {
            return false;
        }
        for (j, im) in inv_mass.iter_mut().enumerate() {
            let var = self.m2[j] / (nf - 1.0);
            let reg = (nf / (nf + 5.0)) * var + 1e-3 * (5.0 / (nf + 5.0));
            *im = if reg.is_finite() && reg > 0.0 { reg } else { 1.0 };
        }
        true
    }
}

/// What the run keeps: draws, divergence counts and per-iteration statistics.
struct Collected {
    draws: Vec<Vec<Vec<f64>>>,
    logp: Vec<Vec<f64>>,
    warmup_divergences: Vec<usize>,
    divergences: Vec<usize>,
    iterations: Vec<IterationStats>,
}

impl Collected {
    fn new(c: usize, draws: usize, iterations: usize) -> Self {
        Self {
            draws: vec![Vec::with_capacity(draws); c],
            logp: vec![Vec::with_capacity(draws); c],
            warmup_divergences: vec![0; c],
            divergences: vec![0; c],
            iterations: Vec::with_capacity(iterations),
        }
    }

    /// Counts the divergent transitions per chain (warm-up or drawing) and returns their number.
    fn count_divergences(&mut self, divergent: &[bool], warm: bool) -> usize {
        let counts = if warm { &mut self.warmup_divergences } else { &mut self.divergences };
        let mut n = 0;
        for (count, _) in counts.iter_mut().zip(divergent).filter(|(_, &dv)| dv) {
            *count += 1;
            n += 1;
        }
        n
    }

    /// Keeps every chain's current position and log density as a draw.
    fn keep_draws(&mut self, ch: &Chains) {
        for ci in 0..ch.c {
            self.draws[ci].push(ch.theta[ci * ch.d..(ci + 1) * ch.d].to_vec());
            self.logp[ci].push(ch.logp[ci]);
        }
    }

    /// Gathers every chain's draws, step size, mass matrix and divergence counts on rank 0 (or,
    /// without `gather`, keeps this rank's chains on every rank).
    fn into_run(
        self,
        ch: Chains,
        adapt: &Adaptation,
        shard: &Shard<'_>,
        draws: usize,
        start: Instant,
        gather: bool,
    ) -> Result<Option<ManyChainRun>> {
        let d = ch.d;
        // per chain: draws × (d + 1), then step size, inverse mass (d), the two divergence counts
        let per = draws * (d + 1) + d + 3;
        let mut local = Vec::with_capacity(ch.c * per);
        for ci in 0..ch.c {
            for (x, lp) in self.draws[ci].iter().zip(&self.logp[ci]) {
                local.extend_from_slice(x);
                local.push(*lp);
            }
            local.push(adapt.step_size(ci));
            local.extend_from_slice(&ch.inv_mass[ci * d..(ci + 1) * d]);
            local.push(self.warmup_divergences[ci] as f64);
            local.push(self.divergences[ci] as f64);
        }
        let counts: Vec<usize> = shard.chains.iter().map(|c| c * per).collect();
        let batched_calls = shard.max(ch.batched_calls as f64)? as u64;
        let evaluations = shard.sums(1, |ci, o| o[0] = if ci == 0 { ch.evaluations as f64 } else { 0.0 })?[0] as u64;
        let (all, first_chain, c) = if gather {
            let gathered = shard.timed(|| shard.comm.gather_to_root(&local, &counts))?;
            let Some(all) = gathered else { return Ok(None) };
            (all, 0, shard.c_total)
        } else {
            (local, shard.lo, shard.c_local)
        };
        let mut run = ManyChainRun {
            draws: Vec::with_capacity(c),
            logp: Vec::with_capacity(c),
            step_sizes: Vec::with_capacity(c),
            trajectory_length: adapt.traj,
            inverse_mass: Vec::with_capacity(c),
            warmup_divergences: Vec::with_capacity(c),
            divergences: Vec::with_capacity(c),
            iterations: self.iterations,
            batched_calls,
            gradient_evaluations: evaluations,
            seconds: 0.0,
            communication_seconds: 0.0,
            ranks: shard.comm.size(),
            first_chain,
            total_chains: shard.c_total,
        };
        for chain in all.chunks(per) {
            let (body, tail) = chain.split_at(draws * (d + 1));
            run.draws.push(body.chunks(d + 1).map(|r| r[..d].to_vec()).collect());
            run.logp.push(body.chunks(d + 1).map(|r| r[d]).collect());
            run.step_sizes.push(tail[0]);
            run.inverse_mass.push(tail[1..1 + d].to_vec());
            run.warmup_divergences.push(tail[1 + d] as usize);
            run.divergences.push(tail[2 + d] as usize);
        }
        run.seconds = start.elapsed().as_secs_f64();
        run.communication_seconds = shard.seconds.get();
        Ok(Some(run))
    }
}

/// The ChEES adaptation state: step size(s) by dual averaging, trajectory length by Adam on `ln T`,
/// and the moving averages of both that are used after warm-up.
struct Adaptation {
    /// One step size per chain ([`StepSizeAdaptation::PerChain`]) or one for all.
    per_chain: bool,
    da: Vec<DualAveraging>,
    eps: Vec<f64>,
    log_eps_ma: Vec<f64>,
    /// Iteration count of the moving averages (weight `ma_step^{-decay}`).
    ma_step: f64,
    traj: f64,
    log_traj_ma: f64,
    adam: Adam,
}

impl Adaptation {
    fn new(s: &ManyChainSettings, c: usize) -> Self {
        let per_chain = s.step_size == StepSizeAdaptation::PerChain;
        let n = if per_chain { c } else { 1 };
        Self {
            per_chain,
            da: vec![DualAveraging::new(s.initial_step_size); n],
            eps: vec![s.initial_step_size; n],
            log_eps_ma: vec![0.0; n],
            ma_step: 1.0,
            traj: s.initial_step_size,
            log_traj_ma: 0.0,
            adam: Adam::default(),
        }
    }

    /// The step size of chain `ci`.
    fn step_size(&self, ci: usize) -> f64 {
        self.eps[if self.per_chain { ci } else { 0 }]
    }

    /// The mean step size over all chains.
    fn mean_step_size(&self, shard: &Shard<'_>) -> Result<f64> {
        if !self.per_chain {
            return Ok(self.eps[0]);
        }
        Ok(shard.sums(1, |ci, o| o[0] = self.eps[ci])?[0] / shard.c_total as f64)
    }

    /// The smallest and largest step size over all chains.
    fn step_size_range(&self, shard: &Shard<'_>) -> Result<(f64, f64)> {
        let emin = self.eps.iter().copied().fold(f64::INFINITY, f64::min);
        let emax = self.eps.iter().copied().fold(0.0, f64::max);
        if !self.per_chain {
            return Ok((emin, emax));
        }
        Ok((shard.min(emin)?, shard.max(emax)?))
    }

    /// One ChEES adaptation step (BlackJAX's `compute_parameters`, with ascent on the criterion).
    fn update(&mut self, pr: &Proposals<'_>, stats: &TransitionStats, s: &ManyChainSettings, shard: &Shard<'_>) -> Result<()> {
        let w = self.ma_step.powf(-s.decay_rate);
        self.update_step_sizes(pr, stats, s, w);
        let gradient = chees_gradient(pr, stats, self.traj, shard)?;
        let log_t = self.traj.ln();
        let upd = self.adam.ascent(gradient, s.learning_rate);
        let new_log_t = if (log_t + upd).is_finite() { log_t + upd } else { log_t };
        self.log_traj_ma = (1.0 - w) * self.log_traj_ma + w * new_log_t;
        let (emin, emax) = self.step_size_range(shard)?;
        let cap = s.max_leapfrog_steps as f64 * emin;
        self.traj = self.log_traj_ma.exp().clamp(emax.min(cap), cap);
        self.ma_step += 1.0;
        Ok(())
    }

    /// Dual averaging towards the target acceptance: of the harmonic mean over non-divergent
    /// chains (shared), or of each chain's own; then the moving averages of `ln ε` with weight `w`.
    fn update_step_sizes(&mut self, pr: &Proposals<'_>, stats: &TransitionStats, s: &ManyChainSettings, w: f64) {
        if !self.per_chain {
            let hm = if stats.non_divergent == 0.0 { 0.0 } else { stats.non_divergent / stats.sum_inv_accept };
            let hm = if hm.is_finite() { hm } else { 0.0 };
            self.da[0].update(s.target_accept - hm);
        } else {
            for ci in 0..pr.c {
                self.da[ci].update(s.target_accept - pr.accept[ci]);
            }
        }
        for ((dai, e), ma) in self.da.iter().zip(self.eps.iter_mut()).zip(self.log_eps_ma.iter_mut()) {
            let x = dai.log_x.exp();
            if x.is_finite() && x > 0.0 {
                *e = x;
            }
            *ma = (1.0 - w) * *ma + w * e.ln();
        }
    }

    /// Restarts the dual averaging from the current step sizes (after the metric changed).
    fn restart_step_size(&mut self) {
        for (dai, e) in self.da.iter_mut().zip(self.eps.iter()) {
            *dai = DualAveraging::new(*e);
        }
        self.ma_step = 1.0;
    }

    /// At the end of warm-up: switch to the averaged step sizes and trajectory length.
    fn finish_warmup(&mut self, s: &ManyChainSettings, shard: &Shard<'_>) -> Result<()> {
        for (e, ma) in self.eps.iter_mut().zip(&self.log_eps_ma) {
            if ma.is_finite() && *ma != 0.0 {
                *e = ma.exp();
            }
        }
        if self.log_traj_ma.is_finite() && self.log_traj_ma != 0.0 {
            self.traj = self.log_traj_ma.exp();
        }
        let (emin, _) = self.step_size_range(shard)?;
        self.traj = self.traj.clamp(emin.min(self.traj), s.max_leapfrog_steps as f64 * emin);
        Ok(())
    }
}

/// A transition's proposals and the positions they started from, as the adaptation reads them.
struct Proposals<'a> {
    theta0: &'a [f64],
    theta1: &'a [f64],
    p1: &'a [f64],
    inv_mass: &'a [f64],
    accept: &'a [f64],
    divergent: &'a [bool],
    c: usize,
    d: usize,
    jitter: f64,
}

/// The ChEES criterion's gradient with respect to `ln T`, in each chain's whitened coordinates,
/// weighted by acceptance (divergent chains left out), over all ranks' chains.
fn chees_gradient(pr: &Proposals<'_>, stats: &TransitionStats, traj: f64, shard: &Shard<'_>) -> Result<f64> {
    let d = pr.d;
    let wsum = stats.wsum + 1e-20;
    let mean1: Vec<f64> = stats.mean1.iter().map(|m| m / wsum).collect();
    let mean0: Vec<f64> = stats.mean0.iter().map(|m| m / shard.c_total as f64).collect();
    let num = shard.sums(1, |ci, o| {
        if pr.divergent[ci] {
            return;
        }
        let (mut n1, mut n0, mut dv) = (0.0, 0.0, 0.0);
        for j in 0..d {
            let sq = pr.inv_mass[ci * d + j].sqrt();
            let x1 = (pr.theta1[ci * d + j] - mean1[j]) / sq;
            let x0 = (pr.theta0[ci * d + j] - mean0[j]) / sq;
            let v = pr.p1[ci * d + j] * sq;
            n1 += x1 * x1;
            n0 += x0 * x0;
            dv += x1 * v;
        }
        let g = pr.jitter * traj * (n1 - n0) * dv;
        if g.is_finite() {
            o[0] = pr.accept[ci] * g;
        }
    })?[0];
    Ok(num / wsum)
}
