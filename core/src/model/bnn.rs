//! The [`Bnn`] trait that every `#[bnn]` model implements, and the weight-sample container.

use dfdx::prelude::*;

use crate::model::arch::Architecture;
use crate::model::params::{LikelihoodParams, NormalView, PriorView};
use crate::Real;

/// A declared Bayesian neural network: its architecture, its learnable prior and likelihood
/// parameters, and its mean-field guide type. Implemented by the `#[bnn]` macro, and holding only
/// what generated code must provide; the conveniences built on it (`mean_field`, `sample_prior`,
/// `forward`, log densities) are in [`BnnExt`](crate::BnnExt), implemented for every `Bnn`.
///
/// ```
/// use weightspace::prelude::*;
///
/// #[bnn]
/// struct Tiny {
///     #[layer(prior = Normal(0.0, 1.0))]
///     hidden: Dense<2, 3, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))]
///     out: Dense<3, 1>,
///     #[likelihood]
///     noise: Gaussian<Fixed<0.1>>,
/// }
///
/// let dev = Cpu::default();
/// let model = Tiny::<f32, Cpu>::new(&dev);
/// assert_eq!(Tiny::<f32, Cpu>::ARCH.num_weights(), 3 * 3 + 4);
/// assert_eq!(model.prior_params().len(), 2);
/// ```
pub trait Bnn<E: Real, D: Device<E>>: TensorCollection<E, D, To<E, D> = Self> + Clone {
    /// The mean-field guide generated for this model.
    type Guide: MeanFieldGuide<E, D>;

    /// The declaration, as data.
    const ARCH: &'static Architecture;

    /// The device the parameters live on.
    fn device(&self) -> &D;

    /// Runtime views of every layer's prior parameters, in layer order.
    fn prior_params(&self) -> Vec<PriorView<E, D>>;

    /// The likelihood's parameters.
    fn likelihood_params(&self) -> &LikelihoodParams<E, D>;

    /// Builds a guide from per-layer `(loc, scale)` host values (one pair per layer, row-major `(d_out, d_in + 1)` with the bias last in each row).
    fn guide_from_values(&self, values: &[(Vec<f64>, Vec<f64>)]) -> crate::Result<Self::Guide>;
}

/// Checks that `weights` has one `(S, d_out, d_in + 1)` tensor per layer of `arch`, `S ≥ 1`.
pub(crate) fn check_weights<E: Real, D: Device<E>, T>(arch: &Architecture, weights: &Weights<E, D, T>) -> crate::Result<()> {
    if weights.layers.len() != arch.layers.len() {
        return Err(crate::Error::Shape {
            what: "weights (number of layers)".into(),
            expected: arch.layers.len().to_string(),
            got: weights.layers.len().to_string(),
        });
    }
    let s = weights.num_samples();
    if s == 0 {
        return Err(crate::Error::Empty { what: "weight samples".into() });
    }
    for (spec, w) in arch.layers.iter().zip(&weights.layers) {
        let want = (s, spec.d_out, spec.d_in + 1);
        if *w.shape() != want {
            return Err(crate::Error::Shape {
                what: format!("weights of layer `{}`", spec.name),
                expected: format!("{want:?}"),
                got: format!("{:?}", w.shape()),
            });
        }
    }
    Ok(())
}

/// A mean-field Gaussian guide: a `(loc, log_scale)` pair per weight, one [`NormalView`] per layer.
/// Implemented by the generated `{Model}Guide` types.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Tiny { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let model = Tiny::<f64, Cpu>::new(&Cpu::default());
/// let guide = model.mean_field();
/// let views = guide.layer_params();
/// assert_eq!(views.iter().map(|v| v.len()).collect::<Vec<_>>(), vec![3 * 3, 1 * 4]);
/// // the default initialisation: every scale 0.1
/// assert!(views[0].log_scale.as_vec().iter().all(|&l| (l - 0.1f64.ln()).abs() < 1e-12));
/// ```
pub trait MeanFieldGuide<E: Real, D: Device<E>>: TensorCollection<E, D, To<E, D> = Self> + Clone {
    /// Per-layer views of the variational parameters, in layer order. Each has
    /// `d_out · (d_in + 1)` entries laid out as the rows of `[W | b]`.
    fn layer_params(&self) -> Vec<NormalView<E, D>>;
}

