//! Host dense linear algebra, the one implementation in the crate:
//!
//! - kernels on row-major slices, generic over the dtype ([`dot`], [`gemv`], [`cholesky`],
//!   [`chol_solve`], [`chol_inverse`], [`tril_inverse`], [`chol_logdet`], [`batch_spd_inverse`],
//!   [`gemm_rm`]), used by the batched taped ops of [`crate::linalg`], BNNP's conjugate update and
//!   the MCMC targets;
//! - [`Matrix`] and its [`Cholesky`] factor, row-major `f64` matrices for the exact references and
//!   BALI, built on the same kernels.
//!
//! ```
//! use weightspace::linalg::Matrix;
//!
//! let a = Matrix::from_rows(&[vec![4.0, 2.0], vec![2.0, 3.0]])?;
//! let chol = a.cholesky()?;
//! assert!((chol.log_det() - 8f64.ln()).abs() < 1e-12);
//! let x = chol.solve(&[2.0, 1.0])?;
//! assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
//! let inv = chol.inverse();
//! assert!(a.matmul(&inv)?.max_abs_diff(&Matrix::identity(2))? < 1e-12);
//! # Ok::<(), weightspace::linalg::DenseError>(())
//! ```

use std::ops::{Index, IndexMut};

use thiserror::Error;

use crate::Real;

/// Why a dense operation failed.
///
/// ```
/// use weightspace::linalg::{DenseError, Matrix};
///
/// let err = Matrix::from_rows(&[vec![1.0, 2.0], vec![2.0, 1.0]])?.cholesky().unwrap_err();
/// assert!(matches!(err, DenseError::NotPositiveDefinite { pivot: 1, .. }));
/// # Ok::<(), DenseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DenseError {
    /// An operation needs a square matrix.
    #[error("{op}: matrix is {rows}×{cols}, expected a square matrix")]
    NotSquare {
        /// The operation.
        op: &'static str,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// Operand shapes do not fit together.
    #[error("{op}: shapes {left:?} and {right:?} do not fit")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Shape of the left operand, `(rows, cols)`.
        left: (usize, usize),
        /// Shape of the right operand, `(rows, cols)` (a vector is `(len, 1)`).
        right: (usize, usize),
    },
    /// Rows of different lengths were given.
    #[error("row {row} has {got} entries, expected {expected}")]
    Ragged {
        /// Index of the first ragged row.
        row: usize,
        /// Length of row 0.
        expected: usize,
        /// Length of the ragged row.
        got: usize,
    },
    /// The symmetric eigendecomposition did not converge (or met a NaN).
    #[error("symmetric_eigen: the eigendecomposition did not converge; check the matrix for NaN or Inf")]
    NoConvergence,
    /// The Cholesky factorisation met a non-positive (or NaN) pivot.
    #[error(
        "cholesky: matrix is not positive definite (pivot {pivot} is {value}); \
         check that the covariance is symmetric and has positive variances"
    )]
    NotPositiveDefinite {
        /// Index of the failing pivot.
        pivot: usize,
        /// The value under the square root.
        value: f64,
    },
}

type Result<T> = std::result::Result<T, DenseError>;

