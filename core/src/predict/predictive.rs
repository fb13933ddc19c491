//! Prior and posterior predictive sampling, streamed in chunks of weight samples so that memory
//! stays bounded whatever the number of samples.
//!
//! Per input point, [`PredictiveSummary`] holds the exact predictive mean and standard deviation
//! (running moments over all samples), quantiles from a uniform reservoir of at most
//! [`Predictive::keep`] samples (exact when `samples ≤ keep`), and for classifiers the mean
//! class probabilities. [`Predictive::evaluate`] adds test metrics computed in the same stream: the
//! mean log predictive density (a streamed logsumexp over samples; no point is ever dropped), RMSE,
//! accuracy and ECE.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use crate::model::arch::{Architecture, LikelihoodSpec};
use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::data::{Dataset, Targets};
use crate::{Error, Real, Result};

/// A source of weight samples for [`Predictive::run`] and [`Predictive::evaluate`]: a mean-field
/// guide (`&guide`), a BALI posterior, a learned prior, a symmetrised guide, or anything else that
/// can draw weights of an architecture. A `&mut` to a source is a source too.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::WeightSource;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// /// Always the same weights `w = 2, b = 0`.
/// struct Fixed2;
/// impl WeightSource<f64, Cpu> for Fixed2 {
///     fn draw(&mut self, _arch: &Architecture, s: usize, _rng: &mut rand::rngs::StdRng) -> weightspace::Result<Weights<f64, Cpu>> {
///         let dev = Cpu::default();
///         Ok(Weights { layers: vec![dev.tensor_from_vec([2.0, 0.0].repeat(s), (s, 1usize, 2usize))] })
///     }
/// }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let x = dev.tensor_from_vec(vec![1.0, 3.0], (2usize, 1usize));
/// let pred = Predictive::new(10).run(&model, Fixed2, &x)?;
/// assert_eq!(pred.mean, vec![2.0, 6.0]);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait WeightSource<E: Real, D: Device<E>> {
    /// Draws `s` weight samples of the architecture `arch`.
    fn draw(&mut self, arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>>;

    /// The network outputs `(S, N, d_out)` at inputs `x` for `s` fresh draws: the network at the
    /// drawn weights. [`Linearised`] overrides it with the network linearised around a mean, at
    /// the weights `draw` returns. `x` has been validated.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::WeightSource;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let guide = Lin::<f64, Cpu>::new(&dev).mean_field();
    /// let x = dev.tensor_from_vec(vec![1.0, 2.0], (2usize, 1usize));
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let f = (&guide).outputs(Lin::<f64, Cpu>::ARCH, 5, &x, &mut rng)?;
    /// assert_eq!(*f.shape(), (5, 2, 1));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn outputs(
        &mut self,
        arch: &Architecture,
        s: usize,
        x: &Tensor<(usize, usize), E, D>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<crate::model::bnn::Tensor3<E, D>> {
        let w = self.draw(arch, s, rng)?;
        crate::vi::network::forward(arch, w, x)
    }
}

