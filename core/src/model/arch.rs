//! Runtime description of a declared BNN: layers, widths, activations, priors and likelihood.
//!
//! The `#[bnn]` macro emits one `'static` [`Architecture`] per model. Everything in core that must
//! know the structure of a network (priors, guides, symmetry, BALI, MCMC) reads it from here, so the
//! generated code stays a thin description.

use std::fmt;

pub use crate::kernels::activation::Activation;

/// A prior hyperparameter: fixed, or learned from an initial value.
///
/// ```
/// use weightspace::Param;
/// assert_eq!(Param::Learned(1.0).value(), 1.0);
/// assert!(Param::Learned(1.0).is_learned());
/// assert!(!Param::Fixed(0.0).is_learned());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param {
    /// A constant.
    Fixed(f64),
    /// A trainable parameter with this initial value.
    Learned(f64),
}

impl Param {
    /// The fixed value, or the initial value of a learned one.
    pub const fn value(self) -> f64 {
        match self {
            Param::Fixed(v) | Param::Learned(v) => v,
        }
    }
    /// Whether the value is trained.
    pub const fn is_learned(self) -> bool {
        matches!(self, Param::Learned(_))
    }
}

/// How many prior parameters a layer has: one pair per layer, per output unit or per weight.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Net {
///     #[layer(prior = Normal(0.0, Learned(1.0)), per = unit)]
///     h: Dense<2, 4, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))]
///     out: Dense<4, 1>,
///     #[likelihood]
///     noise: Gaussian<Fixed<0.1>>,
/// }
/// let arch = Net::<f32, Cpu>::ARCH;
/// assert_eq!(arch.layers[0].prior.per, Granularity::Unit);
/// assert_eq!(arch.layers[1].prior.per, Granularity::Layer);
/// // one (loc, scale) pair per output unit of `h`
/// let model = Net::<f32, Cpu>::new(&Cpu::default());
/// assert_eq!(model.prior_params()[0].weight.len(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One `(loc, scale)` pair shared by the whole layer.
    Layer,
    /// One pair per output unit, shared by that unit's incoming weights (and bias, when tied).
    Unit,
    /// One pair per weight.
    Weight,
}

/// A Normal prior `N(loc, scale²)` over a group of weights.
///
/// ```
/// use weightspace::{Granularity, NormalSpec, Param};
/// let spec = NormalSpec { loc: Param::Fixed(0.0), scale: Param::Learned(1.0), per: Granularity::Unit, fan_in_scaled: true };
/// // fan-in scaling divides the scale by sqrt(d_in + 1)
/// assert!((spec.effective_scale(3) - 0.5).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormalSpec {
    /// Location.
    pub loc: Param,
    /// Scale (standard deviation), before fan-in scaling. Always positive.
    pub scale: Param,
    /// Parameter sharing.
    pub per: Granularity,
    /// Divide the scale by `sqrt(d_in + 1)`.
    pub fan_in_scaled: bool,
}

impl NormalSpec {
    /// The standard `N(0, 1)` prior, one pair per layer.
    pub const STANDARD: NormalSpec =
        NormalSpec { loc: Param::Fixed(0.0), scale: Param::Fixed(1.0), per: Granularity::Layer, fan_in_scaled: false };

    /// Initial scale after fan-in scaling, for a layer with `d_in` inputs.
    pub fn effective_scale(&self, d_in: usize) -> f64 {
        self.scale.value() * self.fan_in_factor(d_in)
    }

    /// `1/sqrt(d_in + 1)` when fan-in scaled, else 1.
    pub fn fan_in_factor(&self, d_in: usize) -> f64 {
        if self.fan_in_scaled {
            1.0 / ((d_in + 1) as f64).sqrt()
        } else {
            1.0
        }
    }
}

/// One dense layer `a ↦ act(W a + b)`, `W ∈ R^{d_out × d_in}`.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let h: &LayerSpec = &Net::<f32, Cpu>::ARCH.layers[0];
/// assert_eq!((h.name, h.d_in, h.d_out), ("h", 2, 4));
/// assert_eq!(h.activation, Activation::Tanh);
/// assert_eq!(h.num_weights(), 4 * (2 + 1));
/// assert_eq!(h.bias_spec(), h.prior); // no separate bias prior declared
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    /// Field name in the declaration (used in parameter paths and error messages).
    pub name: &'static str,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Activation applied to the output.
    pub activation: Activation,
    /// Prior over the weights (and over the biases when `bias_prior` is `None`).
    pub prior: NormalSpec,
    /// A separate prior for the biases. With `None`, biases share the weight prior: the same
    /// parameter for `Layer` and `Unit` granularity, their own entries for `Weight`.
    pub bias_prior: Option<NormalSpec>,
}

impl LayerSpec {
    /// Number of weights and biases, `d_out · (d_in + 1)`.
    pub const fn num_weights(&self) -> usize {
        self.d_out * (self.d_in + 1)
    }
    /// The prior spec that governs the biases.
    pub fn bias_spec(&self) -> NormalSpec {
        match self.bias_prior {
            Some(b) => b,
            None => NormalSpec { fan_in_scaled: self.prior.fan_in_scaled, ..self.prior },
        }
    }
}

