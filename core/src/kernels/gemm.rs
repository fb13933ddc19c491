//! Small-matrix products for the dense layers, `f32` on AVX-512 CPUs.
//!
//! The dense layers multiply one weight sample at a time: `(N × i)·(i × o)` with `i` and `o` in
//! the tens to hundreds, and `1` for the input and output layers of a regression net.
//! `matrixmultiply` packs both operands on every call and computes `16 × 16` tiles, so these
//! shapes spend much of their time packing, and a `1`-wide side wastes 15 of 16 lanes. The kernels
//! here read the operands where they lie (strided scalars are broadcast, rows are loaded as
//! vectors with a masked tail), keep up to a `6 × 64` tile of the result in registers, and take
//! the narrow outputs through a dot-product kernel instead. The tile's epilogue can apply tanh
//! (forward) or multiply by the previous layer's tanh derivative (backward) before the store, so
//! those passes cost no extra trip through memory.
//!
//! [`Kernels::get`] returns them only for `f32` on a CPU with AVX-512F; callers fall back to
//! [`crate::Real::gemm`] (`matrixmultiply`) otherwise.

/// What [`Kernels::rows`] does to the result in registers before storing it.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<E> {
    /// Store the product as it is.
    None,
    /// Store `tanh` of it (a dense layer's forward with the activation fused).
    Tanh,
    /// Multiply it by `1 − a²`, with `a[r·a_row + j]` at the result's position `(r, j)` (an input
    /// gradient with the previous tanh layer's derivative fused).
    TanhGrad {
        /// The previous layer's activations.
        a: *const E,
        /// Their row stride.
        a_row: usize,
    },
}

/// One product for [`Kernels::rows`]:
/// `C[r, 0..cols] = init[0..cols] + (C[r, ..] if accumulate) + Σ_p A(r, p) B[p, 0..cols]` for
/// `r < rows` and `p < k`, where `A(r, p) = a[r·a_row + p·a_step]`, `B[p, j] = b[p·b_step + j]`
/// and `C[r, j] = c[r·c_row + j]`, with `epilogue` applied last. `init` may be null (zero).
#[derive(Clone, Copy)]
pub(crate) struct Product<E> {
    pub rows: usize,
    pub k: usize,
    pub cols: usize,
    pub a: *const E,
    pub a_row: usize,
    pub a_step: usize,
    pub b: *const E,
    pub b_step: usize,
    pub c: *mut E,
    pub c_row: usize,
    pub init: *const E,
    pub accumulate: bool,
    pub epilogue: Epilogue<E>,
}

impl<E> Product<E> {
    /// The same product over another element type (the pointers cast).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn cast<F>(self) -> Product<F> {
        let epilogue = match self.epilogue {
            Epilogue::None => Epilogue::None,
            Epilogue::Tanh => Epilogue::Tanh,
            Epilogue::TanhGrad { a, a_row } => Epilogue::TanhGrad { a: a.cast(), a_row },
        };
        Product {
            rows: self.rows,
            k: self.k,
            cols: self.cols,
            a: self.a.cast(),
            a_row: self.a_row,
            a_step: self.a_step,
            b: self.b.cast(),
            b_step: self.b_step,
            c: self.c.cast(),
            c_row: self.c_row,
            init: self.init.cast(),
            accumulate: self.accumulate,
            epilogue,
        }
    }
}

/// The AVX-512 kernels, for `E = f32` on a CPU that has them.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    _private: (),
}

