//! SYM-MCMC: mapping weight samples to one representative per symmetry orbit.

use std::cmp::Ordering;

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::group::{FactorElement, GroupElement, SymmetryGroup};
use crate::model::arch::Architecture;
use crate::model::bnn::Weights;
use crate::num::dense::dot;
use crate::{Error, Real, Result};

/// How samples are canonicalised (see [`SymmetryGroup::canonicalise_batch`]).
///
/// ```
/// use weightspace::symmetry::{Canonicalisation, DataDrivenSettings};
/// assert_eq!(Canonicalisation::default(), Canonicalisation::Exact);
/// let paper = Canonicalisation::DataDriven(DataDrivenSettings::default()); // k = 1024, I = 256
/// # let _ = paper;
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Canonicalisation {
    /// The exact rule ([`SymmetryGroup::canonical_element`]): flip odd-activation units to a
    /// positive bias, then sort each hidden layer's units by bias. Per sample, deterministic,
    /// idempotent, and the same point for every member of an orbit (away from exact ties).
    #[default]
    Exact,
    /// The paper's data-driven variant over a whole batch: an unsupervised SVM hyperplane for the
    /// sign flips, then greedy k-NN relabelling for the permutations.
    DataDriven(DataDrivenSettings),
}

/// Similarity between neighbouring unit vectors in the k-NN graph.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{DataDrivenSettings, Similarity, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// assert_eq!(DataDrivenSettings::default().similarity, Similarity::Gaussian);
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let base = vec![1.0, 0.5, -2.0, 1.5, 0.3, -0.2, 0.7, -0.4, 0.9, 0.1];
/// let copies: Vec<Vec<f64>> = (0..20).map(|_| group.apply_flat(&group.random(&mut rng), &base).unwrap()).collect();
/// let settings = DataDrivenSettings { neighbours: 8, iterations: 16, similarity: Similarity::InverseDistance, ..Default::default() };
/// let c = group.canonicalise_batch(&copies, &Canonicalisation::DataDriven(settings))?;
/// // every output is its input moved by a group element, so the network function is unchanged
/// for ((out, g), input) in c.samples.iter().zip(&c.elements).zip(&copies) {
///     assert_eq!(group.apply_flat(g, input)?, *out);
/// }
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Similarity {
    /// `1 / distance` (the default of the paper's library code).
    InverseDistance,
    /// The RBF similarity `exp(−d² / (2h²))`, `h` the median k-NN distance: what the paper's
    /// experiments used, and the default.
    #[default]
    Gaussian,
}

