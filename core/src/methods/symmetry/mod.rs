//! Weight-space symmetry: the discrete symmetry group of a declared network, permutation-invariant
//! guides (SYM-VI) and canonicalisation of samples (SYM-MCMC).
//!
//! Permuting the units of a hidden layer (incoming weights, bias and outgoing weights together)
//! leaves the network function unchanged, and so does flipping the signs of a unit of an odd
//! activation (tanh, identity). [`SymmetryGroup::of`] derives this group from a model's declaration
//! (`M::ARCH`), with one factor per hidden layer; see [`SymmetryGroup`] for the symmetries of every
//! activation. With an invariant prior the posterior has `|G|` equivalent copies of every mode.
//!
//! * **The group**: `ln |G|`, uniform random elements, composition, inverses, enumeration of small
//!   groups, and actions on weight samples ([`SymmetryGroup::apply`], on the device and on the
//!   tape), on flat host vectors and on mean-field guide parameters.
//! * **SYM-VI** (Gelberg et al. 2024): the symmetrised guide `q^G = (1/|G|) Σ_g q(g⁻¹·)`
//!   ([`SymmetrisedGuide`]) and its objective ([`SymmetrisedElbo`], for
//!   [`crate::vi::fit::fit_objective`]) with the `I_K` bound or, for tiny networks, the exact
//!   information term.
//! * **SYM-MCMC** (Wiese et al. 2023): canonicalisation of samples by the exact rule or the
//!   data-driven one ([`Canonicalisation`]), distances in canonical space, and a mode count
//!   ([`cluster_modes`]).
//!
//! ```
//! use weightspace::prelude::*;
//! use weightspace::symmetry::{InfoBound, SymmetrisedElbo, SymmetrisedGuide, SymmetryGroup};
//!
//! #[bnn]
//! struct Net {
//!     #[layer(prior = Normal(0.0, 1.0))]
//!     hidden: Dense<1, 16, Tanh>,
//!     #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
//!     out: Dense<16, 1>,
//!     #[likelihood]
//!     noise: Gaussian<Fixed<0.1>>,
//! }
//!
//! let dev = Cpu::default();
//! let group = SymmetryGroup::of(Net::<f32, Cpu>::ARCH);
//! assert!((group.log_order() - (2.0922789888e13f64.ln() + 16.0 * 2f64.ln())).abs() < 1e-6); // 16!·2^16
//!
//! let x: Vec<f64> = (0..40).map(|i| i as f64 / 10.0 - 2.0).collect();
//! let y: Vec<f64> = x.iter().map(|x| x.sin()).collect();
//! let data = Dataset::regression(&dev, &x, 1, &y, 1)?;
//! let mut model = Net::<f32, Cpu>::new(&dev);
//! let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, ..Default::default() })?;
//! let mut objective = SymmetrisedElbo::new(group.clone(), InfoBound::Sampled { k: 16 });
//! fit_objective(&mut model, &mut guide, &data, &FitConfig { steps: 100, progress: false, ..Default::default() }, &mut objective)?;
//!
//! // predictions under q^G
//! let mut sym = SymmetrisedGuide::new(&group, &guide);
//! let pred = Predictive::new(200).run(&model, &mut sym, &data.x)?;
//! assert_eq!(pred.mean.len(), 40);
//! // samples in canonical space
//! let w = sym.sample::<f32, Cpu, _>(10, &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))?;
//! let canonical = group.canonicalise(&w)?;
//! assert_eq!(canonical.num_samples(), 10);
//! # Ok::<(), weightspace::Error>(())
//! ```

mod canonical;
mod group;
mod modes;
mod vi;

pub use canonical::{Canonicalisation, Canonicalised, DataDrivenSettings, Similarity};
pub use group::{Elements, FactorElement, GroupElement, HiddenFactor, SymmetryGroup, ENUMERATION_LIMIT};
pub use modes::{cluster_modes, distance, function_points, spectral_modes, ModeSettings, Modes, SpectralSettings};
pub use vi::{
    information, symmetrised_elbo, GuideLogDensity, InfoBound, InfoEstimate, SymmetrisedElbo, SymmetrisedEstimate, SymmetrisedGuide,
};
