//! Layer 2, the model description: the runtime architecture ([`arch`]), the parameter views
//! ([`params`]), the [`Bnn`](bnn::Bnn) trait that `#[bnn]` implements and the weight-sample
//! container ([`bnn`]), datasets ([`data`]), host tables read from
//! CSV, ndarray or linfa ([`table`]), the UCI evaluation protocol ([`protocol`]) and checkpoints
//! ([`checkpoint`]).

pub mod arch;
pub mod bnn;
pub mod checkpoint;
pub mod data;
pub(crate) mod minibatch;
pub mod npz;
pub mod params;
pub mod protocol;
pub mod table;
