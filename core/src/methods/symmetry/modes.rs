//! Looking at samples in canonical space: distances, and mode counts by threshold linkage or by
//! spectral clustering.

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
    if !(settings.threshold.is_finite() && settings.threshold >= 0.0) {
        return Err(Error::config("ModeSettings::threshold", settings.threshold, "must be finite and >= 0"));
    }
    check_points(points)?;
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
    let roots: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    Ok(modes_from_labels(points, &roots, settings.min_size))
}

/// `Err` for no points, points of different lengths, or non-finite coordinates.
fn check_points(points: &[Vec<f64>]) -> Result<()> {
    if points.is_empty() {
        return Err(Error::Empty { what: "points to cluster".into() });
    }
    let d = points[0].len();
    for (i, p) in points.iter().enumerate() {
        if p.len() != d {
            return Err(Error::Shape { what: format!("point {i}"), expected: format!("({d},)"), got: format!("({},)", p.len()) });
        }
        crate::error::check_finite(&format!("point {i}"), p)?;
    }
    Ok(())
}

/// [`Modes`] from any cluster ids below `points.len()`: clusters renumbered by decreasing size
/// (ties: first appearance), each with the point closest to its mean as representative.
fn modes_from_labels(points: &[Vec<f64>], raw: &[usize], min_size: usize) -> Modes {
    let n = points.len();
    let d = points[0].len();
    let mut size = vec![0usize; n];
    let mut first = vec![usize::MAX; n];
    for (i, &r) in raw.iter().enumerate() {
        size[r] += 1;
        first[r] = first[r].min(i);
    }
    let mut order: Vec<usize> = (0..n).filter(|&r| size[r] > 0).collect();
    order.sort_by(|&a, &b| size[b].cmp(&size[a]).then(first[a].cmp(&first[b])));
    let mut id = vec![0usize; n];
    for (c, &r) in order.iter().enumerate() {
        id[r] = c;
    }
    let labels: Vec<usize> = raw.iter().map(|&r| id[r]).collect();
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
    Modes { labels, sizes, representatives, min_size }
}

/// Settings of [`spectral_modes`].
///
/// ```
/// use weightspace::symmetry::SpectralSettings;
/// let s = SpectralSettings::default();
/// assert_eq!((s.max_clusters, s.bandwidth, s.min_size, s.restarts), (10, None, 1, 10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectralSettings {
    /// The largest number of clusters the eigengap rule may choose. Default 10.
    pub max_clusters: usize,
    /// Bandwidth `h` of the RBF affinity `exp(−d²/(2h²))`; `None` scales each pair by the points'
    /// own neighbourhoods instead (see [`spectral_modes`]). Default `None`.
    pub bandwidth: Option<f64>,
    /// Clusters smaller than this are not counted by [`Modes::count`]. Default 1.
    pub min_size: usize,
    /// k-means restarts (k-means++ starts; the lowest within-cluster sum of squares wins). Default 10.
    pub restarts: usize,
    /// Seed of the k-means starts.
    pub seed: u64,
}

impl Default for SpectralSettings {
    fn default() -> Self {
        Self { max_clusters: 10, bandwidth: None, min_size: 1, restarts: 10, seed: 0 }
    }
}

