//! Exact references: posteriors and evidences known in closed form.
//!
//! * [`Gaussian`]: a multivariate normal target with known moments, a sampler and a log density;
//!   the natural target for testing an MCMC kernel or a Gaussian guide.
//! * [`BlrPosterior`]: Bayesian linear regression with a Gaussian prior and known noise, for any
//!   basis. Its posterior is Gaussian and its log evidence is known exactly, so a BNN whose only
//!   stochastic layer is the last (linear) one can be checked end to end against it.
//! * [`TanhNetReference`]: a tiny tanh network whose posterior moments, predictive and log
//!   evidence are computed by quadrature (exact integration of the output layer, Gauss–Hermite
//!   over the hidden layer), with importance sampling as an independent check.
//!
//! ```
//! use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};
//!
//! // y = w0 + w1 x + noise, prior w ~ N(0, I), noise sd 0.5
//! let xs = [-1.0, 0.0, 1.0, 2.0];
//! let problem = BlrProblem {
//!     design: xs.iter().map(|&x| vec![1.0, x]).collect(),
//!     targets: vec![-0.9, 0.2, 1.1, 1.9],
//!     prior_mean: vec![0.0, 0.0],
//!     prior_covariance: PriorCovariance::Isotropic(1.0),
//!     noise_std: 0.5,
//! };
//! let post = BlrPosterior::compute(&problem)?;
//! assert!((post.mean()[1] - 0.9).abs() < 0.1);
//! assert!(post.log_evidence().is_finite());
//! # Ok::<(), weightspace::testing::reference::ReferenceError>(())
//! ```

use rand::Rng;
use rand_distr::StandardNormal;
use thiserror::Error;

use crate::num::dense::{Cholesky, DenseError, Matrix};
use crate::predict::metrics::logsumexp;

/// Why a reference could not be built or evaluated.
///
/// ```
/// use weightspace::testing::reference::{Gaussian, ReferenceError};
///
/// let g = Gaussian::standard(2);
/// assert!(matches!(g.log_density(&[0.0]), Err(ReferenceError::ShapeMismatch { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ReferenceError {
    /// A linear-algebra step failed (typically: a covariance that is not positive definite).
    #[error(transparent)]
    Dense(#[from] DenseError),
    /// An input has the wrong length.
    #[error("{what}: expected length {expected}, got {got}")]
    ShapeMismatch {
        /// The input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// An input is invalid for another reason.
    #[error("invalid `{what}`: {reason}")]
    Invalid {
        /// The input.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

impl From<ReferenceError> for crate::Error {
    fn from(e: ReferenceError) -> Self {
        crate::Error::Testing(crate::error::TestingError::new(e))
    }
}

type Result<T> = std::result::Result<T, ReferenceError>;

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(ReferenceError::ShapeMismatch { what, expected, got })
    }
}

fn check_finite(what: &'static str, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(ReferenceError::Invalid { what, reason: format!("entry {i} is {}", xs[i]) }),
        None => Ok(()),
    }
}

/// A multivariate normal `N(mean, covariance)` with known moments, a sampler and a log density.
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use weightspace::linalg::Matrix;
/// use weightspace::testing::reference::Gaussian;
///
/// let cov = Matrix::from_rows(&[vec![1.0, 0.5], vec![0.5, 2.0]])?;
/// let g = Gaussian::new(vec![1.0, -1.0], cov)?;
/// let mut rng = StdRng::seed_from_u64(0);
/// let draws = g.sample_n(&mut rng, 20_000);
/// let m0 = draws.iter().map(|d| d[0]).sum::<f64>() / 20_000.0;
/// assert!((m0 - 1.0).abs() < 0.03); // 4 standard errors
/// assert!(g.log_density(&[1.0, -1.0])? > g.log_density(&[2.0, 0.0])?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    mean: Vec<f64>,
    covariance: Matrix,
    chol: Cholesky,
}

impl Gaussian {
    /// `N(mean, covariance)`; the covariance must be symmetric positive definite.
    pub fn new(mean: Vec<f64>, covariance: Matrix) -> Result<Self> {
        check_len("covariance rows", mean.len(), covariance.rows())?;
        check_len("covariance cols", mean.len(), covariance.cols())?;
        check_finite("mean", &mean)?;
        let chol = covariance.cholesky()?;
        Ok(Gaussian { mean, covariance, chol })
    }

    /// `N(mean, diag(variances))`.
    pub fn diagonal(mean: Vec<f64>, variances: &[f64]) -> Result<Self> {
        Self::new(mean, Matrix::from_diagonal(variances))
    }

