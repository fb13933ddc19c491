//! Stochastic variational inference: Adam on the ELBO, with minibatches, a progress bar, a history
//! of the ELBO's parts and divergence detection.

use crate::communicator::{share, Communicator, SingleProcess};
use crate::model::bnn::Bnn;
use crate::model::data::Dataset;
use crate::model::minibatch::Minibatches;
use crate::num::rng::{stream, Purpose};
use crate::progress::Progress;
use crate::vi::elbo::{ElboConfig, Objective};
use crate::{Error, Real, Result};
use dfdx::optim::{Adam, AdamConfig, Optimizer, OptimizerUpdateError};
use dfdx::prelude::*;

/// Settings of [`fit`]. Plain data: override what you need with `..Default::default()`.
///
/// ```
/// use weightspace::prelude::*;
/// let cfg = FitConfig { steps: 2_000, batch_size: Some(64), lr: 5e-3, ..Default::default() };
/// assert_eq!(cfg.elbo.samples, 8);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Optimisation steps. Default 1000.
    pub steps: usize,
    /// Minibatch size; `None` uses the whole dataset every step. Each epoch visits every point
    /// once in a freshly shuffled order, cut into batches of this size; when it does not divide
    /// `N`, the epoch's last batch holds the remaining `N mod batch_size` points (scaled by its own
    /// `N / |B|`, so every step's estimate stays unbiased).
    pub batch_size: Option<usize>,
    /// Adam learning rate. Default 1e-2.
    pub lr: f64,
    /// Decay the learning rate linearly to this value by the last step; `None` keeps it constant.
    pub lr_end: Option<f64>,
    /// ELBO estimator settings (samples `S`, local reparameterisation, KL estimator). Used by
    /// [`fit`]; [`fit_objective`] takes its objective separately.
    pub elbo: ElboConfig,
    /// Seed of the run's random streams: one for the batch order of each epoch, one for the
    /// Monte-Carlo noise of each step.
    pub seed: u64,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal).
    pub progress: bool,
    /// Record the ELBO parts every this many steps (and at the last step). Default 10.
    pub record_every: usize,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: None,
            lr: 1e-2,
            lr_end: None,
            elbo: ElboConfig::default(),
            seed: 0,
            progress: true,
            record_every: 10,
        }
    }
}

/// One entry of the fitting history.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.0, 1.0, 2.0], 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let report = fit(&mut model, &mut guide, &data, &FitConfig { steps: 5, progress: false, ..Default::default() })?;
/// let first: FitRecord = report.history[0];
/// assert_eq!(first.step, 0);
/// assert!((first.elbo - (first.expected_log_lik - first.kl)).abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
/// One entry of the fitting history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitRecord {
    /// Step index.
    pub step: usize,
    /// ELBO estimate on that step's minibatch (scaled to the full dataset).
    pub elbo: f64,
    /// Expected log-likelihood term (scaled by `N / |B|`).
    pub expected_log_lik: f64,
    /// KL term.
    pub kl: f64,
}

/// What [`fit`] returns.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.0, 1.0, 2.0], 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let cfg = FitConfig { steps: 25, record_every: 10, progress: false, ..Default::default() };
/// let report: FitReport = fit(&mut model, &mut guide, &data, &cfg)?;
/// assert_eq!(report.steps, 25);
/// // records at steps 0, 10, 20 and the last step
/// assert_eq!(report.history.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 10, 20, 24]);
/// assert_eq!(report.final_elbo(1), report.history[3].elbo);
/// assert!(report.seconds >= 0.0);
/// assert_eq!(report.communication_seconds, 0.0); // one process
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Recorded ELBO parts.
    pub history: Vec<FitRecord>,
    /// Steps taken.
    pub steps: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Of [`seconds`](Self::seconds), the time in collectives of a data-parallel run ([`fit_on`]):
    /// summing the ELBO terms and gradients over ranks, including the wait for slower ranks. Zero on
    /// one process.
    pub communication_seconds: f64,
}

impl FitReport {
    /// Mean ELBO over the last `k` records (a less noisy end-of-training figure).
    pub fn final_elbo(&self, k: usize) -> f64 {
        let tail = &self.history[self.history.len().saturating_sub(k.max(1))..];
        tail.iter().map(|r| r.elbo).sum::<f64>() / tail.len().max(1) as f64
    }

