//! Inference networks: small MLPs that map each context point to pseudo-observations.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::params::{ParamId, ParamStore};
use crate::model::arch::Activation;
use crate::vi::prior::Taped;
use crate::{Real, Result};

/// An MLP `in → widths… → out` with one activation between layers and a linear output. Weights
/// are `prefix.w{i}` `(out, in)` and biases `prefix.b{i}` `(out,)`, initialised uniformly in
/// `±1/√fan_in` (PyTorch's default).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::bnnp::{InferenceNet, ParamStore};
/// let dev = Cpu::default();
/// let mut store = ParamStore::<f64, Cpu>::new(&dev);
/// let net = InferenceNet::new(&mut store, "net", 2, &[8], 3, Activation::Tanh, 0)?;
/// assert_eq!((net.d_in(), net.d_out()), (2, 3));
/// assert_eq!(store.shape(store.find("net.w0").unwrap()), &[8, 2]);
/// assert_eq!(store.shape(store.find("net.b1").unwrap()), &[3]);
/// let z = dev.tensor_from_vec(vec![0.5; 10], (5usize, 2usize)).leaky_trace();
/// let out = net.forward(&store, z, false);
/// assert_eq!(*out.shape(), (5, 3));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct InferenceNet {
    layers: Vec<(ParamId, ParamId, usize, usize)>,
    activation: Activation,
}

impl InferenceNet {
    /// Adds a network's parameters to `store`.
    pub fn new<E: Real, D: Device<E>>(
        store: &mut ParamStore<E, D>,
        prefix: &str,
        d_in: usize,
        widths: &[usize],
        d_out: usize,
        activation: Activation,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut dims = vec![d_in];
        dims.extend_from_slice(widths);
        dims.push(d_out);
        let mut layers = Vec::new();
        for (i, w) in dims.windows(2).enumerate() {
            let (fi, fo) = (w[0], w[1]);
            let bound = 1.0 / (fi.max(1) as f64).sqrt();
            let wv: Vec<f64> = (0..fi * fo).map(|_| rng.gen_range(-bound..bound)).collect();
            let bv: Vec<f64> = (0..fo).map(|_| rng.gen_range(-bound..bound)).collect();
            let wid = store.add(&format!("{prefix}.w{i}"), &[fo, fi], &wv)?;
            let bid = store.add(&format!("{prefix}.b{i}"), &[fo], &bv)?;
            layers.push((wid, bid, fi, fo));
        }
        Ok(Self { layers, activation })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.layers[0].2
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.3)
    }

    /// Applies the network to the rows of `z` `(N, in)`; output `(N, out)`, taped when `trace`.
    pub fn forward<E: Real, D: Device<E>>(
        &self,
        store: &ParamStore<E, D>,
        z: Taped<(usize, usize), E, D>,
        trace: bool,
    ) -> Taped<(usize, usize), E, D> {
        let n = z.shape().0;
        let mut h = z;
        let last = self.layers.len() - 1;
        for (i, &(wid, bid, fi, fo)) in self.layers.iter().enumerate() {
            let w = store.param(wid, trace).reshape_like(&(fo, fi));
            let b = store.param(bid, trace);
            let (w, wt) = w.split_tape();
            let (hh, ht) = h.split_tape();
            let z = hh.put_tape(ht.merge(wt)).matmul(w.permute::<_, Axes2<1, 0>>());
            let z = z + b.broadcast_like::<_, Axis<0>>(&(n, fo));
            h = if i == last { z } else { crate::vi::network::activate(self.activation, z) };
        }
        h
    }
}
