//! Batched many-chain NUTS: every chain builds its own trajectory tree with its own step size and
//! diagonal mass matrix, while the log densities of all chains that need one are evaluated in one
//! [`BatchLogDensity`] call per leapfrog step.
//!
//! The details are in the docs of [`sample_nuts_chains`].

use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::nuts::{DrawStats, NutsRun, NutsSettings};
use super::target::BatchLogDensity;
use crate::communicator::{share, Communicator, SingleProcess};
use crate::num::rng::{stream, Purpose};
use crate::progress::Progress;
use crate::workers::Workers;
use crate::{Error, Result};

/// The output of [`sample_nuts_chains`]: one [`NutsRun`] per chain, and the cost of the run.
///
/// ```
/// use weightspace::mcmc::{sample_nuts_chains, BatchLogDensity, LogDensity, NutsSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {} // the default evaluates chain by chain
/// let run = sample_nuts_chains(&mut StdNormal, vec![vec![0.5]; 4], &NutsSettings { warmup: 100, draws: 20, ..Default::default() })?;
/// assert_eq!(run.chains.len(), 4);
/// assert_eq!(run.draws()[2].len(), 20); // [chain][draw][coordinate]
/// assert_eq!(run.chains[0].stats.len(), 120); // every transition, warm-up first
/// assert!(run.gradient_evaluations >= run.batched_calls);
/// assert_eq!(run.divergences(), 0);
/// assert!(run.mean_tree_depth() >= 1.0);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NutsChains {
    /// Every chain's draws and per-transition statistics, in chain order. Each chain's
    /// [`NutsRun::seconds`] is the whole run's wall time.
    pub chains: Vec<NutsRun>,
    /// Batched log-density calls (one per leapfrog step of the chains still running).
    pub batched_calls: u64,
    /// Positions evaluated in total, over all chains (leapfrog steps, the step-size search and
    /// the initial positions).
    pub gradient_evaluations: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Of [`seconds`](Self::seconds), those spent gathering the chains on rank 0 (0 on one process).
    pub communication_seconds: f64,
    /// Processes the chains were split across ([`sample_nuts_chains_on`]); 1 otherwise.
    pub ranks: usize,
}

impl NutsChains {
    /// The kept draws, `[chain][draw][coordinate]`.
    pub fn draws(&self) -> Vec<Vec<Vec<f64>>> {
        self.chains.iter().map(|c| c.draws.clone()).collect()
    }

    /// Divergent transitions after warm-up, over all chains.
    pub fn divergences(&self) -> usize {
        self.chains.iter().map(NutsRun::divergences).sum()
    }

    /// Mean tree depth after warm-up, over all chains' transitions.
    pub fn mean_tree_depth(&self) -> f64 {
        let (sum, n) = self
            .chains
            .iter()
            .flat_map(|c| c.stats.iter().filter(|s| !s.warmup))
            .fold((0.0, 0usize), |(s, n), st| (s + st.tree_depth as f64, n + 1));
        sum / n.max(1) as f64
    }
}

