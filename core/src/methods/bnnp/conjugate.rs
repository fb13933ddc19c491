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

use crate::num::dense::{gemm, MatMut, MatRef};
use crate::num::linalg::host;
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
        let HostData { sphi, n, k, phi, slam, d_out, lam, v, eps } = *data;
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
        let mut scaled = vec![E::zero(); n * k];
        for sp in 0..so {
            let pf = &phi[if sphi > 1 { sp } else { 0 } * n * k..][..n * k];
            let lo = if slam > 1 { sp } else { 0 } * n * d_out;
            for gi in 0..g {
                for u in 0..units {
                    let d = gi * units + u;
                    let at = (sp * g + gi) * kk;
                    let (blk, hb) = (&mut self.dp[at * kk + u * k * kk + u * k..], &mut self.dh[at + u * k..][..k]);
                    add_unit_terms(UnitData { phi: pf, n, k, lam, v, lo, d_out, d }, &mut scaled, blk, kk, hb);
                }
            }
        }
        for si in 0..s {
            let pf = &phi[if sphi > 1 { si } else { 0 } * n * k..][..n * k];
            let lo = if slam > 1 { si } else { 0 } * n * d_out;
            for gi in 0..g {
                for u in 0..units {
                    let d = gi * units + u;
                    let bb = &mut self.db[(si * g + gi) * kk + u * k..][..k];
                    for r in 0..n {
                        let z = lam[lo + r * d_out + d].sqrt() * eps[(si * n + r) * d_out + d];
                        for c in 0..k {
                            bb[c] += pf[r * k + c] * z;
                        }
                    }
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

struct HostOut<E> {
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
    want_kl: bool,
    keep_state: bool,
) -> Result<HostOut<E>> {
    let (sphi, slam) = data.map_or((1, 1), |d| (d.sphi, d.slam));
    let so = offsets.map_or(1, |o| o.so);
    let sp = sphi.max(slam).max(so);
    let k = kk / units;
    // the prior, per group: inverse, log-det (both [`host::LANES`] groups at a time) and Π μ
    let mut pinv = vec![E::zero(); g * kk * kk];
    let mut ld_pi = vec![E::zero(); g];
    let mut pimu = vec![E::zero(); g * kk];
    let mut bwork = Vec::new();
    let mut g0 = 0;
    while g0 < g {
        let m = host::LANES.min(g - g0);
        let r = g0 * kk * kk..(g0 + m) * kk * kk;
        host::batch_spd_inverse(&prec[r.clone()], m, kk, &mut pinv[r], &mut ld_pi[g0..g0 + m], &mut bwork)
            .map_err(|(lane, pivot)| Error::NotPositiveDefinite { what: format!("{what}: prior precision"), index: g0 + lane, pivot })?;
        g0 += m;
    }
    for gi in 0..g {
        host::gemv(kk, kk, &prec[gi * kk * kk..(gi + 1) * kk * kk], &mean[gi * kk..(gi + 1) * kk], &mut pimu[gi * kk..(gi + 1) * kk]);
    }
    let n = data.map_or(0, |d| d.n);
    let (nb_phi, nb_lam) = data.map_or((0, 0), |d| (d.n * d.k, d.n * d.d_out));
    let mut out = HostOut {
        w0: vec![E::zero(); s * g * kk],
        cinv: vec![E::zero(); sp * g * kk * kk],
        sp,
        kl: 0.0,
        prec_bar: vec![E::zero(); if want_kl { g * kk * kk } else { 0 }],
        mean_bar: vec![E::zero(); if want_kl { g * kk } else { 0 }],
        phi_bar: vec![E::zero(); if want_kl { sphi * nb_phi } else { 0 }],
        lam_bar: vec![E::zero(); if want_kl { slam * nb_lam } else { 0 }],
        v_bar: vec![E::zero(); if want_kl { slam * nb_lam } else { 0 }],
        state: keep_state.then(|| HostPosterior {
            sp,
            g,
            kk,
            prec: vec![E::zero(); sp * g * kk * kk],
            shift: vec![E::zero(); sp * g * kk],
            sample_shift: vec![E::zero(); s * g * kk],
        }),
    };
    let ctx = Ctx {
        what,
        data,
        s,
        g,
        kk,
        units,
        k,
        n,
        sp,
        prec,
        mean,
        zeta,
        offsets,
        want_kl,
        pimu: &pimu,
        pinv: &pinv,
        ld_pi: &ld_pi,
        omega: crate::num::cast::from_f64::<E>(1.0 / sp as f64),
    };
    // split the distinct posteriors over threads; every big output is contiguous per posterior
    let threads = if sp > 1 && sp * g * kk * kk * kk > 200_000 {
        std::thread::available_parallelism().map_or(1, |t| t.get()).min(sp).min(8)
    } else {
        1
    };
    let per = sp.div_ceil(threads);
    let w_rows = if sp == 1 { s } else { 1 };
    let mut outs: Vec<Result<Partial<E>>> = Vec::new();
    {
        let mut w0 = out.w0.as_mut_slice();
        let mut cinv = out.cinv.as_mut_slice();
        let mut st = out.state.as_mut().map(|st| (st.prec.as_mut_slice(), st.shift.as_mut_slice(), st.sample_shift.as_mut_slice()));
        let mut jobs = Vec::new();
        let mut start = 0;
        while start < sp {
            let end = (start + per).min(sp);
            let rows = end - start;
            let (a, rest) = w0.split_at_mut(rows * w_rows * g * kk);
            w0 = rest;
            let (c, rest) = cinv.split_at_mut(rows * g * kk * kk);
            cinv = rest;
            let sts = match st.take() {
                None => None,
                Some((p, h, b)) => {
                    let (p1, p2) = p.split_at_mut(rows * g * kk * kk);
                    let (h1, h2) = h.split_at_mut(rows * g * kk);
                    let (b1, b2) = b.split_at_mut(rows * w_rows * g * kk);
                    st = Some((p2, h2, b2));
                    Some((p1, h1, b1))
                }
            };
            jobs.push((start..end, a, c, sts));
            start = end;
        }
        if jobs.len() == 1 {
            let (r, a, c, sts) = jobs.pop().expect("one job");
            outs.push(run_chunk(&ctx, r, a, c, sts));
        } else {
            let ctx = &ctx;
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs.into_iter().map(|(r, a, c, sts)| scope.spawn(move || run_chunk(ctx, r, a, c, sts))).collect();
                for h in handles {
                    outs.push(h.join().unwrap_or_else(|_| Err(Error::Device("a conjugate-update thread panicked".into()))));
                }
            });
        }
    }
    // merge the threads' accumulators
    for part in outs {
        let part = part?;
        out.kl += part.kl;
        if !want_kl {
            continue;
        }
        add_into(&mut out.prec_bar, &part.prec_bar);
        add_into(&mut out.mean_bar, &part.mean_bar);
        let (r0, rows) = (part.spis.start, part.spis.len());
        let place = |dst: &mut [E], src: &[E], per_sample: bool, block: usize| {
            if per_sample {
                dst[r0 * block..(r0 + rows) * block].copy_from_slice(src);
            } else {
                add_into(dst, src);
            }
        };
        place(&mut out.phi_bar, &part.phi_bar, sphi > 1, nb_phi);
        place(&mut out.lam_bar, &part.lam_bar, slam > 1, nb_lam);
        place(&mut out.v_bar, &part.v_bar, slam > 1, nb_lam);
    }
    Ok(out)
}

fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += *b);
}

