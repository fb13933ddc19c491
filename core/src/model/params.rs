//! Parameter containers that generated models and guides are made of.
//!
//! Each is a small dfdx [`TensorCollection`], so dfdx's optimisers, `ZeroGrads`, device moves and
//! safetensors save/load work on every generated model and guide without generated math.
//! Parameters are stored as flat rank-1 tensors whose length the macro computes with the `const fn`s
//! in [`crate::model::arch`]; core reads them through runtime-shaped views.

use dfdx::prelude::*;

use crate::{Real, Result};

/// A flat `(loc, log_scale)` pair of parameter vectors: a Normal per entry.
///
/// Used for prior hyperparameters (one entry per layer, unit or weight) and for mean-field guide
/// parameters (one entry per weight). Scales are stored as `ln σ`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::NormalParams;
/// let dev = Cpu::default();
/// let p = NormalParams::<3, f32, Cpu>::filled(&dev, 0.5, 2.0);
/// assert_eq!(p.loc.array(), [0.5; 3]);
/// assert!((p.log_scale.array()[0] - 2f32.ln()).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct NormalParams<const N: usize, E: Dtype, D: Storage<E>> {
    /// Locations.
    pub loc: Tensor<Rank1<N>, E, D>,
    /// Log scales, `ln σ`.
    pub log_scale: Tensor<Rank1<N>, E, D>,
}

impl<const N: usize, E: Real, D: Device<E>> NormalParams<N, E, D> {
    /// Every entry `N(loc, scale²)`.
    pub fn filled(dev: &D, loc: f64, scale: f64) -> Self {
        Self {
            loc: dev.tensor([crate::num::cast::from_f64::<E>(loc); N]),
            log_scale: dev.tensor([crate::num::cast::from_f64::<E>(scale.ln()); N]),
        }
    }

    /// From explicit values (`scale` as standard deviations). Lengths must be `N`.
    pub fn from_values(dev: &D, loc: &[f64], scale: &[f64]) -> Result<Self> {
        for (what, v) in [("loc", loc), ("scale", scale)] {
            if v.len() != N {
                return Err(crate::Error::Shape { what: what.into(), expected: format!("({N},)"), got: format!("({},)", v.len()) });
            }
        }
        let l: Vec<E> = loc.iter().map(|&v| crate::num::cast::from_f64::<E>(v)).collect();
        let s: Vec<E> = scale.iter().map(|&v| crate::num::cast::from_f64::<E>(v.ln())).collect();
        Ok(Self { loc: dev.tensor_from_vec(l, (Const::<N>,)), log_scale: dev.tensor_from_vec(s, (Const::<N>,)) })
    }

    /// Runtime-shaped views sharing storage (and tensor ids) with the parameters.
    pub fn view(&self) -> NormalView<E, D> {
        NormalView { loc: self.loc.clone().reshape_like(&(N,)), log_scale: self.log_scale.clone().reshape_like(&(N,)) }
    }

    /// Overwrites the parameters with values from a view of the same length.
    pub fn assign(&mut self, view: &NormalView<E, D>) -> Result<()> {
        if view.len() != N {
            return Err(crate::Error::Shape {
                what: "parameter view".into(),
                expected: format!("({N},)"),
                got: format!("({},)", view.len()),
            });
        }
        self.loc = view.loc.clone().reshape_like(&(Const::<N>,));
        self.log_scale = view.log_scale.clone().reshape_like(&(Const::<N>,));
        Ok(())
    }
}

impl<const N: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for NormalParams<N, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = NormalParams<N, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("loc", |s| &s.loc, |s| &mut s.loc, TensorOptions::reset_to_zeros()),
                Self::tensor("log_scale", |s| &s.log_scale, |s| &mut s.log_scale, TensorOptions::reset_to_zeros()),
            ),
            |(loc, log_scale)| NormalParams { loc, log_scale },
        )
    }
}

