//! The batched many-chain sampler: jittered HMC with ChEES adaptation (Hoffman, Radul & Sountsov
//! 2021, "An adaptive MCMC scheme for setting trajectory lengths in Hamiltonian Monte Carlo").
//!
//! The details are in the docs of [`sample_many_chains`].

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::target::BatchLogDensity;
use crate::{Error, Result};

/// How the many-chain sampler adapts step sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepSizeAdaptation {
    /// One step size for all chains, from the harmonic mean of their acceptance probabilities
    /// (BlackJAX's ChEES). Every chain takes the same number of leapfrog steps.
    #[default]
    Shared,
    /// One step size per chain, each from its own acceptance probability.
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
    /// Batched log-density calls (one per leapfrog step of the slowest chain).
    pub batched_calls: u64,
    /// Positions evaluated in total (sum over calls of the chains in the batch).
    pub gradient_evaluations: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
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
}

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
/// initial positions.
///
/// The batched many-chain sampler: jittered HMC with ChEES adaptation (Hoffman, Radul & Sountsov
/// 2021, "An adaptive MCMC scheme for setting trajectory lengths in Hamiltonian Monte Carlo").
///
/// `C` chains advance together: every leapfrog step is **one** call of a [`BatchLogDensity`] for all
/// chains still integrating (for a BNN, one batched forward/backward whose weight-sample axis is the
/// chain axis). Per iteration the number of steps is `⌈u_t · T / ε⌉`, with `u_t` a Halton
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
/// use weightspace::mcmc::{sample_many_chains, BatchLogDensity, ManyChainSettings};
/// /// A standard normal in 2-D.
/// struct StdNormal;
/// impl BatchLogDensity for StdNormal {
///     fn dim(&self) -> usize { 2 }
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
    settings.validate()?;
    let start = Instant::now();
    let c = init.len();
    if c == 0 {
        return Err(Error::Empty { what: "initial positions (chains)".into() });
    }
    let d = target.dim();
    if let Some(bad) = init.iter().find(|p| p.len() != d) {
        return Err(Error::Shape { what: "initial position".into(), expected: format!("({d},)"), got: format!("({},)", bad.len()) });
    }
    for (ci, p) in init.iter().enumerate() {
        crate::error::check_finite(&format!("initial position of chain {ci}"), p)?;
    }
    let s = settings;
    let total_iters = s.warmup + s.draws;
    let max_bits = (usize::BITS - (total_iters + 1).leading_zeros()).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);

    let mut theta: Vec<f64> = init.into_iter().flatten().collect();
    let mut logp = vec![0.0; c];
    let mut grad = vec![0.0; c * d];
    target.logp_batch(&theta, &mut logp, &mut grad)?;
    let mut batched_calls = 1u64;
    let mut evaluations = c as u64;
    if let Some(ci) = logp.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: format!("log density at the initial position of chain {ci}"), index: ci });
    }

    let per_chain = s.step_size == StepSizeAdaptation::PerChain;
    let n_da = if per_chain { c } else { 1 };
    let mut da = vec![DualAveraging::new(s.initial_step_size); n_da];
    let mut eps = vec![s.initial_step_size; n_da];
    let mut log_eps_ma = vec![0.0; n_da];
    let mut ma_step = 1.0f64;
    let mut traj = s.initial_step_size;
    let mut log_traj_ma = 0.0;
    let mut adam = Adam::default();
    let mut inv_mass = vec![1.0f64; c * d];
    // per-chain Welford accumulators for the diagonal mass matrix
    let (mm_start, mm_end) = (s.warmup / 4, (3 * s.warmup) / 4);
    let mut w_mean = vec![0.0; if s.diagonal_mass_matrix { c * d } else { 0 }];
    let mut w_m2 = vec![0.0; w_mean.len()];
    let mut w_n = 0usize;

    let mut draws: Vec<Vec<Vec<f64>>> = vec![Vec::with_capacity(s.draws); c];
    let mut draw_logp: Vec<Vec<f64>> = vec![Vec::with_capacity(s.draws); c];
    let mut warmup_div = vec![0usize; c];
    let mut sample_div = vec![0usize; c];
    let mut iterations = Vec::with_capacity(total_iters);

    // work buffers
    let mut p = vec![0.0; c * d];
    let mut th_new = vec![0.0; c * d];
    let mut g_new = vec![0.0; c * d];
    let mut lp_new = vec![0.0; c];
    let mut steps = vec![0usize; c];
    let mut dead = vec![false; c];
    let mut k0 = vec![0.0; c];
    let mut buf_th: Vec<f64> = Vec::new();
    let mut buf_g: Vec<f64> = Vec::new();
    let mut buf_lp: Vec<f64> = Vec::new();
    let mut active: Vec<usize> = Vec::with_capacity(c);

    let bar = crate::progress::Progress::new(total_iters, s.progress, "chees");
    for it in 0..total_iters {
        let warm = it < s.warmup;
        let u = 1.0 - s.jitter + s.jitter * halton(it, max_bits);
        for ci in 0..c {
            let e = eps[if per_chain { ci } else { 0 }];
            let n = (u * traj / e).ceil();
            steps[ci] = if n.is_finite() { (n as usize).clamp(1, s.max_leapfrog_steps) } else { 1 };
        }
        // momenta p ~ N(0, M), M = diag(1 / inv_mass)
        for ci in 0..c {
            let mut k = 0.0;
            for j in 0..d {
                let im = inv_mass[ci * d + j];
                let z: f64 = rng.sample(StandardNormal);
                let pj = z / im.sqrt();
                p[ci * d + j] = pj;
                k += 0.5 * im * pj * pj;
            }
            k0[ci] = k;
        }
        th_new.copy_from_slice(&theta);
        g_new.copy_from_slice(&grad);
        lp_new.copy_from_slice(&logp);
        dead.iter_mut().for_each(|x| *x = false);
        let max_steps = *steps.iter().max().unwrap_or(&1);
        for step in 0..max_steps {
            active.clear();
            active.extend((0..c).filter(|&ci| !dead[ci] && steps[ci] > step));
            if active.is_empty() {
                break;
            }
            for &ci in &active {
                let e = eps[if per_chain { ci } else { 0 }];
                let r = ci * d..(ci + 1) * d;
                for ((pj, gj), (tj, im)) in
                    p[r.clone()].iter_mut().zip(&g_new[r.clone()]).zip(th_new[r.clone()].iter_mut().zip(&inv_mass[r.clone()]))
                {
                    *pj += 0.5 * e * gj;
                    *tj += e * im * *pj;
                }
            }
            if active.len() == c {
                target.logp_batch(&th_new, &mut lp_new, &mut g_new)?;
            } else {
                let na = active.len();
                buf_th.clear();
                for &ci in &active {
                    buf_th.extend_from_slice(&th_new[ci * d..(ci + 1) * d]);
                }
                buf_g.resize(na * d, 0.0);
                buf_lp.resize(na, 0.0);
                target.logp_batch(&buf_th, &mut buf_lp, &mut buf_g)?;
                for (a, &ci) in active.iter().enumerate() {
                    lp_new[ci] = buf_lp[a];
                    g_new[ci * d..(ci + 1) * d].copy_from_slice(&buf_g[a * d..(a + 1) * d]);
                }
            }
            batched_calls += 1;
            evaluations += active.len() as u64;
            for &ci in &active {
                let e = eps[if per_chain { ci } else { 0 }];
                let r = ci * d..(ci + 1) * d;
                if !lp_new[ci].is_finite() || g_new[r.clone()].iter().any(|g| !g.is_finite()) {
                    dead[ci] = true;
                    continue;
                }
                for (pj, gj) in p[r.clone()].iter_mut().zip(&g_new[r]) {
                    *pj += 0.5 * e * gj;
                }
            }
        }
        // Metropolis correction
        let mut accept = vec![0.0; c];
        let mut divergent = vec![false; c];
        let mut n_div = 0;
        for ci in 0..c {
            let r = ci * d..(ci + 1) * d;
            let k1: f64 = p[r.clone()].iter().zip(&inv_mass[r.clone()]).map(|(pj, im)| 0.5 * im * pj * pj).sum();
            let mut delta = (-lp_new[ci] + k1) - (-logp[ci] + k0[ci]);
            if dead[ci] || delta.is_nan() {
                delta = f64::INFINITY;
            }
            divergent[ci] = delta > s.max_energy_error;
            accept[ci] = if divergent[ci] { 0.0 } else { (-delta).exp().min(1.0) };
            if divergent[ci] {
                n_div += 1;
                if warm {
                    warmup_div[ci] += 1;
                } else {
                    sample_div[ci] += 1;
                }
            }
        }
        // adaptation uses the proposals (before accept/reject) and the initial positions
        if warm {
            adapt_chees(
                &mut AdaptState {
                    da: &mut da,
                    eps: &mut eps,
                    log_eps_ma: &mut log_eps_ma,
                    traj: &mut traj,
                    log_traj_ma: &mut log_traj_ma,
                    adam: &mut adam,
                    ma_step: &mut ma_step,
                },
                &Proposals {
                    theta0: &theta,
                    theta1: &th_new,
                    p1: &p,
                    inv_mass: &inv_mass,
                    accept: &accept,
                    divergent: &divergent,
                    c,
                    d,
                    jitter: u,
                },
                s,
            );
        }
        let mut sum_acc = 0.0;
        for ci in 0..c {
            sum_acc += accept[ci];
            let take = !divergent[ci] && rng.gen::<f64>() < accept[ci];
            if take {
                let r = ci * d..(ci + 1) * d;
                theta[r.clone()].copy_from_slice(&th_new[r.clone()]);
                grad[r.clone()].copy_from_slice(&g_new[r]);
                logp[ci] = lp_new[ci];
            }
        }
        if warm && s.diagonal_mass_matrix && it >= mm_start && it < mm_end {
            w_n += 1;
            let nf = w_n as f64;
            for (j, x) in theta.iter().enumerate() {
                let delta = x - w_mean[j];
                w_mean[j] += delta / nf;
                w_m2[j] += delta * (x - w_mean[j]);
            }
            if it + 1 == mm_end && w_n >= 2 {
                for j in 0..c * d {
                    let var = w_m2[j] / (nf - 1.0);
                    let reg = (nf / (nf + 5.0)) * var + 1e-3 * (5.0 / (nf + 5.0));
                    inv_mass[j] = if reg.is_finite() && reg > 0.0 { reg } else { 1.0 };
                }
                // the metric changed: restart the step-size adaptation from the current values
                for (dai, e) in da.iter_mut().zip(eps.iter()) {
                    *dai = DualAveraging::new(*e);
                }
                ma_step = 1.0;
            }
        }
        if !warm {
            for ci in 0..c {
                draws[ci].push(theta[ci * d..(ci + 1) * d].to_vec());
                draw_logp[ci].push(logp[ci]);
            }
        }
        let mean_eps = eps.iter().sum::<f64>() / eps.len() as f64;
        iterations.push(IterationStats {
            warmup: warm,
            step_size: mean_eps,
            trajectory_length: traj,
            max_leapfrog_steps: max_steps,
            mean_accept: sum_acc / c as f64,
            divergences: n_div,
        });
        if it + 1 == s.warmup {
            // switch to the averaged parameters for drawing
            for (e, ma) in eps.iter_mut().zip(&log_eps_ma) {
                if ma.is_finite() && *ma != 0.0 {
                    *e = ma.exp();
                }
            }
            if log_traj_ma.is_finite() && log_traj_ma != 0.0 {
                traj = log_traj_ma.exp();
            }
            let emin = eps.iter().copied().fold(f64::INFINITY, f64::min);
            traj = traj.clamp(emin.min(traj), s.max_leapfrog_steps as f64 * emin);
        }
        bar.inc();
    }
    bar.finish();
    let step_sizes = (0..c).map(|ci| eps[if per_chain { ci } else { 0 }]).collect();
    Ok(ManyChainRun {
        draws,
        logp: draw_logp,
        step_sizes,
        trajectory_length: traj,
        inverse_mass: inv_mass.chunks(d).map(|r| r.to_vec()).collect(),
        warmup_divergences: warmup_div,
        divergences: sample_div,
        iterations,
        batched_calls,
        gradient_evaluations: evaluations,
        seconds: start.elapsed().as_secs_f64(),
    })
}

