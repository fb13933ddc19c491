//! The conjugate layer update in low-rank form, for units that see fewer context points than they
//! have weights (`n < k`: the hidden layers of the usual few-shot tasks).
//!
//! With `P = Π + Φᵀ Λ Φ` (one output unit, `Λ = diag λ`), Woodbury's identity gives
//!
//! ```text
//! C = P⁻¹ = Π⁻¹ − Gᵀ M⁻¹ G,    G = Λ^½ Φ Π⁻¹  (n × k),    M = I + Λ^½ Φ Π⁻¹ Φᵀ Λ^½  (n × n),
//! ln det P − ln det Π = ln det M,    tr(Π C) = k − n + tr M⁻¹,    C − C Π C = Gᵀ M⁻² G,
//! ```
//!
//! so after one product `Φ Π⁻¹` per posterior every product with `C` costs `O(nk)`, the KL needs
//! only the `n × n` matrix `M`, and its gradient w.r.t. `P` is `½ Gᵀ M⁻² G − ½(u mᵀ + m uᵀ)`. The
//! samples `w = C b` are one fused CPU op whose backward pass applies `C` to the incoming gradient
//! in the same form: no `k × k` posterior matrix is formed, factorised or put on the tape.
//!
//! Values and gradients equal those of the dense update in [`super::conjugate`] (tested on
//! random problems in f64, in this module's tests).

use std::ops::Range;

use dfdx::prelude::*;

use super::conjugate::{HostOut, LayerInputs, LayerOutputs};
use crate::num::dense as host;
use crate::num::dense::dot;
use crate::num::Taped;
use crate::{Error, Real, Result};

type T3<E, D> = Taped<(usize, usize, usize), E, D>;

/// Whether the low-rank form applies: a CPU tensor, one unit per group, every context point in the
/// taped chunk (no offsets), no online state, and fewer context points than weights per unit.
pub(crate) fn applies<E: Real, D: Device<E>>(inputs: &LayerInputs<E, D>, has_offsets: bool, keep_state: bool) -> bool {
    let n = inputs.data.as_ref().map_or(0, |d| d.phi.shape().1);
    crate::kernels::mean_field::is_cpu::<E, D>() && !has_offsets && !keep_state && inputs.units == 1 && n > 0 && n < inputs.k
}

/// The host copies of one layer's inputs, with the prior's inverse, shared by the forward and the
/// backward pass.
struct Problem<E> {
    /// Samples, groups (= output units), weights per unit, context points.
    s: usize,
    g: usize,
    k: usize,
    n: usize,
    /// Leading sizes of `Φ` and of `λ, v` (1 or `S`); distinct posteriors `max(Sφ, Sλ)`.
    sphi: usize,
    slam: usize,
    sp: usize,
    /// Whether every `Π` is diagonal (its gradient is then needed on the diagonal only).
    diagonal: bool,
    /// `Π⁻¹` `(G, k, k)`, `μ` `(G, k)`, `ζ` `(S, G, k)`.
    pinv: Vec<E>,
    mean: Vec<E>,
    zeta: Vec<E>,
    /// `Φ` `(Sφ, n, k)`, `λ`, `v` `(Sλ, n, G)`, `ε` `(S, n, G)`.
    phi: Vec<E>,
    lam: Vec<E>,
    v: Vec<E>,
    eps: Vec<E>,
}

impl<E: Real> Problem<E> {
    fn phi_of(&self, p: usize) -> &[E] {
        let row = if self.sphi > 1 { p } else { 0 };
        &self.phi[row * self.n * self.k..][..self.n * self.k]
    }

    /// `(λ_r, v_r)` of unit `g` for every context point `r`, as posterior `p` sees them.
    fn unit_data(&self, p: usize, g: usize) -> impl Iterator<Item = (E, E)> + '_ {
        let row = if self.slam > 1 { p } else { 0 };
        let at = row * self.n * self.g + g;
        (0..self.n).map(move |r| (self.lam[at + r * self.g], self.v[at + r * self.g]))
    }

    /// The samples drawn from posterior `p`: all of them when there is one posterior.
    fn samples_of(&self, p: usize) -> Range<usize> {
        if self.sp == 1 {
            0..self.s
        } else {
            p..p + 1
        }
    }

    /// The samples of the posteriors `ps`.
    fn samples_of_range(&self, ps: &Range<usize>) -> Range<usize> {
        if self.sp == 1 {
            0..self.s
        } else {
            ps.clone()
        }
    }

    fn eps_at(&self, s: usize, r: usize, g: usize) -> E {
        self.eps[(s * self.n + r) * self.g + g]
    }

    fn kk(&self) -> usize {
        self.k * self.k
    }
}

/// The low-rank factors of every posterior, kept for the backward pass: `G` `(sp, G, n, k)` and
/// `M⁻¹` `(sp, G, n, n)`.
struct Factors<E> {
    g: Vec<E>,
    minv: Vec<E>,
}

/// Gradients accumulated by one thread: shared ones as sums, per-posterior ones as its own rows.
struct Bars<E> {
    kl: f64,
    prec: Vec<E>,
    mean: Vec<E>,
    phi: Vec<E>,
    lam: Vec<E>,
    v: Vec<E>,
}

