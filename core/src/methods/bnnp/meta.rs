//! Meta-learning: learn the prior, the inference networks and the noise across many tasks.
//!
//! The details are in the docs of [`MetaLearner`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dfdx::prelude::*;

use super::guide::{AmortisedGuide, ForwardOptions};
use super::objective::{split_task, task_terms, TaskObjective};
use super::params::{linear_lr, Adam, AdamSettings};
use super::tasks::TaskSource;
use crate::communicator::{share, Communicator, SingleProcess};
use crate::model::checkpoint::SafetensorsFile;
use crate::model::data::Dataset;
use crate::num::rng::{stream, Purpose};
use crate::progress::Progress;
use crate::vi::prior::Taped;
use crate::workers::Workers;
use crate::{Error, Real, Result};

/// What a missing training-state entry means.
const NOT_META: &str = "not written by MetaLearner (AmortisedGuide::save keeps the parameters only)";
/// Checkpoint metadata keys of [`MetaLearner::save`].
const META_STEP: &str = "weightspace.meta.step";
const META_SKIPPED: &str = "weightspace.meta.skipped";
const META_BAD_RUN: &str = "weightspace.meta.bad_run";
const META_ADAM_STEPS: &str = "weightspace.meta.adam_steps";

/// Where and how often [`MetaLearner::run`] writes checkpoints (atomically: a failed write leaves
/// the previous checkpoint intact). A checkpoint is the whole training state
/// ([`MetaLearner::save`]): an interrupted run continues from it with [`MetaLearner::resume`], and
/// [`AmortisedGuide::load`] reads the guide from it.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::*;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let mut guide = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// let mut tasks = Generated(Sawtooth { n_range: (10, 12), ..Default::default() });
/// let path = std::env::temp_dir().join(format!("weightspace_doc_meta_ckpt_{}.safetensors", std::process::id()));
/// let checkpoint = Some(Checkpointing { path: path.clone(), every: 2 });
/// let cfg = MetaConfig { steps: 3, tasks_per_step: 2, samples: 2, progress: false, checkpoint, ..Default::default() };
/// MetaLearner::new(cfg)?.run(&mut guide, &mut tasks)?;
/// let mut restored = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// restored.load(&path)?;
/// assert_eq!(restored.noise_scale(), guide.noise_scale());
/// std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointing {
    /// File to (over)write, in safetensors format.
    pub path: PathBuf,
    /// Write every this many steps, and after the last one.
    pub every: usize,
}