    /// The history as `.npz` arrays, one value per record: `step` (`i64`), `elbo`,
    /// `expected_log_lik` and `kl` (`f64`), each of shape `(records,)`. Write it with
    /// [`Npz::write`](crate::export::Npz::write); in Python, `np.load(path)["elbo"]`.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
    /// let dev = Cpu::default();
    /// let data = Dataset::<f64, _>::regression(&dev, &[0.0, 1.0, 2.0], 1, &[0.0, 1.0, 2.0], 1)?;
    /// let mut model = Lin::<f64, Cpu>::new(&dev);
    /// let mut guide = model.mean_field();
    /// let report = fit(&mut model, &mut guide, &data, &FitConfig { steps: 30, record_every: 10, progress: false, ..Default::default() })?;
    /// let npz = report.to_npz()?;
    /// assert_eq!(npz.names(), vec!["step", "elbo", "expected_log_lik", "kl"]);
    /// assert_eq!(npz.shape("elbo"), Some(&[4usize][..])); // steps 0, 10, 20, 29
    /// assert_eq!(npz.f64_values("kl").unwrap()[3], report.history[3].kl);
    /// let path = std::env::temp_dir().join(format!("weightspace_doc_fit_{}.npz", std::process::id()));
    /// npz.write(&path)?;
    /// std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn to_npz(&self) -> Result<crate::model::npz::Npz> {
        let n = self.history.len();
        let mut npz = crate::model::npz::Npz::new();
        npz.add_i64("step", &[n], self.history.iter().map(|r| r.step as i64).collect())?
            .add_f64("elbo", &[n], self.history.iter().map(|r| r.elbo).collect())?
            .add_f64("expected_log_lik", &[n], self.history.iter().map(|r| r.expected_log_lik).collect())?
            .add_f64("kl", &[n], self.history.iter().map(|r| r.kl).collect())?;
        Ok(npz)
    }
}

fn validate(cfg: &FitConfig, n: usize) -> Result<()> {
    if cfg.steps == 0 {
        return Err(Error::config("FitConfig::steps", 0, "at least one step is needed"));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::config("FitConfig::lr", cfg.lr, "must be finite and > 0"));
    }
    if let Some(end) = cfg.lr_end {
        if !(end.is_finite() && end >= 0.0) {
            return Err(Error::config("FitConfig::lr_end", end, "must be finite and >= 0"));
        }
    }
    if let Some(b) = cfg.batch_size {
        if b == 0 || b > n {
            return Err(Error::config("FitConfig::batch_size", b, "must be between 1 and the dataset size"));
        }
    }
    if cfg.record_every == 0 {
        return Err(Error::config("FitConfig::record_every", 0, "must be >= 1"));
    }
    Ok(())
}

fn update<E: Real, D: Device<E>, M: TensorCollection<E, D>>(opt: &mut Adam<M, E, D>, m: &mut M, grads: &Gradients<E, D>) -> Result<()> {
    match opt.update(m, grads) {
        Ok(()) | Err(OptimizerUpdateError::UnusedParams(_)) => Ok(()),
        Err(OptimizerUpdateError::DeviceError(e)) => Err(Error::device(e)),
    }
}

