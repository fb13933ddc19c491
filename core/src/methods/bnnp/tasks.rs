//! Task sources for meta-learning: in-memory collections and generators of 1-D regression tasks.
//!
//! The generators follow docs/methods.md §1: every task draws `n ~ U{lo..hi−1}` inputs
//! `x ~ U(range)` (defaults `n ∈ {40..99}`), then noisy targets from its own random function.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::model::arch::Activation;
use crate::model::data::Dataset;
use crate::{Error, Real, Result};
use dfdx::prelude::Device;

/// Where meta-training gets its tasks. Implement it for your own data pipelines; the meta-learner
/// splits each task into context and targets itself.
///
/// ```
/// use rand::Rng;
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, MetaConfig, MetaLearner, TaskSource};
/// /// Lines through the origin with a random slope.
/// struct Lines;
/// impl<E: Real, D: Device<E>> TaskSource<E, D> for Lines {
///     fn next_task(&mut self, dev: &D, rng: &mut rand::rngs::StdRng) -> Result<Dataset<E, D>> {
///         let a: f64 = rng.gen_range(-1.0..1.0);
///         let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
///         let y: Vec<f64> = x.iter().map(|x| a * x).collect();
///         Dataset::regression(dev, &x, 1, &y, 1)
///     }
/// }
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// assert_eq!(TaskSource::<f64, Cpu>::next_task(&mut Lines, &dev, &mut rng)?.len(), 10);
/// let mut guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let report = MetaLearner::new(MetaConfig { steps: 3, tasks_per_step: 2, samples: 2, progress: false, record_every: 1, ..Default::default() })?.run(&mut guide, &mut Lines)?;
/// assert_eq!(report.history.len(), 3);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait TaskSource<E: Real, D: Device<E>> {
    /// The next task.
    fn next_task(&mut self, dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>>;
}

/// A fixed collection of tasks, visited in a fresh random order every epoch.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{TaskCollection, TaskSource};
/// let dev = Cpu::default();
/// let t = |a: f64| Dataset::<f32, _>::regression(&dev, &[0.0, 1.0], 1, &[a, a], 1).unwrap();
/// let mut tasks = TaskCollection::new(vec![t(1.0), t(2.0)])?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let a = tasks.next_task(&dev, &mut rng)?.y_host()[0];
/// let b = tasks.next_task(&dev, &mut rng)?.y_host()[0];
/// assert_eq!(a + b, 3.0); // one epoch visits each task once
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TaskCollection<E: dfdx::prelude::Dtype, D: dfdx::prelude::Storage<E>> {
    tasks: Vec<Dataset<E, D>>,
    order: Vec<usize>,
    cursor: usize,
}

impl<E: Real, D: Device<E>> TaskCollection<E, D> {
    /// A collection of at least one task.
    pub fn new(tasks: Vec<Dataset<E, D>>) -> Result<Self> {
        if tasks.is_empty() {
            return Err(Error::Empty { what: "task collection".into() });
        }
        Ok(Self { tasks, order: Vec::new(), cursor: 0 })
    }

    /// Draws `n` tasks from a generator into a collection (a fixed meta-dataset, as in the paper).
    pub fn generate(gen: &impl TaskGenerator, n: usize, dev: &D, rng: &mut StdRng) -> Result<Self> {
        let tasks = (0..n).map(|_| gen.dataset(dev, rng)).collect::<Result<Vec<_>>>()?;
        Self::new(tasks)
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the collection is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The tasks.
    pub fn tasks(&self) -> &[Dataset<E, D>] {
        &self.tasks
    }
}

impl<E: Real, D: Device<E>> TaskSource<E, D> for TaskCollection<E, D> {
    fn next_task(&mut self, _dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>> {
        if self.cursor >= self.order.len() {
            self.order = (0..self.tasks.len()).collect();
            self.order.shuffle(rng);
            self.cursor = 0;
        }
        let t = self.tasks[self.order[self.cursor]].clone();
        self.cursor += 1;
        Ok(t)
    }
}

/// A random generator of 1-D regression tasks `(x, y)` on the host.
///
/// ```
/// use rand::Rng;
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Generated, TaskGenerator, TaskSource};
/// /// Five points of a random constant.
/// struct Constants;
/// impl TaskGenerator for Constants {
///     fn generate(&self, rng: &mut rand::rngs::StdRng) -> weightspace::Result<(Vec<f64>, Vec<f64>)> {
///         let c: f64 = rng.gen_range(-1.0..1.0);
///         Ok(((0..5).map(|i| i as f64).collect(), vec![c; 5]))
///     }
/// }
/// let dev = Cpu::default();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let task = Constants.dataset::<f64, Cpu>(&dev, &mut rng)?;
/// assert_eq!(task.len(), 5);
/// let y = task.y_host();
/// assert!(y.iter().all(|v| *v == y[0]));
/// // every generator is a task source
/// assert_eq!(TaskSource::<f64, Cpu>::next_task(&mut Generated(Constants), &dev, &mut rng)?.len(), 5);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait TaskGenerator {
    /// Draws one task's inputs and targets, or an error saying why the generator's settings
    /// cannot produce one.
    fn generate(&self, rng: &mut StdRng) -> Result<(Vec<f64>, Vec<f64>)>;

