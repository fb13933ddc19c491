//! Batched linear algebra on small symmetric positive-definite (SPD) matrices, with exact
//! first-order gradients on every device.
//!
//! dfdx 0.13 has no Cholesky, triangular solve, inverse or log-determinant. This module adds them
//! for batches of small matrices, shape `(B, k, k)`, as BNNP needs one `(d_in+1)²` system per output
//! unit and weight sample.
//!
//! # How the gradients work: first-order surrogates
//!
//! Each op factorises on the host, where a Cholesky of a 65×65 matrix is a few microseconds, and
//! then puts on dfdx's tape a *surrogate*: an expression built from ordinary dfdx ops whose value
//! is the host result **exactly** and whose first derivative is the exact derivative of the op.
//! With `A₀` the input's value, `C₀ = A₀⁻¹` and `const(·)` a fresh untaped copy of a value:
//!
//! | op | value | surrogate added to the value (zero, with the op's Jacobian) |
//! |---|---|---|
//! | [`spd_solve`] `x = A⁻¹b` | `x₀` | `t − const(t)`, `t = C₀ (b − A x₀)` |
//! | [`spd_logdet`] | `ln det A₀` | `t − const(t)`, `t = Σᵢⱼ (C₀ ⊙ A)ᵢⱼ` |
//! | [`spd_inverse`] | `C₀` | `t − const(t)`, `t = −C₀ A C₀` |
//! | [`cholesky`] `A = L Lᵀ` | `L₀` | `t − const(t)`, `t = L₀ Φ(L₀⁻¹ A L₀⁻ᵀ)` |
//!
//! (`Φ` keeps the strict lower triangle and half the diagonal.) The value of `t − const(t)` is
//! exactly zero, so results carry no rounding from the surrogate, and backpropagation through `t`
//! applies the transposed Jacobian with dfdx's own kernels. The approach needs no device-specific
//! code, so the CUDA path compiles and runs (the factorisation then costs one device→host copy per
//! call). Only first-order gradients are exact: the surrogate's second derivative is not the op's.
//!
//! Why not the alternatives in the design notes: a hand-written backward op would need a kernel per
//! device, and differentiating through a sampled Cholesky factor is not needed by BNNP, which samples
//! by *perturb and solve* (see [`crate::methods::bnnp`]) and needs only solves and log-determinants.
//!
//! # Host kernels
//!
//! The factorisations themselves are the crate's host kernels on row-major slices (Cholesky,
//! triangular inverse, batched SPD inverse, solves), the same ones behind [`Matrix`](crate::linalg::Matrix);
//! [`crate::methods::bnnp`] calls them directly in its fused layer update.
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::linalg::{spd_logdet, spd_solve};
//! use weightspace::dfdx::tensor_ops::SumTo;
//! let dev = Cpu::default();
//! // A = [[4, 2], [2, 3]], b = [2, 1]
//! let a = dev.tensor_from_vec(vec![4.0f64, 2.0, 2.0, 3.0], (1usize, 2usize, 2usize));
//! let b = dev.tensor_from_vec(vec![2.0f64, 1.0], (1usize, 2usize, 1usize));
//! let x = spd_solve(a.leaky_trace(), b.clone())?;
//! assert!((x.as_vec()[0] - 0.5).abs() < 1e-12 && x.as_vec()[1].abs() < 1e-12);
//! let ld = spd_logdet(a.clone())?;
//! assert!((ld.as_vec()[0] - 8f64.ln()).abs() < 1e-12);
//! // d(sum x)/dA = -A⁻¹ 1 xᵀ
//! let g = x.sum().backward();
//! assert!(g.get(&a).as_vec().iter().all(|v| v.is_finite()));
//! # Ok::<(), weightspace::Error>(())
//! ```

use dfdx::prelude::*;

use crate::num::dense;
use crate::{Error, Real, Result};

/// A batch of matrices `(B, rows, cols)`, with a tape `T` (none by default).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::linalg::Batch;
/// let dev = Cpu::default();
/// let two_identities: Batch<f64, Cpu> = dev.tensor_from_vec(vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], (2, 2, 2));
/// assert_eq!(two_identities.shape().0, 2);
/// ```
pub type Batch<E, D, T = NoneTape> = Tensor<(usize, usize, usize), E, D, T>;