impl<E: Real, D: Device<E>, T: WeightSource<E, D> + ?Sized> WeightSource<E, D> for &mut T {
    fn draw(&mut self, arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        (**self).draw(arch, s, rng)
    }
    fn outputs(
        &mut self,
        arch: &Architecture,
        s: usize,
        x: &Tensor<(usize, usize), E, D>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<crate::model::bnn::Tensor3<E, D>> {
        (**self).outputs(arch, s, x, rng)
    }
}

/// The **linearised predictive** of a weight source: the network linearised in its weights around
/// `mean`, `f_lin(x; W) = f(x; M) + J(x; M) (W − M)`, evaluated at the source's draws `W` (the
/// "GLM predictive" of Laplace approximations; Immer, Korzepa & Bauer 2021). Draws stay the
/// source's; only the outputs change. A Gaussian or Kronecker-factored posterior fitted to the
/// local curvature (a Laplace approximation, BALI) describes the linearised network better than
/// the network itself: sampling the full network with such a covariance leaves the region where the
/// curvature was measured and widens the predictive. Exact (equal to the plain predictive) for a
/// network without hidden layers and an identity output.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::Linearised;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 8, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<8, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let x = dev.tensor_from_vec(vec![-1.0, 0.0, 1.0], (3usize, 1usize));
/// // a linear model is its own linearisation: the same predictive from the same draws
/// let lin = Lin::<f64, Cpu>::new(&dev);
/// let guide = lin.mean_field();
/// let around = Weights { layers: vec![dev.tensor_from_vec(vec![0.3, -0.2], (1usize, 1usize, 2usize))] };
/// let plain = Predictive::new(100).run(&lin, &guide, &x)?;
/// let linearised = Predictive::new(100).run(&lin, Linearised::new(around, &guide), &x)?;
/// for (a, b) in plain.mean.iter().zip(&linearised.mean) { assert!((a - b).abs() < 1e-12); }
/// // a tanh network linearised around all-zero weights: every hidden unit is 0 there and the
/// // output weights are 0, so the tangent is the output bias alone, the same at every x
/// let net = Net::<f64, Cpu>::new(&dev);
/// let zero = Weights { layers: vec![dev.zeros_like(&(1usize, 8usize, 2usize)), dev.zeros_like(&(1usize, 1usize, 9usize))] };
/// let d = Predictive::new(4).draws(&net, Linearised::new(zero, &net.mean_field()), &x)?;
/// for draw in d.f.chunks(3) { assert!(draw.iter().all(|v| (v - draw[0]).abs() < 1e-12) && draw[0] != 0.0); }
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linearised<E: Dtype, D: Storage<E>, S> {
    mean: Weights<E, D>,
    source: S,
}

impl<E: Real, D: Device<E>, S: WeightSource<E, D>> Linearised<E, D, S> {
    /// The predictive of `source` linearised around `mean` (one weight sample per layer,
    /// `(1, d_out, d_in + 1)`; checked against the architecture when outputs are asked for).
    pub fn new(mean: Weights<E, D>, source: S) -> Self {
        Self { mean, source }
    }

    /// The linearisation point.
    pub fn mean(&self) -> &Weights<E, D> {
        &self.mean
    }
}

impl<E: Real, D: Device<E>, S: WeightSource<E, D>> WeightSource<E, D> for Linearised<E, D, S> {
    fn draw(&mut self, arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        self.source.draw(arch, s, rng)
    }
    fn outputs(
        &mut self,
        arch: &Architecture,
        s: usize,
        x: &Tensor<(usize, usize), E, D>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<crate::model::bnn::Tensor3<E, D>> {
        let w = self.source.draw(arch, s, rng)?;
        crate::vi::network::forward_linearised(arch, &self.mean, w, x)
    }
}

/// A mean-field guide draws from itself.
impl<E: Real, D: Device<E>, G: MeanFieldGuide<E, D>> WeightSource<E, D> for &G {
    fn draw(&mut self, arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        crate::vi::guide::sample_guide(arch, *self, s, rng)
    }
}

/// Draws from a model's prior (what [`Predictive::run_prior`] streams).
struct PriorSource<'a, M>(&'a M);

impl<E: Real, D: Device<E>, M: Bnn<E, D>> WeightSource<E, D> for PriorSource<'_, M> {
    fn draw(&mut self, _arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        crate::vi::prior::sample_prior(self.0, s, rng)
    }
}

/// A predictive run: its settings (plain data, `..Default::default()` or [`Predictive::new`]) and
/// the three ways to run it: [`run`](Predictive::run) (the predictive of a weight source at given
/// inputs), [`run_prior`](Predictive::run_prior) (the prior predictive) and
/// [`evaluate`](Predictive::evaluate) (test metrics of a weight source).
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Lin::<f32, Cpu>::new(&dev);
/// let x = dev.tensor_from_vec(vec![0.0f32, 1.0, 2.0], (3usize, 1usize));
/// let prior = Predictive { chunk: 100, ..Predictive::new(2000) }.run_prior(&model, &x)?;
/// // prior predictive sd of y at x=2: sqrt(2² + 1 + 0.1²) ≈ 2.24
/// assert!((prior.std[2] - 5.01f64.sqrt()).abs() < 0.15);
/// let guide = model.mean_field();
/// let post = Predictive::new(100).run(&model, &guide, &x)?;
/// assert_eq!(post.mean.len(), 3);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Predictive {
    /// Total weight samples. Default 1000.
    pub samples: usize,
    /// Weight samples per chunk; memory is `O(chunk · N · d_out)`. Default 128.
    pub chunk: usize,
    /// Quantile levels reported per point. Default 2.5 %, 50 %, 97.5 %.
    pub quantiles: Vec<f64>,
    /// Samples kept (uniform reservoir) for the quantiles. Default 1000.
    pub keep: usize,
    /// Include observation noise in the std and quantiles of a Gaussian predictive (`y`, not `f`).
    /// Default true.
    pub include_noise: bool,
    /// Seed.
    pub seed: u64,
    /// Show a progress bar ([`Progress`](crate::Progress): on stderr, drawn only when it is a terminal).
    pub progress: bool,
}

