//! Per-task objectives of BNNP meta-learning (all maximised; the loss is their negative), and the
//! random context/target split.
//!
//! With `S` weight samples `W_s` from the posterior given the context:
//!
//! ```text
//! ctx_ell = (1/S) Σ_s Σ_{n∈ctx} ln p(y_n | f(x_n; W_s))
//! tgt_lpp = ln (1/S) Σ_s exp(Σ_{n∈tgt} ln p(y_n | f(x_n; W_s)))      the joint target predictive
//! tgt_ell = (1/S) Σ_s Σ_{n∈tgt} ln p(y_n | f(x_n; W_s))
//! ```

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;

use super::guide::{fresh, AmortisedGuide, ForwardOptions};
use crate::model::data::Dataset;
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

/// What a task contributes to the meta-objective.
///
/// ```
/// use weightspace::bnnp::TaskObjective;
/// assert_eq!(TaskObjective::default(), TaskObjective::PpAvi { beta: 1.0 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TaskObjective {
    /// Amortised VI: `ctx_ell − β·KL` (targets unused).
    Avi {
        /// Weight of the KL.
        beta: f64,
    },
    /// Predictive amortised VI, the paper's proposal: `β·tgt_lpp + ctx_ell − β·KL`. `β = 1`, or
    /// 0.1 for step-like tasks.
    PpAvi {
        /// Weight of the target predictive and of the KL.
        beta: f64,
    },
    /// The neural-process-style objective `tgt_lpp` alone (maximum predictive likelihood).
    TargetPredictive,
    /// The expected target log-likelihood `tgt_ell` with no KL (NPML).
    TargetExpected,
}

impl Default for TaskObjective {
    fn default() -> Self {
        TaskObjective::PpAvi { beta: 1.0 }
    }
}

impl TaskObjective {
    /// Checks `β`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            TaskObjective::Avi { beta } | TaskObjective::PpAvi { beta } if !(beta.is_finite() && beta >= 0.0) => {
                Err(Error::config("TaskObjective::beta", beta, "must be finite and >= 0"))
            }
            _ => Ok(()),
        }
    }
    fn uses_kl(&self) -> bool {
        matches!(self, TaskObjective::Avi { .. } | TaskObjective::PpAvi { .. })
    }
    fn uses_tgt(&self) -> bool {
        !matches!(self, TaskObjective::Avi { .. })
    }
}

/// One task's objective: the taped loss and every term as a number.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{task_terms, Amortised, ForwardOptions, GuideConfig, TaskObjective, TaskTerms};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
/// let tgt = Dataset::regression(&dev, &[0.5, 2.0], 1, &[0.0, -1.0], 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let opts = ForwardOptions { samples: 4, ..Default::default() };
/// let t: TaskTerms<f64, Cpu> = task_terms(&guide, &ctx, Some(&tgt), &TaskObjective::PpAvi { beta: 1.0 }, &opts, &mut rng)?;
/// assert_eq!((t.n_context, t.n_target), (3, 2));
/// assert!((t.objective - (t.tgt_lpp + t.ctx_ell - t.kl)).abs() < 1e-6);
/// assert!((t.loss.array() + t.objective).abs() < 1e-6); // the loss is −objective
/// assert!(t.kl > 0.0 && t.tgt_ell <= t.tgt_lpp + 1e-9); // Jensen: E[ln p] ≤ ln E[p]
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug)]
pub struct TaskTerms<E: Dtype, D: Storage<E>> {
    /// `−objective`, on the tape of the guide's parameters.
    pub loss: Taped<(), E, D>,
    /// The objective's value.
    pub objective: f64,
    /// Expected context log-likelihood (summed over points).
    pub ctx_ell: f64,
    /// Log joint target predictive (0 without targets).
    pub tgt_lpp: f64,
    /// Expected target log-likelihood (0 without targets).
    pub tgt_ell: f64,
    /// KL of the posterior to the prior (0 when the objective does not use it).
    pub kl: f64,
    /// Context points.
    pub n_context: usize,
    /// Target points.
    pub n_target: usize,
}

