//! Layer 0, the numerics: the dtype bound [`Real`](crate::Real), host dense linear algebra, batched
//! linear algebra on the tape, special functions and MCMC diagnostics. Nothing here knows about
//! networks.

pub(crate) mod cast;
pub mod dense;
pub mod diagnostics;
pub mod linalg;
pub mod real;
pub(crate) mod rng;
pub mod special;

pub use real::Real;

/// A tensor on an owned tape: what every differentiable quantity in core is built from.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::dfdx::prelude::{Rank0, Rank1, SumTo};
/// use weightspace::Taped;
/// let dev = Cpu::default();
/// let w = dev.tensor([1.0f64, 2.0, 3.0]);
/// // a traced copy of `w`: operations on it are recorded for `backward`
/// let t: Taped<Rank1<3>, f64, Cpu> = w.leaky_trace();
/// let grads = t.square().sum::<Rank0, _>().backward();
/// assert_eq!(grads.get(&w).array(), [2.0, 4.0, 6.0]);
/// ```
pub type Taped<S, E, D> = dfdx::tensor::Tensor<S, E, D, dfdx::tensor::OwnedTape<E, D>>;

/// `requested` threads, or every core of this machine when `requested` is 0 (the crate's one
/// reading of the core count).
pub(crate) fn threads_or_all(requested: usize) -> usize {
    if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    }
}