impl Default for Predictive {
    fn default() -> Self {
        Self { samples: 1000, chunk: 128, quantiles: vec![0.025, 0.5, 0.975], keep: 1000, include_noise: true, seed: 0, progress: false }
    }
}

/// Per-point predictive summaries (row-major `(N, d_out)` buffers; for classifiers `(N, classes)`).
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let x = dev.tensor_from_vec(vec![-1.0, 0.0, 1.0], (3usize, 1usize));
/// let s: PredictiveSummary = Predictive::new(2000).run_prior(&model, &x)?;
/// assert_eq!((s.n, s.cols, s.samples), (3, 1, 2000));
/// // prior: f = w·x + b with w, b ~ N(0, 1), so Var f(x) = x² + 1; y adds the noise 0.5²
/// assert!((s.f_std[0] - 2f64.sqrt()).abs() < 0.1 && (s.f_std[1] - 1.0).abs() < 0.1);
/// assert!((s.std[1] - 1.25f64.sqrt()).abs() < 0.1);
/// let (lo, hi) = (s.quantile(0.025).unwrap(), s.quantile(0.975).unwrap());
/// assert!(lo[1] < s.mean[1] && s.mean[1] < hi[1]);
/// assert!(s.quantile(0.1).is_none());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PredictiveSummary {
    /// Points.
    pub n: usize,
    /// Columns: outputs, or classes for a classifier.
    pub cols: usize,
    /// Predictive mean of `y` (regression), or mean class probabilities (classification).
    pub mean: Vec<f64>,
    /// Predictive standard deviation of `y` (with noise when `include_noise`), or of the class
    /// probabilities.
    pub std: Vec<f64>,
    /// Standard deviation of the network output `f` alone (epistemic part).
    pub f_std: Vec<f64>,
    /// `(level, values)` per requested quantile.
    pub quantiles: Vec<(f64, Vec<f64>)>,
    /// Weight samples used.
    pub samples: usize,
}

impl PredictiveSummary {
    /// Values of quantile `level`, if it was requested.
    pub fn quantile(&self, level: f64) -> Option<&[f64]> {
        self.quantiles.iter().find(|(l, _)| (l - level).abs() < 1e-12).map(|(_, v)| v.as_slice())
    }

    /// A short human-readable table of the first rows.
    pub fn summary(&self) -> String {
        let mut s = format!("predictive over {} samples, {} points\n  row  mean      std", self.samples, self.n);
        for (l, _) in &self.quantiles {
            s.push_str(&format!("       q{:.3}", l));
        }
        for r in 0..self.n.min(5) {
            for c in 0..self.cols {
                let k = r * self.cols + c;
                s.push_str(&format!("\n  {r:<4} {:<9.4} {:<9.4}", self.mean[k], self.std[k]));
                for (_, q) in &self.quantiles {
                    s.push_str(&format!(" {:<11.4}", q[k]));
                }
            }
        }
        if self.n > 5 {
            s.push_str(&format!("\n  ... {} more rows", self.n - 5));
        }
        s
    }
}

impl std::fmt::Display for PredictiveSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Test metrics from a predictive run.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::PredictiveMetrics;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// let mut guide = model.mean_field();
/// fit(&mut model, &mut guide, &data, &FitConfig { steps: 300, progress: false, ..Default::default() })?;
/// let m: PredictiveMetrics = Predictive::new(200).evaluate(&model, &guide, &data)?;
/// assert_eq!(m.pointwise_lpd.len(), 20);
/// assert!(m.rmse.unwrap() < 0.5 && m.mean_lpd.is_finite() && m.mean_lpd_se >= 0.0);
/// assert!(m.coverage_95.is_some() && m.accuracy.is_none() && m.ece.is_none()); // regression
/// assert_eq!(m.summary.n, 20);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PredictiveMetrics {
    /// Mean over points of `ln (1/S) Σ_s p(y_n | x_n, w_s)` (the LPPD per point).
    pub mean_lpd: f64,
    /// Standard error of `mean_lpd` over points.
    pub mean_lpd_se: f64,
    /// Per-point log predictive densities.
    pub pointwise_lpd: Vec<f64>,
    /// RMSE of the predictive mean (regression).
    pub rmse: Option<f64>,
    /// Accuracy of the most probable class (classification).
    pub accuracy: Option<f64>,
    /// Expected calibration error with 10 equal-width bins (classification).
    pub ece: Option<f64>,
    /// Empirical coverage of the central 95 % interval `mean ± 1.96 std` (regression).
    pub coverage_95: Option<f64>,
    /// The predictive summaries.
    pub summary: PredictiveSummary,
}

