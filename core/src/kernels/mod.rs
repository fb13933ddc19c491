//! Layer 1, the CPU kernels under the taped ops: activations ([`activation`]), the dense layer
//! over `S` weight samples ([`dense`]), small-matrix products ([`gemm`]), bulk normal draws
//! ([`normal`]), the fused mean-field pass and KL ([`mean_field`]), and the dtype hooks behind
//! [`Real`](crate::Real) (`hooks`). Kernels see shapes and buffers, never a model description.

pub(crate) mod activation;
pub(crate) mod dense;
pub(crate) mod gemm;
mod hooks;
pub(crate) mod mean_field;
pub(crate) mod normal;