/// Runs `C = init.len()` NUTS chains on `target` together, from the given initial positions, with
/// the settings of the single-chain [`sample_nuts`](super::sample_nuts).
///
/// Every chain is the NUTS of Stan and NumPyro (multinomial sampling, the generalised U-turn
/// criterion on momentum sums, with the extra checks across merged subtrees; biased progressive
/// sampling between doublings), with its own warm-up:
/// - a step-size search at the start and after every mass-matrix update (doubling or halving until
///   one leapfrog step's acceptance crosses 0.8);
/// - dual averaging of the step size towards [`NutsSettings::target_accept`] (γ = 0.05, t₀ = 10,
///   κ = 0.75), the final step size being the averaged iterate;
/// - a diagonal mass matrix from the chain's own draws in Stan's windows (75 initial, 50 final
///   iterations, windows doubling from 25; regularised as `n/(n+5)·var + 10⁻³·5/(n+5)`); with
///   fewer than 20 warm-up iterations only the step size is adapted.
///
/// The chains run asynchronously in lockstep: at each tick every chain that is not finished with
/// all its transitions proposes one leapfrog position, and one batched call evaluates them all (for
/// a BNN, one fused forward/backward whose weight-sample axis is the chains). A chain whose tree is
/// complete starts its next transition at once, so no chain waits for another's tree; chains that
/// have made all their transitions drop out of the batch. Each chain draws its momenta, directions
/// and proposals from its own random stream, keyed by [`NutsSettings::seed`] and its index, so a
/// chain's draws do not depend on the others.
///
/// A leapfrog step whose energy error exceeds [`NutsSettings::max_energy_error`] or whose log
/// density or gradient is not finite is a divergence: the transition ends there, counted, never a
/// panic.
///
/// # Errors
/// [`Error::InvalidConfig`] for bad settings or no chains; [`Error::Shape`] when an initial
/// position has the wrong length; [`Error::NonFinite`] when an initial position or its log density
/// is not finite; any error of `target`.
///
/// ```
/// use weightspace::mcmc::{sample_nuts_chains, BatchLogDensity, LogDensity, NutsSettings};
/// /// N(3, 1) in 2-D, evaluated for all chains at once.
/// struct Normal3;
/// impl LogDensity for Normal3 {
///     fn dim(&self) -> usize { 2 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = 3.0 - x[0];
///         g[1] = 3.0 - x[1];
///         Ok(-0.5 * ((x[0] - 3.0).powi(2) + (x[1] - 3.0).powi(2)))
///     }
/// }
/// impl BatchLogDensity for Normal3 {
///     fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
///         for (c, l) in lp.iter_mut().enumerate() {
///             *l = self.logp(&x[2 * c..2 * c + 2], &mut g[2 * c..2 * c + 2])?;
///         }
///         Ok(())
///     }
/// }
/// let init = vec![vec![0.0, 0.0]; 16];
/// let run = sample_nuts_chains(&mut Normal3, init, &NutsSettings { warmup: 300, draws: 100, ..Default::default() })?;
/// let mean = run.draws().iter().flatten().map(|d| d[0]).sum::<f64>() / 1600.0;
/// assert!((mean - 3.0).abs() < 0.2);
/// assert_eq!(run.divergences(), 0);
/// assert!(run.chains.iter().all(|c| c.step_size().unwrap() > 0.3)); // each chain's own step size
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_nuts_chains<T: BatchLogDensity + ?Sized>(target: &mut T, init: Vec<Vec<f64>>, settings: &NutsSettings) -> Result<NutsChains> {
    sample_nuts_chains_on(&SingleProcess, target, init, settings)?
        .ok_or_else(|| Error::Communication { what: "single process".into(), reason: "rank 0 received no draws".into() })
}

/// [`sample_nuts_chains`] with the chains split across the processes of `comm` (see
/// [`comm`](crate::comm)): `Some(run)` on rank 0, with every chain, and `None` on the other ranks.
/// Every rank passes the same `init` (all `C` positions) and `settings`; each evaluates only its
/// own contiguous share of the chains. The chains share no statistics and each keeps the random
/// stream of its global index, so the draws are the same, bit for bit, on any number of ranks.
///
/// ```
/// use weightspace::comm::SingleProcess;
/// use weightspace::mcmc::{sample_nuts_chains, sample_nuts_chains_on, BatchLogDensity, LogDensity, NutsSettings};
/// struct StdNormal;
/// impl LogDensity for StdNormal {
///     fn dim(&self) -> usize { 1 }
///     fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
///         g[0] = -x[0];
///         Ok(-0.5 * x[0] * x[0])
///     }
/// }
/// impl BatchLogDensity for StdNormal {}
/// let settings = NutsSettings { warmup: 50, draws: 3, ..Default::default() };
/// let run = sample_nuts_chains_on(&SingleProcess, &mut StdNormal, vec![vec![0.5]; 6], &settings)?.expect("rank 0 has the draws");
/// assert_eq!(run.ranks, 1);
/// assert_eq!(run.draws(), sample_nuts_chains(&mut StdNormal, vec![vec![0.5]; 6], &settings)?.draws());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn sample_nuts_chains_on<T: BatchLogDensity + ?Sized>(
    comm: &dyn Communicator,
    target: &mut T,
    init: Vec<Vec<f64>>,
    settings: &NutsSettings,
) -> Result<Option<NutsChains>> {
    if init.is_empty() {
        return Err(Error::config("chains", 0, "must be >= 1 (one initial position per chain)"));
    }
    let total = init.len();
    let mine = share(total, comm.rank(), comm.size());
    let local: Vec<Vec<f64>> = init.into_iter().skip(mine.start).take(mine.len()).collect();
    let part = run_chains(target, local, mine.start, settings, settings.progress && comm.is_root())?;
    if comm.size() == 1 {
        return Ok(Some(part));
    }
    let t = Instant::now();
    let flat = to_flat(&part, target.dim());
    let per = flat_len(target.dim(), settings);
    // per rank: its chains, after the batched-call and gradient counts
    let counts: Vec<usize> = (0..comm.size()).map(|r| share(total, r, comm.size()).len() * per + 2).collect();
    let all = comm.gather_to_root(&flat, &counts)?;
    let communication_seconds = t.elapsed().as_secs_f64();
    let Some(all) = all else { return Ok(None) };
    let mut run = NutsChains {
        chains: Vec::with_capacity(total),
        batched_calls: 0,
        gradient_evaluations: 0,
        seconds: part.seconds + communication_seconds,
        communication_seconds,
        ranks: comm.size(),
    };
    let mut offset = 0;
    for c in counts {
        let block = &all[offset..offset + c];
        offset += c;
        run.batched_calls = run.batched_calls.max(block[0] as u64);
        run.gradient_evaluations += block[1] as u64;
        for chain in block[2..].chunks(per) {
            run.chains.push(from_flat(chain, target.dim(), settings, run.seconds));
        }
    }
    Ok(Some(run))
}

