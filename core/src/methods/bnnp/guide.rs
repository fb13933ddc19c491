//! The amortised guide: a dataset in, a posterior over every weight out.

use dfdx::prelude::*;
use rand::Rng;

use super::conjugate::{conjugate_layer, DataInputs, HostData, HostPosterior, LayerInputs, Offsets};
use super::infer::InferenceNet;
use super::params::{ParamId, ParamStore};
use super::prior::{groups, LearnedPrior, PriorConfig};
use crate::kernels::dense::LayerInput;
use crate::model::arch::{Activation, Architecture, LikelihoodSpec};
use crate::model::bnn::Weights;
use crate::model::data::Dataset;
use crate::model::params::LikelihoodParams;
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

type T3<E, D> = Taped<(usize, usize, usize), E, D>;
type T3v<E, D> = Tensor<(usize, usize, usize), E, D>;

/// Where the output layer's pseudo-precisions come from. Its pseudo-targets are always the real
/// targets `y`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, OutputPrecision, PriorConfig};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let cfg = GuideConfig {
///     output_precision: OutputPrecision::Likelihood,
///     prior: PriorConfig { fan_in_scaled: false, ..Default::default() }, // N(0, I)
///     ..Default::default()
/// };
/// let guide = Lin::<f64, Cpu>::new(&dev).amortised_guide(cfg)?;
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[-1.0, 0.0, 1.0], 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let post = guide.posterior_moments(&ctx, 1, &mut rng)?;
/// // a single layer with λ = 1/σ² = 100: exact Bayesian linear regression,
/// // slope = 100·Σxy / (1 + 100·Σx²) = 200/201, bias 0
/// assert!((post[0].mean[0] - 200.0 / 201.0).abs() < 1e-4);
/// assert!(post[0].mean[1].abs() < 1e-9);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputPrecision {
    /// An inference network emits `ln σ = r − 2` per point and output, `λ = 1/(σ² + 10⁻⁶)`.
    #[default]
    InferenceNet,
    /// `λ = 1/σ_y²` from the likelihood's noise: the output layer is then the exact conditional
    /// posterior given the earlier layers (the setting of the paper's ELBO experiment).
    Likelihood,
}

/// What the hidden layers' inference networks see.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, InferenceInput};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let model = Net::<f64, Cpu>::new(&Cpu::default());
/// // the width of the output layer's inference-network input
/// let input_width = |inference_input| -> weightspace::Result<usize> {
///     let guide = model.amortised_guide(GuideConfig { inference_input, ..Default::default() })?;
///     let w0 = guide.store().find("infer.out.w0").unwrap();
///     Ok(guide.store().shape(w0)[1])
/// };
/// assert_eq!(input_width(InferenceInput::Data)?, 2); // [x, y]
/// assert_eq!(input_width(InferenceInput::DataAndLayerInput)?, 6); // [x, a, y] with 4 hidden units
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InferenceInput {
    /// `[x, y]` per context point (the default): pseudo-observations are shared by every weight
    /// sample.
    #[default]
    Data,
    /// `[x, a, y]` with `a` the layer's sampled input (the previous layer's activations): one set
    /// of pseudo-observations per weight sample.
    DataAndLayerInput,
}

/// Settings of an [`AmortisedGuide`]. Plain data; override with `..Default::default()`.
///
/// ```
/// use weightspace::bnnp::{GuideConfig, OutputPrecision};
/// let cfg = GuideConfig { inference_widths: Some(vec![32, 32]), output_precision: OutputPrecision::Likelihood, ..Default::default() };
/// assert_eq!(cfg.jitter, 1e-5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GuideConfig {
    /// Hidden widths of every inference network; `None` uses the BNN's own hidden widths (as the
    /// paper does).
    pub inference_widths: Option<Vec<usize>>,
    /// Activation of the inference networks; `None` uses the BNN's first layer's activation.
    pub inference_activation: Option<Activation>,
    /// Inputs of the hidden layers' inference networks. Default `[x, y]`.
    pub inference_input: InferenceInput,
    /// Pseudo-precisions of the output layer. Default: from an inference network.
    pub output_precision: OutputPrecision,
    /// The learnable prior.
    pub prior: PriorConfig,
    /// Added to every prior precision `Σ⁻¹` before factorising (`Π = Σ⁻¹ + jitter·I`); the KL is
    /// taken against that prior. Default 1e-5; 0 gives the exact prior.
    pub jitter: f64,
    /// Seed of the inference networks' initialisation.
    pub seed: u64,
}

impl Default for GuideConfig {
    fn default() -> Self {
        Self {
            inference_widths: None,
            inference_activation: None,
            inference_input: InferenceInput::Data,
            output_precision: OutputPrecision::InferenceNet,
            prior: PriorConfig::default(),
            jitter: 1e-5,
            seed: 0,
        }
    }
}