/// Knobs of the data-driven canonicalisation (SYM-MCMC, Wiese et al. 2023, docs/methods.md §4).
///
/// Hidden layers are processed in reverse order. For each, the unit vectors are
/// `(b_i, W_l[i, :], W_{l+1}[:, i])` across all samples.
///
/// 1. **Sign flips** (odd activations): a hyperplane normal `n` minimising
///    `‖n‖ + C Σ max(0, 1 − |v·n|)` by minibatch subgradient descent from
///    [`svm_starts`](Self::svm_starts) random starts (`K_β`, the best objective wins); every unit
///    with `v·n < 0` is flipped.
/// 2. **Permutations**: the unit vectors are standardised per coordinate, and each is linked to its
///    `k` nearest neighbours. Labels start as the current positions; each iteration proposes new
///    labels for every sample by greedy assignment (the unit–label pair with the highest
///    neighbour-weighted label share first), and accepts the proposals of a random `accept` fraction
///    of the samples. Units are finally reordered by label.
///
/// With more than one hidden layer, the paper's reverse order reads layer `l`'s incoming weights
/// in the coordinates of layer `l − 1`, which are not yet aligned across samples; the unit vectors
/// of one unit then differ between samples and the relabelling can fail. So with more than one
/// hidden layer [`start_from_exact`](Self::start_from_exact) must be set (otherwise
/// [`SymmetryGroup::canonicalise_batch`] returns [`Error::InvalidConfig`]): the exact rule is
/// applied first, so every layer starts in aligned coordinates, and the data-driven steps then
/// repair what the exact rule gets wrong near ties (units with nearly equal biases, biases near
/// zero). With one hidden layer and the default `false`, this is the paper's procedure.
///
/// ```
/// use weightspace::symmetry::DataDrivenSettings;
/// let s = DataDrivenSettings { neighbours: 64, iterations: 32, ..Default::default() };
/// assert_eq!((s.svm_epochs, s.svm_starts), (32, 2));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DataDrivenSettings {
    /// `k`, neighbours per unit vector in the k-NN graph (capped at the number of other vectors).
    /// Default 1024.
    pub neighbours: usize,
    /// `I`, relabelling iterations. Default 256 (stops early once no label changes).
    pub iterations: usize,
    /// Fraction of samples whose proposed labels are accepted per iteration. Default 0.5.
    pub accept: f64,
    /// Similarity of neighbours. Default RBF ([`Similarity::Gaussian`]).
    pub similarity: Similarity,
    /// `K_β`, random starts of the hyperplane training; the lowest objective wins. Default 2.
    pub svm_starts: usize,
    /// Epochs of hyperplane training. Default 32.
    pub svm_epochs: usize,
    /// Minibatch size of hyperplane training. Default 16.
    pub svm_batch: usize,
    /// Initial learning rate of hyperplane training. Default 0.1.
    pub svm_lr: f64,
    /// Learning-rate decay per epoch. Default 0.8.
    pub svm_lr_decay: f64,
    /// Hinge weight `C`. Default 1.
    pub svm_c: f64,
    /// Apply the exact rule before the data-driven steps (see above). Default false (the paper).
    pub start_from_exact: bool,
    /// Seed (hyperplane initialisation, minibatches, acceptance).
    pub seed: u64,
}

impl Default for DataDrivenSettings {
    fn default() -> Self {
        Self {
            neighbours: 1024,
            iterations: 256,
            accept: 0.5,
            similarity: Similarity::Gaussian,
            svm_starts: 2,
            svm_epochs: 32,
            svm_batch: 16,
            svm_lr: 0.1,
            svm_lr_decay: 0.8,
            svm_c: 1.0,
            start_from_exact: false,
            seed: 0,
        }
    }
}

impl DataDrivenSettings {
    fn validate(&self) -> Result<()> {
        if self.neighbours == 0 {
            return Err(Error::config("DataDrivenSettings::neighbours", 0, "must be >= 1"));
        }
        if !(self.accept > 0.0 && self.accept <= 1.0) {
            return Err(Error::config("DataDrivenSettings::accept", self.accept, "must lie in (0, 1]"));
        }
        if self.svm_starts == 0 {
            return Err(Error::config("DataDrivenSettings::svm_starts", 0, "must be >= 1"));
        }
        if self.svm_batch == 0 {
            return Err(Error::config("DataDrivenSettings::svm_batch", 0, "must be >= 1"));
        }
        for (name, v) in [
            ("DataDrivenSettings::svm_lr", self.svm_lr),
            ("DataDrivenSettings::svm_lr_decay", self.svm_lr_decay),
            ("DataDrivenSettings::svm_c", self.svm_c),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, v, "must be finite and > 0"));
            }
        }
        Ok(())
    }
}

/// Canonicalised samples and the elements that produced them: `samples[s] = elements[s]·input[s]`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{Canonicalised, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
/// let base = vec![1.0, 0.5, -2.0, 1.5, 0.3, -0.2, 0.7, -0.4, 0.9, 0.1];
/// let copies: Vec<Vec<f64>> = (0..5).map(|_| group.apply_flat(&group.random(&mut rng), &base).unwrap()).collect();
/// let c: Canonicalised = group.canonicalise_batch(&copies, &Canonicalisation::Exact)?;
/// assert_eq!(c.elements.len(), 5);
/// // symmetric copies of one network share one canonical point
/// assert!(c.samples.iter().all(|s| group.canonicalise_flat(&base).unwrap() == *s));
/// assert_eq!(group.apply_flat(&c.elements[0], &copies[0])?, c.samples[0]);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Canonicalised {
    /// The canonical samples (flat layout of [`Weights::to_flat`]).
    pub samples: Vec<Vec<f64>>,
    /// One element per sample.
    pub elements: Vec<GroupElement>,
}