/// Settings of a [`MetaLearner`]. Plain data: override with `..Default::default()`.
///
/// ```
/// use weightspace::bnnp::{MetaConfig, TaskObjective};
/// let cfg = MetaConfig { steps: 500, objective: TaskObjective::PpAvi { beta: 0.1 }, ..Default::default() };
/// assert_eq!(cfg.tasks_per_step, 5);
/// assert_eq!(cfg.lr_end, Some(1e-4));
/// assert_eq!(cfg.max_bad_steps, 10); // a bad batch is skipped, ten in a row stop the run
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MetaConfig {
    /// Optimisation steps. Default 1000.
    pub steps: usize,
    /// Tasks averaged per step. Default 5 (the paper's batch).
    pub tasks_per_step: usize,
    /// Weight samples per task. Default 8 (the paper uses 32 for its 1-D experiments).
    pub samples: usize,
    /// Adam settings; `adam.lr` is the initial learning rate. Default 3e-3.
    pub adam: AdamSettings,
    /// Decay the learning rate linearly to this value by the last step (`None`: constant).
    /// Default 1e-4.
    pub lr_end: Option<f64>,
    /// The per-task objective. Default PP-AVI with `β = 1`.
    pub objective: TaskObjective,
    /// Range of the context fraction `p ~ U[lo, hi]` of each task's random split. Default
    /// `(0.1, 0.5)`.
    pub context_fraction: (f64, f64),
    /// Fold each task's context in chunks of this many points (see
    /// [`ForwardOptions::chunk`]). Default `None`.
    pub chunk: Option<usize>,
    /// Seed for tasks, splits and Monte-Carlo noise. Task `k` of step `t` draws from streams keyed
    /// by `(seed, t, k)`, so a resumed run or a change of `tasks_per_step` leaves the other tasks'
    /// draws as they were.
    pub seed: u64,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal).
    pub progress: bool,
    /// Record the terms every this many steps (and at the last step). Default 10.
    pub record_every: usize,
    /// Periodic checkpoints. Default none.
    pub checkpoint: Option<Checkpointing>,
    /// Wall-clock budget of one [`MetaLearner::run`] call: the run stops after the step during which
    /// the budget runs out (a step is never cut short), records that step, writes the checkpoint
    /// and reports [`MetaReport::stopped_early`]. The learning-rate decay stays tied to `steps`, so
    /// a run cut short ends at a higher rate than `lr_end`; calling `run` again resumes the
    /// schedule with a fresh budget. Default `None` (no limit).
    pub time_limit: Option<Duration>,
    /// How many consecutive bad steps (a non-finite loss, gradient or updated parameter, or a
    /// numerical failure while evaluating a task) are
    /// skipped before the run stops with [`Error::Diverged`]. A skipped step leaves the parameters
    /// and Adam's moments as they were, moves the step counter (and so the task draws and the
    /// learning-rate schedule) on, and is counted in [`MetaReport::skipped_steps`]; a good step
    /// resets the run of bad ones. `1` stops at the first bad step. Default 10.
    pub max_bad_steps: usize,
    /// Threads a step's tasks are spread over on the CPU: 0 (the default) uses every core, or one
    /// thread per rank when the steps run over several ranks ([`MetaLearner::step_on`]). Each task
    /// runs its forward and backward pass on its own and the gradients are added in task order,
    /// so a step equals the one-thread step up to the order of that sum.
    pub threads: usize,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            tasks_per_step: 5,
            samples: 8,
            adam: AdamSettings { lr: 3e-3, ..Default::default() },
            lr_end: Some(1e-4),
            objective: TaskObjective::default(),
            context_fraction: (0.1, 0.5),
            chunk: None,
            seed: 0,
            progress: true,
            record_every: 10,
            checkpoint: None,
            time_limit: None,
            max_bad_steps: 10,
            threads: 0,
        }
    }
}

impl MetaConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::config("MetaConfig::steps", 0, "at least one step is needed"));
        }
        if self.tasks_per_step == 0 {
            return Err(Error::config("MetaConfig::tasks_per_step", 0, "at least one task per step is needed"));
        }
        if self.samples == 0 {
            return Err(Error::config("MetaConfig::samples", 0, "at least one weight sample is needed"));
        }
        if !(self.adam.lr.is_finite() && self.adam.lr > 0.0) {
            return Err(Error::config("MetaConfig::adam.lr", self.adam.lr, "must be finite and > 0"));
        }
        if let Some(end) = self.lr_end {
            if !(end.is_finite() && end >= 0.0) {
                return Err(Error::config("MetaConfig::lr_end", end, "must be finite and >= 0"));
            }
        }
        let (lo, hi) = self.context_fraction;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 1.0) {
            return Err(Error::config("MetaConfig::context_fraction", format!("({lo}, {hi})"), "needs 0 <= lo <= hi <= 1"));
        }
        if self.record_every == 0 {
            return Err(Error::config("MetaConfig::record_every", 0, "must be >= 1"));
        }
        if let Some(c) = &self.checkpoint {
            if c.every == 0 {
                return Err(Error::config("Checkpointing::every", 0, "must be >= 1"));
            }
        }
        if self.time_limit == Some(Duration::ZERO) {
            return Err(Error::config("MetaConfig::time_limit", "0 s", "must be > 0 (None for no limit)"));
        }
        if self.max_bad_steps == 0 {
            return Err(Error::config("MetaConfig::max_bad_steps", 0, "must be >= 1 (1 stops at the first bad step)"));
        }
        if self.chunk == Some(0) {
            return Err(Error::config("MetaConfig::chunk", 0, "chunks need at least one point"));
        }
        self.objective.validate()
    }
}