/// Options of one pass of the guide.
///
/// ```
/// use weightspace::bnnp::ForwardOptions;
/// let o = ForwardOptions { samples: 16, chunk: Some(32), ..Default::default() };
/// assert!(o.trace && o.kl);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardOptions {
    /// Weight samples `S`. Default 8.
    pub samples: usize,
    /// Record gradients. Default true.
    pub trace: bool,
    /// Compute the KL term. Default true.
    pub kl: bool,
    /// Fold the context in chunks of this many points. The posterior is exact (every chunk's
    /// natural parameters are added), but the gradient tape is kept for one chunk picked at
    /// random: that chunk's design, pseudo-observations and context log-likelihood terms have their
    /// gradients multiplied by the number of chunks `n`, and the other chunks are constants. This
    /// is a truncated, **biased** gradient estimator (the paper's is biased too). Averaged over the
    /// chunk choice it equals the full gradient only when every gradient path meets the taped chunk
    /// once, as in a single layer whose pseudo-observations carry no parameters (a fixed noise);
    /// a path that meets it twice (in two layers, or in a layer and in the context
    /// log-likelihood) is multiplied by `n²`, and the paths from one chunk's terms to another
    /// chunk's are dropped. The test `chunked_gradient_expectation_against_the_full_gradient` in
    /// `tests/bnnp.rs` measures it: exact for one layer, and for a 3-layer network with 3 chunks
    /// the expectation lies 1.4 to 2.8 times the full gradient's norm away from it. `None` (the
    /// default) uses the whole context at once.
    pub chunk: Option<usize>,
    /// Threads the conjugate updates of the pass may use: 0 (the default) uses every core, 1
    /// keeps the pass on the calling thread. The result does not depend on it.
    pub threads: usize,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self { samples: 8, trace: true, kl: true, chunk: None, threads: 0 }
    }
}

/// The result of one pass: network outputs for context and target points under the same weight
/// samples, and the KL of the posterior to the prior.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, AmortisedForward, ForwardOptions, GuideConfig};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
/// let xt = dev.tensor_from_vec(vec![0.5f64, 2.0], (2usize, 1usize));
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let opts = ForwardOptions { samples: 4, ..Default::default() };
/// let out: AmortisedForward<f64, Cpu> = guide.forward(Some(&ctx), Some(&xt), &opts, &mut rng)?;
/// assert_eq!(out.n_context, 3);
/// assert_eq!(*out.f.shape(), (4, 3 + 2, 1));
/// assert_eq!(out.weights.num_samples(), 4);
/// assert!(out.kl.is_some() && out.kl_value > 0.0);
/// // without a context the pass runs under the prior
/// let prior = guide.forward(None, Some(&xt), &opts, &mut rng)?;
/// assert_eq!(prior.n_context, 0);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub struct AmortisedForward<E: Dtype, D: Storage<E>> {
    /// Outputs `(S, N_context + N_target, d_out)`: context points first, in their order.
    pub f: T3<E, D>,
    /// Number of context points (the first rows of `f`).
    pub n_context: usize,
    /// `Σ_l KL(q_l ‖ p_l)` averaged over samples, on the tape (when requested and there is
    /// context).
    pub kl: Option<Taped<(), E, D>>,
    /// Its value.
    pub kl_value: f64,
    /// The weight samples (values, no tape).
    pub weights: Weights<E, D>,
    pub(crate) states: Vec<Option<HostPosterior<E>>>,
}

/// BNNP's amortised guide for any network of dense layers: a learnable prior, one inference
/// network per layer and the likelihood noise, all in one [`ParamStore`].
///
/// Parameter names: `prior.{layer}.*`, `infer.{layer}.w{i}` / `.b{i}`, and `noise.raw` (the
/// Gaussian noise's raw parameter, trainable when the model declares it learned: `σ = e^raw`, or
/// `upper·sigmoid(raw)` when bounded).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{AmortisedGuide, GuideConfig};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// let dev = Cpu::default();
/// let mut guide = AmortisedGuide::<f64, Cpu>::new(&dev, Net::<f64, Cpu>::ARCH, GuideConfig::default())?;
/// assert!((guide.noise_scale() - 0.1).abs() < 1e-12);
/// guide.set_noise_scale(0.2)?;
/// assert!((guide.noise_scale() - 0.2).abs() < 1e-12);
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let xs = dev.tensor_from_vec(vec![-0.5f64, 0.5], (2usize, 1usize));
/// assert_eq!(*guide.predict(Some(&ctx), &xs, 16, &mut rng)?.shape(), (16, 2, 1));
/// assert_eq!(guide.sample_posterior(None, 5, &mut rng)?.num_samples(), 5);
/// assert!(guide.log_predictive(Some(&ctx), &ctx, 16, &mut rng)?.is_finite());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AmortisedGuide<E: Dtype, D: Storage<E>> {
    arch: &'static Architecture,
    store: ParamStore<E, D>,
    prior: LearnedPrior,
    nets: Vec<Option<InferenceNet>>,
    noise: ParamId,
    cfg: GuideConfig,
}