fn log_lik_rows<E: Real, D: Device<E>>(
    guide: &AmortisedGuide<E, D>,
    f: Taped<(usize, usize, usize), E, D>,
    data: &Dataset<E, D>,
    trace: bool,
) -> Result<Taped<(usize, usize), E, D>> {
    crate::vi::likelihood::log_lik(&guide.arch().likelihood, &guide.likelihood_params(), trace, f, data)
}

fn value<S: Shape, E: Real, D: Device<E>>(t: &Taped<S, E, D>) -> f64 {
    t.retaped::<NoneTape>().as_vec()[0].cast_to_f64()
}

/// Evaluates `objective` on one task: the posterior from `context`, predictions on the context and
/// `targets` through the same weight samples. `opts.kl` is overridden by what the objective needs.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{task_terms, Amortised, ForwardOptions, GuideConfig, TaskObjective};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
/// let tgt = Dataset::regression(&dev, &[0.5, 2.0], 1, &[0.0, -1.0], 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let opts = ForwardOptions { samples: 4, ..Default::default() };
/// // amortised VI ignores the targets
/// let avi = task_terms(&guide, &ctx, Some(&tgt), &TaskObjective::Avi { beta: 0.5 }, &opts, &mut rng)?;
/// assert_eq!(avi.tgt_lpp, 0.0);
/// assert!((avi.objective - (avi.ctx_ell - 0.5 * avi.kl)).abs() < 1e-6);
/// // the neural-process objective is the target predictive alone, without a KL
/// let np = task_terms(&guide, &ctx, Some(&tgt), &TaskObjective::TargetPredictive, &opts, &mut rng)?;
/// assert_eq!(np.kl, 0.0);
/// assert_eq!(np.objective, np.tgt_lpp);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn task_terms<E: Real, D: Device<E>>(
    guide: &AmortisedGuide<E, D>,
    context: &Dataset<E, D>,
    targets: Option<&Dataset<E, D>>,
    objective: &TaskObjective,
    opts: &ForwardOptions,
    rng: &mut impl Rng,
) -> Result<TaskTerms<E, D>> {
    objective.validate()?;
    let targets = targets.filter(|t| !t.is_empty());
    if let Some(t) = targets {
        t.check_for(guide.arch())?;
    }
    let fo = ForwardOptions { kl: objective.uses_kl(), ..*opts };
    let fwd = guide.forward(Some(context), targets.map(|t| &t.x), &fo, rng)?;
    let (s, nc) = (fo.samples, fwd.n_context);
    let nt = targets.map_or(0, |t| t.len());
    let total = nc + nt;
    let trace = opts.trace;
    let inv_s = crate::num::cast::from_f64::<E>(1.0 / s as f64);
    let f = fwd.f;
    // the original tape goes to a part the objective always uses
    let (f_ctx, f_tgt) = if objective.uses_tgt() && nt > 0 {
        (fresh(f.with_empty_tape()).slice((.., 0..nc, ..)), Some(fresh(f).slice((.., nc..total, ..))))
    } else {
        (fresh(f).slice((.., 0..nc, ..)), None)
    };
    let ctx_ll = log_lik_rows(guide, f_ctx, context, trace)?;
    let ctx_ell = ctx_ll.sum::<(), _>() * inv_s;
    let ctx_ell_v = value(&ctx_ell);
    let (tgt_lpp, tgt_ell) = match (targets, f_tgt) {
        (Some(t), Some(ft)) => {
            let per_sample = log_lik_rows(guide, ft, t, trace)?.sum::<_, Axis<1>>();
            // the original tape goes to the term the objective uses
            let (for_ell, for_lpp) = if matches!(objective, TaskObjective::TargetExpected) {
                let copy = per_sample.with_empty_tape();
                (per_sample, copy)
            } else {
                (per_sample.with_empty_tape(), per_sample)
            };
            let ell = for_ell.sum::<(), _>() * inv_s;
            let lpp = for_lpp.logsumexp::<(), _>() - crate::num::cast::from_f64::<E>((s as f64).ln());
            (Some(lpp), Some(ell))
        }
        _ => (None, None),
    };
    let (tgt_lpp_v, tgt_ell_v) = (tgt_lpp.as_ref().map_or(0.0, value), tgt_ell.as_ref().map_or(0.0, value));
    let kl_v = fwd.kl_value;
    let zero = || -> Taped<(), E, D> { ctx_ell.device().zeros::<Rank0>().reshape_like(&()).retaped() };
    let kl = fwd.kl;
    let (obj, obj_v): (Taped<(), E, D>, f64) = match *objective {
        TaskObjective::Avi { beta } => {
            let o = match kl {
                Some(k) => ctx_ell - k * crate::num::cast::from_f64::<E>(beta),
                None => ctx_ell,
            };
            (o, ctx_ell_v - beta * kl_v)
        }
        TaskObjective::PpAvi { beta } => {
            let mut o = match kl {
                Some(k) => ctx_ell - k * crate::num::cast::from_f64::<E>(beta),
                None => ctx_ell,
            };
            if let Some(l) = tgt_lpp {
                o = o + l * crate::num::cast::from_f64::<E>(beta);
            }
            (o, beta * tgt_lpp_v + ctx_ell_v - beta * kl_v)
        }
        TaskObjective::TargetPredictive => {
            let o = match tgt_lpp {
                Some(l) => l + ctx_ell * E::zero(),
                None => zero() + ctx_ell * E::zero(),
            };
            (o, tgt_lpp_v)
        }
        TaskObjective::TargetExpected => {
            let o = match tgt_ell {
                Some(l) => l + ctx_ell * E::zero(),
                None => zero() + ctx_ell * E::zero(),
            };
            (o, tgt_ell_v)
        }
    };
    Ok(TaskTerms {
        loss: obj.negate(),
        objective: obj_v,
        ctx_ell: ctx_ell_v,
        tgt_lpp: tgt_lpp_v,
        tgt_ell: tgt_ell_v,
        kl: if objective.uses_kl() { kl_v } else { 0.0 },
        n_context: nc,
        n_target: nt,
    })
}

