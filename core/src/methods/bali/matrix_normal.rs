//! Matrix-normal distributions: the host-side `f64` description of one layer's posterior, its
//! device-side sampler, and the whole-network posterior that BALI returns.

use dfdx::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::model::arch::Architecture;
use crate::model::bnn::Weights;
use crate::num::dense::{Cholesky, Matrix};
use crate::predict::predictive::{Linearised, WeightSource};
use crate::{Error, Real, Result};

/// `MN(M, Σ, Λ⁻¹)`: a random `o × i` matrix `W` whose rows have covariance `Σ` between them and
/// whose columns have covariance `Λ⁻¹` between them,
/// `Cov(W[d, j], W[d', j']) = Σ[d, d'] · (Λ⁻¹)[j, j']`.
///
/// Flattening `W` **row by row** (the layout of [`Weights`]: unit `d`'s incoming weights, then its
/// bias) gives the covariance `Σ ⊗ Λ⁻¹`; flattening column by column gives `Λ⁻¹ ⊗ Σ`, the form
/// in the BALI paper. Both describe the same distribution.
///
/// Sampling draws `E` with independent standard-normal entries and returns
/// `W = M + L_Σ E R⁻¹`, where `Σ = L_Σ L_Σᵀ` and `Λ = R Rᵀ` are Cholesky factorisations: then the
/// rows of `E R⁻¹` have covariance `R⁻ᵀR⁻¹ = Λ⁻¹`, and `L_Σ` mixes the rows with covariance `Σ`.
///
/// ```
/// use weightspace::bali::MatrixNormal;
/// use weightspace::linalg::Matrix;
/// let m = Matrix::from_rows(&[vec![1.0, 0.0, -1.0], vec![0.5, 2.0, 0.0]])?;
/// let row_cov = Matrix::from_rows(&[vec![1.0, 0.3], vec![0.3, 0.5]])?;
/// let col_prec = Matrix::identity(3).scale(4.0);
/// let mn = MatrixNormal::new(m, row_cov, col_prec)?;
/// // Var(W[1, 2]) = Σ[1, 1] · (Λ⁻¹)[2, 2] = 0.5 / 4
/// let cov = mn.covariance();
/// assert!((cov[(5, 5)] - 0.125).abs() < 1e-12);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// assert_eq!(mn.sample(&mut rng)?.shape(), (2, 3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixNormal {
    mean: Matrix,
    row_cov: Matrix,
    col_precision: Matrix,
    row_chol: Cholesky,
    col_chol: Cholesky,
}

fn not_spd(name: &'static str, e: impl std::fmt::Display) -> Error {
    Error::InvalidConfig { name, value: e.to_string(), reason: "must be symmetric positive definite" }
}

impl MatrixNormal {
    /// `MN(mean, row_cov, col_precision⁻¹)`. `row_cov` (`o × o`) and `col_precision` (`i × i`) must
    /// be symmetric positive definite, `mean` finite and `o × i`.
    pub fn new(mean: Matrix, row_cov: Matrix, col_precision: Matrix) -> Result<Self> {
        let (o, i) = mean.shape();
        if row_cov.shape() != (o, o) {
            return Err(Error::Shape {
                what: "matrix-normal row covariance".into(),
                expected: format!("({o}, {o})"),
                got: format!("{:?}", row_cov.shape()),
            });
        }
        if col_precision.shape() != (i, i) {
            return Err(Error::Shape {
                what: "matrix-normal column precision".into(),
                expected: format!("({i}, {i})"),
                got: format!("{:?}", col_precision.shape()),
            });
        }
        crate::error::check_finite("matrix-normal mean", mean.as_slice())?;
        crate::error::check_finite("matrix-normal row covariance", row_cov.as_slice())?;
        crate::error::check_finite("matrix-normal column precision", col_precision.as_slice())?;
        let row_chol = row_cov.cholesky().map_err(|e| not_spd("MatrixNormal row covariance", e))?;
        let col_chol = col_precision.cholesky().map_err(|e| not_spd("MatrixNormal column precision", e))?;
        Ok(Self { mean, row_cov, col_precision, row_chol, col_chol })
    }

    /// The mean `M`, `o × i`.
    pub fn mean(&self) -> &Matrix {
        &self.mean
    }
    /// The row covariance `Σ`, `o × o`.
    pub fn row_covariance(&self) -> &Matrix {
        &self.row_cov
    }
    /// The column precision `Λ`, `i × i`.
    pub fn column_precision(&self) -> &Matrix {
        &self.col_precision
    }
    /// The column covariance `Λ⁻¹`.
    pub fn column_covariance(&self) -> Matrix {
        self.col_chol.inverse()
    }
    /// `(o, i)`.
    pub fn shape(&self) -> (usize, usize) {
        self.mean.shape()
    }