/// Host factorisation of a batch: Cholesky factors and inverses of every matrix, or the first that
/// is not positive definite.
struct Factored<E> {
    k: usize,
    /// Lower factors, `B·k·k`.
    l: Vec<E>,
    /// `L⁻¹`, `B·k·k`.
    linv: Vec<E>,
    /// `A⁻¹`, `B·k·k`.
    inv: Vec<E>,
}

fn check_square<S: Shape<Concrete = [usize; 3]>>(what: &str, shape: &S) -> Result<(usize, usize)> {
    let [b, r, c] = shape.concrete();
    if r != c || r == 0 {
        return Err(Error::Shape { what: what.into(), expected: "(B, k, k) with k ≥ 1".into(), got: format!("({b}, {r}, {c})") });
    }
    Ok((b, r))
}

fn factor<E: Real>(what: &str, a: &[E], b: usize, k: usize) -> Result<Factored<E>> {
    let mut l = a.to_vec();
    let mut linv = vec![E::zero(); b * k * k];
    let mut inv = vec![E::zero(); b * k * k];
    for i in 0..b {
        let r = i * k * k..(i + 1) * k * k;
        dense::cholesky(&mut l[r.clone()], k).map_err(|pivot| Error::NotPositiveDefinite { what: what.to_string(), index: i, pivot })?;
        dense::chol_inverse(&l[r.clone()], k, &mut inv[r.clone()], &mut linv[r]);
    }
    Ok(Factored { k, l, linv, inv })
}

/// Inverses and log-determinants of a batch, [`dense::LANES`] matrices at a time.
fn inverse_logdet<E: Real>(what: &str, a: &[E], b: usize, k: usize) -> Result<(Vec<E>, Vec<E>)> {
    let mut inv = vec![E::zero(); b * k * k];
    let mut ld = vec![E::zero(); b];
    let mut work = Vec::new();
    let mut start = 0;
    while start < b {
        let m = dense::LANES.min(b - start);
        let r = start * k * k..(start + m) * k * k;
        dense::batch_spd_inverse(&a[r.clone()], m, k, &mut inv[r], &mut ld[start..start + m], &mut work)
            .map_err(|(lane, pivot)| Error::NotPositiveDefinite { what: what.to_string(), index: start + lane, pivot })?;
        start += m;
    }
    Ok((inv, ld))
}

/// A fresh untaped tensor holding the value of `t` (a new tensor id, so no gradient reaches `t`
/// through it).
pub(crate) fn constant_of<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(t: &Tensor<S, E, D, T>) -> Tensor<S, E, D> {
    t.retaped::<NoneTape>() * E::one()
}

/// `t − const(t) + value`: the value exactly, with the derivative of `t`.
pub(crate) fn attach<S: Shape, E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(
    t: Tensor<S, E, D, T>,
    value: Tensor<S, E, D>,
) -> Tensor<S, E, D, T> {
    let c = constant_of(&t);
    (t - c) + value
}

