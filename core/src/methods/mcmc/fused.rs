//! The fused CPU log density of a dense BNN with a Gaussian likelihood: every chain's
//! `ln p(w, ln σ | D)` and its gradient from host buffers, with no tape.
//!
//! The generic path ([`super::BnnPosterior`] on any device) builds the same quantity from dfdx ops
//! (`network::forward`, `elbo::log_prior_taped` and a per-chain Gaussian log-likelihood) and is
//! the reference the tests compare this kernel with. Here each chain's forward and backward pass is
//! either the kernels layer's single-sample dense products (`kernels::dense`: AVX-512 tiles with
//! tanh fused into the stores for `f32`, the host GEMM otherwise) on point-major activations, for
//! nets with a layer at least 8 wide on both sides, or one vectorised loop over the data points per
//! weight on unit-major activations, for narrow nets. Both remove the per-op overhead that
//! dominates small networks, and chains are split over threads.

use crate::kernels::dense::{sample_input_grad, sample_linear, sample_weight_grad};
use crate::model::arch::{Activation, Architecture};
use crate::num::dense::dot;
use crate::Real;

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// How the Gaussian noise enters the density.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FusedNoise {
    /// σ fixed at this value.
    Fixed(f64),
    /// The last coordinate is `ln σ`, with a HalfNormal(scale) prior on σ and the Jacobian of exp.
    Sampled(f64),
}

/// Precomputed data and prior for the fused kernel.
pub(crate) struct FusedMlp<E> {
    /// `(d_in, d_out, activation)` per layer.
    layers: Vec<(usize, usize, Activation)>,
    /// Offsets of each layer's `[W | b]` block in a position.
    offsets: Vec<usize>,
    n: usize,
    k: usize,
    /// Inputs, row-major `(N, d_in)`, and transposed to `(d_in, N)`.
    x: Vec<E>,
    xt: Vec<E>,
    /// Targets, row-major `(N, k)`, and transposed to `(k, N)`.
    y: Vec<E>,
    yt: Vec<E>,
    /// Whether the network runs point-major on the dense products (some layer is at least 8 wide
    /// on both sides) or unit-major.
    point_major: bool,
    prior_loc: Vec<f64>,
    prior_inv_var: Vec<f64>,
    /// `Σ_j (−ln τ_j − ½ ln 2π)`.
    prior_const: f64,
    /// Whether the diagonal prior above is part of the density (off when the caller adds its own).
    with_prior: bool,
    noise: FusedNoise,
    num_weights: usize,
}

/// Per-thread buffers (activations and gradients point-major, `(N, width)`).
struct Scratch<E> {
    w: Vec<Vec<E>>,
    a: Vec<Vec<E>>,
    z: Vec<Option<Vec<E>>>,
    g: Vec<E>,
    g2: Vec<E>,
    /// A layer's `[W | b]` gradient.
    dw: Vec<E>,
    /// The dense kernels' own scratch.
    work: Vec<E>,
}

#[inline(always)]
fn sum<E: Real>(a: &[E]) -> E {
    let mut acc = [E::zero(); 8];
    let ca = a.chunks_exact(8);
    let ra = ca.remainder();
    for x in ca {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for x in ra {
        s += *x;
    }
    s
}

#[inline(always)]
fn axpy<E: Real>(alpha: E, x: &[E], y: &mut [E]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * *x;
    }
}

impl<E: Real> FusedMlp<E> {
    /// `x` is row-major `(N, d_in)`, `y` row-major `(N, k)`; `prior` holds `(loc, scale)` per weight
    /// in position order.
    pub(crate) fn new(arch: &Architecture, x: &[f64], y: &[f64], prior_loc: Vec<f64>, prior_scale: &[f64], noise: FusedNoise) -> Self {
        let d_in = arch.d_in();
        let k = arch.d_out();
        let n = x.len() / d_in;
        let x: Vec<E> = x.iter().map(|v| crate::num::cast::from_f64::<E>(*v)).collect();
        let y: Vec<E> = y.iter().map(|v| crate::num::cast::from_f64::<E>(*v)).collect();
        let transpose = |m: &[E], cols: usize| -> Vec<E> { (0..cols * n).map(|t| m[(t % n) * cols + t / n]).collect() };
        let (xt, yt) = (transpose(&x, d_in), transpose(&y, k));
        let point_major = arch.layers.iter().any(|l| l.d_in >= 8 && l.d_out >= 8);
        let mut offsets = Vec::new();
        let mut off = 0;
        for l in arch.layers {
            offsets.push(off);
            off += l.num_weights();
        }
        let prior_inv_var = prior_scale.iter().map(|s| 1.0 / (s * s)).collect();
        let prior_const = prior_scale.iter().map(|s| -s.ln() - HALF_LN_2PI).sum();
        Self {
            layers: arch.layers.iter().map(|l| (l.d_in, l.d_out, l.activation)).collect(),
            offsets,
            n,
            k,
            x,
            xt,
            y,
            yt,
            point_major,
            prior_loc,
            prior_inv_var,
            prior_const,
            with_prior: true,
            noise,
            num_weights: off,
        }
    }

