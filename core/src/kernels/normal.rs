//! Standard-normal draws in bulk for `f32`: the Box–Muller transform of 24-bit uniforms.
//!
//! Every block of 32 draws takes 16 `u64`s from the generator: 16 pairs of 32-bit words, each pair
//! `(b₁, b₂)` giving `u₁ = (⌊b₁/2⁸⌋ + 1)/2²⁴ ∈ (0, 1]` and `u₂ = ⌊b₂/2⁸⌋/2²⁴ ∈ [0, 1)`, then
//! `r cos θ` and `r sin θ` with `r = √(−2 ln u₁)` and `θ = 2π u₂` (the block's first 16 draws are
//! the cosines, the next 16 the sines). A shorter final block still takes 16 `u64`s. On AVX-512
//! CPUs the 16 pairs of a block are transformed together with polynomial `ln`, `sin` and `cos`
//! (Cephes' single-precision ones); elsewhere lane by lane with the same polynomials. Both are
//! within 2 ulp of the exact transform (tested), so the draws for a seed are the same on every CPU
//! up to a few units in the last place.
//!
//! The 24-bit `u₁` bounds a draw at `√(48 ln 2) ≈ 5.77` in absolute value: the normal's mass beyond
//! that is 8·10⁻⁹. Single draws ([`crate::Real::sample_standard_normal`]) and all `f64` draws use
//! the ziggurat of `rand_distr`, which costs several times as much per draw.

use dfdx::prelude::{Device, Shape, Tensor};
use rand::{Rng, RngCore};

/// Draws per block.
const BLOCK: usize = 32;

/// Fills `out` with standard-normal draws from `rng` (see the module docs).
pub(crate) fn fill_f32<R: RngCore + ?Sized>(rng: &mut R, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return fill_with(rng, out, |bits, z| {
            // SAFETY: `avx512::block` is compiled with `avx512f` enabled, which was detected on
            // this CPU just above; it reads the 32 words of `bits` and writes the 32 lanes of `z`
            // (two 16-lane loads and stores each), both arrays of exactly 32.
            unsafe { avx512::block(bits, z) }
        });
    }
    fill_with(rng, out, scalar_block)
}

/// [`fill_f32`] with the given transform of one block.
#[inline(always)]
fn fill_with<R: RngCore + ?Sized>(rng: &mut R, out: &mut [f32], block: impl Fn(&[u32; BLOCK], &mut [f32; BLOCK])) {
    let mut bits = [0u32; BLOCK];
    let mut z = [0f32; BLOCK];
    for chunk in out.chunks_mut(BLOCK) {
        for pair in bits.chunks_exact_mut(2) {
            let v = rng.next_u64();
            pair[0] = v as u32;
            pair[1] = (v >> 32) as u32;
        }
        block(&bits, &mut z);
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

/// The uniforms of lane `j`: `(u₁, u₂)`.
#[inline(always)]
fn uniforms(b1: u32, b2: u32) -> (f32, f32) {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    (((b1 >> 8) + 1) as f32 * SCALE, (b2 >> 8) as f32 * SCALE)
}

/// One block, one lane at a time, with the same polynomials as the vector path (products and sums
/// rounded separately instead of fused, so the two differ by an ulp or two).
fn scalar_block(bits: &[u32; BLOCK], z: &mut [f32; BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: `scalar_block_avx2` is compiled with `avx2` enabled, which was detected on this
        // CPU just above; its body is the safe `scalar_block_impl`.
        return unsafe { scalar_block_avx2(bits, z) };
    }
    scalar_block_impl(bits, z)
}

/// [`scalar_block_impl`] compiled for AVX2, which vectorises its loop 8 lanes wide (Rust does not
/// fuse `a * b + c`, so the results are the same as without AVX2).
///
/// # Safety
/// The CPU must support AVX2 (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scalar_block_avx2(bits: &[u32; BLOCK], z: &mut [f32; BLOCK]) {
    scalar_block_impl(bits, z)
}

#[inline(always)]
fn scalar_block_impl(bits: &[u32; BLOCK], z: &mut [f32; BLOCK]) {
    const HALF: usize = BLOCK / 2;
    for j in 0..HALF {
        let (u1, u2) = uniforms(bits[j], bits[HALF + j]);
        let r = (-2.0 * ln(u1)).sqrt();
        // θ = 2π u₂ = k π/2 + φ with k = round(4 u₂) and |φ| ≤ π/4 (4 u₂ − k is exact)
        let t = 4.0 * u2;
        let k = t.round_ties_even();
        let (s, c) = sin_cos((t - k) * std::f32::consts::FRAC_PI_2);
        // quadrant q = k mod 4: (cos θ, sin θ) = (c, s), (−s, c), (−c, −s), (s, −c)
        let q = k as u32 & 3;
        let (a, b) = if q & 1 == 1 { (s, c) } else { (c, s) };
        let cos = if (q + 1) & 2 != 0 { -a } else { a };
        let sin = if q & 2 != 0 { -b } else { b };
        z[j] = r * cos;
        z[HALF + j] = r * sin;
    }
}

/// `ln x` for positive normal `x` (Cephes `logf`).
#[inline(always)]
fn ln(x: f32) -> f32 {
    // x = m 2^e with m in [√½, √2)
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1.0;
    }
    let f = m - 1.0;
    let f2 = f * f;
    let mut p = 7.037_683_6e-2 * f + -1.151_461e-1;
    p = p * f + 1.167_699_9e-1;
    p = p * f + -1.242_014_1e-1;
    p = p * f + 1.424_932_3e-1;
    p = p * f + -1.666_805_8e-1;
    p = p * f + 2.000_071_4e-1;
    p = p * f + -2.499_999_4e-1;
    p = p * f + 3.333_333e-1;
    let mut y = p * f * f2;
    y += e * -2.121_944_4e-4;
    y += f2 * -0.5;
    e * 0.693_359_4 + (f + y)
}

