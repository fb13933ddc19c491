//! Saving and loading models and guides as safetensors files. Round trips are bit-exact.
//!
//! Every save goes through `write_atomically`: the file is written beside the target under a
//! temporary name, synced, and renamed over it, so a process killed mid-save leaves the previous
//! checkpoint as it was.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dfdx::nn::{LoadFromSafetensors, SaveToSafetensors};
use dfdx::prelude::*;

use crate::{Error, Real, Result};

/// Saves every parameter of a model, guide or any dfdx tensor collection to `path`. Parameter names
/// are the declaration's field paths, e.g. `hidden.weight.log_scale`. The file is replaced
/// atomically (see `write_atomically`): a save that fails or is interrupted leaves the previous
/// checkpoint intact.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, Learned(1.0)))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Learned<0.3>> }
/// let dev = Cpu::default();
/// let model = Lin::<f32, Cpu>::new(&dev);
/// let path = std::env::temp_dir().join("weightspace_doc_ckpt.safetensors");
/// save(&model, &path)?;
/// let mut back = Lin::<f32, Cpu>::new(&dev);
/// load(&mut back, &path)?;
/// assert_eq!(back.noise.raw.array(), model.noise.raw.array());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn save<E: Real, D: Device<E>, M: TensorCollection<E, D>>(m: &M, path: impl AsRef<Path>) -> Result<()> {
    let p = path.as_ref();
    write_atomically(p, |tmp| m.save_safetensors(tmp).map_err(|e| checkpoint_error(p, format!("{e:?}"))))
}

/// Loads parameters saved by [`save`] into `m`. On error, `m` is left unchanged.
///
/// ```
/// use weightspace::prelude::*;
/// #[bnn]
/// struct Lin { #[layer(prior = Normal(0.0, Learned(1.0)))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<0.5>> }
/// let dev = Cpu::default();
/// let mut model = Lin::<f64, Cpu>::new(&dev);
/// model.set_noise_scale(0.25)?;
/// let path = std::env::temp_dir().join(format!("weightspace_doc_load_{}.safetensors", std::process::id()));
/// save(&model, &path)?;
/// let mut fresh = Lin::<f64, Cpu>::new(&dev);
/// load(&mut fresh, &path)?;
/// assert_eq!(fresh.noise_scale(), Some(0.25));
/// // a missing file is an error, and the model keeps its values
/// assert!(load(&mut fresh, path.with_extension("missing")).is_err());
/// assert_eq!(fresh.noise_scale(), Some(0.25));
/// std::fs::remove_file(&path).ok();
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn load<E: Real, D: Device<E>, M: TensorCollection<E, D> + Clone>(m: &mut M, path: impl AsRef<Path>) -> Result<()> {
    let p = path.as_ref();
    let mut tmp = m.clone();
    tmp.load_safetensors(p).map_err(|e| Error::Checkpoint { path: p.display().to_string(), reason: format!("{e:?}") })?;
    if !crate::model::params::all_finite(&tmp) {
        return Err(Error::Checkpoint { path: p.display().to_string(), reason: "the file holds NaN or infinite parameters".into() });
    }
    *m = tmp;
    Ok(())
}