    /// Leaves the weight prior out of the density (the caller adds its own).
    pub(crate) fn without_prior(mut self) -> Self {
        self.with_prior = false;
        self
    }

    fn dim(&self) -> usize {
        self.num_weights + usize::from(matches!(self.noise, FusedNoise::Sampled(_)))
    }

    fn scratch(&self) -> Scratch<E> {
        let n = self.n;
        let widest = self.layers.iter().map(|&(i, o, _)| i.max(o)).max().unwrap_or(1);
        Scratch {
            w: self.layers.iter().map(|&(i, o, _)| vec![E::zero(); o * (i + 1)]).collect(),
            a: self.layers.iter().map(|&(_, o, _)| vec![E::zero(); o * n]).collect(),
            z: self
                .layers
                .iter()
                .map(|&(_, o, act)| matches!(act, Activation::Silu | Activation::Gelu).then(|| vec![E::zero(); o * n]))
                .collect(),
            g: vec![E::zero(); widest * n],
            g2: vec![E::zero(); widest * n],
            dw: vec![E::zero(); self.layers.iter().map(|&(i, o, _)| o * (i + 1)).max().unwrap_or(1)],
            work: Vec::new(),
        }
    }

    /// Log density and gradient of one position.
    #[inline(always)]
    fn eval(&self, theta: &[f64], grad: &mut [f64], s: &mut Scratch<E>) -> f64 {
        for (l, w) in s.w.iter_mut().enumerate() {
            let off = self.offsets[l];
            let len = w.len();
            for (dst, src) in w.iter_mut().zip(&theta[off..off + len]) {
                *dst = crate::num::cast::from_f64::<E>(*src);
            }
        }
        let (log_sigma, sampled) = match self.noise {
            FusedNoise::Fixed(sigma) => (sigma.ln(), None),
            FusedNoise::Sampled(scale) => (theta[self.num_weights], Some(scale)),
        };
        let inv_var = (-2.0 * log_sigma).exp();
        // the network's part: Σ (y − f)², and the weights' likelihood gradient in `grad`
        let quad = if self.point_major { self.network_point_major(grad, s, inv_var) } else { self.network_unit_major(grad, s, inv_var) };
        let nk = (self.n * self.k) as f64;
        let mut lp = -0.5 * quad * inv_var - nk * (log_sigma + HALF_LN_2PI);
        // prior on the weights
        if self.with_prior {
            let mut lprior = self.prior_const;
            for j in 0..self.num_weights {
                let d = theta[j] - self.prior_loc[j];
                lprior -= 0.5 * d * d * self.prior_inv_var[j];
                grad[j] -= d * self.prior_inv_var[j];
            }
            lp += lprior;
        }
        // noise: likelihood part and HalfNormal(scale) prior on σ = e^s with the Jacobian e^s
        if let Some(scale) = sampled {
            let sigma2 = (2.0 * log_sigma).exp();
            let tau2 = scale * scale;
            lp += std::f64::consts::LN_2 - scale.ln() - HALF_LN_2PI - 0.5 * sigma2 / tau2 + log_sigma;
            grad[self.num_weights] = quad * inv_var - nk - sigma2 / tau2 + 1.0;
        }
        lp
    }

    /// Forward and backward on point-major activations `(N, width)` through the kernels layer's
    /// dense products (AVX-512 tiles with tanh fused for `f32`): for nets with wide layers.
    #[inline(always)]
    fn network_point_major(&self, grad: &mut [f64], s: &mut Scratch<E>, inv_var: f64) -> f64 {
        let (n, k, nl) = (self.n, self.k, self.layers.len());
        // forward: a[l] (N × o) = act(h (N × i) · Wᵀ + b)
        for l in 0..nl {
            let (i, o, act) = self.layers[l];
            let (before, rest) = s.a.split_at_mut(l);
            let h: &[E] = if l == 0 { &self.x } else { &before[l - 1] };
            let a = &mut rest[0];
            let fused = sample_linear(n, i, o, h, &s.w[l], a, &mut s.work, act == Activation::Tanh);
            if let Some(z) = s.z[l].as_mut() {
                z.copy_from_slice(a);
            }
            if !fused {
                act_forward_inline(act, a);
            }
        }
        let quad = self.residuals(&s.a[nl - 1], &self.y, &mut s.g[..n * k], inv_var);
        // backward; `s.g` holds the gradient w.r.t. a[l], or w.r.t. its pre-activations when the
        // previous input-gradient product applied the tanh derivative already
        let mut pre_activation = false;
        for l in (0..nl).rev() {
            let (i, o, act) = self.layers[l];
            let off = self.offsets[l];
            if !pre_activation {
                act_backward_into(act, &s.a[l], s.z[l].as_deref(), &mut s.g[..n * o]);
            }
            let h: &[E] = if l == 0 { &self.x } else { &s.a[l - 1] };
            let dw = &mut s.dw[..o * (i + 1)];
            sample_weight_grad(n, i, o, &s.g[..n * o], h, dw, &mut s.work);
            for (dst, v) in grad[off..off + o * (i + 1)].iter_mut().zip(dw.iter()) {
                *dst = v.cast_to_f64();
            }
            if l > 0 {
                let tanh_of = (self.layers[l - 1].2 == Activation::Tanh).then_some(&s.a[l - 1][..n * i]);
                pre_activation = sample_input_grad(n, i, o, &s.g[..n * o], &s.w[l], &mut s.g2[..n * i], tanh_of);
                std::mem::swap(&mut s.g, &mut s.g2);
            }
        }
        quad
    }