    /// The standard normal in `dim` dimensions.
    pub fn standard(dim: usize) -> Self {
        Self::diagonal(vec![0.0; dim], &vec![1.0; dim]).expect("identity is SPD")
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The covariance.
    pub fn covariance(&self) -> &Matrix {
        &self.covariance
    }

    /// The Cholesky factor of the covariance.
    pub fn cholesky(&self) -> &Cholesky {
        &self.chol
    }

    /// Marginal standard deviations `√Σᵢᵢ`.
    pub fn std_devs(&self) -> Vec<f64> {
        self.covariance.diagonal().iter().map(|v| v.sqrt()).collect()
    }

    /// The same distribution with its covariance multiplied by `factor` (`factor < 1` makes an
    /// over-confident approximation, handy for checking that a test has power).
    pub fn with_scaled_covariance(&self, factor: f64) -> Result<Self> {
        Self::new(self.mean.clone(), self.covariance.scale(factor))
    }

    /// `ln N(x | mean, covariance)`.
    pub fn log_density(&self, x: &[f64]) -> Result<f64> {
        check_len("x", self.dim(), x.len())?;
        let diff: Vec<f64> = x.iter().zip(&self.mean).map(|(a, b)| a - b).collect();
        let quad = self.chol.inv_quad(&diff)?;
        let d = self.dim() as f64;
        Ok(-0.5 * (d * (2.0 * std::f64::consts::PI).ln() + self.chol.log_det() + quad))
    }

    /// Marginal CDF of coordinate `i` at `x` (for one-dimensional distribution tests).
    pub fn marginal_cdf(&self, i: usize, x: f64) -> f64 {
        let sd = self.covariance[(i, i)].sqrt();
        crate::num::special::normal_cdf((x - self.mean[i]) / sd)
    }

    /// One draw `mean + L z`, `z ~ N(0, I)`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
        let z: Vec<f64> = (0..self.dim()).map(|_| rng.sample(StandardNormal)).collect();
        let lz = self.chol.mul_lower(&z).expect("dimension matches");
        lz.iter().zip(&self.mean).map(|(a, m)| a + m).collect()
    }

    /// `n` independent draws.
    pub fn sample_n<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.sample(rng)).collect()
    }
}

/// Covariance of the Gaussian prior of a [`BlrProblem`].
///
/// ```
/// use weightspace::testing::reference::PriorCovariance;
///
/// let p = PriorCovariance::Diagonal(vec![1.0, 4.0]);
/// assert_eq!(p.to_matrix(2)?.diagonal(), vec![1.0, 4.0]);
/// # Ok::<(), weightspace::testing::reference::ReferenceError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum PriorCovariance {
    /// `σ₀² I` with the given variance.
    Isotropic(f64),
    /// `diag(variances)`.
    Diagonal(Vec<f64>),
    /// A full SPD matrix.
    Full(Matrix),
}

impl PriorCovariance {
    /// The covariance as a `dim × dim` matrix.
    pub fn to_matrix(&self, dim: usize) -> Result<Matrix> {
        match self {
            PriorCovariance::Isotropic(v) => Ok(Matrix::from_diagonal(&vec![*v; dim])),
            PriorCovariance::Diagonal(d) => {
                check_len("prior_covariance diagonal", dim, d.len())?;
                Ok(Matrix::from_diagonal(d))
            }
            PriorCovariance::Full(m) => {
                check_len("prior_covariance rows", dim, m.rows())?;
                check_len("prior_covariance cols", dim, m.cols())?;
                Ok(m.clone())
            }
        }
    }
}

/// A Bayesian linear regression problem: `y = Φ w + ε`, `ε ~ N(0, σ² I)`, `w ~ N(m₀, S₀)`.
///
/// The basis is arbitrary: `design` holds the rows `φ(xᵢ)` of the design matrix Φ, computed by
/// whatever features the model uses (polynomials, fixed random features, the frozen hidden layer
/// of a network, ...).
///
/// ```
/// use weightspace::testing::reference::{BlrProblem, PriorCovariance};
///
/// let problem = BlrProblem {
///     design: vec![vec![1.0, 0.5], vec![1.0, -0.5]],
///     targets: vec![1.0, 0.0],
///     prior_mean: vec![0.0; 2],
///     prior_covariance: PriorCovariance::Isotropic(1.0),
///     noise_std: 1.0,
/// };
/// assert_eq!(problem.dim(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlrProblem {
    /// Rows `φ(xᵢ)` of the N×D design matrix Φ.
    pub design: Vec<Vec<f64>>,
    /// The N targets `y`.
    pub targets: Vec<f64>,
    /// Prior mean `m₀` (length D).
    pub prior_mean: Vec<f64>,
    /// Prior covariance `S₀`.
    pub prior_covariance: PriorCovariance,
    /// Known noise standard deviation `σ > 0`.
    pub noise_std: f64,
}

impl BlrProblem {
    /// Number of weights D.
    pub fn dim(&self) -> usize {
        self.prior_mean.len()
    }
}

