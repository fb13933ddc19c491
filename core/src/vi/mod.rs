//! Layer 3, variational inference: priors ([`prior`]), likelihoods ([`likelihood`]), the batched
//! network pass ([`network`]), the mean-field guide ([`guide`]), ELBO estimators ([`elbo`]) and the
//! fitting loop ([`fit`]).

pub mod bnn_ext;
pub mod elbo;
pub mod fit;
pub mod guide;
pub mod likelihood;
pub mod network;
pub mod prior;