    /// Draws one task as a dataset on `dev`.
    fn dataset<E: Real, D: Device<E>>(&self, dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>>
    where
        Self: Sized,
    {
        let (x, y) = self.generate(rng)?;
        Dataset::regression(dev, &x, 1, &y, 1)
    }
}

/// Every generator is an endless task source.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Generated, GpTasks, TaskSource};
/// let dev = Cpu::default();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let mut source = Generated(GpTasks { n_range: (5, 6), ..Default::default() });
/// let a: Dataset<f64, Cpu> = source.next_task(&dev, &mut rng)?;
/// let b: Dataset<f64, Cpu> = source.next_task(&dev, &mut rng)?;
/// assert_eq!((a.len(), b.len()), (5, 5));
/// assert_ne!(a.y_host(), b.y_host()); // a fresh task every time
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generated<G>(pub G);

impl<E: Real, D: Device<E>, G: TaskGenerator> TaskSource<E, D> for Generated<G> {
    fn next_task(&mut self, dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>> {
        self.0.dataset(dev, rng)
    }
}

fn inputs(rng: &mut StdRng, n_range: (usize, usize), x_range: (f64, f64)) -> Vec<f64> {
    let n = rng.gen_range(n_range.0..n_range.1);
    (0..n).map(|_| rng.gen_range(x_range.0..x_range.1)).collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

/// Checks the settings every generator shares, named `names = [x_range, n_range, noise]`: a finite,
/// non-empty input range, a non-empty range of points per task (at least one point), and a
/// positive, finite noise sd.
fn check_common(names: [&'static str; 3], x_range: (f64, f64), n_range: (usize, usize), noise: f64) -> Result<()> {
    let (lo, hi) = x_range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::config(names[0], format!("({lo}, {hi})"), "the input range must be finite with lo < hi"));
    }
    if n_range.0 == 0 || n_range.1 <= n_range.0 {
        return Err(Error::config(
            names[1],
            format!("({}, {})", n_range.0, n_range.1),
            "points per task lo..hi (hi exclusive) needs 1 <= lo < hi",
        ));
    }
    check_positive(names[2], noise)
}

/// `value` must be positive and finite.
fn check_positive(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::config(name, value, "must be positive and finite"))
    }
}

/// Sawtooth tasks: `f(x) = m((x + s) mod p − p/2) + a·x/3 + 0.25·b`, `a, b ~ N(0, 1)`, plus
/// Gaussian noise. The shift is `s = 0` (the paper's family: the teeth sit at the same place in
/// every task), or `s ~ U[0, p)` with [`random_shift`](Sawtooth::random_shift).
///
/// A period, noise or input range that is not positive and finite, an empty range of points, or a
/// non-finite slope is an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
///
/// ```
/// use weightspace::bnnp::{Sawtooth, TaskGenerator};
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (x, y) = Sawtooth::default().generate(&mut rng)?;
/// assert!((40..100).contains(&x.len()) && x.len() == y.len());
/// assert!(x.iter().all(|x| (-2.0..2.0).contains(x)));
/// // the paper's family has no shift; the harder one draws it per task
/// assert!(!Sawtooth::default().random_shift);
/// let shifted = Sawtooth { random_shift: true, ..Default::default() };
/// assert!(shifted.draw_parameters(&mut rng).0 > 0.0);
/// assert!(Sawtooth { period: 0.0, ..Default::default() }.generate(&mut rng).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sawtooth {
    /// Input range. Default `[−2, 2]`.
    pub x_range: (f64, f64),
    /// Points per task, `lo..hi` (hi exclusive). Default `40..100`.
    pub n_range: (usize, usize),
    /// Period `p`. Default 0.75.
    pub period: f64,
    /// Slope `m` of each tooth. Default 1.33.
    pub slope: f64,
    /// Observation noise sd. Default 0.05.
    pub noise: f64,
    /// Draw the shift `s ~ U[0, p)` per task; `false` fixes `s = 0`. Default `false`, the paper's
    /// family (the official generator's default).
    pub random_shift: bool,
}

