//! Online last-layer updates: cache the earlier layers' weight samples and fold new data into the
//! output layer's conjugate posterior, exactly, without recomputing anything else.

use dfdx::prelude::*;
use rand::Rng;

use super::conjugate::{HostData, HostPosterior, Offsets};
use super::guide::{AmortisedGuide, ForwardOptions, LayerPosterior};
use super::prior::groups;
use crate::kernels::dense::LayerInput;
use crate::model::arch::Architecture;
use crate::model::bnn::Weights;
use crate::model::data::Dataset;
use crate::{Error, Real, Result};

/// A posterior whose earlier layers are frozen at cached samples and whose output layer is updated
/// online. Created by [`AmortisedGuide::online`].
///
/// After `update(d₂)` the output layer's posterior is exactly the one the guide computes from
/// `d₁ ∪ d₂` for the same earlier-layer samples (its pseudo-observations are the real targets, with
/// pseudo-precisions from the output layer's inference network or the likelihood noise).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{Amortised, GuideConfig};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] h: Dense<1, 8, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<8, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let guide = Net::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let first = Dataset::regression(&dev, &[-1.0, 0.0], 1, &[0.3, 0.1], 1)?;
/// let mut online = guide.online(&first, 16, &mut rng)?;
/// online.update(&guide, &Dataset::regression(&dev, &[1.0], 1, &[-0.2], 1)?, &mut rng)?;
/// assert_eq!(online.points_seen(), 3);
/// let f = online.predict(&dev.tensor_from_vec(vec![0.5f64], (1usize, 1usize)))?;
/// assert_eq!(*f.shape(), (16, 1, 1));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OnlineLastLayer<E: Dtype, D: Storage<E>> {
    arch: &'static Architecture,
    /// Samples of every layer but the last.
    prefix: Vec<Tensor<(usize, usize, usize), E, D>>,
    /// The last layer's natural parameters.
    state: Offsets<E>,
    last: Tensor<(usize, usize, usize), E, D>,
    samples: usize,
    seen: usize,
}

impl<E: Real, D: Device<E>> AmortisedGuide<E, D> {
    /// Starts online inference from `context`: samples every layer from the guide's posterior,
    /// caches all but the last, and keeps the last layer's natural parameters.
    pub fn online(&self, context: &Dataset<E, D>, samples: usize, rng: &mut impl Rng) -> Result<OnlineLastLayer<E, D>> {
        let x = context.x.clone().slice((0..1, ..));
        let out = self.forward_impl(
            Some(context),
            Some(&x),
            &ForwardOptions { samples, trace: false, kl: false, ..Default::default() },
            self.arch().layers.len() - 1,
            rng,
        )?;
        let mut layers = out.weights.layers;
        let last = layers.pop().expect("at least one layer");
        let st: HostPosterior<E> = out.states.into_iter().last().flatten().expect("kept");
        let state = Offsets { so: st.sp, dp: st.prec, dh: st.shift, db: st.sample_shift };
        Ok(OnlineLastLayer { arch: self.arch(), prefix: layers, state, last, samples, seen: context.len() })
    }
}

impl<E: Real, D: Device<E>> OnlineLastLayer<E, D> {
    /// Number of weight samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Data points folded in so far.
    pub fn points_seen(&self) -> usize {
        self.seen
    }

    /// Activations of the last hidden layer `(S, N, d)` under the cached samples (`None` for a
    /// single-layer network).
    fn hidden(&self, x: &Tensor<(usize, usize), E, D>) -> Option<Tensor<(usize, usize, usize), E, D>> {
        let mut h = LayerInput::Shared(x.clone());
        let mut out = None;
        for (w, spec) in self.prefix.iter().zip(self.arch.layers) {
            let a = crate::kernels::dense::dense(h, w.clone(), spec.activation);
            out = Some(a.clone());
            h = LayerInput::Batched(a);
        }
        out
    }

