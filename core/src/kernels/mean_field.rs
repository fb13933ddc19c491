//! The mean-field forward pass on the CPU as one fused op.
//!
//! `W_s = μ + σ ⊙ ε_s` for every weight sample, the whole network over the `N` inputs, and on the
//! way back the gradients of `μ` and `ln σ` directly (`Σ_s ∂W_s` and `Σ_s ∂W_s ⊙ ε_s ⊙ σ`), with the
//! weight samples split over threads. It replaces one dfdx op per broadcast, per layer and per
//! activation (each a full copy of an `(S, N, H)` buffer) with one forward and one backward that
//! keep the activations in their own buffers.
//!
//! The noise is drawn exactly as `vi::guide::sample_mean_field` draws it (one `u64` from the
//! caller's generator per layer, and one stream per weight sample seeded from it, see
//! [`super::normal::sample_noise`]), so for a given seed the fused and the composed path see the
//! same weights (tested), and each thread draws the noise of its own samples. On AVX-512 CPUs the
//! products run on [`super::gemm`]'s kernels with tanh and its derivative fused into them.

use std::any::{Any, TypeId};

use dfdx::prelude::*;
use rand::Rng;

use super::activation::Activation;
use super::activation::{act_backward, act_forward};
use crate::num::Taped;
use crate::{Error, Real, Result};

/// Whether `D` is the CPU, where the fused kernels of this module run.
pub(crate) fn is_cpu<E: Dtype, D: Storage<E>>() -> bool {
    TypeId::of::<D>() == TypeId::of::<Cpu>()
}

/// Views a value as a type that is the same type (checked by the caller with `TypeId`).
pub(crate) fn same_ref<A: 'static, B: 'static>(a: &A) -> &B {
    (a as &dyn Any).downcast_ref::<B>().expect("the caller checked that the types are equal")
}

/// Moves a value between two types that are the same type (checked by the caller with `TypeId`).
pub(crate) fn same<A: 'static, B: 'static>(a: A) -> B {
    *(Box::new(a) as Box<dyn Any>).downcast::<B>().expect("the caller checked that the types are equal")
}

/// One dense layer as the kernel sees it: `i` inputs, `o` outputs, bias folded in.
#[derive(Clone, Copy)]
pub(crate) struct Layer {
    i: usize,
    o: usize,
    act: Activation,
    /// Whether the pre-activations are kept (silu and gelu derivatives need them).
    keep_z: bool,
}

impl Layer {
    /// A layer with `d_in` inputs, `d_out` outputs and activation `act`.
    pub(crate) fn new(d_in: usize, d_out: usize, act: Activation) -> Self {
        Layer { i: d_in, o: d_out, act, keep_z: matches!(act, Activation::Silu | Activation::Gelu) }
    }

    fn weights(&self) -> usize {
        self.o * (self.i + 1)
    }
}

/// The guide of one layer: locations and log scales of its `o · (i + 1)` weights, row-major
/// `(o, i + 1)` with the bias last in each row.
pub(crate) struct LayerGuide<E: Dtype, D: Storage<E>> {
    /// `μ`.
    pub loc: Tensor<(usize,), E, D>,
    /// `ln σ`.
    pub log_scale: Tensor<(usize,), E, D>,
}

impl<E: Dtype, D: Storage<E>> Clone for LayerGuide<E, D> {
    fn clone(&self) -> Self {
        LayerGuide { loc: self.loc.clone(), log_scale: self.log_scale.clone() }
    }
}

/// The network outputs `(S, N, d_out)` on the guide's tape.
type Output<E, D> = Taped<(usize, usize, usize), E, D>;

/// A host buffer from the device's allocator: with dfdx's tensor cache enabled
/// (`dev.enable_cache()`), the activation buffers of one step are reused by the next instead of
/// being returned to the operating system and faulted in again.
type Buffer<E> = <Cpu as Storage<E>>::Vec;

/// Per layer: the gradients of the locations and of the log scales.
type GuideGrads<E> = (Vec<Vec<E>>, Vec<Vec<E>>);

/// One thread's share of the weight samples, with everything its forward pass computed that
/// the backward pass reads.
struct Part<E: Real> {
    /// The part's first sample.
    first: usize,
    /// The number of samples in the part.
    count: usize,
    /// Per layer: `W` of each of the part's samples, `(count, o, i + 1)`.
    w: Vec<Vec<E>>,
    /// Per layer: the noise `ε`, `(count, o, i + 1)`.
    eps: Vec<Vec<E>>,
    /// Per layer: activations `(count, N, o)`.
    a: Vec<Buffer<E>>,
    /// Per layer: pre-activations `(count, N, o)` where kept, else empty.
    z: Vec<Buffer<E>>,
}