/// Spectral clustering (Ng, Jordan & Weiss 2001) with the number of clusters chosen by the
/// eigengap rule (von Luxburg 2007), the mode count of the SYM-MCMC paper's analysis.
///
/// The affinity is the RBF kernel `A_ij = exp(−‖p_i − p_j‖² / (2 σ_i σ_j))` (`A_ii = 0`), with
/// `σ_i = h` for a given bandwidth, or by default the self-tuning local scale of Zelnik-Manor &
/// Perona (2004): `σ_i` is the distance from `p_i` to its 7th nearest neighbour, so clusters of
/// different spreads and far-apart groups are both resolved. With degrees
/// `d_i = Σ_j A_ij`, the normalised Laplacian `L = I − D^{−1/2} A D^{−1/2}` has eigenvalues
/// `λ_1 ≤ λ_2 ≤ …`, and `K = argmax_{k ≤ max_clusters} (λ_{k+1} − λ_k)`. The rows of the `K`
/// leading eigenvectors, scaled to unit length, are clustered by k-means. Dense: `O(n³)` time and
/// `O(n²)` memory, so a few thousand points at most. When every distance is zero there is one
/// cluster.
///
/// ```
/// use weightspace::symmetry::{spectral_modes, SpectralSettings};
/// // three tight groups on a line
/// let points: Vec<Vec<f64>> = [0.0, 0.1, 0.2, 5.0, 5.1, 5.2, 5.3, 10.0, 10.1]
///     .iter().map(|&x| vec![x]).collect();
/// let modes = spectral_modes(&points, &SpectralSettings { bandwidth: Some(0.5), ..Default::default() })?;
/// assert_eq!(modes.count(), 3);
/// assert_eq!(modes.sizes, vec![4, 3, 2]);
/// assert_eq!(modes.labels, vec![1, 1, 1, 0, 0, 0, 0, 2, 2]);
/// # Ok::<(), weightspace::Error>(())
/// ```
pub fn spectral_modes(points: &[Vec<f64>], settings: &SpectralSettings) -> Result<Modes> {
    check_points(points)?;
    if settings.max_clusters == 0 {
        return Err(Error::config("SpectralSettings::max_clusters", 0, "must be >= 1"));
    }
    if settings.restarts == 0 {
        return Err(Error::config("SpectralSettings::restarts", 0, "must be >= 1"));
    }
    if let Some(h) = settings.bandwidth.filter(|h| !(h.is_finite() && *h > 0.0)) {
        return Err(Error::config("SpectralSettings::bandwidth", h, "must be finite and > 0"));
    }
    let n = points.len();
    let d2: Vec<f64> = (0..n * n).map(|k| squared_distance(&points[k / n], &points[k % n])).collect();
    let largest = d2.iter().fold(0.0f64, |m, &v| m.max(v)).sqrt();
    if n == 1 || largest == 0.0 {
        return Ok(modes_from_labels(points, &vec![0; n], settings.min_size));
    }
    // per-point scales: `h` for all, or the distance to the 7th nearest neighbour
    let sigma: Vec<f64> = match settings.bandwidth {
        Some(h) => vec![h; n],
        None => (0..n)
            .map(|i| {
                let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d2[i * n + j]).collect();
                let k = LOCAL_SCALE_NEIGHBOUR.min(n - 1) - 1;
                row.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1.sqrt().max(1e-12 * largest)
            })
            .collect(),
    };
    let mut a: Vec<f64> = d2.iter().enumerate().map(|(k, &v)| (-v / (2.0 * sigma[k / n] * sigma[k % n])).exp()).collect();
    (0..n).for_each(|i| a[i * n + i] = 0.0);
    let scale: Vec<f64> = (0..n).map(|i| 1.0 / a[i * n..(i + 1) * n].iter().sum::<f64>().max(f64::MIN_POSITIVE).sqrt()).collect();
    for (k, v) in a.iter_mut().enumerate() {
        *v *= scale[k / n] * scale[k % n];
    }
    let eig = crate::num::dense::Matrix::from_row_major(n, n, a)?.symmetric_eigen()?;
    // the Laplacian's eigenvalues ascending are 1 − μ for μ descending
    let lap: Vec<f64> = eig.values.iter().rev().map(|mu| 1.0 - mu).collect();
    let k_max = settings.max_clusters.min(n - 1);
    let k = (1..=k_max).max_by(|&a, &b| (lap[a] - lap[a - 1]).total_cmp(&(lap[b] - lap[b - 1])).then(b.cmp(&a))).unwrap_or(1);
    let embedding: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let row: Vec<f64> = (0..k).map(|c| eig.vectors[(i, n - 1 - c)]).collect();
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            row.iter().map(|v| v / norm).collect()
        })
        .collect();
    let labels = kmeans(&embedding, k, settings);
    Ok(modes_from_labels(points, &labels, settings.min_size))
}

/// The neighbour whose distance is a point's local scale in [`spectral_modes`] (Zelnik-Manor &
/// Perona's choice).
const LOCAL_SCALE_NEIGHBOUR: usize = 7;

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Lloyd's k-means from `settings.restarts` k-means++ starts; the labels of the lowest
/// within-cluster sum of squares.
fn kmeans(points: &[Vec<f64>], k: usize, settings: &SpectralSettings) -> Vec<usize> {
    use crate::num::rng::{stream, Purpose};
    use rand::Rng;
    let n = points.len();
    let mut best = (f64::INFINITY, vec![0; n]);
    for restart in 0..settings.restarts {
        let mut rng = stream(settings.seed, Purpose::Init, &[restart as u64]);
        let mut centres = vec![points[rng.gen_range(0..n)].clone()];
        while centres.len() < k {
            let w: Vec<f64> = points.iter().map(|p| centres.iter().map(|c| squared_distance(p, c)).fold(f64::INFINITY, f64::min)).collect();
            let total: f64 = w.iter().sum();
            if total <= 0.0 {
                break; // fewer distinct points than clusters
            }
            let mut u = rng.gen_range(0.0..total);
            let pick = w.iter().position(|&wi| {
                u -= wi;
                u < 0.0
            });
            centres.push(points[pick.unwrap_or(n - 1)].clone());
        }
        let mut labels = vec![0; n];
        for _ in 0..300 {
            let next: Vec<usize> = points
                .iter()
                .map(|p| {
                    (0..centres.len())
                        .min_by(|&a, &b| squared_distance(p, &centres[a]).total_cmp(&squared_distance(p, &centres[b])))
                        .unwrap_or(0)
                })
                .collect();
            let changed = next != labels;
            labels = next;
            for (c, centre) in centres.iter_mut().enumerate() {
                let members: Vec<&Vec<f64>> = points.iter().zip(&labels).filter(|&(_, &l)| l == c).map(|(p, _)| p).collect();
                if !members.is_empty() {
                    for (j, x) in centre.iter_mut().enumerate() {
                        *x = members.iter().map(|p| p[j]).sum::<f64>() / members.len() as f64;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let inertia: f64 = points.iter().zip(&labels).map(|(p, &l)| squared_distance(p, &centres[l])).sum();
        if inertia < best.0 {
            best = (inertia, labels);
        }
    }
    best.1
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
