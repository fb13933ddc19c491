//! The fused conjugate layer update: every output unit's exact Bayesian-linear-regression
//! posterior given pseudo-observations, a reparameterised sample from it, and the closed-form KL to
//! the prior, with exact first-order gradients.
//!
//! For a group of `units` output units (one unit for unit-wise priors, a whole layer for layer-wise
//! ones) with prior `N(μ, Π⁻¹)` over its `K = units·k` weights:
//!
//! ```text
//! P = Π + ΔP + blockdiag_d(Φᵀ diag(λ_d) Φ)              (precision; ΔP: other context chunks)
//! h = Π μ + Δh + concat_d Φᵀ(λ_d ⊙ v_d)                  (precision × mean)
//! w = P⁻¹ (h + ζ + Δb + concat_d Φᵀ(√λ_d ⊙ ε_d))         ζ ~ N(0, Π), ε ~ N(0, I)
//! ```
//!
//! The perturbation `ζ + Φᵀ(√λ ε)` has covariance `P`, so `w ~ N(P⁻¹h, P⁻¹)` exactly ("perturb and
//! solve"), and `w` is a differentiable function of `Φ, λ, v, Π, μ` for fixed noise: a valid
//! reparameterisation that needs only a solve, never the derivative of a Cholesky factor.
//!
//! Everything is computed on the host (Cholesky, inverse, KL and its gradient, in the dtype `E`).
//! The tape then carries two surrogates (see [`crate::num::linalg`]):
//! - `w = w₀ + t − const(t)` with `t = P₀⁻¹ r` and `r = Π(μ − w₀) + ζ + Φᵀ(λ ⊙ (v − Φw₀) + √λ ⊙ ε)`,
//!   the linearisation of `P⁻¹b` (constant terms dropped, as they do not change the derivative);
//! - `KL = KL₀ + ℓ − const(ℓ)` with `ℓ = ⟨Π̄, Π⟩ + ⟨μ̄, μ⟩ + ⟨Φ̄, Φ⟩ + ⟨λ̄, λ⟩ + ⟨v̄, v⟩`, the bars
//!   being the exact gradients of the KL computed on the host.
//!
//! Both have the exact value and the exact first derivative; the tape work is a few batched
//! matrix-vector products per layer.

use dfdx::prelude::*;

use crate::num::dense as host;
use crate::num::dense::{gemm, MatMut, MatRef};
use crate::num::linalg::{attach, constant_of};
use crate::vi::prior::Taped;
use crate::{Error, Real, Result};

type T3<E, D> = Taped<(usize, usize, usize), E, D>;

/// Constant natural-parameter contributions of context points outside the taped chunk (or of
/// earlier data, for online updates). `so ∈ {1, S}` copies of `ΔP` and `Δh`; `Δb` per sample.
#[derive(Debug, Clone)]
pub(crate) struct Offsets<E> {
    pub so: usize,
    /// `(so, G, K, K)`.
    pub dp: Vec<E>,
    /// `(so, G, K)`.
    pub dh: Vec<E>,
    /// `(S, G, K)`.
    pub db: Vec<E>,
}

impl<E: Real> Offsets<E> {
    pub fn zeros(so: usize, s: usize, g: usize, kk: usize) -> Self {
        Self { so, dp: vec![E::zero(); so * g * kk * kk], dh: vec![E::zero(); so * g * kk], db: vec![E::zero(); s * g * kk] }
    }
}

/// Host values of a layer's data on the host, for accumulating offsets.
pub(crate) struct HostData<'a, E> {
    pub sphi: usize,
    pub n: usize,
    pub k: usize,
    pub phi: &'a [E],
    pub slam: usize,
    pub d_out: usize,
    pub lam: &'a [E],
    pub v: &'a [E],
    /// `(S, N, d_out)`.
    pub eps: &'a [E],
}

impl<E: Real> Offsets<E> {
    /// Adds the natural-parameter contributions of `data` for groups of `units` units.
    pub fn accumulate(&mut self, data: &HostData<'_, E>, s: usize, g: usize, kk: usize, units: usize) {
        let HostData { sphi, n, k, slam, .. } = *data;
        // offsets become per-sample as soon as the data are
        let so = self.so.max(sphi).max(slam);
        if so != self.so {
            let mut dp = Vec::with_capacity(so * g * kk * kk);
            let mut dh = Vec::with_capacity(so * g * kk);
            for _ in 0..so {
                dp.extend_from_slice(&self.dp);
                dh.extend_from_slice(&self.dh);
            }
            self.dp = dp;
            self.dh = dh;
            self.so = so;
        }
        let dims = Dims { s, g, kk, units, k, n, sp: so };
        let mut scaled = vec![E::zero(); n * k];
        for sp in 0..so {
            for gi in 0..g {
                let at = dims.item(sp, gi);
                for u in 0..units {
                    let blk = &mut self.dp[dims.mat(at).start + dims.unit_diag(u)..];
                    let hb = &mut self.dh[dims.vec(at)][dims.unit(u)];
                    add_unit_terms(data.unit(sp, dims.output(gi, u)), &mut scaled, blk, kk, hb);
                }
            }
        }
        for si in 0..s {
            for gi in 0..g {
                for u in 0..units {
                    let bb = &mut self.db[dims.vec(dims.item(si, gi))][dims.unit(u)];
                    data.add_perturbation(si, dims.output(gi, u), bb);
                }
            }
        }
    }
}

/// A layer's posterior natural parameters on the host (kept for online updates).
#[derive(Debug, Clone)]
pub(crate) struct HostPosterior<E> {
    /// Distinct posteriors (1 when they do not depend on the sample).
    pub sp: usize,
    pub g: usize,
    pub kk: usize,
    /// `P` `(sp, G, K, K)`.
    pub prec: Vec<E>,
    /// `h` `(sp, G, K)`.
    pub shift: Vec<E>,
    /// `b` `(S, G, K)`.
    pub sample_shift: Vec<E>,
}