impl Default for Sawtooth {
    fn default() -> Self {
        Self { x_range: (-2.0, 2.0), n_range: (40, 100), period: 0.75, slope: 1.33, noise: 0.05, random_shift: false }
    }
}

impl Sawtooth {
    /// The noiseless function of one task, for shift `s` and coefficients `a`, `b`.
    pub fn function(&self, x: f64, s: f64, a: f64, b: f64) -> f64 {
        let p = self.period;
        self.slope * ((x + s).rem_euclid(p) - p / 2.0) + a * x / 3.0 + 0.25 * b
    }

    /// Draws one task's random function parameters `(s, a, b)` (`s = 0` without
    /// [`random_shift`](Sawtooth::random_shift)).
    pub fn draw_parameters(&self, rng: &mut StdRng) -> (f64, f64, f64) {
        let s = if self.random_shift { rng.gen_range(0.0..self.period) } else { 0.0 };
        (s, normal(rng), normal(rng))
    }

    fn validate(&self) -> Result<()> {
        check_common(["Sawtooth::x_range", "Sawtooth::n_range", "Sawtooth::noise"], self.x_range, self.n_range, self.noise)?;
        check_positive("Sawtooth::period", self.period)?;
        if !self.slope.is_finite() {
            return Err(Error::config("Sawtooth::slope", self.slope, "must be finite"));
        }
        Ok(())
    }
}

impl TaskGenerator for Sawtooth {
    fn generate(&self, rng: &mut StdRng) -> Result<(Vec<f64>, Vec<f64>)> {
        self.validate()?;
        let x = inputs(rng, self.n_range, self.x_range);
        let (s, a, b) = self.draw_parameters(rng);
        let y = x.iter().map(|&x| self.function(x, s, a, b) + self.noise * normal(rng)).collect();
        Ok((x, y))
    }
}

/// Task families whose Bayes-optimal predictor is computable: the generator's own posterior
/// predictive, the ceiling that no meta-learned prior can beat on average over the family's tasks.
///
/// ```
/// use weightspace::bnnp::{OracleLpd, Sawtooth, TaskGenerator};
/// let gen = Sawtooth { n_range: (108, 109), ..Default::default() };
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (x, y) = gen.generate(&mut rng)?;
/// let lpd = |nc: usize| gen.oracle_lpd((&x[..nc], &y[..nc]), (&x[8..], &y[8..]));
/// // more context never hurts the optimal predictor on average, and 8 points get close to knowing f
/// // (1.58 nats per point for noise 0.05)
/// assert!(lpd(8)? > lpd(0)?);
/// assert!(lpd(8)? < 1.7);
/// // mismatched lengths are errors
/// assert!(gen.oracle_lpd((&x[..2], &y[..1]), (&x[8..], &y[8..])).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait OracleLpd {
    /// Mean per-point log predictive density of the targets `(x, y)` given the context `(x, y)`
    /// (which may be empty), each target scored by its marginal posterior predictive under the
    /// generator itself: `(1/N) Σ_n ln p(y_n | x_n, context)`. Unequal lengths, no targets, or a
    /// non-finite value are errors, and so are settings the generator rejects.
    fn oracle_lpd(&self, context: (&[f64], &[f64]), targets: (&[f64], &[f64])) -> Result<f64>;
}

/// Checks the `(x, y)` pairs handed to an [`OracleLpd`].
fn check_points(context: (&[f64], &[f64]), targets: (&[f64], &[f64])) -> Result<()> {
    for (what, (x, y)) in [("oracle_lpd context", context), ("oracle_lpd targets", targets)] {
        if x.len() != y.len() {
            return Err(Error::config(what, format!("{} inputs, {} outputs", x.len(), y.len()), "needs as many inputs as outputs"));
        }
        for (part, v) in [("inputs", x), ("outputs", y)] {
            if let Some(index) = v.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: format!("{what} {part}"), index });
            }
        }
    }
    if targets.0.is_empty() {
        return Err(Error::Empty { what: "oracle_lpd targets".into() });
    }
    Ok(())
}

/// Shifts per period in the quadrature of [`Sawtooth`]'s oracle with a random shift.
const SHIFT_GRID: usize = 600;