/// Streamed `ln mean_s exp(l_s)` per point.
struct LogMeanExp {
    max: Vec<f64>,
    sum: Vec<f64>,
    count: usize,
}

impl LogMeanExp {
    fn new(n: usize) -> Self {
        Self { max: vec![f64::NEG_INFINITY; n], sum: vec![0.0; n], count: 0 }
    }
    /// `ll` is `(c, n)` row-major.
    fn push(&mut self, ll: &[f64], c: usize) {
        let n = self.max.len();
        for j in 0..n {
            let mut m = self.max[j];
            for s in 0..c {
                m = m.max(ll[s * n + j]);
            }
            if m == f64::NEG_INFINITY {
                continue;
            }
            let mut acc = if self.max[j] == f64::NEG_INFINITY { 0.0 } else { self.sum[j] * (self.max[j] - m).exp() };
            for s in 0..c {
                acc += (ll[s * n + j] - m).exp();
            }
            self.max[j] = m;
            self.sum[j] = acc;
        }
        self.count += c;
    }
    fn finish(&self) -> Vec<f64> {
        self.max.iter().zip(&self.sum).map(|(m, s)| m + s.ln() - (self.count as f64).ln()).collect()
    }
}

impl Predictive {
    /// `samples` weight samples, other settings default.
    pub fn new(samples: usize) -> Self {
        Self { samples, ..Default::default() }
    }