/// Builds amortised guides for `#[bnn]` models: `model.amortised_guide(cfg)`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// #[bnn]
/// struct Clf { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 2>, #[likelihood] y: Categorical }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// assert_eq!(guide.arch().name, "Net");
/// assert!((guide.noise_scale() - 0.1).abs() < 1e-12); // the model's noise
/// // the output layer is a Bayesian linear regression: a Gaussian likelihood is required
/// assert!(Clf::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default()).is_err());
/// // ... on the pre-activations: an output layer with an activation is an error
/// #[bnn]
/// struct Squashed { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1, Tanh>, #[likelihood] noise: Gaussian<Learned<0.1>> }
/// assert!(Squashed::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default()).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait Amortised<E: Real, D: Device<E>>: crate::model::bnn::Bnn<E, D> {
    /// The BNNP guide for this model's architecture, with the model's likelihood noise as its
    /// starting value.
    fn amortised_guide(&self, cfg: GuideConfig) -> Result<AmortisedGuide<E, D>> {
        AmortisedGuide::new(self.device(), Self::ARCH, cfg)
    }
}

impl<E: Real, D: Device<E>, M: crate::model::bnn::Bnn<E, D>> Amortised<E, D> for M {}

impl<E: Real, D: Device<E>> AmortisedGuide<E, D> {
    /// A guide for `arch` (dense layers, Gaussian likelihood, an identity output activation) with
    /// freshly initialised parameters. Any other likelihood, an output layer with an activation, or
    /// an invalid setting in `cfg` is an [`Error::InvalidConfig`].
    pub fn new(dev: &D, arch: &'static Architecture, cfg: GuideConfig) -> Result<Self> {
        let (scale, upper) = match arch.likelihood {
            LikelihoodSpec::Gaussian { scale, upper } => (scale, upper),
            _ => {
                return Err(Error::config(
                    "likelihood",
                    arch.likelihood_name,
                    "BNNP's output layer is a Bayesian linear regression: it needs a Gaussian likelihood",
                ))
            }
        };
        if arch.layers.is_empty() {
            return Err(Error::config("layers", 0, "an architecture needs at least one layer"));
        }
        let out = &arch.layers[arch.layers.len() - 1];
        if out.activation != Activation::Identity {
            return Err(Error::config(
                "output layer activation",
                format!("{:?} on layer `{}`", out.activation, out.name),
                "BNNP's conjugate update is on the output layer's pre-activations, so that layer needs the identity activation",
            ));
        }
        if !(cfg.jitter.is_finite() && cfg.jitter >= 0.0) {
            return Err(Error::config("GuideConfig::jitter", cfg.jitter, "must be finite and >= 0"));
        }
        if let Some(w) = &cfg.inference_widths {
            if w.contains(&0) {
                return Err(Error::config("GuideConfig::inference_widths", format!("{w:?}"), "widths must be >= 1"));
            }
        }
        let mut store = ParamStore::new(dev);
        let prior = LearnedPrior::new(&mut store, arch, cfg.prior)?;
        let widths = cfg.inference_widths.clone().unwrap_or_else(|| arch.hidden_widths());
        let act = cfg.inference_activation.unwrap_or(arch.layers[0].activation);
        let (dx, dy) = (arch.d_in(), arch.d_out());
        let last = arch.layers.len() - 1;
        let mut nets = Vec::new();
        for (l, spec) in arch.layers.iter().enumerate() {
            let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(l as u64);
            let prefix = format!("infer.{}", spec.name);
            let net = if l < last {
                let extra = if cfg.inference_input == InferenceInput::DataAndLayerInput && l > 0 { spec.d_in } else { 0 };
                Some(InferenceNet::new(&mut store, &prefix, dx + dy + extra, &widths, 2 * spec.d_out, act, seed)?)
            } else if cfg.output_precision == OutputPrecision::InferenceNet {
                let extra = if cfg.inference_input == InferenceInput::DataAndLayerInput && l > 0 { spec.d_in } else { 0 };
                Some(InferenceNet::new(&mut store, &prefix, dx + dy + extra, &widths, spec.d_out, act, seed)?)
            } else {
                None
            };
            nets.push(net);
        }
        let raw = LikelihoodParams::<E, D>::new(dev, &arch.likelihood).raw.as_vec()[0].cast_to_f64();
        let noise = store.add("noise.raw", &[1], &[raw])?;
        store.set_trainable(noise, scale.is_learned());
        let _ = upper;
        Ok(Self { arch, store, prior, nets, noise, cfg })
    }