/// Offsets of each layer's `[W | b]` block in a flat sample.
fn offsets(arch: &Architecture) -> Vec<usize> {
    let mut v = Vec::with_capacity(arch.layers.len());
    let mut off = 0;
    for l in arch.layers {
        v.push(off);
        off += l.num_weights();
    }
    v
}

/// Mutable host view of one flat sample.
struct Net<'a> {
    arch: &'a Architecture,
    off: &'a [usize],
    w: &'a mut [f64],
}

impl Net<'_> {
    fn i1(&self, l: usize) -> usize {
        self.arch.layers[l].d_in + 1
    }
    fn row(&self, l: usize, r: usize) -> &[f64] {
        let i1 = self.i1(l);
        &self.w[self.off[l] + r * i1..self.off[l] + (r + 1) * i1]
    }
    fn bias(&self, l: usize, r: usize) -> f64 {
        let i1 = self.i1(l);
        self.w[self.off[l] + r * i1 + i1 - 1]
    }
    /// Column `c` of layer `l + 1`'s `W` (unit `c`'s outgoing weights).
    fn out_col(&self, l: usize, c: usize) -> Vec<f64> {
        let n1 = self.i1(l + 1);
        (0..self.arch.layers[l + 1].d_out).map(|r| self.w[self.off[l + 1] + r * n1 + c]).collect()
    }
    /// The unit vector `(b, incoming weights, outgoing weights)` of unit `u` of hidden layer `l`.
    fn unit_vector(&self, l: usize, u: usize) -> Vec<f64> {
        let row = self.row(l, u);
        let mut v = Vec::with_capacity(row.len() + self.arch.layers[l + 1].d_out);
        v.push(row[row.len() - 1]);
        v.extend_from_slice(&row[..row.len() - 1]);
        v.extend(self.out_col(l, u));
        v
    }
    /// Applies a factor action (new unit `p` = flip[p] · old unit perm[p]) to hidden layer `l`.
    fn act(&mut self, l: usize, fe: &FactorElement) {
        let i1 = self.i1(l);
        let n1 = self.i1(l + 1);
        let (a, b) = (self.off[l], self.off[l + 1]);
        let old_rows = self.w[a..a + fe.perm().len() * i1].to_vec();
        for (p, (&q, &s)) in fe.perm().iter().zip(fe.flips()).enumerate() {
            for c in 0..i1 {
                let v = old_rows[q * i1 + c];
                self.w[a + p * i1 + c] = if s { -v } else { v };
            }
        }
        for r in 0..self.arch.layers[l + 1].d_out {
            let old: Vec<f64> = self.w[b + r * n1..b + r * n1 + fe.perm().len()].to_vec();
            for (p, (&q, &s)) in fe.perm().iter().zip(fe.flips()).enumerate() {
                self.w[b + r * n1 + p] = if s { -old[q] } else { old[q] };
            }
        }
    }
}

/// Replaces factor `f` of `g` by `a ∘ g_f` (apply `g_f`, then `a`).
fn compose_factor(g: &mut GroupElement, group: &SymmetryGroup, f: usize, a: FactorElement) -> Result<()> {
    let mut perms: Vec<Vec<usize>> = group.factors().iter().map(|h| (0..h.width).collect()).collect();
    let mut flips: Vec<Vec<bool>> = group.factors().iter().map(|h| vec![false; h.width]).collect();
    perms[f] = a.perm().to_vec();
    flips[f] = a.flips().to_vec();
    let act = group.element(perms, flips)?;
    *g = act.compose(g)?;
    Ok(())
}

