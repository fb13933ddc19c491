//! [`BnnExt`]: what every [`Bnn`] can do once variational inference is there: build its mean-field
//! guide, draw prior weights, run the network, and evaluate log densities.

use dfdx::prelude::*;

use crate::model::bnn::{check_weights, Bnn, Tensor3, Weights};
use crate::model::data::Dataset;
use crate::num::cast::to_f64s;
use crate::vi::guide::{init_mean_field, MeanFieldInit};
use crate::{Real, Result};

/// Conveniences on every [`Bnn`] (a blanket impl; in the prelude).
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
/// let dev = Cpu::default();
/// let model = Lin::<f64, Cpu>::new(&dev);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = model.sample_prior(3, &mut rng)?;
/// let x = dev.tensor_from_vec(vec![1.0, 2.0], (2usize, 1usize));
/// assert_eq!(*model.forward(w.clone(), &x)?.shape(), (3, 2, 1));
/// assert_eq!(model.log_prior(&w)?.len(), 3);
/// assert_eq!(model.noise_scale(), Some(0.5));
/// let _guide = model.mean_field();
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait BnnExt<E: Real, D: Device<E>>: Bnn<E, D> {
    /// The mean-field guide with default initialisation: means at the prior mean, every scale 0.1.
    fn mean_field(&self) -> Self::Guide {
        match init_mean_field(self, MeanFieldInit::default()) {
            Ok(g) => g,
            // the default initialisation passes every check `init_mean_field` makes
            Err(e) => unreachable!("the default mean-field initialisation is valid: {e}"),
        }
    }

    /// The mean-field guide with a chosen initialisation.
    fn mean_field_with(&self, init: MeanFieldInit) -> Result<Self::Guide> {
        init_mean_field(self, init)
    }

    /// Draws `s` weight samples from the prior.
    fn sample_prior(&self, s: usize, rng: &mut impl rand::Rng) -> Result<Weights<E, D>> {
        crate::vi::prior::sample_prior(self, s, rng)
    }

    /// Network outputs `(S, N, d_out)` of `s` weight samples on inputs `x` `(N, d_in)`.
    fn forward(&self, weights: Weights<E, D>, x: &Tensor<(usize, usize), E, D>) -> Result<Tensor3<E, D>> {
        crate::vi::network::check_input(Self::ARCH, x)?;
        crate::vi::network::forward(Self::ARCH, weights, x)
    }

    /// `ln p(w_s)` under the prior, per sample.
    fn log_prior(&self, weights: &Weights<E, D>) -> Result<Vec<f64>> {
        check_weights(Self::ARCH, weights)?;
        let lp = crate::vi::elbo::log_prior_taped(self, weights.clone(), false);
        Ok(to_f64s(&lp.split_tape().0.as_vec()))
    }

    /// `ln p(y_n | x_n, w_s)` per sample and point, row-major `(S, N)`.
    fn log_likelihood(&self, weights: Weights<E, D>, data: &Dataset<E, D>) -> Result<Vec<f64>> {
        data.check_for(Self::ARCH)?;
        let f = crate::vi::network::forward(Self::ARCH, weights, &data.x)?;
        let ll = crate::vi::likelihood::log_lik(&Self::ARCH.likelihood, self.likelihood_params(), false, f.retaped(), data)?;
        Ok(to_f64s(&ll.split_tape().0.as_vec()))
    }

    /// The Gaussian likelihood's current noise scale `σ_y`, or `None` for other likelihoods.
    fn noise_scale(&self) -> Option<f64> {
        crate::vi::likelihood::noise_value(&Self::ARCH.likelihood, self.likelihood_params())
    }

    /// Sets the Gaussian likelihood's noise scale `σ_y` (stored as `ln σ`, or `logit(σ / upper)`
    /// when bounded). `Err` for other likelihoods and for a `σ` outside `(0, upper)`.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood(upper = 2.0)] noise: Gaussian<Learned<0.5>> }
    /// let mut model = Lin::<f64, Cpu>::new(&Cpu::default());
    /// model.set_noise_scale(0.25)?;
    /// assert!((model.noise_scale().unwrap() - 0.25).abs() < 1e-12);
    /// assert!(model.set_noise_scale(3.0).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn set_noise_scale(&mut self, sigma: f64) -> Result<()> {
        crate::vi::likelihood::set_noise_scale(self, sigma)
    }
}

impl<E: Real, D: Device<E>, M: Bnn<E, D>> BnnExt<E, D> for M {}
