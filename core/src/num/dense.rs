//! A small dense linear-algebra helper for the exact references: row-major `f64` matrices, the
//! Cholesky factorisation, solves, log-determinants and inverses of small symmetric
//! positive-definite matrices.
//!
//! It is meant for the dimensions of reference problems (tens to a few hundreds), not for speed.
//!
//! ```
//! use weightspace_core::testing::dense::Matrix;
//!
//! let a = Matrix::from_rows(&[vec![4.0, 2.0], vec![2.0, 3.0]])?;
//! let chol = a.cholesky()?;
//! assert!((chol.log_det() - 8f64.ln()).abs() < 1e-12);
//! let x = chol.solve(&[2.0, 1.0])?;
//! assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
//! let inv = chol.inverse();
//! assert!(a.matmul(&inv)?.max_abs_diff(&Matrix::identity(2))? < 1e-12);
//! # Ok::<(), weightspace_core::testing::dense::DenseError>(())
//! ```

use std::ops::{Index, IndexMut};

use thiserror::Error;

use crate::Real;

/// Why a dense operation failed.
///
/// ```
/// use weightspace_core::testing::dense::{DenseError, Matrix};
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
/// use weightspace_core::testing::dense::Matrix;
///
/// let m = Matrix::from_row_major(2, 3, vec![1., 2., 3., 4., 5., 6.])?;
/// assert_eq!(m[(1, 2)], 6.0);
/// assert_eq!(m.transpose().shape(), (3, 2));
/// assert_eq!(m.matvec(&[1.0, 0.0, -1.0])?, vec![-2.0, -2.0]);
/// # Ok::<(), weightspace_core::testing::dense::DenseError>(())
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

    /// Cholesky factorisation `self = L Lᵀ` of a symmetric positive-definite matrix.
    ///
    /// Only the lower triangle is read (as LAPACK's `potrf` does), so an asymmetric input is
    /// silently treated as its lower triangle: symmetrise first if in doubt.
    pub fn cholesky(&self) -> Result<Cholesky> {
        if self.rows != self.cols {
            return Err(DenseError::NotSquare { op: "cholesky", rows: self.rows, cols: self.cols });
        }
        let n = self.rows;
        let mut l = Self::zeros(n, n);
        for j in 0..n {
            let mut d = self[(j, j)];
            for k in 0..j {
                d -= l[(j, k)] * l[(j, k)];
            }
            if d.is_nan() || d <= 0.0 || d.is_infinite() {
                return Err(DenseError::NotPositiveDefinite { pivot: j, value: d });
            }
            let d = d.sqrt();
            l[(j, j)] = d;
            for i in j + 1..n {
                let mut s = self[(i, j)];
                for k in 0..j {
                    s -= l[(i, k)] * l[(j, k)];
                }
                l[(i, j)] = s / d;
            }
        }
        Ok(Cholesky { l })
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

/// The Cholesky factor `L` (lower triangular) of an SPD matrix `A = L Lᵀ`.
///
/// ```
/// use weightspace_core::testing::dense::Matrix;
///
/// let a = Matrix::from_diagonal(&[4.0, 9.0]);
/// let chol = a.cholesky()?;
/// assert_eq!(chol.factor().diagonal(), vec![2.0, 3.0]);
/// assert_eq!(chol.solve_lower(&[2.0, 3.0])?, vec![1.0, 1.0]);
/// # Ok::<(), weightspace_core::testing::dense::DenseError>(())
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
        self.solve_upper(&self.solve_lower(b)?)
    }

    /// `ln det A = 2 Σ ln Lᵢᵢ`.
    pub fn log_det(&self) -> f64 {
        2.0 * self.l.diagonal().iter().map(|d| d.ln()).sum::<f64>()
    }

    /// `A⁻¹`, exactly symmetric.
    pub fn inverse(&self) -> Matrix {
        let n = self.dim();
        let mut inv = Matrix::zeros(n, n);
        let mut e = vec![0.0; n];
        for j in 0..n {
            e.iter_mut().for_each(|x| *x = 0.0);
            e[j] = 1.0;
            let col = self.solve(&e).expect("length checked");
            for i in 0..n {
                inv[(i, j)] = col[i];
            }
        }
        inv.symmetrize().expect("square")
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