/// Values per chain in the gather: the draws, then six per transition.
fn flat_len(d: usize, s: &NutsSettings) -> usize {
    s.draws * d + 6 * (s.warmup + s.draws)
}

/// A rank's part as flat values: its batched calls and evaluations, then every chain.
fn to_flat(part: &NutsChains, d: usize) -> Vec<f64> {
    let mut v = vec![part.batched_calls as f64, part.gradient_evaluations as f64];
    for c in &part.chains {
        v.extend(c.draws.iter().flatten());
        for s in &c.stats {
            v.extend([
                f64::from(u8::from(s.warmup)),
                f64::from(u8::from(s.diverging)),
                s.tree_depth as f64,
                f64::from(u8::from(s.max_depth_reached)),
                s.leapfrog_steps as f64,
                s.step_size,
            ]);
        }
    }
    debug_assert!(part.chains.iter().all(|c| c.draws.iter().all(|x| x.len() == d)));
    v
}

fn from_flat(v: &[f64], d: usize, s: &NutsSettings, seconds: f64) -> NutsRun {
    let (body, tail) = v.split_at(s.draws * d);
    NutsRun {
        draws: body.chunks(d.max(1)).map(<[f64]>::to_vec).collect(),
        stats: tail
            .chunks(6)
            .map(|r| DrawStats {
                warmup: r[0] != 0.0,
                diverging: r[1] != 0.0,
                tree_depth: r[2] as u64,
                max_depth_reached: r[3] != 0.0,
                leapfrog_steps: r[4] as u64,
                step_size: r[5],
            })
            .collect(),
        seconds,
    }
}

/// Runs the chains `init` (global indices `first_chain..`) on this process.
pub(crate) fn run_chains<T: BatchLogDensity + ?Sized>(
    target: &mut T,
    init: Vec<Vec<f64>>,
    first_chain: usize,
    settings: &NutsSettings,
    progress: bool,
) -> Result<NutsChains> {
    settings.validate()?;
    let start = Instant::now();
    let d = target.dim();
    let c = init.len();
    for (i, x) in init.iter().enumerate() {
        if x.len() != d {
            return Err(Error::Shape {
                what: format!("initial position of chain {}", first_chain + i),
                expected: format!("({d},)"),
                got: format!("({},)", x.len()),
            });
        }
        crate::error::check_finite(&format!("initial position of chain {}", first_chain + i), x)?;
    }
    // one set of threads for the chains' tree updates and the target's evaluations
    let workers = Workers::new(settings.threads)?;
    target.share_workers(&workers);
    let mut batch = Batch::new(d);
    let mut chains = Vec::with_capacity(c);
    if c > 0 {
        let flat: Vec<f64> = init.iter().flatten().copied().collect();
        let mut lp = vec![0.0; c];
        let mut g = vec![0.0; c * d];
        target.logp_batch(&flat, &mut lp, &mut g)?;
        batch.calls += 1;
        for (i, x) in init.into_iter().enumerate() {
            let gi = &g[i * d..(i + 1) * d];
            if !lp[i].is_finite() || gi.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("log density or gradient at the initial position of chain {}", first_chain + i),
                    index: 0,
                });
            }
            let rng = stream(settings.seed, Purpose::Transition, &[(first_chain + i) as u64]);
            chains.push(Chain::new(x, lp[i], gi.to_vec(), rng, settings));
        }
    }
    let total_transitions = c * (settings.warmup + settings.draws);
    let bar = Progress::new(total_transitions, progress, "nuts chains");
    let per_task = chains_per_task(d);
    let mut slot_of = vec![usize::MAX; c];
    loop {
        batch.active.clear();
        batch.active.extend((0..c).filter(|&i| chains[i].phase != Phase::Finished));
        if batch.active.is_empty() {
            break;
        }
        batch.evaluate(target, &chains)?;
        slot_of.iter_mut().for_each(|s| *s = usize::MAX);
        for (slot, &i) in batch.active.iter().enumerate() {
            slot_of[i] = slot;
        }
        let (lp, g) = (&batch.lp, &batch.g);
        let advance = |(ch, &slot): (&mut Chain, &usize)| -> usize {
            if slot == usize::MAX {
                return 0;
            }
            let before = ch.stats.len();
            ch.advance(lp[slot], &g[slot * d..(slot + 1) * d], settings);
            ch.stats.len() - before
        };
        let finished: usize = match workers.pool() {
            Some(pool) if batch.active.len() >= 2 * per_task => {
                pool.install(|| chains.par_iter_mut().zip(slot_of.par_iter()).with_min_len(per_task).map(advance).sum())
            }
            _ => chains.iter_mut().zip(slot_of.iter()).map(advance).sum(),
        };
        bar.inc_by(finished);
    }
    bar.finish();
    let seconds = start.elapsed().as_secs_f64();
    Ok(NutsChains {
        gradient_evaluations: batch.evaluations + c as u64,
        batched_calls: batch.calls,
        chains: chains.into_iter().map(|ch| NutsRun { draws: ch.draws, stats: ch.stats, seconds }).collect(),
        seconds,
        communication_seconds: 0.0,
        ranks: 1,
    })
}

