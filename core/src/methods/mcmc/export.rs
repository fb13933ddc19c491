//! [`SymMcmcRun`] out to NumPy and ArviZ: draws as `.npz` arrays in ArviZ's `(chain, draw, ...)`
//! order, the `az.summary` table of weights and of function values, and predictive draws.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::workflow::{SamplerReport, SymMcmcRun};
use crate::model::bnn::Bnn;
use crate::model::npz::Npz;
use crate::num::diagnostics::SummaryTable;
use crate::predict::draws::PredictiveDraws;
use crate::{Error, Real, Result};

/// Which draws of a [`SymMcmcRun`] to export: as sampled, or with canonicalised weights (the
/// symmetry-free reference set, where R-hat and ESS of single weights mean something).
///
/// ```
/// use weightspace::mcmc::DrawSet;
/// assert_ne!(DrawSet::Raw, DrawSet::Canonical);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrawSet {
    /// [`SymMcmcRun::draws`].
    Raw,
    /// [`SymMcmcRun::canonical`].
    Canonical,
}

impl SymMcmcRun {
    fn set(&self, which: DrawSet) -> &Vec<Vec<Vec<f64>>> {
        match which {
            DrawSet::Raw => &self.draws,
            DrawSet::Canonical => &self.canonical,
        }
    }

    fn dims(&self) -> (usize, usize) {
        (self.draws.len(), self.draws.first().map_or(0, Vec::len))
    }