impl<E: Real> Bars<E> {
    fn zeros(pr: &Problem<E>, rows: usize) -> Self {
        let z = E::zero();
        let own = |per_sample: bool| if per_sample { rows } else { 1 };
        Bars {
            kl: 0.0,
            prec: vec![z; pr.g * pr.kk()],
            mean: vec![z; pr.g * pr.k],
            phi: vec![z; own(pr.sphi > 1) * pr.n * pr.k],
            lam: vec![z; own(pr.slam > 1) * pr.n * pr.g],
            v: vec![z; own(pr.slam > 1) * pr.n * pr.g],
        }
    }

    /// Thread-local row of posterior `p` (of a thread starting at `p0`) in a per-sample buffer.
    fn phi_row(&mut self, pr: &Problem<E>, p: usize, p0: usize) -> &mut [E] {
        let row = if pr.sphi > 1 { p - p0 } else { 0 };
        &mut self.phi[row * pr.n * pr.k..][..pr.n * pr.k]
    }

    fn lam_at(pr: &Problem<E>, p: usize, p0: usize, r: usize, g: usize) -> usize {
        let row = if pr.slam > 1 { p - p0 } else { 0 };
        (row * pr.n + r) * pr.g + g
    }

    /// Adds the threads' parts in order: sums of the shared gradients, concatenation of the rest.
    fn merge(pr: &Problem<E>, parts: Vec<Bars<E>>) -> Bars<E> {
        let mut it = parts.into_iter();
        let mut out = it.next().expect("at least one thread");
        for part in it {
            out.kl += part.kl;
            add_into(&mut out.prec, &part.prec);
            add_into(&mut out.mean, &part.mean);
            let join = |a: &mut Vec<E>, b: Vec<E>, per_sample: bool| {
                if per_sample {
                    a.extend(b)
                } else {
                    add_into(a, &b)
                }
            };
            join(&mut out.phi, part.phi, pr.sphi > 1);
            join(&mut out.lam, part.lam, pr.slam > 1);
            join(&mut out.v, part.v, pr.slam > 1);
        }
        out
    }
}

fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
}

/// `y += α x`.
#[inline(always)]
fn axpy<E: Real>(alpha: E, x: &[E], y: &mut [E]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * *x);
}

/// `y = A x` for a row-major `rows × cols` `A` (`y` has `rows` entries).
#[inline(always)]
fn matvec<E: Real>(a: &[E], cols: usize, x: &[E], y: &mut [E]) {
    for (yi, row) in y.iter_mut().zip(a.chunks_exact(cols)) {
        *yi = dot(row, x);
    }
}

/// `y += α Aᵀ x` for a row-major `rows × cols` `A` (`x` has `rows` entries, `y` `cols`).
#[inline(always)]
fn matvec_t_add<E: Real>(alpha: E, a: &[E], cols: usize, x: &[E], y: &mut [E]) {
    for (xi, row) in x.iter().zip(a.chunks_exact(cols)) {
        axpy(alpha * *xi, row, y);
    }
}

/// `Y = X Π⁻¹_g` for `rows` stacked rows of `X` (diagonal `Π` scales the columns).
#[inline(always)]
fn times_pinv<E: Real>(pr: &Problem<E>, g: usize, x: &[E], rows: usize, y: &mut [E]) {
    let k = pr.k;
    let pinv = &pr.pinv[g * pr.kk()..][..pr.kk()];
    if pr.diagonal {
        for (yr, xr) in y[..rows * k].chunks_exact_mut(k).zip(x.chunks_exact(k)) {
            for c in 0..k {
                yr[c] = xr[c] * pinv[c * k + c];
            }
        }
    } else {
        host::gemm_rm(rows, k, k, E::one(), &x[..rows * k], pinv, E::zero(), &mut y[..rows * k]);
    }
}

/// `Π̄_g += Lᵀ R` for `rows` stacked rows (only the diagonal when `Π` is diagonal).
#[inline(always)]
fn add_outer<E: Real>(pr: &Problem<E>, l: &[E], r: &[E], rows: usize, out: &mut [E]) {
    let k = pr.k;
    if pr.diagonal {
        for (lr, rr) in l[..rows * k].chunks_exact(k).zip(r.chunks_exact(k)) {
            for c in 0..k {
                out[c * k + c] += lr[c] * rr[c];
            }
        }
    } else if rows > 0 {
        let (lm, rm) = (host::MatRef::row_major(&l[..rows * k], rows, k), host::MatRef::row_major(&r[..rows * k], rows, k));
        host::gemm(E::one(), lm.t(), rm, E::one(), host::MatMut::row_major(out, k, k));
    }
}

/// Splits the posteriors over threads when there is enough work (each thread writes its own
/// slices of the big outputs).
fn ranges(sp: usize, work: usize, threads: usize) -> Vec<Range<usize>> {
    // a few chunks per thread, so that rayon's work stealing balances them with other work
    let chunks = if sp > 1 && work > 4_000_000 && threads != 1 { (4 * crate::num::threads_or_all(threads)).min(sp) } else { 1 };
    let per = sp.div_ceil(chunks);
    (0..chunks).map(|t| t * per..((t + 1) * per).min(sp)).filter(|r| !r.is_empty()).collect()
}