/// The fewest chains one task of the thread pool advances: enough for [`MIN_WORK_PER_TASK`]
/// coordinates of tree bookkeeping (a chain's step costs a few passes over its `d` coordinates plus
/// a fixed part worth about 64 of them): 52–54 chains of an f1 network (11–14 coordinates), 6 of
/// an f2 network (594). Fewer running chains than two tasks' worth advance on one thread.
fn chains_per_task(d: usize) -> usize {
    (MIN_WORK_PER_TASK / (d + 64)).max(1)
}

/// See [`chains_per_task`].
const MIN_WORK_PER_TASK: usize = 4096;

/// The batched evaluation of the chains that are still running.
struct Batch {
    d: usize,
    active: Vec<usize>,
    x: Vec<f64>,
    lp: Vec<f64>,
    g: Vec<f64>,
    calls: u64,
    evaluations: u64,
}

impl Batch {
    fn new(d: usize) -> Self {
        Self { d, active: Vec::new(), x: Vec::new(), lp: Vec::new(), g: Vec::new(), calls: 0, evaluations: 0 }
    }

    fn evaluate<T: BatchLogDensity + ?Sized>(&mut self, target: &mut T, chains: &[Chain]) -> Result<()> {
        let n = self.active.len();
        self.x.clear();
        for &i in &self.active {
            self.x.extend_from_slice(&chains[i].z_new);
        }
        self.lp.resize(n, 0.0);
        self.g.resize(n * self.d, 0.0);
        target.logp_batch(&self.x, &mut self.lp, &mut self.g)?;
        self.calls += 1;
        self.evaluations += n as u64;
        Ok(())
    }
}

/// Where a chain is: searching for a step size, building a tree, or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StepSearch,
    Tree,
    Finished,
}

/// Stan's dual averaging of `ln ε` (Hoffman & Gelman 2014, with the iterate average).
#[derive(Debug, Clone, Copy)]
struct DualAveraging {
    mu: f64,
    s_bar: f64,
    x_bar: f64,
    counter: f64,
}

impl DualAveraging {
    const GAMMA: f64 = 0.05;
    const T0: f64 = 10.0;
    const KAPPA: f64 = 0.75;

    fn new(eps: f64) -> Self {
        Self { mu: (10.0 * eps).ln(), s_bar: 0.0, x_bar: 0.0, counter: 0.0 }
    }

    /// The next step size after a transition with acceptance statistic `accept`.
    fn learn(&mut self, accept: f64, delta: f64) -> f64 {
        self.counter += 1.0;
        let eta = 1.0 / (self.counter + Self::T0);
        self.s_bar = (1.0 - eta) * self.s_bar + eta * (delta - accept.min(1.0));
        let x = self.mu - self.s_bar * self.counter.sqrt() / Self::GAMMA;
        let x_eta = self.counter.powf(-Self::KAPPA);
        self.x_bar = (1.0 - x_eta) * self.x_bar + x_eta * x;
        x.exp()
    }

    /// The averaged step size (after at least one [`learn`](Self::learn)).
    fn final_step_size(&self) -> f64 {
        self.x_bar.exp()
    }
}

/// Stan's windowed adaptation schedule of the mass matrix.
#[derive(Debug, Clone, Copy)]
struct Windows {
    enabled: bool,
    warmup: usize,
    init_buffer: usize,
    term_buffer: usize,
    window_size: usize,
    next_window: usize,
}

impl Windows {
    fn new(warmup: usize) -> Self {
        let (mut init, mut term, mut base) = (75, 50, 25);
        if init + base + term > warmup {
            init = (0.15 * warmup as f64) as usize;
            term = (0.1 * warmup as f64) as usize;
            base = warmup - (init + term);
        }
        Self { enabled: warmup >= 20, warmup, init_buffer: init, term_buffer: term, window_size: base, next_window: init + base - 1 }
    }