/// A dense row-major `f64` matrix.
///
/// ```
/// use weightspace::linalg::Matrix;
///
/// let m = Matrix::from_row_major(2, 3, vec![1., 2., 3., 4., 5., 6.])?;
/// assert_eq!(m[(1, 2)], 6.0);
/// assert_eq!(m.transpose().shape(), (3, 2));
/// assert_eq!(m.matvec(&[1.0, 0.0, -1.0])?, vec![-2.0, -2.0]);
/// # Ok::<(), weightspace::linalg::DenseError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// The `n × n` identity.
    pub fn identity(n: usize) -> Self {
        Self::from_diagonal(&vec![1.0; n])
    }

    /// A square matrix with `diag` on its diagonal.
    pub fn from_diagonal(diag: &[f64]) -> Self {
        let n = diag.len();
        let mut m = Self::zeros(n, n);
        for (i, d) in diag.iter().enumerate() {
            m[(i, i)] = *d;
        }
        m
    }

    /// A matrix from its rows; all rows must have the same length.
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Self> {
        let cols = rows.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(rows.len() * cols);
        for (row, r) in rows.iter().enumerate() {
            if r.len() != cols {
                return Err(DenseError::Ragged { row, expected: cols, got: r.len() });
            }
            data.extend_from_slice(r);
        }
        Ok(Matrix { rows: rows.len(), cols, data })
    }

    /// A matrix from row-major data of length `rows * cols`.
    pub fn from_row_major(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(DenseError::ShapeMismatch { op: "from_row_major", left: (rows, cols), right: (data.len(), 1) });
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The row-major data.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The diagonal (of the leading square block).
    pub fn diagonal(&self) -> Vec<f64> {
        (0..self.rows.min(self.cols)).map(|i| self[(i, i)]).collect()
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t[(j, i)] = self[(i, j)];
            }
        }
        t
    }

    /// Matrix product `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Self> {
        if self.cols != other.rows {
            return Err(DenseError::ShapeMismatch { op: "matmul", left: self.shape(), right: other.shape() });
        }
        let mut out = Self::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self[(i, k)];
                if a == 0.0 {
                    continue;
                }
                let row = other.row(k);
                let o = &mut out.data[i * other.cols..(i + 1) * other.cols];
                for (o, b) in o.iter_mut().zip(row) {
                    *o += a * b;
                }
            }
        }
        Ok(out)
    }

    /// Matrix-vector product `self · v`.
    pub fn matvec(&self, v: &[f64]) -> Result<Vec<f64>> {
        if self.cols != v.len() {
            return Err(DenseError::ShapeMismatch { op: "matvec", left: self.shape(), right: (v.len(), 1) });
        }
        Ok((0..self.rows).map(|i| self.row(i).iter().zip(v).map(|(a, b)| a * b).sum()).collect())
    }

    /// Entry-wise sum `self + other`.
    pub fn add(&self, other: &Matrix) -> Result<Self> {
        if self.shape() != other.shape() {
            return Err(DenseError::ShapeMismatch { op: "add", left: self.shape(), right: other.shape() });
        }
        Ok(Matrix { rows: self.rows, cols: self.cols, data: self.data.iter().zip(&other.data).map(|(a, b)| a + b).collect() })
    }

    /// `factor · self`.
    pub fn scale(&self, factor: f64) -> Self {
        Matrix { rows: self.rows, cols: self.cols, data: self.data.iter().map(|a| a * factor).collect() }
    }

    /// Largest absolute entry-wise difference from `other`.
    pub fn max_abs_diff(&self, other: &Matrix) -> Result<f64> {
        if self.shape() != other.shape() {
            return Err(DenseError::ShapeMismatch { op: "max_abs_diff", left: self.shape(), right: other.shape() });
        }
        Ok(self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max))
    }

    /// `(self + selfᵀ) / 2`, to remove rounding asymmetry before a factorisation.
    pub fn symmetrize(&self) -> Result<Self> {
        if self.rows != self.cols {
            return Err(DenseError::NotSquare { op: "symmetrize", rows: self.rows, cols: self.cols });
        }
        Ok(self.add(&self.transpose())?.scale(0.5))
    }

    /// Eigendecomposition `self = U diag(λ) Uᵀ` of a symmetric matrix, eigenvalues in ascending
    /// order (computed by `faer`). Only the lower triangle is read.
    ///
    /// ```
    /// use weightspace::linalg::Matrix;
    ///
    /// let a = Matrix::from_rows(&[vec![2.0, 1.0], vec![1.0, 2.0]])?;
    /// let eig = a.symmetric_eigen()?;
    /// assert!((eig.values[0] - 1.0).abs() < 1e-12 && (eig.values[1] - 3.0).abs() < 1e-12);
    /// // columns are unit eigenvectors: A u = λ u
    /// let u1 = [eig.vectors[(0, 1)], eig.vectors[(1, 1)]];
    /// let au = a.matvec(&u1)?;
    /// assert!((au[0] - 3.0 * u1[0]).abs() < 1e-12 && (au[1] - 3.0 * u1[1]).abs() < 1e-12);
    /// # Ok::<(), weightspace::linalg::DenseError>(())
    /// ```
    pub fn symmetric_eigen(&self) -> Result<SymmetricEigen> {
        if self.rows != self.cols {
            return Err(DenseError::NotSquare { op: "symmetric_eigen", rows: self.rows, cols: self.cols });
        }
        let n = self.rows;
        if self.data.iter().any(|v| !v.is_finite()) {
            return Err(DenseError::NoConvergence);
        }
        let a = faer::Mat::<f64>::from_fn(n, n, |i, j| self.data[i * n + j]);
        let evd = a.self_adjoint_eigen(faer::Side::Lower).map_err(|_| DenseError::NoConvergence)?;
        let values: Vec<f64> = (0..n).map(|i| evd.S()[i]).collect();
        let u = evd.U();
        let vectors = Matrix { rows: n, cols: n, data: (0..n * n).map(|k| u[(k / n, k % n)]).collect() };
        Ok(SymmetricEigen { values, vectors })
    }

    /// Cholesky factorisation `self = L Lᵀ` of a symmetric positive-definite matrix.
    ///
    /// Only the lower triangle is read (as LAPACK's `potrf` does), so an asymmetric input is
    /// silently treated as its lower triangle: symmetrise first if in doubt.
    pub fn cholesky(&self) -> Result<Cholesky> {
        if self.rows != self.cols {
            return Err(DenseError::NotSquare { op: "cholesky", rows: self.rows, cols: self.cols });
        }
        let n = self.rows;
        let mut l = self.data.clone();
        cholesky(&mut l, n).map_err(|pivot| DenseError::NotPositiveDefinite { pivot, value: l[pivot * n + pivot] })?;
        Ok(Cholesky { l: Matrix { rows: n, cols: n, data: l } })
    }
}