/// The exact posterior `N(m_N, S_N)` and log evidence of a [`BlrProblem`].
///
/// `S_N⁻¹ = S₀⁻¹ + ΦᵀΦ/σ²`, `m_N = S_N (S₀⁻¹ m₀ + Φᵀy/σ²)`, and
///
/// `ln p(y) = −N/2 ln(2πσ²) − |y − Φ m_N|²/(2σ²) − ½ (m_N − m₀)ᵀ S₀⁻¹ (m_N − m₀)
///            − ½ ln|S₀| + ½ ln|S_N|`
///
/// (Bishop, PRML eq. 3.86, with a general prior). The tests check it against the direct
/// N-dimensional formula `y ~ N(Φ m₀, σ² I + Φ S₀ Φᵀ)`.
///
/// ```
/// use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};
///
/// // one weight, one observation: the posterior of a normal mean
/// let problem = BlrProblem {
///     design: vec![vec![1.0]],
///     targets: vec![2.0],
///     prior_mean: vec![0.0],
///     prior_covariance: PriorCovariance::Isotropic(1.0),
///     noise_std: 1.0,
/// };
/// let post = BlrPosterior::compute(&problem)?;
/// assert!((post.mean()[0] - 1.0).abs() < 1e-12);
/// assert!((post.covariance()[(0, 0)] - 0.5).abs() < 1e-12);
/// // evidence: y ~ N(0, 2)
/// let expect = -0.5 * ((2.0 * std::f64::consts::PI * 2.0).ln() + 4.0 / 2.0);
/// assert!((post.log_evidence() - expect).abs() < 1e-12);
/// // predictive of f = w at φ = 1: the posterior itself; a new target adds the noise variance
/// let (m, v) = post.predictive(&[1.0])?;
/// assert!((m - 1.0).abs() < 1e-12 && (v - 0.5).abs() < 1e-12);
/// assert!((v + post.noise_std().powi(2) - 1.5).abs() < 1e-12);
/// # Ok::<(), weightspace::testing::reference::ReferenceError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlrPosterior {
    posterior: Gaussian,
    precision: Matrix,
    log_evidence: f64,
    noise_std: f64,
}

impl BlrPosterior {
    /// Solves the problem in closed form.
    pub fn compute(problem: &BlrProblem) -> Result<Self> {
        let d = problem.dim();
        let n = problem.targets.len();
        if d == 0 {
            return Err(ReferenceError::Invalid { what: "prior_mean", reason: "no weights".into() });
        }
        check_len("design rows", n, problem.design.len())?;
        let sigma = problem.noise_std;
        if !(sigma > 0.0 && sigma.is_finite()) {
            return Err(ReferenceError::Invalid { what: "noise_std", reason: format!("{sigma} is not a positive finite number") });
        }
        check_finite("targets", &problem.targets)?;
        check_finite("prior_mean", &problem.prior_mean)?;
        let phi = Matrix::from_rows(&problem.design)?;
        if n > 0 {
            check_len("design columns", d, phi.cols())?;
        }
        check_finite("design", phi.as_slice())?;
        let s0 = problem.prior_covariance.to_matrix(d)?;
        let s0_chol = s0.cholesky()?;
        let s0_inv = s0_chol.inverse();
        let beta = 1.0 / (sigma * sigma);

        // precision S_N⁻¹ = S₀⁻¹ + β ΦᵀΦ
        let mut precision = s0_inv.clone();
        for row in problem.design.iter() {
            for i in 0..d {
                for j in 0..d {
                    precision[(i, j)] += beta * row[i] * row[j];
                }
            }
        }
        let precision = precision.symmetrize()?;
        let prec_chol = precision.cholesky()?;
        // m_N = S_N (S₀⁻¹ m₀ + β Φᵀ y)
        let mut rhs = s0_inv.matvec(&problem.prior_mean)?;
        for (row, y) in problem.design.iter().zip(&problem.targets) {
            for i in 0..d {
                rhs[i] += beta * row[i] * y;
            }
        }
        let mean = prec_chol.solve(&rhs)?;
        let covariance = prec_chol.inverse();

        let resid: f64 = problem
            .design
            .iter()
            .zip(&problem.targets)
            .map(|(row, y)| {
                let f: f64 = row.iter().zip(&mean).map(|(a, b)| a * b).sum();
                (y - f).powi(2)
            })
            .sum();
        let dm: Vec<f64> = mean.iter().zip(&problem.prior_mean).map(|(a, b)| a - b).collect();
        let prior_quad = s0_chol.inv_quad(&dm)?;
        let log_evidence = -0.5 * n as f64 * (2.0 * std::f64::consts::PI * sigma * sigma).ln()
            - 0.5 * beta * resid
            - 0.5 * prior_quad
            - 0.5 * s0_chol.log_det()
            - 0.5 * prec_chol.log_det();
        Ok(BlrPosterior { posterior: Gaussian::new(mean, covariance)?, precision, log_evidence, noise_std: sigma })
    }

    /// Posterior mean `m_N`.
    pub fn mean(&self) -> &[f64] {
        self.posterior.mean()
    }

    /// Posterior covariance `S_N`.
    pub fn covariance(&self) -> &Matrix {
        self.posterior.covariance()
    }

    /// Posterior precision `S_N⁻¹`.
    pub fn precision(&self) -> &Matrix {
        &self.precision
    }

