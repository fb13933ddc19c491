//! Looking at samples in canonical space: distances and a simple mode count.

use dfdx::prelude::*;

use super::canonical::Canonicalisation;
use super::group::SymmetryGroup;
use crate::model::bnn::{Bnn, Weights};
use crate::vi::bnn_ext::BnnExt;
use crate::{Error, Real, Result};

/// Euclidean distance between two flat vectors of the same length.
///
/// ```
/// use weightspace::symmetry::distance;
/// assert_eq!(distance(&[0.0, 3.0], &[4.0, 0.0])?, 5.0);
/// assert!(distance(&[0.0], &[1.0, 2.0]).is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn distance(a: &[f64], b: &[f64]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(Error::Shape { what: "second vector".into(), expected: format!("({},)", a.len()), got: format!("({},)", b.len()) });
    }
    Ok(a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt())
}

impl SymmetryGroup {
    /// The distance between the canonical representatives (exact rule) of two flat samples: zero
    /// for two members of one orbit, so it measures how different two networks are once the
    /// symmetries are removed.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let a = vec![1.0, 0.5, 2.0, -0.3, -1.0, 0.1, 0.7, 0.8, 0.9, 0.0];
    /// let g = group.random(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5));
    /// let b = group.apply_flat(&g, &a)?;
    /// assert_eq!(group.canonical_distance(&a, &b)?, 0.0);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn canonical_distance(&self, a: &[f64], b: &[f64]) -> Result<f64> {
        distance(&self.canonicalise_flat(a)?, &self.canonicalise_flat(b)?)
    }

    /// `min_g ‖g·a − b‖`, the distance between the orbits of `a` and `b`, by enumerating `G`
    /// (tiny networks only). Never more than [`SymmetryGroup::canonical_distance`].
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let a = vec![1.0, 0.2, -1.0, 0.3, 0.5, 0.6, 0.0];
    /// let b = vec![1.0, -0.3, 1.0, 0.2, -0.6, 0.5, 0.1]; // units swapped, one flipped, c moved by 0.1
    /// assert!((group.orbit_distance(&a, &b)? - 0.1).abs() < 1e-12);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn orbit_distance(&self, a: &[f64], b: &[f64]) -> Result<f64> {
        let mut best = f64::INFINITY;
        for g in self.elements()? {
            best = best.min(distance(&self.apply_flat(&g, a)?, b)?);
        }
        Ok(best)
    }

    /// Canonicalises the samples with `rule`, then clusters them ([`cluster_modes`]).
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::{Canonicalisation, ModeSettings, SymmetryGroup};
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let base = vec![1.0, 0.5, -2.0, 1.5, 0.3, -0.2, 0.7, -0.4, 0.9, 0.1];
    /// let copies: Vec<Vec<f64>> = (0..30).map(|_| group.apply_flat(&group.random(&mut rng), &base).unwrap()).collect();
    /// let modes = group.count_modes(&copies, &Canonicalisation::Exact, &ModeSettings { threshold: 0.1, min_size: 1 })?;
    /// assert_eq!(modes.count(), 1); // 30 symmetric copies of one network are one mode
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn count_modes(&self, samples: &[Vec<f64>], rule: &Canonicalisation, settings: &ModeSettings) -> Result<Modes> {
        let c = self.canonicalise_batch(samples, rule)?;
        cluster_modes(&c.samples, settings)
    }
}

/// Settings of [`cluster_modes`].
///
/// ```
/// use weightspace::symmetry::{cluster_modes, ModeSettings};
/// assert_eq!(ModeSettings::default(), ModeSettings { threshold: 1.0, min_size: 1 });
/// let points = vec![vec![0.0], vec![0.3], vec![5.0], vec![5.2], vec![10.0]];
/// // three clusters at threshold 0.5; the singleton at 10 is too small to count with min_size 2
/// let modes = cluster_modes(&points, &ModeSettings { threshold: 0.5, min_size: 2 })?;
/// assert_eq!((modes.sizes.len(), modes.count()), (3, 2));
/// // a coarser threshold joins the first two
/// assert_eq!(cluster_modes(&points, &ModeSettings { threshold: 6.0, min_size: 1 })?.count(), 1);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeSettings {
    /// Two points closer than this (Euclidean) are in the same cluster (single linkage). Default 1.
    pub threshold: f64,
    /// Clusters smaller than this are not counted as modes by [`Modes::count`]. Default 1.
    pub min_size: usize,
}

impl Default for ModeSettings {
    fn default() -> Self {
        Self { threshold: 1.0, min_size: 1 }
    }
}