/// `(sin φ, cos φ)` for `|φ| ≤ π/4` (Cephes `sinf` and `cosf`).
#[inline(always)]
fn sin_cos(x: f32) -> (f32, f32) {
    let z = x * x;
    let ps = (-1.951_529_6e-4 * z + 8.332_161e-3) * z + -1.666_665_5e-1;
    let pc = (2.443_315_7e-5 * z + -1.388_731_6e-3) * z + 4.166_664_6e-2;
    (ps * z * x + x, pc * z * z + (z * -0.5 + 1.0))
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// One block, 16 lanes at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512F. (The loads and stores are in bounds by the types: `bits` and
    /// `z` hold 32 values, read and written as two vectors of 16 at offsets 0 and 16.)
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(bits: &[u32; crate::kernels::normal::BLOCK], z: &mut [f32; crate::kernels::normal::BLOCK]) {
        let c = _mm512_set1_ps;
        let b1 = _mm512_loadu_si512(bits.as_ptr().cast());
        let b2 = _mm512_loadu_si512(bits.as_ptr().add(16).cast());
        let scale = c(1.0 / (1u32 << 24) as f32);
        // the 24-bit integers convert exactly
        let u1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_srli_epi32::<8>(b1), _mm512_set1_epi32(1))), scale);
        let u2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(b2)), scale);
        let r = _mm512_sqrt_ps(_mm512_mul_ps(c(-2.0), ln(u1)));
        // θ = 2π u₂ = k π/2 + φ with k = round(4 u₂) and |φ| ≤ π/4 (4 u₂ − k is exact)
        let t = _mm512_mul_ps(u2, c(4.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let phi = _mm512_mul_ps(_mm512_sub_ps(t, k), c(std::f32::consts::FRAC_PI_2));
        let (s, co) = sin_cos(phi);
        // quadrant q = k mod 4: (cos θ, sin θ) = (c, s), (−s, c), (−c, −s), (s, −c)
        let q = _mm512_cvtps_epi32(k);
        let odd = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
        let (a, b) = (_mm512_mask_blend_ps(odd, co, s), _mm512_mask_blend_ps(odd, s, co));
        let neg_cos = _mm512_test_epi32_mask(_mm512_add_epi32(q, _mm512_set1_epi32(1)), _mm512_set1_epi32(2));
        let neg_sin = _mm512_test_epi32_mask(q, _mm512_set1_epi32(2));
        let zero = _mm512_setzero_ps();
        let cos = _mm512_mask_sub_ps(a, neg_cos, zero, a);
        let sin = _mm512_mask_sub_ps(b, neg_sin, zero, b);
        _mm512_storeu_ps(z.as_mut_ptr(), _mm512_mul_ps(r, cos));
        _mm512_storeu_ps(z.as_mut_ptr().add(16), _mm512_mul_ps(r, sin));
    }

    /// `ln x` for positive normal `x` (Cephes `logf`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ln(x: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        // x = m 2^e with m in [√½, √2)
        let mut e = _mm512_getexp_ps(x);
        let mut m = _mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_SRC>(x);
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, c(std::f32::consts::SQRT_2));
        m = _mm512_mask_mul_ps(m, big, m, c(0.5));
        e = _mm512_mask_add_ps(e, big, e, c(1.0));
        let f = _mm512_sub_ps(m, c(1.0));
        let f2 = _mm512_mul_ps(f, f);
        let mut p = _mm512_fmadd_ps(c(7.037_683_6e-2), f, c(-1.151_461e-1));
        p = _mm512_fmadd_ps(p, f, c(1.167_699_9e-1));
        p = _mm512_fmadd_ps(p, f, c(-1.242_014_1e-1));
        p = _mm512_fmadd_ps(p, f, c(1.424_932_3e-1));
        p = _mm512_fmadd_ps(p, f, c(-1.666_805_8e-1));
        p = _mm512_fmadd_ps(p, f, c(2.000_071_4e-1));
        p = _mm512_fmadd_ps(p, f, c(-2.499_999_4e-1));
        p = _mm512_fmadd_ps(p, f, c(3.333_333e-1));
        let mut y = _mm512_mul_ps(_mm512_mul_ps(p, f), f2);
        y = _mm512_fmadd_ps(e, c(-2.121_944_4e-4), y);
        y = _mm512_fmadd_ps(f2, c(-0.5), y);
        _mm512_fmadd_ps(e, c(0.693_359_4), _mm512_add_ps(f, y))
    }

    /// `(sin φ, cos φ)` for `|φ| ≤ π/4` (Cephes `sinf` and `cosf`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sin_cos(x: __m512) -> (__m512, __m512) {
        let c = _mm512_set1_ps;
        let z = _mm512_mul_ps(x, x);
        let mut ps = _mm512_fmadd_ps(c(-1.951_529_6e-4), z, c(8.332_161e-3));
        ps = _mm512_fmadd_ps(ps, z, c(-1.666_665_5e-1));
        let s = _mm512_fmadd_ps(_mm512_mul_ps(ps, z), x, x);
        let mut pc = _mm512_fmadd_ps(c(2.443_315_7e-5), z, c(-1.388_731_6e-3));
        pc = _mm512_fmadd_ps(pc, z, c(4.166_664_6e-2));
        let co = _mm512_fmadd_ps(_mm512_mul_ps(pc, z), z, _mm512_fmadd_ps(z, c(-0.5), c(1.0)));
        (s, co)
    }
}