/// The taped inputs of one conjugate layer update.
pub(crate) struct LayerInputs<E: Dtype, D: Storage<E>> {
    /// Design `[a, 1]` of the (taped chunk of the) context, `(Sφ, N, k)`, `Sφ ∈ {1, S}`; `None`
    /// when the chunk is empty.
    pub data: Option<DataInputs<E, D>>,
    /// Prior precision `Π` `(G, K, K)`.
    pub prec: T3<E, D>,
    /// Prior mean `(G, K)`.
    pub mean: Taped<(usize, usize), E, D>,
    /// `ζ ~ N(0, Π)` `(S, G, K)`.
    pub zeta: T3<E, D>,
    /// Units per group.
    pub units: usize,
    pub d_out: usize,
    pub k: usize,
    /// Whether every prior precision is diagonal (only their diagonal then needs a gradient).
    pub diagonal: bool,
}

pub(crate) struct DataInputs<E: Dtype, D: Storage<E>> {
    pub phi: T3<E, D>,
    /// `(Sλ, N, d_out)`.
    pub lam: T3<E, D>,
    /// `(Sλ, N, d_out)`.
    pub v: T3<E, D>,
    /// `(S, N, d_out)`.
    pub eps: Tensor<(usize, usize, usize), E, D>,
}

pub(crate) struct LayerOutputs<E: Dtype, D: Storage<E>> {
    /// Samples `(S, d_out, k)`.
    pub w: T3<E, D>,
    /// KL averaged over samples (when requested).
    pub kl: Option<Taped<(), E, D>>,
    pub kl_value: f64,
    pub state: Option<HostPosterior<E>>,
}

pub(super) struct HostOut<E> {
    w0: Vec<E>,
    cinv: Vec<E>,
    sp: usize,
    kl: f64,
    prec_bar: Vec<E>,
    mean_bar: Vec<E>,
    phi_bar: Vec<E>,
    lam_bar: Vec<E>,
    v_bar: Vec<E>,
    state: Option<HostPosterior<E>>,
}

#[allow(clippy::too_many_arguments)]
fn host_update<E: Real>(
    what: &str,
    data: Option<&HostData<'_, E>>,
    s: usize,
    g: usize,
    kk: usize,
    units: usize,
    prec: &[E],
    mean: &[E],
    zeta: &[E],
    offsets: Option<&Offsets<E>>,
    (want_kl, keep_state): (bool, bool),
    threads: usize,
) -> Result<HostOut<E>> {
    let (sphi, slam) = data.map_or((1, 1), |d| (d.sphi, d.slam));
    let so = offsets.map_or(1, |o| o.so);
    let sp = sphi.max(slam).max(so);
    let dims = Dims { s, g, kk, units, k: kk / units, n: data.map_or(0, |d| d.n), sp };
    let (pinv, ld_pi, pimu) = factor_prior(what, dims, prec, mean)?;
    let mut out = HostOut::zeros(dims, data, want_kl, keep_state);
    let ctx = Ctx {
        what,
        dims,
        prior: PriorHost { prec, mean, pimu: &pimu, pinv: &pinv, ld_pi: &ld_pi },
        data,
        zeta,
        offsets,
        want_kl,
        omega: crate::num::cast::from_f64::<E>(1.0 / sp as f64),
        threads,
    };
    for part in run_chunks(&ctx, &mut out) {
        out.merge(part?, data, want_kl);
    }
    Ok(out)
}

/// The prior of every group: `Π⁻¹`, `ln det Π` ([`host::LANES`] groups at a time) and `Π μ`.
fn factor_prior<E: Real>(what: &str, d: Dims, prec: &[E], mean: &[E]) -> Result<(Vec<E>, Vec<E>, Vec<E>)> {
    let Dims { g, kk, .. } = d;
    let (pinv, ld_pi) = prior_inverse(what, g, kk, prec)?;
    let mut pimu = vec![E::zero(); g * kk];
    for gi in 0..g {
        host::gemv(kk, kk, &prec[d.mat(gi)], &mean[d.vec(gi)], &mut pimu[d.vec(gi)]);
    }
    Ok((pinv, ld_pi, pimu))
}

/// `Π⁻¹` and `ln det Π` of `g` groups of `kk` weights ([`host::LANES`] groups at a time).
pub(super) fn prior_inverse<E: Real>(what: &str, g: usize, kk: usize, prec: &[E]) -> Result<(Vec<E>, Vec<E>)> {
    let d = Dims { s: 1, g, kk, units: 1, k: kk, n: 0, sp: 1 };
    let mut pinv = vec![E::zero(); g * kk * kk];
    let mut ld_pi = vec![E::zero(); g];
    let mut bwork = Vec::new();
    let mut g0 = 0;
    while g0 < g {
        let m = host::LANES.min(g - g0);
        let r = d.mat(g0).start..d.mat(g0 + m - 1).end;
        host::batch_spd_inverse(&prec[r.clone()], m, kk, &mut pinv[r], &mut ld_pi[g0..g0 + m], &mut bwork)
            .map_err(|(lane, pivot)| Error::NotPositiveDefinite { what: format!("{what}: prior precision"), index: g0 + lane, pivot })?;
        g0 += m;
    }
    Ok((pinv, ld_pi))
}

impl<E: Real> HostOut<E> {
    /// Only a KL value and its adjoints (for [`kl_surrogate`]).
    pub(super) fn adjoints(kl: f64, prec_bar: Vec<E>, mean_bar: Vec<E>, phi_bar: Vec<E>, lam_bar: Vec<E>, v_bar: Vec<E>) -> Self {
        HostOut { w0: Vec::new(), cinv: Vec::new(), sp: 1, kl, prec_bar, mean_bar, phi_bar, lam_bar, v_bar, state: None }
    }

    /// Zero outputs (empty gradients when no KL is wanted, no state unless it is kept).
    fn zeros(d: Dims, data: Option<&HostData<'_, E>>, want_kl: bool, keep_state: bool) -> Self {
        let Dims { s, g, kk, sp, .. } = d;
        let (sphi, slam) = data.map_or((1, 1), |d| (d.sphi, d.slam));
        let (nb_phi, nb_lam) = data.map_or((0, 0), |d| (d.n * d.k, d.n * d.d_out));
        let len = |l: usize| if want_kl { l } else { 0 };
        HostOut {
            w0: vec![E::zero(); s * g * kk],
            cinv: vec![E::zero(); sp * g * kk * kk],
            sp,
            kl: 0.0,
            prec_bar: vec![E::zero(); len(g * kk * kk)],
            mean_bar: vec![E::zero(); len(g * kk)],
            phi_bar: vec![E::zero(); len(sphi * nb_phi)],
            lam_bar: vec![E::zero(); len(slam * nb_lam)],
            v_bar: vec![E::zero(); len(slam * nb_lam)],
            state: keep_state.then(|| HostPosterior {
                sp,
                g,
                kk,
                prec: vec![E::zero(); sp * g * kk * kk],
                shift: vec![E::zero(); sp * g * kk],
                sample_shift: vec![E::zero(); s * g * kk],
            }),
        }
    }

