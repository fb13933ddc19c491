//! Several ranks in one process, for testing data-parallel code without MPI: [`on_threads`] runs a
//! closure on `size` threads, each with its own [`ThreadRanks`] communicator, whose collectives
//! exchange values through shared memory. The ranks see exactly what MPI ranks would see (the same
//! collectives, in rank order), so a test can check that an algorithm gives the same answer on 1,
//! 2 or 3 ranks on any machine. A rank that ends (returns or panics) while others wait in a
//! collective makes their collective fail with [`Error::Communication`] instead of hanging.
//!
//! ```
//! use weightspace::comm::Communicator;
//! use weightspace::testing::ranks::on_threads;
//! let sums = on_threads(3, |comm| {
//!     let mut v = [comm.rank() as f64, 1.0];
//!     comm.all_reduce_sum(&mut v)?;
//!     Ok(v)
//! });
//! for s in sums {
//!     assert_eq!(s?, [0.0 + 1.0 + 2.0, 3.0]);
//! }
//! # Ok::<(), weightspace::Error>(())
//! ```

use std::sync::{Condvar, Mutex};

use crate::communicator::Communicator;
use crate::{Error, Result};

/// What the ranks share: the slots of the current collective and a generation-counting barrier.
struct Shared {
    state: Mutex<State>,
    turn: Condvar,
}

struct State {
    slots: Vec<Vec<f64>>,
    arrived: usize,
    generation: u64,
    /// Ranks whose closure has ended.
    departed: usize,
}

/// One rank of an [`on_threads`] job: a [`Communicator`] over threads of this process. It keeps a
/// log of every all-gather's result ([`gathered`](Self::gathered)), so a test can look at what
/// was exchanged (summed gradients, reduced statistics).
///
/// ```
/// use weightspace::comm::Communicator;
/// use weightspace::testing::ranks::on_threads;
/// let logs = on_threads(2, |comm| {
///     let mut out = vec![0.0; 2];
///     comm.all_gather(&[10.0 * comm.rank() as f64], &[1, 1], &mut out)?;
///     Ok(comm.gathered())
/// });
/// assert_eq!(logs[1].as_ref().unwrap(), &vec![vec![0.0, 10.0]]);
/// ```
pub struct ThreadRanks<'s> {
    rank: usize,
    size: usize,
    shared: &'s Shared,
    log: std::cell::RefCell<Vec<Vec<f64>>>,
}

impl ThreadRanks<'_> {
    /// Every all-gather result of this rank so far (all ranks' values, in rank order), oldest first.
    pub fn gathered(&self) -> Vec<Vec<f64>> {
        self.log.borrow().clone()
    }

    /// Waits until every rank has arrived; fails if a rank has left the job.
    fn barrier(&self) -> Result<()> {
        let left = || Error::Communication {
            what: format!("rank {} of {}", self.rank, self.size),
            reason: "another rank left the job while this one waited in a collective".into(),
        };
        let mut st = self.shared.state.lock().map_err(|_| left())?;
        if st.departed > 0 {
            return Err(left());
        }
        st.arrived += 1;
        if st.arrived == self.size {
            st.arrived = 0;
            st.generation += 1;
            self.shared.turn.notify_all();
            return Ok(());
        }
        let generation = st.generation;
        loop {
            st = self.shared.turn.wait(st).map_err(|_| left())?;
            if st.generation != generation {
                return Ok(());
            }
            if st.departed > 0 {
                return Err(left());
            }
        }
    }
}

impl Communicator for ThreadRanks<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        if counts.len() != self.size || counts[self.rank] != local.len() || counts.iter().sum::<usize>() != out.len() {
            return Err(Error::Communication {
                what: format!("rank {}'s all-gather", self.rank),
                reason: format!("{} values, counts {counts:?}, {} output slots", local.len(), out.len()),
            });
        }
        self.shared.state.lock().map_err(|_| self.poisoned())?.slots[self.rank] = local.to_vec();
        self.barrier()?;
        let all: Vec<f64> = self.shared.state.lock().map_err(|_| self.poisoned())?.slots.concat();
        // nobody overwrites a slot before every rank has read them all
        self.barrier()?;
        if all.len() != out.len() {
            return Err(Error::Communication {
                what: format!("rank {}'s all-gather", self.rank),
                reason: "the ranks' counts differ".into(),
            });
        }
        out.copy_from_slice(&all);
        self.log.borrow_mut().push(all);
        Ok(())
    }

    fn gather_to_root(&self, local: &[f64], counts: &[usize]) -> Result<Option<Vec<f64>>> {
        let mut out = vec![0.0; counts.iter().sum()];
        self.all_gather(local, counts, &mut out)?;
        Ok((self.rank == 0).then_some(out))
    }

    /// Panics with `message` (ending this rank's thread; the others' collectives then fail).
    fn abort(&self, _code: i32, message: &str) -> ! {
        panic!("{message}")
    }
}

impl ThreadRanks<'_> {
    fn poisoned(&self) -> Error {
        Error::Communication { what: format!("rank {}", self.rank), reason: "a rank panicked while holding the shared state".into() }
    }
}

/// Runs `job` on `size` ranks, one thread each, and returns every rank's result in rank order. A
/// rank that panics gives `Err(Error::Communication)` naming it (the panic does not propagate).
///
/// ```
/// use weightspace::comm::Communicator;
/// use weightspace::testing::ranks::on_threads;
/// // a rank that fails does not leave the others waiting
/// let results = on_threads(2, |comm| {
///     if comm.rank() == 1 {
///         return Err(weightspace::Error::NonFinite { what: "on purpose".into(), index: 0 });
///     }
///     comm.all_max(1.0)
/// });
/// assert!(results.iter().all(|r| r.is_err()));
/// ```
pub fn on_threads<R: Send>(size: usize, job: impl Fn(&ThreadRanks<'_>) -> Result<R> + Sync) -> Vec<Result<R>> {
    let size = size.max(1);
    let shared =
        Shared { state: Mutex::new(State { slots: vec![Vec::new(); size], arrived: 0, generation: 0, departed: 0 }), turn: Condvar::new() };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let (shared, job) = (&shared, &job);
                s.spawn(move || {
                    let comm = ThreadRanks { rank, size, shared, log: Default::default() };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&comm)));
                    if let Ok(mut st) = shared.state.lock() {
                        st.departed += 1;
                    }
                    shared.turn.notify_all();
                    result.unwrap_or_else(|panic| {
                        let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                        Err(Error::Communication {
                            what: format!("rank {rank} of {size}"),
                            reason: format!("panicked: {}", msg.unwrap_or_default()),
                        })
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Communication { what: "a rank".into(), reason: "its thread panicked".into() })))
            .collect()
    })
}