/// Task-averaged terms of one meta-training step.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::*;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let mut guide = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// let mut tasks = Generated(Sawtooth { n_range: (10, 12), ..Default::default() });
/// let mut meta = MetaLearner::new(MetaConfig { steps: 2, tasks_per_step: 2, samples: 2, progress: false, ..Default::default() })?;
/// let rec: MetaRecord = meta.step(&mut guide, &mut tasks)?;
/// assert_eq!(rec.step, 0);
/// assert!(rec.objective.is_finite() && rec.kl >= 0.0 && rec.noise > 0.0 && rec.lr > 0.0);
/// assert!(!rec.skipped);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaRecord {
    /// Step index.
    pub step: usize,
    /// Mean objective over the step's tasks.
    pub objective: f64,
    /// Mean expected context log-likelihood.
    pub ctx_ell: f64,
    /// Mean log joint target predictive.
    pub tgt_lpp: f64,
    /// Mean KL.
    pub kl: f64,
    /// Noise sd after the step.
    pub noise: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Whether the step was skipped: its loss, a gradient or an updated parameter was not finite,
    /// so the parameters were left as they were (see [`MetaConfig::max_bad_steps`]).
    pub skipped: bool,
}

/// What [`MetaLearner::run`] returns.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::*;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let mut guide = Net::<f64, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
/// let mut tasks = Generated(Sawtooth { n_range: (10, 12), ..Default::default() });
/// let cfg = MetaConfig { steps: 4, tasks_per_step: 2, samples: 2, progress: false, record_every: 2, ..Default::default() };
/// let report: MetaReport = MetaLearner::new(cfg)?.run(&mut guide, &mut tasks)?;
/// assert_eq!(report.steps, 4);
/// assert!(!report.stopped_early);
/// assert_eq!(report.skipped_steps, 0);
/// assert!(report.history.iter().any(|r| r.step == 3)); // the last step is always recorded
/// assert!(report.final_objective(2).is_finite());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MetaReport {
    /// Recorded steps.
    pub history: Vec<MetaRecord>,
    /// Steps taken by this call of [`MetaLearner::run`].
    pub steps: usize,
    /// Whether [`MetaConfig::time_limit`] stopped the run before `MetaConfig::steps`.
    pub stopped_early: bool,
    /// Steps of this call that were skipped for a non-finite loss, gradient or parameter (see
    /// [`MetaConfig::max_bad_steps`]); they are not in `history`.
    pub skipped_steps: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Of [`seconds`](Self::seconds), those this rank spent summing over ranks ([`MetaLearner::run_on`];
    /// including waiting there for slower ranks). 0 on one process.
    pub communication_seconds: f64,
}

impl MetaReport {
    /// Mean objective over the last `k` records.
    pub fn final_objective(&self, k: usize) -> f64 {
        let tail = &self.history[self.history.len().saturating_sub(k.max(1))..];
        tail.iter().map(|r| r.objective).sum::<f64>() / tail.len().max(1) as f64
    }
}

/// The standard meta-learning loop: learns the prior, the inference networks and the noise across
/// many tasks.
///
/// [`MetaLearner`] is the standard loop: per step it draws `tasks_per_step` tasks from a
/// [`TaskSource`], splits each at random into context and targets, averages the chosen
/// [`TaskObjective`]'s loss over the tasks and takes one Adam step with a linearly decaying learning
/// rate. Custom meta-learners are built from the same pieces: [`split_task`](super::split_task),
/// [`task_terms`](super::task_terms), [`Adam`], [`linear_lr`] and
/// [`AmortisedGuide::save`](super::AmortisedGuide::save).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::*;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 8, Relu>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<8, 1>, #[likelihood(upper = 0.2)] noise: Gaussian<Learned<0.05>> }
/// let dev = Cpu::default();
/// let mut guide = Net::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let mut tasks = Generated(Sawtooth { n_range: (10, 20), ..Default::default() });
/// let mut meta = MetaLearner::new(MetaConfig { steps: 5, progress: false, record_every: 1, ..Default::default() })?;
/// let report = meta.run(&mut guide, &mut tasks)?;
/// assert_eq!(report.history.len(), 5);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug)]
pub struct MetaLearner<E: Dtype, D: Storage<E>> {
    cfg: MetaConfig,
    opt: Adam<E, D>,
    step: usize,
    /// Bad steps in a row, and in all.
    bad_run: usize,
    skipped: usize,
    /// Seconds spent in collectives so far.
    comm_seconds: f64,
    /// The threads of [`MetaConfig::threads`], made at the first step that needs them.
    pool: Option<Workers>,
}

impl<E: Real, D: Device<E>> MetaLearner<E, D> {
    /// A learner at step 0.
    pub fn new(cfg: MetaConfig) -> Result<Self> {
        cfg.validate()?;
        let opt = Adam::new(cfg.adam);
        Ok(Self { cfg, opt, step: 0, bad_run: 0, skipped: 0, comm_seconds: 0.0, pool: None })
    }

