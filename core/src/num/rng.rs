//! Independent random streams keyed by integers: a loop derives the generator of step `t` (or of
//! task `k` of step `t`, of epoch `e`, ...) from the run's seed and the key, instead of threading
//! one generator through everything. Two streams with different keys are independent, and a
//! stream does not depend on how many draws other streams made, so changing the batch size, the
//! number of tasks per step or the number of processes leaves every other stream as it was.

use rand::SeedableRng;

/// What a stream is for: the first word of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Purpose {
    /// The order of the data within an epoch.
    Shuffle = 1,
    /// Monte-Carlo noise of an objective's estimate.
    Noise = 2,
    /// The random initial state of a run.
    Init = 3,
    /// Drawing a task (and its context/target split) in meta-learning.
    Task = 4,
    /// The momenta and accept/reject draws of one MCMC chain (keyed by its global index).
    Transition = 5,
}

/// SplitMix64's finaliser: a bijection on `u64` that mixes every input bit into every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator of the stream `(purpose, key...)` of a run seeded with `seed`; `key` is, e.g.,
/// `[step]` or `[step, task]`.
pub(crate) fn stream(seed: u64, purpose: Purpose, key: &[u64]) -> rand::rngs::StdRng {
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    for &word in std::iter::once(&(purpose as u64)).chain(key) {
        h = mix(h.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ word);
    }
    rand::rngs::StdRng::seed_from_u64(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_differ_by_every_part_of_the_key_and_repeat_for_the_same_key() {
        let first = |seed, p, key: &[u64]| stream(seed, p, key).gen::<u64>();
        let a = first(1, Purpose::Noise, &[5, 2]);
        assert_eq!(a, first(1, Purpose::Noise, &[5, 2]));
        for other in [
            first(2, Purpose::Noise, &[5, 2]),
            first(1, Purpose::Shuffle, &[5, 2]),
            first(1, Purpose::Noise, &[6, 2]),
            first(1, Purpose::Noise, &[5, 3]),
            first(1, Purpose::Noise, &[2, 5]),
            first(1, Purpose::Noise, &[5]),
        ] {
            assert_ne!(a, other);
        }
    }
}
