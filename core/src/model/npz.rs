//! `.npz` archives (NumPy's `np.savez` format) for results that leave Rust: named arrays of
//! `f64`, `i64` or `bool` with their shapes, encoded by `ndarray-npy` and written atomically
//! (through the checkpoint module's `write_atomically`), so a failed write leaves any previous
//! file as it was and no temporary file behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayViewD, IxDyn};
use ndarray_npy::{NpzWriter, WritableElement};

use crate::error::ExportError;
use crate::num::diagnostics::SummaryTable;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Values {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A set of named arrays to be written as one `.npz` file; NumPy reads it with `np.load`, and
/// `dict(np.load(path))` is what `az.from_dict` takes for a group.
///
/// Arrays are stored row-major (C order) with the shape given. For MCMC output the library
/// follows ArviZ's dimension order: `(chain, draw, *the quantity's own dimensions)`.
///
/// ```
/// use weightspace::export::Npz;
///
/// let mut npz = Npz::new();
/// // 2 chains × 3 draws of a 2-vector, row-major: [chain][draw][element]
/// npz.add_f64("theta", &[2, 3, 2], (0..12).map(f64::from).collect())?
///     .add_i64("step", &[3], vec![0, 10, 20])?
///     .add_bool("diverging", &[2, 3], vec![false; 6])?;
/// assert_eq!(npz.names(), vec!["theta", "step", "diverging"]);
/// assert_eq!(npz.shape("theta"), Some(&[2usize, 3, 2][..]));
/// // the shape must match the number of values, and names are unique
/// assert!(npz.add_f64("bad", &[2, 2], vec![1.0; 3]).is_err());
/// assert!(npz.add_f64("theta", &[1], vec![1.0]).is_err());
/// let path = std::env::temp_dir().join(format!("weightspace_doc_npz_{}.npz", std::process::id()));
/// npz.write(&path)?;
/// assert!(std::fs::metadata(&path)?.len() > 0);
/// std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Npz {
    arrays: Vec<(String, Vec<usize>, Values)>,
}