/// Length of a layer's weight-prior parameter vectors.
///
/// ```
/// // named by the code `#[bnn]` generates
/// use weightspace::__private::{prior_weight_len, Granularity};
/// assert_eq!(prior_weight_len(3, 5, Granularity::Layer), 1);
/// assert_eq!(prior_weight_len(3, 5, Granularity::Unit), 5);
/// assert_eq!(prior_weight_len(3, 5, Granularity::Weight), 15);
/// ```
pub const fn prior_weight_len(d_in: usize, d_out: usize, per: Granularity) -> usize {
    match per {
        Granularity::Layer => 1,
        Granularity::Unit => d_out,
        Granularity::Weight => d_out * d_in,
    }
}

/// Length of a layer's bias-prior parameter vectors. `separate` is the granularity of a separate
/// bias prior, if declared; tied layer- and unit-wise priors need no bias entries of their own.
///
/// ```
/// // named by the code `#[bnn]` generates
/// use weightspace::__private::{prior_bias_len, Granularity};
/// assert_eq!(prior_bias_len(5, Granularity::Unit, None), 0);
/// assert_eq!(prior_bias_len(5, Granularity::Weight, None), 5);
/// assert_eq!(prior_bias_len(5, Granularity::Unit, Some(Granularity::Layer)), 1);
/// ```
pub const fn prior_bias_len(d_out: usize, per: Granularity, separate: Option<Granularity>) -> usize {
    match separate {
        Some(Granularity::Layer) => 1,
        Some(_) => d_out,
        None => match per {
            Granularity::Weight => d_out,
            _ => 0,
        },
    }
}

/// Observation model.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Reg { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood(upper = 2.0)] noise: Gaussian<Learned<0.5>> }
/// #[bnn]
/// struct Clf { #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 3>, #[likelihood] y: Categorical }
/// assert_eq!(
///     Reg::<f32, Cpu>::ARCH.likelihood,
///     LikelihoodSpec::Gaussian { scale: Param::Learned(0.5), upper: Some(2.0) }
/// );
/// assert!(!Reg::<f32, Cpu>::ARCH.likelihood.is_classification());
/// assert_eq!(Clf::<f32, Cpu>::ARCH.likelihood, LikelihoodSpec::Categorical);
/// assert!(Clf::<f32, Cpu>::ARCH.likelihood.is_classification());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LikelihoodSpec {
    /// `y ~ N(f(x), σ²)` per output; `σ` fixed or learned, optionally bounded above
    /// (`σ = upper · sigmoid(raw)`).
    Gaussian {
        /// Noise standard deviation.
        scale: Param,
        /// Upper bound for a learned σ.
        upper: Option<f64>,
    },
    /// `y ~ Categorical(softmax(f(x)))` with labels `0..d_out`.
    Categorical,
    /// `y ~ Bernoulli(sigmoid(f(x)))`, labels 0/1, `d_out == 1`.
    Bernoulli,
}

impl LikelihoodSpec {
    /// Whether targets are class labels.
    pub fn is_classification(&self) -> bool {
        !matches!(self, LikelihoodSpec::Gaussian { .. })
    }
}

/// The whole declaration, as data.
///
/// ```
/// use weightspace::*;
/// static LAYERS: [LayerSpec; 1] = [LayerSpec {
///     name: "out", d_in: 2, d_out: 1, activation: Activation::Identity,
///     prior: NormalSpec::STANDARD, bias_prior: None,
/// }];
/// let arch = Architecture {
///     name: "Linear",
///     layers: &LAYERS,
///     likelihood_name: "noise",
///     likelihood: LikelihoodSpec::Gaussian { scale: Param::Fixed(0.1), upper: None },
/// };
/// assert_eq!(arch.d_in(), 2);
/// assert_eq!(arch.num_weights(), 3);
/// assert_eq!(arch.to_string(), "Linear: out 2->1 identity; noise gaussian");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Architecture {
    /// Model name (the struct's identifier).
    pub name: &'static str,
    /// Layers in forward order.
    pub layers: &'static [LayerSpec],
    /// Field name of the likelihood.
    pub likelihood_name: &'static str,
    /// Observation model.
    pub likelihood: LikelihoodSpec,
}

impl Architecture {
    /// Number of input features.
    pub fn d_in(&self) -> usize {
        self.layers.first().map_or(0, |l| l.d_in)
    }
    /// Number of network outputs.
    pub fn d_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.d_out)
    }
    /// Total number of weights and biases.
    pub fn num_weights(&self) -> usize {
        self.layers.iter().map(|l| l.num_weights()).sum()
    }
    /// Widths of the hidden layers (outputs of every layer but the last).
    pub fn hidden_widths(&self) -> Vec<usize> {
        self.layers[..self.layers.len().saturating_sub(1)].iter().map(|l| l.d_out).collect()
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}->{} {}", l.name, l.d_in, l.d_out, l.activation)?;
        }
        let lik = match self.likelihood {
            LikelihoodSpec::Gaussian { .. } => "gaussian",
            LikelihoodSpec::Categorical => "categorical",
            LikelihoodSpec::Bernoulli => "bernoulli",
        };
        write!(f, "; {} {}", self.likelihood_name, lik)
    }
}