    /// Adds one thread's accumulators: its KL, its share of the shared gradients, and its own rows
    /// of the per-sample ones.
    fn merge(&mut self, part: Partial<E>, data: Option<&HostData<'_, E>>, want_kl: bool) {
        self.kl += part.kl;
        if !want_kl {
            return;
        }
        let (sphi, slam) = data.map_or((1, 1), |d| (d.sphi, d.slam));
        let (nb_phi, nb_lam) = data.map_or((0, 0), |d| (d.n * d.k, d.n * d.d_out));
        add_into(&mut self.prec_bar, &part.prec_bar);
        add_into(&mut self.mean_bar, &part.mean_bar);
        let (r0, rows) = (part.spis.start, part.spis.len());
        let place = |dst: &mut [E], src: &[E], per_sample: bool, block: usize| {
            if per_sample {
                dst[r0 * block..(r0 + rows) * block].copy_from_slice(src);
            } else {
                add_into(dst, src);
            }
        };
        place(&mut self.phi_bar, &part.phi_bar, sphi > 1, nb_phi);
        place(&mut self.lam_bar, &part.lam_bar, slam > 1, nb_lam);
        place(&mut self.v_bar, &part.v_bar, slam > 1, nb_lam);
    }
}

/// One thread's share of the outputs: its posteriors and its rows of `w₀`, `C` and the state.
type Job<'b, E> = (std::ops::Range<usize>, &'b mut [E], &'b mut [E], StateSlices<'b, E>);

/// Runs [`run_chunk`] over the distinct posteriors, split over rayon's threads when there is enough work
/// (every big output is contiguous per posterior, so each thread writes its own slices of `out`).
fn run_chunks<E: Real>(ctx: &Ctx<'_, E>, out: &mut HostOut<E>) -> Vec<Result<Partial<E>>> {
    let Dims { s, g, kk, sp, .. } = ctx.dims;
    let threads = if sp > 1 && sp * g * kk * kk * kk > 200_000 { crate::num::threads_or_all(ctx.threads).min(sp).min(8) } else { 1 };
    let per = sp.div_ceil(threads);
    let w_rows = if sp == 1 { s } else { 1 };
    let mut w0 = out.w0.as_mut_slice();
    let mut cinv = out.cinv.as_mut_slice();
    let mut st = out.state.as_mut().map(|st| (st.prec.as_mut_slice(), st.shift.as_mut_slice(), st.sample_shift.as_mut_slice()));
    let mut jobs: Vec<Job<'_, E>> = Vec::new();
    let mut start = 0;
    while start < sp {
        let end = (start + per).min(sp);
        let rows = end - start;
        let (a, rest) = std::mem::take(&mut w0).split_at_mut(rows * w_rows * g * kk);
        w0 = rest;
        let (c, rest) = std::mem::take(&mut cinv).split_at_mut(rows * g * kk * kk);
        cinv = rest;
        let sts = st.take().map(|(p, h, b)| {
            let (p1, p2) = p.split_at_mut(rows * g * kk * kk);
            let (h1, h2) = h.split_at_mut(rows * g * kk);
            let (b1, b2) = b.split_at_mut(rows * w_rows * g * kk);
            st = Some((p2, h2, b2));
            (p1, h1, b1)
        });
        jobs.push((start..end, a, c, sts));
        start = end;
    }
    if jobs.len() == 1 {
        return jobs.into_iter().map(|(r, a, c, sts)| run_chunk(ctx, r, a, c, sts)).collect();
    }
    use rayon::prelude::*;
    jobs.into_par_iter().map(|(r, a, c, sts)| run_chunk(ctx, r, a, c, sts)).collect()
}

fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
}

/// Read-only inputs of the conjugate update, shared by its threads.
struct Ctx<'a, E> {
    what: &'a str,
    dims: Dims,
    prior: PriorHost<'a, E>,
    data: Option<&'a HostData<'a, E>>,
    /// `ζ` `(S, G, K)`.
    zeta: &'a [E],
    offsets: Option<&'a Offsets<E>>,
    want_kl: bool,
    /// Weight of one distinct posterior in the sample-averaged KL, `1/sp`.
    omega: E,
    /// Threads requested (0: every core).
    threads: usize,
}

/// The sizes of a layer update, and the index arithmetic of its row-major buffers.
#[derive(Debug, Clone, Copy)]
struct Dims {
    /// Samples.
    s: usize,
    /// Groups of units (each with its own posterior).
    g: usize,
    /// Weights per group, `K = units·k`.
    kk: usize,
    /// Units per group.
    units: usize,
    /// Weights per unit (`d_in + 1`).
    k: usize,
    /// Context points in the taped chunk.
    n: usize,
    /// Distinct posteriors (1 when they do not depend on the sample).
    sp: usize,
}

impl Dims {
    /// Flat index of group `gi` of sample (or posterior) `i` in a `(·, G, …)` buffer.
    #[inline(always)]
    fn item(&self, i: usize, gi: usize) -> usize {
        i * self.g + gi
    }

    /// Item `item`'s `K × K` matrix in a `(·, G, K, K)` buffer.
    #[inline(always)]
    fn mat(&self, item: usize) -> std::ops::Range<usize> {
        item * self.kk * self.kk..(item + 1) * self.kk * self.kk
    }

    /// Item `item`'s `K`-vector in a `(·, G, K)` buffer.
    #[inline(always)]
    fn vec(&self, item: usize) -> std::ops::Range<usize> {
        item * self.kk..(item + 1) * self.kk
    }

    /// Unit `u`'s weights within a group's `K`-vector.
    #[inline(always)]
    fn unit(&self, u: usize) -> std::ops::Range<usize> {
        u * self.k..(u + 1) * self.k
    }