impl Npz {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, name: &str, shape: &[usize], len: usize, values: Values) -> Result<&mut Self> {
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(Error::config("Npz array name", format!("{name:?}"), "names must be non-empty and hold no path separator"));
        }
        if self.arrays.iter().any(|(n, _, _)| n == name) {
            return Err(Error::config("Npz array name", name, "each name may appear once in an archive"));
        }
        let expected: usize = shape.iter().product();
        if expected != len {
            return Err(Error::Shape {
                what: format!("npz array `{name}`"),
                expected: format!("{shape:?} ({expected} values)"),
                got: format!("{len} values"),
            });
        }
        self.arrays.push((name.to_string(), shape.to_vec(), values));
        Ok(self)
    }

    /// Adds an `f64` array of shape `shape` holding `values` in row-major order.
    pub fn add_f64(&mut self, name: &str, shape: &[usize], values: Vec<f64>) -> Result<&mut Self> {
        let len = values.len();
        self.add(name, shape, len, Values::F64(values))
    }

    /// Adds an `i64` array (counts, step indices).
    pub fn add_i64(&mut self, name: &str, shape: &[usize], values: Vec<i64>) -> Result<&mut Self> {
        let len = values.len();
        self.add(name, shape, len, Values::I64(values))
    }

    /// Adds a `bool` array (flags such as ArviZ's `diverging`).
    pub fn add_bool(&mut self, name: &str, shape: &[usize], values: Vec<bool>) -> Result<&mut Self> {
        let len = values.len();
        self.add(name, shape, len, Values::Bool(values))
    }

    /// The array names, in the order they were added.
    pub fn names(&self) -> Vec<&str> {
        self.arrays.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    /// The shape of the array `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.arrays.iter().find(|(n, _, _)| n == name).map(|(_, s, _)| s.as_slice())
    }

    /// The `f64` values of the array `name` (row-major), if it is an `f64` array.
    ///
    /// ```
    /// use weightspace::export::Npz;
    /// let mut npz = Npz::new();
    /// npz.add_f64("x", &[2], vec![0.5, 1.5])?;
    /// assert_eq!(npz.f64_values("x"), Some(&[0.5, 1.5][..]));
    /// assert_eq!(npz.f64_values("y"), None);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn f64_values(&self, name: &str) -> Option<&[f64]> {
        self.arrays.iter().find(|(n, _, _)| n == name).and_then(|(_, _, v)| match v {
            Values::F64(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    /// The summary table as arrays: one `f64` array per `az.summary` column (`mean`, `sd`,
    /// `hdi_3%`, `hdi_97%`, `mcse_mean`, `mcse_sd`, `ess_bulk`, `ess_tail`, `r_hat`), each of
    /// shape `(rows,)` in the table's row order.
    ///
    /// ```
    /// use weightspace::diagnostics::SummaryTable;
    /// use weightspace::export::Npz;
    /// let x: Vec<f64> = (0..100).map(|t| ((t * 37) % 100) as f64).collect();
    /// let mut table = SummaryTable::new();
    /// table.push("x", &[x[..50].to_vec(), x[50..].to_vec()])?;
    /// let npz = Npz::from_summary(&table)?;
    /// assert_eq!(npz.names()[2], "hdi_3%");
    /// assert_eq!(npz.f64_values("mean"), Some(&[49.5][..]));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn from_summary(table: &SummaryTable) -> Result<Self> {
        let mut npz = Self::new();
        for (j, name) in table.column_names().iter().enumerate() {
            npz.add_f64(name, &[table.rows.len()], table.column(j))?;
        }
        Ok(npz)
    }

    /// Writes the archive to `path` (uncompressed, like `np.savez`): into a temporary file beside
    /// it, synced and renamed over `path`. On any error the previous file at `path`, if any, is
    /// unchanged and the temporary file is removed.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let export_error = |source: ExportError| Error::Export { path: path.display().to_string(), source };
        let io_error = |stage: &'static str, e: std::io::Error| export_error(ExportError::Io { stage, source: Arc::new(e) });
        let npz_error = |e: ndarray_npy::WriteNpzError| export_error(ExportError::Npz { source: Arc::new(e) });
        crate::model::checkpoint::write_atomically_with(
            path,
            |tmp| {
                let file = File::create(tmp).map_err(|e| io_error("cannot open the temporary file", e))?;
                let mut zip = NpzWriter::new(BufWriter::new(file));
                for (name, shape, values) in &self.arrays {
                    match values {
                        Values::F64(v) => add(&mut zip, name, shape, v),
                        Values::I64(v) => add(&mut zip, name, shape, v),
                        Values::Bool(v) => add(&mut zip, name, shape, v),
                    }
                    .map_err(npz_error)?;
                }
                let mut buf = zip.finish().map_err(npz_error)?;
                buf.flush().map_err(|e| io_error("cannot write the temporary file", e))
            },
            io_error,
        )
    }
}