/// Solves `A X = B` for a batch of SPD `A` `(B, k, k)` and right-hand sides `B` `(B, k, m)`.
///
/// Differentiable in both arguments: `∂X` = `A⁻¹(∂B − ∂A X)`. Returns
/// [`Error::NotPositiveDefinite`] naming the first matrix whose factorisation fails and
/// [`Error::Shape`] on mismatched shapes.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::dfdx::tensor_ops::SumTo;
/// use weightspace::linalg::spd_solve;
/// let dev = Cpu::default();
/// // A = [[4, 2], [2, 3]], b = [2, 1]: x = [0.5, 0]
/// let a = dev.tensor_from_vec(vec![4.0f64, 2.0, 2.0, 3.0], (1, 2, 2));
/// let b = dev.tensor_from_vec(vec![2.0f64, 1.0], (1, 2, 1));
/// let grads = spd_solve(a.leaky_trace(), b)?.sum().backward();
/// // ∂(Σx)/∂A = −A⁻ᵀ 1 xᵀ: only the first column, where x is non-zero, moves
/// let g = grads.get(&a).as_vec();
/// assert!((g[0] + 0.0625).abs() < 1e-12 && g[1].abs() < 1e-12);
/// // a matrix that is not positive definite is an error naming it
/// let bad = dev.tensor_from_vec(vec![1.0f64, 2.0, 2.0, 1.0], (1, 2, 2));
/// assert!(matches!(spd_solve(bad, dev.tensor_from_vec(vec![1.0, 1.0], (1, 2, 1))), Err(weightspace::Error::NotPositiveDefinite { index: 0, .. })));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn spd_solve<E: Real, D: Device<E>, T1, T2>(a: Batch<E, D, T1>, b: Batch<E, D, T2>) -> Result<Batch<E, D, T1>>
where
    T1: Tape<E, D> + Merge<T2> + Merge<NoneTape>,
    T2: Tape<E, D>,
{
    let (bs, k) = check_square("spd_solve: A", a.shape())?;
    let (bb, kb, m) = *b.shape();
    if bb != bs || kb != k || m == 0 {
        return Err(Error::Shape {
            what: "spd_solve: right-hand sides".into(),
            expected: format!("({bs}, {k}, m ≥ 1)"),
            got: format!("({bb}, {kb}, {m})"),
        });
    }
    let f = factor("spd_solve", &a.as_vec(), bs, k)?;
    let mut x = b.as_vec();
    for i in 0..bs {
        dense::chol_solve(&f.l[i * k * k..(i + 1) * k * k], k, &mut x[i * k * m..(i + 1) * k * m], m);
    }
    let dev = a.device().clone();
    let x0: Batch<E, D> = dev.tensor_from_vec(x, (bs, k, m));
    let c0: Batch<E, D> = dev.tensor_from_vec(f.inv, (bs, k, k));
    // r = B − A x0 (zero in value), t = C0 r
    let ax = a.matmul(x0.clone());
    let r = ax.negate() + b;
    let (r, tape) = r.split_tape();
    let t = c0.put_tape(tape).matmul(r);
    Ok(attach(t, x0))
}

/// `ln det A` for a batch of SPD matrices `(B, k, k)`: shape `(B,)`.
///
/// Differentiable: `∂ ln det A = tr(A⁻¹ ∂A)`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::dfdx::tensor_ops::SumTo;
/// use weightspace::linalg::spd_logdet;
/// let dev = Cpu::default();
/// let a = dev.tensor_from_vec(vec![4.0f64, 2.0, 2.0, 3.0, 2.0, 0.0, 0.0, 2.0], (2, 2, 2));
/// let ld = spd_logdet(a.leaky_trace())?;
/// assert!((ld.as_vec()[0] - 8f64.ln()).abs() < 1e-12 && (ld.as_vec()[1] - 4f64.ln()).abs() < 1e-12);
/// // the gradient is A⁻ᵀ
/// let g = ld.sum().backward().get(&a).as_vec();
/// assert!((g[0] - 3.0 / 8.0).abs() < 1e-12 && (g[1] + 2.0 / 8.0).abs() < 1e-12 && (g[4] - 0.5).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn spd_logdet<E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(a: Batch<E, D, T>) -> Result<Tensor<(usize,), E, D, T>> {
    let (bs, k) = check_square("spd_logdet", a.shape())?;
    let (inv, ld) = inverse_logdet("spd_logdet", &a.as_vec(), bs, k)?;
    let dev = a.device().clone();
    let c0: Batch<E, D> = dev.tensor_from_vec(inv, (bs, k, k));
    let t = (a * c0).sum::<_, Axes2<1, 2>>();
    Ok(attach(t, dev.tensor_from_vec(ld, (bs,))))
}