    /// Where unit `u`'s diagonal `k × k` block starts in a group's `K × K` matrix (row stride `K`).
    #[inline(always)]
    fn unit_diag(&self, u: usize) -> usize {
        u * self.k * self.kk + u * self.k
    }

    /// The output unit (column of `λ` and `v`) of unit `u` of group `gi`.
    #[inline(always)]
    fn output(&self, gi: usize, u: usize) -> usize {
        gi * self.units + u
    }

    /// The samples whose weights are drawn from posterior `spi`: all of them when there is one.
    #[inline(always)]
    fn samples_of(&self, spi: usize) -> std::ops::Range<usize> {
        if self.sp == 1 {
            0..self.s
        } else {
            spi..spi + 1
        }
    }
}

/// The prior of every group on the host: `Π`, `μ`, and what the update derives from them once.
struct PriorHost<'a, E> {
    /// `Π` `(G, K, K)`.
    prec: &'a [E],
    /// `μ` `(G, K)`.
    mean: &'a [E],
    /// `Π μ` `(G, K)`.
    pimu: &'a [E],
    /// `Π⁻¹` `(G, K, K)`.
    pinv: &'a [E],
    /// `ln det Π` `(G,)`.
    ld_pi: &'a [E],
}

impl<E: Real> HostData<'_, E> {
    /// Where sample (or posterior) `i`'s design `Φ` (`n × k`) starts in a `(Sφ, N, k)` buffer:
    /// its own when `Sφ > 1`, the shared one otherwise.
    #[inline(always)]
    fn phi_offset(&self, i: usize) -> usize {
        let row = if self.sphi > 1 { i } else { 0 };
        row * self.n * self.k
    }

    /// Sample (or posterior) `i`'s design `Φ`, `n × k` row-major.
    #[inline(always)]
    fn phi_of(&self, i: usize) -> &[E] {
        &self.phi[self.phi_offset(i)..][..self.n * self.k]
    }

    /// Where sample (or posterior) `i`'s `λ` and `v` (`n × d_out`) start in a `(Sλ, N, d_out)`
    /// buffer.
    #[inline(always)]
    fn lam_offset(&self, i: usize) -> usize {
        let row = if self.slam > 1 { i } else { 0 };
        row * self.n * self.d_out
    }

    /// Output unit `d`'s data as sample (or posterior) `i` sees them.
    #[inline(always)]
    fn unit(&self, i: usize, d: usize) -> UnitData<'_, E> {
        UnitData { phi: self.phi_of(i), n: self.n, k: self.k, lam: self.lam, v: self.v, lo: self.lam_offset(i), d_out: self.d_out, d }
    }

    /// Adds sample `si`'s data perturbation of output unit `d`, `Φᵀ(√λ_d ⊙ ε_d)`, to `b` (`k`).
    #[inline(always)]
    fn add_perturbation(&self, si: usize, d: usize, b: &mut [E]) {
        let (pf, lo) = (self.phi_of(si), self.lam_offset(si));
        let (n, k, d_out) = (self.n, self.k, self.d_out);
        for r in 0..n {
            let z = self.lam[lo + r * d_out + d].sqrt() * self.eps[(si * n + r) * d_out + d];
            for c in 0..k {
                b[c] += pf[r * k + c] * z;
            }
        }
    }
}

/// One thread's accumulators (gradients with a sample axis are its own rows; shared ones are sums).
struct Partial<E> {
    spis: std::ops::Range<usize>,
    kl: f64,
    prec_bar: Vec<E>,
    mean_bar: Vec<E>,
    phi_bar: Vec<E>,
    lam_bar: Vec<E>,
    v_bar: Vec<E>,
}

impl<E: Real> Partial<E> {
    /// Zero accumulators for the posteriors `spis` (empty ones when no KL is wanted).
    fn zeros(ctx: &Ctx<'_, E>, spis: std::ops::Range<usize>) -> Self {
        let Dims { g, kk, k, n, .. } = ctx.dims;
        let rows = spis.len();
        let (sphi, slam) = ctx.data.map_or((1, 1), |d| (d.sphi, d.slam));
        let d_out = ctx.data.map_or(0, |d| d.d_out);
        let len = |l: usize| if ctx.want_kl { l } else { 0 };
        let lam_len = len((if slam > 1 { rows } else { 1 }) * n * d_out);
        Partial {
            spis,
            kl: 0.0,
            prec_bar: vec![E::zero(); len(g * kk * kk)],
            mean_bar: vec![E::zero(); len(g * kk)],
            phi_bar: vec![E::zero(); len((if sphi > 1 { rows } else { 1 }) * n * k)],
            lam_bar: vec![E::zero(); lam_len],
            v_bar: vec![E::zero(); lam_len],
        }
    }
}

type StateSlices<'b, E> = Option<(&'b mut [E], &'b mut [E], &'b mut [E])>;

fn run_chunk<E: Real>(
    ctx: &Ctx<'_, E>,
    spis: std::ops::Range<usize>,
    w0: &mut [E],
    cinv: &mut [E],
    state: StateSlices<'_, E>,
) -> Result<Partial<E>> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `run_chunk_avx2` is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe `run_chunk_impl`.
            return unsafe { run_chunk_avx2(ctx, spis, w0, cinv, state) };
        }
    }
    run_chunk_impl(ctx, spis, w0, cinv, state)
}

/// [`run_chunk_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_chunk_avx2<E: Real>(
    ctx: &Ctx<'_, E>,
    spis: std::ops::Range<usize>,
    w0: &mut [E],
    cinv: &mut [E],
    state: StateSlices<'_, E>,
) -> Result<Partial<E>> {
    run_chunk_impl(ctx, spis, w0, cinv, state)
}

/// The block of up to [`host::LANES`] posteriors factorised together.
struct Block<E> {
    /// Their precisions `P` (`K × K` each) and shifts `h` (`K` each).
    p: Vec<E>,
    h: Vec<E>,
    /// `ln det P`.
    logdet: [E; host::LANES],
    /// Work space of [`host::batch_spd_inverse`].
    work: Vec<E>,
}

