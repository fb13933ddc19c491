//! Layer 0: the processes a run is spread over. Algorithms that can run on several processes (the
//! many-chain sampler, the SYM-MCMC workflow) take a [`Communicator`] and call its collectives
//! without knowing what carries them: [`SingleProcess`] (one process, the default) or, with the
//! `mpi` feature, `Mpi` (the ranks of an MPI job launched by `mpirun` or `srun`).
//!
//! The collectives are gathers of `f64`s in rank order. Sums that must not depend on the number of
//! processes are formed from gathered partial sums in a fixed order (see
//! [`Communicator::block_sums`]), so a run on 2 ranks is bit-identical to a run on 1.

use crate::{Error, Result};

/// A group of processes that run one algorithm together, each holding a shard of the work.
///
/// Every process calls the same collectives in the same order. `counts[r]` is the number of
/// values rank `r` contributes; all ranks pass the same `counts`.
///
/// ```
/// use weightspace::comm::{Communicator, SingleProcess};
/// let comm = SingleProcess;
/// assert_eq!((comm.rank(), comm.size()), (0, 1));
/// let mut out = vec![0.0; 3];
/// comm.all_gather(&[1.0, 2.0, 3.0], &[3], &mut out)?;
/// assert_eq!(out, [1.0, 2.0, 3.0]);
/// assert_eq!(comm.gather_to_root(&[4.0], &[1])?, Some(vec![4.0]));
/// assert!(comm.all_gather(&[1.0], &[2], &mut out).is_err()); // counts that do not match the data
/// # Ok::<(), weightspace::Error>(())
/// ```
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Every rank's `local` values, concatenated in rank order, into `out` on every rank.
    fn all_gather(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()>;

    /// Every rank's `local` values, concatenated in rank order: `Some` on rank 0, `None` elsewhere.
    fn gather_to_root(&self, local: &[f64], counts: &[usize]) -> Result<Option<Vec<f64>>>;

    /// Ends every process of the job with exit code `code` after printing `message` on stderr.
    /// Call it when this rank cannot go on (an error, a panic): the other ranks would otherwise
    /// wait in their next collective forever.
    fn abort(&self, code: i32, message: &str) -> !;

    /// Replaces `values` by their elementwise sum over all ranks, the same on every rank (every
    /// rank passes as many values). Unlike [`block_sums`](Self::block_sums), the order of the
    /// additions may depend on the number of ranks: use it where a float tolerance is acceptable
    /// (gradients of data-parallel training).
    ///
    /// ```
    /// use weightspace::comm::{Communicator, SingleProcess};
    /// let mut g = [1.5, -2.0];
    /// SingleProcess.all_reduce_sum(&mut g)?;
    /// assert_eq!(g, [1.5, -2.0]); // one process: its own values
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        let n = values.len();
        let mut all = vec![0.0; n * self.size()];
        self.all_gather(values, &vec![n; self.size()], &mut all)?;
        values.iter_mut().for_each(|v| *v = 0.0);
        for part in all.chunks(n.max(1)) {
            for (v, x) in values.iter_mut().zip(part) {
                *v += x;
            }
        }
        Ok(())
    }

    /// Whether this is rank 0, the rank that gathers results, writes files and shows progress.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The largest of every rank's `value`, on every rank.
    fn all_max(&self, value: f64) -> Result<f64> {
        let mut all = vec![0.0; self.size()];
        self.all_gather(&[value], &vec![1; self.size()], &mut all)?;
        Ok(all.into_iter().fold(f64::NEG_INFINITY, f64::max))
    }

    /// The smallest of every rank's `value`, on every rank.
    fn all_min(&self, value: f64) -> Result<f64> {
        let mut all = vec![0.0; self.size()];
        self.all_gather(&[value], &vec![1; self.size()], &mut all)?;
        Ok(all.into_iter().fold(f64::INFINITY, f64::min))
    }

    /// Sums of `k` quantities over items split into blocks, independent of the number of ranks.
    ///
    /// `local` holds this rank's block partial sums (`k` values per block, its blocks in order);
    /// `blocks[r]` is the number of blocks of rank `r`. The partial sums of all blocks are gathered
    /// and added in block order, so the result is the same bits on every rank and for every way of
    /// dealing the blocks to ranks.
    ///
    /// ```
    /// use weightspace::comm::{Communicator, SingleProcess};
    /// // two blocks, two quantities each
    /// let s = SingleProcess.block_sums(&[1.0, 10.0, 2.0, 20.0], &[2], 2)?;
    /// assert_eq!(s, [3.0, 30.0]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    fn block_sums(&self, local: &[f64], blocks: &[usize], k: usize) -> Result<Vec<f64>> {
        let counts: Vec<usize> = blocks.iter().map(|b| b * k).collect();
        let mut all = vec![0.0; counts.iter().sum()];
        self.all_gather(local, &counts, &mut all)?;
        let mut sums = vec![0.0; k];
        for block in all.chunks(k.max(1)) {
            for (s, v) in sums.iter_mut().zip(block) {
                *s += v;
            }
        }
        Ok(sums)
    }
}

/// Checks that `counts` has one entry per rank, that this rank's entry is `local.len()` and (for
/// `out`) that they add up to `total`.
fn check_counts(rank: usize, size: usize, local: usize, counts: &[usize], total: Option<usize>) -> Result<()> {
    if counts.len() != size {
        return Err(Error::Communication { what: "counts".into(), reason: format!("{} entries for {size} ranks", counts.len()) });
    }
    if counts[rank] != local {
        return Err(Error::Communication {
            what: format!("rank {rank}'s values"),
            reason: format!("{local} values where counts says {}", counts[rank]),
        });
    }
    if let Some(total) = total {
        let sum: usize = counts.iter().sum();
        if sum != total {
            return Err(Error::Communication { what: "output buffer".into(), reason: format!("{total} slots for {sum} values") });
        }
    }
    Ok(())
}