/// Runtime-shaped `(loc, log_scale)` vectors; clones share storage with the parameters they view.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::NormalView;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.5, 2.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let model = Lin::<f64, Cpu>::new(&Cpu::default());
/// let view: NormalView<f64, Cpu> = model.prior_params()[0].weight.clone();
/// assert_eq!(view.len(), 1); // one pair for the whole layer
/// assert_eq!(view.loc.as_vec(), vec![0.5]);
/// assert!((view.log_scale.as_vec()[0] - 2.0f64.ln()).abs() < 1e-12);
/// ```
#[derive(Debug, Clone)]
pub struct NormalView<E: Dtype, D: Storage<E>> {
    /// Locations, shape `(n,)`.
    pub loc: Tensor<(usize,), E, D>,
    /// Log scales, shape `(n,)`.
    pub log_scale: Tensor<(usize,), E, D>,
}

impl<E: Dtype, D: Storage<E>> NormalView<E, D> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.loc.shape().0
    }
    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layer's prior hyperparameters: a weight part and (possibly empty) separate bias part.
///
/// `NW` and `NB` come from [`crate::model::arch::prior_weight_len`] and [`crate::model::arch::prior_bias_len`].
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
/// use weightspace::DensePrior;
/// let model = Net::<f32, Cpu>::new(&Cpu::default());
/// // the generated field `h` is a DensePrior with one weight pair per unit and a tied bias
/// let h: &DensePrior<4, 0, f32, Cpu> = &model.h;
/// assert_eq!(h.weight.loc.as_vec(), vec![0.0; 4]);
/// assert!(h.view().bias.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct DensePrior<const NW: usize, const NB: usize, E: Dtype, D: Storage<E>> {
    /// Weight-prior parameters.
    pub weight: NormalParams<NW, E, D>,
    /// Bias-prior parameters (length 0 when the bias shares the weight prior's entries).
    pub bias: NormalParams<NB, E, D>,
}

impl<const NW: usize, const NB: usize, E: Real, D: Device<E>> DensePrior<NW, NB, E, D> {
    /// Initialises from a layer declaration.
    pub fn new(dev: &D, spec: &crate::model::arch::LayerSpec) -> Self {
        let b = spec.bias_spec();
        Self {
            weight: NormalParams::filled(dev, spec.prior.loc.value(), spec.prior.scale.value()),
            bias: NormalParams::filled(dev, b.loc.value(), b.scale.value()),
        }
    }
    /// Runtime views of `(weight, bias)`; the bias part is `None` when it is tied to the weights.
    pub fn view(&self) -> PriorView<E, D> {
        PriorView { weight: self.weight.view(), bias: (NB > 0).then(|| self.bias.view()) }
    }
}

impl<const NW: usize, const NB: usize, E: Dtype, D: Device<E>> TensorCollection<E, D> for DensePrior<NW, NB, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = DensePrior<NW, NB, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        if NB == 0 {
            // A tied bias has no parameters of its own: nothing to visit, save or optimise.
            visitor.visit_fields((Self::module("weight", |s| &s.weight, |s| &mut s.weight),), |(weight,)| {
                let dev = weight.loc.device().clone();
                DensePrior { bias: NormalParams { loc: dev.zeros(), log_scale: dev.zeros() }, weight }
            })
        } else {
            visitor.visit_fields(
                (Self::module("weight", |s| &s.weight, |s| &mut s.weight), Self::module("bias", |s| &s.bias, |s| &mut s.bias)),
                |(weight, bias)| DensePrior { weight, bias },
            )
        }
    }
}