/// `A⁻¹` for a batch of SPD matrices `(B, k, k)`.
///
/// Differentiable: `∂A⁻¹ = −A⁻¹ ∂A A⁻¹`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::linalg::spd_inverse;
/// let dev = Cpu::default();
/// let a = dev.tensor_from_vec(vec![4.0f64, 2.0, 2.0, 3.0], (1, 2, 2));
/// let inv = spd_inverse(a)?.as_vec();
/// let want = [3.0 / 8.0, -2.0 / 8.0, -2.0 / 8.0, 4.0 / 8.0];
/// assert!(inv.iter().zip(want).all(|(x, w)| (x - w).abs() < 1e-12));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn spd_inverse<E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(a: Batch<E, D, T>) -> Result<Batch<E, D, T>> {
    let (bs, k) = check_square("spd_inverse", a.shape())?;
    let (inv, _) = inverse_logdet("spd_inverse", &a.as_vec(), bs, k)?;
    let dev = a.device().clone();
    let c0: Batch<E, D> = dev.tensor_from_vec(inv, (bs, k, k));
    let (a, tape) = a.split_tape();
    let t = c0.clone().put_tape(tape).matmul(a).matmul(c0.clone()).negate();
    Ok(attach(t, c0))
}

/// Lower Cholesky factor `L` of a batch of SPD matrices `A = L Lᵀ`, `(B, k, k)`. Only the lower
/// triangle of `A` is used by the factorisation; the derivative assumes a symmetric perturbation.
///
/// Differentiable: `∂L = L Φ(L⁻¹ ∂A L⁻ᵀ)` with `Φ` the strict lower triangle plus half the diagonal
/// (Murray 2016). This costs four batched `k×k` products on the tape; prefer [`spd_solve`] and
/// [`spd_logdet`] when they suffice.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::linalg::cholesky;
/// let dev = Cpu::default();
/// let a = dev.tensor_from_vec(vec![4.0f64, 2.0, 2.0, 3.0], (1, 2, 2));
/// let l = cholesky(a)?.as_vec();
/// assert!((l[0] - 2.0).abs() < 1e-12 && l[1] == 0.0 && (l[2] - 1.0).abs() < 1e-12 && (l[3] - 2f64.sqrt()).abs() < 1e-12);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn cholesky<E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(a: Batch<E, D, T>) -> Result<Batch<E, D, T>> {
    let (bs, k) = check_square("cholesky", a.shape())?;
    let f = factor("cholesky", &a.as_vec(), bs, k)?;
    let dev = a.device().clone();
    let mut mask = vec![E::zero(); k * k];
    for i in 0..k {
        for j in 0..i {
            mask[i * k + j] = E::one();
        }
        mask[i * k + i] = crate::num::cast::from_f64::<E>(0.5);
    }
    let mask: Tensor<(usize, usize), E, D> = dev.tensor_from_vec(mask, (k, k));
    let mut xt = vec![E::zero(); bs * k * k];
    for i in 0..bs {
        for r in 0..k {
            for c in 0..k {
                xt[i * k * k + c * k + r] = f.linv[i * k * k + r * k + c];
            }
        }
    }
    let x0: Batch<E, D> = dev.tensor_from_vec(f.linv, (bs, k, k));
    let xt0: Batch<E, D> = dev.tensor_from_vec(xt, (bs, k, k));
    let l0: Batch<E, D> = dev.tensor_from_vec(f.l, (bs, k, k));
    let (a, tape) = a.split_tape();
    let inner = x0.put_tape(tape).matmul(a).matmul(xt0) * mask.broadcast_like::<_, Axis<0>>(&(bs, k, k));
    let (inner, tape) = inner.split_tape();
    let t = l0.clone().put_tape(tape).matmul(inner);
    debug_assert_eq!(f.k, k);
    Ok(attach(t, l0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::num::dense::Matrix;
    use rand::{Rng, SeedableRng};

    fn random_spd(rng: &mut impl Rng, k: usize) -> Vec<f64> {
        let g: Vec<f64> = (0..k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut a = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|p| g[i * k + p] * g[j * k + p]).sum::<f64>() + if i == j { 0.5 } else { 0.0 };
            }
        }
        a
    }

    fn batch(rng: &mut impl Rng, b: usize, k: usize) -> Vec<f64> {
        (0..b).flat_map(|_| random_spd(rng, k)).collect()
    }

    #[test]
    fn host_kernels_match_the_dense_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for k in [1, 2, 5, 17] {
            let a = random_spd(&mut rng, k);
            let m = Matrix::from_row_major(k, k, a.clone()).unwrap();
            let chol = m.cholesky().unwrap();
            let mut l = a.clone();
            dense::cholesky(&mut l, k).unwrap();
            let lr = Matrix::from_row_major(k, k, l.clone()).unwrap();
            assert!(lr.max_abs_diff(chol.factor()).unwrap() < 1e-12);
            assert!((dense::chol_logdet(&l, k) - chol.log_det()).abs() < 1e-10);
            let (mut c, mut w) = (vec![0.0; k * k], vec![0.0; k * k]);
            dense::chol_inverse(&l, k, &mut c, &mut w);
            assert!(Matrix::from_row_major(k, k, c).unwrap().max_abs_diff(&chol.inverse()).unwrap() < 1e-10);
            let rhs: Vec<f64> = (0..k * 3).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut x = rhs.clone();
            dense::chol_solve(&l, k, &mut x, 3);
            for j in 0..3 {
                let col: Vec<f64> = (0..k).map(|i| rhs[i * 3 + j]).collect();
                let want = chol.solve(&col).unwrap();
                for i in 0..k {
                    assert!((x[i * 3 + j] - want[i]).abs() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn batched_inverse_matches_one_by_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut work = Vec::new();
        for (m, k) in [(1, 1), (3, 5), (8, 17), (5, 33)] {
            let a = batch(&mut rng, m, k);
            let (mut c, mut ld) = (vec![0.0; m * k * k], vec![0.0; m]);
            dense::batch_spd_inverse(&a, m, k, &mut c, &mut ld, &mut work).unwrap();
            for i in 0..m {
                let chol = Matrix::from_row_major(k, k, a[i * k * k..(i + 1) * k * k].to_vec()).unwrap().cholesky().unwrap();
                let ci = Matrix::from_row_major(k, k, c[i * k * k..(i + 1) * k * k].to_vec()).unwrap();
                assert!(ci.max_abs_diff(&chol.inverse()).unwrap() < 1e-10, "m {m} k {k} matrix {i}");
                assert!((ld[i] - chol.log_det()).abs() < 1e-10);
            }
        }
        let mut bad = batch(&mut rng, 3, 4);
        bad[2 * 16 + 5] = -10.0;
        let (mut c, mut ld) = (vec![0.0; 48], vec![0.0; 3]);
        assert_eq!(dense::batch_spd_inverse(&bad, 3, 4, &mut c, &mut ld, &mut work), Err((2, 1)));
    }

    /// Central finite differences of `f` at `a` along every entry, against `grad`. With
    /// `symmetric_k`, entry `(i, j)` and its mirror `(j, i)` move together: the ops are functions of
    /// symmetric matrices (the factorisation reads the lower triangle).
    fn check_fd(name: &str, a: &[f64], grad: &[f64], f: &dyn Fn(&[f64]) -> f64, symmetric_k: Option<usize>) {
        let h = 1e-6;
        for i in 0..a.len() {
            let (mut p, mut m) = (a.to_vec(), a.to_vec());
            // for ops that read only the lower triangle, perturb symmetrically
            let mirror = symmetric_k.map(|k| {
                let (b, r, c) = (i / (k * k), (i / k) % k, i % k);
                b * k * k + c * k + r
            });
            p[i] += h;
            m[i] -= h;
            if let Some(j) = mirror.filter(|&j| j != i) {
                p[j] += h;
                m[j] -= h;
            }
            let fd = (f(&p) - f(&m)) / (2.0 * h);
            let g = match mirror.filter(|&j| j != i) {
                Some(j) => grad[i] + grad[j],
                None => grad[i],
            };
            assert!((g - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "{name}[{i}]: backward {g} vs finite difference {fd}");
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        let dev = Cpu::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (bs, k, m) = (3, 4, 2);
        let a = batch(&mut rng, bs, k);
        let b: Vec<f64> = (0..bs * k * m).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let wx: Vec<f64> = (0..bs * k * m).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let wm: Vec<f64> = (0..bs * k * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let wl: Vec<f64> = (0..bs).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let ta = |v: &[f64]| dev.tensor_from_vec(v.to_vec(), (bs, k, k));
        let tb = |v: &[f64]| dev.tensor_from_vec(v.to_vec(), (bs, k, m));
        let dot = |x: Vec<f64>, w: &[f64]| x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();

        // solve: both arguments
        let (at, bt) = (ta(&a), tb(&b));
        let x = spd_solve(at.leaky_trace(), bt.leaky_trace()).unwrap();
        let g = (x * tb(&wx)).sum().backward();
        let f_a = |v: &[f64]| dot(spd_solve(ta(v), tb(&b)).unwrap().as_vec(), &wx);
        let f_b = |v: &[f64]| dot(spd_solve(ta(&a), tb(v)).unwrap().as_vec(), &wx);
        check_fd("solve/A", &a, &g.get(&at).as_vec(), &f_a, Some(k));
        check_fd("solve/B", &b, &g.get(&bt).as_vec(), &f_b, None);

        // log-det
        let at = ta(&a);
        let g = (spd_logdet(at.leaky_trace()).unwrap() * dev.tensor_from_vec(wl.clone(), (bs,))).sum().backward();
        check_fd("logdet", &a, &g.get(&at).as_vec(), &|v| dot(spd_logdet(ta(v)).unwrap().as_vec(), &wl), Some(k));

        // inverse
        let at = ta(&a);
        let g = (spd_inverse(at.leaky_trace()).unwrap() * ta(&wm)).sum().backward();
        check_fd("inverse", &a, &g.get(&at).as_vec(), &|v| dot(spd_inverse(ta(v)).unwrap().as_vec(), &wm), Some(k));

        let at = ta(&a);
        let g = (cholesky(at.leaky_trace()).unwrap() * ta(&wm)).sum().backward();
        check_fd("cholesky", &a, &g.get(&at).as_vec(), &|v| dot(cholesky(ta(v)).unwrap().as_vec(), &wm), Some(k));
    }

    #[test]
    fn values_are_exact_and_bad_input_is_an_error() {
        let dev = Cpu::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (bs, k) = (2, 6);
        let a = batch(&mut rng, bs, k);
        let at: Batch<f64, Cpu> = dev.tensor_from_vec(a.clone(), (bs, k, k));
        let l = cholesky(at.clone()).unwrap().as_vec();
        let inv = spd_inverse(at.clone()).unwrap().as_vec();
        let ld = spd_logdet(at.clone()).unwrap().as_vec();
        for i in 0..bs {
            let m = Matrix::from_row_major(k, k, a[i * k * k..(i + 1) * k * k].to_vec()).unwrap();
            let c = m.cholesky().unwrap();
            assert!(
                Matrix::from_row_major(k, k, l[i * k * k..(i + 1) * k * k].to_vec()).unwrap().max_abs_diff(c.factor()).unwrap() < 1e-12
            );
            assert!(
                Matrix::from_row_major(k, k, inv[i * k * k..(i + 1) * k * k].to_vec()).unwrap().max_abs_diff(&c.inverse()).unwrap() < 1e-10
            );
            assert!((ld[i] - c.log_det()).abs() < 1e-10);
        }
        // a matrix that is not positive definite, and mismatched shapes
        let mut bad = a.clone();
        bad[k * k] = -1.0;
        let e = spd_logdet(dev.tensor_from_vec(bad, (bs, k, k))).unwrap_err();
        assert!(matches!(e, Error::NotPositiveDefinite { index: 1, pivot: 0, .. }), "{e}");
        let rect: Batch<f64, Cpu> = dev.zeros_like(&(1usize, 2usize, 3usize));
        assert!(matches!(spd_inverse(rect), Err(Error::Shape { .. })));
        let rhs: Batch<f64, Cpu> = dev.zeros_like(&(bs, k + 1, 1usize));
        assert!(matches!(spd_solve(at, rhs), Err(Error::Shape { .. })));
    }
}