    /// The settings.
    pub fn config(&self) -> &MetaConfig {
        &self.cfg
    }

    /// Steps taken so far (skipped ones included).
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Writes the whole training state to a safetensors file (atomically): the guide's parameters
    /// (under the names [`AmortisedGuide::save`] uses, so [`AmortisedGuide::load`] reads the file
    /// too), Adam's moments and step count, and the step counters. [`MetaConfig::checkpoint`]
    /// writes this; [`resume`](Self::resume) reads it back.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::*;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
    /// let dev = Cpu::default();
    /// let fresh = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    /// let cfg = MetaConfig { steps: 4, tasks_per_step: 2, samples: 2, progress: false, ..Default::default() };
    /// let mut tasks = Generated(Sawtooth { n_range: (10, 12), ..Default::default() });
    /// let path = std::env::temp_dir().join(format!("ws_meta_resume_{}.safetensors", std::process::id()));
    ///
    /// // four steps in one go
    /// let mut straight = fresh.clone();
    /// MetaLearner::new(cfg.clone())?.run(&mut straight, &mut tasks)?;
    ///
    /// // two steps, a checkpoint, then a new process would resume from it
    /// let mut first = fresh.clone();
    /// let mut meta = MetaLearner::new(cfg.clone())?;
    /// meta.step(&mut first, &mut tasks)?;
    /// meta.step(&mut first, &mut tasks)?;
    /// meta.save(&first, &path)?;
    /// let mut resumed = fresh.clone();
    /// let mut meta = MetaLearner::new(cfg)?;
    /// meta.resume(&mut resumed, &path)?;
    /// assert_eq!(meta.steps_taken(), 2);
    /// meta.run(&mut resumed, &mut tasks)?;
    /// // the same parameters, bit for bit
    /// let values = |g: &AmortisedGuide<f64, Cpu>| g.store().ids().map(|id| g.store().values(id)).collect::<Vec<_>>();
    /// assert_eq!(values(&resumed), values(&straight));
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when the file cannot be written.
    pub fn save(&self, guide: &AmortisedGuide<E, D>, path: impl AsRef<std::path::Path>) -> Result<()> {
        let metadata =
            [(META_STEP, self.step), (META_SKIPPED, self.skipped), (META_BAD_RUN, self.bad_run), (META_ADAM_STEPS, self.opt.steps())]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into_iter()
                .collect();
        guide.store().save_with(path.as_ref(), self.opt.state(guide.store()), metadata)
    }

    /// Continues from a file written by [`save`](Self::save) (or by [`MetaConfig::checkpoint`]):
    /// loads the guide's parameters, Adam's state and the step counters, so that the next
    /// [`run`](Self::run) takes the same steps, with the same task draws and learning rates, as an
    /// uninterrupted run would have (bit for bit on one process; over MPI the gradient sums may
    /// round differently with a different number of ranks). The guide must have the architecture
    /// and settings of the one saved; this learner's settings apply from here on (a larger
    /// `steps` extends the run, and moves the learning-rate schedule with it). [`save`](Self::save)
    /// shows a resumed run ending bit for bit where an uninterrupted one does.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::*;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
    /// let mut guide = Net::<f32, Cpu>::new(&Cpu::default()).amortised_guide(GuideConfig::default())?;
    /// let path = std::env::temp_dir().join(format!("ws_meta_resume_doc_{}.safetensors", std::process::id()));
    /// guide.save(&path)?; // the guide alone: no optimiser state to resume
    /// let mut meta = MetaLearner::new(MetaConfig::default())?;
    /// assert!(matches!(meta.resume(&mut guide, &path), Err(weightspace::Error::Checkpoint { .. })));
    /// assert_eq!(meta.steps_taken(), 0);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Checkpoint`] for a file that cannot be read, does not match the guide, or holds no
    /// optimiser state (a file from [`AmortisedGuide::save`]); [`Error::NonFinite`] for a
    /// non-finite entry. On error neither the guide nor the learner changes.
    pub fn resume(&mut self, guide: &mut AmortisedGuide<E, D>, path: impl AsRef<std::path::Path>) -> Result<()> {
        let file = SafetensorsFile::read(path.as_ref())?;
        let (step, skipped, bad_run, adam_steps): (usize, usize, usize, usize) = (
            file.meta(META_STEP, NOT_META)?,
            file.meta(META_SKIPPED, NOT_META)?,
            file.meta(META_BAD_RUN, NOT_META)?,
            file.meta(META_ADAM_STEPS, NOT_META)?,
        );
        let mut store = guide.store().clone();
        store.load_from(&file)?;
        let mut opt = self.opt.clone();
        opt.load_state(&store, &file, adam_steps)?;
        *guide.store_mut() = store;
        self.opt = opt;
        (self.step, self.skipped, self.bad_run) = (step, skipped, bad_run);
        Ok(())
    }