/// Runs `f` on every range with its own slices of the buffers (`per[i]` values per posterior of
/// buffer `i`), spread over rayon's threads when there is more than one range; the results in
/// range order.
fn on_threads<'a, const B: usize, R: Send>(
    ranges: &[Range<usize>],
    bufs: [&'a mut [f64]; B],
    per: [usize; B],
    f: impl Fn(Range<usize>, [&'a mut [f64]; B]) -> R + Sync,
) -> Vec<R> {
    let mut rest = bufs;
    let jobs: Vec<_> = ranges
        .iter()
        .map(|r| {
            let mine: [&'a mut [f64]; B] = std::array::from_fn(|i| {
                let (a, tail) = std::mem::take(&mut rest[i]).split_at_mut(r.len() * per[i]);
                rest[i] = tail;
                a
            });
            (r.clone(), mine)
        })
        .collect();
    if jobs.len() == 1 {
        return jobs.into_iter().map(|(r, m)| f(r, m)).collect();
    }
    use rayon::prelude::*;
    jobs.into_par_iter().map(|(r, m)| f(r, m)).collect()
}

/// Per-posterior scratch of the forward pass.
struct Scratch<E> {
    /// Stacked rows (`Φ_p`, then `ζ_s` of its samples) and their product with `Π⁻¹`.
    x: Vec<E>,
    y: Vec<E>,
    /// `Φ Π⁻¹ Φᵀ` of every posterior of a block, `n × n` each.
    s0: Vec<E>,
    /// `M` of the block, then its inverse, and `ln det M`.
    m: Vec<E>,
    minv: Vec<E>,
    logdet: [E; host::LANES],
    work: Vec<E>,
    /// `Lᵀ R` rows of `Π̄` (`n + 3` per posterior).
    l: Vec<E>,
    r: Vec<E>,
}

/// The forward pass over posteriors `ps`: the samples into `w0` (rows of `ps`' samples), the
/// factors into `gf`, `mi`, and (when `want_kl`) the KL and its gradients.
#[inline(always)]
fn forward_impl<E: Real>(
    pr: &Problem<E>,
    what: &str,
    ps: Range<usize>,
    want_kl: bool,
    w0: &mut [E],
    gf: &mut [E],
    mi: &mut [E],
) -> Result<Bars<E>> {
    let (k, n, ng) = (pr.k, pr.n, pr.g);
    let z = E::zero();
    let omega = crate::num::cast::from_f64::<E>(1.0 / pr.sp as f64);
    let half = crate::num::cast::from_f64::<E>(0.5);
    let samples = pr.samples_of_range(&ps);
    let mut bars = Bars::zeros(pr, ps.len());
    let stacked = ps.len() * n + samples.len();
    let mut sc = Scratch {
        x: vec![z; stacked * k],
        y: vec![z; stacked * k],
        s0: vec![z; host::LANES * n * n],
        m: vec![z; host::LANES * n * n],
        minv: vec![z; host::LANES * n * n],
        logdet: [z; host::LANES],
        work: Vec::new(),
        l: vec![z; if want_kl { ps.len() * (n + 3) * k } else { 0 }],
        r: vec![z; if want_kl { ps.len() * (n + 3) * k } else { 0 }],
    };
    // per-posterior vectors
    let (mut lh, mut lam, mut lv, mut vv) = (vec![z; n], vec![z; n], vec![z; n], vec![z; n]);
    let (mut t1, mut q, mut le, mut y) = (vec![z; n], vec![z; n], vec![z; n], vec![z; n]);
    let (mut m, mut e, mut gv, mut u) = (vec![z; k], vec![z; k], vec![z; k], vec![z; k]);
    let (mut phiu, mut phim, mut phimu, mut t) = (vec![z; n], vec![z; n], vec![z; n], vec![z; n]);
    let (mut minv2, mut t2) = (vec![z; n * n], vec![z; n * n]);
    for g in 0..ng {
        let mu = &pr.mean[g * k..][..k];
        // stack Φ_p and ζ_s (s drawn from p), times Π⁻¹_g
        let mut at = 0;
        for p in ps.clone() {
            sc.x[at..at + n * k].copy_from_slice(pr.phi_of(p));
            at += n * k;
            for s in pr.samples_of(p) {
                sc.x[at..at + k].copy_from_slice(&pr.zeta[(s * ng + g) * k..][..k]);
                at += k;
            }
        }
        times_pinv(pr, g, &sc.x, stacked, &mut sc.y);
        let offset = |p: usize| (p - ps.start) * n * k + (pr.samples_of(p).start - samples.start) * k;
        let pvec: Vec<usize> = ps.clone().collect();
        let mut lr_rows = 0;
        for block in pvec.chunks(host::LANES) {
            // M = I + Λ½ Φ Π⁻¹ Φᵀ Λ½ for the block, then its inverse
            for (bi, &p) in block.iter().enumerate() {
                let (phi, psi) = (pr.phi_of(p), &sc.y[offset(p)..][..n * k]);
                let s0 = &mut sc.s0[bi * n * n..][..n * n];
                for r in 0..n {
                    for c in 0..=r {
                        let v = dot(&psi[r * k..][..k], &phi[c * k..][..k]);
                        s0[r * n + c] = v;
                        s0[c * n + r] = v;
                    }
                }
                for (r, (l, _)) in pr.unit_data(p, g).enumerate() {
                    lh[r] = l.sqrt();
                }
                let mm = &mut sc.m[bi * n * n..][..n * n];
                for r in 0..n {
                    for c in 0..n {
                        mm[r * n + c] = lh[r] * lh[c] * s0[r * n + c];
                    }
                    mm[r * n + r] += E::one();
                }
            }
            let nb = block.len();
            host::batch_spd_inverse(&sc.m[..nb * n * n], nb, n, &mut sc.minv[..nb * n * n], &mut sc.logdet[..nb], &mut sc.work).map_err(
                |(lane, pivot)| Error::NotPositiveDefinite {
                    what: format!("{what}: posterior precision (low-rank form)"),
                    index: block[lane] * ng + g,
                    pivot,
                },
            )?;
            for (bi, &p) in block.iter().enumerate() {
                let (phi, psi) = (pr.phi_of(p), &sc.y[offset(p)..][..n * k]);
                let s0 = &sc.s0[bi * n * n..][..n * n];
                let minv = &sc.minv[bi * n * n..][..n * n];
                for (r, (l, v)) in pr.unit_data(p, g).enumerate() {
                    lam[r] = l;
                    lh[r] = l.sqrt();
                    lv[r] = l * v;
                    vv[r] = v;
                }
                let fi = ((p - ps.start) * ng + g) * n;
                mi[fi * n..][..n * n].copy_from_slice(minv);
                let gm = &mut gf[fi * k..][..n * k];
                for r in 0..n {
                    for c in 0..k {
                        gm[r * k + c] = lh[r] * psi[r * k + c];
                    }
                }
                let gm = &gf[fi * k..][..n * k];
                // G h = Λ½ (Φ μ + S₀ (λ ⊙ v)), q = M⁻¹ G h, m = μ + Ψᵀ t with t = λ ⊙ v − λ½ ⊙ q
                // (Gᵀ x = Ψᵀ(λ½ ⊙ x))
                matvec(phi, k, mu, &mut phimu);
                for r in 0..n {
                    t1[r] = lh[r] * (phimu[r] + dot(&s0[r * n..][..n], &lv));
                }
                matvec(minv, n, &t1, &mut q);
                for r in 0..n {
                    t[r] = lv[r] - lh[r] * q[r];
                }
                m.copy_from_slice(mu);
                matvec_t_add(E::one(), psi, k, &t, &mut m);
                for s in pr.samples_of(p) {
                    // w = m + Π⁻¹ζ + Ψᵀ(λ½ ⊙ ε − λ½ ⊙ M⁻¹ Λ½ (Φ Π⁻¹ζ + S₀(λ½ ⊙ ε)))
                    let zs = &sc.y[offset(p) + n * k + (s - pr.samples_of(p).start) * k..][..k];
                    for r in 0..n {
                        le[r] = lh[r] * pr.eps_at(s, r, g);
                    }
                    for r in 0..n {
                        y[r] = lh[r] * (dot(&phi[r * k..][..k], zs) + dot(&s0[r * n..][..n], &le));
                    }
                    matvec(minv, n, &y, &mut t1);
                    for r in 0..n {
                        le[r] -= lh[r] * t1[r];
                    }
                    let w = &mut w0[((s - samples.start) * ng + g) * k..][..k];
                    for c in 0..k {
                        w[c] = m[c] + zs[c];
                    }
                    matvec_t_add(E::one(), psi, k, &le, w);
                }
                if !want_kl {
                    continue;
                }
                // KL = ½[tr M⁻¹ − n + eᵀΠe + ln det M] with e = m − μ = Ψᵀ t and Π e = Φᵀ t
                for c in 0..k {
                    e[c] = m[c] - mu[c];
                }
                gv.iter_mut().for_each(|x| *x = z);
                matvec_t_add(E::one(), phi, k, &t, &mut gv);
                let tr: f64 = (0..n).map(|r| minv[r * n + r].cast_to_f64()).sum();
                let kl = 0.5 * (tr - n as f64 + dot(&e, &gv).cast_to_f64() + sc.logdet[bi].cast_to_f64());
                bars.kl += kl / pr.sp as f64;
                // Φ e = S₀ t; u = C Π e = Ψᵀ(t − λ½ ⊙ q₂) with q₂ = M⁻¹ Λ½ Φ e;
                // μ̄ = Π u − Π e = −Φᵀ(λ½ ⊙ q₂); Φ u = S₀(t − λ½ ⊙ q₂), Φ m = Φ μ + S₀ t
                for r in 0..n {
                    let se = dot(&s0[r * n..][..n], &t);
                    t1[r] = lh[r] * se;
                    phim[r] = phimu[r] + se;
                }
                matvec(minv, n, &t1, &mut q);
                for r in 0..n {
                    t1[r] = lh[r] * q[r];
                    t[r] -= t1[r];
                }
                u.iter_mut().for_each(|x| *x = z);
                matvec_t_add(E::one(), psi, k, &t, &mut u);
                matvec_t_add(-omega, phi, k, &t1, &mut bars.mean[g * k..][..k]);
                matvec(s0, n, &t, &mut phiu);
                // Π̄ rows: Gᵀ ½(M⁻² − M⁻¹) G + ½ e eᵀ + u (μ − ½m)ᵀ − ½ m uᵀ
                host::gemm_rm(n, n, n, E::one(), minv, minv, E::zero(), &mut minv2);
                let lrow = &mut sc.l[lr_rows * k..][..(n + 3) * k];
                lrow[..n * k].copy_from_slice(gm);
                lrow[n * k..(n + 1) * k].copy_from_slice(&e);
                lrow[(n + 1) * k..(n + 2) * k].copy_from_slice(&u);
                lrow[(n + 2) * k..].copy_from_slice(&m);
                for (a, (b, c)) in t2.iter_mut().zip(minv2.iter().zip(minv)) {
                    *a = omega * half * (*b - *c);
                }
                let rrow = &mut sc.r[lr_rows * k..][..(n + 3) * k];
                host::gemm_rm(n, n, k, E::one(), &t2, gm, E::zero(), &mut rrow[..n * k]);
                for c in 0..k {
                    rrow[n * k + c] = omega * half * e[c];
                    rrow[(n + 1) * k + c] = omega * (mu[c] - half * m[c]);
                    rrow[(n + 2) * k + c] = -omega * half * u[c];
                }
                lr_rows += n + 3;
                // the data, through P̄ = ½ Gᵀ M⁻² G − ½(u mᵀ + m uᵀ): with T = ½ S₀ Λ½ M⁻²,
                // Φ P̄ = T G − ½(Φu mᵀ + Φm uᵀ), λ_r (T G)_r = −λ½_r (N₁ G)_r (N₁ = ½(M⁻² − M⁻¹),
                // whose rows ω N₁ G are in `rrow`) and (T G Φᵀ)_rr = (T Λ½ S₀)_rr = ½‖(S₀ Λ½ M⁻¹)_r‖²
                for r in 0..n {
                    for i in 0..n {
                        t2[r * n + i] = s0[r * n + i] * lh[i];
                    }
                }
                host::gemm_rm(n, n, n, E::one(), &t2, minv, E::zero(), &mut minv2);
                let p0 = ps.start;
                for r in 0..n {
                    let diag_t = half * dot(&minv2[r * n..][..n], &minv2[r * n..][..n]);
                    let li = Bars::<E>::lam_at(pr, p, p0, r, g);
                    bars.lam[li] += omega * (diag_t + phiu[r] * (vv[r] - phim[r]));
                    bars.v[li] += omega * lam[r] * phiu[r];
                    let (a_ng, a_m, a_u) = (-(lh[r] + lh[r]), -omega * lam[r] * phiu[r], omega * (lv[r] - lam[r] * phim[r]));
                    let ngr = &rrow[r * k..][..k];
                    let fb = &mut bars.phi_row(pr, p, p0)[r * k..][..k];
                    for c in 0..k {
                        fb[c] += a_ng * ngr[c] + a_m * m[c] + a_u * u[c];
                    }
                }
            }
        }
        if want_kl {
            add_outer(pr, &sc.l, &sc.r, lr_rows, &mut bars.prec[g * pr.kk()..][..pr.kk()]);
        }
    }
    Ok(bars)
}

/// [`forward_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2<E: Real>(
    pr: &Problem<E>,
    what: &str,
    ps: Range<usize>,
    want_kl: bool,
    w0: &mut [E],
    gf: &mut [E],
    mi: &mut [E],
) -> Result<Bars<E>> {
    forward_impl(pr, what, ps, want_kl, w0, gf, mi)
}