/// Scratch buffers of one thread, reused for every posterior.
struct Scratch<E> {
    /// `Φ` scaled by `λ`, `n × k`.
    scaled: Vec<E>,
    /// One sample's right-hand side `b`, `K`.
    b: Vec<E>,
    /// `K × K` products (`CΠ`, `CΠC`) and the KL's gradient `P̄` w.r.t. `P`.
    t1: Vec<E>,
    t2: Vec<E>,
    pbar: Vec<E>,
    /// `P̄_d Φᵀ`, `k × n`.
    pphi: Vec<E>,
    /// `Q = C[:, block d] Φᵀ` and `QΛ`, `K × n`.
    qbuf: Vec<E>,
    qlam: Vec<E>,
}

impl<E: Real> Scratch<E> {
    fn new(d: Dims) -> (Block<E>, Self) {
        let Dims { kk, k, n, .. } = d;
        let z = E::zero();
        let block = Block { p: vec![z; host::LANES * kk * kk], h: vec![z; host::LANES * kk], logdet: [z; host::LANES], work: Vec::new() };
        let scratch = Scratch {
            scaled: vec![z; n * k],
            b: vec![z; kk],
            t1: vec![z; kk * kk],
            t2: vec![z; kk * kk],
            pbar: vec![z; kk * kk],
            pphi: vec![z; k * n],
            qbuf: vec![z; kk * n],
            qlam: vec![z; kk * n],
        };
        (block, scratch)
    }
}

/// The posteriors `spis` (each with all its groups), [`host::LANES`] at a time: their precisions
/// and inverses, the weight samples drawn from them, and (when wanted) their KL terms and its
/// gradients.
#[inline(always)]
fn run_chunk_impl<E: Real>(
    ctx: &Ctx<'_, E>,
    spis: std::ops::Range<usize>,
    w0_out: &mut [E],
    cinv_out: &mut [E],
    mut state: StateSlices<'_, E>,
) -> Result<Partial<E>> {
    let d = ctx.dims;
    let mut part = Partial::zeros(ctx, spis.clone());
    let (mut bl, mut sc) = Scratch::new(d);
    let items: Vec<(usize, usize)> = spis.clone().flat_map(|spi| (0..d.g).map(move |gi| (spi, gi))).collect();
    for block in items.chunks(host::LANES) {
        for (bi, &(spi, gi)) in block.iter().enumerate() {
            natural_parameters(ctx, spi, gi, &mut sc.scaled, &mut bl.p[d.mat(bi)], &mut bl.h[d.vec(bi)]);
        }
        // C = P⁻¹ of the whole block at once, straight into the output
        let first = d.item(block[0].0 - spis.start, block[0].1);
        invert_block(ctx, block, &mut bl, &mut cinv_out[d.mat(first).start..d.mat(first + block.len() - 1).end])?;
        for (bi, &(spi, gi)) in block.iter().enumerate() {
            let li = spi - spis.start;
            let local = d.item(li, gi);
            let (p, h, c) = (&bl.p[d.mat(bi)], &bl.h[d.vec(bi)], &cinv_out[d.mat(local)]);
            if let Some((sp_p, sp_h, _)) = state.as_mut() {
                sp_p[d.mat(local)].copy_from_slice(p);
                sp_h[d.vec(local)].copy_from_slice(h);
            }
            draw_samples(ctx, (spi, li, gi), h, c, &mut sc.b, w0_out, &mut state);
            if ctx.want_kl {
                kl_and_gradients(ctx, (spi, li, gi), h, c, bl.logdet[bi], &mut sc, &mut part);
            }
        }
    }
    Ok(part)
}

/// Posterior `spi`'s natural parameters for group `gi`, into `p` (`K × K`) and `h` (`K`):
/// `P = Π + ΔP + blockdiag_d(Φᵀ diag(λ_d) Φ)`, `h = Π μ + Δh + concat_d Φᵀ(λ_d ⊙ v_d)`.
#[inline(always)]
fn natural_parameters<E: Real>(ctx: &Ctx<'_, E>, spi: usize, gi: usize, scaled: &mut [E], p: &mut [E], h: &mut [E]) {
    let d = ctx.dims;
    p.copy_from_slice(&ctx.prior.prec[d.mat(gi)]);
    h.copy_from_slice(&ctx.prior.pimu[d.vec(gi)]);
    if let Some(o) = ctx.offsets {
        let oi = d.item(if o.so > 1 { spi } else { 0 }, gi);
        add_into(p, &o.dp[d.mat(oi)]);
        add_into(h, &o.dh[d.vec(oi)]);
    }
    if let Some(dt) = ctx.data {
        for u in 0..d.units {
            add_unit_terms(dt.unit(spi, d.output(gi, u)), scaled, &mut p[d.unit_diag(u)..], d.kk, &mut h[d.unit(u)]);
        }
    }
}

/// `C = P⁻¹` and `ln det P` of the block's posteriors (SIMD across matrices): `C` into `cinv`
/// (the block's consecutive `K × K` matrices), the log-determinants into `bl.logdet`.
#[inline(always)]
fn invert_block<E: Real>(ctx: &Ctx<'_, E>, block: &[(usize, usize)], bl: &mut Block<E>, cinv: &mut [E]) -> Result<()> {
    let Dims { g, kk, .. } = ctx.dims;
    let m = block.len();
    host::batch_spd_inverse(&bl.p[..m * kk * kk], m, kk, cinv, &mut bl.logdet[..m], &mut bl.work).map_err(|(lane, pivot)| {
        let (spi, gi) = block[lane];
        Error::NotPositiveDefinite { what: format!("{}: posterior precision", ctx.what), index: spi * g + gi, pivot }
    })
}

