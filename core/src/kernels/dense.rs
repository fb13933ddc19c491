//! The dense layer over `S` weight samples (`(S, N, i) → (S, N, o)`, bias folded in) as one op
//! with a hand-written backward on the CPU, and the single-sample helpers that the fused
//! mean-field op shares with it.

use std::any::TypeId;

use dfdx::prelude::*;

use super::activation::{act_backward, act_forward, Activation};
use super::{activation, gemm};
use crate::num::dense::{self as host, MatMut, MatRef};
use crate::Real;

/// One weight sample of a dense layer, pre-activations: `out (n×o) = h (n×i) · W[:, :i]ᵀ + b`,
/// with `ws` the sample's `[W | b]` (row-major `o × (i+1)`). `scratch` is reused between calls.
///
/// With `tanh`, the kernel may apply the activation as well; the return value says whether it
/// did (if not, `out` holds the pre-activations).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn sample_linear<E: Real>(
    n: usize,
    i: usize,
    o: usize,
    h: &[E],
    ws: &[E],
    out: &mut [E],
    scratch: &mut Vec<E>,
    tanh: bool,
) -> bool {
    // the bounds the AVX-512 kernels rely on (the checked views below test them again)
    assert!(h.len() >= n * i && ws.len() >= o * (i + 1) && out.len() >= n * o, "sample_linear: buffers too short");
    if let Some(k) = gemm::Kernels::get::<E>() {
        // SAFETY: `k` exists, so `E` is f32 and the CPU runs AVX-512F. `h`, `ws` and `out` hold at
        // least n×i, o×(i+1) and n×o values (asserted above), which is every index `dots` and the
        // product below name: A(r, p) = h[r·i + p], B[p, u] = scratch[p·o + u] for p < i, u < o,
        // C[r, u] = out[r·o + u], and the bias row scratch[i·o + u]; scratch was resized to
        // (i+1)×o just before the pointers into it are taken.
        unsafe {
            if o <= 4 {
                // a narrow output (the last layer of a regression net): dot products over i
                k.dots(n, i, o, h.as_ptr(), ws.as_ptr(), out.as_mut_ptr());
                return false;
            }
            // [W | b]ᵀ packed as (i+1) × o: rows p < i hold Wᵀ, row i the biases (the initial value)
            scratch.clear();
            scratch.resize((i + 1) * o, E::zero());
            for (u, unit) in ws.chunks_exact(i + 1).enumerate() {
                for (p, w) in unit.iter().enumerate() {
                    scratch[p * o + u] = *w;
                }
            }
            let bias = scratch.as_ptr().add(i * o);
            let epilogue = if tanh { gemm::Epilogue::Tanh } else { gemm::Epilogue::None };
            k.rows(gemm::Product {
                rows: n,
                k: i,
                cols: o,
                a: h.as_ptr(),
                a_row: i,
                a_step: 1,
                b: scratch.as_ptr(),
                b_step: o,
                c: out.as_mut_ptr(),
                c_row: o,
                init: bias,
                accumulate: false,
                epilogue,
            });
        }
        return tanh;
    }
    // every row starts at the biases (gathered once from the `[W | b]` rows)
    scratch.clear();
    scratch.extend(ws.chunks(i + 1).map(|unit| unit[i]));
    for row in out.chunks_exact_mut(o) {
        row.copy_from_slice(scratch);
    }
    // out += h · Wᵀ; element (k, u) of Wᵀ sits at u·(i+1) + k
    let wt = MatRef::strided(ws, o, i, i + 1, 1).t();
    host::gemm(E::one(), MatRef::row_major(h, n, i), wt, E::one(), MatMut::row_major(out, n, o));
    false
}