    /// Forward and backward on unit-major activations `(width, N)`, one vectorised loop over the
    /// data points per weight: for narrow nets (the 1×3 net of the SYM-MCMC paper), where a
    /// matrix-product kernel has too little to tile.
    #[inline(always)]
    fn network_unit_major(&self, grad: &mut [f64], s: &mut Scratch<E>, inv_var: f64) -> f64 {
        let (n, k, nl) = (self.n, self.k, self.layers.len());
        for l in 0..nl {
            let (i, o, act) = self.layers[l];
            let (before, rest) = s.a.split_at_mut(l);
            let h: &[E] = if l == 0 { &self.xt } else { &before[l - 1] };
            let a = &mut rest[0];
            let w = &s.w[l];
            for u in 0..o {
                let row = &mut a[u * n..(u + 1) * n];
                row.fill(w[u * (i + 1) + i]);
                for kk in 0..i {
                    axpy(w[u * (i + 1) + kk], &h[kk * n..(kk + 1) * n], row);
                }
            }
            if let Some(z) = s.z[l].as_mut() {
                z.copy_from_slice(a);
            }
            act_forward_inline(act, a);
        }
        let quad = self.residuals(&s.a[nl - 1], &self.yt, &mut s.g[..k * n], inv_var);
        for l in (0..nl).rev() {
            let (i, o, act) = self.layers[l];
            let off = self.offsets[l];
            act_backward_into(act, &s.a[l], s.z[l].as_deref(), &mut s.g[..o * n]);
            let h: &[E] = if l == 0 { &self.xt } else { &s.a[l - 1] };
            for u in 0..o {
                let gu = &s.g[u * n..(u + 1) * n];
                for kk in 0..i {
                    grad[off + u * (i + 1) + kk] = dot(gu, &h[kk * n..(kk + 1) * n]).cast_to_f64();
                }
                grad[off + u * (i + 1) + i] = sum(gu).cast_to_f64();
            }
            if l > 0 {
                let w = &s.w[l];
                let g2 = &mut s.g2[..i * n];
                g2.fill(E::zero());
                for u in 0..o {
                    let gu = &s.g[u * n..(u + 1) * n];
                    for kk in 0..i {
                        axpy(w[u * (i + 1) + kk], gu, &mut g2[kk * n..(kk + 1) * n]);
                    }
                }
                std::mem::swap(&mut s.g, &mut s.g2);
            }
        }
        quad
    }

    /// `g = (y − f)/σ²` (in the layout of `f` and `y`); returns `Σ (y − f)²`.
    #[inline(always)]
    fn residuals(&self, f: &[E], y: &[E], g: &mut [E], inv_var: f64) -> f64 {
        for ((g, f), y) in g.iter_mut().zip(f.iter()).zip(y) {
            *g = *y - *f;
        }
        let quad = dot(g, g).cast_to_f64();
        let iv = crate::num::cast::from_f64::<E>(inv_var);
        g.iter_mut().for_each(|g| *g *= iv);
        quad
    }

    /// Evaluates the listed rows of `pos` (global indices, increasing); `lp` and `gr` start at
    /// global row `first`.
    #[inline(always)]
    fn eval_rows_impl(&self, rows: &[usize], first: usize, pos: &[f64], lp: &mut [f64], gr: &mut [f64]) {
        let d = self.dim();
        let mut s = self.scratch();
        for &r in rows {
            let local = r - first;
            lp[local] = self.eval(&pos[r * d..(r + 1) * d], &mut gr[local * d..(local + 1) * d], &mut s);
        }
    }