    /// The architecture.
    pub fn arch(&self) -> &'static Architecture {
        self.arch
    }

    /// The parameters.
    pub fn store(&self) -> &ParamStore<E, D> {
        &self.store
    }

    /// The parameters, mutably (freeze, release, set values).
    pub fn store_mut(&mut self) -> &mut ParamStore<E, D> {
        &mut self.store
    }

    /// The learnable prior.
    pub fn prior(&self) -> &LearnedPrior {
        &self.prior
    }

    /// Sets layer `layer`'s prior to `N(mean, diag(sd²))` (see [`LearnedPrior::set_diagonal`]).
    pub fn set_prior_diagonal(&mut self, layer: usize, mean: &[f64], sd: &[f64]) -> Result<()> {
        self.prior.set_diagonal(&mut self.store, layer, mean, sd)
    }

    /// The settings.
    pub fn config(&self) -> &GuideConfig {
        &self.cfg
    }

    /// The id of the noise parameter.
    pub fn noise_param(&self) -> ParamId {
        self.noise
    }

    /// The likelihood's parameters as core's likelihood functions read them (sharing the tensor, so
    /// gradients reach the store).
    pub fn likelihood_params(&self) -> LikelihoodParams<E, D> {
        LikelihoodParams { raw: self.store.get(self.noise).clone().reshape_like(&(Const::<1>,)) }
    }

    /// The current noise standard deviation `σ_y`.
    pub fn noise_scale(&self) -> f64 {
        crate::vi::likelihood::noise_value(&self.arch.likelihood, &self.likelihood_params()).unwrap_or(f64::NAN)
    }

    /// Sets `σ_y` (respecting the declared upper bound, if any).
    pub fn set_noise_scale(&mut self, sigma: f64) -> Result<()> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::config("sigma", sigma, "must be finite and > 0"));
        }
        let raw = match self.arch.likelihood {
            LikelihoodSpec::Gaussian { upper: Some(ub), .. } => {
                if sigma >= ub {
                    return Err(Error::config("sigma", sigma, "must be below the declared upper bound"));
                }
                let p = sigma / ub;
                (p / (1.0 - p)).ln()
            }
            _ => sigma.ln(),
        };
        self.store.set_values(self.noise, &[raw])
    }

    /// Saves the prior, the inference networks and the noise (safetensors).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.store.save(path)
    }

    /// Loads parameters saved by [`AmortisedGuide::save`] from a guide of the same architecture and
    /// settings. On error nothing changes.
    pub fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.store.load(path)
    }

    fn noise_sigma(&self, trace: bool) -> Taped<(), E, D> {
        crate::vi::likelihood::noise_scale(&self.arch.likelihood, &self.likelihood_params(), trace)
            .expect("checked Gaussian at construction")
    }

    /// Pseudo-observations `(λ, v)`, each `(Sλ, N, d_out)`, for layer `l` on context `ctx`.
    /// `layer_input` is the layer's sampled input `(S, N, d_in)` (only used with
    /// [`InferenceInput::DataAndLayerInput`]).
    fn pseudo_obs(&self, l: usize, ctx: &Dataset<E, D>, layer_input: Option<T3<E, D>>, trace: bool) -> (T3<E, D>, T3<E, D>) {
        let spec = &self.arch.layers[l];
        let n = ctx.len();
        let d_out = spec.d_out;
        let last = l + 1 == self.arch.layers.len();
        let z: Tensor<(usize, usize), E, D> = (ctx.x.clone(), ctx.y.clone()).concat_along(Axis::<1>);
        // network outputs, (Sλ·N, out)
        let (raw, sl) = match (&self.nets[l], layer_input) {
            (Some(net), Some(a)) if self.cfg.inference_input == InferenceInput::DataAndLayerInput => {
                let s = a.shape().0;
                let (dx, dy) = (ctx.x.shape().1, ctx.y.shape().1);
                let xs = ctx.x.clone().broadcast_like::<_, Axis<0>>(&(s, n, dx));
                let ys = ctx.y.clone().broadcast_like::<_, Axis<0>>(&(s, n, dy));
                let (a, tape) = a.split_tape();
                let zz = (xs.put_tape(tape), a).concat_along(Axis::<2>);
                let zz = (zz, ys).concat_along(Axis::<2>);
                let width = zz.shape().2;
                (Some(net.forward(&self.store, zz.reshape_like(&(s * n, width)), trace)), s)
            }
            (Some(net), _) => (Some(net.forward(&self.store, z.retaped(), trace)), 1),
            (None, _) => (None, 1),
        };
        let precision = |r: Taped<(usize, usize), E, D>| -> Taped<(usize, usize), E, D> {
            // λ = 1 / (σ² + 1e-6), ln σ = r − 2
            (((r - crate::num::cast::from_f64::<E>(2.0)) * crate::num::cast::from_f64::<E>(2.0)).exp()
                + crate::num::cast::from_f64::<E>(1e-6))
            .recip()
        };
        if last {
            let v = ctx.y.clone().broadcast_like::<_, Axis<0>>(&(sl, n, d_out));
            let v = (v + E::zero()).retaped();
            let lam = match raw {
                Some(r) => precision(r).reshape_like(&(sl, n, d_out)),
                None => {
                    let sigma = self.noise_sigma(trace);
                    sigma.square().recip().broadcast_like(&(1usize, n, d_out))
                }
            };
            (lam, v)
        } else {
            let r = raw.expect("hidden layers have inference networks");
            let v = fresh(r.with_empty_tape()).slice((.., 0..d_out)).reshape_like(&(sl, n, d_out));
            let rr = fresh(r).slice((.., d_out..2 * d_out));
            let lam = precision(rr).reshape_like(&(sl, n, d_out));
            (lam, v)
        }
    }

    /// Pseudo-observation values (no tape) of layer `l` on `data`; `layer_input` is the layer's
    /// sampled input (used with [`InferenceInput::DataAndLayerInput`]).
    pub(crate) fn pseudo_obs_values(
        &self,
        l: usize,
        data: &Dataset<E, D>,
        layer_input: Option<Tensor<(usize, usize, usize), E, D>>,
    ) -> (T3v<E, D>, T3v<E, D>) {
        let (lam, v) = self.pseudo_obs(l, data, layer_input.map(|a| a.retaped()), false);
        (lam.split_tape().0, v.split_tape().0)
    }

    /// One pass: the posterior given `context` (the prior when `None`), and the network outputs on
    /// the context followed by `targets`, through the same weight samples.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::bnnp::{Amortised, ForwardOptions, GuideConfig};
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 8, Relu>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<8, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    /// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[0.5, 0.1, -0.4], 1)?;
    /// let xt = dev.tensor_from_vec(vec![0.5f64, 2.0], (2usize, 1usize));
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let out = guide.forward(Some(&ctx), Some(&xt), &ForwardOptions { samples: 4, ..Default::default() }, &mut rng)?;
    /// assert_eq!(*out.f.shape(), (4, 5, 1));
    /// assert!(out.kl_value > 0.0);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn forward(
        &self,
        context: Option<&Dataset<E, D>>,
        targets: Option<&Tensor<(usize, usize), E, D>>,
        opts: &ForwardOptions,
        rng: &mut impl Rng,
    ) -> Result<AmortisedForward<E, D>> {
        self.forward_impl(context, targets, opts, usize::MAX, rng)
    }

    pub(crate) fn forward_impl(
        &self,
        context: Option<&Dataset<E, D>>,
        targets: Option<&Tensor<(usize, usize), E, D>>,
        opts: &ForwardOptions,
        keep_from: usize,
        rng: &mut impl Rng,
    ) -> Result<AmortisedForward<E, D>> {
        let arch = self.arch;
        let s = opts.samples;
        if s == 0 {
            return Err(Error::config("ForwardOptions::samples", 0, "at least one weight sample is needed"));
        }
        if let Some(c) = context {
            c.check_for(arch)?;
        }
        if let Some(x) = targets {
            crate::vi::network::check_input(arch, x)?;
        }
        let nc = context.map_or(0, |c| c.len());
        let nt = targets.map_or(0, |x| x.shape().0);
        if nc + nt == 0 {
            return Err(Error::Empty { what: "context and targets".into() });
        }
        if opts.chunk == Some(0) {
            return Err(Error::config("ForwardOptions::chunk", 0, "chunks need at least one point"));
        }
        let dev = self.store.device().clone();
        let trace = opts.trace;
        // chunks of the context: the taped one and the rest (values only)
        let chunk = opts.chunk.filter(|&c| c < nc);
        // one draw whether or not we chunk, so that chunked and unchunked passes see the same noise
        let pick_chunk: u64 = rng.gen();
        let (sel, n_chunks) = match chunk {
            Some(c) => {
                let n_chunks = nc.div_ceil(c);
                let i = (pick_chunk % n_chunks as u64) as usize;
                (i * c..((i + 1) * c).min(nc), n_chunks)
            }
            None => (0..nc, 1),
        };
        let rest_idx: Vec<usize> = (0..nc).filter(|i| !sel.contains(i)).collect();
        let n_sel = sel.len();
        let sel_idx: Vec<usize> = sel.clone().collect();
        let ctx_sel = match context {
            Some(c) if n_sel > 0 && n_chunks > 1 => Some(c.rows(&sel_idx)?),
            Some(c) if n_sel > 0 => Some(c.clone()),
            _ => None,
        };
        let ctx_rest = match context {
            Some(c) if !rest_idx.is_empty() => Some(c.rows(&rest_idx)?),
            _ => None,
        };
        let scale = n_chunks as f64;
        // the taped stream: selected context chunk, then targets
        let x_sel: Tensor<(usize, usize), E, D> = match (&ctx_sel, targets) {
            (Some(c), Some(x)) => (c.x.clone(), x.clone()).concat_along(Axis::<0>),
            (Some(c), None) => c.x.clone(),
            (None, Some(x)) => x.clone(),
            (None, None) => return Err(Error::Empty { what: "context and targets".into() }),
        };
        let n_stream = x_sel.shape().0;
        let mut a_sel: Option<T3<E, D>> = None;
        let mut a_rest: Option<Tensor<(usize, usize, usize), E, D>> = None;
        let mut kl_total: Option<Taped<(), E, D>> = None;
        let mut kl_value = 0.0;
        let mut weights = Vec::new();
        let mut states = Vec::new();
        for (l, spec) in arch.layers.iter().enumerate() {
            let k = spec.d_in + 1;
            let d_out = spec.d_out;
            let (g, kk, units) = groups(spec, self.prior.family(l));
            let (w, kl_l, kl_v, state) = if nc == 0 {
                let w = self.prior.sample_layer(&self.store, l, s, rng, trace)?;
                (w, None, 0.0, None)
            } else {
                let natural = self.prior.natural(&self.store, l, self.cfg.jitter, trace).map_err(|e| annotate(e, spec.name))?;
                let diagonal = natural.is_diagonal();
                let (prec, mean, zeta) = natural.into_parts(s, rng);
                // one noise draw for the whole context, in context order
                let eps_all: Vec<E> = crate::vi::guide::standard_normal::<E, D, _>(&dev, rng, (s, nc, d_out)).as_vec();
                let pick = |idx: &[usize]| -> Vec<E> {
                    let mut v = Vec::with_capacity(s * idx.len() * d_out);
                    for si in 0..s {
                        for &i in idx {
                            v.extend_from_slice(&eps_all[(si * nc + i) * d_out..(si * nc + i + 1) * d_out]);
                        }
                    }
                    v
                };
                // the taped chunk
                let data = match &ctx_sel {
                    None => None,
                    Some(c) => {
                        let (phi, layer_in) = match &a_sel {
                            None => {
                                let xc = c.x.clone();
                                let ones = dev.ones_like(&(n_sel, 1usize));
                                let phi: Tensor<(usize, usize), E, D> = (xc, ones).concat_along(Axis::<1>);
                                (phi.reshape_like(&(1usize, n_sel, k)).retaped::<OwnedTape<E, D>>() + E::zero(), None)
                            }
                            Some(a) => {
                                let ac = fresh(a.with_empty_tape()).slice((.., 0..n_sel, ..));
                                let li = ac.with_empty_tape();
                                (crate::kernels::activation::augment(ac), Some(li))
                            }
                        };
                        let (lam, v) = self.pseudo_obs(l, c, layer_in, trace);
                        let eps = dev.tensor_from_vec(pick(&sel_idx), (s, n_sel, d_out));
                        let (phi, lam, v) = if n_chunks > 1 {
                            (scale_grad(phi, scale), scale_grad(lam, scale), scale_grad(v, scale))
                        } else {
                            (phi, lam, v)
                        };
                        Some(DataInputs { phi, lam, v, eps })
                    }
                };
                // the other chunks, as constant natural-parameter offsets
                let offsets = match &ctx_rest {
                    None => None,
                    Some(c) => {
                        let nr = c.len();
                        let (phi_v, sphi, layer_in) = match &a_rest {
                            None => {
                                let ones = dev.ones_like(&(nr, 1usize));
                                let phi: Tensor<(usize, usize), E, D> = (c.x.clone(), ones).concat_along(Axis::<1>);
                                (phi.as_vec(), 1, None)
                            }
                            Some(a) => {
                                let phi = crate::kernels::activation::augment(a.clone());
                                (phi.as_vec(), s, Some(a.clone().retaped::<OwnedTape<E, D>>()))
                            }
                        };
                        let (lam, v) = self.pseudo_obs(l, c, layer_in, false);
                        let slam = lam.shape().0;
                        let (lam_v, v_v) = (lam.as_vec(), v.as_vec());
                        let eps_v = pick(&rest_idx);
                        let mut off = Offsets::zeros(1, s, g, kk);
                        off.accumulate(
                            &HostData { sphi, n: nr, k, phi: &phi_v, slam, d_out, lam: &lam_v, v: &v_v, eps: &eps_v },
                            s,
                            g,
                            kk,
                            units,
                        );
                        Some(off)
                    }
                };
                let inputs = LayerInputs { data, prec, mean, zeta, units, d_out, k, diagonal };
                let keep_state = l >= keep_from;
                let out = if super::lowrank::applies(&inputs, offsets.is_some(), keep_state) {
                    super::lowrank::conjugate_layer(spec.name, inputs, s, opts.kl, opts.threads)?
                } else {
                    conjugate_layer(spec.name, inputs, s, offsets.as_ref(), opts.kl, keep_state, opts.threads)?
                };
                (out.w, out.kl, out.kl_value, out.state)
            };
            states.push(state);
            kl_value += kl_v;
            if let Some(kl) = kl_l {
                kl_total = Some(match kl_total {
                    None => kl,
                    Some(t) => t + kl,
                });
            }
            let w_val: Tensor<(usize, usize, usize), E, D> = w.retaped::<NoneTape>();
            // forward the taped stream
            let input = match a_sel.take() {
                None => LayerInput::Shared(x_sel.clone()),
                Some(a) => LayerInput::Batched(a),
            };
            let next = if n_stream > 0 { Some(crate::kernels::dense::dense(input, w, spec.activation)) } else { None };
            // forward the constant chunks
            if let Some(c) = &ctx_rest {
                let input = match a_rest.take() {
                    None => LayerInput::Shared(c.x.clone()),
                    Some(a) => LayerInput::Batched(a),
                };
                a_rest = Some(crate::kernels::dense::dense(input, w_val.clone(), spec.activation));
            }
            weights.push(w_val);
            a_sel = next;
        }
        // assemble outputs in context order, then targets
        let d_out = arch.d_out();
        let f_stream = a_sel;
        let f = match (&ctx_rest, f_stream) {
            (None, Some(f)) => f,
            (Some(_), stream) => {
                let rest = a_rest.expect("forwarded with the rest");
                let before = sel.start;
                let mut parts: Vec<T3<E, D>> = Vec::new();
                if before > 0 {
                    parts.push(rest.clone().slice((.., 0..before, ..)).retaped());
                }
                if let Some(stream) = stream {
                    let (sel_f, tgt_f) = if nt > 0 {
                        (fresh(stream.with_empty_tape()).slice((.., 0..n_sel, ..)), Some(fresh(stream).slice((.., n_sel..n_stream, ..))))
                    } else {
                        (stream, None)
                    };
                    parts.push(scale_grad(sel_f, scale));
                    let after = rest.shape().1 - before;
                    if after > 0 {
                        parts.push(rest.clone().slice((.., before..before + after, ..)).retaped());
                    }
                    if let Some(t) = tgt_f {
                        parts.push(t);
                    }
                }
                let mut it = parts.into_iter();
                let mut acc = it.next().expect("at least one part");
                for p in it {
                    acc = (acc, p).concat_along(Axis::<1>);
                }
                acc
            }
            (None, None) => return Err(Error::Empty { what: "context and targets".into() }),
        };
        debug_assert_eq!(*f.shape(), (s, nc + nt, d_out));
        Ok(AmortisedForward { f, n_context: nc, kl: kl_total, kl_value, weights: Weights { layers: weights }, states })
    }

    /// The exact Gaussian posterior of every layer given `context`, as the guide computes it for
    /// one draw of the earlier layers' weights: per layer, means and covariances of every group of
    /// units (one unit for unit-wise and diagonal priors, the whole layer for layer-wise ones).
    /// Layers after the first depend on the sampled earlier weights, so they come once per sample.
    pub fn posterior_moments(&self, context: &Dataset<E, D>, samples: usize, rng: &mut impl Rng) -> Result<Vec<LayerPosterior>> {
        let x = context.x.clone().slice((0..1, ..));
        let out =
            self.forward_impl(Some(context), Some(&x), &ForwardOptions { samples, trace: false, kl: false, ..Default::default() }, 0, rng)?;
        out.states.into_iter().map(|st| LayerPosterior::from_host(st.expect("kept"))).collect()
    }

    /// Weight samples from the posterior given `context` (from the prior when `None`), no tape.
    pub fn sample_posterior(&self, context: Option<&Dataset<E, D>>, samples: usize, rng: &mut impl Rng) -> Result<Weights<E, D>> {
        let x = match context {
            Some(c) => c.x.clone().slice((0..1, ..)),
            None => {
                return self.prior.sample(&self.store, samples, rng);
            }
        };
        Ok(self.forward(context, Some(&x), &ForwardOptions { samples, trace: false, kl: false, ..Default::default() }, rng)?.weights)
    }

    /// Predictions `(S, N, d_out)` of the network at `x` under posterior samples given `context`
    /// (prior samples when `None`), no tape.
    pub fn predict(
        &self,
        context: Option<&Dataset<E, D>>,
        x: &Tensor<(usize, usize), E, D>,
        samples: usize,
        rng: &mut impl Rng,
    ) -> Result<Tensor<(usize, usize, usize), E, D>> {
        let out = self.forward(context, Some(x), &ForwardOptions { samples, trace: false, kl: false, ..Default::default() }, rng)?;
        let nc = out.n_context;
        let n = x.shape().0;
        Ok(out.f.split_tape().0.slice((.., nc..nc + n, ..)))
    }
}