/// The state of a stochastic-variational-inference run: the optimiser state of the guide and of
/// the model's learned parameters, the minibatch schedule, the objective and the step counter.
/// [`fit`] and [`fit_objective`] drive it to the end; drive it yourself with [`Svi::step`] to
/// interleave your own work (evaluation, checkpoints, early stopping).
///
/// Step `t` draws its Monte-Carlo noise from its own random stream, keyed by the seed and `t`, and
/// the batches come from a separate shuffling stream (the schedule and its last-batch rule are
/// described at [`FitConfig::batch_size`]). So the noise of step `t` does not depend on the batch
/// size, and a run resumed from step `t` with the same state draws what the uninterrupted run would
/// have drawn.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::Svi;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let cfg = FitConfig { steps: 200, batch_size: Some(8), progress: false, ..Default::default() };
/// let mut svi = Svi::new(&model, &guide, &data, cfg, ElboConfig::default())?;
/// let first = svi.step(&mut model, &mut guide, &data)?;
/// while svi.steps_taken() < 200 {
///     svi.step(&mut model, &mut guide, &data)?;
/// }
/// let last = svi.step(&mut model, &mut guide, &data)?;
/// assert!(last.elbo > first.elbo);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub struct Svi<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>> {
    cfg: FitConfig,
    objective: O,
    opt_guide: Adam<M::Guide, E, D>,
    opt_model: Adam<M, E, D>,
    batches: Minibatches,
    n: usize,
    step: usize,
    /// Seconds spent in collectives by [`Svi::step_on`].
    communication_seconds: f64,
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>> Svi<E, D, M, O> {
    /// A run of `objective` on `data` (`N` points) with the settings `cfg`, starting at step 0.
    /// Checks the settings, the objective and the data against the model.
    pub fn new(model: &M, guide: &M::Guide, data: &Dataset<E, D>, cfg: FitConfig, objective: O) -> Result<Self> {
        objective.validate()?;
        data.check_for(M::ARCH)?;
        let n = data.len();
        validate(&cfg, n)?;
        let adam = AdamConfig { lr: cfg.lr, ..Default::default() };
        Ok(Self {
            opt_guide: Adam::new(guide, adam),
            opt_model: Adam::new(model, adam),
            batches: Minibatches::new(n, cfg.batch_size, cfg.seed),
            objective,
            n,
            step: 0,
            communication_seconds: 0.0,
            cfg,
        })
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The learning rate of step `t`: `lr`, decayed linearly to `lr_end` over `steps` when set
    /// (and held at `lr_end` after).
    fn learning_rate(&self, t: usize) -> f64 {
        match self.cfg.lr_end {
            Some(end) => {
                let frac = (t as f64 / (self.cfg.steps.max(2) - 1) as f64).min(1.0);
                self.cfg.lr + (end - self.cfg.lr) * frac
            }
            None => self.cfg.lr,
        }
    }

    /// One step: the next minibatch of `data` (the dataset the run was created with), the
    /// objective's estimate and gradient, and one Adam update of the guide and of the model's
    /// learned parameters.
    ///
    /// If the estimate or an updated parameter is not finite, returns [`Error::Diverged`] naming
    /// the step, and `model` and `guide` keep their values from before the step.
    pub fn step(&mut self, model: &mut M, guide: &mut M::Guide, data: &Dataset<E, D>) -> Result<FitRecord> {
        self.step_on(&SingleProcess, model, guide, data)
    }

    /// [`step`](Self::step), data-parallel over the processes of `comm` (see
    /// [`comm`](crate::comm)). Every rank holds the same `data`, model, guide and run, and draws
    /// the same minibatch `B`; rank `r` evaluates the objective on its contiguous part `B_r` of it
    /// with the common Monte-Carlo weight samples, weights it by `|B_r|/|B|` (so the expected
    /// log-likelihood keeps its `N/|B|` scaling and the KL is counted once), and the gradients and
    /// the recorded terms are summed over ranks before one Adam update that every rank takes
    /// alike. The result equals the one-process step up to the order of the floating-point
    /// additions.
    ///
    /// Needs an objective whose estimate splits over the points
    /// ([`Objective::splits_over_points`]: the ELBO with weight samples, not local
    /// reparameterisation) and a minibatch of at least as many points as there are ranks; either
    /// is an [`Error::InvalidConfig`] otherwise, the same on every rank.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::comm::SingleProcess;
    /// use weightspace::Svi;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
    /// let model = Lin::<f64, Cpu>::new(&dev);
    /// let cfg = FitConfig { batch_size: Some(8), progress: false, ..Default::default() };
    /// let (mut m1, mut g1, mut m2, mut g2) = (model.clone(), model.mean_field(), model.clone(), model.mean_field());
    /// let mut a = Svi::new(&m1, &g1, &data, cfg.clone(), ElboConfig::default())?;
    /// let mut b = Svi::new(&m2, &g2, &data, cfg, ElboConfig::default())?;
    /// let ra = a.step(&mut m1, &mut g1, &data)?;
    /// let rb = b.step_on(&SingleProcess, &mut m2, &mut g2, &data)?;
    /// assert_eq!(ra, rb); // one process: the same step
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn step_on(&mut self, comm: &dyn Communicator, model: &mut M, guide: &mut M::Guide, data: &Dataset<E, D>) -> Result<FitRecord> {
        if data.len() != self.n {
            return Err(Error::Shape { what: "SVI data (points)".into(), expected: self.n.to_string(), got: data.len().to_string() });
        }
        let parallel = comm.size() > 1;
        if parallel && !self.objective.splits_over_points() {
            return Err(Error::config(
                "Svi::step_on",
                comm.size(),
                "a data-parallel step needs an objective that splits over the points (the ELBO with weight samples, not local reparameterisation)",
            ));
        }
        let t = self.step;
        let lr = self.learning_rate(t);
        self.opt_guide.cfg.lr = lr;
        self.opt_model.cfg.lr = lr;
        let rows: Option<Vec<usize>> = self.batches.next_batch().map(<[usize]>::to_vec);
        let mut noise = stream(self.cfg.seed, Purpose::Noise, &[t as u64]);
        let (est, weight) = if parallel {
            let rows = rows.unwrap_or_else(|| (0..self.n).collect());
            let (mine, weight) = batch_part(rows.len(), comm.rank(), comm.size())?;
            let part = data.rows(&rows[mine])?;
            (self.objective.estimate(&*model, &*guide, &part, self.n, &mut noise)?, Some(weight))
        } else {
            let batch = rows.map(|r| data.rows(&r)).transpose()?;
            (self.objective.estimate(&*model, &*guide, batch.as_ref().unwrap_or(data), self.n, &mut noise)?, None)
        };
        let mut terms = [est.elbo, est.expected_log_lik, est.kl];
        let loss = match weight {
            Some(w) => {
                terms.iter_mut().for_each(|v| *v *= w);
                let t0 = std::time::Instant::now();
                comm.all_reduce_sum(&mut terms)?;
                self.communication_seconds += t0.elapsed().as_secs_f64();
                est.loss * crate::num::cast::from_f64::<E>(w)
            }
            None => est.loss,
        };
        let [elbo, expected_log_lik, kl] = terms;
        if !elbo.is_finite() {
            return Err(Error::Diverged { step: t, what: format!("ELBO estimate ({elbo})") });
        }
        let record = FitRecord { step: t, elbo, expected_log_lik, kl };
        let mut grads = loss.backward();
        if parallel {
            grads = all_reduce_gradients(comm, &*guide, &*model, grads, &mut self.communication_seconds)?;
        }
        let (backup_g, backup_m) = (guide.clone(), model.clone());
        update(&mut self.opt_guide, guide, &grads)?;
        update(&mut self.opt_model, model, &grads)?;
        if !crate::model::params::all_finite(&*guide) || !crate::model::params::all_finite(&*model) {
            *guide = backup_g;
            *model = backup_m;
            return Err(Error::Diverged { step: t, what: "a parameter after the Adam update".into() });
        }
        self.step += 1;
        Ok(record)
    }
}

/// Rank `rank`'s contiguous part of a minibatch of `len` points split over `size` ranks, and the
/// weight `|B_r|/|B|` of its estimate.
fn batch_part(len: usize, rank: usize, size: usize) -> Result<(std::ops::Range<usize>, f64)> {
    if len < size {
        return Err(Error::config("FitConfig::batch_size", len, "a data-parallel minibatch needs at least one point per rank"));
    }
    let mine = share(len, rank, size);
    let w = mine.len() as f64 / len as f64;
    Ok((mine, w))
}

/// The gradients of every tensor of `guide` and `model`, summed over the ranks of `comm`: the
/// local gradients (zero for a tensor the loss did not touch) are flattened in the collections'
/// order, all-reduced, and put back as the gradients of a surrogate `Σ_θ Σ θ ⊙ g_θ`, whose
/// gradient is exactly the reduced `g_θ`.
fn all_reduce_gradients<E: Real, D: Device<E>, G: TensorCollection<E, D>, M: TensorCollection<E, D>>(
    comm: &dyn Communicator,
    guide: &G,
    model: &M,
    mut grads: Gradients<E, D>,
    seconds: &mut f64,
) -> Result<Gradients<E, D>> {
    let mut flat = Vec::new();
    let mut gather = |t: &dyn Param<E, D>| -> Result<()> {
        flat.extend(t.gradient(&mut grads)?);
        Ok(())
    };
    visit_params(guide, &mut gather)?;
    visit_params(model, &mut gather)?;
    let t0 = std::time::Instant::now();
    comm.all_reduce_sum(&mut flat)?;
    *seconds += t0.elapsed().as_secs_f64();
    let mut at = 0;
    let mut surrogate: Option<crate::vi::prior::Taped<(), E, D>> = None;
    let mut rebuild = |t: &dyn Param<E, D>| -> Result<()> {
        let n = t.len();
        surrogate = crate::vi::prior::add_term(surrogate.take(), t.dot(&flat[at..at + n]));
        at += n;
        Ok(())
    };
    visit_params(guide, &mut rebuild)?;
    visit_params(model, &mut rebuild)?;
    Ok(match surrogate {
        Some(s) => s.backward(),
        None => Gradients::leaky(),
    })
}

/// A parameter tensor of a collection, its shape erased.
trait Param<E: Real, D: Device<E>> {
    /// Number of values.
    fn len(&self) -> usize;
    /// Its gradient in `grads` (zero when the loss did not touch it), on the host.
    fn gradient(&self, grads: &mut Gradients<E, D>) -> Result<Vec<f64>>;
    /// `Σ θ ⊙ g` on a fresh tape of `θ`, whose gradient is `g`.
    fn dot(&self, g: &[f64]) -> crate::vi::prior::Taped<(), E, D>;
}

impl<S: Shape, E: Real, D: Device<E>> Param<E, D> for Tensor<S, E, D> {
    fn len(&self) -> usize {
        self.shape().num_elements()
    }
    fn gradient(&self, grads: &mut Gradients<E, D>) -> Result<Vec<f64>> {
        grads.try_alloc_for(self).map_err(Error::device)?;
        Ok(crate::num::cast::to_f64s(&grads.get(self).as_vec()))
    }
    fn dot(&self, g: &[f64]) -> crate::vi::prior::Taped<(), E, D> {
        let g: Vec<E> = g.iter().map(|&v| crate::num::cast::from_f64::<E>(v)).collect();
        let g = self.device().tensor_from_vec(g, *self.shape());
        (self.clone().leaky_traced() * g).sum::<(), _>()
    }
}

/// Calls `f` on every tensor of `m`, in the collection's order.
fn visit_params<E: Real, D: Device<E>, M: TensorCollection<E, D>>(m: &M, f: &mut dyn FnMut(&dyn Param<E, D>) -> Result<()>) -> Result<()> {
    struct Visit<'f, E: Real, D: Device<E>> {
        f: &'f mut dyn FnMut(&dyn Param<E, D>) -> Result<()>,
        err: Option<Error>,
    }
    impl<E: Real, D: Device<E>> dfdx::nn::tensor_collection::TensorVisitor<E, D> for Visit<'_, E, D> {
        type Viewer = dfdx::nn::tensor_collection::ViewTensorRef;
        type Err = D::Err;
        type E2 = E;
        type D2 = D;
        fn visit<S: Shape>(
            &mut self,
            _: TensorOptions<S, E, D>,
            t: &Tensor<S, E, D>,
        ) -> std::result::Result<Option<Tensor<S, E, D>>, D::Err> {
            if self.err.is_none() {
                if let Err(e) = (self.f)(t) {
                    self.err = Some(e);
                }
            }
            Ok(None)
        }
    }
    let mut v = Visit { f, err: None };
    M::iter_tensors(&mut dfdx::nn::tensor_collection::RecursiveWalker { m, f: &mut v }).map_err(Error::device)?;
    v.err.map_or(Ok(()), Err)
}