/// The inputs of the pass and its parts.
struct Saved<E: Real> {
    layers: Vec<Layer>,
    n: usize,
    x: Vec<E>,
    /// Per layer: `μ`, `(o, i + 1)`.
    loc: Vec<Vec<E>>,
    /// Per layer: `σ`, `(o, i + 1)`.
    sd: Vec<Vec<E>>,
    /// Per layer: the seed of its noise (see [`super::normal::sample_noise`]).
    seeds: Vec<u64>,
    parts: Vec<Part<E>>,
}

/// The fused mean-field forward pass, or `None` off the CPU (the caller composes dfdx ops then).
///
/// The caller has checked that `params` holds one guide of `layers[l].o · (layers[l].i + 1)`
/// entries per layer and that `x` has `layers[0].i` columns.
pub(crate) fn forward<E: Real, D: Device<E>>(
    layers: &[Layer],
    params: &[LayerGuide<E, D>],
    x: &Tensor<(usize, usize), E, D>,
    s: usize,
    rng: &mut impl Rng,
) -> Option<Result<Output<E, D>>> {
    if !is_cpu::<E, D>() {
        return None;
    }
    let params: Vec<LayerGuide<E, Cpu>> =
        params.iter().map(|p| LayerGuide { loc: same(p.loc.clone()), log_scale: same(p.log_scale.clone()) }).collect();
    let x: Tensor<(usize, usize), E, Cpu> = same(x.clone());
    Some(forward_cpu(layers, &params, &x, s, rng, None).map(same))
}

/// [`forward`] on the CPU; `threads` overrides the automatic choice (tests).
pub(crate) fn forward_cpu<E: Real>(
    layers: &[Layer],
    params: &[LayerGuide<E, Cpu>],
    x: &Tensor<(usize, usize), E, Cpu>,
    s: usize,
    rng: &mut impl Rng,
    threads: Option<usize>,
) -> Result<Taped<(usize, usize, usize), E, Cpu>> {
    let layers = layers.to_vec();
    if params.len() != layers.len()
        || params.iter().zip(&layers).any(|(p, l)| p.loc.shape().0 != l.weights() || p.log_scale.shape().0 != l.weights())
    {
        return Err(Error::Shape {
            what: "fused mean-field guide".into(),
            expected: format!("{:?} locations and scales", layers.iter().map(Layer::weights).collect::<Vec<_>>()),
            got: format!("{:?}", params.iter().map(|p| (p.loc.shape().0, p.log_scale.shape().0)).collect::<Vec<_>>()),
        });
    }
    let n = x.shape().0;
    let mut tape: Option<OwnedTape<E, Cpu>> = None;
    for p in params {
        for t in [&p.loc, &p.log_scale] {
            let (_, t) = t.leaky_trace().split_tape();
            tape = Some(match tape {
                None => t,
                Some(a) => a.merge(t),
            });
        }
    }
    let flops = s * n * layers.iter().map(Layer::weights).sum::<usize>() * 2;
    // below about 8 MFLOP (forward) spawning threads costs more than it saves
    let threads =
        threads.unwrap_or(if flops < 1 << 23 { 1 } else { std::thread::available_parallelism().map_or(1, |t| t.get()) }).clamp(1, s);
    let mut saved = Saved {
        // one u64 per layer, as `guide::sample_mean_field` draws them
        seeds: layers.iter().map(|_| rng.next_u64()).collect(),
        layers,
        n,
        x: x.as_vec(),
        loc: params.iter().map(|p| p.loc.as_vec()).collect(),
        sd: params.iter().map(|p| p.log_scale.as_vec().iter().map(|v| v.exp()).collect()).collect(),
        parts: Vec::new(),
    };
    let dev = x.device().clone();
    saved.parts = saved.run_forward(s, threads, &dev)?;
    let k = saved.layers.last().expect("an architecture has at least one layer").o;
    let mut outv = Vec::with_capacity(s * n * k);
    for part in &saved.parts {
        outv.extend_from_slice(part.a.last().expect("one layer"));
    }
    let out: Tensor<(usize, usize, usize), E, Cpu> = dev.tensor_from_vec(outv, (s, n, k));
    let mut tape = tape.expect("an architecture has at least one layer");
    let out_c = out.clone();
    let targets: Vec<LayerGuide<E, Cpu>> = params.to_vec();
    tape.add_backward_op(move |grads: &mut Gradients<E, Cpu>| {
        grads.try_alloc_for(&out_c)?;
        for p in &targets {
            grads.try_alloc_for(&p.loc)?;
            grads.try_alloc_for(&p.log_scale)?;
        }
        let g_out = grads.get_or_alloc_mut(&out_c)?.to_vec();
        let (dloc, dls) = saved.run_backward(&g_out);
        for ((p, dl), ds) in targets.iter().zip(&dloc).zip(&dls) {
            grads.get_or_alloc_mut(&p.loc)?.iter_mut().zip(dl).for_each(|(g, d)| *g += *d);
            grads.get_or_alloc_mut(&p.log_scale)?.iter_mut().zip(ds).for_each(|(g, d)| *g += *d);
        }
        Ok(())
    });
    Ok(out.put_tape(tape))
}

