//! The dtype bound [`Real`]: `f32` and `f64`.

/// Floating-point dtypes the library runs in: `f32` and `f64`.
///
/// Sealed: the CPU kernels behind it (matrix products, activations, normal draws) exist for these
/// two types only; their hooks live on a crate-private supertrait.
///
/// ```
/// use weightspace::Real;
/// fn half<E: Real>(x: E) -> E {
///     x / (E::one() + E::one())
/// }
/// assert_eq!(half(3.0f32), 1.5);
/// ```
pub trait Real:
    dfdx::shapes::Dtype
    + num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + dfdx::tensor::safetensors::SafeDtype
    + rand_distr::uniform::SampleUniform
    + std::fmt::Display
    + Send
    + Sync
    + hooks::KernelHooks
    + 'static
{
}

impl Real for f32 {}
impl Real for f64 {}

/// The CPU kernels' entry points per dtype, implemented for `f32` and `f64` in `crate::kernels`.
/// The module is private, so users can neither name nor implement the trait.
pub(crate) mod hooks {
    /// Kernel hooks of a dtype (see [`Real`](super::Real)).
    pub trait KernelHooks: Copy {
        /// `C ← α A B + β C` for strided row/column layouts.
        ///
        /// # Safety
        /// The pointers and strides must describe valid `m×k`, `k×n` and `m×n` matrices (every
        /// entry inside its allocation), `c`'s entries must be distinct elements, and `c` must not
        /// alias `a` or `b`. [`crate::num::dense::gemm`] is the checked, safe way to call it.
        #[allow(clippy::too_many_arguments)]
        unsafe fn gemm(
            m: usize,
            k: usize,
            n: usize,
            alpha: Self,
            a: *const Self,
            rsa: isize,
            csa: isize,
            b: *const Self,
            rsb: isize,
            csb: isize,
            beta: Self,
            c: *mut Self,
            rsc: isize,
            csc: isize,
        );

        /// `x` in this dtype (`as`: round to nearest).
        fn cast_from_f64(x: f64) -> Self;

        /// `self` as `f64` (exact).
        fn cast_to_f64(self) -> f64;

        /// `tanh` as the CPU kernels evaluate it (a fast rational approximation for `f32`).
        fn tanh_kernel(self) -> Self;

        /// One standard-normal draw in this dtype.
        fn sample_standard_normal<R: rand::Rng + ?Sized>(rng: &mut R) -> Self;

        /// Fills `out` with standard-normal draws (in bulk: Box–Muller for `f32`).
        fn fill_standard_normal<R: rand::RngCore + ?Sized>(rng: &mut R, out: &mut [Self]) {
            out.iter_mut().for_each(|v| *v = Self::sample_standard_normal(rng));
        }

        /// In-place `tanh` over a buffer (vectorised for `f32`).
        fn tanh_slice(v: &mut [Self]) {
            v.iter_mut().for_each(|x| *x = x.tanh_kernel());
        }
    }
}