/// Runtime views of one layer's prior parameters.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Net {
///     #[layer(prior = Normal(0.0, 1.0), per = weight)]
///     h: Dense<2, 3, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))]
///     out: Dense<3, 1>,
///     #[likelihood]
///     noise: Gaussian<Fixed<0.1>>,
/// }
/// let model = Net::<f32, Cpu>::new(&Cpu::default());
/// let views: Vec<weightspace::PriorView<f32, Cpu>> = model.prior_params();
/// // per-weight priors give the biases their own entries
/// assert_eq!(views[0].weight.len(), 6);
/// assert_eq!(views[0].bias.as_ref().map(|b| b.len()), Some(3));
/// // a layer-wide prior shares one pair with the biases
/// assert_eq!(views[1].weight.len(), 1);
/// assert!(views[1].bias.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct PriorView<E: Dtype, D: Storage<E>> {
    /// Weight part.
    pub weight: NormalView<E, D>,
    /// Bias part (`None` when the biases share the weight prior's entries).
    pub bias: Option<NormalView<E, D>>,
}

/// Parameters of the observation model: the raw (unconstrained) Gaussian noise parameter, or
/// nothing for categorical and Bernoulli likelihoods.
///
/// For a Gaussian, `raw = ln σ`, or `logit(σ / upper)` when an upper bound is declared.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<0.5>> }
/// let model = Lin::<f64, Cpu>::new(&Cpu::default());
/// let raw = model.likelihood_params().raw.as_vec()[0];
/// assert!((raw - 0.5f64.ln()).abs() < 1e-12); // raw = ln σ without an upper bound
/// assert_eq!(model.noise_scale(), Some(0.5));
/// ```
#[derive(Debug, Clone)]
pub struct LikelihoodParams<E: Dtype, D: Storage<E>> {
    /// The raw noise parameter, shape `(1,)`.
    pub raw: Tensor<Rank1<1>, E, D>,
}

impl<E: Real, D: Device<E>> LikelihoodParams<E, D> {
    /// Initialises from the declaration.
    pub fn new(dev: &D, spec: &crate::model::arch::LikelihoodSpec) -> Self {
        let raw = match *spec {
            crate::model::arch::LikelihoodSpec::Gaussian { scale, upper: Some(ub) } => {
                let p = (scale.value() / ub).clamp(1e-12, 1.0 - 1e-12);
                (p / (1.0 - p)).ln()
            }
            crate::model::arch::LikelihoodSpec::Gaussian { scale, upper: None } => scale.value().ln(),
            _ => 0.0,
        };
        Self { raw: dev.tensor([crate::num::cast::from_f64::<E>(raw)]) }
    }
}

impl<E: Dtype, D: Device<E>> TensorCollection<E, D> for LikelihoodParams<E, D> {
    type To<E2: Dtype, D2: Device<E2>> = LikelihoodParams<E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> std::result::Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields((Self::tensor("raw", |s| &s.raw, |s| &mut s.raw, TensorOptions::reset_to_zeros()),), |(raw,)| {
            LikelihoodParams { raw }
        })
    }
}

/// Whether every parameter of a collection is finite. The check reduces on the device
/// (`Σ 0·θ` is NaN exactly when some θ is not finite) and reads back one scalar per tensor.
pub(crate) fn all_finite<E: crate::Real, D: Device<E>, M: TensorCollection<E, D>>(m: &M) -> bool {
    struct Check(bool);
    impl<E: crate::Real, D: Device<E>> dfdx::nn::tensor_collection::TensorVisitor<E, D> for Check {
        type Viewer = dfdx::nn::tensor_collection::ViewTensorRef;
        type Err = D::Err;
        type E2 = E;
        type D2 = D;
        fn visit<S: Shape>(
            &mut self,
            _: TensorOptions<S, E, D>,
            t: &Tensor<S, E, D>,
        ) -> std::result::Result<Option<Tensor<S, E, D>>, D::Err> {
            if self.0 && t.shape().num_elements() > 0 {
                let probe = (t.clone() * E::zero()).sum::<(), _>();
                self.0 = probe.as_vec()[0].is_finite();
            }
            Ok(None)
        }
    }
    let mut c = Check(true);
    let _ = M::iter_tensors(&mut dfdx::nn::tensor_collection::RecursiveWalker { m, f: &mut c });
    c.0
}