// off x86-64 `get` returns `None` and the methods are never called
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
impl Kernels {
    /// The kernels if `E` is `f32` and this CPU runs AVX-512F.
    #[inline]
    pub(crate) fn get<E: 'static>() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() && std::is_x86_feature_detected!("avx512f") {
            return Some(Kernels { _private: () });
        }
        None
    }

    /// Computes `p` (see [`Product`]).
    ///
    /// # Safety
    /// Every index `p` names (and those of the epilogue's operand) must lie inside its buffer, and
    /// `c` must not overlap `a`, `b`, `init` or the epilogue's operand. `E` must be `f32` and the
    /// CPU must run AVX-512F: both are checked by [`Kernels::get`], the only way to obtain `self`.
    #[inline]
    pub(crate) unsafe fn rows<E>(self, p: Product<E>) {
        #[cfg(target_arch = "x86_64")]
        avx512::rows(p.cast());
    }

    /// `tanh` in place, 16 lanes at a time (the rational approximation of
    /// [`super::tanh_f32`], evaluated with FMAs).
    ///
    /// # Safety
    /// `E` must be `f32` (with AVX-512F on the CPU): both are checked by [`Kernels::get`], the only
    /// way to obtain `self`.
    #[inline]
    pub(crate) unsafe fn tanh<E>(self, v: &mut [E]) {
        #[cfg(target_arch = "x86_64")]
        avx512::tanh_slice(std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()));
    }

    /// `out[r·o + u] = bias[u] + Σ_{p < i} h[r·i + p] w[u·(i + 1) + p]` for `r < n`, `u < o`: a
    /// dense layer's pre-activations with `[W | b]` rows in `w`, as dot products (for narrow `o`).
    ///
    /// # Safety
    /// `h`, `w` and `out` must hold `n × i`, `o × (i + 1)` and `n × o` values, `out` overlapping
    /// neither input. `E` must be `f32` with AVX-512F on the CPU (checked by [`Kernels::get`], the
    /// only way to obtain `self`).
    #[inline]
    pub(crate) unsafe fn dots<E>(self, n: usize, i: usize, o: usize, h: *const E, w: *const E, out: *mut E) {
        #[cfg(target_arch = "x86_64")]
        avx512::dots(n, i, o, h.cast(), w.cast(), out.cast());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::kernels::gemm::{Epilogue, Product};

    /// Rows of the result computed together in registers.
    const MR: usize = 6;
    /// Vectors of 16 columns computed together (a 6 × 64 tile: 24 accumulators).
    const NV: usize = 4;

    /// The mask of the first `rem` lanes (`1 ..= 16`).
    #[inline(always)]
    fn lanes(rem: usize) -> __mmask16 {
        if rem >= 16 {
            0xffff
        } else {
            (1u16 << rem) - 1
        }
    }

    /// `tanh` of 16 lanes: [`crate::kernels::tanh_f32`]'s rational approximation with FMAs and a
    /// refined reciprocal instead of a division.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn tanh16(x: __m512) -> __m512 {
        let c = _mm512_set1_ps;
        let xc = _mm512_min_ps(_mm512_max_ps(x, c(-7.998_811_7)), c(7.998_811_7));
        let x2 = _mm512_mul_ps(xc, xc);
        let mut p = _mm512_fmadd_ps(x2, c(-2.760_768_5e-16), c(2.000_188e-13));
        p = _mm512_fmadd_ps(x2, p, c(-8.604_672e-11));
        p = _mm512_fmadd_ps(x2, p, c(5.122_297e-8));
        p = _mm512_fmadd_ps(x2, p, c(1.485_722_4e-5));
        p = _mm512_fmadd_ps(x2, p, c(6.372_619_3e-4));
        p = _mm512_fmadd_ps(x2, p, c(4.893_524_6e-3));
        p = _mm512_mul_ps(p, xc);
        let mut q = _mm512_fmadd_ps(x2, c(1.198_258_4e-6), c(1.185_347_1e-4));
        q = _mm512_fmadd_ps(x2, q, c(2.268_434_6e-3));
        q = _mm512_fmadd_ps(x2, q, c(4.893_525e-3));
        // 1/q to 14 bits, then one Newton step (about 28 bits)
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, r, c(1.0)), r);
        let y = _mm512_mul_ps(p, r);
        // below 4e-4 tanh(x) = x to f32 precision
        let abs = _mm512_abs_ps(x);
        let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs, c(4e-4));
        _mm512_mask_blend_ps(small, y, x)
    }

    /// `tanh` in place.
    ///
    /// # Safety
    /// The CPU must support AVX-512F. (Memory accesses stay inside `v`: full 16-lane loads and
    /// stores over `chunks_exact(16)`, masked ones over the remainder.)
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tanh_slice(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(16);
        for ch in &mut chunks {
            let x = _mm512_loadu_ps(ch.as_ptr());
            _mm512_storeu_ps(ch.as_mut_ptr(), tanh16(x));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let m = lanes(rest.len());
            let x = _mm512_maskz_loadu_ps(m, rest.as_ptr());
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, tanh16(x));
        }
    }

    /// One `R × V·16` tile of [`rows`] at the corner `p` points to (the last vector masked by
    /// `tail`; `p.rows` and `p.cols` are not read).
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and every index the tile names must lie inside its buffer:
    /// `a[r·a_row + q·a_step]`, `b[q·b_step + c]`, `c[r·c_row + c]`, `init[c]` and the epilogue's
    /// `a[r·a_row + c]` for `r < R`, `q < k` and the unmasked columns `c < 16·V` (as [`rows`]
    /// ensures for the product its caller vouches for).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize>(p: &Product<f32>, tail: __mmask16) {
        let Product { k, a, a_row, a_step, b, b_step, c, c_row, init, accumulate, epilogue, .. } = *p;
        let mask = |j: usize| if j + 1 == V { tail } else { 0xffff };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if !init.is_null() {
            for j in 0..V {
                let v = _mm512_maskz_loadu_ps(mask(j), init.add(16 * j));
                acc.iter_mut().for_each(|row| row[j] = v);
            }
        }
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask(j), c.add(r * c_row + 16 * j)));
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..k {
            let mut bv = [_mm512_setzero_ps(); V];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = if j + 1 == V { _mm512_maskz_loadu_ps(tail, bp.add(16 * j)) } else { _mm512_loadu_ps(bp.add(16 * j)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * a_row));
                for (v, bj) in row.iter_mut().zip(&bv) {
                    *v = _mm512_fmadd_ps(av, *bj, *v);
                }
            }
            ap = ap.add(a_step);
            bp = bp.add(b_step);
        }
        match epilogue {
            Epilogue::None => {}
            Epilogue::Tanh => acc.iter_mut().flatten().for_each(|v| *v = tanh16(*v)),
            Epilogue::TanhGrad { a, a_row } => {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        let act = _mm512_maskz_loadu_ps(mask(j), a.add(r * a_row + 16 * j));
                        *v = _mm512_fnmadd_ps(*v, _mm512_mul_ps(act, act), *v);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * c_row + 16 * j), mask(j), *v);
            }
        }
    }

    /// See [`super::Kernels::rows`]. Column blocks of 64 outside, row tiles of 6 inside, so one
    /// block of `B` (`k × 64`) stays in L1 while the rows of `A` stream past it.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and every index `p` names must lie inside its buffer (see
    /// [`super::Kernels::rows`]). The tiles cover rows `r0..r0 + mr ≤ p.rows` and columns
    /// `j0..j0 + width ≤ p.cols` (the last vector masked to `width`), so they name no other index.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(p: Product<f32>) {
        let mut j0 = 0;
        while j0 < p.cols {
            let width = (p.cols - j0).min(16 * NV);
            let nv = width.div_ceil(16);
            let tail = lanes(width - 16 * (nv - 1));
            let mut r0 = 0;
            while r0 < p.rows {
                let mr = (p.rows - r0).min(MR);
                // the product moved to the tile's corner
                let t = Product {
                    a: p.a.add(r0 * p.a_row),
                    b: p.b.add(j0),
                    c: p.c.add(r0 * p.c_row + j0),
                    init: if p.init.is_null() { p.init } else { p.init.add(j0) },
                    epilogue: match p.epilogue {
                        Epilogue::TanhGrad { a, a_row } => Epilogue::TanhGrad { a: a.add(r0 * a_row + j0), a_row },
                        e => e,
                    },
                    ..p
                };
                macro_rules! dispatch {
                    ($($r:literal $v:literal),*) => {
                        match (mr, nv) {
                            $(($r, $v) => tile::<$r, $v>(&t, tail),)*
                            _ => unreachable!("tiles are at most {MR} × {NV}"),
                        }
                    };
                }
                dispatch!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4,
                          4 1, 4 2, 4 3, 4 4, 5 1, 5 2, 5 3, 5 4, 6 1, 6 2, 6 3, 6 4);
                r0 += mr;
            }
            j0 += width;
        }
    }

    /// See [`super::Kernels::dots`]. Four rows at a time share each load of a weight row.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `h`, `w` and `out` must hold `n × i`, `o × (i + 1)` and
    /// `n × o` values. (Loads of a row of `i` values are masked to `i` in the last vector.)
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(n: usize, i: usize, o: usize, h: *const f32, w: *const f32, out: *mut f32) {
        const ROWS: usize = 4;
        let chunks = i.div_ceil(16);
        let tail = lanes(i + 16 - 16 * chunks);
        let mask = |q: usize| if q + 1 == chunks { tail } else { 0xffff };
        let mut r0 = 0;
        while r0 + ROWS <= n {
            for u in 0..o {
                let wu = w.add(u * (i + 1));
                let mut acc = [_mm512_setzero_ps(); ROWS];
                for q in 0..chunks {
                    let wv = _mm512_maskz_loadu_ps(mask(q), wu.add(16 * q));
                    for (r, v) in acc.iter_mut().enumerate() {
                        *v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask(q), h.add((r0 + r) * i + 16 * q)), wv, *v);
                    }
                }
                for (r, v) in acc.iter().enumerate() {
                    *out.add((r0 + r) * o + u) = _mm512_reduce_add_ps(*v) + *wu.add(i);
                }
            }
            r0 += ROWS;
        }
        for r in r0..n {
            for u in 0..o {
                let wu = w.add(u * (i + 1));
                let mut acc = _mm512_setzero_ps();
                for q in 0..chunks {
                    acc = _mm512_fmadd_ps(
                        _mm512_maskz_loadu_ps(mask(q), h.add(r * i + 16 * q)),
                        _mm512_maskz_loadu_ps(mask(q), wu.add(16 * q)),
                        acc,
                    );
                }
                *out.add(r * o + u) = _mm512_reduce_add_ps(acc) + *wu.add(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Both kernels against plain f64 loops, over shapes that hit every tile size and column tail,
    /// strided and broadcast (`a_step = 0`) operands, `init` and `accumulate`. Skipped (with a
    /// message) on CPUs without AVX-512F, where the kernels are never used.
    #[test]
    fn kernels_match_plain_loops() {
        let Some(kern) = Kernels::get::<f32>() else {
            eprintln!("no AVX-512F on this CPU: the kernels are not used here");
            return;
        };
        assert!(Kernels::get::<f64>().is_none());
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut cases = 0;
        for rows in [1usize, 2, 5, 6, 7, 13, 31] {
            for k in [1usize, 3, 17] {
                for cols in [1usize, 15, 16, 17, 64, 65, 100, 130] {
                    let (init_on, acc_on) = (rng.gen_bool(0.5), rng.gen_bool(0.5));
                    // A transposed (a_row = 1) half of the time; B with a padded row stride
                    let transposed = rng.gen_bool(0.5);
                    let (a_row, a_step) = if transposed { (1, rows + 2) } else { (k + 1, 1) };
                    let b_step = cols + 3;
                    let c_row = cols + 1;
                    let a: Vec<f32> = (0..rows * k * 3 + 8).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let b: Vec<f32> = (0..k * b_step).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let init: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let c0: Vec<f32> = (0..rows * c_row).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let mut c = c0.clone();
                    let init_ptr = if init_on { init.as_ptr() } else { std::ptr::null() };
                    // every third case each epilogue; the tanh-gradient operand has its own stride
                    let act_row = cols + 2;
                    let act: Vec<f32> = (0..rows * act_row).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let epi = match cases % 3 {
                        0 => Epilogue::None,
                        1 => Epilogue::Tanh,
                        _ => Epilogue::TanhGrad { a: act.as_ptr(), a_row: act_row },
                    };
                    let product = Product {
                        rows,
                        k,
                        cols,
                        a: a.as_ptr(),
                        a_row,
                        a_step,
                        b: b.as_ptr(),
                        b_step,
                        c: c.as_mut_ptr(),
                        c_row,
                        init: init_ptr,
                        accumulate: acc_on,
                        epilogue: epi,
                    };
                    // SAFETY: `kern` came from `Kernels::get::<f32>`. The largest index of A,
                    // (rows−1)(k+1) + k−1 or rows−1 + (k−1)(rows+2), is below 3·rows·k + 8 =
                    // a.len(); B's and C's rows are b_step, c_row ≥ cols apart inside k·b_step and
                    // rows·c_row values; init holds cols values and the epilogue's operand
                    // rows·act_row with act_row ≥ cols.
                    unsafe { kern.rows(product) };
                    for r in 0..rows {
                        for j in 0..c_row {
                            let got = c[r * c_row + j] as f64;
                            let want = if j < cols {
                                let mut v = if init_on { init[j] as f64 } else { 0.0 };
                                if acc_on {
                                    v += c0[r * c_row + j] as f64;
                                }
                                let v = v + (0..k).map(|p| a[r * a_row + p * a_step] as f64 * b[p * b_step + j] as f64).sum::<f64>();
                                match cases % 3 {
                                    0 => v,
                                    1 => v.tanh(),
                                    _ => v * (1.0 - (act[r * act_row + j] as f64).powi(2)),
                                }
                            } else {
                                c0[r * c_row + j] as f64 // outside the columns: untouched
                            };
                            assert!(
                                (got - want).abs() < 1e-5 * (1.0 + k as f64),
                                "rows {rows} k {k} cols {cols}: ({r}, {j}) {got} vs {want}"
                            );
                        }
                    }
                    cases += 1;
                }
            }
        }
        // a broadcast operand: every row of A is the same scalar
        let one = [1f32];
        let b: Vec<f32> = (0..40 * 7).map(|v| v as f32).collect();
        let mut c = vec![0f32; 7];
        let product = Product {
            rows: 1,
            k: 40,
            cols: 7,
            a: one.as_ptr(),
            a_row: 0,
            a_step: 0,
            b: b.as_ptr(),
            b_step: 7,
            c: c.as_mut_ptr(),
            c_row: 7,
            init: std::ptr::null(),
            accumulate: false,
            epilogue: Epilogue::None,
        };
        // SAFETY: `kern` came from `Kernels::get::<f32>`; A is the one value `one` (strides 0), B
        // holds 40 rows of 7 and C one row of 7.
        unsafe { kern.rows(product) };
        for (j, v) in c.iter().enumerate() {
            assert_eq!(*v as f64, (0..40).map(|p| (p * 7 + j) as f64).sum::<f64>());
        }
        for (n, i, o) in [(1usize, 1usize, 1usize), (5, 100, 1), (9, 17, 3), (4, 16, 2), (3, 33, 5)] {
            let h: Vec<f32> = (0..n * i).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..o * (i + 1)).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; n * o];
            // SAFETY: `kern` came from `Kernels::get::<f32>`; the buffers hold n×i, o×(i+1), n×o.
            unsafe { kern.dots(n, i, o, h.as_ptr(), w.as_ptr(), out.as_mut_ptr()) };
            for r in 0..n {
                for u in 0..o {
                    let want = w[u * (i + 1) + i] as f64 + (0..i).map(|p| h[r * i + p] as f64 * w[u * (i + 1) + p] as f64).sum::<f64>();
                    assert!((out[r * o + u] as f64 - want).abs() < 1e-5 * (1.0 + i as f64), "dots {n}×{i}×{o}: ({r}, {u})");
                }
            }
        }
        assert_eq!(cases, 7 * 3 * 8);
    }

    /// The 16-lane tanh against libm over [-12, 12] in steps of 1e-3 (and the tail handling of
    /// a length that is not a multiple of 16): within 4 ulp of 1, as the scalar version.
    #[test]
    fn vector_tanh_matches_libm() {
        let Some(kern) = Kernels::get::<f32>() else {
            eprintln!("no AVX-512F on this CPU: the kernels are not used here");
            return;
        };
        let xs: Vec<f32> = (0..24_001).map(|k| -12.0 + 1e-3 * k as f32).chain([0.0, 1e-5, -3e-4, 5e-4]).collect();
        let mut ys = xs.clone();
        // SAFETY: `kern` came from `Kernels::get::<f32>` and `ys` is a `Vec<f32>`.
        unsafe { kern.tanh(&mut ys) };
        let worst = xs.iter().zip(&ys).map(|(x, y)| (y - x.tanh()).abs() / f32::EPSILON).fold(0f32, f32::max);
        assert!(worst <= 4.0, "worst error {worst} ulp(1)");
        assert_eq!(ys[24_001], 0.0);
        assert_eq!(ys[24_002], 1e-5);
    }
}