/// `ln Σ exp(v)`.
fn logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// The Bayes-optimal predictor of the sawtooth family: given the shift `s` the residual
/// `y − m((x + s) mod p − p/2)` is a Bayesian linear regression on the features `(x/3, 0.25)` with
/// weights `(a, b) ~ N(0, I)` and the known noise, solved in closed form. With
/// [`random_shift`](Sawtooth::random_shift) the shift is integrated out by a midpoint rule on 600
/// points per period, each weighted by its marginal likelihood of the context; without, `s = 0`.
impl OracleLpd for Sawtooth {
    fn oracle_lpd(&self, context: (&[f64], &[f64]), targets: (&[f64], &[f64])) -> Result<f64> {
        self.validate()?;
        check_points(context, targets)?;
        let shifts: Vec<f64> = if self.random_shift {
            (0..SHIFT_GRID).map(|j| (j as f64 + 0.5) * self.period / SHIFT_GRID as f64).collect()
        } else {
            vec![0.0]
        };
        let var = self.noise * self.noise;
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        let (cx, cy) = context;
        let (tx, ty) = targets;
        // per shift: log marginal likelihood of the context, and each target's log predictive density
        let mut log_w = Vec::with_capacity(shifts.len());
        let mut log_p = vec![Vec::with_capacity(shifts.len()); tx.len()];
        for &s in &shifts {
            let teeth = |x: f64| self.function(x, s, 0.0, 0.0);
            // P = I + ΦᵀΦ/σ², h = Φᵀr/σ² with φ = (x/3, 0.25)
            let (mut p00, mut p01, mut p11, mut h0, mut h1, mut rr) = (1.0, 0.0, 1.0, 0.0, 0.0, 0.0);
            for (&x, &y) in cx.iter().zip(cy) {
                let (f0, f1, r) = (x / 3.0, 0.25, y - teeth(x));
                p00 += f0 * f0 / var;
                p01 += f0 * f1 / var;
                p11 += f1 * f1 / var;
                h0 += f0 * r / var;
                h1 += f1 * r / var;
                rr += r * r / var;
            }
            let det = p00 * p11 - p01 * p01;
            // C = P⁻¹, mean = C h
            let (c00, c01, c11) = (p11 / det, -p01 / det, p00 / det);
            let (m0, m1) = (c00 * h0 + c01 * h1, c01 * h0 + c11 * h1);
            let n = cx.len() as f64;
            log_w.push(-0.5 * (n * (ln2pi + var.ln()) + det.ln() + rr - (h0 * m0 + h1 * m1)));
            for (t, (&x, &y)) in tx.iter().zip(ty).enumerate() {
                let (f0, f1) = (x / 3.0, 0.25);
                let mean = teeth(x) + f0 * m0 + f1 * m1;
                let v = var + f0 * f0 * c00 + 2.0 * f0 * f1 * c01 + f1 * f1 * c11;
                log_p[t].push(-0.5 * (ln2pi + v.ln() + (y - mean) * (y - mean) / v));
            }
        }
        let z = logsumexp(&log_w);
        let total: f64 = log_p.iter().map(|lp| logsumexp(&lp.iter().zip(&log_w).map(|(a, b)| a + b).collect::<Vec<_>>()) - z).sum();
        let lpd = total / tx.len() as f64;
        if !lpd.is_finite() {
            return Err(Error::NonFinite { what: "Sawtooth::oracle_lpd".into(), index: 0 });
        }
        Ok(lpd)
    }
}

