//! Predictive draws at given inputs, kept whole (not summarised), for export to NumPy and ArviZ.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use crate::model::arch::LikelihoodSpec;
use crate::model::bnn::Bnn;
use crate::model::npz::Npz;
use crate::num::diagnostics::SummaryTable;
use crate::predict::predictive::{Predictive, WeightSource};
use crate::{Error, Real, Result};

/// Predictive draws at `points` inputs: the network output `f` and, for Gaussian likelihoods, an
/// observation `y = f + σ ε` per draw, each row-major with ArviZ's dimension order
/// `(chain, draw, point, output)`.
///
/// Independent draws (a mean-field guide, [`Predictive::draws`]) have one chain; MCMC draws
/// ([`SymMcmcRun::predictive_draws`](crate::mcmc::SymMcmcRun::predictive_draws)) keep their chains.
/// For classifiers `f` holds the logits (one column per class logit) and `y` is `None`.
///
/// ```
/// use weightspace::export::PredictiveDraws;
/// // 1 chain × 2 draws at 3 points, one output
/// let f = vec![0.0, 1.0, 2.0, 0.5, 1.5, 2.5];
/// let d = PredictiveDraws::new(1, 2, 3, 1, f.clone(), None)?;
/// assert_eq!(d.shape(), [1, 2, 3, 1]);
/// assert_eq!(d.f_at(0, 1, 2, 0), Some(2.5));
/// assert_eq!(d.f_at(0, 2, 0, 0), None);
/// let npz = d.to_npz()?;
/// assert_eq!(npz.names(), vec!["f"]);
/// assert_eq!(npz.shape("f"), Some(&[1usize, 2, 3, 1][..]));
/// assert!(PredictiveDraws::new(1, 2, 3, 1, vec![0.0; 5], None).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PredictiveDraws {
    /// Number of chains (1 for independent draws).
    pub chains: usize,
    /// Draws per chain.
    pub draws: usize,
    /// Number of input points.
    pub points: usize,
    /// Outputs per point (`d_out`).
    pub outputs: usize,
    /// Network outputs, row-major `(chain, draw, point, output)`.
    pub f: Vec<f64>,
    /// Observations `f + σ ε` (each draw with its own σ), same layout; `None` for classifiers or
    /// when noise was left out.
    pub y: Option<Vec<f64>>,
}

impl PredictiveDraws {
    /// Checks that `f` (and `y`) hold `chains · draws · points · outputs` values.
    pub fn new(chains: usize, draws: usize, points: usize, outputs: usize, f: Vec<f64>, y: Option<Vec<f64>>) -> Result<Self> {
        let len = chains * draws * points * outputs;
        for (what, v) in [("f", Some(&f)), ("y", y.as_ref())] {
            if let Some(v) = v {
                if v.len() != len {
                    return Err(Error::Shape {
                        what: format!("predictive draws `{what}`"),
                        expected: format!("(chain {chains}, draw {draws}, point {points}, output {outputs}) = {len} values"),
                        got: format!("{} values", v.len()),
                    });
                }
            }
        }
        Ok(Self { chains, draws, points, outputs, f, y })
    }

    /// `[chain, draw, point, output]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.chains, self.draws, self.points, self.outputs]
    }

    /// `f` at one index; `None` outside the shape.
    pub fn f_at(&self, chain: usize, draw: usize, point: usize, output: usize) -> Option<f64> {
        if chain >= self.chains || draw >= self.draws || point >= self.points || output >= self.outputs {
            return None;
        }
        self.f.get(((chain * self.draws + draw) * self.points + point) * self.outputs + output).copied()
    }

    /// The class probabilities of a classifier's draws, row-major `(chain, draw, point, class)`,
    /// and the number of classes: the softmax of each draw's logits when there are two or more
    /// outputs (Categorical), `[1 − σ(f), σ(f)]` for one output (Bernoulli). Feed them to
    /// [`mutual_information`](crate::metrics::mutual_information) with `S = chains · draws`.
    /// Only meaningful for classifiers: a regression's outputs are not logits.
    ///
    /// ```
    /// use weightspace::export::PredictiveDraws;
    /// use weightspace::metrics::mutual_information;
    /// // 1 chain × 2 draws at 1 point, 2 logits
    /// let d = PredictiveDraws::new(1, 2, 1, 2, vec![0.0, 0.0, 2f64.ln(), 0.0], None)?;
    /// let (p, k) = d.class_probabilities();
    /// assert_eq!(k, 2);
    /// assert!((p[0] - 0.5).abs() < 1e-15 && (p[2] - 2.0 / 3.0).abs() < 1e-15);
    /// let mi = mutual_information(&p, 2, 1, k)?;
    /// assert!(mi[0] > 0.0); // the draws disagree a little
    /// // a single Bernoulli logit: σ(0) = 1/2
    /// let (p, k) = PredictiveDraws::new(1, 1, 1, 1, vec![0.0], None)?.class_probabilities();
    /// assert_eq!((p, k), (vec![0.5, 0.5], 2));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn class_probabilities(&self) -> (Vec<f64>, usize) {
        if self.outputs == 1 {
            let p = self.f.iter().flat_map(|&z| {
                let p1 = 1.0 / (1.0 + (-z).exp());
                [1.0 - p1, p1]
            });
            return (p.collect(), 2);
        }
        let k = self.outputs.max(1);
        let mut p = Vec::with_capacity(self.f.len());
        for row in self.f.chunks(k) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let tot: f64 = row.iter().map(|v| (v - m).exp()).sum();
            p.extend(row.iter().map(|v| (v - m).exp() / tot));
        }
        (p, k)
    }

    /// The arrays `f` and (when present) `y`, shape `(chain, draw, point, output)`.
    pub fn to_npz(&self) -> Result<Npz> {
        let shape = self.shape();
        let mut npz = Npz::new();
        npz.add_f64("f", &shape, self.f.clone())?;
        if let Some(y) = &self.y {
            npz.add_f64("y", &shape, y.clone())?;
        }
        Ok(npz)
    }

    /// Writes [`to_npz`](Self::to_npz) to `path`, atomically. In Python,
    /// `az.from_dict(posterior_predictive=dict(np.load(path)))` gives an InferenceData whose
    /// `f` and `y` have dimensions `(chain, draw, f_dim_0, f_dim_1)`.
    ///
    /// ```
    /// use weightspace::export::PredictiveDraws;
    /// let d = PredictiveDraws::new(2, 1, 1, 1, vec![0.1, 0.2], Some(vec![0.3, 0.4]))?;
    /// let path = std::env::temp_dir().join(format!("weightspace_doc_pred_{}.npz", std::process::id()));
    /// d.write_npz(&path)?;
    /// assert!(path.exists());
    /// std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn write_npz(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.to_npz()?.write(path)
    }

    /// The `az.summary` table of the function values, one row per point and output, named as
    /// ArviZ names them: `f[point, output]`. Needs at least 6 draws per chain.
    ///
    /// ```
    /// use weightspace::export::PredictiveDraws;
    /// let f: Vec<f64> = (0..40).map(|t| ((t * 7) % 20) as f64).collect(); // 2 chains × 10 draws × 2 points
    /// let d = PredictiveDraws::new(2, 10, 2, 1, f, None)?;
    /// let table = d.summary()?;
    /// assert_eq!(table.rows.len(), 2);
    /// assert_eq!(table.rows[1].0, "f[1, 0]");
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn summary(&self) -> Result<SummaryTable> {
        let mut table = SummaryTable::new();
        for p in 0..self.points {
            for o in 0..self.outputs {
                let chains: Vec<Vec<f64>> =
                    (0..self.chains).map(|c| (0..self.draws).map(|t| self.f_at(c, t, p, o).unwrap_or(f64::NAN)).collect()).collect();
                table.push(format!("f[{p}, {o}]"), &chains)?;
            }
        }
        Ok(table)
    }
}

