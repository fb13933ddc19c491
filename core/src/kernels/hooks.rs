//! The dtype hooks behind [`Real`](crate::Real) for `f32` and `f64`: matrix products, tanh and
//! normal draws as the kernels evaluate them.

use super::activation::tanh_f32;
use super::{gemm, normal};
use crate::num::real::hooks::KernelHooks;

// The `gemm` hooks forward to `matrixmultiply`, whose safety contract (valid pointers and strides
// for the `m×k`, `k×n` and `m×n` operands, `c` aliasing neither input) is the one the hook
// documents on `KernelHooks::gemm`; callers go through `num::dense::gemm`, which checks it.
impl KernelHooks for f32 {
    #[inline(always)]
    fn cast_from_f64(x: f64) -> f32 {
        x as f32
    }
    #[inline(always)]
    fn cast_to_f64(self) -> f64 {
        self as f64
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    #[inline]
    fn tanh_kernel(self) -> f32 {
        tanh_f32(self)
    }
    fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f32 {
        rng.sample(rand_distr::StandardNormal)
    }
    fn fill_standard_normal<R: rand::RngCore + ?Sized>(rng: &mut R, out: &mut [f32]) {
        normal::fill_f32(rng, out)
    }
    #[inline(always)]
    fn tanh_slice(v: &mut [f32]) {
        match gemm::Kernels::get::<f32>() {
            // SAFETY: `Kernels::get::<f32>` returned `Some`, so this CPU runs AVX-512F and `E` is
            // f32 (as `tanh` requires); the kernel touches only `v`'s own elements (full vectors
            // over `chunks_exact(16)`, a masked load and store over the remainder).
            Some(k) => unsafe { k.tanh(v) },
            None => v.iter_mut().for_each(|x| *x = tanh_f32(*x)),
        }
    }
}

impl KernelHooks for f64 {
    #[inline(always)]
    fn cast_from_f64(x: f64) -> f64 {
        x
    }
    #[inline(always)]
    fn cast_to_f64(self) -> f64 {
        self
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    fn tanh_kernel(self) -> f64 {
        self.tanh()
    }
    fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> f64 {
        rng.sample(rand_distr::StandardNormal)
    }
}