    /// The full `(o·i) × (o·i)` covariance of `W` flattened row by row: `Σ ⊗ Λ⁻¹`.
    pub fn covariance(&self) -> Matrix {
        let (o, i) = self.shape();
        let ci = self.column_covariance();
        let mut c = Matrix::zeros(o * i, o * i);
        for d in 0..o {
            for e in 0..o {
                let s = self.row_cov[(d, e)];
                for j in 0..i {
                    for k in 0..i {
                        c[(d * i + j, e * i + k)] = s * ci[(j, k)];
                    }
                }
            }
        }
        c
    }

    /// `L_Σ`, the lower Cholesky factor of the row covariance.
    pub fn row_factor(&self) -> &Matrix {
        self.row_chol.factor()
    }

    /// `R⁻¹`, with `R` the lower Cholesky factor of the column precision (`Λ = R Rᵀ`).
    pub fn column_factor(&self) -> Matrix {
        self.col_chol.factor_inverse()
    }

    /// One draw `M + L_Σ E R⁻¹` on the host. (The shapes were checked by [`MatrixNormal::new`], so
    /// this does not fail for a distribution built there.)
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Matrix> {
        let (o, i) = self.shape();
        let e = Matrix::from_row_major(o, i, (0..o * i).map(|_| rng.sample(StandardNormal)).collect())?;
        Ok(self.mean.add(&self.row_factor().matmul(&e)?.matmul(&self.column_factor())?)?)
    }
}

/// One layer's matrix-normal posterior on a device: `M`, `L_Σ` and `R⁻¹` uploaded once, so that
/// drawing `S` samples is one host→device copy of the standard-normal noise and two batched matrix
/// products.
#[derive(Debug, Clone)]
pub(crate) struct LayerSampler<E: Dtype, D: Storage<E>> {
    mean: Tensor<(usize, usize), E, D>,
    row_factor: Tensor<(usize, usize), E, D>,
    col_factor: Tensor<(usize, usize), E, D>,
}

fn upload<E: Real, D: Device<E>>(dev: &D, m: &Matrix) -> Tensor<(usize, usize), E, D> {
    dev.tensor_from_vec(m.as_slice().iter().map(|&v| crate::num::cast::from_f64::<E>(v)).collect(), m.shape())
}

impl<E: Real, D: Device<E>> LayerSampler<E, D> {
    fn new(dev: &D, mn: &MatrixNormal) -> Self {
        Self { mean: upload(dev, mn.mean()), row_factor: upload(dev, mn.row_factor()), col_factor: upload(dev, &mn.column_factor()) }
    }

    fn sample(&self, s: usize, rng: &mut impl Rng) -> Tensor<(usize, usize, usize), E, D> {
        let (o, i) = *self.mean.shape();
        let dev = self.mean.device();
        let eps = crate::vi::guide::standard_normal::<E, D, _>(dev, rng, (s, o, i));
        let left = self.row_factor.clone().broadcast_like::<_, Axis<0>>(&(s, o, o)).matmul(eps);
        let noise = left.matmul(self.col_factor.clone().broadcast_like::<_, Axis<0>>(&(s, i, i)));
        self.mean.clone().broadcast_like::<_, Axis<0>>(&(s, o, i)) + noise
    }

    fn mean_sample(&self) -> Tensor<(usize, usize, usize), E, D> {
        let (o, i) = *self.mean.shape();
        self.mean.clone().reshape_like(&(1usize, o, i))
    }
}

