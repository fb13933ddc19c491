//! Layer 0: the threads one process runs on. A many-chain sampler updates its chains on its
//! [`Workers`] and hands the same workers to its target
//! ([`BatchLogDensity::share_workers`](crate::mcmc::BatchLogDensity::share_workers)), so the
//! chains' updates and the batched log density run on one set of threads. Two pools, one each,
//! would put twice as many threads as cores on the machine, the idle pool's threads spinning for
//! work while the other's compute.

use crate::{Error, Result};
use std::sync::Arc;

/// A set of worker threads (a rayon pool), or the calling thread alone. Cloning shares the same
/// threads.
///
/// ```
/// use weightspace::comm::Workers;
/// let two = Workers::new(2)?;
/// assert_eq!(two.threads(), 2);
/// // `install` runs its closure on the workers; rayon's parallel iterators inside it use them
/// assert_eq!(two.install(|| 6 * 7), 42);
/// assert_eq!(Workers::new(1)?.threads(), 1); // no pool: the calling thread
/// assert!(Workers::new(0)?.threads() >= 1); // 0: every core of this machine
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Clone)]
pub struct Workers {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Workers {
    /// `threads` worker threads; `0` means every core of this machine, `1` the calling thread
    /// alone (no pool is built).
    ///
    /// ```
    /// use weightspace::comm::Workers;
    /// assert_eq!(Workers::new(3)?.threads(), 3);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn new(threads: usize) -> Result<Self> {
        let pool = match crate::num::threads_or_all(threads) {
            1 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| Error::Device(format!("{n} worker threads: {e}")))?,
            )),
        };
        Ok(Self { pool })
    }

    /// The number of threads.
    ///
    /// ```
    /// use weightspace::comm::Workers;
    /// assert_eq!(Workers::new(2)?.threads(), 2);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs `op` on one of the workers (on the calling thread when there is no pool) and returns
    /// its result; rayon's parallel iterators inside `op` spread over the workers.
    ///
    /// ```
    /// use weightspace::comm::Workers;
    /// let w = Workers::new(2)?;
    /// let v: Vec<u32> = w.install(|| (0..4).map(|i| i * i).collect());
    /// assert_eq!(v, [0, 1, 4, 9]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(op),
            None => op(),
        }
    }

    /// The pool, `None` for the calling thread alone.
    pub(crate) fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool.as_deref()
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("threads", &self.threads()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_threads() {
        let a = Workers::new(2).unwrap();
        let b = a.clone();
        let (pa, pb) = (a.pool().unwrap() as *const _, b.pool().unwrap() as *const _);
        assert_eq!(pa, pb);
        // inside `install` the current thread is one of the workers
        assert_eq!(a.install(rayon::current_num_threads), 2);
        assert!(a.install(rayon::current_thread_index).is_some());
        assert!(Workers::new(1).unwrap().install(rayon::current_thread_index).is_none());
    }
}