struct AdaptState<'a> {
    da: &'a mut [DualAveraging],
    eps: &'a mut [f64],
    log_eps_ma: &'a mut [f64],
    traj: &'a mut f64,
    log_traj_ma: &'a mut f64,
    adam: &'a mut Adam,
    ma_step: &'a mut f64,
}

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

/// One ChEES adaptation step (BlackJAX's `compute_parameters`, with ascent on the criterion).
fn adapt_chees(st: &mut AdaptState<'_>, pr: &Proposals<'_>, s: &ManyChainSettings) {
    let (c, d) = (pr.c, pr.d);
    // step sizes
    if st.da.len() == 1 {
        let ok: Vec<f64> = (0..c).filter(|&ci| !pr.divergent[ci]).map(|ci| pr.accept[ci]).collect();
        let hm = if ok.is_empty() { 0.0 } else { ok.len() as f64 / ok.iter().map(|a| 1.0 / a).sum::<f64>() };
        let hm = if hm.is_finite() { hm } else { 0.0 };
        st.da[0].update(s.target_accept - hm);
    } else {
        for ci in 0..c {
            st.da[ci].update(s.target_accept - pr.accept[ci]);
        }
    }
    let w = st.ma_step.powf(-s.decay_rate);
    for ((dai, e), ma) in st.da.iter().zip(st.eps.iter_mut()).zip(st.log_eps_ma.iter_mut()) {
        let x = dai.log_x.exp();
        if x.is_finite() && x > 0.0 {
            *e = x;
        }
        *ma = (1.0 - w) * *ma + w * e.ln();
    }
    // the ChEES gradient with respect to ln T, in whitened coordinates
    let weight: Vec<f64> = (0..c).map(|ci| if pr.divergent[ci] { 0.0 } else { pr.accept[ci] }).collect();
    let wsum: f64 = weight.iter().sum::<f64>() + 1e-20;
    let mut mean1 = vec![0.0; d];
    let mut mean0 = vec![0.0; d];
    for (ci, w) in weight.iter().enumerate() {
        for j in 0..d {
            let x1 = pr.theta1[ci * d + j];
            if x1.is_finite() {
                mean1[j] += w * x1;
            }
            mean0[j] += pr.theta0[ci * d + j];
        }
    }
    mean1.iter_mut().for_each(|m| *m /= wsum);
    mean0.iter_mut().for_each(|m| *m /= c as f64);
    let mut num = 0.0;
    for ci in 0..c {
        if pr.divergent[ci] {
            continue;
        }
        let (mut n1, mut n0, mut dv) = (0.0, 0.0, 0.0);
        for j in 0..d {
            let im = pr.inv_mass[ci * d + j];
            let sq = im.sqrt();
            let x1 = (pr.theta1[ci * d + j] - mean1[j]) / sq;
            let x0 = (pr.theta0[ci * d + j] - mean0[j]) / sq;
            let v = pr.p1[ci * d + j] * sq;
            n1 += x1 * x1;
            n0 += x0 * x0;
            dv += x1 * v;
        }
        let g = pr.jitter * *st.traj * (n1 - n0) * dv;
        if g.is_finite() {
            num += pr.accept[ci] * g;
        }
    }
    let gradient = num / wsum;
    let log_t = st.traj.ln();
    let upd = st.adam.ascent(gradient, s.learning_rate);
    let new_log_t = if (log_t + upd).is_finite() { log_t + upd } else { log_t };
    *st.log_traj_ma = (1.0 - w) * *st.log_traj_ma + w * new_log_t;
    let emin = st.eps.iter().copied().fold(f64::INFINITY, f64::min);
    let emax = st.eps.iter().copied().fold(0.0, f64::max);
    *st.traj = st.log_traj_ma.exp().clamp(emax.min(s.max_leapfrog_steps as f64 * emin), s.max_leapfrog_steps as f64 * emin);
    *st.ma_step += 1.0;
}
