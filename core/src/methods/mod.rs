//! Layer 5, the methods built on the layers below: BNNP ([`bnnp`]), BALI ([`bali`]), the
//! weight-space symmetry and SYM-VI ([`symmetry`]) and MCMC with SYM-MCMC ([`mcmc`]).

pub mod bali;
pub mod bnnp;
pub mod mcmc;
pub mod symmetry;