impl Index<(usize, usize)> for Matrix {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of {:?}", self.shape());
        &self.data[i * self.cols + j]
    }
}

impl IndexMut<(usize, usize)> for Matrix {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of {:?}", self.shape());
        &mut self.data[i * self.cols + j]
    }
}

/// The eigendecomposition `A = U diag(values) Uᵀ` of a symmetric matrix, from
/// [`Matrix::symmetric_eigen`].
///
/// ```
/// use weightspace::linalg::{Matrix, SymmetricEigen};
///
/// let eig: SymmetricEigen = Matrix::from_diagonal(&[3.0, 1.0]).symmetric_eigen()?;
/// assert_eq!(eig.values, vec![1.0, 3.0]);
/// assert_eq!(eig.vectors.shape(), (2, 2));
/// # Ok::<(), weightspace::linalg::DenseError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
    /// Unit eigenvectors as columns, in the order of `values`.
    pub vectors: Matrix,
}

/// The Cholesky factor `L` (lower triangular) of an SPD matrix `A = L Lᵀ`.
///
/// ```
/// use weightspace::linalg::Matrix;
///
/// let a = Matrix::from_diagonal(&[4.0, 9.0]);
/// let chol = a.cholesky()?;
/// assert_eq!(chol.factor().diagonal(), vec![2.0, 3.0]);
/// assert_eq!(chol.solve_lower(&[2.0, 3.0])?, vec![1.0, 1.0]);
/// # Ok::<(), weightspace::linalg::DenseError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Cholesky {
    l: Matrix,
}

impl Cholesky {
    /// The lower-triangular factor `L`.
    pub fn factor(&self) -> &Matrix {
        &self.l
    }

    /// Dimension of `A`.
    pub fn dim(&self) -> usize {
        self.l.rows
    }

    fn check_len(&self, op: &'static str, b: &[f64]) -> Result<()> {
        if b.len() != self.dim() {
            return Err(DenseError::ShapeMismatch { op, left: self.l.shape(), right: (b.len(), 1) });
        }
        Ok(())
    }

    /// Solves `L z = b` (forward substitution).
    pub fn solve_lower(&self, b: &[f64]) -> Result<Vec<f64>> {
        self.check_len("solve_lower", b)?;
        let n = self.dim();
        let mut z = b.to_vec();
        for i in 0..n {
            let row = self.l.row(i);
            let s: f64 = row[..i].iter().zip(&z[..i]).map(|(a, b)| a * b).sum();
            z[i] = (z[i] - s) / row[i];
        }
        Ok(z)
    }

    /// Solves `Lᵀ x = z` (back substitution).
    pub fn solve_upper(&self, z: &[f64]) -> Result<Vec<f64>> {
        self.check_len("solve_upper", z)?;
        let n = self.dim();
        let mut x = z.to_vec();
        for i in (0..n).rev() {
            let mut s = x[i];
            for (k, xk) in x.iter().enumerate().skip(i + 1) {
                s -= self.l[(k, i)] * xk;
            }
            x[i] = s / self.l[(i, i)];
        }
        Ok(x)
    }

    /// Solves `A x = b`.
    pub fn solve(&self, b: &[f64]) -> Result<Vec<f64>> {
        self.check_len("solve", b)?;
        let mut x = b.to_vec();
        chol_solve(&self.l.data, self.dim(), &mut x, 1);
        Ok(x)
    }

    /// `ln det A = 2 Σ ln Lᵢᵢ`.
    pub fn log_det(&self) -> f64 {
        chol_logdet(&self.l.data, self.dim())
    }

    /// `A⁻¹`, exactly symmetric.
    pub fn inverse(&self) -> Matrix {
        let n = self.dim();
        let (mut c, mut work) = (vec![0.0; n * n], vec![0.0; n * n]);
        chol_inverse(&self.l.data, n, &mut c, &mut work);
        // (C + Cᵀ)/2: the product's rounding may differ between mirrored entries
        for i in 0..n {
            for j in 0..i {
                let v = 0.5 * (c[i * n + j] + c[j * n + i]);
                c[i * n + j] = v;
                c[j * n + i] = v;
            }
        }
        Matrix { rows: n, cols: n, data: c }
    }