/// Draws `n` standard-normal values on the host and moves them to `dev` in one transfer.
///
/// The draws come from a xoshiro256++ generator seeded from `rng` (one `u64` per call): fast,
/// reproducible from the caller's seed, and drawn directly in the dtype `E`. `f32` draws come from
/// a bulk Box–Muller transform of 24-bit uniforms, so they never exceed `√(48 ln 2) ≈ 5.77` in
/// absolute value (the normal's mass beyond is 8·10⁻⁹); `f64` draws from `rand_distr`'s ziggurat.
///
/// ```
/// use weightspace::prelude::*;
/// let dev = Cpu::default();
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let eps: Tensor<(usize, usize), f32, Cpu> = weightspace::standard_normal(&dev, &mut rng, (64usize, 64usize));
/// let v = eps.as_vec();
/// let mean = v.iter().sum::<f32>() / v.len() as f32;
/// assert!(mean.abs() < 4.5 / 64.0); // 4.5 standard errors of the mean of 4096 draws
/// assert!(v.iter().all(|z| z.abs() < 5.78));
/// ```
pub fn standard_normal<E: crate::Real, D: Device<E>, S: Shape>(dev: &D, rng: &mut impl Rng, shape: S) -> Tensor<S, E, D> {
    use rand::SeedableRng;
    let n = shape.num_elements();
    let mut fast = rand::rngs::SmallRng::seed_from_u64(rng.next_u64());
    let mut v = vec![E::zero(); n];
    E::fill_standard_normal(&mut fast, &mut v);
    dev.tensor_from_vec(v, shape)
}