fn lex(a: &[f64], b: &[f64]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

impl SymmetryGroup {
    fn check_flat(&self, sample: &[f64]) -> Result<()> {
        let p = self.architecture().num_weights();
        if sample.len() != p {
            return Err(Error::Shape {
                what: "flat weight sample".into(),
                expected: format!("({p},)"),
                got: format!("({},)", sample.len()),
            });
        }
        crate::error::check_finite("flat weight sample", sample)
    }

    /// The element `g` that maps `sample` to its canonical representative under the exact rule.
    ///
    /// Hidden layers are processed in forward order (the order matters only for tie-breaks, which
    /// read the incoming weights in the already canonical coordinates of the previous layer). For
    /// each hidden layer:
    ///
    /// 1. **Signs** (odd activations only): a unit with `b < 0` is flipped. A unit with `b = 0`
    ///    exactly is flipped when its first non-zero incoming weight is negative, or, if all of
    ///    those are zero, when its first non-zero outgoing weight is negative.
    /// 2. **Order**: units are sorted by bias, ascending. Ties are broken by the incoming weights
    ///    (lexicographically), then by the sorted absolute outgoing weights, then by position
    ///    (a stable sort), so the result is always deterministic.
    ///
    /// The canonical point is the same for every member of an orbit whenever no two units of a
    /// layer tie on both bias and incoming weights, which holds for all but a measure-zero set.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// // rows (w, b) of the hidden layer, then (v1, v2, v3, c)
    /// let w = vec![1.0, 0.5, 2.0, -0.3, -1.0, 0.1, 0.7, 0.8, 0.9, 0.0];
    /// let g = group.canonical_element(&w)?;
    /// let c = group.apply_flat(&g, &w)?;
    /// // biases 0.5, 0.3 (flipped), 0.1 sorted ascending: units 2, 1 (flipped), 0
    /// assert_eq!(c, vec![-1.0, 0.1, -2.0, 0.3, 1.0, 0.5, 0.9, -0.8, 0.7, 0.0]);
    /// assert_eq!(group.canonicalise_flat(&c)?, c); // idempotent
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn canonical_element(&self, sample: &[f64]) -> Result<GroupElement> {
        self.check_flat(sample)?;
        let arch = *self.architecture();
        let off = offsets(&arch);
        let mut w = sample.to_vec();
        let mut g = self.identity();
        for (f, fac) in self.factors().iter().enumerate() {
            let l = fac.layer;
            let m = fac.width;
            let mut net = Net { arch: &arch, off: &off, w: &mut w };
            // 1. signs
            if fac.sign_flips {
                let flips: Vec<bool> = (0..m)
                    .map(|u| {
                        let b = net.bias(l, u);
                        if b != 0.0 {
                            return b < 0.0;
                        }
                        let row = net.row(l, u);
                        let first = row[..row.len() - 1]
                            .iter()
                            .find(|v| **v != 0.0)
                            .copied()
                            .or_else(|| net.out_col(l, u).into_iter().find(|v| *v != 0.0));
                        first.is_some_and(|v| v < 0.0)
                    })
                    .collect();
                if flips.iter().any(|x| *x) {
                    let a = self.factor_action(f, (0..m).collect(), flips)?;
                    net.act(l, &a);
                    compose_factor(&mut g, self, f, a)?;
                }
            }
            // 2. order
            let keys: Vec<(f64, Vec<f64>, Vec<f64>)> = (0..m)
                .map(|u| {
                    let row = net.row(l, u);
                    let mut out: Vec<f64> = net.out_col(l, u).iter().map(|v| v.abs()).collect();
                    out.sort_by(|a, b| a.total_cmp(b));
                    (row[row.len() - 1], row[..row.len() - 1].to_vec(), out)
                })
                .collect();
            let mut perm: Vec<usize> = (0..m).collect();
            perm.sort_by(|&a, &b| {
                keys[a].0.total_cmp(&keys[b].0).then_with(|| lex(&keys[a].1, &keys[b].1)).then_with(|| lex(&keys[a].2, &keys[b].2))
            });
            if perm.iter().enumerate().any(|(i, &p)| i != p) {
                let a = self.factor_action(f, perm, vec![false; m])?;
                net.act(l, &a);
                compose_factor(&mut g, self, f, a)?;
            }
        }
        Ok(g)
    }

    fn factor_action(&self, f: usize, perm: Vec<usize>, flips: Vec<bool>) -> Result<FactorElement> {
        let mut perms: Vec<Vec<usize>> = self.factors().iter().map(|h| (0..h.width).collect()).collect();
        let mut fl: Vec<Vec<bool>> = self.factors().iter().map(|h| vec![false; h.width]).collect();
        perms[f] = perm;
        fl[f] = flips;
        Ok(self.element(perms, fl)?.factors()[f].clone())
    }

    /// The canonical representative of one flat sample under the exact rule
    /// ([`SymmetryGroup::canonical_element`]).
    pub fn canonicalise_flat(&self, sample: &[f64]) -> Result<Vec<f64>> {
        let g = self.canonical_element(sample)?;
        self.apply_flat(&g, sample)
    }

    /// Canonicalises every sample of `weights` with the exact rule.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 4, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let w = model.sample_prior(8, &mut rng)?;
    /// let moved = group.apply(&group.random(&mut rng), w.clone())?;
    /// assert_eq!(group.canonicalise(&w)?.to_flat(), group.canonicalise(&moved)?.to_flat());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn canonicalise<E: Real, D: Device<E>>(&self, weights: &Weights<E, D>) -> Result<Weights<E, D>> {
        crate::model::bnn::check_weights(self.architecture(), weights)?;
        let elements = weights.to_flat().iter().map(|s| self.canonical_element(s)).collect::<Result<Vec<_>>>()?;
        self.apply_each(&elements, weights.clone())
    }

    /// Canonicalises a batch of flat samples with either rule, returning the samples and the
    /// elements used.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::{Canonicalisation, DataDrivenSettings, SymmetryGroup};
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let base = vec![1.0, 0.5, -2.0, 1.5, 0.3, -0.2, 0.7, -0.4, 0.9, 0.1];
    /// // 40 copies of one network, each moved by a random element
    /// let batch: Vec<Vec<f64>> = (0..40).map(|_| group.apply_flat(&group.random(&mut rng), &base).unwrap()).collect();
    /// let settings = DataDrivenSettings { neighbours: 16, iterations: 32, ..Default::default() };
    /// let out = group.canonicalise_batch(&batch, &Canonicalisation::DataDriven(settings))?;
    /// for (s, (c, g)) in out.samples.iter().zip(&out.elements).enumerate() {
    ///     assert_eq!(&group.apply_flat(g, &batch[s])?, c);
    /// }
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn canonicalise_batch(&self, samples: &[Vec<f64>], rule: &Canonicalisation) -> Result<Canonicalised> {
        if samples.is_empty() {
            return Err(Error::Empty { what: "weight samples".into() });
        }
        for s in samples {
            self.check_flat(s)?;
        }
        match rule {
            Canonicalisation::Exact => {
                let elements = samples.iter().map(|s| self.canonical_element(s)).collect::<Result<Vec<_>>>()?;
                let out = samples.iter().zip(&elements).map(|(s, g)| self.apply_flat(g, s)).collect::<Result<Vec<_>>>()?;
                Ok(Canonicalised { samples: out, elements })
            }
            Canonicalisation::DataDriven(settings) => self.data_driven(samples, settings),
        }
    }

    fn data_driven(&self, samples: &[Vec<f64>], st: &DataDrivenSettings) -> Result<Canonicalised> {
        st.validate()?;
        if self.factors().len() > 1 && !st.start_from_exact {
            return Err(Error::config(
                "DataDrivenSettings::start_from_exact",
                false,
                "must be true with more than one hidden layer: the reverse-order steps read unaligned coordinates otherwise",
            ));
        }
        let arch = *self.architecture();
        let off = offsets(&arch);
        let n = samples.len();
        let (mut w, mut elements) = if st.start_from_exact {
            let c = self.canonicalise_batch(samples, &Canonicalisation::Exact)?;
            (c.samples, c.elements)
        } else {
            (samples.to_vec(), vec![self.identity(); n])
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(st.seed);
        for (f, fac) in self.factors().iter().enumerate().rev() {
            let l = fac.layer;
            let m = fac.width;
            let vectors = |w: &mut Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                let mut v = Vec::with_capacity(n * m);
                for s in w.iter_mut() {
                    let net = Net { arch: &arch, off: &off, w: s };
                    v.extend((0..m).map(|u| net.unit_vector(l, u)));
                }
                v
            };
            // 1. sign flips by a separating hyperplane
            if fac.sign_flips {
                let v = vectors(&mut w);
                let normal = unsupervised_svm(&v, st, &mut rng);
                for (s, (ws, g)) in w.iter_mut().zip(elements.iter_mut()).enumerate() {
                    let flips: Vec<bool> = (0..m).map(|u| dot(&v[s * m + u], &normal) < 0.0).collect();
                    if flips.iter().any(|x| *x) {
                        let a = self.factor_action(f, (0..m).collect(), flips)?;
                        Net { arch: &arch, off: &off, w: ws }.act(l, &a);
                        compose_factor(g, self, f, a)?;
                    }
                }
            }
            // 2. permutations by greedy k-NN relabelling
            if m > 1 {
                let v = standardise(vectors(&mut w));
                let labels = knn_relabel(&v, n, m, st, &mut rng);
                for ((ws, g), lab) in w.iter_mut().zip(elements.iter_mut()).zip(&labels) {
                    // new position p takes the unit labelled p
                    let mut perm = vec![0; m];
                    for (u, &p) in lab.iter().enumerate() {
                        perm[p] = u;
                    }
                    if perm.iter().enumerate().any(|(i, &p)| i != p) {
                        let a = self.factor_action(f, perm, vec![false; m])?;
                        Net { arch: &arch, off: &off, w: ws }.act(l, &a);
                        compose_factor(g, self, f, a)?;
                    }
                }
            }
        }
        Ok(Canonicalised { samples: w, elements })
    }
}