/// A safetensors file read into memory: its tensors, checked one by one on access, and its
/// string metadata.
pub(crate) struct SafetensorsFile {
    path: String,
    buf: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    pub(crate) fn read(p: &Path) -> Result<Self> {
        let path = p.display().to_string();
        let buf = std::fs::read(p).map_err(|e| Error::Checkpoint { path: path.clone(), reason: e.to_string() })?;
        let (_, header) = ::safetensors::SafeTensors::read_metadata(&buf)
            .map_err(|e| Error::Checkpoint { path: path.clone(), reason: format!("{e:?}") })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Self { path, buf, metadata })
    }

    fn err(&self, reason: String) -> Error {
        Error::Checkpoint { path: self.path.clone(), reason }
    }

    /// Whether the file holds a tensor `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        ::safetensors::SafeTensors::deserialize(&self.buf).is_ok_and(|st| st.tensor(name).is_ok())
    }

    /// The tensor `name`, which must have dtype `E`, logical shape `shape` and finite entries.
    pub(crate) fn tensor<E: Real>(&self, name: &str, shape: &[usize]) -> Result<Vec<E>> {
        let v = self.tensor_any::<E>(name, shape)?;
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite { what: format!("tensor `{name}` of {}", self.path), index });
        }
        Ok(v)
    }

    /// The shape of tensor `name`.
    pub(crate) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = ::safetensors::SafeTensors::deserialize(&self.buf).map_err(|e| self.err(format!("{e:?}")))?;
        let t = st.tensor(name).map_err(|x| self.err(format!("tensor `{name}`: {x:?}")))?;
        Ok(t.shape().to_vec())
    }

    /// The string metadata.
    pub(crate) fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// [`tensor`](Self::tensor), NaN and infinities allowed.
    pub(crate) fn tensor_any<E: Real>(&self, name: &str, shape: &[usize]) -> Result<Vec<E>> {
        let st = ::safetensors::SafeTensors::deserialize(&self.buf).map_err(|e| self.err(format!("{e:?}")))?;
        let t = st.tensor(name).map_err(|x| self.err(format!("tensor `{name}`: {x:?}")))?;
        let dtype = <E as dfdx::tensor::safetensors::SafeDtype>::safe_dtype();
        if t.dtype() != dtype {
            return Err(self.err(format!("tensor `{name}` has dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        if t.shape() != shape {
            return Err(self.err(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape())));
        }
        let data = t.data();
        let size = std::mem::size_of::<E>();
        Ok((0..data.len() / size).map(|i| <E as dfdx::tensor::safetensors::SafeDtype>::from_le_bytes(data, i * size)).collect())
    }

    /// The metadata entry `key`, parsed; `missing` says what its absence means.
    pub(crate) fn meta<T: std::str::FromStr>(&self, key: &str, missing: &str) -> Result<T> {
        let v = self.metadata.get(key).ok_or_else(|| self.err(format!("no `{key}` entry: {missing}")))?;
        v.parse().map_err(|_| self.err(format!("`{key}` = {v:?} does not parse")))
    }
}

/// Writes named tensors of dtype `E` (name, logical shape, row-major values) and string
/// `metadata` to a safetensors file at `path`, atomically (see [`write_atomically`]).
pub(crate) fn write_safetensors<E: Real>(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<E>)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.into_iter().flat_map(<E as dfdx::tensor::safetensors::SafeDtype>::to_le_bytes).collect()))
        .collect();
    let dtype = <E as dfdx::tensor::safetensors::SafeDtype>::safe_dtype();
    let views = bytes
        .iter()
        .map(|(n, s, d)| ::safetensors::tensor::TensorView::new(dtype, s.clone(), d).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| checkpoint_error(path, format!("{e:?}")))?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    write_atomically(path, |tmp| {
        ::safetensors::serialize_to_file(views, &metadata, tmp).map_err(|e| checkpoint_error(path, format!("{e:?}")))
    })
}

/// An [`Error::Checkpoint`] about `path`.
fn checkpoint_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), reason: reason.into() }
}

/// Writes the file at `path` atomically: `write` fills a fresh temporary file beside it (same
/// directory, so the rename cannot cross file systems), which is then synced to disk and renamed
/// over `path`. Readers (and a job restarted after a crash) see either the previous file or the
/// complete new one, never a partial write.
///
/// If `write`, the sync or the rename fails, `path` is left as it was, the temporary file is
/// removed, and the error is returned. (A process killed before the rename can leave a
/// `.<name>.<pid>-<n>.tmp` file beside the target; the target itself is intact.)
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    write_atomically_with(path, write, |stage, e| checkpoint_error(path, format!("{stage}: {e}")))
}