/// A zero-mean Gaussian-process sample with a squared-exponential kernel at `x`, drawn through a
/// Cholesky factor (with a small jitter). Non-finite inputs, or a lengthscale or variance that is
/// not positive and finite, are an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
///
/// ```
/// use weightspace::bnnp::gp_sample;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let x = [0.0, 0.01, 3.0];
/// let draws: Vec<Vec<f64>> = (0..2000).map(|_| gp_sample(&x, 0.5, 2.0, &mut rng)).collect::<Result<_, _>>()?;
/// // the marginal variance is the kernel variance ...
/// let var = draws.iter().map(|f| f[0] * f[0]).sum::<f64>() / 2000.0;
/// assert!((var - 2.0).abs() < 0.25);
/// // ... nearby inputs move together
/// assert!(draws.iter().all(|f| (f[0] - f[1]).abs() < 0.2));
/// // settings no kernel has are errors
/// assert!(gp_sample(&x, f64::NAN, 1.0, &mut rng).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn gp_sample(x: &[f64], lengthscale: f64, variance: f64, rng: &mut StdRng) -> Result<Vec<f64>> {
    for (name, v) in [("gp_sample lengthscale", lengthscale), ("gp_sample variance", variance)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(crate::Error::config(name, v, "must be positive and finite"));
        }
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(crate::Error::NonFinite { what: "gp_sample inputs".into(), index });
    }
    let n = x.len();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let d = (x[i] - x[j]) / lengthscale;
            k[i * n + j] = variance * (-0.5 * d * d).exp() + if i == j { 1e-6 * variance } else { 0.0 };
        }
    }
    // the jitter keeps the kernel matrix positive definite for any finite inputs: at the last try
    // it is 10⁶ times the variance, which dominates every entry
    let mut jitter = 1e-6 * variance;
    let mut tries = 0;
    let pd = |pivot| crate::Error::NotPositiveDefinite { what: "gp_sample kernel matrix".into(), index: 0, pivot };
    while let Err(pivot) = crate::num::dense::cholesky(&mut k.clone(), n) {
        tries += 1;
        if tries > 12 {
            return Err(pd(pivot));
        }
        jitter *= 10.0;
        for i in 0..n {
            k[i * n + i] += jitter;
        }
    }
    crate::num::dense::cholesky(&mut k, n).map_err(pd)?;
    let z: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
    Ok((0..n).map(|i| (0..=i).map(|p| k[i * n + p] * z[p]).sum()).collect())
}

/// Gaussian-process tasks: a squared-exponential GP sample plus noise. A lengthscale, variance,
/// noise or input range that is not positive and finite, or an empty range of points, is an
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
///
/// ```
/// use weightspace::bnnp::{GpTasks, TaskGenerator};
/// let gen = GpTasks::default();
/// assert_eq!((gen.lengthscale, gen.variance, gen.noise), (0.5, 1.0, 0.05));
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (x, y) = gen.generate(&mut rng)?;
/// assert!((40..100).contains(&x.len()) && x.len() == y.len());
/// assert!(x.iter().all(|x| (-2.0..2.0).contains(x)));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpTasks {
    /// Input range. Default `[−2, 2]`.
    pub x_range: (f64, f64),
    /// Points per task. Default `40..100`.
    pub n_range: (usize, usize),
    /// Kernel lengthscale. Default 0.5.
    pub lengthscale: f64,
    /// Kernel variance. Default 1.
    pub variance: f64,
    /// Observation noise sd. Default 0.05.
    pub noise: f64,
}

impl Default for GpTasks {
    fn default() -> Self {
        Self { x_range: (-2.0, 2.0), n_range: (40, 100), lengthscale: 0.5, variance: 1.0, noise: 0.05 }
    }
}

impl TaskGenerator for GpTasks {
    fn generate(&self, rng: &mut StdRng) -> Result<(Vec<f64>, Vec<f64>)> {
        check_common(["GpTasks::x_range", "GpTasks::n_range", "GpTasks::noise"], self.x_range, self.n_range, self.noise)?;
        check_positive("GpTasks::lengthscale", self.lengthscale)?;
        check_positive("GpTasks::variance", self.variance)?;
        let x = inputs(rng, self.n_range, self.x_range);
        let f = gp_sample(&x, self.lengthscale, self.variance, rng)?;
        let y = f.iter().map(|f| f + self.noise * normal(rng)).collect();
        Ok((x, y))
    }
}

/// Heaviside tasks: the sign of a zero-mean SE-GP sample (centred on its sample mean), plus noise.
/// A lengthscale, noise or input range that is not positive and finite, or an empty range of
/// points, is an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
///
/// ```
/// use weightspace::bnnp::{Heaviside, TaskGenerator};
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (x, y) = Heaviside::default().generate(&mut rng)?;
/// assert!(x.iter().all(|x| (-5.0..5.0).contains(x)));
/// // steps of height ±1 with noise sd 0.01
/// assert!(y.iter().all(|y| (y.abs() - 1.0).abs() < 0.1));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heaviside {
    /// Input range. Default `[−5, 5]`.
    pub x_range: (f64, f64),
    /// Points per task. Default `40..100`.
    pub n_range: (usize, usize),
    /// Lengthscale of the underlying GP. Default 1.
    pub lengthscale: f64,
    /// Observation noise sd. Default 0.01.
    pub noise: f64,
}