/// Read-only inputs of the conjugate update, shared by its threads.
struct Ctx<'a, E> {
    what: &'a str,
    data: Option<&'a HostData<'a, E>>,
    s: usize,
    g: usize,
    kk: usize,
    units: usize,
    k: usize,
    n: usize,
    sp: usize,
    prec: &'a [E],
    mean: &'a [E],
    zeta: &'a [E],
    offsets: Option<&'a Offsets<E>>,
    want_kl: bool,
    pimu: &'a [E],
    pinv: &'a [E],
    ld_pi: &'a [E],
    omega: E,
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

#[inline(always)]
fn run_chunk_impl<E: Real>(
    ctx: &Ctx<'_, E>,
    spis: std::ops::Range<usize>,
    w0_out: &mut [E],
    cinv_out: &mut [E],
    mut state: StateSlices<'_, E>,
) -> Result<Partial<E>> {
    let Ctx { what, data, s, g, kk, units, k, n, sp, prec, mean, zeta, offsets, want_kl, pimu, pinv, ld_pi, omega } = *ctx;
    let half = crate::num::cast::from_f64::<E>(0.5);
    let rows = spis.len();
    let (sphi, slam) = data.map_or((1, 1), |d| (d.sphi, d.slam));
    let d_out = data.map_or(0, |d| d.d_out);
    let mut part = Partial {
        spis: spis.clone(),
        kl: 0.0,
        prec_bar: vec![E::zero(); if want_kl { g * kk * kk } else { 0 }],
        mean_bar: vec![E::zero(); if want_kl { g * kk } else { 0 }],
        phi_bar: vec![E::zero(); if want_kl { (if sphi > 1 { rows } else { 1 }) * n * k } else { 0 }],
        lam_bar: vec![E::zero(); if want_kl { (if slam > 1 { rows } else { 1 }) * n * d_out } else { 0 }],
        v_bar: vec![E::zero(); if want_kl { (if slam > 1 { rows } else { 1 }) * n * d_out } else { 0 }],
    };
    let mut scaled = vec![E::zero(); n * k];
    let mut p = vec![E::zero(); kk * kk];
    let mut h = vec![E::zero(); kk];
    let mut b = vec![E::zero(); kk];
    let mut m = vec![E::zero(); kk];
    let mut t1 = vec![E::zero(); kk * kk];
    let mut t2 = vec![E::zero(); kk * kk];
    let mut pbar = vec![E::zero(); kk * kk];
    let mut pphi = vec![E::zero(); k * n];
    let mut qbuf = vec![E::zero(); kk * n];
    let mut qlam = vec![E::zero(); kk * n];
    let mut kl = 0.0f64;
    let items: Vec<(usize, usize)> = spis.clone().flat_map(|spi| (0..g).map(move |gi| (spi, gi))).collect();
    let mut pblock = vec![E::zero(); host::LANES * kk * kk];
    let mut hblock = vec![E::zero(); host::LANES * kk];
    let mut ldblock = [E::zero(); host::LANES];
    let mut bwork = Vec::new();
    for block in items.chunks(host::LANES) {
        // P and h of every posterior of the block
        for (bi, &(spi, gi)) in block.iter().enumerate() {
            // P and h
            p.copy_from_slice(&prec[gi * kk * kk..(gi + 1) * kk * kk]);
            h.copy_from_slice(&pimu[gi * kk..(gi + 1) * kk]);
            if let Some(o) = offsets {
                let oi = if o.so > 1 { spi } else { 0 };
                p.iter_mut().zip(&o.dp[(oi * g + gi) * kk * kk..][..kk * kk]).for_each(|(a, b)| *a += *b);
                h.iter_mut().zip(&o.dh[(oi * g + gi) * kk..][..kk]).for_each(|(a, b)| *a += *b);
            }
            if let Some(dt) = data {
                let pf = &dt.phi[if dt.sphi > 1 { spi } else { 0 } * n * k..][..n * k];
                let lo = if dt.slam > 1 { spi } else { 0 } * n * dt.d_out;
                for u in 0..units {
                    let d = gi * units + u;
                    let unit = UnitData { phi: pf, n, k, lam: dt.lam, v: dt.v, lo, d_out: dt.d_out, d };
                    add_unit_terms(unit, &mut scaled, &mut p[u * k * kk + u * k..], kk, &mut h[u * k..(u + 1) * k]);
                }
            }
            pblock[bi * kk * kk..(bi + 1) * kk * kk].copy_from_slice(&p);
            hblock[bi * kk..(bi + 1) * kk].copy_from_slice(&h);
        }
        // C = P⁻¹ and ln det P of the whole block at once (SIMD across matrices), straight into the output
        let m_b = block.len();
        let idx0 = (block[0].0 - spis.start) * g + block[0].1;
        host::batch_spd_inverse(
            &pblock[..m_b * kk * kk],
            m_b,
            kk,
            &mut cinv_out[idx0 * kk * kk..(idx0 + m_b) * kk * kk],
            &mut ldblock[..m_b],
            &mut bwork,
        )
        .map_err(|(lane, pivot)| {
            let (spi, gi) = block[lane];
            Error::NotPositiveDefinite { what: format!("{what}: posterior precision"), index: spi * g + gi, pivot }
        })?;
        for (bi, &(spi, gi)) in block.iter().enumerate() {
            let li = spi - spis.start;
            let p = &pblock[bi * kk * kk..(bi + 1) * kk * kk];
            let h = &hblock[bi * kk..(bi + 1) * kk];
            let c = &cinv_out[(li * g + gi) * kk * kk..][..kk * kk];
            if let Some((sp_p, sp_h, _)) = state.as_mut() {
                sp_p[(li * g + gi) * kk * kk..][..kk * kk].copy_from_slice(p);
                sp_h[(li * g + gi) * kk..][..kk].copy_from_slice(h);
            }
            // samples
            let range = if sp == 1 { 0..s } else { spi..spi + 1 };
            for si in range {
                b.copy_from_slice(h);
                b.iter_mut().zip(&zeta[(si * g + gi) * kk..][..kk]).for_each(|(a, z)| *a += *z);
                if let Some(o) = offsets {
                    b.iter_mut().zip(&o.db[(si * g + gi) * kk..][..kk]).for_each(|(a, z)| *a += *z);
                }
                if let Some(dt) = data {
                    let pf = &dt.phi[if dt.sphi > 1 { si } else { 0 } * n * k..][..n * k];
                    let lo = if dt.slam > 1 { si } else { 0 } * n * dt.d_out;
                    for u in 0..units {
                        let d = gi * units + u;
                        let bb = &mut b[u * k..(u + 1) * k];
                        for r in 0..n {
                            let z = dt.lam[lo + r * dt.d_out + d].sqrt() * dt.eps[(si * n + r) * dt.d_out + d];
                            for cc in 0..k {
                                bb[cc] += pf[r * k + cc] * z;
                            }
                        }
                    }
                }
                let wi = if sp == 1 { si } else { li };
                if let Some((_, _, sp_b)) = state.as_mut() {
                    sp_b[(wi * g + gi) * kk..][..kk].copy_from_slice(&b);
                }
                host::gemv(kk, kk, c, &b, &mut w0_out[(wi * g + gi) * kk..][..kk]);
            }
            if !want_kl {
                continue;
            }
            // KL(N(m, C) ‖ N(μ, Π⁻¹)) = ½[tr(ΠC) + eᵀΠe − K − ln|Π| + ln|P|], e = m − μ
            host::gemv(kk, kk, c, h, &mut m);
            let pig = &prec[gi * kk * kk..(gi + 1) * kk * kk];
            let mu = &mean[gi * kk..(gi + 1) * kk];
            let e: Vec<E> = m.iter().zip(mu).map(|(a, b)| *a - *b).collect();
            let mut gv = vec![E::zero(); kk];
            host::gemv(kk, kk, pig, &e, &mut gv);
            let mut uv = vec![E::zero(); kk];
            host::gemv(kk, kk, c, &gv, &mut uv);
            let tr: f64 = pig.iter().zip(c.iter()).map(|(a, b)| (*a * *b).cast_to_f64()).sum();
            let quad: f64 = e.iter().zip(&gv).map(|(a, b)| (*a * *b).cast_to_f64()).sum();
            let ld_p = ldblock[bi].cast_to_f64();
            kl += (0.5 * (tr + quad - kk as f64 - ld_pi[gi].cast_to_f64() + ld_p)) * omega.cast_to_f64();
            // P̄ = ½(C − CΠC) − ½(u mᵀ + m uᵀ). With no offsets, P = Π + A and CΠC = C − C A C,
            // where C A C = Σ_d Q_d Λ_d Q_dᵀ with Q_d = C[:, block d] Φᵀ: cheaper when N < k.
            match data {
                Some(dt) if offsets.is_none() && n < k => {
                    t2.copy_from_slice(c);
                    let pf = &dt.phi[if dt.sphi > 1 { spi } else { 0 } * n * k..][..n * k];
                    let lo = if dt.slam > 1 { spi } else { 0 } * n * dt.d_out;
                    for u in 0..units {
                        let d = gi * units + u;
                        // Q (K×N) = C[:, u·k..(u+1)·k] Φᵀ
                        let c_cols = MatRef::strided(&c[u * k..], kk, k, kk, 1);
                        gemm(E::one(), c_cols, MatRef::row_major(pf, n, k).t(), E::zero(), MatMut::row_major(&mut qbuf, kk, n));
                        for i in 0..kk {
                            for r in 0..n {
                                qlam[i * n + r] = qbuf[i * n + r] * dt.lam[lo + r * dt.d_out + d];
                            }
                        }
                        // CΠC −= (QΛ) Qᵀ
                        let q = MatRef::row_major(&qbuf, kk, n);
                        gemm(-E::one(), MatRef::row_major(&qlam, kk, n), q.t(), E::one(), MatMut::row_major(&mut t2, kk, kk));
                    }
                }
                _ => {
                    host::gemm_rm(kk, kk, kk, E::one(), c, pig, E::zero(), &mut t1);
                    host::gemm_rm(kk, kk, kk, E::one(), &t1, c, E::zero(), &mut t2);
                }
            }
            for i in 0..kk {
                for j in 0..kk {
                    pbar[i * kk + j] = half * (c[i * kk + j] - t2[i * kk + j]) - half * (uv[i] * m[j] + m[i] * uv[j]);
                }
            }
            // Π̄ += ω[P̄ + ½(C + e eᵀ − Π⁻¹) + u μᵀ];  μ̄ += ω[Π u − Π e]
            let pb = &mut part.prec_bar[gi * kk * kk..(gi + 1) * kk * kk];
            let pinvg = &pinv[gi * kk * kk..(gi + 1) * kk * kk];
            for i in 0..kk {
                for j in 0..kk {
                    let x = pbar[i * kk + j] + half * (c[i * kk + j] + e[i] * e[j] - pinvg[i * kk + j]) + uv[i] * mu[j];
                    pb[i * kk + j] += omega * x;
                }
            }
            let mut piu = vec![E::zero(); kk];
            host::gemv(kk, kk, pig, &uv, &mut piu);
            let mb = &mut part.mean_bar[gi * kk..(gi + 1) * kk];
            for i in 0..kk {
                mb[i] += omega * (piu[i] - gv[i]);
            }
            // data: through P (Φᵀ diag λ Φ blocks) and h (Φᵀ(λ v))
            if let Some(dt) = data {
                let fi = if dt.sphi > 1 { spi } else { 0 };
                let pf = &dt.phi[fi * n * k..][..n * k];
                let lo = if dt.slam > 1 { spi } else { 0 } * n * dt.d_out;
                let fl = if dt.sphi > 1 { li } else { 0 };
                let lol = if dt.slam > 1 { li } else { 0 } * n * dt.d_out;
                for u in 0..units {
                    let d = gi * units + u;
                    // P̄_d Φᵀ: (k×k)(k×N)
                    let pbar_d = MatRef::strided(&pbar[u * k * kk + u * k..], k, k, kk, 1);
                    gemm(E::one(), pbar_d, MatRef::row_major(pf, n, k).t(), E::zero(), MatMut::row_major(&mut pphi, k, n));
                    let hb = &uv[u * k..(u + 1) * k];
                    for r in 0..n {
                        let phi_n = &pf[r * k..(r + 1) * k];
                        let mut q = E::zero();
                        let mut hp = E::zero();
                        for cc in 0..k {
                            q += phi_n[cc] * pphi[cc * n + r];
                            hp += phi_n[cc] * hb[cc];
                        }
                        let gi_ = lo + r * dt.d_out + d;
                        let pi_ = lol + r * dt.d_out + d;
                        let (lv, vv) = (dt.lam[gi_], dt.v[gi_]);
                        part.lam_bar[pi_] += omega * (q + vv * hp);
                        part.v_bar[pi_] += omega * lv * hp;
                        let two = lv + lv;
                        let fb = &mut part.phi_bar[(fl * n + r) * k..][..k];
                        for cc in 0..k {
                            fb[cc] += omega * (two * pphi[cc * n + r] + lv * vv * hb[cc]);
                        }
                    }
                }
            }
        }
    }
    part.kl = kl;
    Ok(part)
}