    /// Folds `data` into the output layer's posterior and redraws its samples (the old data keep
    /// their noise; the new points get fresh noise).
    pub fn update(&mut self, guide: &AmortisedGuide<E, D>, data: &Dataset<E, D>, rng: &mut impl Rng) -> Result<()> {
        if guide.arch() != self.arch {
            return Err(Error::config("guide", guide.arch().name, "is not the guide this online state was started from"));
        }
        data.check_for(self.arch)?;
        let l = self.arch.layers.len() - 1;
        let spec = &self.arch.layers[l];
        let (g, kk, units) = groups(spec, guide.prior().family(l));
        let (k, d_out, s, n) = (spec.d_in + 1, spec.d_out, self.samples, data.len());
        let hidden = self.hidden(&data.x);
        let (phi, sphi) = match &hidden {
            None => {
                let ones = data.x.device().ones_like(&(n, 1usize));
                let phi: Tensor<(usize, usize), E, D> = (data.x.clone(), ones).concat_along(Axis::<1>);
                (phi.as_vec(), 1)
            }
            Some(a) => (crate::kernels::activation::augment(a.clone()).as_vec(), s),
        };
        let (lam, v) = guide.pseudo_obs_values(l, data, hidden);
        let slam = lam.shape().0;
        let eps: Vec<E> = crate::vi::guide::standard_normal::<E, D, _>(data.x.device(), rng, (s, n, d_out)).as_vec();
        let (lam_v, v_v) = (lam.as_vec(), v.as_vec());
        self.state.accumulate(&HostData { sphi, n, k, phi: &phi, slam, d_out, lam: &lam_v, v: &v_v, eps: &eps }, s, g, kk, units);
        // w = P⁻¹ b per sample
        let so = self.state.so;
        let mut w = vec![E::zero(); s * g * kk];
        for gi in 0..g {
            for oi in 0..so {
                let mut p = self.state.dp[(oi * g + gi) * kk * kk..][..kk * kk].to_vec();
                crate::num::dense::cholesky(&mut p, kk).map_err(|pivot| Error::NotPositiveDefinite {
                    what: "online output-layer precision".into(),
                    index: oi * g + gi,
                    pivot,
                })?;
                let range = if so > 1 { oi..oi + 1 } else { 0..s };
                for si in range {
                    let b = &mut w[(si * g + gi) * kk..][..kk];
                    b.copy_from_slice(&self.state.db[(si * g + gi) * kk..][..kk]);
                    crate::num::dense::chol_solve(&p, kk, b, 1);
                }
            }
        }
        self.last = data.x.device().tensor_from_vec(w, (s, d_out, k));
        self.seen += n;
        Ok(())
    }

    /// All layers' current samples.
    pub fn weights(&self) -> Weights<E, D> {
        let mut layers = self.prefix.clone();
        layers.push(self.last.clone());
        Weights { layers }
    }

    /// The output layer's current posterior (one per sample of the earlier layers).
    pub fn posterior(&self, guide: &AmortisedGuide<E, D>) -> Result<LayerPosterior> {
        let l = self.arch.layers.len() - 1;
        let spec = &self.arch.layers[l];
        let (g, kk, _) = groups(spec, guide.prior().family(l));
        let st = HostPosterior {
            sp: self.state.so,
            g,
            kk,
            prec: self.state.dp.clone(),
            shift: self.state.dh.clone(),
            sample_shift: self.state.db.clone(),
        };
        LayerPosterior::from_host(st)
    }

    /// Network outputs `(S, N, d_out)` at `x` under the current samples.
    pub fn predict(&self, x: &Tensor<(usize, usize), E, D>) -> Result<Tensor<(usize, usize, usize), E, D>> {
        crate::vi::network::check_input(self.arch, x)?;
        let input = match self.hidden(x) {
            None => LayerInput::Shared(x.clone()),
            Some(a) => LayerInput::Batched(a),
        };
        let act = self.arch.layers.last().expect("at least one layer").activation;
        Ok(crate::kernels::dense::dense(input, self.last.clone(), act))
    }
}