/// The best of `st.svm_starts` runs of [`svm_from_random_start`] by the objective
/// `‖n‖ + C Σ max(0, 1 − |v·n|)`.
fn unsupervised_svm(v: &[Vec<f64>], st: &DataDrivenSettings, rng: &mut impl Rng) -> Vec<f64> {
    let objective = |n: &[f64]| dot(n, n).sqrt() + st.svm_c * v.iter().map(|x| (1.0 - dot(x, n).abs()).max(0.0)).sum::<f64>();
    let mut best = (f64::INFINITY, Vec::new());
    for _ in 0..st.svm_starts {
        let normal = svm_from_random_start(v, st, rng);
        let value = objective(&normal);
        if value < best.0 || best.1.is_empty() {
            best = (value, normal);
        }
    }
    best.1
}

/// Minimises `‖n‖ + C Σ max(0, 1 − |v·n|)` by minibatch subgradient descent from a random unit
/// normal.
fn svm_from_random_start(v: &[Vec<f64>], st: &DataDrivenSettings, rng: &mut impl Rng) -> Vec<f64> {
    let d = v[0].len();
    let mut normal: Vec<f64> = (0..d).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
    let norm = dot(&normal, &normal).sqrt().max(1e-300);
    normal.iter_mut().for_each(|x| *x /= norm);
    let mut order: Vec<usize> = (0..v.len()).collect();
    let mut lr = st.svm_lr;
    let batch = st.svm_batch.min(v.len());
    for _ in 0..st.svm_epochs {
        order.shuffle(rng);
        for chunk in order.chunks(batch) {
            if chunk.len() < batch {
                continue;
            }
            let norm = dot(&normal, &normal).sqrt().max(1e-12);
            let mut grad: Vec<f64> = normal.iter().map(|x| x / norm).collect();
            for &i in chunk {
                let m = dot(&v[i], &normal);
                if m.abs() < 1.0 {
                    let s = if m >= 0.0 { 1.0 } else { -1.0 };
                    grad.iter_mut().zip(&v[i]).for_each(|(g, x)| *g -= st.svm_c * s * x);
                }
            }
            normal.iter_mut().zip(&grad).for_each(|(n, g)| *n -= lr * g);
        }
        lr *= st.svm_lr_decay;
    }
    normal
}