/// Fills `out` with the standard-normal noise of weight sample `sample` of a layer whose draw was
/// seeded with `seed`: a xoshiro256++ stream seeded from `seed + sample`, so that every sample's
/// noise can be drawn on its own (on any thread) and still be the same for a given seed.
pub(crate) fn sample_noise<E: crate::Real>(seed: u64, sample: usize, out: &mut [E]) {
    use rand::SeedableRng;
    let mut fast = rand::rngs::SmallRng::seed_from_u64(seed.wrapping_add(sample as u64));
    E::fill_standard_normal(&mut fast, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Φ(x) from Abramowitz & Stegun 7.1.26 (absolute error below 1.5·10⁻⁷, far below the
    /// Kolmogorov–Smirnov threshold used here).
    fn normal_cdf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() / std::f64::consts::SQRT_2);
        let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-(x * x) / 2.0).exp();
        0.5 * (1.0 + if x < 0.0 { -erf } else { erf })
    }

    /// The exact transform of a block's bits: Box–Muller in f64 with the standard library's
    /// functions (the uniforms are exact in f32).
    fn reference_block(bits: &[u32; BLOCK]) -> [f64; BLOCK] {
        const HALF: usize = BLOCK / 2;
        let mut z = [0f64; BLOCK];
        for j in 0..HALF {
            let (u1, u2) = uniforms(bits[j], bits[HALF + j]);
            let r = (-2.0 * (u1 as f64).ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * u2 as f64).sin_cos();
            z[j] = r * c;
            z[HALF + j] = r * s;
        }
        z
    }

    /// Both transforms (the AVX-512 one where the CPU has it, and the lane-by-lane one every CPU
    /// can run) against the exact one on 20 000 random blocks plus the extremes of the bits and
    /// the quadrant edges: within 4 ulp (of max(|z|, 1)) of it, so the two agree to a few ulp.
    #[test]
    fn transforms_match_the_exact_box_muller() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (mut worst_scalar, mut worst_vector) = (0f64, 0f64);
        let mut bits = [0u32; BLOCK];
        let ulps = |got: &[f32; BLOCK], want: &[f64; BLOCK]| {
            got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs() / (f32::EPSILON as f64 * w.abs().max(1.0))).fold(0.0, f64::max)
        };
        #[cfg(target_arch = "x86_64")]
        let vector = std::is_x86_feature_detected!("avx512f");
        for round in 0..20_000 {
            bits.iter_mut().for_each(|b| *b = rng.next_u32());
            if round == 0 {
                // the extremes: u₁ = 2⁻²⁴ and 1, u₂ = 0 and 1 − 2⁻²⁴, and the quadrant edges
                bits[..4].copy_from_slice(&[0, u32::MAX, 0, u32::MAX]);
                bits[16..24].copy_from_slice(&[0, u32::MAX, 1 << 29, 1 << 30, 3 << 29, 1 << 31, 5 << 29, 7 << 29]);
            }
            let want = reference_block(&bits);
            let mut z = [0f32; BLOCK];
            scalar_block(&bits, &mut z);
            worst_scalar = worst_scalar.max(ulps(&z, &want));
            #[cfg(target_arch = "x86_64")]
            if vector {
                // SAFETY: AVX-512F was detected (`vector`); the arrays have the 32 lanes `block` uses.
                unsafe { avx512::block(&bits, &mut z) };
                worst_vector = worst_vector.max(ulps(&z, &want));
            }
        }
        assert!(worst_scalar <= 4.0, "lane-by-lane transform: worst {worst_scalar} ulp");
        assert!(worst_vector <= 4.0, "AVX-512 transform: worst {worst_vector} ulp");
    }

    /// 2²⁰ draws against N(0, 1): one-sample Kolmogorov–Smirnov at α = 0.001 (D < 1.95/√n), and
    /// the mean, variance, fourth moment, the correlation of the two draws of a Box–Muller pair
    /// and the mass beyond 3 each within 4.5 Monte-Carlo standard errors. The block tail (a
    /// length that is not a multiple of 32) is drawn too. Both transforms.
    #[test]
    fn draws_are_standard_normal() {
        check_standard_normal(fill_f32);
        // the lane-by-lane transform, which CPUs without AVX-512 use
        check_standard_normal(|rng, out| fill_with(rng, out, scalar_block));
    }

    fn check_standard_normal(fill: impl Fn(&mut rand::rngs::SmallRng, &mut [f32])) {
        let n = 1usize << 20;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2026);
        let mut v = vec![0f32; n + 7];
        fill(&mut rng, &mut v);
        assert!(v[n..].iter().all(|x| x.is_finite() && *x != 0.0));
        let v: Vec<f64> = v[..n].iter().map(|x| *x as f64).collect();
        let nf = n as f64;
        let mean = v.iter().sum::<f64>() / nf;
        let var = v.iter().map(|x| x * x).sum::<f64>() / nf;
        let m4 = v.iter().map(|x| x.powi(4)).sum::<f64>() / nf;
        assert!(mean.abs() < 4.5 / nf.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 4.5 * (2.0 / nf).sqrt(), "second moment {var}");
        assert!((m4 - 3.0).abs() < 4.5 * (96.0 / nf).sqrt(), "fourth moment {m4}");
        // the pair of lane j of a block: draws j and j + 16
        let pairs: Vec<(f64, f64)> = v.chunks_exact(BLOCK).flat_map(|b| (0..16).map(move |j| (b[j], b[16 + j]))).collect();
        let corr = pairs.iter().map(|(a, b)| a * b).sum::<f64>() / pairs.len() as f64;
        assert!(corr.abs() < 4.5 / (pairs.len() as f64).sqrt(), "pair correlation {corr}");
        let p3 = 2.0 * (1.0 - normal_cdf(3.0));
        let tail = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / nf;
        assert!((tail - p3).abs() < 4.5 * (p3 * (1.0 - p3) / nf).sqrt(), "mass beyond 3: {tail} vs {p3}");
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let d = sorted
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let f = normal_cdf(*x);
                (f - k as f64 / nf).abs().max(((k + 1) as f64 / nf - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(d < 1.95 / nf.sqrt(), "Kolmogorov-Smirnov D = {d}");
    }
}