    /// `L⁻¹`, lower triangular.
    pub fn factor_inverse(&self) -> Matrix {
        let n = self.dim();
        let mut x = vec![0.0; n * n];
        tril_inverse(&self.l.data, n, &mut x);
        Matrix { rows: n, cols: n, data: x }
    }

    /// The quadratic form `bᵀ A⁻¹ b = |L⁻¹ b|²`.
    pub fn inv_quad(&self, b: &[f64]) -> Result<f64> {
        Ok(self.solve_lower(b)?.iter().map(|z| z * z).sum())
    }

    /// `L z`: maps a standard-normal vector `z` to a draw with covariance `A`.
    pub fn mul_lower(&self, z: &[f64]) -> Result<Vec<f64>> {
        self.check_len("mul_lower", z)?;
        Ok((0..self.dim()).map(|i| self.l.row(i)[..=i].iter().zip(z).map(|(a, b)| a * b).sum()).collect())
    }
}

// ---- kernels on row-major slices ----

#[inline(always)]
fn cholesky_impl<E: Real>(a: &mut [E], k: usize) -> std::result::Result<(), usize> {
    debug_assert!(a.len() >= k * k);
    // mirror the lower triangle into the upper one, factor A = Uᵀ U in the upper triangle with
    // unit-stride row updates (right-looking), then transpose U into L
    for i in 0..k {
        for j in 0..i {
            a[j * k + i] = a[i * k + j];
        }
    }
    for j in 0..k {
        let d = a[j * k + j];
        if !(d > E::zero() && d.is_finite()) {
            return Err(j);
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        let inv = E::one() / d;
        a[j * k + j + 1..(j + 1) * k].iter_mut().for_each(|v| *v *= inv);
        for i in j + 1..k {
            let f = a[j * k + i];
            if f != E::zero() {
                let (head, tail) = a.split_at_mut(i * k);
                let uj = &head[j * k + i..(j + 1) * k];
                let ai = &mut tail[i..k];
                for (x, y) in ai.iter_mut().zip(uj) {
                    *x -= f * *y;
                }
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            a[i * k + j] = a[j * k + i];
            a[j * k + i] = E::zero();
        }
    }
    Ok(())
}

#[inline(always)]
fn gemv_impl<E: Real>(m: usize, n: usize, a: &[E], x: &[E], y: &mut [E]) {
    for (i, yi) in y[..m].iter_mut().enumerate() {
        *yi = dot(&a[i * n..(i + 1) * n], &x[..n]);
    }
}

/// `Σ aᵢ bᵢ` with eight independent accumulators, so that the compiler can vectorise it (over the
/// shorter length when the lengths differ). The crate's one dot product.
///
/// ```
/// assert_eq!(weightspace::linalg::dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
/// ```
#[inline(always)]
pub fn dot<E: Real>(a: &[E], b: &[E]) -> E {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [E::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// `ln det (L Lᵀ) = 2 Σ ln Lᵢᵢ`.
pub(crate) fn chol_logdet<E: Real>(l: &[E], k: usize) -> E {
    let mut s = E::zero();
    for i in 0..k {
        s += l[i * k + i].ln();
    }
    s + s
}

#[inline(always)]
fn tril_inverse_impl<E: Real>(l: &[E], k: usize, x: &mut [E]) {
    x[..k * k].iter_mut().for_each(|v| *v = E::zero());
    for i in 0..k {
        let inv = E::one() / l[i * k + i];
        // row i of X: (e_i − Σ_{p<i} L[i][p] X[p][:]) / L[i][i]
        for p in 0..i {
            let c = l[i * k + p];
            if c != E::zero() {
                let (head, tail) = x.split_at_mut(i * k);
                let xp = &head[p * k..p * k + p + 1];
                let xi = &mut tail[..p + 1];
                for (a, b) in xi.iter_mut().zip(xp) {
                    *a -= c * *b;
                }
            }
        }
        let row = &mut x[i * k..i * k + i + 1];
        row[i] = E::one();
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `C = (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹`. `work` must hold `k²` values; on return it holds `L⁻¹`.
pub(crate) fn chol_inverse<E: Real>(l: &[E], k: usize, c: &mut [E], work: &mut [E]) {
    tril_inverse(l, k, work);
    // C = Xᵀ X with X = L⁻¹ (row-major): element (i, j) = Σ_p X[p][i] X[p][j]
    let x = MatRef::row_major(work, k, k);
    gemm(E::one(), x.t(), x, E::zero(), MatMut::row_major(c, k, k));
}

#[inline(always)]
fn chol_solve_impl<E: Real>(l: &[E], k: usize, b: &mut [E], m: usize) {
    // forward: L Y = B
    for i in 0..k {
        for p in 0..i {
            let c = l[i * k + p];
            for j in 0..m {
                b[i * m + j] -= c * b[p * m + j];
            }
        }
        let inv = E::one() / l[i * k + i];
        for j in 0..m {
            b[i * m + j] *= inv;
        }
    }
    // backward: Lᵀ X = Y
    for i in (0..k).rev() {
        for p in i + 1..k {
            let c = l[p * k + i];
            for j in 0..m {
                b[i * m + j] -= c * b[p * m + j];
            }
        }
        let inv = E::one() / l[i * k + i];
        for j in 0..m {
            b[i * m + j] *= inv;
        }
    }
}

/// In-place lower Cholesky factor of a row-major `k×k` SPD matrix (only the lower triangle is
/// read); the strict upper triangle is set to zero. Returns `Err(j)` when pivot `j` is not
/// positive and finite.
pub(crate) fn cholesky<E: Real>(a: &mut [E], k: usize) -> std::result::Result<(), usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the callee is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe, bounds-checked `_impl`.
            return unsafe { cholesky_avx2(a, k) };
        }
    }
    cholesky_impl(a, k)
}

/// [`cholesky_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cholesky_avx2<E: Real>(a: &mut [E], k: usize) -> std::result::Result<(), usize> {
    cholesky_impl(a, k)
}

/// `X = L⁻¹` for a lower-triangular `L` (row-major; `X` lower-triangular).
pub(crate) fn tril_inverse<E: Real>(l: &[E], k: usize, x: &mut [E]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the callee is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe, bounds-checked `_impl`.
            return unsafe { tril_inverse_avx2(l, k, x) };
        }
    }
    tril_inverse_impl(l, k, x)
}