/// One weight sample of a dense layer, weight gradient: `dws ← [gᵀ h | column sums of g]`
/// (`o × (i+1)`, overwritten), from `g`, the gradient w.r.t. the pre-activations (`n × o`).
/// `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn sample_weight_grad<E: Real>(n: usize, i: usize, o: usize, g: &[E], h: &[E], dws: &mut [E], scratch: &mut Vec<E>) {
    // the bounds the AVX-512 kernels rely on
    assert!(g.len() >= n * o && h.len() >= n * i && dws.len() >= o * (i + 1), "sample_weight_grad: buffers too short");
    scratch.clear();
    scratch.resize(o, E::zero());
    if let Some(k) = gemm::Kernels::get::<E>() {
        // rows of the data at a time, so that the rows of `h` a pass reads stay in L1
        const CHUNK: usize = 128;
        // SAFETY: `k` exists, so `E` is f32 and the CPU runs AVX-512F. `g`, `h` and `dws` hold at
        // least n×o, n×i and o×(i+1) values (asserted above). The bias product reads g[p·o + u]
        // (p < n, u < o) and writes scratch[..o] (resized to o above). Each chunk reads rows
        // n0..n0+len < n of `g` and `h` and writes dws[u·(i+1) + p] (u < o, p < i), or the
        // transpose t[p·o + u] inside scratch[o..o + i·o] (resized before `t` is taken; nothing
        // reallocates scratch while `t` is in use).
        unsafe {
            let one = [E::one()];
            // the bias column: Σ_n g[n, u], as a one-row product with a broadcast 1
            k.rows(gemm::Product {
                rows: 1,
                k: n,
                cols: o,
                a: one.as_ptr(),
                a_row: 0,
                a_step: 0,
                b: g.as_ptr(),
                b_step: o,
                c: scratch.as_mut_ptr(),
                c_row: o,
                init: std::ptr::null(),
                accumulate: false,
                epilogue: gemm::Epilogue::None,
            });
            if n == 0 {
                // no data: no chunk below would write the weights
                dws[..o * (i + 1)].fill(E::zero());
            } else if i >= o {
                // vectors over the inputs: dws[u, p] = Σ_n g[n, u] h[n, p]
                for n0 in (0..n).step_by(CHUNK) {
                    let len = (n - n0).min(CHUNK);
                    let (gp, hp) = (g.as_ptr().add(n0 * o), h.as_ptr().add(n0 * i));
                    k.rows(gemm::Product {
                        rows: o,
                        k: len,
                        cols: i,
                        a: gp,
                        a_row: 1,
                        a_step: o,
                        b: hp,
                        b_step: i,
                        c: dws.as_mut_ptr(),
                        c_row: i + 1,
                        init: std::ptr::null(),
                        accumulate: n0 > 0,
                        epilogue: gemm::Epilogue::None,
                    });
                }
            } else {
                // vectors over the units (wider): the transpose into scratch, then scattered
                scratch.resize(o + i * o, E::zero());
                let t = scratch.as_mut_ptr().add(o);
                for n0 in (0..n).step_by(CHUNK) {
                    let len = (n - n0).min(CHUNK);
                    let (gp, hp) = (g.as_ptr().add(n0 * o), h.as_ptr().add(n0 * i));
                    k.rows(gemm::Product {
                        rows: i,
                        k: len,
                        cols: o,
                        a: hp,
                        a_row: 1,
                        a_step: i,
                        b: gp,
                        b_step: o,
                        c: t,
                        c_row: o,
                        init: std::ptr::null(),
                        accumulate: n0 > 0,
                        epilogue: gemm::Epilogue::None,
                    });
                }
                for (p, row) in scratch[o..].chunks_exact(o).enumerate() {
                    for (u, v) in row.iter().enumerate() {
                        dws[u * (i + 1) + p] = *v;
                    }
                }
            }
        }
    } else {
        // dws[:, :i] = gᵀ h (β = 0: not read)
        let gt = MatRef::row_major(g, n, o).t();
        host::gemm(E::one(), gt, MatRef::row_major(h, n, i), E::zero(), MatMut::strided_rows(dws, o, i, i + 1));
        for row in g.chunks_exact(o) {
            scratch.iter_mut().zip(row).for_each(|(b, g)| *b += *g);
        }
    }
    for (u, b) in scratch[..o].iter().enumerate() {
        dws[u * (i + 1) + i] = *b;
    }
}