/// One layer's Gaussian posterior: `distinct` copies (one per weight sample of the earlier layers,
/// or one when it does not depend on them) of `groups` independent blocks of `size` weights, in
/// `[W | b]` row order.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig, LayerPosterior, OutputPrecision, PriorConfig};
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let cfg = GuideConfig {
///     output_precision: OutputPrecision::Likelihood,
///     prior: PriorConfig { fan_in_scaled: false, ..Default::default() },
///     jitter: 0.0,
///     ..Default::default()
/// };
/// let guide = Lin::<f64, Cpu>::new(&dev).amortised_guide(cfg)?;
/// let ctx = Dataset::regression(&dev, &[-1.0, 0.0, 1.0], 1, &[-1.0, 0.0, 1.0], 1)?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let post: LayerPosterior = guide.posterior_moments(&ctx, 1, &mut rng)?.remove(0);
/// assert_eq!((post.distinct, post.groups, post.size), (1, 1, 2));
/// // precision I + Φᵀ Φ / σ² with Φ = [x, 1]: diag(1 + 200, 1 + 300)
/// assert!((post.precision[0] - 201.0).abs() < 1e-9 && (post.precision[3] - 301.0).abs() < 1e-9);
/// assert!((post.covariance[0] - 1.0 / 201.0).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPosterior {
    /// Number of distinct posteriors (1 or the number of samples).
    pub distinct: usize,
    /// Independent blocks per posterior.
    pub groups: usize,
    /// Weights per block.
    pub size: usize,
    /// Means, `(distinct, groups, size)` row-major.
    pub mean: Vec<f64>,
    /// Covariances, `(distinct, groups, size, size)` row-major.
    pub covariance: Vec<f64>,
    /// Precisions, `(distinct, groups, size, size)` row-major.
    pub precision: Vec<f64>,
}