/// [`write_atomically`], with the caller's error for a failed file-system step: `io_error` gets the
/// step (`"cannot create a temporary file"`, `"cannot sync the temporary file"`, `"cannot rename
/// the temporary file over it"`) and the I/O error.
pub(crate) fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
    io_error: impl Fn(&'static str, io::Error) -> Error,
) -> Result<()> {
    let tmp = create_temp_beside(path).map_err(|e| io_error("cannot create a temporary file", e))?;
    let written = write(&tmp).and_then(|()| {
        sync_file(&tmp).map_err(|e| io_error("cannot sync the temporary file", e))?;
        fs::rename(&tmp, path).map_err(|e| io_error("cannot rename the temporary file over it", e))
    });
    match written {
        Ok(()) => {
            // the rename itself reaches the disk with the directory (best effort: not every
            // platform can open a directory for syncing)
            if let Ok(dir) = fs::File::open(parent_dir(path)) {
                let _ = dir.sync_all();
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates an empty file with a name no other writer uses, in the directory of `path`:
/// `.<file name>.<process id>-<counter>.tmp` (created with `create_new`, so an existing file is
/// never reused).
fn create_temp_beside(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = parent_dir(path);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}-{n}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(_) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Flushes the file's data and metadata to the disk.
fn sync_file(path: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fresh empty directory for one test.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weightspace_ckpt_{name}_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names of the files in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    type Net = (Linear<3, 4>, Tanh, Linear<4, 2>);

    /// A write that fails midway (half a file written, then an error) leaves the previous
    /// checkpoint byte-identical and no temporary file behind; the error is returned. Writing in
    /// place instead of to a temporary file would leave the target truncated to the half write.
    #[test]
    fn failed_write_leaves_the_previous_checkpoint_intact() {
        let dir = scratch_dir("failed_write");
        let path = dir.join("model.safetensors");
        let dev = Cpu::seed_from_u64(1);
        let model = dev.build_module::<Net, f32>();
        save(&model, &path).unwrap();
        let before = fs::read(&path).unwrap();
        let mut seen = None;
        let r = write_atomically(&path, |tmp| {
            seen = Some(tmp.to_path_buf());
            let mut f = fs::File::create(tmp).unwrap();
            f.write_all(&before[..before.len() / 2]).unwrap();
            f.write_all(b"garbage").unwrap();
            Err(checkpoint_error(&path, "disk full (injected)"))
        });
        assert!(matches!(r, Err(Error::Checkpoint { ref reason, .. }) if reason.contains("injected")), "{r:?}");
        let tmp = seen.expect("the writer ran");
        assert_ne!(tmp, path, "the writer must get a temporary file, not the target");
        assert_eq!(tmp.parent(), path.parent(), "the temporary file lies beside the target");
        assert_eq!(fs::read(&path).unwrap(), before, "the previous checkpoint changed");
        assert_eq!(listing(&dir), vec!["model.safetensors".to_string()], "a temporary file was left behind");
        // and it still loads into a model equal to the saved one
        let mut back = dev.build_module::<Net, f32>();
        back.reset_params();
        load(&mut back, &path).unwrap();
        assert_eq!(back.0.weight.as_vec(), model.0.weight.as_vec());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A save replaces the target by a new file rather than overwriting it: a hard link to the
    /// old checkpoint keeps the old bytes (an in-place write would change both), and the new
    /// checkpoint round-trips bit-exactly.
    #[test]
    fn save_replaces_the_file_and_round_trips_bit_exactly() {
        let dir = scratch_dir("replace");
        let path = dir.join("model.safetensors");
        let old = dir.join("old.safetensors");
        let dev = Cpu::seed_from_u64(2);
        let first = dev.build_module::<Net, f64>();
        save(&first, &path).unwrap();
        let first_bytes = fs::read(&path).unwrap();
        fs::hard_link(&path, &old).unwrap();
        let mut second = dev.build_module::<Net, f64>();
        second.reset_params();
        assert_ne!(second.0.weight.as_vec(), first.0.weight.as_vec());
        save(&second, &path).unwrap();
        assert_eq!(fs::read(&old).unwrap(), first_bytes, "the save wrote into the old file in place");
        assert_ne!(fs::read(&path).unwrap(), first_bytes);
        assert_eq!(listing(&dir), vec!["model.safetensors".to_string(), "old.safetensors".to_string()]);
        let mut back = dev.build_module::<Net, f64>();
        load(&mut back, &path).unwrap();
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(back.0.weight.as_vec()), bits(second.0.weight.as_vec()));
        assert_eq!(bits(back.0.bias.as_vec()), bits(second.0.bias.as_vec()));
        assert_eq!(bits(back.2.weight.as_vec()), bits(second.2.weight.as_vec()));
        assert_eq!(bits(back.2.bias.as_vec()), bits(second.2.bias.as_vec()));
        // a bare file name (no directory part) works too
        let cwd_name = format!("weightspace_ckpt_bare_{}.tmp-test", std::process::id());
        write_atomically(Path::new(&cwd_name), |tmp| fs::write(tmp, b"x").map_err(|e| checkpoint_error(tmp, e.to_string()))).unwrap();
        assert_eq!(fs::read(&cwd_name).unwrap(), b"x");
        fs::remove_file(&cwd_name).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A target that cannot be replaced (here a directory) is an error, and the temporary file
    /// is removed.
    #[test]
    fn failed_rename_cleans_up() {
        let dir = scratch_dir("failed_rename");
        let target = dir.join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        let dev = Cpu::seed_from_u64(3);
        let model = dev.build_module::<Net, f32>();
        assert!(matches!(save(&model, &target), Err(Error::Checkpoint { .. })));
        assert_eq!(listing(&dir), vec!["taken".to_string()]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
        fs::remove_dir_all(&dir).unwrap();
    }
}
