//! A block-diagonal Gaussian prior over the weights, for sampling under a prior that is not the
//! model's own mean-field one (a meta-learned prior with full covariance per unit, say).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::num::dense as host;
use crate::{Error, Result};

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// One Gaussian block over the consecutive weights `offset .. offset + k`.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    offset: usize,
    k: usize,
    mean: Vec<f64>,
    /// Cholesky factor of the covariance (row-major, lower).
    chol: Vec<f64>,
    /// The precision `Σ⁻¹` (row-major).
    precision: Vec<f64>,
    /// `−½ ln det Σ − ½ k ln 2π`.
    log_norm: f64,
}

/// A Gaussian prior over the weights (in [`crate::model::bnn::Weights::to_flat`] order) made of
/// independent blocks of consecutive weights, each with a full covariance.
///
/// [`super::BnnPosterior::with_weight_prior`] and [`super::SymMcmcSettings::weight_prior`] sample
/// under it instead of the model's own per-weight Normal priors. A meta-learned BNNP prior becomes
/// one with [`crate::methods::bnnp::AmortisedGuide::weight_prior`] (one block per output unit, or per layer).
///
/// ```
/// use weightspace::mcmc::GaussianWeightPrior;
/// // two weights, correlated: Σ = [[1, 0.5], [0.5, 1]]
/// let prior = GaussianWeightPrior::from_blocks(2, vec![(0, vec![0.0, 0.0], vec![1.0, 0.5, 0.5, 1.0])])?;
/// let mut grad = [0.0; 2];
/// let lp = prior.log_density(&[0.0, 0.0], &mut grad)?;
/// let want = -0.5 * (1.0f64 - 0.25).ln() - (2.0 * std::f64::consts::PI).ln();
/// assert!((lp - want).abs() < 1e-12 && grad == [0.0, 0.0]);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianWeightPrior {
    num_weights: usize,
    blocks: Vec<Block>,
}

impl GaussianWeightPrior {
    /// Builds the prior from `(offset, mean, covariance)` blocks (covariance row-major `k × k`,
    /// `k = mean.len()`). The blocks must tile `0 .. num_weights` in order, with no gap or overlap.
    ///
    /// # Errors
    /// [`Error::Shape`] when the blocks do not tile the weights or a covariance has the wrong size,
    /// [`Error::NonFinite`] for a non-finite entry, [`Error::NotPositiveDefinite`] when a covariance
    /// is not positive definite.
    pub fn from_blocks(num_weights: usize, blocks: Vec<(usize, Vec<f64>, Vec<f64>)>) -> Result<Self> {
        let mut next = 0;
        let mut out = Vec::with_capacity(blocks.len());
        for (bi, (offset, mean, cov)) in blocks.into_iter().enumerate() {
            let k = mean.len();
            if offset != next || k == 0 || cov.len() != k * k {
                return Err(Error::Shape {
                    what: format!("prior block {bi}"),
                    expected: format!("a non-empty block starting at weight {next} with a {k}×{k} covariance"),
                    got: format!("offset {offset}, {k} means, {} covariance entries", cov.len()),
                });
            }
            if let Some(i) = mean.iter().chain(&cov).position(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: format!("prior block {bi} (mean, then covariance)"), index: i });
            }
            let mut chol = cov;
            host::cholesky(&mut chol, k).map_err(|pivot| Error::NotPositiveDefinite {
                what: "covariance of a weight-prior block".into(),
                index: bi,
                pivot,
            })?;
            let mut precision = vec![0.0; k * k];
            let mut work = vec![0.0; k * k];
            host::chol_inverse(&chol, k, &mut precision, &mut work);
            let log_norm = -0.5 * host::chol_logdet(&chol, k) - k as f64 * HALF_LN_2PI;
            out.push(Block { offset, k, mean, chol, precision, log_norm });
            next = offset + k;
        }
        if next != num_weights {
            return Err(Error::Shape {
                what: "prior blocks".into(),
                expected: format!("blocks covering {num_weights} weights"),
                got: format!("blocks covering {next}"),
            });
        }
        Ok(Self { num_weights, blocks: out })
    }

    /// The number of weights the prior is over.
    pub fn num_weights(&self) -> usize {
        self.num_weights
    }

    /// `ln p(w)` for the first [`GaussianWeightPrior::num_weights`] entries of `w`, **adding**
    /// `∇ ln p` into `grad`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `w` or `grad` holds fewer than [`GaussianWeightPrior::num_weights`]
    /// values.
    pub fn log_density(&self, w: &[f64], grad: &mut [f64]) -> Result<f64> {
        if w.len() < self.num_weights || grad.len() < self.num_weights {
            return Err(Error::Shape {
                what: "weights and gradient for the weight prior".into(),
                expected: format!("at least {} values each", self.num_weights),
                got: format!("{} and {}", w.len(), grad.len()),
            });
        }
        let mut lp = 0.0;
        let mut z = Vec::new();
        for b in &self.blocks {
            let (o, k) = (b.offset, b.k);
            z.clear();
            z.extend(w[o..o + k].iter().zip(&b.mean).map(|(w, m)| w - m));
            let mut quad = 0.0;
            for i in 0..k {
                let pz: f64 = b.precision[i * k..(i + 1) * k].iter().zip(&z).map(|(p, z)| p * z).sum();
                quad += z[i] * pz;
                grad[o + i] -= pz;
            }
            lp += b.log_norm - 0.5 * quad;
        }
        Ok(lp)
    }

    /// One draw `w ~ p` (length [`GaussianWeightPrior::num_weights`]).
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let mut w = vec![0.0; self.num_weights];
        for b in &self.blocks {
            let eps: Vec<f64> = (0..b.k).map(|_| StandardNormal.sample(rng)).collect();
            for i in 0..b.k {
                let l: f64 = b.chol[i * b.k..i * b.k + i + 1].iter().zip(&eps).map(|(l, e)| l * e).sum();
                w[b.offset + i] = b.mean[i] + l;
            }
        }
        w
    }
}