    /// [`Self::eval_rows_impl`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn eval_rows_avx2(&self, rows: &[usize], first: usize, pos: &[f64], lp: &mut [f64], gr: &mut [f64]) {
        self.eval_rows_impl(rows, first, pos, lp, gr)
    }

    /// The widest instruction set this CPU runs (detected once per call, cheaply).
    fn eval_rows_part(&self, rows: &[usize], first: usize, pos: &[f64], lp: &mut [f64], gr: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `eval_rows_avx2` is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe `eval_rows_impl`.
            unsafe { self.eval_rows_avx2(rows, first, pos, lp, gr) };
            return;
        }
        self.eval_rows_impl(rows, first, pos, lp, gr)
    }

    /// The fewest chains worth a thread of their own: about [`MIN_WORK_PER_THREAD`] multiply-adds
    /// (`n · k · dim` per chain), at most 16. So 16 chains of the 1×3 net on the sinusoidal data,
    /// 12 on regression2d, and a single chain of the 3×16 net, whose evaluation alone outweighs
    /// handing it to another thread; a batch that has shrunk to a few wide chains (per-chain step
    /// sizes) still uses every thread.
    fn chains_per_thread(&self) -> usize {
        MIN_WORK_PER_THREAD.div_ceil(self.n * self.k * self.dim()).clamp(1, 16)
    }

    /// Every chain's log density and gradient; `positions` is row-major `(C, dim)`.
    pub(crate) fn eval_batch(&self, positions: &[f64], logp: &mut [f64], grad: &mut [f64], pool: Option<&rayon::ThreadPool>) {
        let rows: Vec<usize> = (0..logp.len()).collect();
        self.eval_rows(&rows, positions, logp, grad, pool);
    }

    /// The log density and gradient of the listed rows of `positions` (increasing indices),
    /// written to the same rows of `logp` and `grad`; the other rows are not touched. The rows
    /// are split over the threads in contiguous parts of the list, each part writing only the
    /// rows between its first and the next part's first.
    pub(crate) fn eval_rows(
        &self,
        rows: &[usize],
        positions: &[f64],
        logp: &mut [f64],
        grad: &mut [f64],
        pool: Option<&rayon::ThreadPool>,
    ) {
        use rayon::prelude::*;
        let d = self.dim();
        let c = rows.len();
        let threads = pool.map_or(1, |p| p.current_num_threads().min(c.div_ceil(self.chains_per_thread())).max(1));
        match pool {
            Some(pool) if threads > 1 => {
                // cut `logp` and `grad` at the first row of every part
                let mut parts = Vec::with_capacity(threads);
                let (mut lp_rest, mut g_rest, mut first) = (logp, grad, 0);
                let chunks: Vec<&[usize]> = rows.chunks(c.div_ceil(threads)).collect();
                for (k, part) in chunks.iter().enumerate() {
                    let end = chunks.get(k + 1).map_or(first + lp_rest.len(), |next| next[0]);
                    let (lp, lp_next) = std::mem::take(&mut lp_rest).split_at_mut(end - first);
                    let (g, g_next) = std::mem::take(&mut g_rest).split_at_mut((end - first) * d);
                    parts.push((*part, first, lp, g));
                    (lp_rest, g_rest, first) = (lp_next, g_next, end);
                }
                pool.install(|| parts.into_par_iter().for_each(|(part, first, lp, g)| self.eval_rows_part(part, first, positions, lp, g)));
            }
            _ => self.eval_rows_part(rows, 0, positions, logp, grad),
        }
    }
}

/// See [`FusedMlp::chains_per_thread`].
const MIN_WORK_PER_THREAD: usize = 32_768;

/// Activation values in place, inlined so that the instruction set of the caller applies
/// (the same functions as `kernels::act_forward`).
#[inline(always)]
fn act_forward_inline<E: Real>(act: Activation, z: &mut [E]) {
    match act {
        Activation::Identity => {}
        Activation::Tanh => z.iter_mut().for_each(|v| *v = v.tanh_kernel()),
        Activation::Relu => z.iter_mut().for_each(|v| *v = v.max(E::zero())),
        Activation::Sigmoid => z.iter_mut().for_each(|v| *v = E::one() / (E::one() + (-*v).exp())),
        _ => crate::kernels::activation::act_forward(act, z),
    }
}

/// `g ← g ⊙ act'(z)` from the activations `a` (and `z` where the derivative needs it).
#[inline(always)]
fn act_backward_into<E: Real>(act: Activation, a: &[E], z: Option<&[E]>, g: &mut [E]) {
    let one = E::one();
    match act {
        Activation::Identity => {}
        Activation::Tanh => g.iter_mut().zip(a).for_each(|(g, a)| *g *= one - *a * *a),
        Activation::Sigmoid => g.iter_mut().zip(a).for_each(|(g, a)| *g *= *a * (one - *a)),
        _ => crate::kernels::activation::act_backward(act, a, z, g),
    }
}
