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
pub trait TaskGenerator {
    /// Draws one task's inputs and targets.
    fn generate(&self, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>);

    /// Draws one task as a dataset on `dev`.
    fn dataset<E: Real, D: Device<E>>(&self, dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>>
    where
        Self: Sized,
    {
        let (x, y) = self.generate(rng);
        Dataset::regression(dev, &x, 1, &y, 1)
    }
}

/// Every generator is an endless task source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generated<G>(pub G);

impl<E: Real, D: Device<E>, G: TaskGenerator> TaskSource<E, D> for Generated<G> {
    fn next_task(&mut self, dev: &D, rng: &mut StdRng) -> Result<Dataset<E, D>> {
        self.0.dataset(dev, rng)
    }
}

fn inputs(rng: &mut StdRng, n_range: (usize, usize), x_range: (f64, f64)) -> Vec<f64> {
    let n = if n_range.1 > n_range.0 + 1 { rng.gen_range(n_range.0..n_range.1) } else { n_range.0.max(1) };
    (0..n.max(1)).map(|_| rng.gen_range(x_range.0..x_range.1)).collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

/// Sawtooth tasks: `f(x) = m((x + s) mod p − p/2) + a·x/3 + 0.25·b`, `s ~ U[0, p)`,
/// `a, b ~ N(0, 1)`, plus Gaussian noise.
///
/// ```
/// use weightspace::bnnp::{Sawtooth, TaskGenerator};
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (x, y) = Sawtooth::default().generate(&mut rng);
/// assert!((40..100).contains(&x.len()) && x.len() == y.len());
/// assert!(x.iter().all(|x| (-2.0..2.0).contains(x)));
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
}

impl Default for Sawtooth {
    fn default() -> Self {
        Self { x_range: (-2.0, 2.0), n_range: (40, 100), period: 0.75, slope: 1.33, noise: 0.05 }
    }
}

impl Sawtooth {
    /// The noiseless function of one task, for shift `s` and coefficients `a`, `b`.
    pub fn function(&self, x: f64, s: f64, a: f64, b: f64) -> f64 {
        let p = self.period;
        self.slope * ((x + s).rem_euclid(p) - p / 2.0) + a * x / 3.0 + 0.25 * b
    }

    /// Draws one task's random function parameters `(s, a, b)`.
    pub fn draw_parameters(&self, rng: &mut StdRng) -> (f64, f64, f64) {
        (rng.gen_range(0.0..self.period), normal(rng), normal(rng))
    }
}

impl TaskGenerator for Sawtooth {
    fn generate(&self, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
        let x = inputs(rng, self.n_range, self.x_range);
        let (s, a, b) = self.draw_parameters(rng);
        let y = x.iter().map(|&x| self.function(x, s, a, b) + self.noise * normal(rng)).collect();
        (x, y)
    }
}

/// A zero-mean Gaussian-process sample with a squared-exponential kernel at `x`, drawn through a
/// Cholesky factor (with a small jitter).
pub fn gp_sample(x: &[f64], lengthscale: f64, variance: f64, rng: &mut StdRng) -> Vec<f64> {
    let n = x.len();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let d = (x[i] - x[j]) / lengthscale;
            k[i * n + j] = variance * (-0.5 * d * d).exp() + if i == j { 1e-6 * variance.max(1e-12) } else { 0.0 };
        }
    }
    // the jitter keeps the kernel matrix positive definite for any inputs
    let mut jitter = 1e-6 * variance.max(1e-12);
    while crate::num::dense::cholesky(&mut k.clone(), n).is_err() {
        jitter *= 10.0;
        for i in 0..n {
            k[i * n + i] += jitter;
        }
    }
    crate::num::dense::cholesky(&mut k, n).expect("positive definite after jitter");
    let z: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
    (0..n).map(|i| (0..=i).map(|p| k[i * n + p] * z[p]).sum()).collect()
}

/// Gaussian-process tasks: a squared-exponential GP sample plus noise.
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
    fn generate(&self, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
        let x = inputs(rng, self.n_range, self.x_range);
        let f = gp_sample(&x, self.lengthscale, self.variance, rng);
        let y = f.iter().map(|f| f + self.noise * normal(rng)).collect();
        (x, y)
    }
}

/// Heaviside tasks: the sign of a zero-mean SE-GP sample (centred on its sample mean), plus noise.
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
    fn generate(&self, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
        let x = inputs(rng, self.n_range, self.x_range);
        let f = gp_sample(&x, self.lengthscale, 1.0, rng);
        let mean = f.iter().sum::<f64>() / f.len() as f64;
        let y = f.iter().map(|f| if f - mean > 0.0 { 1.0 } else { -1.0 } + self.noise * normal(rng)).collect();
        (x, y)
    }
}

/// Tasks drawn from a BNN prior: a fresh 1-D network per task with weights `N(0, 1/(fan_in + 1))`
/// (biases included), plus noise.
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
    fn generate(&self, rng: &mut StdRng) -> (Vec<f64>, Vec<f64>) {
        let x = inputs(rng, self.n_range, self.x_range);
        let net = self.draw_network(rng);
        let y = x.iter().map(|&x| self.evaluate(&net, x) + self.noise * normal(rng)).collect();
        (x, y)
    }
}