/// `Σ KL(N(m, e^{2 ls}) ‖ N(μ, e^{2 lσ}))` over the entries of one layer as one op: one pass
/// forward, and a backward that writes the closed-form gradients of all four inputs
/// (`∂/∂m = (m − μ)/σ²`, `∂/∂ls = s²/σ² − 1`, and their counterparts for the prior).
///
/// CPU only: the caller checks that `D` is [`Cpu`] (see [`is_cpu`]).
pub(crate) fn kl_normal<E: Real, D: Device<E>>(inputs: [Taped<(usize, usize), E, D>; 4]) -> Taped<(), E, D> {
    debug_assert!(is_cpu::<E, D>());
    let mut tape: Option<OwnedTape<E, Cpu>> = None;
    let mut ts: Vec<Tensor<(usize, usize), E, Cpu>> = Vec::with_capacity(4);
    for t in inputs {
        let (t, tp) = t.split_tape();
        let tp: OwnedTape<E, Cpu> = same(tp);
        tape = Some(match tape {
            None => tp,
            Some(a) => a.merge(tp),
        });
        ts.push(same(t));
    }
    let v: Vec<Vec<E>> = ts.iter().map(|t| t.as_vec()).collect();
    let (half, two) = (crate::num::cast::from_f64::<E>(0.5), crate::num::cast::from_f64::<E>(2.0));
    let mut kl = E::zero();
    // per entry: d = m − μ, r = s²/σ², u = d²/σ²
    let mut cache = Vec::with_capacity(v[0].len());
    for (((m, ls), mu), lsig) in v[0].iter().zip(&v[1]).zip(&v[2]).zip(&v[3]) {
        let inv = (-two * *lsig).exp();
        let d = *m - *mu;
        let r = (two * *ls).exp() * inv;
        kl += (*lsig - *ls) + half * (r + d * d * inv) - half;
        cache.push((d * inv, r, d * d * inv));
    }
    let dev = ts[0].device().clone();
    let out: Tensor<(), E, Cpu> = dev.tensor(kl);
    let out_c = out.clone();
    let mut tape = tape.expect("four tapes");
    tape.add_backward_op(move |grads: &mut Gradients<E, Cpu>| {
        grads.try_alloc_for(&out_c)?;
        for t in &ts {
            grads.try_alloc_for(t)?;
        }
        let g = grads.get_or_alloc_mut(&out_c)?[0];
        let one = E::one();
        let apply = |grads: &mut Gradients<E, Cpu>,
                     t: &Tensor<(usize, usize), E, Cpu>,
                     f: &dyn Fn(&(E, E, E)) -> E|
         -> std::result::Result<(), dfdx::tensor::CpuError> {
            grads.get_or_alloc_mut(t)?.iter_mut().zip(&cache).for_each(|(b, c)| *b += g * f(c));
            Ok(())
        };
        apply(grads, &ts[0], &|c| c.0)?;
        apply(grads, &ts[1], &|c| c.1 - one)?;
        apply(grads, &ts[2], &|c| -c.0)?;
        apply(grads, &ts[3], &|c| one - c.1 - c.2)?;
        Ok(())
    });
    same(out.put_tape(tape))
}

/// Runs `f` on every part, parts 1.. on spawned threads and part 0 on this one, and returns the
/// results in part order.
fn on_parts<T: Send>(parts: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if parts == 1 {
        return vec![f(0)];
    }
    let f = &f;
    std::thread::scope(|sc| {
        let handles: Vec<_> = (1..parts).map(|t| sc.spawn(move || f(t))).collect();
        let mut out = vec![f(0)];
        out.extend(handles.into_iter().map(|h| h.join().expect("a kernel worker panicked")));
        out
    })
}