    /// Whether warm-up iteration `i` is inside a window (its draw counts).
    fn in_window(&self, i: usize) -> bool {
        self.enabled && i >= self.init_buffer && i < self.warmup - self.term_buffer && i != self.warmup
    }

    /// Whether a window ends at iteration `i`; then moves to the next window.
    fn window_ends(&mut self, i: usize) -> bool {
        if !(self.enabled && i == self.next_window && i != self.warmup) {
            return false;
        }
        let last = self.warmup - self.term_buffer - 1;
        if self.next_window != last {
            self.window_size *= 2;
            self.next_window = i + self.window_size;
            if self.next_window != last && self.next_window + 2 * self.window_size >= self.warmup - self.term_buffer {
                self.next_window = last;
            }
        }
        true
    }
}

/// `ln(eᵃ + eᵇ)`.
fn logaddexp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The generalised no-U-turn criterion: the segment with momentum sum `rho` and end momenta `pa`,
/// `pb` keeps going while both ends' velocities point along `rho`.
fn turning(inv_mass: &[f64], pa: &[f64], pb: &[f64], rho: &[f64]) -> bool {
    let (mut a, mut b) = (0.0, 0.0);
    for j in 0..rho.len() {
        a += inv_mass[j] * pa[j] * rho[j];
        b += inv_mass[j] * pb[j] * rho[j];
    }
    !(a > 0.0 && b > 0.0)
}

/// One chain: its state, its adaptation, the tree it is building and its output.
struct Chain {
    rng: StdRng,
    phase: Phase,
    /// Current position, its gradient and log density.
    z: Vec<f64>,
    g: Vec<f64>,
    logp: f64,
    /// Transitions made.
    iter: usize,
    total: usize,
    warmup: usize,
    // adaptation
    eps: f64,
    dual: DualAveraging,
    inv_mass: Vec<f64>,
    windows: Windows,
    w_n: f64,
    w_mean: Vec<f64>,
    w_m2: Vec<f64>,
    search_dir: i8,
    search_rounds: u32,
    // the trajectory
    h0: f64,
    left: [Vec<f64>; 3],
    right: [Vec<f64>; 3],
    prop: [Vec<f64>; 2],
    prop_lp: f64,
    log_w: f64,
    rho: Vec<f64>,
    depth: u32,
    n_leapfrog: u64,
    sum_accept: f64,
    diverging: bool,
    max_depth_reached: bool,
    // the subtree being built (in the direction `dir`, `2^depth` leaves)
    dir: f64,
    sub_n: usize,
    edge: [Vec<f64>; 3],
    sub_first_p: Vec<f64>,
    sub_rho: Vec<f64>,
    sub_log_w: f64,
    sub_prop: [Vec<f64>; 2],
    sub_prop_lp: f64,
    /// Per level k: the first momentum of the open sub-subtree of size `2^k`, the momentum sum
    /// before it and the momentum of the leaf before it.
    cp_first: Vec<Vec<f64>>,
    cp_prefix: Vec<Vec<f64>>,
    cp_prev: Vec<Vec<f64>>,
    // the pending leapfrog step
    p_half: Vec<f64>,
    z_new: Vec<f64>,
    p_new: Vec<f64>,
    scratch: Vec<f64>,
    // output
    draws: Vec<Vec<f64>>,
    stats: Vec<DrawStats>,
}

impl Chain {
    fn new(z: Vec<f64>, logp: f64, g: Vec<f64>, rng: StdRng, s: &NutsSettings) -> Self {
        let d = z.len();
        let levels = s.max_tree_depth as usize + 1;
        let v = || vec![0.0; d];
        let mut ch = Self {
            rng,
            phase: Phase::StepSearch,
            z,
            g,
            logp,
            iter: 0,
            total: s.warmup + s.draws,
            warmup: s.warmup,
            eps: 1.0,
            dual: DualAveraging::new(1.0),
            inv_mass: vec![1.0; d],
            windows: Windows::new(s.warmup),
            w_n: 0.0,
            w_mean: v(),
            w_m2: v(),
            search_dir: 0,
            search_rounds: 0,
            h0: 0.0,
            left: [v(), v(), v()],
            right: [v(), v(), v()],
            prop: [v(), v()],
            prop_lp: 0.0,
            log_w: 0.0,
            rho: v(),
            depth: 0,
            n_leapfrog: 0,
            sum_accept: 0.0,
            diverging: false,
            max_depth_reached: false,
            dir: 1.0,
            sub_n: 0,
            edge: [v(), v(), v()],
            sub_first_p: v(),
            sub_rho: v(),
            sub_log_w: f64::NEG_INFINITY,
            sub_prop: [v(), v()],
            sub_prop_lp: 0.0,
            cp_first: vec![v(); levels],
            cp_prefix: vec![v(); levels],
            cp_prev: vec![v(); levels],
            p_half: v(),
            z_new: v(),
            p_new: v(),
            scratch: v(),
            draws: Vec::with_capacity(s.draws),
            stats: Vec::with_capacity(s.warmup + s.draws),
        };
        ch.search_start();
        ch
    }