    /// The predictive at inputs `x` `(N, d_in)` of the weights that `source` draws: a mean-field
    /// guide (`&guide`), a BALI posterior, MCMC draws, ...
    pub fn run<E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &M,
        mut source: impl WeightSource<E, D>,
        x: &Tensor<(usize, usize), E, D>,
    ) -> Result<PredictiveSummary> {
        Ok(self.stream(model, &mut source, x, None)?.0)
    }

    /// The prior predictive at inputs `x`.
    pub fn run_prior<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, model: &M, x: &Tensor<(usize, usize), E, D>) -> Result<PredictiveSummary> {
        Ok(self.stream(model, &mut PriorSource(model), x, None)?.0)
    }

    /// Predictive metrics on test data of the weights that `source` draws (see [`run`](Self::run)).
    pub fn evaluate<E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &M,
        mut source: impl WeightSource<E, D>,
        test: &Dataset<E, D>,
    ) -> Result<PredictiveMetrics> {
        test.check_for(M::ARCH)?;
        let (summary, lpd) = self.stream(model, &mut source, &test.x, Some(test))?;
        let Some(pointwise_lpd) = lpd else { unreachable!("stream computes the LPD when given test data") };
        let (mean_lpd, mean_lpd_se) = crate::predict::metrics::mean_and_se(&pointwise_lpd)?;
        let (mut rmse, mut accuracy, mut ece, mut coverage_95) = (None, None, None, None);
        match &test.targets {
            Targets::Real { .. } => {
                let y = test.y_host();
                rmse = Some(crate::predict::metrics::rmse(&summary.mean, &y)?);
                coverage_95 = Some(crate::predict::metrics::gaussian_interval_coverage(&summary.mean, &summary.std, &y, 0.95)?);
            }
            Targets::Labels { classes, labels } => {
                accuracy = Some(crate::predict::metrics::accuracy(&summary.mean, *classes, labels)?);
                ece = Some(crate::predict::metrics::expected_calibration_error(&summary.mean, *classes, labels, 10)?);
            }
        }
        Ok(PredictiveMetrics { mean_lpd, mean_lpd_se, pointwise_lpd, rmse, accuracy, ece, coverage_95, summary })
    }

    fn stream<E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &M,
        source: &mut impl WeightSource<E, D>,
        x: &Tensor<(usize, usize), E, D>,
        test: Option<&Dataset<E, D>>,
    ) -> Result<(PredictiveSummary, Option<Vec<f64>>)> {
        let cfg = self;
        let arch = M::ARCH;
        crate::vi::network::check_input(arch, x)?;
        if cfg.samples == 0 {
            return Err(Error::config("Predictive::samples", 0, "at least one weight sample is needed"));
        }
        if cfg.chunk == 0 {
            return Err(Error::config("Predictive::chunk", 0, "must be >= 1"));
        }
        if let Some(&q) = cfg.quantiles.iter().find(|q| !(**q > 0.0 && **q < 1.0)) {
            return Err(Error::config("Predictive::quantiles", q, "levels must lie strictly between 0 and 1"));
        }
        let n = x.shape().0;
        let k = arch.d_out();
        let classify = arch.likelihood.is_classification();
        let cols = match arch.likelihood {
            LikelihoodSpec::Bernoulli => 2,
            _ => k,
        };
        let width = n * cols;
        let sigma = crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params());
        let noise_var = if cfg.include_noise { sigma.map_or(0.0, |s| s * s) } else { 0.0 };
        let keep = cfg.keep.max(1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let (mut mean, mut m2) = (vec![0.0; width], vec![0.0; width]);
        let mut reservoir: Vec<Vec<f64>> = Vec::new();
        let mut lme = test.map(|_| LogMeanExp::new(n));
        let bar = crate::progress::Progress::new(cfg.samples, cfg.progress, "predict");
        let mut seen = 0usize;
        while seen < cfg.samples {
            let c = cfg.chunk.min(cfg.samples - seen);
            let f = source.outputs(arch, c, x, &mut rng)?;
            if let (Some(acc), Some(data)) = (lme.as_mut(), test) {
                let ll = crate::vi::likelihood::log_lik(&arch.likelihood, model.likelihood_params(), false, f.retaped(), data)?;
                let ll: Vec<f64> = ll.split_tape().0.as_vec().iter().map(|v| v.cast_to_f64()).collect();
                acc.push(&ll, c);
            }
            let out = match arch.likelihood {
                LikelihoodSpec::Categorical => f.softmax::<Axis<2>>(),
                LikelihoodSpec::Bernoulli => {
                    let p1 = f.sigmoid();
                    let p0 = p1.clone().negate() + E::one();
                    (p0, p1).concat_along(Axis::<2>)
                }
                LikelihoodSpec::Gaussian { .. } => f,
            };
            let v: Vec<f64> = out.as_vec().iter().map(|v| v.cast_to_f64()).collect();
            for s in 0..c {
                let row = &v[s * width..(s + 1) * width];
                let t = (seen + s + 1) as f64;
                for j in 0..width {
                    let d = row[j] - mean[j];
                    mean[j] += d / t;
                    m2[j] += d * (row[j] - mean[j]);
                }
                let idx = seen + s;
                if idx < keep {
                    reservoir.push(row.to_vec());
                } else {
                    let r = rng.gen_range(0..=idx);
                    if r < keep {
                        reservoir[r] = row.to_vec();
                    }
                }
            }
            seen += c;
            bar.inc_by(c);
        }
        bar.finish();
        let denom = (seen as f64 - 1.0).max(1.0);
        let f_std: Vec<f64> = m2.iter().map(|v| (v / denom).sqrt()).collect();
        let std: Vec<f64> = if classify { f_std.clone() } else { m2.iter().map(|v| (v / denom + noise_var).sqrt()).collect() };
        let noise_sd = noise_var.sqrt();
        let mut cols_buf = vec![0.0; reservoir.len()];
        let mut quantiles: Vec<(f64, Vec<f64>)> = cfg.quantiles.iter().map(|&l| (l, vec![0.0; width])).collect();
        let normal = rand_distr::StandardNormal;
        let noisy: Vec<Vec<f64>> = if !classify && noise_sd > 0.0 {
            reservoir.iter().map(|r| r.iter().map(|v| v + noise_sd * rng.sample::<f64, _>(normal)).collect()).collect()
        } else {
            reservoir
        };
        for j in 0..width {
            for (b, r) in cols_buf.iter_mut().zip(&noisy) {
                *b = r[j];
            }
            cols_buf.sort_by(|a, b| a.total_cmp(b));
            for (l, q) in quantiles.iter_mut() {
                q[j] = quantile_sorted(&cols_buf, *l);
            }
        }
        let lpd = lme.map(|a| a.finish());
        Ok((PredictiveSummary { n, cols, mean, std, f_std, quantiles, samples: seen }, lpd))
    }
}

/// Linear-interpolation quantile (type 7) of sorted values.
fn quantile_sorted(v: &[f64], level: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let h = (v.len() - 1) as f64 * level;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}