/// [`tril_inverse_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tril_inverse_avx2<E: Real>(l: &[E], k: usize, x: &mut [E]) {
    tril_inverse_impl(l, k, x)
}

/// Solves `L Lᵀ X = B` in place for a `k×m` row-major `B`.
pub(crate) fn chol_solve<E: Real>(l: &[E], k: usize, b: &mut [E], m: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the callee is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe, bounds-checked `_impl`.
            return unsafe { chol_solve_avx2(l, k, b, m) };
        }
    }
    chol_solve_impl(l, k, b, m)
}

/// [`chol_solve_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chol_solve_avx2<E: Real>(l: &[E], k: usize, b: &mut [E], m: usize) {
    chol_solve_impl(l, k, b, m)
}

/// `y = A x` for a row-major `m×n` matrix.
pub(crate) fn gemv<E: Real>(m: usize, n: usize, a: &[E], x: &[E], y: &mut [E]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the callee is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe, bounds-checked `_impl`.
            return unsafe { gemv_avx2(m, n, a, x, y) };
        }
    }
    gemv_impl(m, n, a, x, y)
}

/// [`gemv_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2<E: Real>(m: usize, n: usize, a: &[E], x: &[E], y: &mut [E]) {
    gemv_impl(m, n, a, x, y)
}

/// Matrices factorised together by [`batch_spd_inverse`] (one per SIMD lane).
pub(crate) const LANES: usize = 8;

/// Inverses `C = A⁻¹` and log-determinants of up to [`LANES`] row-major `k×k` SPD matrices at
/// once, stored contiguously in `a` (`m·k²` values; only lower triangles are read). The
/// matrices are interleaved so that every arithmetic operation (Cholesky, triangular inverse,
/// `L⁻ᵀL⁻¹`) works on all of them in one SIMD instruction, which is several times faster than
/// factorising small matrices one by one. Writes `C` to `c` (`m·k²`) and `ln det A` to
/// `logdet` (`m`); `work` is scratch space, grown as needed. Returns `Err((matrix, pivot))` for
/// the first matrix that is not positive definite.
pub(crate) fn batch_spd_inverse<E: Real>(
    a: &[E],
    m: usize,
    k: usize,
    c: &mut [E],
    logdet: &mut [E],
    work: &mut Vec<E>,
) -> std::result::Result<(), (usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the callee is compiled with `avx2,fma` enabled, and both features were
            // detected on this CPU just above; its body is the safe, bounds-checked `_impl`.
            return unsafe { batch_spd_inverse_avx2(a, m, k, c, logdet, work) };
        }
    }
    batch_spd_inverse_impl(a, m, k, c, logdet, work)
}

/// [`batch_spd_inverse_impl`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked with `is_x86_feature_detected!` by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn batch_spd_inverse_avx2<E: Real>(
    a: &[E],
    m: usize,
    k: usize,
    c: &mut [E],
    logdet: &mut [E],
    work: &mut Vec<E>,
) -> std::result::Result<(), (usize, usize)> {
    batch_spd_inverse_impl(a, m, k, c, logdet, work)
}