/// One process: the collectives copy, and nothing is sent anywhere. What every algorithm uses
/// unless told otherwise.
///
/// ```
/// use weightspace::comm::{Communicator, SingleProcess};
/// assert!(SingleProcess.is_root());
/// assert_eq!(SingleProcess.all_max(2.5)?, 2.5);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        check_counts(0, 1, local.len(), counts, Some(out.len()))?;
        out.copy_from_slice(local);
        Ok(())
    }
    fn gather_to_root(&self, local: &[f64], counts: &[usize]) -> Result<Option<Vec<f64>>> {
        check_counts(0, 1, local.len(), counts, None)?;
        Ok(Some(local.to_vec()))
    }
    fn abort(&self, code: i32, message: &str) -> ! {
        eprintln!("{message}");
        std::process::exit(code)
    }
}

/// The contiguous share `lo..hi` of `n` items (blocks) that rank `rank` of `size` takes: the first
/// `n % size` ranks take one more.
pub(crate) fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (q, r) = (n / size, n % size);
    let lo = rank * q + rank.min(r);
    lo..lo + q + usize::from(rank < r)
}

#[cfg(feature = "mpi")]
pub use self::mpi_impl::Mpi;

#[cfg(feature = "mpi")]
mod mpi_impl {
    use super::{check_counts, Communicator};
    use crate::{Error, Result};
    use mpi::datatype::PartitionMut;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::Root;
    use mpi::Count;

    /// The ranks of an MPI job (`MPI_COMM_WORLD`), over the system's MPI library (the `mpi` feature).
    ///
    /// Start it once per process with [`Mpi::run`], which also turns an `Err` or a panic on any rank
    /// into a clean end of the whole job:
    ///
    /// ```no_run
    /// use weightspace::comm::{Communicator, Mpi};
    /// Mpi::run(|comm| {
    ///     println!("rank {} of {}", comm.rank(), comm.size());
    ///     Ok(())
    /// });
    /// ```
    pub struct Mpi {
        // `world` must go before `_universe` (fields drop in order; the universe finalises MPI)
        world: SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank(), self.size())
        }
    }

    fn counts_i32(counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>)> {
        let mut c = Vec::with_capacity(counts.len());
        let mut displs = Vec::with_capacity(counts.len());
        let mut at: usize = 0;
        for &n in counts {
            let (Ok(ci), Ok(di)) = (Count::try_from(n), Count::try_from(at)) else {
                return Err(Error::Communication { what: "counts".into(), reason: format!("{} values exceed MPI's int counts", at + n) });
            };
            c.push(ci);
            displs.push(di);
            at += n;
        }
        Ok((c, displs))
    }

    impl Mpi {
        /// Initialises MPI; `Err` when it is already initialised in this process.
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| Error::Communication {
                what: "MPI".into(),
                reason: "already initialised in this process (call Mpi::init once)".into(),
            })?;
            let world = universe.world();
            Ok(Self { world, _universe: universe })
        }

        /// Initialises MPI, runs `job` on this rank and ends the process. When `job` returns an
        /// `Err` or panics on any rank, that rank prints `rank r of n failed: …` and aborts the
        /// whole job (`MPI_Abort`, exit code 1), so no rank waits forever in a collective.
        pub fn run(job: impl FnOnce(&Mpi) -> Result<()>) {
            let comm = match Self::init() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("weightspace: {e}");
                    std::process::exit(1);
                }
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&comm)));
            let (rank, size) = (comm.rank(), comm.size());
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => comm.abort(1, &format!("weightspace: rank {rank} of {size} failed: {e}; aborting all ranks")),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    comm.abort(1, &format!("weightspace: rank {rank} of {size} panicked: {what}; aborting all ranks"))
                }
            }
        }
    }

    impl Communicator for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_gather(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
            check_counts(self.rank(), self.size(), local.len(), counts, Some(out.len()))?;
            let (c, displs) = counts_i32(counts)?;
            let mut partition = PartitionMut::new(out, c, &displs[..]);
            mpi::collective::CommunicatorCollectives::all_gather_varcount_into(&self.world, local, &mut partition);
            Ok(())
        }
        fn gather_to_root(&self, local: &[f64], counts: &[usize]) -> Result<Option<Vec<f64>>> {
            check_counts(self.rank(), self.size(), local.len(), counts, None)?;
            let root = self.world.process_at_rank(0);
            if self.is_root() {
                let (c, displs) = counts_i32(counts)?;
                let mut out = vec![0.0; counts.iter().sum()];
                let mut partition = PartitionMut::new(&mut out[..], c, &displs[..]);
                root.gather_varcount_into_root(local, &mut partition);
                Ok(Some(out))
            } else {
                root.gather_varcount_into(local);
                Ok(None)
            }
        }
        fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
            let local = values.to_vec();
            mpi::collective::CommunicatorCollectives::all_reduce_into(
                &self.world,
                &local[..],
                values,
                mpi::collective::SystemOperation::sum(),
            );
            Ok(())
        }
        fn abort(&self, code: i32, message: &str) -> ! {
            eprintln!("{message}");
            self.world.abort(code)
        }
    }
}