/// The weight samples of group `gi` drawn from posterior `spi` ("perturb and solve"):
/// `w₀ = C (h + ζ + Δb + concat_d Φᵀ(√λ_d ⊙ ε_d))`, into `w0_out` (and `b` into the state).
/// `li` is `spi`'s row in the thread's outputs.
#[inline(always)]
fn draw_samples<E: Real>(
    ctx: &Ctx<'_, E>,
    (spi, li, gi): (usize, usize, usize),
    h: &[E],
    c: &[E],
    b: &mut [E],
    w0_out: &mut [E],
    state: &mut StateSlices<'_, E>,
) {
    let d = ctx.dims;
    for si in d.samples_of(spi) {
        b.copy_from_slice(h);
        add_into(b, &ctx.zeta[d.vec(d.item(si, gi))]);
        if let Some(o) = ctx.offsets {
            add_into(b, &o.db[d.vec(d.item(si, gi))]);
        }
        if let Some(dt) = ctx.data {
            for u in 0..d.units {
                dt.add_perturbation(si, d.output(gi, u), &mut b[d.unit(u)]);
            }
        }
        // one row per sample when the posterior is shared, else the posterior's own row
        let wi = d.item(if d.sp == 1 { si } else { li }, gi);
        if let Some((_, _, sp_b)) = state.as_mut() {
            sp_b[d.vec(wi)].copy_from_slice(b);
        }
        host::gemv(d.kk, d.kk, c, b, &mut w0_out[d.vec(wi)]);
    }
}

/// The posterior mean `m = C h`, the error `e = m − μ` and the vectors `Π e` and `u = C Π e` that
/// the KL and its gradients share.
struct KlVectors<E> {
    m: Vec<E>,
    e: Vec<E>,
    gv: Vec<E>,
    uv: Vec<E>,
}

/// Posterior `spi`'s KL term for group `gi` (added to `part.kl`) and its exact gradients w.r.t.
/// `Π`, `μ` and the data (added to `part`). `li` is `spi`'s row in the thread's accumulators.
#[inline(always)]
fn kl_and_gradients<E: Real>(
    ctx: &Ctx<'_, E>,
    (spi, li, gi): (usize, usize, usize),
    h: &[E],
    c: &[E],
    ld_p: E,
    sc: &mut Scratch<E>,
    part: &mut Partial<E>,
) {
    let kv = kl_term(ctx, gi, h, c, ld_p, &mut part.kl);
    precision_bar(ctx, spi, gi, c, &kv, sc);
    prior_gradients(ctx, gi, c, &kv, &sc.pbar, part);
    if let Some(dt) = ctx.data {
        data_gradients(ctx, dt, (spi, li, gi), &kv.uv, sc, part);
    }
}

/// `KL(N(m, C) ‖ N(μ, Π⁻¹)) = ½[tr(ΠC) + eᵀΠe − K − ln|Π| + ln|P|]`, `e = m − μ`, weighted by `ω`
/// and added to `kl`.
#[inline(always)]
fn kl_term<E: Real>(ctx: &Ctx<'_, E>, gi: usize, h: &[E], c: &[E], ld_p: E, kl: &mut f64) -> KlVectors<E> {
    let d = ctx.dims;
    let kk = d.kk;
    let mut m = vec![E::zero(); kk];
    host::gemv(kk, kk, c, h, &mut m);
    let (pig, mu) = (&ctx.prior.prec[d.mat(gi)], &ctx.prior.mean[d.vec(gi)]);
    let e: Vec<E> = m.iter().zip(mu).map(|(a, b)| *a - *b).collect();
    let mut gv = vec![E::zero(); kk];
    host::gemv(kk, kk, pig, &e, &mut gv);
    let mut uv = vec![E::zero(); kk];
    host::gemv(kk, kk, c, &gv, &mut uv);
    let tr: f64 = pig.iter().zip(c.iter()).map(|(a, b)| (*a * *b).cast_to_f64()).sum();
    let quad: f64 = e.iter().zip(&gv).map(|(a, b)| (*a * *b).cast_to_f64()).sum();
    let ld_p = ld_p.cast_to_f64();
    *kl += (0.5 * (tr + quad - kk as f64 - ctx.prior.ld_pi[gi].cast_to_f64() + ld_p)) * ctx.omega.cast_to_f64();
    KlVectors { m, e, gv, uv }
}

/// The KL's gradient w.r.t. the posterior precision, `P̄ = ½(C − CΠC) − ½(u mᵀ + m uᵀ)`, into
/// `sc.pbar` (with `CΠC` in `sc.t2`). With no offsets, `P = Π + A` and `CΠC = C − C A C`, where
/// `C A C = Σ_d Q_d Λ_d Q_dᵀ` with `Q_d = C[:, block d] Φᵀ`: cheaper when `N < k`.
#[inline(always)]
fn precision_bar<E: Real>(ctx: &Ctx<'_, E>, spi: usize, gi: usize, c: &[E], kv: &KlVectors<E>, sc: &mut Scratch<E>) {
    let d = ctx.dims;
    let Dims { kk, k, n, .. } = d;
    match ctx.data {
        Some(dt) if ctx.offsets.is_none() && n < k => {
            sc.t2.copy_from_slice(c);
            let pf = MatRef::row_major(dt.phi_of(spi), n, k);
            let lo = dt.lam_offset(spi);
            for u in 0..d.units {
                let out = d.output(gi, u);
                // Q (K×N) = C[:, u·k..(u+1)·k] Φᵀ
                gemm(E::one(), MatRef::strided(&c[u * k..], kk, k, kk, 1), pf.t(), E::zero(), MatMut::row_major(&mut sc.qbuf, kk, n));
                for i in 0..kk {
                    for r in 0..n {
                        sc.qlam[i * n + r] = sc.qbuf[i * n + r] * dt.lam[lo + r * dt.d_out + out];
                    }
                }
                // CΠC −= (QΛ) Qᵀ
                let q = MatRef::row_major(&sc.qbuf, kk, n);
                gemm(-E::one(), MatRef::row_major(&sc.qlam, kk, n), q.t(), E::one(), MatMut::row_major(&mut sc.t2, kk, kk));
            }
        }
        _ => {
            host::gemm_rm(kk, kk, kk, E::one(), c, &ctx.prior.prec[d.mat(gi)], E::zero(), &mut sc.t1);
            host::gemm_rm(kk, kk, kk, E::one(), &sc.t1, c, E::zero(), &mut sc.t2);
        }
    }
    let half = crate::num::cast::from_f64::<E>(0.5);
    let (m, uv) = (&kv.m, &kv.uv);
    for i in 0..kk {
        for j in 0..kk {
            sc.pbar[i * kk + j] = half * (c[i * kk + j] - sc.t2[i * kk + j]) - half * (uv[i] * m[j] + m[i] * uv[j]);
        }
    }
}