    /// Log marginal likelihood `ln p(y)`.
    pub fn log_evidence(&self) -> f64 {
        self.log_evidence
    }

    /// The noise standard deviation σ.
    pub fn noise_std(&self) -> f64 {
        self.noise_std
    }

    /// The posterior as a [`Gaussian`] (to sample from, or to evaluate).
    pub fn posterior(&self) -> &Gaussian {
        &self.posterior
    }

    /// Predictive mean and variance of the noise-free function `f = φᵀ w` at features `phi`:
    /// `(φᵀ m_N, φᵀ S_N φ)`. Add `noise_std²` for the variance of a new target.
    pub fn predictive(&self, phi: &[f64]) -> Result<(f64, f64)> {
        check_len("phi", self.posterior.dim(), phi.len())?;
        let m = phi.iter().zip(self.mean()).map(|(a, b)| a * b).sum();
        let sphi = self.covariance().matvec(phi)?;
        let v = phi.iter().zip(&sphi).map(|(a, b)| a * b).sum();
        Ok((m, v))
    }
}

/// A tiny tanh network `f(x) = Σₕ vₕ tanh(wₕ x + bₕ) + c` with independent `N(0, prior_std²)`
/// weights and Gaussian noise of known standard deviation.
///
/// With H hidden units it has `3H + 1` weights, ordered
/// `[w_1..w_H, b_1..b_H, v_1..v_H, c]`.
///
/// ```
/// use weightspace::testing::reference::TanhNet;
///
/// let net = TanhNet { hidden: 2, prior_std: 1.0, noise_std: 0.1 };
/// assert_eq!(net.n_weights(), 7);
/// let f = net.forward(&[1.0, -1.0, 0.0, 0.0, 2.0, 3.0, 0.5], 0.0);
/// assert!((f - 0.5).abs() < 1e-12); // tanh(0) = 0: only c remains
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TanhNet {
    /// Number of hidden units H.
    pub hidden: usize,
    /// Prior standard deviation of every weight.
    pub prior_std: f64,
    /// Observation noise standard deviation.
    pub noise_std: f64,
}

impl TanhNet {
    /// Number of weights, `3H + 1`.
    pub fn n_weights(&self) -> usize {
        3 * self.hidden + 1
    }

    /// The network output at `x` for weights `theta` (see the type docs for the order).
    pub fn forward(&self, theta: &[f64], x: f64) -> f64 {
        let h = self.hidden;
        let mut f = theta[3 * h];
        for k in 0..h {
            f += theta[2 * h + k] * (theta[k] * x + theta[h + k]).tanh();
        }
        f
    }

    /// `ln p(y | x, θ)` of a data set.
    pub fn log_likelihood(&self, theta: &[f64], xs: &[f64], ys: &[f64]) -> f64 {
        let s2 = self.noise_std * self.noise_std;
        let c = -0.5 * (2.0 * std::f64::consts::PI * s2).ln();
        xs.iter().zip(ys).map(|(x, y)| c - 0.5 * (y - self.forward(theta, *x)).powi(2) / s2).sum()
    }
}

/// A data set for a [`TanhNet`], and the inputs at which to report the predictive.
///
/// ```
/// use weightspace::testing::reference::{TanhNet, TanhNetProblem};
///
/// let problem = TanhNetProblem {
///     net: TanhNet { hidden: 1, prior_std: 1.0, noise_std: 0.3 },
///     xs: vec![-1.0, 0.0, 1.0],
///     ys: vec![-0.7, 0.0, 0.8],
///     test_xs: vec![0.5],
/// };
/// assert_eq!(problem.net.n_weights(), 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TanhNetProblem {
    /// The network and its prior and noise.
    pub net: TanhNet,
    /// Training inputs.
    pub xs: Vec<f64>,
    /// Training targets.
    pub ys: Vec<f64>,
    /// Inputs at which the posterior predictive of `f` is reported.
    pub test_xs: Vec<f64>,
}

impl TanhNetProblem {
    fn validate(&self) -> Result<()> {
        check_len("ys", self.xs.len(), self.ys.len())?;
        check_finite("xs", &self.xs)?;
        check_finite("ys", &self.ys)?;
        check_finite("test_xs", &self.test_xs)?;
        let net = self.net;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if net.hidden == 0 || !positive(net.prior_std) || !positive(net.noise_std) {
            return Err(ReferenceError::Invalid {
                what: "net",
                reason: format!("{net:?}: needs hidden > 0 and positive standard deviations"),
            });
        }
        Ok(())
    }
}