    /// Steps skipped so far for a non-finite loss, gradient or parameter.
    ///
    /// ```
    /// use weightspace::bnnp::{MetaConfig, MetaLearner};
    /// let meta = MetaLearner::<f32, weightspace::prelude::Cpu>::new(MetaConfig::default())?;
    /// assert_eq!((meta.steps_taken(), meta.steps_skipped()), (0, 0));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn steps_skipped(&self) -> usize {
        self.skipped
    }

    /// One step: draw, split and evaluate `tasks_per_step` tasks, then one Adam update. On a
    /// non-finite loss, gradient or updated parameter (or a numerical failure while evaluating a
    /// task: [`Error::NonFinite`], [`Error::NotPositiveDefinite`]) the guide and the optimiser keep their
    /// previous state and the step is skipped: the record has `skipped: true`, or, at the
    /// [`MetaConfig::max_bad_steps`]-th bad step in a row, [`Error::Diverged`] is returned. Either
    /// way the step counter moves on, so the next step draws fresh tasks.
    pub fn step(&mut self, guide: &mut AmortisedGuide<E, D>, source: &mut impl TaskSource<E, D>) -> Result<MetaRecord> {
        self.step_on(&SingleProcess, guide, source)
    }

    /// [`step`](Self::step), data-parallel over the processes of `comm` (see
    /// [`comm`](crate::comm)): every rank draws the step's `tasks_per_step` tasks (each from its
    /// own streams keyed by (step, task), so stateful sources stay in step), evaluates its
    /// contiguous share of them, and the gradients and the recorded terms are summed over ranks
    /// before one Adam update that every rank takes alike. The result equals the one-process step
    /// up to the order of the floating-point additions. Every rank must hold the same guide and
    /// learner (start them alike).
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::*;
    /// use weightspace::comm::SingleProcess;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
    /// let dev = Cpu::default();
    /// let cfg = MetaConfig { steps: 2, tasks_per_step: 3, samples: 2, progress: false, ..Default::default() };
    /// let mut a = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    /// let mut b = a.clone();
    /// let mut tasks = Generated(Sawtooth::default());
    /// let ra = MetaLearner::new(cfg.clone())?.step(&mut a, &mut tasks)?;
    /// let rb = MetaLearner::new(cfg)?.step_on(&SingleProcess, &mut b, &mut tasks)?;
    /// assert_eq!(ra.objective, rb.objective); // one process: the same step
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn step_on(
        &mut self,
        comm: &dyn Communicator,
        guide: &mut AmortisedGuide<E, D>,
        source: &mut impl TaskSource<E, D>,
    ) -> Result<MetaRecord> {
        let cfg = &self.cfg;
        let lr = linear_lr(cfg.adam.lr, cfg.lr_end, self.step, cfg.steps);
        self.opt.settings.lr = lr;
        let dev = guide.store().device().clone();
        let t = cfg.tasks_per_step;
        let mine = share(t, comm.rank(), comm.size());
        let mut rec = MetaRecord { step: self.step, objective: 0.0, ctx_ell: 0.0, tgt_lpp: 0.0, kl: 0.0, noise: 0.0, lr, skipped: false };
        // task k of this step draws from its own streams: one for the task and its split, one for
        // the Monte-Carlo noise, so neither depends on the batch of tasks around it (every task is
        // drawn on every rank, so the source advances alike)
        let mut jobs = Vec::new();
        for k in 0..t {
            let mut task_rng = stream(cfg.seed, Purpose::Task, &[self.step as u64, k as u64]);
            let task = source.next_task(&dev, &mut task_rng)?;
            if mine.contains(&k) {
                let (ctx, tgt) = split_task(&task, cfg.context_fraction, &mut task_rng)?;
                jobs.push(TaskJob { k, ctx, tgt });
            }
        }
        // over several ranks, the ranks are the parallelism: one thread each unless asked otherwise
        let want = if cfg.threads == 0 && comm.size() > 1 { 1 } else { cfg.threads };
        let threads = if crate::kernels::mean_field::is_cpu::<E, D>() { crate::num::threads_or_all(want).min(jobs.len()) } else { 1 };
        let (outcomes, grads) = match threads {
            1 => run_tasks(cfg, self.step, guide, jobs, want),
            _ => {
                let pool = match &self.pool {
                    Some(w) => w.clone(),
                    None => self.pool.insert(Workers::new(want)?).clone(),
                };
                let cfg = &self.cfg;
                run_tasks_on_cpu_threads(&pool, cfg, self.step, guide, jobs)?
            }
        };
        let mut bad_task: Option<String> = None;
        for (k, outcome) in outcomes {
            if bad_task.is_some() {
                break; // the step is skipped; later tasks do not matter
            }
            match outcome {
                Ok(terms) => {
                    rec.objective += terms[0] / t as f64;
                    rec.ctx_ell += terms[1] / t as f64;
                    rec.tgt_lpp += terms[2] / t as f64;
                    rec.kl += terms[3] / t as f64;
                }
                // numerical failures of a bad batch (a NaN, a precision that is not positive
                // definite) are a bad step, like a non-finite loss (the step is skipped below,
                // after the terms are summed over ranks, so that every rank skips it alike instead
                // of leaving the others waiting in the sum)
                Err(e @ (Error::NonFinite { .. } | Error::NotPositiveDefinite { .. } | Error::Diverged { .. })) => {
                    bad_task.get_or_insert(format!("task {k}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        let parallel = comm.size() > 1;
        let mut comm_seconds = 0.0;
        let mut reduce = |v: &mut [f64]| {
            let t0 = Instant::now();
            let r = comm.all_reduce_sum(v);
            comm_seconds += t0.elapsed().as_secs_f64();
            r
        };
        if bad_task.is_some() {
            rec.objective = f64::NAN;
        }
        if parallel {
            let mut terms = [rec.objective, rec.ctx_ell, rec.tgt_lpp, rec.kl];
            reduce(&mut terms)?;
            [rec.objective, rec.ctx_ell, rec.tgt_lpp, rec.kl] = terms;
        }
        if !rec.objective.is_finite() {
            let what = bad_task.unwrap_or_else(|| format!("objective ({})", rec.objective));
            return self.skip(guide, rec, what);
        }
        // a rank with no task this step contributes zero gradients
        let mut grads = grads.unwrap_or_else(Gradients::leaky);
        let backup = (guide.store().clone(), self.opt.clone());
        let stepped = if parallel {
            self.opt.step_reduced(guide.store_mut(), &mut grads, Some(&mut reduce))
        } else {
            self.opt.step(guide.store_mut(), &mut grads)
        };
        self.comm_seconds += comm_seconds;
        match stepped {
            Ok(()) => {}
            Err(Error::Diverged { what, .. }) => return self.skip(guide, rec, what),
            Err(e) => return Err(e),
        }
        if !guide.store().all_finite() {
            (*guide.store_mut(), self.opt) = backup;
            return self.skip(guide, rec, "a parameter after the Adam update".into());
        }
        rec.noise = guide.noise_scale();
        self.step += 1;
        self.bad_run = 0;
        Ok(rec)
    }

    /// Skips the current step (the parameters are untouched), or reports [`Error::Diverged`] at the
    /// `max_bad_steps`-th bad step in a row.
    fn skip(&mut self, guide: &AmortisedGuide<E, D>, mut rec: MetaRecord, what: String) -> Result<MetaRecord> {
        let step = self.step;
        self.step += 1;
        self.skipped += 1;
        self.bad_run += 1;
        if self.bad_run >= self.cfg.max_bad_steps {
            let what = format!("{what} ({} bad steps in a row)", self.bad_run);
            return Err(Error::Diverged { step, what });
        }
        rec.noise = guide.noise_scale();
        rec.skipped = true;
        Ok(rec)
    }

    /// Runs the remaining steps (up to `steps`, or until [`MetaConfig::time_limit`] runs out), with
    /// a progress bar and checkpoints.
    ///
    /// ```
    /// use std::time::Duration;
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::*;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 8, Relu>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<8, 1>, #[likelihood(upper = 0.2)] noise: Gaussian<Learned<0.05>> }
    /// let dev = Cpu::default();
    /// let mut guide = Net::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    /// let mut tasks = Generated(Sawtooth { n_range: (10, 20), ..Default::default() });
    /// // a budget far too small for 1000 steps: the run stops after its first step
    /// let cfg = MetaConfig { time_limit: Some(Duration::from_nanos(1)), progress: false, ..Default::default() };
    /// let report = MetaLearner::new(cfg)?.run(&mut guide, &mut tasks)?;
    /// assert!(report.stopped_early);
    /// assert_eq!(report.steps, 1);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn run(&mut self, guide: &mut AmortisedGuide<E, D>, source: &mut impl TaskSource<E, D>) -> Result<MetaReport> {
        self.run_on(&SingleProcess, guide, source)
    }

    /// [`run`](Self::run) with every step data-parallel over `comm` ([`step_on`](Self::step_on)).
    /// Only rank 0 shows progress and writes checkpoints; the time limit is rank 0's clock, shared
    /// with every rank so that all stop after the same step.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::*;
    /// use weightspace::comm::SingleProcess;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
    /// let dev = Cpu::default();
    /// let mut guide = Net::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    /// let cfg = MetaConfig { steps: 3, tasks_per_step: 2, samples: 2, progress: false, ..Default::default() };
    /// let report = MetaLearner::new(cfg)?.run_on(&SingleProcess, &mut guide, &mut Generated(Sawtooth::default()))?;
    /// assert_eq!(report.steps, 3);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn run_on(
        &mut self,
        comm: &dyn Communicator,
        guide: &mut AmortisedGuide<E, D>,
        source: &mut impl TaskSource<E, D>,
    ) -> Result<MetaReport> {
        let start = Instant::now();
        let steps = self.cfg.steps;
        let root = comm.is_root();
        let bar = Progress::new(steps, self.cfg.progress && root, "meta");
        bar.set_position(self.step);
        let mut history = Vec::new();
        let first = self.step;
        let skipped_before = self.skipped;
        let mut stopped_early = false;
        let comm_start = self.comm_seconds;
        while self.step < steps {
            let rec = match self.step_on(comm, guide, source) {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            stopped_early = self.step < steps && self.cfg.time_limit.is_some_and(|limit| start.elapsed() >= limit);
            if self.cfg.time_limit.is_some() && comm.size() > 1 {
                // rank 0's clock decides, so every rank stops after the same step
                stopped_early = comm.all_max(if root && stopped_early { 1.0 } else { 0.0 })? > 0.0;
            }
            if !rec.skipped && (rec.step.is_multiple_of(self.cfg.record_every) || rec.step + 1 == steps || stopped_early) {
                let skipped = self.skipped - skipped_before;
                let note = if skipped > 0 { format!("  skipped {skipped}") } else { String::new() };
                bar.message(format!("objective {:.2}  σ_y {:.3}{note}", rec.objective, rec.noise));
                history.push(rec);
            }
            if let Some(c) = &self.cfg.checkpoint {
                if root && (self.step.is_multiple_of(c.every) || self.step == steps || stopped_early) {
                    self.save(guide, &c.path)?;
                }
            }
            bar.inc();
            if stopped_early {
                bar.println(format!("meta: time limit reached after {} steps ({} of {steps} done)", self.step - first, self.step));
                break;
            }
        }
        bar.finish();
        let skipped_steps = self.skipped - skipped_before;
        if skipped_steps > 0 {
            bar.println(format!("meta: skipped {skipped_steps} of {} steps for a non-finite loss or gradient", self.step - first));
        }
        Ok(MetaReport {
            history,
            steps: self.step - first,
            stopped_early,
            skipped_steps,
            seconds: start.elapsed().as_secs_f64(),
            communication_seconds: self.comm_seconds - comm_start,
        })
    }
}

/// One task of a step: its index and its context/target split.
struct TaskJob<E: Dtype, D: Storage<E>> {
    k: usize,
    ctx: Dataset<E, D>,
    tgt: Option<Dataset<E, D>>,
}

/// What task `k` gave: `[objective, ctx_ell, tgt_lpp, kl]`, or why it failed.
type Outcome = (usize, Result<[f64; 4]>);

/// Some tasks' outcomes and the gradients of their summed losses on the CPU.
type TaskResults<E> = (Vec<Outcome>, Option<Gradients<E, Cpu>>);

/// Runs `jobs` on this thread, in order: each task's terms, and one backward pass of their losses,
/// each weighted `1/t` (none when a task failed: the step is then skipped).
fn run_tasks<E: Real, D: Device<E>>(
    cfg: &MetaConfig,
    step: usize,
    guide: &AmortisedGuide<E, D>,
    jobs: Vec<TaskJob<E, D>>,
    threads: usize,
) -> (Vec<Outcome>, Option<Gradients<E, D>>) {
    let opts = ForwardOptions { samples: cfg.samples, trace: true, kl: true, chunk: cfg.chunk, threads };
    let weight = crate::num::cast::from_f64::<E>(1.0 / cfg.tasks_per_step as f64);
    let mut total: Option<Taped<(), E, D>> = None;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut noise = stream(cfg.seed, Purpose::Noise, &[step as u64, job.k as u64]);
        match task_terms(guide, &job.ctx, job.tgt.as_ref(), &cfg.objective, &opts, &mut noise) {
            Ok(terms) => {
                outcomes.push((job.k, Ok([terms.objective, terms.ctx_ell, terms.tgt_lpp, terms.kl])));
                total = crate::vi::prior::add_term(total, terms.loss * weight);
            }
            Err(e) => {
                outcomes.push((job.k, Err(e)));
                return (outcomes, None);
            }
        }
    }
    (outcomes, total.map(|t| t.backward()))
}

/// [`run_tasks_on_threads`] in `pool` for a guide on the CPU (`D` is [`Cpu`], checked by the
/// caller), in f32 or f64.
#[allow(clippy::type_complexity)]
fn run_tasks_on_cpu_threads<E: Real, D: Device<E>>(
    pool: &Workers,
    cfg: &MetaConfig,
    step: usize,
    guide: &AmortisedGuide<E, D>,
    jobs: Vec<TaskJob<E, D>>,
) -> Result<(Vec<Outcome>, Option<Gradients<E, D>>)> {
    use crate::kernels::mean_field::{same, same_ref};
    use std::any::TypeId;
    macro_rules! on {
        ($t:ty) => {{
            let jobs: Vec<TaskJob<$t, Cpu>> =
                jobs.into_iter().map(|j| TaskJob { k: j.k, ctx: same(j.ctx), tgt: j.tgt.map(same) }).collect();
            let guide: &AmortisedGuide<$t, Cpu> = same_ref(guide);
            let results = pool.install(|| run_tasks_on_threads::<$t>(cfg, step, guide, jobs));
            // the shares' gradients, added in order
            let mut outcomes = Vec::new();
            let mut grads: Option<Gradients<$t, Cpu>> = None;
            let mut failed = false;
            for (o, g) in results {
                failed |= o.iter().any(|(_, r)| r.is_err());
                outcomes.extend(o);
                grads = match (grads, g) {
                    (Some(mut a), Some(mut b)) => {
                        for id in guide.store().ids() {
                            let t = guide.store().get(id);
                            b.try_alloc_for(t).map_err(Error::device)?;
                            a.try_alloc_for(t).map_err(Error::device)?;
                            let src = b.get_or_alloc_mut(t).map_err(Error::device)?;
                            a.get_or_alloc_mut(t).map_err(Error::device)?.iter_mut().zip(src.iter()).for_each(|(x, y)| *x += *y);
                        }
                        Some(a)
                    }
                    (a, b) => a.or(b),
                };
            }
            Ok((outcomes, if failed { None } else { grads.map(same) }))
        }};
    }
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        on!(f32)
    } else if TypeId::of::<E>() == TypeId::of::<f64>() {
        on!(f64)
    } else {
        Ok(run_tasks(cfg, step, guide, jobs, 0))
    }
}

/// [`run_tasks`] for every task on its own, spread over the current rayon pool; every task's
/// outcome and gradients, in task order.
fn run_tasks_on_threads<E: Real>(
    cfg: &MetaConfig,
    step: usize,
    guide: &AmortisedGuide<E, Cpu>,
    jobs: Vec<TaskJob<E, Cpu>>,
) -> Vec<TaskResults<E>>
where
    Cpu: Device<E>,
{
    use rayon::prelude::*;
    jobs.into_par_iter().map(|job| run_tasks(cfg, step, guide, vec![job], 0)).collect()
}