impl Predictive {
    /// Every predictive draw at inputs `x` `(N, d_in)` of the weights that `source` draws (a
    /// mean-field guide `&guide`, a BALI posterior, ...), kept whole: one chain of
    /// [`samples`](Predictive::samples) draws, computed in chunks of [`chunk`](Predictive::chunk).
    /// For Gaussian likelihoods `y` adds the model's noise (unless
    /// [`include_noise`](Predictive::include_noise) is off). Memory is `samples · N · d_out`
    /// values (twice that with `y`); [`run`](Predictive::run) streams summaries instead.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// #[bnn]
    /// struct Lin { #[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>, #[likelihood] noise: Gaussian<Fixed<0.5>> }
    /// let dev = Cpu::default();
    /// let model = Lin::<f64, Cpu>::new(&dev);
    /// let guide = model.mean_field();
    /// let x = dev.tensor_from_vec(vec![-1.0, 0.0, 1.0], (3usize, 1usize));
    /// let draws = Predictive::new(500).draws(&model, &guide, &x)?;
    /// assert_eq!(draws.shape(), [1, 500, 3, 1]);
    /// // y adds N(0, 0.5²) noise to f
    /// let var = |v: &[f64]| { let m = v.iter().sum::<f64>() / v.len() as f64; v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len() as f64 };
    /// let noise: Vec<f64> = draws.y.as_ref().unwrap().iter().zip(&draws.f).map(|(y, f)| y - f).collect();
    /// assert!((var(&noise) - 0.25).abs() < 0.05);
    /// let path = std::env::temp_dir().join(format!("weightspace_doc_draws_{}.npz", std::process::id()));
    /// draws.write_npz(&path)?;
    /// std::fs::remove_file(&path).ok();
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn draws<E: Real, D: Device<E>, M: Bnn<E, D>>(
        &self,
        model: &M,
        mut source: impl WeightSource<E, D>,
        x: &Tensor<(usize, usize), E, D>,
    ) -> Result<PredictiveDraws> {
        let arch = M::ARCH;
        crate::vi::network::check_input(arch, x)?;
        if self.samples == 0 {
            return Err(Error::config("Predictive::samples", 0, "at least one weight sample is needed"));
        }
        if self.chunk == 0 {
            return Err(Error::config("Predictive::chunk", 0, "must be >= 1"));
        }
        let (n, k) = (x.shape().0, arch.d_out());
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut f = Vec::with_capacity(self.samples * n * k);
        let mut seen = 0;
        while seen < self.samples {
            let c = self.chunk.min(self.samples - seen);
            let out = source.outputs(arch, c, x, &mut rng)?;
            f.extend(out.as_vec().iter().map(|v| v.cast_to_f64()));
            seen += c;
        }
        let sigma = crate::vi::likelihood::noise_value(&arch.likelihood, model.likelihood_params());
        let y = match (&arch.likelihood, sigma) {
            (LikelihoodSpec::Gaussian { .. }, Some(s)) if self.include_noise => {
                Some(f.iter().map(|v| v + s * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect())
            }
            _ => None,
        };
        PredictiveDraws::new(1, self.samples, n, k, f, y)
    }
}