fn add<W: Write + std::io::Seek, T: WritableElement>(
    zip: &mut NpzWriter<W>,
    name: &str,
    shape: &[usize],
    values: &[T],
) -> std::result::Result<(), ndarray_npy::WriteNpzError> {
    // the shape was checked against the length when the array was added
    match ArrayViewD::from_shape(IxDyn(shape), values) {
        Ok(view) => zip.add_array(name, &view),
        Err(e) => Err(ndarray_npy::WriteNpzError::Npy(ndarray_npy::WriteNpyError::Io(std::io::Error::other(e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;
    use ndarray_npy::NpzReader;
    use std::fs;
    use std::path::PathBuf;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weightspace_npz_{name}_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Every array comes back with its name, dtype, shape and values (row-major).
    #[test]
    fn round_trip() {
        let dir = scratch_dir("round_trip");
        let path = dir.join("a.npz");
        let mut npz = Npz::new();
        let theta: Vec<f64> = (0..24).map(|i| i as f64 * 0.5 - 3.0).collect();
        npz.add_f64("theta", &[2, 3, 4], theta.clone()).unwrap().add_i64("n", &[3], vec![1, -2, 3]).unwrap();
        npz.add_bool("flag", &[2, 1], vec![true, false]).unwrap();
        npz.add_f64("hdi_3%", &[], vec![7.0]).unwrap();
        npz.write(&path).unwrap();
        let mut r = NpzReader::new(fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(r.names().unwrap(), vec!["theta", "n", "flag", "hdi_3%"]);
        let t: ArrayD<f64> = r.by_name("theta").unwrap();
        assert_eq!(t.shape(), &[2, 3, 4]);
        assert_eq!(t[[1, 2, 3]], theta[12 + 8 + 3]);
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), theta);
        let n: ArrayD<i64> = r.by_name("n").unwrap();
        assert_eq!(n.into_raw_vec_and_offset().0, vec![1, -2, 3]);
        let f: ArrayD<bool> = r.by_name("flag").unwrap();
        assert_eq!(f.shape(), &[2, 1]);
        let s: ArrayD<f64> = r.by_name("hdi_3%").unwrap();
        assert_eq!((s.ndim(), s.iter().next().copied()), (0, Some(7.0)));
        assert_eq!(listing(&dir), vec!["a.npz"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A write into a missing directory fails with the path in the message and creates nothing.
    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = scratch_dir("missing");
        let path = dir.join("no").join("such").join("x.npz");
        let mut npz = Npz::new();
        npz.add_f64("x", &[1], vec![1.0]).unwrap();
        let err = npz.write(&path).unwrap_err();
        assert!(matches!(&err, Error::Export { source: ExportError::Io { .. }, .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(std::error::Error::source(&err).is_some(), "the I/O error is kept as the source");
        assert!(listing(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A target that cannot be replaced (a directory): the write fails, the directory keeps its
    /// content, no temporary file is left; and a later good write replaces an existing file whole.
    #[test]
    fn failed_write_leaves_the_previous_file_and_no_temporary() {
        let dir = scratch_dir("failed");
        let path = dir.join("draws.npz");
        let mut old = Npz::new();
        old.add_f64("x", &[2], vec![1.0, 2.0]).unwrap();
        old.write(&path).unwrap();
        let before = fs::read(&path).unwrap();
        // a directory in the way of the rename
        let blocked = dir.join("blocked.npz");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"keep").unwrap();
        let mut new = Npz::new();
        new.add_f64("x", &[3], vec![5.0, 6.0, 7.0]).unwrap();
        let err = new.write(&blocked).unwrap_err();
        assert!(
            matches!(&err, Error::Export { source: ExportError::Io { stage: "cannot rename the temporary file over it", .. }, .. }),
            "{err:?}"
        );
        assert_eq!(fs::read(blocked.join("inside")).unwrap(), b"keep");
        assert_eq!(listing(&dir), vec!["blocked.npz", "draws.npz"], "a temporary file was left behind");
        assert_eq!(fs::read(&path).unwrap(), before);
        new.write(&path).unwrap();
        let mut r = NpzReader::new(fs::File::open(&path).unwrap()).unwrap();
        let x: ArrayD<f64> = r.by_name("x").unwrap();
        assert_eq!(x.into_raw_vec_and_offset().0, vec![5.0, 6.0, 7.0]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// In a read-only directory (where permissions apply: not as root) the write fails and the
    /// previous file is byte-identical.
    #[cfg(unix)]
    #[test]
    fn read_only_directory_keeps_the_previous_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("read_only");
        let path = dir.join("draws.npz");
        let mut old = Npz::new();
        old.add_f64("x", &[1], vec![1.0]).unwrap();
        old.write(&path).unwrap();
        let before = fs::read(&path).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        let probe = fs::File::create(dir.join("probe"));
        let enforced = probe.is_err();
        let _ = fs::remove_file(dir.join("probe"));
        let mut new = Npz::new();
        new.add_f64("x", &[1], vec![2.0]).unwrap();
        let r = new.write(&path);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        if enforced {
            assert!(matches!(r, Err(Error::Export { .. })), "{r:?}");
            assert_eq!(fs::read(&path).unwrap(), before);
            assert_eq!(listing(&dir), vec!["draws.npz"]);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
