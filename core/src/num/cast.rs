//! Casts between `f64` (host-side arithmetic, settings, reports) and the dtype `E`, in one place
//! (values of `E` go to `f64` with the hook `cast_to_f64`).
//! For `f32` and `f64` they cannot fail: `f64 → f32` rounds to nearest (and overflows to ±∞).

use crate::Real;

/// `x` in the dtype `E`.
#[inline(always)]
pub(crate) fn from_f64<E: Real>(x: f64) -> E {
    E::cast_from_f64(x)
}

/// Every entry of `v` as `f64`.
pub(crate) fn to_f64s<E: Real>(v: &[E]) -> Vec<f64> {
    v.iter().map(|x| x.cast_to_f64()).collect()
}