fn forward<E: Real>(
    pr: &Problem<E>,
    what: &str,
    ps: Range<usize>,
    want_kl: bool,
    w0: &mut [E],
    gf: &mut [E],
    mi: &mut [E],
) -> Result<Bars<E>> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `forward_avx2` is compiled with `avx2,fma`, both detected just above; its
            // body is the safe `forward_impl`.
            return unsafe { forward_avx2(pr, what, ps, want_kl, w0, gf, mi) };
        }
    }
    forward_impl(pr, what, ps, want_kl, w0, gf, mi)
}

/// The gradients that flow back through the samples over posteriors `ps`: `ζ̄` (rows of `ps`'
/// samples) into `zb`, the rest into the returned sums and rows. `gw` is `∂L/∂w` `(S, G, k)`.
#[inline(always)]
fn backward_impl<E: Real>(pr: &Problem<E>, f: &Factors<E>, w0: &[E], gw: &[E], ps: Range<usize>, zb: &mut [E]) -> Bars<E> {
    let (k, n, ng) = (pr.k, pr.n, pr.g);
    let z = E::zero();
    let samples = pr.samples_of_range(&ps);
    let ns = samples.len();
    let mut bars = Bars::zeros(pr, ps.len());
    let (mut x, mut y) = (vec![z; ns * k], vec![z; ns * k]);
    let (mut l, mut rr) = (vec![z; ns * k], vec![z; ns * k]);
    let (mut t1, mut q, mut a, mut lam, mut lh, mut vv) = (vec![z; n], vec![z; n], vec![z; k], vec![z; n], vec![z; n], vec![z; n]);
    let half = crate::num::cast::from_f64::<E>(0.5);
    for g in 0..ng {
        let mu = &pr.mean[g * k..][..k];
        for s in samples.clone() {
            x[(s - samples.start) * k..][..k].copy_from_slice(&gw[(s * ng + g) * k..][..k]);
        }
        times_pinv(pr, g, &x, ns, &mut y);
        for p in ps.clone() {
            let phi = pr.phi_of(p);
            let fi = (p * ng + g) * n;
            let (gm, minv) = (&f.g[fi * k..][..n * k], &f.minv[fi * n..][..n * n]);
            for (r, (lr, v)) in pr.unit_data(p, g).enumerate() {
                lam[r] = lr;
                lh[r] = lr.sqrt();
                vv[r] = v;
            }
            for s in pr.samples_of(p) {
                let si = s - samples.start;
                let zs = &y[si * k..][..k];
                let w = &w0[(s * ng + g) * k..][..k];
                // a = C ḡ = Π⁻¹ḡ − Gᵀ M⁻¹ Λ½ Φ Π⁻¹ḡ
                for r in 0..n {
                    t1[r] = lh[r] * dot(&phi[r * k..][..k], zs);
                }
                matvec(minv, n, &t1, &mut q);
                a.copy_from_slice(zs);
                matvec_t_add(-E::one(), gm, k, &q, &mut a);
                zb[(si * ng + g) * k..][..k].copy_from_slice(&a);
                // μ̄ += Π a = ḡ − Φᵀ Λ½ q; Π̄ += a (μ − w)ᵀ
                let mb = &mut bars.mean[g * k..][..k];
                add_into(mb, &gw[(s * ng + g) * k..][..k]);
                for r in 0..n {
                    t1[r] = lh[r] * q[r];
                }
                matvec_t_add(-E::one(), phi, k, &t1, mb);
                l[si * k..][..k].copy_from_slice(&a);
                for c in 0..k {
                    rr[si * k + c] = mu[c] - w[c];
                }
                // the data, through Φᵀ(λ ⊙ (v − Φw) + √λ ⊙ ε)
                let p0 = ps.start;
                for r in 0..n {
                    let pr_row = &phi[r * k..][..k];
                    let (pa, pw) = (dot(pr_row, &a), dot(pr_row, w));
                    let ep = pr.eps_at(s, r, g);
                    let rho = lam[r] * (vv[r] - pw) + lh[r] * ep;
                    let li = Bars::<E>::lam_at(pr, p, p0, r, g);
                    bars.lam[li] += pa * (vv[r] - pw) + pa * ep * half / lh[r];
                    bars.v[li] += lam[r] * pa;
                    let fb = &mut bars.phi_row(pr, p, p0)[r * k..][..k];
                    let lpa = lam[r] * pa;
                    for c in 0..k {
                        fb[c] += rho * a[c] - lpa * w[c];
                    }
                }
            }
        }
        add_outer(pr, &l, &rr, ns, &mut bars.prec[g * pr.kk()..][..pr.kk()]);
    }
    bars
}