    fn kinetic(&self, p: &[f64]) -> f64 {
        0.5 * p.iter().zip(&self.inv_mass).map(|(p, m)| p * p * m).sum::<f64>()
    }

    /// Draws a momentum `N(0, M)` into `p`.
    fn draw_momentum(rng: &mut StdRng, inv_mass: &[f64], p: &mut [f64]) {
        for (pj, m) in p.iter_mut().zip(inv_mass) {
            let n: f64 = rng.sample(StandardNormal);
            *pj = n / m.sqrt();
        }
    }

    /// Half kick and drift from `(z, p, g)` with signed step `e`; the kick after the evaluation
    /// is in [`kick`](Self::kick).
    fn drift(&mut self, z: &[f64], p: &[f64], g: &[f64], e: f64) {
        for j in 0..z.len() {
            self.p_half[j] = p[j] + 0.5 * e * g[j];
            self.z_new[j] = z[j] + e * self.inv_mass[j] * self.p_half[j];
        }
    }

    fn kick(&mut self, g: &[f64], e: f64) {
        for ((pn, ph), gj) in self.p_new.iter_mut().zip(&self.p_half).zip(g) {
            *pn = ph + 0.5 * e * gj;
        }
    }

    /// One leapfrog step of the step-size search from the current position, with a fresh momentum.
    fn search_start(&mut self) {
        self.phase = Phase::StepSearch;
        let mut p = std::mem::take(&mut self.edge[1]);
        Self::draw_momentum(&mut self.rng, &self.inv_mass, &mut p);
        self.h0 = -self.logp + self.kinetic(&p);
        let (z, g) = (std::mem::take(&mut self.z), std::mem::take(&mut self.g));
        self.drift(&z, &p, &g, self.eps);
        (self.z, self.g, self.edge[1]) = (z, g, p);
    }

    /// Evaluated position `(lp, g)` of the pending leapfrog step: advances the chain to its next
    /// pending step (or to the end).
    fn advance(&mut self, lp: f64, g: &[f64], s: &NutsSettings) {
        match self.phase {
            Phase::StepSearch => self.search_step(lp, g),
            Phase::Tree => self.leaf(lp, g, s),
            Phase::Finished => {}
        }
    }

    /// Stan's `init_stepsize`: doubles or halves ε until one step's acceptance crosses 0.8.
    fn search_step(&mut self, lp: f64, g: &[f64]) {
        const MAX_ROUNDS: u32 = 100;
        let eps = self.eps;
        self.kick(g, eps);
        let h = -lp + self.kinetic(&self.p_new);
        let delta = if h.is_finite() && g.iter().all(|v| v.is_finite()) { self.h0 - h } else { f64::NEG_INFINITY };
        let threshold = 0.8f64.ln();
        if self.search_dir == 0 {
            self.search_dir = if delta > threshold { 1 } else { -1 };
        }
        // `delta` is never NaN (a non-finite energy is −∞)
        let done = (self.search_dir == 1 && delta <= threshold) || (self.search_dir == -1 && delta >= threshold);
        if !done && self.search_rounds < MAX_ROUNDS {
            self.eps = if self.search_dir == 1 { 2.0 * eps } else { 0.5 * eps };
            if self.eps.is_finite() && self.eps > 0.0 {
                self.search_rounds += 1;
                self.search_start();
                return;
            }
            self.eps = eps;
        }
        self.search_dir = 0;
        self.search_rounds = 0;
        self.dual = DualAveraging::new(self.eps);
        self.begin_transition();
    }

    fn begin_transition(&mut self) {
        self.phase = Phase::Tree;
        let mut p = std::mem::take(&mut self.left[1]);
        Self::draw_momentum(&mut self.rng, &self.inv_mass, &mut p);
        self.h0 = -self.logp + self.kinetic(&p);
        self.left[0].copy_from_slice(&self.z);
        self.left[2].copy_from_slice(&self.g);
        self.right[0].copy_from_slice(&self.z);
        self.right[1].copy_from_slice(&p);
        self.right[2].copy_from_slice(&self.g);
        self.rho.copy_from_slice(&p);
        self.left[1] = p;
        self.prop[0].copy_from_slice(&self.z);
        self.prop[1].copy_from_slice(&self.g);
        self.prop_lp = self.logp;
        self.log_w = 0.0;
        self.depth = 0;
        self.n_leapfrog = 0;
        self.sum_accept = 0.0;
        self.diverging = false;
        self.max_depth_reached = false;
        self.begin_subtree();
    }

