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
pub type Taped<S, E, D> = dfdx::tensor::Tensor<S, E, D, dfdx::tensor::OwnedTape<E, D>>;