impl<E: Real> Saved<E> {
    /// The forward pass of `s` samples split into `threads` parts. Each part allocates its own
    /// buffers (so their zeroing runs in parallel too) and draws its own noise.
    fn run_forward(&self, s: usize, threads: usize, dev: &Cpu) -> Result<Vec<Part<E>>> {
        let chunk = s.div_ceil(threads);
        on_parts(s.div_ceil(chunk), |t| {
            let first = t * chunk;
            let count = chunk.min(s - first);
            let (n, layers) = (self.n, &self.layers);
            let alloc = |len: usize| dev.try_alloc_len(len).map_err(Error::device);
            let mut part = Part {
                first,
                count,
                w: layers.iter().map(|l| vec![E::zero(); count * l.weights()]).collect(),
                eps: layers.iter().map(|l| vec![E::zero(); count * l.weights()]).collect(),
                a: layers.iter().map(|l| alloc(count * n * l.o)).collect::<Result<_>>()?,
                z: layers.iter().map(|l| alloc(if l.keep_z { count * n * l.o } else { 0 })).collect::<Result<_>>()?,
            };
            self.forward_part(&mut part);
            Ok(part)
        })
        .into_iter()
        .collect()
    }

    /// [`Self::forward_part_impl`] with the widest instruction set this CPU runs.
    fn forward_part(&self, part: &mut Part<E>) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `forward_part_avx2` is compiled with `avx2,fma` enabled, and both features
            // were detected on this CPU just above; its body is the safe `forward_part_impl`.
            return unsafe { self.forward_part_avx2(part) };
        }
        self.forward_part_impl(part)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_part_avx2(&self, part: &mut Part<E>) {
        self.forward_part_impl(part)
    }

    /// Draws the part's weights and runs them through the network.
    #[inline(always)]
    fn forward_part_impl(&self, part: &mut Part<E>) {
        let n = self.n;
        let mut scratch = Vec::new();
        let Part { first, count, w, eps, a, z } = part;
        for si in 0..*count {
            for (l, layer) in self.layers.iter().enumerate() {
                let Layer { i, o, act, keep_z } = *layer;
                let pw = layer.weights();
                let es = &mut eps[l][si * pw..(si + 1) * pw];
                super::normal::sample_noise(self.seeds[l], *first + si, es);
                let ws = &mut w[l][si * pw..(si + 1) * pw];
                for (((w, e), m), sd) in ws.iter_mut().zip(es.iter()).zip(&self.loc[l]).zip(&self.sd[l]) {
                    *w = *m + *sd * *e;
                }
                let (done, rest) = a.split_at_mut(l);
                let out = &mut rest[0][si * n * o..(si + 1) * n * o];
                let h: &[E] = if l == 0 { &self.x } else { &done[l - 1][si * n * i..(si + 1) * n * i] };
                // tanh is applied in the product's registers where the kernel can
                let fused = super::dense::sample_linear(n, i, o, h, ws, out, &mut scratch, act == Activation::Tanh);
                if keep_z {
                    z[l][si * n * o..(si + 1) * n * o].copy_from_slice(out);
                }
                if !fused {
                    act_forward(act, out);
                }
            }
        }
    }

    /// `(∂/∂μ, ∂/∂ln σ)` per layer, given `∂/∂out` `(S, N, k)`: each part on its own thread, then
    /// summed.
    fn run_backward(&self, g_out: &[E]) -> GuideGrads<E> {
        let results = on_parts(self.parts.len(), |t| self.backward_part(&self.parts[t], g_out));
        let mut it = results.into_iter();
        let (mut dloc, mut dls) = it.next().expect("at least one part");
        for (dl, ds) in it {
            for (acc, d) in dloc.iter_mut().zip(&dl).chain(dls.iter_mut().zip(&ds)) {
                acc.iter_mut().zip(d).for_each(|(a, b)| *a += *b);
            }
        }
        (dloc, dls)
    }

    /// [`Self::backward_part_impl`] with the widest instruction set this CPU runs.
    fn backward_part(&self, part: &Part<E>, g_out: &[E]) -> GuideGrads<E> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `backward_part_avx2` is compiled with `avx2,fma` enabled, and both features
            // were detected on this CPU just above; its body is the safe `backward_part_impl`.
            return unsafe { self.backward_part_avx2(part, g_out) };
        }
        self.backward_part_impl(part, g_out)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_part_avx2(&self, part: &Part<E>, g_out: &[E]) -> GuideGrads<E> {
        self.backward_part_impl(part, g_out)
    }

    /// Backward pass of one part: its summed `(∂/∂μ, ∂/∂ln σ)` per layer.
    #[inline(always)]
    fn backward_part_impl(&self, part: &Part<E>, g_out: &[E]) -> GuideGrads<E> {
        let n = self.n;
        let widest = self.layers.iter().map(|l| l.i.max(l.o)).max().unwrap_or(1);
        let mut g = vec![E::zero(); n * widest];
        let mut g2 = vec![E::zero(); n * widest];
        let mut dw = vec![E::zero(); self.layers.iter().map(Layer::weights).max().unwrap_or(0)];
        let mut scratch = Vec::new();
        let mut dloc: Vec<Vec<E>> = self.layers.iter().map(|l| vec![E::zero(); l.weights()]).collect();
        let mut dls: Vec<Vec<E>> = dloc.clone();
        let nl = self.layers.len();
        let k = self.layers[nl - 1].o;
        for si in 0..part.count {
            let s = part.first + si;
            g[..n * k].copy_from_slice(&g_out[s * n * k..(s + 1) * n * k]);
            // whether `g` already holds the gradient w.r.t. the pre-activations
            let mut through_act = false;
            for l in (0..nl).rev() {
                let Layer { i, o, act, keep_z } = self.layers[l];
                let pw = self.layers[l].weights();
                let a = &part.a[l][si * n * o..(si + 1) * n * o];
                let z = keep_z.then(|| &part.z[l][si * n * o..(si + 1) * n * o]);
                let gs = &mut g[..n * o];
                if !through_act {
                    act_backward(act, a, z, gs);
                }
                let h: &[E] = if l == 0 { &self.x } else { &part.a[l - 1][si * n * i..(si + 1) * n * i] };
                let dws = &mut dw[..pw];
                super::dense::sample_weight_grad(n, i, o, gs, h, dws, &mut scratch);
                let es = &part.eps[l][si * pw..(si + 1) * pw];
                for ((((dl, ds), d), e), sd) in dloc[l].iter_mut().zip(dls[l].iter_mut()).zip(dws.iter()).zip(es).zip(&self.sd[l]) {
                    *dl += *d;
                    *ds += *d * *e * *sd;
                }
                if l > 0 {
                    let ws = &part.w[l][si * pw..(si + 1) * pw];
                    // the previous layer's tanh derivative is applied in the product's registers
                    let prev = &part.a[l - 1][si * n * i..(si + 1) * n * i];
                    let tanh_of = (self.layers[l - 1].act == Activation::Tanh).then_some(prev);
                    through_act = super::dense::sample_input_grad(n, i, o, gs, ws, &mut g2[..n * i], tanh_of);
                    std::mem::swap(&mut g, &mut g2);
                }
            }
        }
        (dloc, dls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The fused KL: its value against the closed form, its gradients (all four inputs) against
    /// central finite differences, in f64.
    #[test]
    fn fused_kl_matches_the_closed_form_and_finite_differences() {
        let dev = Cpu::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let shape = (3usize, 4usize);
        let inputs: Vec<Vec<f64>> = (0..4)
            .map(|k| (0..12).map(|_| if k % 2 == 0 { rng.gen_range(-1.0..1.0) } else { rng.gen_range(-1.5..0.5) }).collect())
            .collect();
        let value = |v: &[Vec<f64>]| -> f64 {
            (0..12)
                .map(|j| {
                    let (m, ls, mu, lsig) = (v[0][j], v[1][j], v[2][j], v[3][j]);
                    lsig - ls + 0.5 * ((2.0 * ls).exp() + (m - mu).powi(2)) / (2.0 * lsig).exp() - 0.5
                })
                .sum()
        };
        let ts: Vec<Tensor<(usize, usize), f64, Cpu>> = inputs.iter().map(|v| dev.tensor_from_vec(v.clone(), shape)).collect();
        let kl = kl_normal([ts[0].leaky_trace(), ts[1].leaky_trace(), ts[2].leaky_trace(), ts[3].leaky_trace()]);
        let got = kl.as_vec()[0];
        assert!((got - value(&inputs)).abs() < 1e-12, "{got} vs {}", value(&inputs));
        let g = kl.backward();
        for (k, t) in ts.iter().enumerate() {
            let gk = g.get(t).as_vec();
            for j in 0..12 {
                let at = |d: f64| {
                    let mut v = inputs.clone();
                    v[k][j] += d;
                    value(&v)
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!((gk[j] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "input {k}, entry {j}: {} vs {fd}", gk[j]);
            }
        }
    }
}