impl Default for Heaviside {
    fn default() -> Self {
        Self { x_range: (-5.0, 5.0), n_range: (40, 100), lengthscale: 1.0, noise: 0.01 }
    }
}

impl TaskGenerator for Heaviside {
    fn generate(&self, rng: &mut StdRng) -> Result<(Vec<f64>, Vec<f64>)> {
        check_common(["Heaviside::x_range", "Heaviside::n_range", "Heaviside::noise"], self.x_range, self.n_range, self.noise)?;
        check_positive("Heaviside::lengthscale", self.lengthscale)?;
        let x = inputs(rng, self.n_range, self.x_range);
        let f = gp_sample(&x, self.lengthscale, 1.0, rng)?;
        let mean = f.iter().sum::<f64>() / f.len() as f64;
        let y = f.iter().map(|f| if f - mean > 0.0 { 1.0 } else { -1.0 } + self.noise * normal(rng)).collect();
        Ok((x, y))
    }
}

/// Tasks drawn from a BNN prior: a fresh 1-D network per task with weights `N(0, 1/(fan_in + 1))`
/// (biases included), plus noise. A zero width, a noise or input range that is not positive and
/// finite, or an empty range of points, is an [`Error::InvalidConfig`](crate::Error::InvalidConfig).
///
/// ```
/// use weightspace::bnnp::{BnnPriorTasks, TaskGenerator};
/// let gen = BnnPriorTasks { widths: vec![8], ..Default::default() };
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let net = gen.draw_network(&mut rng);
/// assert_eq!(net.iter().map(|(i, o, w)| (*i, *o, w.len())).collect::<Vec<_>>(), vec![(1, 8, 16), (8, 1, 9)]);
/// assert!(gen.evaluate(&net, 0.3).is_finite());
/// let (x, y) = gen.generate(&mut rng)?;
/// assert!((40..100).contains(&x.len()) && x.len() == y.len());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BnnPriorTasks {
    /// Input range. Default `[−5, 5]`.
    pub x_range: (f64, f64),
    /// Points per task. Default `40..100`.
    pub n_range: (usize, usize),
    /// Hidden widths. Default `[64, 64]`.
    pub widths: Vec<usize>,
    /// Hidden activation. Default ReLU.
    pub activation: Activation,
    /// Observation noise sd. Default 0.05.
    pub noise: f64,
}

impl Default for BnnPriorTasks {
    fn default() -> Self {
        Self { x_range: (-5.0, 5.0), n_range: (40, 100), widths: vec![64, 64], activation: Activation::Relu, noise: 0.05 }
    }
}

impl BnnPriorTasks {
    /// Draws a network: per layer, `(d_in, d_out, [W | b] rows)`.
    pub fn draw_network(&self, rng: &mut StdRng) -> Vec<(usize, usize, Vec<f64>)> {
        let mut dims = vec![1];
        dims.extend_from_slice(&self.widths);
        dims.push(1);
        dims.windows(2)
            .map(|w| {
                let sd = 1.0 / ((w[0] + 1) as f64).sqrt();
                (w[0], w[1], (0..w[1] * (w[0] + 1)).map(|_| sd * normal(rng)).collect())
            })
            .collect()
    }

    /// Evaluates a drawn network at `x`.
    pub fn evaluate(&self, net: &[(usize, usize, Vec<f64>)], x: f64) -> f64 {
        let mut h = vec![x];
        let last = net.len() - 1;
        for (l, (di, dout, w)) in net.iter().enumerate() {
            h = (0..*dout)
                .map(|u| {
                    let row = &w[u * (di + 1)..(u + 1) * (di + 1)];
                    let z = row[..*di].iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() + row[*di];
                    if l == last {
                        z
                    } else {
                        self.activation.eval(z)
                    }
                })
                .collect();
        }
        h[0]
    }
}

impl TaskGenerator for BnnPriorTasks {
    fn generate(&self, rng: &mut StdRng) -> Result<(Vec<f64>, Vec<f64>)> {
        check_common(["BnnPriorTasks::x_range", "BnnPriorTasks::n_range", "BnnPriorTasks::noise"], self.x_range, self.n_range, self.noise)?;
        if self.widths.contains(&0) {
            return Err(Error::config("BnnPriorTasks::widths", format!("{:?}", self.widths), "every hidden layer needs at least one unit"));
        }
        let x = inputs(rng, self.n_range, self.x_range);
        let net = self.draw_network(rng);
        let y = x.iter().map(|&x| self.evaluate(&net, x) + self.noise * normal(rng)).collect();
        Ok((x, y))
    }
}