/// A rank-3 runtime-shaped tensor: `(S, rows, cols)`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::Tensor3;
/// let dev = Cpu::default();
/// let t: Tensor3<f32, Cpu> = dev.zeros_like(&(2, 3, 4));
/// assert_eq!(*t.shape(), (2, 3, 4));
/// ```
pub type Tensor3<E, D, T = NoneTape> = Tensor<(usize, usize, usize), E, D, T>;

/// `S` weight samples of every layer. Layer `l` holds a tensor of shape `(S, d_out, d_in + 1)`:
/// row `d` of sample `s` is output unit `d`'s incoming weights followed by its bias.
///
/// This is the layout that flatten/unflatten, symmetry actions and layerwise methods share.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Tiny { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Tiny::<f64, Cpu>::new(&dev);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w: Weights<f64, Cpu> = model.sample_prior(5, &mut rng)?;
/// assert_eq!(w.num_samples(), 5);
/// assert_eq!(*w.layers[0].shape(), (5, 3, 3)); // (S, d_out, d_in + 1)
/// let flat = w.to_flat();
/// assert_eq!(flat[0].len(), Tiny::<f64, Cpu>::ARCH.num_weights());
/// let back = Weights::<f64, Cpu>::from_flat(&dev, Tiny::<f64, Cpu>::ARCH, &flat)?;
/// assert_eq!(back.to_flat(), flat);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Weights<E: Dtype, D: Storage<E>, T = NoneTape> {
    /// One `(S, d_out, d_in + 1)` tensor per layer.
    pub layers: Vec<Tensor3<E, D, T>>,
}

impl<E: Real, D: Device<E>, T> Weights<E, D, T> {
    /// Number of weight samples `S`.
    pub fn num_samples(&self) -> usize {
        self.layers.first().map_or(0, |t| t.shape().0)
    }
}

impl<E: Real, D: Device<E>> Weights<E, D> {
    /// Flattens to a row-major `(S, P)` host matrix, `P` the number of weights, layers in order and
    /// each layer's `[W | b]` rows in order.
    pub fn to_flat(&self) -> Vec<Vec<f64>> {
        let s = self.num_samples();
        let mut out = vec![Vec::new(); s];
        for t in &self.layers {
            let (_, o, i1) = *t.shape();
            let v = t.as_vec();
            for (si, row) in out.iter_mut().enumerate() {
                row.extend(v[si * o * i1..(si + 1) * o * i1].iter().map(|x| x.cast_to_f64()));
            }
        }
        out
    }

    /// Inverse of [`Weights::to_flat`] for `arch`.
    pub fn from_flat(dev: &D, arch: &Architecture, flat: &[Vec<f64>]) -> crate::Result<Self> {
        let p = arch.num_weights();
        if flat.is_empty() {
            return Err(crate::Error::Empty { what: "weight samples".into() });
        }
        if let Some(row) = flat.iter().find(|r| r.len() != p) {
            return Err(crate::Error::Shape {
                what: "flat weight sample".into(),
                expected: format!("({p},)"),
                got: format!("({},)", row.len()),
            });
        }
        for (si, row) in flat.iter().enumerate() {
            crate::error::check_finite(&format!("flat weight sample {si}"), row)?;
        }
        let s = flat.len();
        let mut layers = Vec::with_capacity(arch.layers.len());
        let mut off = 0;
        for l in arch.layers {
            let n = l.num_weights();
            let mut v = Vec::with_capacity(s * n);
            for row in flat {
                v.extend(row[off..off + n].iter().map(|&x| crate::num::cast::from_f64::<E>(x)));
            }
            layers.push(dev.tensor_from_vec(v, (s, l.d_out, l.d_in + 1)));
            off += n;
        }
        Ok(Self { layers })
    }
}