/// [`backward_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2<E: Real>(pr: &Problem<E>, f: &Factors<E>, w0: &[E], gw: &[E], ps: Range<usize>, zb: &mut [E]) -> Bars<E> {
    backward_impl(pr, f, w0, gw, ps, zb)
}

fn backward<E: Real>(pr: &Problem<E>, f: &Factors<E>, w0: &[E], gw: &[E], ps: Range<usize>, zb: &mut [E]) -> Bars<E> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `backward_avx2` is compiled with `avx2,fma`, both detected just above; its
            // body is the safe `backward_impl`.
            return unsafe { backward_avx2(pr, f, w0, gw, ps, zb) };
        }
    }
    backward_impl(pr, f, w0, gw, ps, zb)
}

/// The conjugate update of one layer in low-rank form (see the module docs); the caller checked
/// [`applies`]. `diagonal`: every prior precision is diagonal.
pub(crate) fn conjugate_layer<E: Real, D: Device<E>>(
    what: &str,
    inputs: LayerInputs<E, D>,
    s: usize,
    want_kl: bool,
    threads: usize,
) -> Result<LayerOutputs<E, D>> {
    use crate::kernels::mean_field::same;
    let LayerInputs { data, prec, mean, zeta, d_out, k, diagonal, .. } = inputs;
    let data = data.expect("`applies` checked that there are data");
    let (g, _) = *mean.shape();
    let (sphi, n, _) = *data.phi.shape();
    let slam = data.lam.shape().0;
    // the host update runs in f64 whatever `E` is: the low-rank form subtracts (Woodbury's
    // `Π⁻¹ − Gᵀ M⁻¹ G`, and `λ ⊙ v − λ½ ⊙ q = λ ⊙ (v − Φ m)`), which loses too many digits in f32
    // once the pseudo-observations are precise (a 20000-step f32 meta-training run diverged)
    let f = |t: Vec<E>| crate::num::cast::to_f64s(&t);
    let (pinv, _) = super::conjugate::prior_inverse(what, g, k, &f(prec.as_vec()))?;
    let pr = Problem {
        s,
        g,
        k,
        n,
        sphi,
        slam,
        sp: sphi.max(slam),
        diagonal,
        pinv,
        mean: f(mean.as_vec()),
        zeta: f(zeta.as_vec()),
        phi: f(data.phi.as_vec()),
        lam: f(data.lam.as_vec()),
        v: f(data.v.as_vec()),
        eps: f(data.eps.as_vec()),
    };
    debug_assert_eq!(g, d_out);
    let sp = pr.sp;
    let mut w0 = vec![0.0f64; s * g * k];
    let mut fac = Factors { g: vec![0.0f64; sp * g * n * k], minv: vec![0.0f64; sp * g * n * n] };
    let work = sp * g * (n * k * k + n * n * k);
    let rs = ranges(sp, work, threads);
    let w_rows = if sp == 1 { s } else { 1 };
    let parts = on_threads(&rs, [&mut w0, &mut fac.g, &mut fac.minv], [w_rows * g * k, g * n * k, g * n * n], |ps, [w, gf, mi]| {
        forward(&pr, what, ps, want_kl, w, gf, mi)
    });
    let bars = Bars::merge(&pr, parts.into_iter().collect::<Result<Vec<_>>>()?);
    let kl_value = bars.kl;
    let dev = mean.device().clone();
    // the KL on the tape: its value, with the host's adjoints as the gradients
    let kl = if want_kl {
        let e = |v: Vec<f64>| v.into_iter().map(crate::num::cast::from_f64::<E>).collect::<Vec<E>>();
        let mut out = HostOut::adjoints(kl_value, e(bars.prec), e(bars.mean), e(bars.phi), e(bars.lam), e(bars.v));
        let kl_inputs = LayerInputs {
            data: Some(super::conjugate::DataInputs {
                phi: data.phi.with_empty_tape(),
                lam: data.lam.with_empty_tape(),
                v: data.v.with_empty_tape(),
                eps: data.eps.clone(),
            }),
            prec: prec.with_empty_tape(),
            mean: mean.with_empty_tape(),
            zeta: zeta.with_empty_tape(),
            units: 1,
            d_out,
            k,
            diagonal,
        };
        Some(super::conjugate::kl_surrogate(&kl_inputs, &mut out))
    } else {
        None
    };
    // the samples: one op whose backward applies C to the incoming gradient
    let (prec_t, t0) = prec.split_tape();
    let (mean_t, t1) = mean.split_tape();
    let (zeta_t, t2) = zeta.split_tape();
    let (phi_t, t3) = data.phi.split_tape();
    let (lam_t, t4) = data.lam.split_tape();
    let (v_t, t5) = data.v.split_tape();
    let tape: OwnedTape<E, Cpu> = same(t0.merge(t1).merge(t2).merge(t3).merge(t4).merge(t5));
    let w: Tensor<(usize, usize, usize), E, D> =
        dev.tensor_from_vec(w0.iter().map(|v| crate::num::cast::from_f64::<E>(*v)).collect(), (s, g, k));
    let w_c: Tensor<(usize, usize, usize), E, Cpu> = same(w.clone());
    let mean_c: Tensor<(usize, usize), E, Cpu> = same(mean_t);
    let targets: [Tensor<(usize, usize, usize), E, Cpu>; 5] = [same(prec_t), same(zeta_t), same(phi_t), same(lam_t), same(v_t)];
    let mut tape = tape;
    tape.add_backward_op(move |grads: &mut Gradients<E, Cpu>| {
        grads.try_alloc_for(&w_c)?;
        grads.try_alloc_for(&mean_c)?;
        for t in &targets {
            grads.try_alloc_for(t)?;
        }
        let gw = crate::num::cast::to_f64s(&grads.get_or_alloc_mut(&w_c)?.to_vec());
        let mut zb = vec![0.0f64; s * g * k];
        let rs = ranges(pr.sp, work, threads);
        let z_rows = if pr.sp == 1 { pr.s } else { 1 };
        let parts = on_threads(&rs, [&mut zb], [z_rows * g * k], |ps, [zb]| backward(&pr, &fac, &w0, &gw, ps, zb));
        let bars = Bars::merge(&pr, parts);
        let add_into = |dst: &mut [E], src: &[f64]| dst.iter_mut().zip(src).for_each(|(a, b)| *a += crate::num::cast::from_f64::<E>(*b));
        add_into(grads.get_or_alloc_mut(&mean_c)?, &bars.mean);
        for (t, src) in targets.iter().zip([&bars.prec, &zb, &bars.phi, &bars.lam, &bars.v]) {
            add_into(grads.get_or_alloc_mut(t)?, src);
        }
        Ok(())
    });
    let w: T3<E, D> = same(same::<_, Tensor<(usize, usize, usize), E, Cpu>>(w).put_tape(tape));
    Ok(LayerOutputs { w, kl, kl_value, state: None })
}