/// Posterior moments, log evidence and predictive of a [`TanhNet`], computed precisely.
///
/// Two methods:
///
/// * [`TanhNetReference::quadrature`] (the reference, for `H = 1`): given the hidden weights
///   `(w, b)`, the network is linear in the output weights `(v, c)`, so their posterior and the
///   conditional evidence are Bayesian linear regression in closed form ([`BlrPosterior`]). The
///   remaining `2H`-dimensional integral over `(w, b)` uses the tensor-product trapezoidal rule
///   on `[−8 s, 8 s]` per dimension (`s` the prior sd), weighted by the prior density. The
///   integrand is smooth and negligible at the ends, so the rule converges geometrically: for
///   the tests' 5-point data set, 300 and 400 nodes per dimension agree to 1e-9 in the log
///   evidence (Gauss–Hermite rules converge far more slowly here, because the likelihood is much
///   narrower than the prior). Cost: `nodes^(2H)` small BLR solves, about 6 µs each; that is
///   practical for `H = 1` only.
/// * [`TanhNetReference::importance_sampling`] (any `H`): prior draws weighted by the
///   likelihood, with the delta-method standard error of the log evidence and Kish's ESS. An
///   independent check of the quadrature, and the reference for `H ≥ 2` on small data.
///
/// Weights are ordered `[w_1..w_H, b_1..b_H, v_1..v_H, c]`. The posterior is symmetric under the
/// sign flip `(wₕ, bₕ, vₕ) → (−wₕ, −bₕ, −vₕ)` and under permutations of the hidden units, so the
/// means of `w`, `b` and `v` are zero; compare invariant quantities (the predictive, `c`, second
/// moments, the evidence) unless your sampler breaks the symmetry on purpose.
///
/// ```
/// use weightspace::testing::reference::{TanhNet, TanhNetProblem, TanhNetReference};
///
/// let problem = TanhNetProblem {
///     net: TanhNet { hidden: 1, prior_std: 1.0, noise_std: 0.3 },
///     xs: vec![-1.0, -0.3, 0.4, 1.0],
///     ys: vec![-0.8, -0.3, 0.3, 0.7],
///     test_xs: vec![0.0, 2.0],
/// };
/// let exact = TanhNetReference::quadrature(&problem, 200)?;
/// let is = TanhNetReference::importance_sampling(&problem, 100_000, 7)?;
/// let se = is.log_evidence_se().unwrap();
/// assert!((exact.log_evidence() - is.log_evidence()).abs() < 4.0 * se);
/// assert!(exact.posterior_mean()[0].abs() < 1e-9); // E[w] = 0 by symmetry
/// assert!(exact.predictive_mean()[1] > 0.3);       // f(2) follows the increasing trend
/// # Ok::<(), weightspace::testing::reference::ReferenceError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TanhNetReference {
    net: TanhNet,
    log_evidence: f64,
    log_evidence_se: Option<f64>,
    importance_ess: Option<f64>,
    mean: Vec<f64>,
    covariance: Matrix,
    predictive_mean: Vec<f64>,
    predictive_var: Vec<f64>,
}

/// Weighted accumulator of the first two moments of the weights and of the predictive.
struct Moments {
    p: usize,
    first: Vec<f64>,
    second: Matrix,
    f1: Vec<f64>,
    f2: Vec<f64>,
}

impl Moments {
    fn new(p: usize, n_test: usize) -> Self {
        Moments { p, first: vec![0.0; p], second: Matrix::zeros(p, p), f1: vec![0.0; n_test], f2: vec![0.0; n_test] }
    }

    fn finish(self, net: TanhNet, log_evidence: f64) -> TanhNetReference {
        let mut cov = self.second;
        for i in 0..self.p {
            for j in 0..self.p {
                cov[(i, j)] -= self.first[i] * self.first[j];
            }
        }
        let predictive_var = self.f2.iter().zip(&self.f1).map(|(s, m)| (s - m * m).max(0.0)).collect();
        TanhNetReference {
            net,
            log_evidence,
            log_evidence_se: None,
            importance_ess: None,
            mean: self.first,
            covariance: cov.symmetrize().expect("square"),
            predictive_mean: self.f1,
            predictive_var,
        }
    }
}