/// BALI's posterior over a whole network: one [`MatrixNormal`] per layer, independent across
/// layers, with a device-side sampler. It is a [`WeightSource`], so
/// [`crate::Predictive::run`] and
/// [`crate::Predictive::evaluate`] give its predictive distribution and test
/// metrics by averaging over `K` weight samples.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bali::{fit_bali, BaliConfig, BaliPosterior};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.5>> }
/// let dev = Cpu::default();
/// let x: Vec<f64> = (0..20).map(|i| i as f64 / 5.0 - 2.0).collect();
/// let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
/// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
/// let mut model = Net::<f64, Cpu>::new(&dev);
/// let (post, _): (BaliPosterior<f64, Cpu>, _) = fit_bali(&mut model, &data, &BaliConfig { epochs: 5, progress: false, ..Default::default() })?;
/// assert_eq!(post.layers().len(), 2);
/// assert_eq!(post.layers()[0].shape(), (4, 2)); // d_out × (d_in + 1)
/// assert_eq!(post.arch().name, "Net");
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// assert_eq!(post.sample(7, &mut rng)?.num_samples(), 7);
/// assert_eq!(post.mean_weights().num_samples(), 1);
/// // a weight source for the predictive
/// let pred = Predictive::new(50).run(&model, post.clone(), &data.x)?;
/// assert_eq!(pred.mean.len(), 20);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BaliPosterior<E: Dtype, D: Storage<E>> {
    arch: &'static Architecture,
    layers: Vec<MatrixNormal>,
    samplers: Vec<LayerSampler<E, D>>,
}

impl<E: Real, D: Device<E>> BaliPosterior<E, D> {
    /// Builds a posterior from one matrix-normal per layer of `arch` (shapes `d_out × (d_in + 1)`).
    pub fn new(dev: &D, arch: &'static Architecture, layers: Vec<MatrixNormal>) -> Result<Self> {
        if layers.len() != arch.layers.len() {
            return Err(Error::Shape {
                what: "matrix-normal layers".into(),
                expected: arch.layers.len().to_string(),
                got: layers.len().to_string(),
            });
        }
        for (spec, mn) in arch.layers.iter().zip(&layers) {
            if mn.shape() != (spec.d_out, spec.d_in + 1) {
                return Err(Error::Shape {
                    what: format!("matrix-normal posterior of layer `{}`", spec.name),
                    expected: format!("({}, {})", spec.d_out, spec.d_in + 1),
                    got: format!("{:?}", mn.shape()),
                });
            }
        }
        let samplers = layers.iter().map(|mn| LayerSampler::new(dev, mn)).collect();
        Ok(Self { arch, layers, samplers })
    }

    /// The per-layer posteriors, in layer order.
    pub fn layers(&self) -> &[MatrixNormal] {
        &self.layers
    }

    /// The architecture the posterior belongs to.
    pub fn arch(&self) -> &'static Architecture {
        self.arch
    }

    /// Draws `s` weight samples (every layer independently).
    pub fn sample(&self, s: usize, rng: &mut impl Rng) -> Result<Weights<E, D>> {
        if s == 0 {
            return Err(Error::config("samples", 0, "at least one weight sample is needed"));
        }
        Ok(Weights { layers: self.samplers.iter().map(|l| l.sample(s, rng)).collect() })
    }

    /// The posterior means as a single weight sample (`S = 1`).
    pub fn mean_weights(&self) -> Weights<E, D> {
        Weights { layers: self.samplers.iter().map(|l| l.mean_sample()).collect() }
    }

    /// The linearised predictive of this posterior: the network linearised around the posterior
    /// means, at the posterior's draws ([`Linearised`]). The predictive that matches BALI's
    /// Kronecker-factored Laplace-type covariance; the plain posterior (the network at the draws)
    /// is the other.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bali::{fit_bali, BaliConfig};
    /// #[bnn]
    /// struct Clf { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 8, Relu>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<8, 2>, #[likelihood] y: Categorical }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..40).flat_map(|i| { let s = if i % 2 == 0 { 1.0 } else { -1.0 }; [s + 0.1 * (i as f64).sin(), s] }).collect();
    /// let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
    /// let data = Dataset::<f64, _>::classification(&dev, &x, 2, &labels, 2)?;
    /// let mut model = Clf::<f64, Cpu>::new(&dev);
    /// // minibatches: full-batch updates of a hidden layer can oscillate (see the module docs)
    /// let cfg = BaliConfig { epochs: 10, batch_size: Some(10), progress: false, ..Default::default() };
    /// let (post, _) = fit_bali(&mut model, &data, &cfg)?;
    /// let m = Predictive::new(100).evaluate(&model, post.linearised(), &data)?;
    /// assert_eq!(m.accuracy, Some(1.0));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn linearised(&self) -> Linearised<E, D, BaliPosterior<E, D>> {
        Linearised::new(self.mean_weights(), self.clone())
    }
}

/// Pass the posterior by value or as `&mut posterior`.
impl<E: Real, D: Device<E>> WeightSource<E, D> for BaliPosterior<E, D> {
    fn draw(&mut self, _arch: &Architecture, s: usize, rng: &mut rand::rngs::StdRng) -> Result<Weights<E, D>> {
        self.sample(s, rng)
    }
}