/// Fits `guide` (and the model's learned prior and likelihood parameters) by maximising the ELBO
/// with Adam: [`Svi`] run for `cfg.steps` steps, with a progress bar and a history.
///
/// Minibatch scaling is explicit: the expected log-likelihood of a batch is scaled by
/// `N / |B|`, and the history records the terms separately. If a loss or a parameter becomes NaN or
/// infinite, `fit` returns [`Error::Diverged`] naming the step, and both `model` and `guide` keep
/// their last finite values.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f32, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f32, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let report = fit(&mut model, &mut guide, &data, &FitConfig { steps: 300, progress: false, ..Default::default() })?;
/// assert!(report.history.last().unwrap().elbo > report.history[0].elbo);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn fit<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &mut M,
    guide: &mut M::Guide,
    data: &Dataset<E, D>,
    cfg: &FitConfig,
) -> Result<FitReport> {
    let mut objective = cfg.elbo;
    fit_objective(model, guide, data, cfg, &mut objective)
}

/// [`fit`] with any [`Objective`] in place of the plain ELBO (e.g. a symmetrised ELBO). The
/// objective's loss is minimised; its reported parts go into the history.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// // any Objective: here the ELBO with a Monte-Carlo KL term
/// let mut objective = ElboConfig { kl: KlEstimator::MonteCarlo, ..Default::default() };
/// let cfg = FitConfig { steps: 200, progress: false, ..Default::default() };
/// let report = fit_objective(&mut model, &mut guide, &data, &cfg, &mut objective)?;
/// assert!(report.final_elbo(3) > report.history[0].elbo);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn fit_objective<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>>(
    model: &mut M,
    guide: &mut M::Guide,
    data: &Dataset<E, D>,
    cfg: &FitConfig,
    objective: &mut O,
) -> Result<FitReport> {
    run(&SingleProcess, model, guide, data, cfg, objective)
}

