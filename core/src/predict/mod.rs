//! Layer 4, prediction: streamed prior and posterior predictive sampling ([`predictive`]),
//! metrics on predictions ([`metrics`]) and pictures ([`plot`]).

pub mod draws;
pub mod metrics;
pub mod plot;
pub mod predictive;