impl LayerPosterior {
    pub(crate) fn from_host<E: Real>(st: HostPosterior<E>) -> Result<Self> {
        let (sp, g, kk) = (st.sp, st.g, st.kk);
        let precision: Vec<f64> = st.prec.iter().map(|v| v.cast_to_f64()).collect();
        let shift: Vec<f64> = st.shift.iter().map(|v| v.cast_to_f64()).collect();
        let mut covariance = vec![0.0; sp * g * kk * kk];
        let mut mean = vec![0.0; sp * g * kk];
        let mut work = vec![0.0; kk * kk];
        for i in 0..sp * g {
            let mut l = precision[i * kk * kk..(i + 1) * kk * kk].to_vec();
            crate::num::dense::cholesky(&mut l, kk).map_err(|pivot| Error::NotPositiveDefinite {
                what: "posterior precision".into(),
                index: i,
                pivot,
            })?;
            crate::num::dense::chol_inverse(&l, kk, &mut covariance[i * kk * kk..(i + 1) * kk * kk], &mut work);
            let mut m = shift[i * kk..(i + 1) * kk].to_vec();
            crate::num::dense::chol_solve(&l, kk, &mut m, 1);
            mean[i * kk..(i + 1) * kk].copy_from_slice(&m);
        }
        Ok(Self { distinct: sp, groups: g, size: kk, mean, covariance, precision })
    }
}