/// The KL's gradients w.r.t. the prior, weighted by `ω`:
/// `Π̄ += ω[P̄ + ½(C + e eᵀ − Π⁻¹) + u μᵀ]` and `μ̄ += ω[Π u − Π e]`.
#[inline(always)]
fn prior_gradients<E: Real>(ctx: &Ctx<'_, E>, gi: usize, c: &[E], kv: &KlVectors<E>, pbar: &[E], part: &mut Partial<E>) {
    let d = ctx.dims;
    let kk = d.kk;
    let (half, omega) = (crate::num::cast::from_f64::<E>(0.5), ctx.omega);
    let KlVectors { e, gv, uv, .. } = kv;
    let (pig, mu, pinvg) = (&ctx.prior.prec[d.mat(gi)], &ctx.prior.mean[d.vec(gi)], &ctx.prior.pinv[d.mat(gi)]);
    let pb = &mut part.prec_bar[d.mat(gi)];
    for i in 0..kk {
        for j in 0..kk {
            let x = pbar[i * kk + j] + half * (c[i * kk + j] + e[i] * e[j] - pinvg[i * kk + j]) + uv[i] * mu[j];
            pb[i * kk + j] += omega * x;
        }
    }
    let mut piu = vec![E::zero(); kk];
    host::gemv(kk, kk, pig, uv, &mut piu);
    let mb = &mut part.mean_bar[d.vec(gi)];
    for i in 0..kk {
        mb[i] += omega * (piu[i] - gv[i]);
    }
}

/// The KL's gradients w.r.t. the data, weighted by `ω`: through `P` (the `Φᵀ diag λ Φ` blocks)
/// and `h` (`Φᵀ(λ v)`). Reads posterior `spi`'s data and writes the accumulators' row `li`.
#[inline(always)]
fn data_gradients<E: Real>(
    ctx: &Ctx<'_, E>,
    dt: &HostData<'_, E>,
    (spi, li, gi): (usize, usize, usize),
    uv: &[E],
    sc: &mut Scratch<E>,
    part: &mut Partial<E>,
) {
    let d = ctx.dims;
    let Dims { kk, k, n, .. } = d;
    let omega = ctx.omega;
    let pf = dt.phi_of(spi);
    let (lo, lol) = (dt.lam_offset(spi), dt.lam_offset(li));
    let fb_rows = &mut part.phi_bar[dt.phi_offset(li)..][..n * k];
    for u in 0..d.units {
        let out = d.output(gi, u);
        // P̄_d Φᵀ: (k×k)(k×N)
        let pbar_d = MatRef::strided(&sc.pbar[d.unit_diag(u)..], k, k, kk, 1);
        gemm(E::one(), pbar_d, MatRef::row_major(pf, n, k).t(), E::zero(), MatMut::row_major(&mut sc.pphi, k, n));
        let pphi = &sc.pphi;
        let hb = &uv[d.unit(u)];
        for r in 0..n {
            let phi_n = &pf[r * k..(r + 1) * k];
            let mut q = E::zero();
            let mut hp = E::zero();
            for cc in 0..k {
                q += phi_n[cc] * pphi[cc * n + r];
                hp += phi_n[cc] * hb[cc];
            }
            let (lv, vv) = (dt.lam[lo + r * dt.d_out + out], dt.v[lo + r * dt.d_out + out]);
            let at = lol + r * dt.d_out + out;
            part.lam_bar[at] += omega * (q + vv * hp);
            part.v_bar[at] += omega * lv * hp;
            let two = lv + lv;
            let fb = &mut fb_rows[r * k..(r + 1) * k];
            for cc in 0..k {
                fb[cc] += omega * (two * pphi[cc * n + r] + lv * vv * hb[cc]);
            }
        }
    }
}

fn host_vec<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(t: &Tensor<S, E, D, T>) -> Vec<E> {
    t.as_vec()
}

/// The conjugate update of one layer in dense form (the caller takes `lowrank::conjugate_layer`
/// where `lowrank::applies`). `what` names the layer in errors.
pub(crate) fn conjugate_layer<E: Real, D: Device<E>>(
    what: &str,
    inputs: LayerInputs<E, D>,
    s: usize,
    offsets: Option<&Offsets<E>>,
    want_kl: bool,
    keep_state: bool,
    threads: usize,
) -> Result<LayerOutputs<E, D>> {
    let (g, kk) = *inputs.mean.shape();
    debug_assert_eq!(g * kk, inputs.d_out * inputs.k);
    let mut out = host_layer(what, &inputs, s, offsets, want_kl, keep_state, threads)?;
    let (kl, kl_value) = if want_kl { (Some(kl_surrogate(&inputs, &mut out)), out.kl) } else { (None, 0.0) };
    let state = out.state.take();
    let w = sample_surrogate(inputs, out, s);
    Ok(LayerOutputs { w, kl, kl_value, state })
}

/// The layer's update on the host: the inputs' values copied down, then [`host_update`].
fn host_layer<E: Real, D: Device<E>>(
    what: &str,
    inputs: &LayerInputs<E, D>,
    s: usize,
    offsets: Option<&Offsets<E>>,
    want_kl: bool,
    keep_state: bool,
    threads: usize,
) -> Result<HostOut<E>> {
    let LayerInputs { data, prec, mean, zeta, units, d_out, k, .. } = inputs;
    let (g, kk) = *mean.shape();
    let host_data = data
        .as_ref()
        .map(|d| (host_vec(&d.phi), host_vec(&d.lam), host_vec(&d.v), host_vec(&d.eps), d.phi.shape().0, d.lam.shape().0, d.phi.shape().1));
    let hd = host_data.as_ref().map(|(phi, lam, v, eps, sphi, slam, n)| HostData {
        sphi: *sphi,
        n: *n,
        k: *k,
        phi,
        slam: *slam,
        d_out: *d_out,
        lam,
        v,
        eps,
    });
    host_update(
        what,
        hd.as_ref(),
        s,
        g,
        kk,
        *units,
        &host_vec(prec),
        &host_vec(mean),
        &host_vec(zeta),
        offsets,
        (want_kl, keep_state),
        threads,
    )
}