#[inline(always)]
fn batch_spd_inverse_impl<E: Real>(
    a: &[E],
    m: usize,
    k: usize,
    c: &mut [E],
    logdet: &mut [E],
    work: &mut Vec<E>,
) -> std::result::Result<(), (usize, usize)> {
    assert!(m <= LANES && a.len() >= m * k * k && c.len() >= m * k * k && logdet.len() >= m);
    const W: usize = LANES;
    let kw = k * k * W;
    work.clear();
    work.resize(3 * kw + k * W, E::zero());
    let (buf, rest) = work.split_at_mut(kw);
    let (xb, rest) = rest.split_at_mut(kw);
    let (cb, col) = rest.split_at_mut(kw);
    // interleave: buf[(i·k + j)·W + lane]; unused lanes hold the identity
    for i in 0..k {
        for j in 0..=i {
            let cell = &mut buf[(i * k + j) * W..(i * k + j + 1) * W];
            for (lane, v) in cell.iter_mut().enumerate() {
                *v = if lane < m {
                    a[lane * k * k + i * k + j]
                } else if i == j {
                    E::one()
                } else {
                    E::zero()
                };
            }
        }
    }
    // lower Cholesky, column by column (right-looking), every step on all lanes
    let mut inv = [E::zero(); W];
    for j in 0..k {
        let dj = (j * k + j) * W;
        for lane in 0..W {
            let d = buf[dj + lane];
            if !(d > E::zero() && d.is_finite()) {
                return Err((lane, j));
            }
            let r = d.sqrt();
            buf[dj + lane] = r;
            inv[lane] = E::one() / r;
        }
        // column j below the diagonal, scaled, copied contiguously
        for i in j + 1..k {
            let cell = &mut buf[(i * k + j) * W..(i * k + j + 1) * W];
            for lane in 0..W {
                cell[lane] *= inv[lane];
            }
            col[i * W..(i + 1) * W].copy_from_slice(cell);
        }
        // trailing update A[i][c] −= L[i][j] L[c][j], j < c ≤ i
        for i in j + 1..k {
            let mut f = [E::zero(); W];
            f.copy_from_slice(&col[i * W..(i + 1) * W]);
            let row = &mut buf[(i * k + j + 1) * W..(i * k + i + 1) * W];
            let src = &col[(j + 1) * W..(i + 1) * W];
            for (d, s) in row.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
                for lane in 0..W {
                    d[lane] -= f[lane] * s[lane];
                }
            }
        }
    }
    // X = L⁻¹, row by row: X[i] = (e_i − Σ_{p<i} L[i][p] X[p]) / L[i][i]
    for i in 0..k {
        let (lo, hi) = xb.split_at_mut(i * k * W);
        let row = &mut hi[..(i + 1) * W];
        for p in 0..i {
            let mut f = [E::zero(); W];
            f.copy_from_slice(&buf[(i * k + p) * W..(i * k + p + 1) * W]);
            let src = &lo[p * k * W..(p * k + p + 1) * W];
            for (d, s) in row.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
                for lane in 0..W {
                    d[lane] -= f[lane] * s[lane];
                }
            }
        }
        let d = (i * k + i) * W;
        let mut r = [E::zero(); W];
        for lane in 0..W {
            row[i * W + lane] += E::one();
            r[lane] = E::one() / buf[d + lane];
        }
        for cell in row.chunks_exact_mut(W) {
            for lane in 0..W {
                cell[lane] *= r[lane];
            }
        }
    }
    // C = Xᵀ X, lower triangle: C[i][j] = Σ_{p ≥ i} X[p][i] X[p][j], j ≤ i
    for p in 0..k {
        let xp = &xb[p * k * W..(p * k + p + 1) * W];
        for i in 0..=p {
            let mut f = [E::zero(); W];
            f.copy_from_slice(&xp[i * W..(i + 1) * W]);
            let dst = &mut cb[i * k * W..(i * k + i + 1) * W];
            for (d, s) in dst.chunks_exact_mut(W).zip(xp[..(i + 1) * W].chunks_exact(W)) {
                for lane in 0..W {
                    d[lane] += f[lane] * s[lane];
                }
            }
        }
    }
    // de-interleave C (both triangles) and the log-determinants
    for lane in 0..m {
        let out = &mut c[lane * k * k..(lane + 1) * k * k];
        let mut ld = E::zero();
        for i in 0..k {
            ld += buf[(i * k + i) * W + lane].ln();
            for j in 0..=i {
                let v = cb[(i * k + j) * W + lane];
                out[i * k + j] = v;
                out[j * k + i] = v;
            }
        }
        logdet[lane] = ld + ld;
    }
    Ok(())
}