impl<E: Real, D: Device<E>> AmortisedGuide<E, D> {
    /// Mean per-point log posterior predictive density of `targets` given `context` (the prior when
    /// `None`): `(1/N) Σ_n ln (1/S) Σ_s p(y_n | f_s(x_n))`, a logsumexp over `samples` weight samples,
    /// with the guide's noise. No point is ever dropped.
    pub fn log_predictive(
        &self,
        context: Option<&Dataset<E, D>>,
        targets: &Dataset<E, D>,
        samples: usize,
        rng: &mut impl Rng,
    ) -> Result<f64> {
        targets.check_for(self.arch)?;
        let f = self.predict(context, &targets.x, samples, rng)?;
        let ll = crate::vi::likelihood::log_lik(&self.arch.likelihood, &self.likelihood_params(), false, f.retaped(), targets)?;
        let (s, n) = *ll.shape();
        let v = ll.split_tape().0.as_vec();
        let mut total = 0.0;
        for i in 0..n {
            let col: Vec<f64> = (0..s).map(|si| v[si * n + i].cast_to_f64()).collect();
            let m = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            total += m + (col.iter().map(|l| (l - m).exp()).sum::<f64>() / s as f64).ln();
        }
        Ok(total / n as f64)
    }
}

fn annotate(e: Error, layer: &str) -> Error {
    match e {
        Error::NotPositiveDefinite { index, pivot, .. } => {
            Error::NotPositiveDefinite { what: format!("prior of layer `{layer}`"), index, pivot }
        }
        e => e,
    }
}

/// `t` as a new tensor (same value, new id). dfdx 0.13's `slice` backward *assigns* the gradient of
/// the sliced part instead of adding it, which would erase gradients that other consumers of `t`
/// recorded; slicing a fresh copy keeps them.
pub(crate) fn fresh<S: Shape, E: Real, D: Device<E>>(t: Taped<S, E, D>) -> Taped<S, E, D> {
    t * E::one()
}

/// The same value with its gradient multiplied by `c`: `c·x − (c − 1)·const(x)`.
pub(crate) fn scale_grad<S: Shape, E: Real, D: Device<E>>(x: Taped<S, E, D>, c: f64) -> Taped<S, E, D> {
    if c == 1.0 {
        return x;
    }
    let v = crate::num::linalg::constant_of(&x);
    let scaled = x * crate::num::cast::from_f64::<E>(c) - v.clone() * crate::num::cast::from_f64::<E>(c);
    scaled + v
}