/// One weight sample of a dense layer, input gradient: `dh ← g · W[:, :i]` (`n × i`, overwritten).
///
/// With `tanh_of` (the previous layer's tanh activations, `n × i`), the kernel may also multiply
/// by their derivative `1 − a²`; the return value says whether it did.
#[inline(always)]
pub(crate) fn sample_input_grad<E: Real>(n: usize, i: usize, o: usize, g: &[E], ws: &[E], dh: &mut [E], tanh_of: Option<&[E]>) -> bool {
    // the bounds the AVX-512 kernels rely on
    assert!(g.len() >= n * o && ws.len() >= o * (i + 1) && dh.len() >= n * i, "sample_input_grad: buffers too short");
    assert!(tanh_of.is_none_or(|a| a.len() >= n * i), "sample_input_grad: activations too short");
    if let Some(k) = gemm::Kernels::get::<E>() {
        let epilogue = match tanh_of {
            Some(a) => gemm::Epilogue::TanhGrad { a: a.as_ptr(), a_row: i },
            None => gemm::Epilogue::None,
        };
        // SAFETY: `k` exists, so `E` is f32 and the CPU runs AVX-512F. `g`, `ws`, `dh` and (when
        // given) `tanh_of` hold at least n×o, o×(i+1), n×i and n×i values (asserted above): the
        // product reads g[r·o + p] and ws[p·(i+1) + j] and writes dh[r·i + j] (r < n, p < o, j < i),
        // and the epilogue reads a[r·i + j].
        unsafe {
            k.rows(gemm::Product {
                rows: n,
                k: o,
                cols: i,
                a: g.as_ptr(),
                a_row: o,
                a_step: 1,
                b: ws.as_ptr(),
                b_step: i + 1,
                c: dh.as_mut_ptr(),
                c_row: i,
                init: std::ptr::null(),
                accumulate: false,
                epilogue,
            })
        };
        return tanh_of.is_some();
    }
    // dh = g · W[:, :i] (β = 0: not read)
    let w = MatRef::strided(ws, o, i, i + 1, 1);
    host::gemm(E::one(), MatRef::row_major(g, n, o), w, E::zero(), MatMut::row_major(dh, n, i));
    false
}

/// Shapes of one batched dense layer.
#[derive(Clone, Copy)]
struct DenseDims {
    s: usize,
    n: usize,
    i: usize,
    o: usize,
    /// Element stride between samples of `h` (0 when one input is shared by every sample).
    h_batch: usize,
}

/// `a[s] = act(h[s] · W[s][:, :i]ᵀ + W[s][:, i])` on host buffers. Returns `(a, z)`; `z` is kept
/// only when the activation's derivative needs it.
fn dense_forward_host<E: Real>(d: DenseDims, h: &[E], w: &[E], act: Activation) -> (Vec<E>, Option<Vec<E>>) {
    let DenseDims { s, n, i, o, h_batch } = d;
    let mut a = vec![E::zero(); s * n * o];
    let mut scratch = Vec::new();
    for si in 0..s {
        let ws = &w[si * o * (i + 1)..(si + 1) * o * (i + 1)];
        sample_linear(n, i, o, &h[si * h_batch..si * h_batch + n * i], ws, &mut a[si * n * o..(si + 1) * n * o], &mut scratch, false);
    }
    let z = matches!(act, Activation::Silu | Activation::Gelu).then(|| a.clone());
    act_forward(act, &mut a);
    (a, z)
}

/// Backward of [`dense_forward_host`]: writes `dw` and (if given) `dh`. `g` is the
/// gradient w.r.t. the activations and is overwritten with the gradient w.r.t. `z`.
#[allow(clippy::too_many_arguments)]
fn dense_backward_host<E: Real>(
    d: DenseDims,
    h: &[E],
    w: &[E],
    a: &[E],
    z: Option<&[E]>,
    g: &mut [E],
    act: Activation,
    dw: &mut [E],
    dh: Option<&mut [E]>,
) {
    let DenseDims { s, n, i, o, h_batch } = d;
    act_backward(act, a, z, g);
    let mut scratch = Vec::new();
    let mut dh = dh;
    for si in 0..s {
        let gs = &g[si * n * o..(si + 1) * n * o];
        let ws = &w[si * o * (i + 1)..(si + 1) * o * (i + 1)];
        sample_weight_grad(
            n,
            i,
            o,
            gs,
            &h[si * h_batch..si * h_batch + n * i],
            &mut dw[si * o * (i + 1)..(si + 1) * o * (i + 1)],
            &mut scratch,
        );
        if let Some(dh) = dh.as_deref_mut() {
            sample_input_grad(n, i, o, gs, ws, &mut dh[si * n * i..(si + 1) * n * i], None);
        }
    }
}