/// `C ← α A B + β C` for row-major `m×k`, `k×n` and `m×n` matrices.
///
/// # Panics
/// If a slice is shorter than its matrix.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rm<E: Real>(m: usize, k: usize, n: usize, alpha: E, a: &[E], b: &[E], beta: E, c: &mut [E]) {
    gemm(alpha, MatRef::row_major(a, m, k), MatRef::row_major(b, k, n), beta, MatMut::row_major(c, m, n));
}

/// Whether every entry `(i, j)`, `i < rows`, `j < cols`, at `i·rs + j·cs` lies below `len`, with
/// strides that fit an `isize` (as the matrix-product hook takes them).
fn strided_fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    let small = |s: usize| isize::try_from(s).is_ok();
    if !(small(rs) && small(cs)) {
        return false;
    }
    if rows == 0 || cols == 0 {
        return true;
    }
    (rows - 1).checked_mul(rs).zip((cols - 1).checked_mul(cs)).and_then(|(a, b)| a.checked_add(b)).is_some_and(|last| last < len)
}

/// A read-only strided view of a `rows × cols` matrix inside a slice: entry `(i, j)` is
/// `data[i·row_stride + j·col_stride]`. The constructors check that every entry lies inside the
/// slice, so [`gemm`] can hand the view to the raw matrix-product kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a, E> {
    data: &'a [E],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, E> MatRef<'a, E> {
    /// A strided view (strides may be zero: a broadcast row or column).
    ///
    /// # Panics
    /// If an entry lies outside `data` (a bug in the caller's index arithmetic).
    #[track_caller]
    pub(crate) fn strided(data: &'a [E], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        assert!(
            strided_fits(data.len(), rows, cols, row_stride, col_stride),
            "a {rows}×{cols} view with strides ({row_stride}, {col_stride}) does not fit in {} values",
            data.len()
        );
        Self { data, rows, cols, rs: row_stride, cs: col_stride }
    }

    /// The row-major `rows × cols` matrix at the start of `data`.
    #[track_caller]
    pub(crate) fn row_major(data: &'a [E], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// The transpose (the same entries, strides swapped).
    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
}

/// A writable `rows × cols` matrix inside a slice, rows `row_stride ≥ cols` apart (so no two
/// entries share a place): entry `(i, j)` is `data[i·row_stride + j]`.
#[derive(Debug)]
pub(crate) struct MatMut<'a, E> {
    data: &'a mut [E],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a, E> MatMut<'a, E> {
    /// Rows `row_stride` apart.
    ///
    /// # Panics
    /// If `row_stride < cols` (rows would overlap) or an entry lies outside `data`.
    #[track_caller]
    pub(crate) fn strided_rows(data: &'a mut [E], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            (rows <= 1 || row_stride >= cols) && strided_fits(data.len(), rows, cols, row_stride, 1),
            "a writable {rows}×{cols} view with row stride {row_stride} does not fit in {} values",
            data.len()
        );
        Self { data, rows, cols, rs: row_stride }
    }

    /// The row-major `rows × cols` matrix at the start of `data`.
    #[track_caller]
    pub(crate) fn row_major(data: &'a mut [E], rows: usize, cols: usize) -> Self {
        Self::strided_rows(data, rows, cols, cols)
    }
}