#[cfg(test)]
mod tests {
    use dfdx::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::super::conjugate::{conjugate_layer, DataInputs, LayerInputs};

    type Leaf = Tensor<(usize, usize, usize), f64, Cpu>;

    /// One random layer problem: `(Π, μ, ζ, Φ, λ, v, ε)` as host vectors.
    struct Case {
        s: usize,
        g: usize,
        k: usize,
        n: usize,
        sphi: usize,
        slam: usize,
        diagonal: bool,
    }

    /// Value of `Σ w ⊙ R + 0.7 KL` and the gradients of every input, through the low-rank form
    /// (`dense = false`) or the dense update.
    fn run(c: &Case, dense: bool, want_kl: bool) -> (Vec<f64>, f64, Vec<Vec<f64>>) {
        let dev = Cpu::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut normal = |len: usize| -> Vec<f64> { (0..len).map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal)).collect() };
        let (s, g, k, n) = (c.s, c.g, c.k, c.n);
        let mut prec = vec![0.0; g * k * k];
        let a = normal(g * k * k);
        for gi in 0..g {
            for i in 0..k {
                for j in 0..k {
                    let v = if c.diagonal {
                        0.0
                    } else {
                        (0..k).map(|l| a[(gi * k + i) * k + l] * a[(gi * k + j) * k + l]).sum::<f64>() / k as f64
                    };
                    prec[(gi * k + i) * k + j] = v + if i == j { 1.0 + 0.3 * (i % 3) as f64 } else { 0.0 };
                }
            }
        }
        let mean = normal(g * k);
        let zeta = normal(s * g * k);
        let phi = normal(c.sphi * n * k);
        let lam: Vec<f64> = normal(c.slam * n * g).iter().map(|x| 0.5 + x.abs()).collect();
        let v = normal(c.slam * n * g);
        let eps = normal(s * n * g);
        let r = normal(s * g * k);
        let leaves: Vec<Leaf> = vec![
            dev.tensor_from_vec(prec, (g, k, k)),
            dev.tensor_from_vec(zeta, (s, g, k)),
            dev.tensor_from_vec(phi, (c.sphi, n, k)),
            dev.tensor_from_vec(lam, (c.slam, n, g)),
            dev.tensor_from_vec(v, (c.slam, n, g)),
        ];
        let mean_leaf: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(mean, (g, k));
        let inputs = LayerInputs {
            data: Some(DataInputs {
                phi: leaves[2].leaky_trace(),
                lam: leaves[3].leaky_trace(),
                v: leaves[4].leaky_trace(),
                eps: dev.tensor_from_vec(eps, (s, n, g)),
            }),
            prec: leaves[0].leaky_trace(),
            mean: mean_leaf.leaky_trace(),
            zeta: leaves[1].leaky_trace(),
            units: 1,
            d_out: g,
            k,
            diagonal: c.diagonal,
        };
        assert!(super::applies(&inputs, false, false), "the case is one the low-rank form takes");
        let out = if dense {
            conjugate_layer("test", inputs, s, None, want_kl, false, 0).unwrap()
        } else {
            super::conjugate_layer("test", inputs, s, want_kl, 0).unwrap()
        };
        let w = out.w.as_vec();
        let mut loss = (out.w * dev.tensor_from_vec(r, (s, g, k))).sum::<(), _>();
        if let Some(kl) = out.kl {
            loss = loss + kl * 0.7;
        }
        let grads = loss.backward();
        let mut gs: Vec<Vec<f64>> = leaves.iter().map(|t| grads.get(t).as_vec()).collect();
        gs.push(grads.get(&mean_leaf).as_vec());
        if c.diagonal {
            // only the diagonal of Π̄ reaches a diagonal prior's parameters
            gs[0] = (0..g * k).map(|i| gs[0][(i / k) * k * k + (i % k) * (k + 1)]).collect();
        }
        (w, out.kl_value, gs)
    }

    #[test]
    fn low_rank_form_equals_the_dense_update() {
        let names = ["Π", "ζ", "Φ", "λ", "v", "μ"];
        let cases = [
            // per-sample designs, shared pseudo-observations (hidden layers); big enough for threads
            Case { s: 16, g: 20, k: 40, n: 10, sphi: 16, slam: 1, diagonal: false },
            Case { s: 16, g: 20, k: 40, n: 10, sphi: 16, slam: 1, diagonal: true },
            // per-sample pseudo-observations too; one shared posterior; one context point
            Case { s: 3, g: 4, k: 7, n: 3, sphi: 3, slam: 3, diagonal: false },
            Case { s: 5, g: 3, k: 6, n: 4, sphi: 1, slam: 1, diagonal: false },
            Case { s: 4, g: 2, k: 5, n: 1, sphi: 4, slam: 1, diagonal: true },
        ];
        for (ci, c) in cases.iter().enumerate() {
            for want_kl in [true, false] {
                let (w_lr, kl_lr, g_lr) = run(c, false, want_kl);
                let (w_d, kl_d, g_d) = run(c, true, want_kl);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
                assert!(w_lr.iter().zip(&w_d).all(|(a, b)| close(*a, *b)), "case {ci}: samples differ");
                assert!(close(kl_lr, kl_d), "case {ci}: KL {kl_lr} vs {kl_d}");
                for (name, (a, b)) in names.iter().zip(g_lr.iter().zip(&g_d)) {
                    assert_eq!(a.len(), b.len(), "case {ci}: {name}");
                    for (i, (x, y)) in a.iter().zip(b).enumerate() {
                        assert!(close(*x, *y), "case {ci} (KL {want_kl}): ∂/∂{name}[{i}]: low-rank {x} vs dense {y}");
                    }
                }
            }
        }
    }
}