/// The result of [`cluster_modes`]: clusters numbered by decreasing size.
///
/// ```
/// use weightspace::symmetry::{cluster_modes, ModeSettings, Modes};
/// let points = vec![vec![0.0, 0.0], vec![5.0, 5.0], vec![0.1, 0.0], vec![0.0, 0.1]];
/// let modes: Modes = cluster_modes(&points, &ModeSettings { threshold: 1.0, min_size: 1 })?;
/// assert_eq!(modes.sizes, vec![3, 1]); // decreasing
/// assert_eq!(modes.labels, vec![0, 1, 0, 0]);
/// assert_eq!(modes.representatives[1], 1);
/// assert_eq!(modes.count(), 2);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Modes {
    /// Cluster of every point.
    pub labels: Vec<usize>,
    /// Size of every cluster, decreasing.
    pub sizes: Vec<usize>,
    /// For every cluster, the point closest to the cluster's mean.
    pub representatives: Vec<usize>,
    /// The `min_size` the clustering was asked for.
    pub min_size: usize,
}

impl Modes {
    /// Number of clusters with at least `min_size` points: the number of distinct modes seen.
    pub fn count(&self) -> usize {
        self.sizes.iter().filter(|&&s| s >= self.min_size).count()
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Single-linkage clustering: the connected components of the graph linking points closer than
/// `settings.threshold`. Meant for canonicalised weight samples (where symmetric copies coincide) or
/// for network outputs on probe inputs ([`function_points`]), whose clusters are the functionally
/// distinct modes. `O(n²)` distances.
///
/// ```
/// use weightspace::symmetry::{cluster_modes, ModeSettings};
/// let pts = vec![vec![0.0], vec![0.1], vec![5.0], vec![5.2], vec![5.1], vec![20.0]];
/// let m = cluster_modes(&pts, &ModeSettings { threshold: 0.5, min_size: 2 })?;
/// assert_eq!(m.sizes, vec![3, 2, 1]);
/// assert_eq!(m.count(), 2); // the singleton is not counted
/// assert_eq!(m.labels, vec![1, 1, 0, 0, 0, 2]);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn cluster_modes(points: &[Vec<f64>], settings: &ModeSettings) -> Result<Modes> {
    if points.is_empty() {
        return Err(Error::Empty { what: "points to cluster".into() });
    }
    if !(settings.threshold.is_finite() && settings.threshold >= 0.0) {
        return Err(Error::config("ModeSettings::threshold", settings.threshold, "must be finite and >= 0"));
    }
    let d = points[0].len();
    for (i, p) in points.iter().enumerate() {
        if p.len() != d {
            return Err(Error::Shape { what: format!("point {i}"), expected: format!("({d},)"), got: format!("({},)", p.len()) });
        }
        crate::error::check_finite(&format!("point {i}"), p)?;
    }
    let n = points.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let t2 = settings.threshold * settings.threshold;
    for i in 0..n {
        for j in i + 1..n {
            let d2: f64 = points[i].iter().zip(&points[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            if d2 < t2 {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    // number clusters by decreasing size (ties: first appearance)
    let roots: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    let mut size = vec![0usize; n];
    for &r in &roots {
        size[r] += 1;
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| roots[i] == i).collect();
    order.sort_by(|&a, &b| size[b].cmp(&size[a]).then(a.cmp(&b)));
    let mut id = vec![0usize; n];
    for (c, &r) in order.iter().enumerate() {
        id[r] = c;
    }
    let labels: Vec<usize> = roots.iter().map(|&r| id[r]).collect();
    let sizes: Vec<usize> = order.iter().map(|&r| size[r]).collect();
    let mut means = vec![vec![0.0; d]; sizes.len()];
    for (p, &c) in points.iter().zip(&labels) {
        means[c].iter_mut().zip(p).for_each(|(m, x)| *m += x / sizes[c] as f64);
    }
    let mut representatives = vec![usize::MAX; sizes.len()];
    let mut best = vec![f64::INFINITY; sizes.len()];
    for (i, (p, &c)) in points.iter().zip(&labels).enumerate() {
        let d2: f64 = p.iter().zip(&means[c]).map(|(a, b)| (a - b) * (a - b)).sum();
        if d2 < best[c] {
            best[c] = d2;
            representatives[c] = i;
        }
    }
    Ok(Modes { labels, sizes, representatives, min_size: settings.min_size })
}

/// The network outputs of every weight sample on probe inputs `x`, one flat `(N · d_out)` vector
/// per sample: points whose distances measure functional difference (use with [`cluster_modes`]).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{function_points, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let dev = Cpu::default();
/// let model = Net::<f64, Cpu>::new(&dev);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let w = model.sample_prior(2, &mut rng)?;
/// let x = dev.tensor_from_vec(vec![-1.0, 0.0, 1.0], (3usize, 1usize));
/// let pts = function_points(&model, &w, &x)?;
/// assert_eq!((pts.len(), pts[0].len()), (2, 3));
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn function_points<E: Real, D: Device<E>, M: Bnn<E, D>>(
    model: &M,
    weights: &Weights<E, D>,
    x: &Tensor<(usize, usize), E, D>,
) -> Result<Vec<Vec<f64>>> {
    let f = model.forward(weights.clone(), x)?;
    let (s, n, k) = *f.shape();
    let v: Vec<f64> = f.as_vec().iter().map(|v| v.cast_to_f64()).collect();
    Ok((0..s).map(|i| v[i * n * k..(i + 1) * n * k].to_vec()).collect())
}