fn host_vec<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(t: &Tensor<S, E, D, T>) -> Vec<E> {
    t.as_vec()
}

/// The conjugate update of one layer. `what` names the layer in errors.
pub(crate) fn conjugate_layer<E: Real, D: Device<E>>(
    what: &str,
    inputs: LayerInputs<E, D>,
    s: usize,
    offsets: Option<&Offsets<E>>,
    want_kl: bool,
    keep_state: bool,
) -> Result<LayerOutputs<E, D>> {
    let LayerInputs { data, prec, mean, zeta, units, d_out, k } = inputs;
    let (g, kk) = *mean.shape();
    debug_assert_eq!(g * kk, d_out * k);
    let dev = mean.device().clone();
    let prec_v = host_vec(&prec);
    let mean_v = host_vec(&mean);
    let zeta_v = host_vec(&zeta);
    let host_data = data
        .as_ref()
        .map(|d| (host_vec(&d.phi), host_vec(&d.lam), host_vec(&d.v), host_vec(&d.eps), d.phi.shape().0, d.lam.shape().0, d.phi.shape().1));
    let hd = host_data.as_ref().map(|(phi, lam, v, eps, sphi, slam, n)| HostData {
        sphi: *sphi,
        n: *n,
        k,
        phi,
        slam: *slam,
        d_out,
        lam,
        v,
        eps,
    });
    let out = host_update(what, hd.as_ref(), s, g, kk, units, &prec_v, &mean_v, &zeta_v, offsets, want_kl, keep_state)?;
    let sp = out.sp;

    // KL surrogate on copies of the inputs (the originals' tapes go with the sample, which is
    // always part of the loss)
    let (kl, kl_value) = if want_kl {
        let c = |v: Vec<E>, sh: (usize, usize, usize)| -> Tensor<(usize, usize, usize), E, D> { dev.tensor_from_vec(v, sh) };
        let mut lin = (prec.with_empty_tape() * c(out.prec_bar, (g, kk, kk))).sum::<(), _>();
        lin = lin + (mean.with_empty_tape() * dev.tensor_from_vec(out.mean_bar, (g, kk))).sum::<(), _>();
        if let Some(d) = &data {
            lin = lin + (d.phi.with_empty_tape() * c(out.phi_bar, *d.phi.shape())).sum::<(), _>();
            lin = lin + (d.lam.with_empty_tape() * c(out.lam_bar, *d.lam.shape())).sum::<(), _>();
            lin = lin + (d.v.with_empty_tape() * c(out.v_bar, *d.v.shape())).sum::<(), _>();
        }
        let val: Tensor<(), E, D> = dev.tensor_from_vec(vec![crate::num::cast::from_f64::<E>(out.kl)], ());
        (Some(attach(lin, val)), out.kl)
    } else {
        (None, 0.0)
    };

    // sample surrogate: t = C₀ r, r = Π(μ − w₀) + ζ + Φᵀ(λ ⊙ (v − Φ w₀) + √λ ⊙ ε)
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
    let t = if sp == 1 {
        let c0: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(out.cinv, (g, kk, kk));
        let (r, tape) = r.permute::<_, Axes3<1, 2, 0>>().split_tape();
        c0.put_tape(tape).matmul(r).permute::<_, Axes3<2, 0, 1>>().reshape_like(&(s, g, kk))
    } else {
        let c0: Tensor<(usize, usize, usize), E, D> = dev.tensor_from_vec(out.cinv, (s * g, kk, kk));
        let (r, tape) = r.reshape_like(&(s * g, kk, 1usize)).split_tape();
        c0.put_tape(tape).matmul(r).reshape_like(&(s, g, kk))
    };
    let w = attach(t, w0).reshape_like(&(s, d_out, k));
    Ok(LayerOutputs { w, kl, kl_value, state: out.state })
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
