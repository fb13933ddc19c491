//! The one minibatch schedule of the library.
//!
//! **Rule.** Each epoch visits every point exactly once, in an order reshuffled at the start of the
//! epoch (the shuffle of epoch `e` comes from its own random stream, keyed by the run's seed and
//! `e`). An epoch is cut into batches of `batch` points in that order; when `batch` does not divide
//! `N`, the last batch of the epoch holds the remaining `N mod batch` points. Every batch is a
//! uniformly random subset of its size, so scaling its log-likelihood by `N / |B|` with its own
//! `|B|` keeps the estimate unbiased. Without a batch size, every batch is the whole dataset.

use crate::num::rng::{stream, Purpose};

/// An endless sequence of minibatches (row indices) over `n` points; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Minibatches {
    n: usize,
    batch: Option<usize>,
    seed: u64,
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
}

impl Minibatches {
    /// Batches of `batch` points (`None` or `batch ≥ n`: the whole dataset) over `n` points. The
    /// caller has checked `n ≥ 1` and `batch ≥ 1`.
    pub(crate) fn new(n: usize, batch: Option<usize>, seed: u64) -> Self {
        let batch = batch.filter(|&b| b < n);
        Self { n, batch, seed, order: (0..n).collect(), cursor: n, epoch: 0 }
    }

    /// How many batches make one epoch, or `None` when every batch is the whole dataset.
    pub(crate) fn batches_per_epoch(&self) -> Option<usize> {
        self.batch.map(|b| self.n.div_ceil(b))
    }

    /// The rows of the next batch, or `None` when every batch is the whole dataset.
    pub(crate) fn next_batch(&mut self) -> Option<&[usize]> {
        let b = self.batch?;
        if self.cursor >= self.n {
            use rand::seq::SliceRandom;
            self.order.sort_unstable();
            self.order.shuffle(&mut stream(self.seed, Purpose::Shuffle, &[self.epoch]));
            self.epoch += 1;
            self.cursor = 0;
        }
        let end = (self.cursor + b).min(self.n);
        let rows = &self.order[self.cursor..end];
        self.cursor = end;
        Some(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_every_point_once_and_keeps_the_partial_last_batch() {
        let mut mb = Minibatches::new(10, Some(4), 7);
        for _ in 0..3 {
            let sizes: Vec<usize> = (0..3).map(|_| mb.next_batch().map_or(0, <[usize]>::len)).collect();
            assert_eq!(sizes, [4, 4, 2]);
        }
        let mut mb = Minibatches::new(10, Some(4), 7);
        let mut seen: Vec<usize> = (0..3).flat_map(|_| mb.next_batch().map(<[usize]>::to_vec).unwrap_or_default()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // epochs are reshuffled
        let first: Vec<usize> = (0..3).flat_map(|_| mb.next_batch().map(<[usize]>::to_vec).unwrap_or_default()).collect();
        let second: Vec<usize> = (0..3).flat_map(|_| mb.next_batch().map(<[usize]>::to_vec).unwrap_or_default()).collect();
        assert_ne!(first, second);
    }

    #[test]
    fn no_batch_size_or_one_at_least_n_means_the_whole_dataset() {
        assert!(Minibatches::new(5, None, 0).next_batch().is_none());
        assert_eq!(Minibatches::new(5, None, 0).batches_per_epoch(), None);
        assert_eq!(Minibatches::new(10, Some(4), 0).batches_per_epoch(), Some(3));
        assert!(Minibatches::new(5, Some(5), 0).next_batch().is_none());
        assert!(Minibatches::new(5, Some(9), 0).next_batch().is_none());
    }
}