    fn begin_subtree(&mut self) {
        self.dir = if self.rng.gen::<bool>() { 1.0 } else { -1.0 };
        let end = if self.dir > 0.0 { &self.right } else { &self.left };
        for (e, v) in self.edge.iter_mut().zip(end) {
            e.copy_from_slice(v);
        }
        self.sub_n = 0;
        self.sub_rho.iter_mut().for_each(|v| *v = 0.0);
        self.sub_log_w = f64::NEG_INFINITY;
        self.pending_leapfrog();
    }

    fn pending_leapfrog(&mut self) {
        let e = self.dir * self.eps;
        let [z, p, g] = std::mem::take(&mut self.edge);
        self.drift(&z, &p, &g, e);
        self.edge = [z, p, g];
    }

    /// A new leaf of the subtree: its weight, the proposal, the U-turn checks that it completes.
    fn leaf(&mut self, lp: f64, g: &[f64], s: &NutsSettings) {
        let e = self.dir * self.eps;
        self.kick(g, e);
        self.n_leapfrog += 1;
        let h = -lp + self.kinetic(&self.p_new);
        if !(lp.is_finite() && h.is_finite() && g.iter().all(|v| v.is_finite())) || h - self.h0 > s.max_energy_error {
            self.diverging = true;
            self.finish_transition(s);
            return;
        }
        let lw = self.h0 - h;
        self.sum_accept += lw.exp().min(1.0);
        let n = self.sub_n;
        for k in 0..=self.depth as usize {
            if !n.is_multiple_of(1 << k) {
                break;
            }
            self.cp_first[k].copy_from_slice(&self.p_new);
            self.cp_prefix[k].copy_from_slice(&self.sub_rho);
            self.cp_prev[k].copy_from_slice(&self.edge[1]);
        }
        for (r, p) in self.sub_rho.iter_mut().zip(&self.p_new) {
            *r += p;
        }
        if n == 0 {
            self.sub_first_p.copy_from_slice(&self.p_new);
        }
        let total = logaddexp(self.sub_log_w, lw);
        if n == 0 || self.rng.gen::<f64>() < (lw - total).exp() {
            self.sub_prop[0].copy_from_slice(&self.z_new);
            self.sub_prop[1].copy_from_slice(g);
            self.sub_prop_lp = lp;
        }
        self.sub_log_w = total;
        std::mem::swap(&mut self.edge[0], &mut self.z_new);
        std::mem::swap(&mut self.edge[1], &mut self.p_new);
        self.edge[2].copy_from_slice(g);
        self.sub_n += 1;
        let mut k = 1;
        while k <= self.depth as usize && self.sub_n.is_multiple_of(1 << k) {
            if self.sub_subtree_turns(k) {
                self.finish_transition(s);
                return;
            }
            k += 1;
        }
        if self.sub_n < 1 << self.depth {
            self.pending_leapfrog();
        } else {
            self.merge_subtree(s);
        }
    }

    /// The checks of the completed sub-subtree of `2^k` leaves ending at the newest leaf: over it,
    /// and over each half extended by the other half's adjacent leaf (Stan's extra checks).
    fn sub_subtree_turns(&mut self, k: usize) -> bool {
        let d = self.rho.len();
        let last = &self.edge[1];
        for j in 0..d {
            self.scratch[j] = self.sub_rho[j] - self.cp_prefix[k][j];
        }
        if turning(&self.inv_mass, &self.cp_first[k], last, &self.scratch) {
            return true;
        }
        for j in 0..d {
            self.scratch[j] = self.cp_prefix[k - 1][j] + self.cp_first[k - 1][j] - self.cp_prefix[k][j];
        }
        if turning(&self.inv_mass, &self.cp_first[k], &self.cp_first[k - 1], &self.scratch) {
            return true;
        }
        for j in 0..d {
            self.scratch[j] = self.sub_rho[j] - self.cp_prefix[k - 1][j] + self.cp_prev[k - 1][j];
        }
        turning(&self.inv_mass, &self.cp_prev[k - 1], last, &self.scratch)
    }

