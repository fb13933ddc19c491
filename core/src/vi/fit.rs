//! Stochastic variational inference: Adam on the ELBO, with minibatches, a progress bar, a history
//! of the ELBO's parts and divergence detection.

use dfdx::optim::{Adam, AdamConfig, Optimizer, OptimizerUpdateError};
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::model::bnn::Bnn;
use crate::model::data::Dataset;
use crate::progress::Progress;
use crate::vi::elbo::{ElboConfig, Objective};
use crate::{Error, Real, Result};

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
    /// Minibatch size; `None` uses the whole dataset every step. Batches are drawn by reshuffling
    /// once per epoch.
    pub batch_size: Option<usize>,
    /// Adam learning rate. Default 1e-2.
    pub lr: f64,
    /// Decay the learning rate linearly to this value by the last step; `None` keeps it constant.
    pub lr_end: Option<f64>,
    /// ELBO estimator settings (samples `S`, local reparameterisation, KL estimator). Used by
    /// [`fit`]; [`fit_objective`] takes its objective separately.
    pub elbo: ElboConfig,
    /// Seed for minibatches and Monte-Carlo noise.
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
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Recorded ELBO parts.
    pub history: Vec<FitRecord>,
    /// Steps taken.
    pub steps: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl FitReport {
    /// Mean ELBO over the last `k` records (a less noisy end-of-training figure).
    pub fn final_elbo(&self, k: usize) -> f64 {
        let tail = &self.history[self.history.len().saturating_sub(k.max(1))..];
        tail.iter().map(|r| r.elbo).sum::<f64>() / tail.len().max(1) as f64
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

/// Fits `guide` (and the model's learned prior and likelihood parameters) by maximising the ELBO
/// with Adam.
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
pub fn fit_objective<E: Real, D: Device<E>, M: Bnn<E, D>, O: Objective<E, D, M>>(
    model: &mut M,
    guide: &mut M::Guide,
    data: &Dataset<E, D>,
    cfg: &FitConfig,
    objective: &mut O,
) -> Result<FitReport> {
    objective.validate()?;
    data.check_for(M::ARCH)?;
    let n = data.len();
    validate(cfg, n)?;
    let start = std::time::Instant::now();
    let adam = AdamConfig { lr: cfg.lr, ..Default::default() };
    let mut opt_g = Adam::new(&*guide, adam);
    let mut opt_m = Adam::new(&*model, adam);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let bar = Progress::new(cfg.steps, cfg.progress, "fit");
    let mut order: Vec<usize> = (0..n).collect();
    let mut cursor = n;
    let mut history = Vec::new();
    for step in 0..cfg.steps {
        if let Some(end) = cfg.lr_end {
            let t = step as f64 / (cfg.steps.max(2) - 1) as f64;
            let lr = cfg.lr + (end - cfg.lr) * t;
            opt_g.cfg.lr = lr;
            opt_m.cfg.lr = lr;
        }
        let batch = match cfg.batch_size {
            None => None,
            Some(b) => {
                if cursor + b > n {
                    order.shuffle(&mut rng);
                    cursor = 0;
                }
                let idx = &order[cursor..cursor + b];
                cursor += b;
                Some(data.rows(idx)?)
            }
        };
        let est = objective.estimate(&*model, &*guide, batch.as_ref().unwrap_or(data), n, &mut rng)?;
        if !est.elbo.is_finite() {
            bar.abandon();
            return Err(Error::Diverged { step, what: format!("ELBO estimate ({})", est.elbo) });
        }
        let grads = est.loss.backward();
        let (backup_g, backup_m) = (guide.clone(), model.clone());
        update(&mut opt_g, guide, &grads)?;
        update(&mut opt_m, model, &grads)?;
        if !crate::model::params::all_finite(&*guide) || !crate::model::params::all_finite(&*model) {
            *guide = backup_g;
            *model = backup_m;
            bar.abandon();
            return Err(Error::Diverged { step, what: "a parameter after the Adam update".into() });
        }
        if step % cfg.record_every == 0 || step + 1 == cfg.steps {
            history.push(FitRecord { step, elbo: est.elbo, expected_log_lik: est.expected_log_lik, kl: est.kl });
            bar.message(format!("elbo {:.3}", est.elbo));
        }
        bar.inc();
    }
    bar.finish();
    Ok(FitReport { history, steps: cfg.steps, seconds: start.elapsed().as_secs_f64() })
}