    /// The draws as ArviZ `posterior` arrays: `w` of shape `(chain, draw, weight)` (the flat
    /// weight vector, layer by layer as [`Weights::to_flat`](crate::Weights::to_flat) orders it) and,
    /// when the noise is sampled, `log_sigma` of shape `(chain, draw)`. In Python,
    /// `az.from_dict(posterior=dict(np.load(path)))`.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{sym_mcmc, DrawSet, NoCanonicalisation, SymMcmcSettings};
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
    /// let run = sym_mcmc(&Lin::<f64, Cpu>::new(&dev), &data, &SymMcmcSettings { chains: 3, warmup: 50, draws_per_chain: 4, ..Default::default() }, &NoCanonicalisation)?;
    /// let npz = run.posterior_npz(DrawSet::Canonical)?;
    /// assert_eq!(npz.names(), vec!["w", "log_sigma"]);
    /// assert_eq!(npz.shape("w"), Some(&[3usize, 4, 2][..]));
    /// assert_eq!(npz.f64_values("log_sigma").unwrap()[5], run.canonical[1][1][2]); // chain 1, draw 1
    /// let path = std::env::temp_dir().join(format!("weightspace_doc_posterior_{}.npz", std::process::id()));
    /// npz.write(&path)?;
    /// std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn posterior_npz(&self, which: DrawSet) -> Result<Npz> {
        let (c, t) = self.dims();
        let p = self.num_weights;
        let draws = self.set(which);
        let mut npz = Npz::new();
        npz.add_f64("w", &[c, t, p], draws.iter().flatten().flat_map(|d| d[..p.min(d.len())].iter().copied()).collect())?;
        if self.samples_noise {
            npz.add_f64("log_sigma", &[c, t], draws.iter().flatten().map(|d| d.get(p).copied().unwrap_or(f64::NAN)).collect())?;
        }
        Ok(npz)
    }

    /// Per-draw sampler statistics as ArviZ `sample_stats` arrays of shape `(chain, draw)`:
    /// `step_size` (fixed after warm-up, so each chain's final step size) and, for the many-chain
    /// sampler, `lp`, the log density of each draw.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcSettings};
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
    /// let run = sym_mcmc(&Lin::<f64, Cpu>::new(&dev), &data, &SymMcmcSettings { chains: 2, warmup: 50, draws_per_chain: 3, ..Default::default() }, &NoCanonicalisation)?;
    /// let stats = run.sample_stats_npz()?;
    /// assert_eq!(stats.names(), vec!["step_size", "lp"]);
    /// assert_eq!(stats.shape("lp"), Some(&[2usize, 3][..]));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn sample_stats_npz(&self) -> Result<Npz> {
        let (c, t) = self.dims();
        let step: Vec<f64> = match &self.report {
            SamplerReport::ManyChain(mc) => mc.step_sizes.clone(),
            SamplerReport::Nuts(per) => per.iter().map(|p| p.2).collect(),
        };
        let mut npz = Npz::new();
        npz.add_f64("step_size", &[c, t], step.iter().flat_map(|s| std::iter::repeat_n(*s, t)).collect())?;
        if let SamplerReport::ManyChain(mc) = &self.report {
            npz.add_f64("lp", &[c, t], mc.logp.iter().flatten().copied().collect())?;
        }
        Ok(npz)
    }

    /// The `az.summary` table of the weights (and `ln σ`), one row per coordinate, named as
    /// ArviZ names the arrays of [`posterior_npz`](Self::posterior_npz): `w[0]`, `w[1]`, …,
    /// `log_sigma`. Needs at least 6 draws per chain. Raw weights of a network with symmetries
    /// mix poorly by construction; the canonical ones are the ones to judge.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{sym_mcmc, DrawSet, NoCanonicalisation, SymMcmcSettings};
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
    /// let y: Vec<f64> = x.iter().map(|v| 2.0 * v).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
    /// let settings = SymMcmcSettings { chains: 4, warmup: 300, draws_per_chain: 50, ..Default::default() };
    /// let run = sym_mcmc(&Lin::<f64, Cpu>::new(&dev), &data, &settings, &NoCanonicalisation)?;
    /// let table = run.weight_summary(DrawSet::Canonical)?;
    /// println!("{table}");
    /// let names: Vec<&str> = table.rows.iter().map(|(n, _)| n.as_str()).collect();
    /// assert_eq!(names, vec!["w[0]", "w[1]", "log_sigma"]);
    /// let slope = table.get("w[0]").unwrap();
    /// assert!(slope.hdi_lower < 2.0 && 2.0 < slope.hdi_upper);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn weight_summary(&self, which: DrawSet) -> Result<SummaryTable> {
        let draws = self.set(which);
        let dim = draws.first().and_then(|c| c.first()).map_or(0, Vec::len);
        let mut table = SummaryTable::new();
        for j in 0..dim {
            let chains: Vec<Vec<f64>> = draws.iter().map(|c| c.iter().map(|d| d[j]).collect()).collect();
            let name = if j < self.num_weights { format!("w[{j}]") } else { "log_sigma".to_string() };
            table.push(name, &chains)?;
        }
        Ok(table)
    }

    /// Predictive draws at inputs `x` `(N, d_in)`, one per MCMC draw, keeping the chains:
    /// `f` the network output of each (canonicalised; the function is the same) draw, and for
    /// Gaussian likelihoods `y = f + σ ε` with the draw's own σ, `ε` from `seed`. Its
    /// [`summary`](PredictiveDraws::summary) is the `az.summary` table of the function values.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::mcmc::{sym_mcmc, NoCanonicalisation, SymMcmcSettings};
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Learned<1.0>> }
    /// let dev = Cpu::default();
    /// let x: Vec<f64> = (0..10).map(|i| i as f64 / 5.0 - 1.0).collect();
    /// let data = Dataset::<f64, _>::regression(&dev, &x, 1, &x, 1)?;
    /// let model = Lin::<f64, Cpu>::new(&dev);
    /// let run = sym_mcmc(&model, &data, &SymMcmcSettings { chains: 2, warmup: 100, draws_per_chain: 8, ..Default::default() }, &NoCanonicalisation)?;
    /// let pred = run.predictive_draws(&model, &data.x, 0)?;
    /// assert_eq!(pred.shape(), [2, 8, 10, 1]);
    /// // f is w·x + b of each draw
    /// let d = &run.canonical[1][3];
    /// assert!((pred.f_at(1, 3, 9, 0).unwrap() - (d[0] * x[9] + d[1])).abs() < 1e-9);
    /// assert_eq!(pred.summary()?.rows.len(), 10);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn predictive_draws<E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &M,
        x: &Tensor<(usize, usize), E, D>,
        seed: u64,
    ) -> Result<PredictiveDraws> {
        let (c, t) = self.dims();
        if c == 0 || t == 0 {
            return Err(Error::Empty { what: "SymMcmcRun draws".into() });
        }
        let arch = M::ARCH;
        crate::vi::network::check_input(arch, x)?;
        let (n, k, p) = (x.shape().0, arch.d_out(), self.num_weights);
        let mut f = Vec::with_capacity(c * t * n * k);
        for chain in &self.canonical {
            let rows: Vec<Vec<f64>> = chain.iter().map(|d| d[..p.min(d.len())].to_vec()).collect();
            let w = crate::model::bnn::Weights::from_flat(model.device(), arch, &rows)?;
            let out = crate::vi::network::forward(arch, w, x)?;
            f.extend(out.as_vec().iter().map(|v| v.cast_to_f64()));
        }
        let own_sigma = crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params());
        let y = match own_sigma {
            Some(fixed) if !arch.likelihood.is_classification() => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let sigma = |d: &Vec<f64>| if self.samples_noise { d.get(p).map_or(fixed, |s| s.exp()) } else { fixed };
                let sigmas: Vec<f64> = self.canonical.iter().flatten().map(sigma).collect();
                let per = n * k;
                Some(f.iter().enumerate().map(|(i, v)| v + sigmas[i / per] * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect())
            }
            _ => None,
        };
        PredictiveDraws::new(c, t, n, k, f, y)
    }
}