/// [`fit`], data-parallel over the processes of `comm` (see [`comm`](crate::comm)): every step
/// is [`Svi::step_on`], so each rank evaluates its part of every minibatch and the gradients are
/// summed over ranks. Every rank calls it with the same model, guide, data and settings and ends
/// with the same fitted parameters and report (up to the order of float additions, the same as
/// one process's); only rank 0 shows progress.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::comm::SingleProcess;
/// use weightspace::fit_on;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// let cfg = FitConfig { steps: 50, batch_size: Some(5), progress: false, ..Default::default() };
/// let report = fit_on(&SingleProcess, &mut model, &mut guide, &data, &cfg)?;
/// assert_eq!(report.steps, 50);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn fit_on<E: Real, D: Device<E>, M: Bnn<E, D>>(
    comm: &dyn Communicator,
    model: &mut M,
    guide: &mut M::Guide,
    data: &Dataset<E, D>,
    cfg: &FitConfig,
) -> Result<FitReport> {
    let mut objective = cfg.elbo;
    run(comm, model, guide, data, cfg, &mut objective)
}

/// The [`Svi`] loop behind [`fit`], [`fit_objective`] and [`fit_on`].
fn run<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>>(
    comm: &dyn Communicator,
    model: &mut M,
    guide: &mut M::Guide,
    data: &Dataset<E, D>,
    cfg: &FitConfig,
    objective: &mut O,
) -> Result<FitReport> {
    let start = std::time::Instant::now();
    let mut svi = Svi::new(&*model, &*guide, data, cfg.clone(), ByRef(objective))?;
    let bar = Progress::new(cfg.steps, cfg.progress && comm.is_root(), "fit");
    let mut history = Vec::new();
    for step in 0..cfg.steps {
        let record = match svi.step_on(comm, model, guide, data) {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        if step % cfg.record_every == 0 || step + 1 == cfg.steps {
            history.push(record);
            bar.message(format!("elbo {:.3}", record.elbo));
        }
        bar.inc();
    }
    bar.finish();
    Ok(FitReport { history, steps: cfg.steps, seconds: start.elapsed().as_secs_f64(), communication_seconds: svi.communication_seconds })
}

/// An objective borrowed for the length of a run.
struct ByRef<'a, O>(&'a mut O);

impl<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>> Objective<E, D, M> for ByRef<'_, O> {
    fn estimate(
        &mut self,
        model: &M,
        guide: &M::Guide,
        batch: &Dataset<E, D>,
        n_total: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<crate::vi::elbo::ElboEstimate<E, D>> {
        self.0.estimate(model, guide, batch, n_total, rng)
    }

    fn validate(&self) -> Result<()> {
        self.0.validate()
    }

    fn splits_over_points(&self) -> bool {
        self.0.splits_over_points()
    }
}