impl TanhNetReference {
    /// Computes the reference by the trapezoidal rule over the hidden weights with
    /// `nodes_per_dim` nodes per dimension (300 is plenty for typical data), and exact
    /// integration of the output weights.
    pub fn quadrature(problem: &TanhNetProblem, nodes_per_dim: usize) -> Result<Self> {
        problem.validate()?;
        let net = problem.net;
        let h = net.hidden;
        let dims = 2 * h;
        if nodes_per_dim < 2 {
            return Err(ReferenceError::Invalid { what: "nodes_per_dim", reason: format!("{nodes_per_dim} is fewer than 2") });
        }
        let total = (nodes_per_dim as f64).powi(dims as i32);
        if total > 5e7 {
            return Err(ReferenceError::Invalid {
                what: "nodes_per_dim",
                reason: format!("{nodes_per_dim}^{dims} = {total:e} nodes is too many"),
            });
        }
        let s = net.prior_std;
        // trapezoidal rule on [−L, L], L = 8 prior sds, weighted by the prior density
        let half_width = 8.0 * s;
        let step = 2.0 * half_width / (nodes_per_dim - 1) as f64;
        let node: Vec<f64> = (0..nodes_per_dim).map(|i| -half_width + step * i as f64).collect();
        let ln_weight: Vec<f64> =
            node.iter().map(|x| step.ln() - 0.5 * (x / s).powi(2) - (s * (2.0 * std::f64::consts::PI).sqrt()).ln()).collect();
        // the output layer is BLR on features [tanh(w_h x + b_h)..., 1]
        let blr_at = |wb: &[f64]| -> Result<BlrPosterior> {
            let features = |x: f64| -> Vec<f64> {
                let mut phi: Vec<f64> = (0..h).map(|k| (wb[k] * x + wb[h + k]).tanh()).collect();
                phi.push(1.0);
                phi
            };
            BlrPosterior::compute(&BlrProblem {
                design: problem.xs.iter().map(|&x| features(x)).collect(),
                targets: problem.ys.clone(),
                prior_mean: vec![0.0; h + 1],
                prior_covariance: PriorCovariance::Isotropic(s * s),
                noise_std: net.noise_std,
            })
        };
        // pass 1: log of (prior weight × conditional evidence) at every node
        let n_nodes = total as usize;
        let mut idx = vec![0usize; dims];
        let mut wb = vec![0.0; dims];
        let mut log_terms = Vec::with_capacity(n_nodes);
        for k in 0..n_nodes {
            let mut rest = k;
            for (d, i) in idx.iter_mut().enumerate() {
                *i = rest % nodes_per_dim;
                rest /= nodes_per_dim;
                wb[d] = node[*i];
            }
            let lw: f64 = idx.iter().map(|&i| ln_weight[i]).sum();
            log_terms.push(lw + blr_at(&wb)?.log_evidence());
        }
        let log_evidence = logsumexp(&log_terms);
        // pass 2: posterior-weighted moments (node weight π_k = exp(log_term − log Z))
        let p = net.n_weights();
        let mut acc = Moments::new(p, problem.test_xs.len());
        for (k, lt) in log_terms.iter().enumerate() {
            let pi = (lt - log_evidence).exp();
            if pi < 1e-300 {
                continue;
            }
            let mut rest = k;
            for x in wb.iter_mut() {
                *x = node[rest % nodes_per_dim];
                rest /= nodes_per_dim;
            }
            let post = blr_at(&wb)?;
            let m = post.mean();
            let sn = post.covariance();
            // θ = [wb (2H), vc (H + 1)]
            let mut theta = wb.clone();
            theta.extend_from_slice(m);
            for i in 0..p {
                acc.first[i] += pi * theta[i];
                for j in 0..p {
                    let mut e = theta[i] * theta[j];
                    if i >= dims && j >= dims {
                        e += sn[(i - dims, j - dims)];
                    }
                    acc.second[(i, j)] += pi * e;
                }
            }
            for (t, &x) in problem.test_xs.iter().enumerate() {
                let mut phi: Vec<f64> = (0..h).map(|k| (wb[k] * x + wb[h + k]).tanh()).collect();
                phi.push(1.0);
                let (fm, fv) = post.predictive(&phi)?;
                acc.f1[t] += pi * fm;
                acc.f2[t] += pi * (fv + fm * fm);
            }
        }
        Ok(acc.finish(net, log_evidence))
    }

    /// Computes the reference by importance sampling with `n_draws` prior draws from a
    /// `StdRng` seeded with `seed`; reports the standard error of the log evidence and the ESS.
    pub fn importance_sampling(problem: &TanhNetProblem, n_draws: usize, seed: u64) -> Result<Self> {
        use rand::SeedableRng;
        problem.validate()?;
        if n_draws < 2 {
            return Err(ReferenceError::Invalid { what: "n_draws", reason: format!("{n_draws} is fewer than 2") });
        }
        let net = problem.net;
        let p = net.n_weights();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut thetas = Vec::with_capacity(n_draws * p);
        let mut logw = Vec::with_capacity(n_draws);
        for _ in 0..n_draws {
            let start = thetas.len();
            for _ in 0..p {
                let z: f64 = rng.sample(StandardNormal);
                thetas.push(net.prior_std * z);
            }
            logw.push(net.log_likelihood(&thetas[start..], &problem.xs, &problem.ys));
        }
        let lse = logsumexp(&logw);
        let m = n_draws as f64;
        let log_evidence = lse - m.ln();
        let w: Vec<f64> = logw.iter().map(|l| (l - lse).exp()).collect(); // Σ w = 1
        let sum_w2: f64 = w.iter().map(|x| x * x).sum();
        let mut acc = Moments::new(p, problem.test_xs.len());
        for (t, wi) in thetas.chunks(p).zip(&w) {
            for i in 0..p {
                acc.first[i] += wi * t[i];
                for j in 0..p {
                    acc.second[(i, j)] += wi * t[i] * t[j];
                }
            }
            for (k, &x) in problem.test_xs.iter().enumerate() {
                let f = net.forward(t, x);
                acc.f1[k] += wi * f;
                acc.f2[k] += wi * f * f;
            }
        }
        let mut r = acc.finish(net, log_evidence);
        // delta method: Var(ln Ẑ) ≈ Var(ω) / (M Z²) = (M Σ w² − 1) / M with Σ w = 1
        r.log_evidence_se = Some(((m * sum_w2 - 1.0).max(0.0) / m).sqrt());
        r.importance_ess = Some(1.0 / sum_w2);
        Ok(r)
    }