/// `C ← α A B + β C` on checked views, through the dtype's matrix-product hook
/// ([`Real`]'s `gemm`: `matrixmultiply`). With `β = 0`, `C` is not read.
///
/// # Panics
/// If the shapes do not fit together (`A` is `m × k`, `B` `k × n`, `C` `m × n`).
#[track_caller]
pub(crate) fn gemm<E: Real>(alpha: E, a: MatRef<'_, E>, b: MatRef<'_, E>, beta: E, c: MatMut<'_, E>) {
    assert!(
        a.rows == c.rows && a.cols == b.rows && b.cols == c.cols,
        "gemm: shapes {}×{} · {}×{} → {}×{} do not fit",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    // SAFETY: the views' constructors checked that every entry they name lies inside their
    // slices and that the strides fit an isize; the shapes agree (checked above), so the kernel
    // reads only entries of `a` and `b` and writes only entries of `c`. `c` borrows its slice
    // mutably, so it aliases neither `a` nor `b`, and its rows do not overlap (row stride ≥ cols).
    unsafe {
        E::gemm(
            c.rows,
            a.cols,
            c.cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            c.rs as isize,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slice_cholesky_factors_in_place_and_names_the_failing_pivot() {
        let mut a = [4.0f64, 2.0, 2.0, 3.0];
        cholesky(&mut a, 2).unwrap();
        assert_eq!(a, [2.0, 0.0, 1.0, 2f64.sqrt()]);
        assert_eq!(cholesky(&mut [1.0f64, 2.0, 2.0, 1.0], 2), Err(1));
    }

    use super::*;

    fn spd(n: usize) -> Matrix {
        // A = B Bᵀ + n I with a fixed B
        let b = Matrix::from_row_major(n, n, (0..n * n).map(|k| ((k * 7 + 3) % 11) as f64 / 5.0 - 1.0).collect()).unwrap();
        b.matmul(&b.transpose()).unwrap().add(&Matrix::identity(n).scale(n as f64)).unwrap()
    }

    #[test]
    fn cholesky_reconstructs_and_inverts() {
        for n in [1, 2, 5, 12] {
            let a = spd(n);
            let c = a.cholesky().unwrap();
            let l = c.factor();
            assert!(l.matmul(&l.transpose()).unwrap().max_abs_diff(&a).unwrap() < 1e-10);
            let inv = c.inverse();
            let id = a.matmul(&inv).unwrap();
            assert!(id.max_abs_diff(&Matrix::identity(n)).unwrap() < 1e-10);
            assert!(l.matmul(&c.factor_inverse()).unwrap().max_abs_diff(&Matrix::identity(n)).unwrap() < 1e-10);
            let b: Vec<f64> = (0..n).map(|i| i as f64 - 1.5).collect();
            let x = c.solve(&b).unwrap();
            let ax = a.matvec(&x).unwrap();
            for (u, v) in ax.iter().zip(&b) {
                assert!((u - v).abs() < 1e-10);
            }
            let quad: f64 = b.iter().zip(&x).map(|(u, v)| u * v).sum();
            assert!((c.inv_quad(&b).unwrap() - quad).abs() < 1e-10);
        }
    }

    #[test]
    fn log_det_by_hand() {
        // det [[2, 1, 0], [1, 2, 1], [0, 1, 2]] = 2(4 − 1) − 1(2 − 0) = 4
        let a = Matrix::from_rows(&[vec![2., 1., 0.], vec![1., 2., 1.], vec![0., 1., 2.]]).unwrap();
        assert!((a.cholesky().unwrap().log_det() - 4f64.ln()).abs() < 1e-14);
    }

    #[test]
    fn errors() {
        assert!(matches!(Matrix::zeros(2, 3).cholesky(), Err(DenseError::NotSquare { .. })));
        assert!(matches!(Matrix::from_rows(&[vec![1.0], vec![1.0, 2.0]]), Err(DenseError::Ragged { row: 1, .. })));
        assert!(Matrix::from_diagonal(&[1.0, f64::NAN]).cholesky().is_err());
        let c = Matrix::identity(2).cholesky().unwrap();
        assert!(c.solve(&[1.0]).is_err());
        assert!(Matrix::zeros(2, 2).matmul(&Matrix::zeros(3, 1)).is_err());
    }

    /// The checked product over strided, transposed and broadcast views against plain loops.
    #[test]
    fn checked_gemm_matches_loops() {
        let a: Vec<f64> = (0..40).map(|v| (v as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..40).map(|v| (v as f64 * 0.91).cos()).collect();
        // A: 3×4 with row stride 5; B: 4×2 as the transpose of a 2×4 row-major block (stride 6)
        let av = MatRef::strided(&a, 3, 4, 5, 1);
        let bv = MatRef::strided(&b, 2, 4, 6, 1).t();
        let mut c = vec![1.0; 3 * 3];
        gemm(2.0, av, bv, 0.5, MatMut::strided_rows(&mut c, 3, 2, 3));
        for i in 0..3 {
            for j in 0..2 {
                let want = 0.5 + 2.0 * (0..4).map(|p| a[i * 5 + p] * b[j * 6 + p]).sum::<f64>();
                assert!((c[i * 3 + j] - want).abs() < 1e-14);
            }
            assert_eq!(c[i * 3 + 2], 1.0, "outside the view: untouched");
        }
        // a broadcast column (stride 0) and empty shapes
        let one = [1.0];
        let mut s = [0.0; 2];
        gemm(1.0, MatRef::strided(&one, 1, 4, 0, 0), MatRef::strided(&b, 4, 2, 6, 1), 0.0, MatMut::row_major(&mut s, 1, 2));
        assert!((s[0] - (0..4).map(|p| b[p * 6]).sum::<f64>()).abs() < 1e-14);
        gemm(1.0, MatRef::<f64>::row_major(&[], 0, 3), MatRef::row_major(&a, 3, 2), 0.0, MatMut::row_major(&mut [], 0, 2));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_view_outside_its_slice_panics() {
        let a = [0.0f64; 11];
        let _ = MatRef::strided(&a, 3, 4, 4, 1);
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn mismatched_gemm_shapes_panic() {
        let (a, b, mut c) = ([0.0f64; 6], [0.0f64; 6], [0.0f64; 4]);
        gemm(1.0, MatRef::row_major(&a, 2, 3), MatRef::row_major(&b, 2, 3), 0.0, MatMut::row_major(&mut c, 2, 2));
    }
}