    /// Joins the completed subtree to the trajectory: biased progressive sampling of the proposal,
    /// the U-turn checks across the join, then the next doubling or the end of the transition.
    fn merge_subtree(&mut self, s: &NutsSettings) {
        if self.sub_log_w > self.log_w || self.rng.gen::<f64>() < (self.sub_log_w - self.log_w).exp() {
            std::mem::swap(&mut self.prop, &mut self.sub_prop);
            self.prop_lp = self.sub_prop_lp;
        }
        self.log_w = logaddexp(self.log_w, self.sub_log_w);
        let d = self.rho.len();
        // position order: A is the left part, B the right part
        let forward = self.dir > 0.0;
        let (a_first, a_last, b_first, b_last) = if forward {
            (&self.left[1], &self.right[1], &self.sub_first_p, &self.edge[1])
        } else {
            (&self.edge[1], &self.sub_first_p, &self.left[1], &self.right[1])
        };
        let (rho_a, rho_b) = if forward { (&self.rho, &self.sub_rho) } else { (&self.sub_rho, &self.rho) };
        let mut turned;
        for j in 0..d {
            self.scratch[j] = rho_a[j] + rho_b[j];
        }
        turned = turning(&self.inv_mass, a_first, b_last, &self.scratch);
        if !turned {
            for j in 0..d {
                self.scratch[j] = rho_a[j] + b_first[j];
            }
            turned = turning(&self.inv_mass, a_first, b_first, &self.scratch);
        }
        if !turned {
            for j in 0..d {
                self.scratch[j] = a_last[j] + rho_b[j];
            }
            turned = turning(&self.inv_mass, a_last, b_last, &self.scratch);
        }
        for (r, v) in self.rho.iter_mut().zip(&self.sub_rho) {
            *r += v;
        }
        if forward {
            std::mem::swap(&mut self.right, &mut self.edge);
        } else {
            std::mem::swap(&mut self.left, &mut self.edge);
        }
        self.depth += 1;
        if turned {
            self.finish_transition(s);
        } else if u64::from(self.depth) >= s.max_tree_depth {
            self.max_depth_reached = true;
            self.finish_transition(s);
        } else {
            self.begin_subtree();
        }
    }

    /// Moves to the proposal, records the transition, adapts, and starts the next one.
    fn finish_transition(&mut self, s: &NutsSettings) {
        std::mem::swap(&mut self.z, &mut self.prop[0]);
        std::mem::swap(&mut self.g, &mut self.prop[1]);
        self.logp = self.prop_lp;
        let warm = self.iter < self.warmup;
        self.stats.push(DrawStats {
            warmup: warm,
            diverging: self.diverging,
            tree_depth: u64::from(self.depth),
            max_depth_reached: self.max_depth_reached,
            leapfrog_steps: self.n_leapfrog,
            step_size: self.eps,
        });
        let mut search = false;
        if warm {
            let accept = self.sum_accept / self.n_leapfrog.max(1) as f64;
            self.eps = self.dual.learn(accept, s.target_accept);
            search = self.learn_mass(self.iter);
            if self.iter + 1 == self.warmup {
                self.eps = self.dual.final_step_size();
                search = false;
            }
        } else {
            self.draws.push(self.z.clone());
        }
        self.iter += 1;
        if self.iter == self.total {
            self.phase = Phase::Finished;
        } else if search {
            self.search_start();
        } else {
            self.begin_transition();
        }
    }

    /// Stan's `learn_variance`: counts the draw of iteration `i` in the current window and, where
    /// a window ends, sets the inverse mass matrix to its regularised variance. True when it did.
    fn learn_mass(&mut self, i: usize) -> bool {
        if self.windows.in_window(i) {
            self.w_n += 1.0;
            for j in 0..self.z.len() {
                let delta = self.z[j] - self.w_mean[j];
                self.w_mean[j] += delta / self.w_n;
                self.w_m2[j] += delta * (self.z[j] - self.w_mean[j]);
            }
        }
        if !self.windows.window_ends(i) {
            return false;
        }
        let n = self.w_n;
        if n >= 2.0 {
            for j in 0..self.z.len() {
                let var = self.w_m2[j] / (n - 1.0);
                self.inv_mass[j] = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0));
            }
        }
        self.w_n = 0.0;
        self.w_mean.iter_mut().for_each(|v| *v = 0.0);
        self.w_m2.iter_mut().for_each(|v| *v = 0.0);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stan's windows for 1000 warm-up iterations end at 99, 149, 249, 449 and 949.
    #[test]
    fn windows_follow_stan() {
        let mut w = Windows::new(1000);
        let ends: Vec<usize> = (0..1000).filter(|&i| w.window_ends(i)).collect();
        assert_eq!(ends, vec![99, 149, 249, 449, 949]);
        let w = Windows::new(1000);
        assert!(!w.in_window(74) && w.in_window(75) && w.in_window(949) && !w.in_window(950));
        assert!(!Windows::new(19).enabled);
    }

    #[test]
    fn logaddexp_is_stable() {
        assert!((logaddexp(1000.0, 1000.0) - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert_eq!(logaddexp(f64::NEG_INFINITY, -3.0), -3.0);
    }
}