    /// The network.
    pub fn net(&self) -> &TanhNet {
        &self.net
    }

    /// `ln p(y)`.
    pub fn log_evidence(&self) -> f64 {
        self.log_evidence
    }

    /// Standard error of [`Self::log_evidence`] (importance sampling only).
    pub fn log_evidence_se(&self) -> Option<f64> {
        self.log_evidence_se
    }

    /// Kish's effective sample size of the importance weights (importance sampling only).
    pub fn importance_ess(&self) -> Option<f64> {
        self.importance_ess
    }

    /// Posterior mean of the weights (see the type docs for the order and the symmetry).
    pub fn posterior_mean(&self) -> &[f64] {
        &self.mean
    }

    /// Posterior covariance of the weights.
    pub fn posterior_covariance(&self) -> &Matrix {
        &self.covariance
    }

    /// Posterior predictive mean of `f(x)` at each of the problem's `test_xs`.
    pub fn predictive_mean(&self) -> &[f64] {
        &self.predictive_mean
    }

    /// Posterior predictive variance of `f(x)` (without the noise) at each of `test_xs`.
    pub fn predictive_variance(&self) -> &[f64] {
        &self.predictive_var
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn problem(n: usize, prior: PriorCovariance) -> BlrProblem {
        let xs: Vec<f64> = (0..n).map(|i| -1.0 + 2.0 * i as f64 / n as f64).collect();
        BlrProblem {
            design: xs.iter().map(|x| vec![1.0, *x, x * x]).collect(),
            targets: xs.iter().map(|x| 0.3 - x + 0.5 * x * x + 0.1 * (7.0 * x).sin()).collect(),
            prior_mean: vec![0.1, -0.2, 0.0],
            prior_covariance: prior,
            noise_std: 0.3,
        }
    }

    /// `ln N(y | Φ m₀, σ² I + Φ S₀ Φᵀ)` computed directly in N dimensions.
    fn direct_log_evidence(p: &BlrProblem) -> f64 {
        let phi = Matrix::from_rows(&p.design).unwrap();
        let s0 = p.prior_covariance.to_matrix(p.dim()).unwrap();
        let n = p.targets.len();
        let cov = phi.matmul(&s0).unwrap().matmul(&phi.transpose()).unwrap().add(&Matrix::identity(n).scale(p.noise_std.powi(2))).unwrap();
        let mean = phi.matvec(&p.prior_mean).unwrap();
        Gaussian::new(mean, cov.symmetrize().unwrap()).unwrap().log_density(&p.targets).unwrap()
    }

    #[test]
    fn blr_evidence_matches_direct_formula_for_every_prior_kind() {
        let full = Matrix::from_rows(&[vec![2.0, 0.3, 0.1], vec![0.3, 1.0, -0.2], vec![0.1, -0.2, 0.5]]).unwrap();
        for prior in [PriorCovariance::Isotropic(1.5), PriorCovariance::Diagonal(vec![1.0, 2.0, 0.5]), PriorCovariance::Full(full)] {
            for n in [0, 1, 5, 40] {
                let p = problem(n, prior.clone());
                let post = BlrPosterior::compute(&p).unwrap();
                let direct = if n == 0 { 0.0 } else { direct_log_evidence(&p) };
                assert!((post.log_evidence() - direct).abs() < 1e-9, "n={n}: {} vs {direct}", post.log_evidence());
                let id = post.precision().matmul(post.covariance()).unwrap();
                assert!(id.max_abs_diff(&Matrix::identity(3)).unwrap() < 1e-9);
            }
        }
    }

    #[test]
    fn blr_posterior_mean_by_hand() {
        // Φ = I₂, y = (1, 2), m₀ = 0, S₀ = I, σ = 1: S_N = I/2, m_N = y/2
        let p = BlrProblem {
            design: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            targets: vec![1.0, 2.0],
            prior_mean: vec![0.0, 0.0],
            prior_covariance: PriorCovariance::Isotropic(1.0),
            noise_std: 1.0,
        };
        let post = BlrPosterior::compute(&p).unwrap();
        assert!((post.mean()[0] - 0.5).abs() < 1e-14 && (post.mean()[1] - 1.0).abs() < 1e-14);
        assert!(post.covariance().max_abs_diff(&Matrix::identity(2).scale(0.5)).unwrap() < 1e-14);
    }

    #[test]
    fn blr_rejects_bad_input() {
        let mut p = problem(3, PriorCovariance::Isotropic(1.0));
        p.noise_std = 0.0;
        assert!(BlrPosterior::compute(&p).is_err());
        let mut p = problem(3, PriorCovariance::Diagonal(vec![1.0]));
        assert!(matches!(BlrPosterior::compute(&p), Err(ReferenceError::ShapeMismatch { .. })));
        p.prior_covariance = PriorCovariance::Diagonal(vec![1.0, -1.0, 1.0]);
        assert!(matches!(BlrPosterior::compute(&p), Err(ReferenceError::Dense(DenseError::NotPositiveDefinite { pivot: 1, .. }))));
        let mut p = problem(3, PriorCovariance::Isotropic(1.0));
        p.design[1].pop();
        assert!(BlrPosterior::compute(&p).is_err());
    }

    #[test]
    fn gaussian_log_density_by_hand_and_sampler_moments() {
        let g = Gaussian::diagonal(vec![1.0, 2.0], &[4.0, 1.0]).unwrap();
        // independent: ln N(3 | 1, 4) + ln N(2 | 2, 1)
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        let expect = -0.5 * (ln2pi + 4f64.ln() + 1.0) - 0.5 * ln2pi;
        assert!((g.log_density(&[3.0, 2.0]).unwrap() - expect).abs() < 1e-13);

        let cov = Matrix::from_rows(&[vec![1.0, 0.8], vec![0.8, 1.0]]).unwrap();
        let g = Gaussian::new(vec![0.0, 0.0], cov).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let n = 40_000;
        let c01: f64 = g.sample_n(&mut rng, n).iter().map(|d| d[0] * d[1]).sum::<f64>() / n as f64;
        // sd of the product estimator: sqrt((1 + 0.8²)/n) = 0.0064
        assert!((c01 - 0.8).abs() < 0.03, "{c01}");
    }

    fn tanh_problem(hidden: usize) -> TanhNetProblem {
        TanhNetProblem {
            net: TanhNet { hidden, prior_std: 1.0, noise_std: 0.3 },
            xs: vec![-1.5, -0.7, 0.0, 0.6, 1.2],
            ys: vec![-0.9, -0.6, 0.1, 0.5, 0.6],
            test_xs: vec![-2.0, 0.3, 2.0],
        }
    }

    #[test]
    fn tanh_quadrature_with_no_data_is_the_prior() {
        let mut p = tanh_problem(1);
        p.xs.clear();
        p.ys.clear();
        let r = TanhNetReference::quadrature(&p, 100).unwrap();
        assert!(r.log_evidence().abs() < 1e-12);
        assert!(r.posterior_covariance().max_abs_diff(&Matrix::identity(4)).unwrap() < 1e-12);
        // prior predictive of f(x): Var = E[tanh²(wx + b)] + 1 > 1, mean 0
        assert!(r.predictive_mean().iter().all(|m| m.abs() < 1e-12));
        assert!(r.predictive_variance().iter().all(|v| *v > 1.0 && *v < 2.0));
    }

    #[test]
    fn tanh_quadrature_converges_and_agrees_with_importance_sampling() {
        let p = tanh_problem(1);
        let coarse = TanhNetReference::quadrature(&p, 300).unwrap();
        let fine = TanhNetReference::quadrature(&p, 400).unwrap();
        assert!((coarse.log_evidence() - fine.log_evidence()).abs() < 1e-9, "{} vs {}", coarse.log_evidence(), fine.log_evidence());
        let d = coarse.posterior_covariance().max_abs_diff(fine.posterior_covariance()).unwrap();
        assert!(d < 1e-8, "covariance moved by {d}");
        // symmetry: E[w] = E[b] = E[v] = 0 (the grid is symmetric)
        for i in 0..3 {
            assert!(fine.posterior_mean()[i].abs() < 1e-9);
        }
        // independent check by importance sampling, within 4 standard errors
        let is = TanhNetReference::importance_sampling(&p, 200_000, 11).unwrap();
        let se = is.log_evidence_se().unwrap();
        assert!(is.importance_ess().unwrap() > 1000.0);
        assert!(
            (is.log_evidence() - fine.log_evidence()).abs() < 4.0 * se,
            "IS {} ± {se} vs quadrature {}",
            is.log_evidence(),
            fine.log_evidence()
        );
        for t in 0..3 {
            let (a, b) = (is.predictive_mean()[t], fine.predictive_mean()[t]);
            // the IS error of a posterior mean is about sd / sqrt(ESS)
            let tol = 4.0 * (fine.predictive_variance()[t] / is.importance_ess().unwrap()).sqrt();
            assert!((a - b).abs() < tol, "test point {t}: IS {a} vs quadrature {b} (tol {tol})");
        }
    }

    #[test]
    fn tanh_importance_sampling_with_two_hidden_units() {
        let p = tanh_problem(2);
        let r = TanhNetReference::importance_sampling(&p, 50_000, 5).unwrap();
        assert!(r.log_evidence().is_finite() && r.importance_ess().unwrap() > 100.0);
        assert_eq!(r.posterior_mean().len(), 7);
        // too many nodes is an error, not a hang
        assert!(TanhNetReference::quadrature(&p, 100).is_err());
    }
}