/// The KL term on the tape: its host value, with the host's adjoints (`prec_bar`, ...) as the
/// gradient with respect to each input. Works on copies of the inputs (the originals' tapes go
/// with the sample, which is always part of the loss); takes the adjoints out of `out`.
pub(super) fn kl_surrogate<E: Real, D: Device<E>>(inputs: &LayerInputs<E, D>, out: &mut HostOut<E>) -> Taped<(), E, D> {
    let LayerInputs { data, prec, mean, .. } = inputs;
    let (g, kk) = *mean.shape();
    let dev = mean.device().clone();
    let c = |v: Vec<E>, sh: (usize, usize, usize)| -> Tensor<(usize, usize, usize), E, D> { dev.tensor_from_vec(v, sh) };
    let mut lin = (prec.with_empty_tape() * c(std::mem::take(&mut out.prec_bar), (g, kk, kk))).sum::<(), _>();
    lin = lin + (mean.with_empty_tape() * dev.tensor_from_vec(std::mem::take(&mut out.mean_bar), (g, kk))).sum::<(), _>();
    if let Some(d) = data {
        lin = lin + (d.phi.with_empty_tape() * c(std::mem::take(&mut out.phi_bar), *d.phi.shape())).sum::<(), _>();
        lin = lin + (d.lam.with_empty_tape() * c(std::mem::take(&mut out.lam_bar), *d.lam.shape())).sum::<(), _>();
        lin = lin + (d.v.with_empty_tape() * c(std::mem::take(&mut out.v_bar), *d.v.shape())).sum::<(), _>();
    }
    let val: Tensor<(), E, D> = dev.tensor_from_vec(vec![crate::num::cast::from_f64::<E>(out.kl)], ());
    attach(lin, val)
}

/// The samples on the tape: their host values `w₀`, with the surrogate
/// `t = C₀ r`, `r = Π(μ − w₀) + ζ + Φᵀ(λ ⊙ (v − Φ w₀) + √λ ⊙ ε)` carrying their gradient.
fn sample_surrogate<E: Real, D: Device<E>>(inputs: LayerInputs<E, D>, out: HostOut<E>, s: usize) -> T3<E, D> {
    let LayerInputs { data, prec, mean, zeta, d_out, k, .. } = inputs;
    let (g, kk) = *mean.shape();
    let dev = mean.device().clone();
    let w0: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(out.w0, (s, g, kk));
    let w0_gks = constant_of(&w0.clone().permute::<_, Axes3<1, 2, 0>>());
    let diff = mean.broadcast_like::<_, Axis<2>>(&(g, kk, s)) - w0_gks;
    let (diff, tape) = diff.split_tape();
    let (prec, ptape) = prec.split_tape();
    let prior_part = prec.put_tape(ptape.merge(tape)).matmul(diff).permute::<_, Axes3<2, 0, 1>>();
    let mut r = prior_part + zeta;
    if let Some(d) = data {
        let DataInputs { phi, lam, v, eps } = d;
        let n = phi.shape().1;
        let full = (s, n, k);
        let phi_b = if phi.shape().0 == s { phi } else { phi.reshape_like(&(n, k)).broadcast_like::<_, Axis<0>>(&full) };
        let lam_b = if lam.shape().0 == s { lam } else { lam.reshape_like(&(n, d_out)).broadcast_like::<_, Axis<0>>(&(s, n, d_out)) };
        let v_b = if v.shape().0 == s { v } else { v.reshape_like(&(n, d_out)).broadcast_like::<_, Axis<0>>(&(s, n, d_out)) };
        let w0t = constant_of(&w0.clone().reshape_like(&(s, d_out, k)).permute::<_, Axes3<0, 2, 1>>());
        let fw = phi_b.with_empty_tape().matmul(w0t);
        let rho = lam_b.with_empty_tape() * (v_b - fw) + lam_b.sqrt() * eps;
        let (rho, tape) = rho.split_tape();
        let (phi_t, ftape) = phi_b.permute::<_, Axes3<0, 2, 1>>().split_tape();
        let data_part = phi_t.put_tape(ftape.merge(tape)).matmul(rho).permute::<_, Axes3<0, 2, 1>>().reshape_like(&(s, g, kk));
        r = r + data_part;
    }
    let t = if out.sp == 1 {
        let c0: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(out.cinv, (g, kk, kk));
        let (r, tape) = r.permute::<_, Axes3<1, 2, 0>>().split_tape();
        c0.put_tape(tape).matmul(r).permute::<_, Axes3<2, 0, 1>>().reshape_like(&(s, g, kk))
    } else {
        let c0: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(out.cinv, (s * g, kk, kk));
        let (r, tape) = r.reshape_like(&(s * g, kk, 1usize)).split_tape();
        c0.put_tape(tape).matmul(r).reshape_like(&(s, g, kk))
    };
    attach(t, w0).reshape_like(&(s, d_out, k))
}

/// One output unit's data: design `phi` (`n × k`, row-major) and its pseudo-observations, read at
/// `lam[lo + r·d_out + d]` and `v[lo + r·d_out + d]` for row `r`.
struct UnitData<'a, E> {
    phi: &'a [E],
    n: usize,
    k: usize,
    lam: &'a [E],
    v: &'a [E],
    lo: usize,
    d_out: usize,
    d: usize,
}

/// Adds one unit's data terms to its natural parameters: `P += Φᵀ diag(λ_d) Φ` (into `p`, a `k × k`
/// block with row stride `kk`) and `h += Φᵀ (λ_d ⊙ v_d)`. `scaled` is scratch of `n·k` values.
#[inline(always)]
fn add_unit_terms<E: Real>(u: UnitData<'_, E>, scaled: &mut [E], p: &mut [E], kk: usize, h: &mut [E]) {
    let UnitData { phi, n, k, lam, v, lo, d_out, d } = u;
    for r in 0..n {
        let l = lam[lo + r * d_out + d];
        for c in 0..k {
            scaled[r * k + c] = phi[r * k + c] * l;
        }
    }
    gemm(E::one(), MatRef::row_major(phi, n, k).t(), MatRef::row_major(scaled, n, k), E::one(), MatMut::strided_rows(p, k, k, kk));
    for r in 0..n {
        let lv = lam[lo + r * d_out + d] * v[lo + r * d_out + d];
        for c in 0..k {
            h[c] += phi[r * k + c] * lv;
        }
    }
}