/// A task split into context and (possibly no) targets.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{split_task, Split};
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64).collect();
/// let task = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (ctx, tgt): Split<f64, Cpu> = split_task(&task, (0.3, 0.3), &mut rng)?;
/// assert_eq!(ctx.len(), 3);
/// assert_eq!(tgt.map(|t| t.len()), Some(7));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub type Split<E, D> = (Dataset<E, D>, Option<Dataset<E, D>>);

/// Splits a task at random into a context of `⌊p·n⌋` points, `p ~ U[lo, hi]`, and the disjoint
/// complement as targets. At least one point goes to the context, and (when `n ≥ 2`) at least one
/// to the targets.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::split_task;
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..10).map(|i| i as f64).collect();
/// let task = Dataset::<f32, _>::regression(&dev, &x, 1, &x, 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (ctx, tgt) = split_task(&task, (0.1, 0.5), &mut rng)?;
/// assert_eq!(ctx.len() + tgt.as_ref().map_or(0, |t| t.len()), 10);
/// assert!((1..=5).contains(&ctx.len()));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn split_task<E: Real, D: Device<E>>(task: &Dataset<E, D>, fraction: (f64, f64), rng: &mut impl Rng) -> Result<Split<E, D>> {
    let (lo, hi) = fraction;
    if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 1.0) {
        return Err(Error::config("context fraction", format!("({lo}, {hi})"), "needs 0 <= lo <= hi <= 1"));
    }
    let n = task.len();
    if n == 0 {
        return Err(Error::Empty { what: "task".into() });
    }
    let p = if hi > lo { rng.gen_range(lo..=hi) } else { lo };
    let mut nc = ((p * n as f64).floor() as usize).max(1);
    if n >= 2 && hi < 1.0 {
        nc = nc.min(n - 1);
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let ctx = task.rows(&idx[..nc])?;
    let tgt = if nc < n { Some(task.rows(&idx[nc..])?) } else { None };
    Ok((ctx, tgt))
}