/// Standardises every coordinate to mean 0 and sd 1 across vectors (constant coordinates are only
/// centred).
fn standardise(mut v: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = v.len() as f64;
    let d = v[0].len();
    for j in 0..d {
        let mean = v.iter().map(|x| x[j]).sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x[j] - mean).powi(2)).sum::<f64>() / n).sqrt();
        for x in v.iter_mut() {
            x[j] = if sd > 0.0 { (x[j] - mean) / sd } else { x[j] - mean };
        }
    }
    v
}

/// Greedy k-NN relabelling; returns one label permutation per sample (`labels[s][u]` is unit `u`'s
/// label).
fn knn_relabel(v: &[Vec<f64>], n: usize, m: usize, st: &DataDrivenSettings, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let total = v.len();
    let k = st.neighbours.min(total - 1);
    // the k-NN graph with similarities
    let mut graph: Vec<Vec<(u32, f64)>> = Vec::with_capacity(total);
    let mut dist: Vec<(f64, u32)> = Vec::with_capacity(total);
    for (i, a) in v.iter().enumerate() {
        dist.clear();
        dist.extend(
            v.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, b)| (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt(), j as u32)),
        );
        if k > 0 && k < dist.len() {
            dist.select_nth_unstable_by(k - 1, |x, y| x.0.total_cmp(&y.0));
            dist.truncate(k);
        }
        graph.push(dist.iter().map(|&(d, j)| (j, d)).collect());
    }
    let bandwidth = if st.similarity == Similarity::Gaussian {
        let mut all: Vec<f64> = graph.iter().flat_map(|g| g.iter().map(|e| e.1)).collect();
        if all.is_empty() {
            1.0
        } else {
            let mid = all.len() / 2;
            all.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
            all[mid].max(1e-12)
        }
    } else {
        1.0
    };
    for g in graph.iter_mut() {
        for e in g.iter_mut() {
            e.1 = match st.similarity {
                Similarity::InverseDistance => 1.0 / e.1.max(1e-12),
                Similarity::Gaussian => (-e.1 * e.1 / (2.0 * bandwidth * bandwidth)).exp(),
            };
        }
    }
    let mut labels: Vec<Vec<usize>> = vec![(0..m).collect(); n];
    let accept = ((st.accept * n as f64).round() as usize).clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut share = vec![0.0; m * m];
    for _ in 0..st.iterations {
        let mut proposals = labels.clone();
        let mut changed = false;
        for (s, prop) in proposals.iter_mut().enumerate() {
            // share[u * m + c]: the similarity-weighted fraction of unit u's neighbours labelled c
            share.iter_mut().for_each(|x| *x = 0.0);
            for u in 0..m {
                let row = &mut share[u * m..(u + 1) * m];
                for &(j, sim) in &graph[s * m + u] {
                    let j = j as usize;
                    row[labels[j / m][j % m]] += sim;
                }
                let tot: f64 = row.iter().sum();
                if tot > 0.0 {
                    row.iter_mut().for_each(|x| *x /= tot);
                }
            }
            let mut unit_free = vec![true; m];
            let mut label_free = vec![true; m];
            for _ in 0..m {
                let mut best = (f64::NEG_INFINITY, 0, 0);
                for u in (0..m).filter(|&u| unit_free[u]) {
                    for c in (0..m).filter(|&c| label_free[c]) {
                        if share[u * m + c] > best.0 {
                            best = (share[u * m + c], u, c);
                        }
                    }
                }
                let (_, u, c) = best;
                prop[u] = c;
                unit_free[u] = false;
                label_free[c] = false;
            }
            changed |= *prop != labels[s];
        }
        if !changed {
            break;
        }
        order.shuffle(rng);
        for &s in &order[..accept] {
            labels[s] = std::mem::take(&mut proposals[s]);
        }
    }
    labels
}