/// The input of a dense layer: shared by every weight sample (the data) or one per sample.
pub(crate) enum LayerInput<E: Dtype, D: Storage<E>, T> {
    /// `(N, d_in)`, no gradient.
    Shared(Tensor<(usize, usize), E, D>),
    /// `(S, N, d_in)`, on the tape.
    Batched(Tensor<(usize, usize, usize), E, D, T>),
}

/// One batched dense layer, `act(h · Wᵀ + b)` with `W` packed as `[W | b]` of shape
/// `(S, d_out, d_in + 1)`: output `(S, N, d_out)`.
///
/// On the CPU this is one fused op with a hand-written backward (two GEMMs per sample and one pass
/// over the activations); elsewhere it is composed from dfdx ops.
pub(crate) fn dense<E: Real, D: Device<E>, T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
    h: LayerInput<E, D, T>,
    w: Tensor<(usize, usize, usize), E, D, T>,
    act: Activation,
) -> Tensor<(usize, usize, usize), E, D, T> {
    if TypeId::of::<D>() != TypeId::of::<Cpu>() {
        return dense_composed(h, w, act);
    }
    let (s, o, i1) = *w.shape();
    let i = i1 - 1;
    let (w, w_tape) = w.split_tape();
    let (hv, n, h_batch, h_tensor, tape) = match h {
        LayerInput::Shared(x) => {
            let n = x.shape().0;
            (x.as_vec(), n, 0, None, w_tape)
        }
        LayerInput::Batched(h) => {
            let (hb, h_tape) = h.split_tape();
            let n = hb.shape().1;
            (hb.as_vec(), n, n * i, Some(hb), w_tape.merge(h_tape))
        }
    };
    let dims = DenseDims { s, n, i, o, h_batch };
    let wv = w.as_vec();
    let (a, z) = dense_forward_host(dims, &hv, &wv, act);
    let dev = w.device().clone();
    let out: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(a.clone(), (s, n, o));
    let mut tape = tape;
    if T::OWNS_TAPE {
        let out_c = out.clone();
        tape.add_backward_op(move |grads| {
            grads.try_alloc_for(&out_c)?;
            grads.try_alloc_for(&w)?;
            if let Some(h) = &h_tensor {
                grads.try_alloc_for(h)?;
            }
            let grads: &mut Gradients<E, Cpu> = (grads as &mut dyn std::any::Any).downcast_mut().expect("D is Cpu");
            let cast = |t: &Tensor<(usize, usize, usize), E, D>| -> Tensor<(usize, usize, usize), E, Cpu> {
                (Box::new(t.clone()) as Box<dyn std::any::Any>)
                    .downcast::<Tensor<(usize, usize, usize), E, Cpu>>()
                    .map(|b| *b)
                    .expect("D is Cpu")
            };
            let mut g: Vec<E> = match grads.get_or_alloc_mut(&cast(&out_c)) {
                Ok(v) => v.to_vec(),
                Err(_) => unreachable!("allocated above"),
            };
            let mut dw = vec![E::zero(); wv.len()];
            let mut dh = h_tensor.as_ref().map(|_| vec![E::zero(); hv.len()]);
            dense_backward_host(dims, &hv, &wv, &a, z.as_deref(), &mut g, act, &mut dw, dh.as_deref_mut());
            if let Ok(buf) = grads.get_or_alloc_mut(&cast(&w)) {
                buf.iter_mut().zip(&dw).for_each(|(b, d)| *b += *d);
            }
            if let (Some(h), Some(dh)) = (&h_tensor, dh) {
                if let Ok(buf) = grads.get_or_alloc_mut(&cast(h)) {
                    buf.iter_mut().zip(&dh).for_each(|(b, d)| *b += *d);
                }
            }
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// [`dense`] from dfdx ops (any device).
fn dense_composed<E: Real, D: Device<E>, T: Tape<E, D> + Merge<T> + Merge<NoneTape>>(
    h: LayerInput<E, D, T>,
    w: Tensor<(usize, usize, usize), E, D, T>,
    act: Activation,
) -> Tensor<(usize, usize, usize), E, D, T> {
    let s = w.shape().0;
    let h = match h {
        LayerInput::Shared(x) => {
            let (n, d) = *x.shape();
            let ones = x.device().ones_like(&(n, 1usize));
            let x_aug: Tensor<(usize, usize), E, D> = (x, ones).concat_along(Axis::<1>);
            let (w2, tape) = w.split_tape();
            let z = x_aug.broadcast_like::<_, Axis<0>>(&(s, n, d + 1)).put_tape(tape).matmul(w2.permute::<_, Axes3<0, 2, 1>>());
            return activation::activate(act, z);
        }
        LayerInput::Batched(h) => activation::augment(h),
    };
    let z = h.matmul(w.permute::<_, Axes3<0, 2, 1>>());
    activation::activate(act, z)
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The single-sample dense helpers in `f32` (AVX-512 kernels where the CPU has them) against
    /// the same helpers in `f64` (always `matrixmultiply`): every branch (narrow outputs as dot
    /// products, the transposed weight gradient for `i < o`, data longer than one chunk, no data).
    /// The f32 outputs start at 7 so that an entry left unwritten shows.
    #[test]
    fn f32_sample_helpers_match_f64() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (n, i, o) in [(300usize, 100usize, 100usize), (7, 1, 50), (130, 50, 1), (33, 3, 4), (129, 20, 37), (5, 64, 16), (0, 3, 5)] {
            let h: Vec<f64> = (0..n * i).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let ws: Vec<f64> = (0..o * (i + 1)).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let g: Vec<f64> = (0..n * o).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let f = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
            let (h32, ws32, g32) = (f(&h), f(&ws), f(&g));
            let close = |what: &str, a: &[f32], b: &[f64], depth: usize| {
                for (j, (x, y)) in a.iter().zip(b).enumerate() {
                    // f32 rounding of a sum of `depth` products of values in [-1, 1]
                    assert!((*x as f64 - y).abs() < 2e-6 * depth.max(1) as f64, "{what} {n}×{i}×{o}, entry {j}: {x} vs {y}");
                }
            };
            let (mut s32, mut s64) = (Vec::new(), Vec::new());
            let kernels = gemm::Kernels::get::<f32>().is_some();
            for tanh in [false, true] {
                let (mut out32, mut out64) = (vec![7f32; n * o], vec![0f64; n * o]);
                let fused = sample_linear(n, i, o, &h32, &ws32, &mut out32, &mut s32, tanh);
                assert_eq!(fused, tanh && kernels && o > 4, "which path fuses tanh");
                assert!(!sample_linear(n, i, o, &h, &ws, &mut out64, &mut s64, tanh));
                if fused {
                    out64.iter_mut().for_each(|v| *v = v.tanh());
                }
                close("linear", &out32, &out64, i + 1);
            }
            let (mut dw32, mut dw64) = (vec![7f32; o * (i + 1)], vec![0f64; o * (i + 1)]);
            sample_weight_grad(n, i, o, &g32, &h32, &mut dw32, &mut s32);
            sample_weight_grad(n, i, o, &g, &h, &mut dw64, &mut s64);
            close("weight grad", &dw32, &dw64, n);
            // the previous layer's tanh activations, for the fused derivative
            let prev: Vec<f64> = (0..n * i).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let prev32 = f(&prev);
            for tanh in [false, true] {
                let (mut dh32, mut dh64) = (vec![7f32; n * i], vec![0f64; n * i]);
                let fused = sample_input_grad(n, i, o, &g32, &ws32, &mut dh32, tanh.then_some(&prev32[..]));
                assert_eq!(fused, tanh && kernels, "which path fuses the tanh derivative");
                assert!(!sample_input_grad(n, i, o, &g, &ws, &mut dh64, tanh.then_some(&prev[..])));
                if fused {
                    dh64.iter_mut().zip(&prev).for_each(|(d, a)| *d *= 1.0 - a * a);
                }
                close("input grad", &dh32, &dh64, o);
            }
        }
    }
}
