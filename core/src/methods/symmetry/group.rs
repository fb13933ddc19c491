//! The discrete weight-space symmetry group of a declared network and its actions.

use std::fmt;

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::model::arch::{Activation, Architecture};
use crate::model::bnn::{Bnn, MeanFieldGuide, Weights};
use crate::model::params::NormalView;
use crate::{Error, Real, Result};

/// The largest group [`SymmetryGroup::elements`] enumerates (2²⁰ elements).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{SymmetryGroup, ENUMERATION_LIMIT};
/// #[bnn]
/// struct Small { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// #[bnn]
/// struct Wide { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 16, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<16, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let small = SymmetryGroup::of(Small::<f64, Cpu>::ARCH);
/// assert!(small.order().unwrap() <= ENUMERATION_LIMIT); // 3! · 2³ = 48
/// assert_eq!(small.elements()?.count(), 48);
/// let wide = SymmetryGroup::of(Wide::<f64, Cpu>::ARCH);
/// assert!(wide.order().unwrap() > ENUMERATION_LIMIT); // 16! · 2¹⁶
/// assert!(wide.elements().is_err());
/// # Ok::<(), weightspace::Error>(())
/// ```
pub const ENUMERATION_LIMIT: u128 = 1 << 20;

/// One hidden layer's factor of the group: the permutations of its units, and per-unit sign flips
/// when its activation is odd.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::SymmetryGroup;
/// #[bnn]
/// struct Net {
///     #[layer(prior = Normal(0.0, 1.0))] hidden: Dense<1, 3, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>,
///     #[likelihood] noise: Gaussian<Fixed<0.1>>,
/// }
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let f = group.factors()[0];
/// assert_eq!((f.layer, f.name, f.width, f.sign_flips), (0, "hidden", 3, true));
/// assert_eq!(f.order(), Some(48)); // 3! · 2³
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiddenFactor {
    /// Index of the hidden layer in [`Architecture::layers`]. The factor permutes the rows of this
    /// layer's `[W | b]` and the columns of the next layer's `W`.
    pub layer: usize,
    /// The layer's field name.
    pub name: &'static str,
    /// Number of units `M`.
    pub width: usize,
    /// The layer's activation.
    pub activation: Activation,
    /// Whether per-unit sign flips are included (odd activations: tanh, identity).
    pub sign_flips: bool,
}

impl HiddenFactor {
    /// `ln(M! · 2^M)` with sign flips, else `ln M!`.
    pub fn log_order(&self) -> f64 {
        let perms = crate::num::special::ln_gamma(self.width as f64 + 1.0);
        if self.sign_flips {
            perms + self.width as f64 * std::f64::consts::LN_2
        } else {
            perms
        }
    }

    /// `M! · 2^M` (or `M!`), if it fits in a `u128`.
    pub fn order(&self) -> Option<u128> {
        let mut n: u128 = 1;
        for k in 2..=self.width as u128 {
            n = n.checked_mul(k)?;
        }
        if self.sign_flips {
            n = n.checked_mul(1u128.checked_shl(self.width as u32).filter(|_| self.width < 128)?)?;
        }
        Some(n)
    }
}

/// The part of a [`GroupElement`] that acts on one hidden layer.
///
/// Unit `p` of the transformed network is unit `perm[p]` of the original one, with its incoming
/// weights, bias and outgoing weights negated when `flips[p]`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::SymmetryGroup;
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let g = group.element(vec![vec![2, 0, 1]], vec![vec![true, false, false]])?;
/// let f = &g.factors()[0];
/// assert_eq!((f.perm(), f.flips()), (&[2, 0, 1][..], &[true, false, false][..]));
/// assert_eq!(g.to_string(), "[-2 0 1]");
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FactorElement {
    perm: Vec<usize>,
    flips: Vec<bool>,
}

impl FactorElement {
    fn identity(width: usize) -> Self {
        Self { perm: (0..width).collect(), flips: vec![false; width] }
    }
    /// `perm[p]`: the original unit that lands at position `p`.
    pub fn perm(&self) -> &[usize] {
        &self.perm
    }
    /// `flips[p]`: whether the unit at position `p` is sign-flipped.
    pub fn flips(&self) -> &[bool] {
        &self.flips
    }
}

/// An element of a [`SymmetryGroup`]: one permutation (and sign-flip mask) per hidden layer.
///
/// Its action on a weight vector `ω` is written `g·ω`. For hidden layer `l` with permutation `π` and
/// flips `s`, unit `p` of `g·ω` is `s_p` times unit `π(p)` of `ω`: row `p` of `[W_l | b_l]` is
/// `s_p` times row `π(p)`, and column `p` of `W_{l+1}` is `s_p` times column `π(p)`. The network
/// function is unchanged: `f(g·ω) = f(ω)`.
///
/// Composition follows the action: `g.compose(&h)` is the element `gh` with `(gh)·ω = g·(h·ω)`.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::SymmetryGroup;
/// #[bnn]
/// struct Net {
///     #[layer(prior = Normal(0.0, 1.0))] hidden: Dense<1, 4, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))] out: Dense<4, 1>,
///     #[likelihood] noise: Gaussian<Fixed<0.1>>,
/// }
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let (g, h) = (group.random(&mut rng), group.random(&mut rng));
/// assert!(g.compose(&g.inverse())?.is_identity());
/// // composition is the action of h, then of g
/// let w: Vec<f64> = (0..group.architecture().num_weights()).map(|i| i as f64).collect();
/// let gh = g.compose(&h)?;
/// assert_eq!(group.apply_flat(&gh, &w)?, group.apply_flat(&g, &group.apply_flat(&h, &w)?)?);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupElement {
    factors: Vec<FactorElement>,
}

impl GroupElement {
    /// The per-layer parts, in layer order.
    pub fn factors(&self) -> &[FactorElement] {
        &self.factors
    }

    /// Whether this is the identity.
    pub fn is_identity(&self) -> bool {
        self.factors.iter().all(|f| f.flips.iter().all(|x| !x) && f.perm.iter().enumerate().all(|(i, &p)| i == p))
    }

    /// The element `gh` (apply `other` first, then `self`). Errors when the two elements belong to
    /// groups of different shapes.
    pub fn compose(&self, other: &GroupElement) -> Result<GroupElement> {
        let widths = |g: &GroupElement| g.factors.iter().map(|f| f.perm.len()).collect::<Vec<_>>();
        if widths(self) != widths(other) {
            return Err(Error::Shape {
                what: "group element (hidden widths)".into(),
                expected: format!("{:?}", widths(self)),
                got: format!("{:?}", widths(other)),
            });
        }
        let factors = self
            .factors
            .iter()
            .zip(&other.factors)
            .map(|(g, h)| FactorElement {
                perm: g.perm.iter().map(|&p| h.perm[p]).collect(),
                flips: g.flips.iter().zip(&g.perm).map(|(&s, &p)| s ^ h.flips[p]).collect(),
            })
            .collect();
        Ok(GroupElement { factors })
    }

    /// The inverse element: `g.compose(&g.inverse())` is the identity.
    pub fn inverse(&self) -> GroupElement {
        let factors = self
            .factors
            .iter()
            .map(|f| {
                let mut perm = vec![0; f.perm.len()];
                for (p, &q) in f.perm.iter().enumerate() {
                    perm[q] = p;
                }
                let flips = perm.iter().map(|&q| f.flips[q]).collect();
                FactorElement { perm, flips }
            })
            .collect();
        GroupElement { factors }
    }
}

impl fmt::Display for GroupElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (l, fe) in self.factors.iter().enumerate() {
            if l > 0 {
                f.write_str(" × ")?;
            }
            f.write_str("[")?;
            for (p, (&q, &s)) in fe.perm.iter().zip(&fe.flips).enumerate() {
                if p > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{}{}", if s { "-" } else { "" }, q)?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// Where each entry of a layer's `[W | b]` comes from under an element: `out[p] = ±in[src[p]]`.
#[derive(Debug, Clone)]
pub(crate) struct LayerMap {
    pub src: Vec<usize>,
    pub neg: Vec<bool>,
}

impl LayerMap {
    pub fn any_neg(&self) -> bool {
        self.neg.iter().any(|&n| n)
    }
}

/// The discrete symmetry group of a network's weights: `G = Π_l (S_{M_l} ⋉ {±1}^{M_l})`, one factor
/// per hidden layer, derived from the declaration (`M::ARCH`).
///
/// * Every hidden layer contributes the permutations of its `M_l` units. A permutation moves the
///   rows of `[W_l | b_l]` and the columns of `W_{l+1}` together.
/// * A hidden layer with an **odd** activation also contributes per-unit sign flips: negating a
///   unit's incoming weights, bias and outgoing weights.
///
/// Which symmetries each activation has:
///
/// | activation | permutations | sign flips | other exact symmetries (not in `G`) |
/// | --- | --- | --- | --- |
/// | `Tanh` | yes | yes: `tanh(−z) = −tanh z` | none |
/// | `Identity` | yes | yes | the whole continuous group `GL(M)` (a linear layer can be re-parameterised by any invertible matrix) |
/// | `Relu` | yes | no | positive rescaling `(w, b, v) → (αw, αb, v/α)`, continuous, out of scope |
/// | `Sigmoid` | yes | no | an *affine* flip: `σ(−z) = 1 − σ(z)`, so flipping a unit and moving `v` into the next bias is exact; it shifts the next bias, so it is not an action of this kind and is left out |
/// | `Softplus`, `Silu`, `Gelu` | yes | no | none (flipping leaves a linear term `±z` behind) |
///
/// The likelihood is always invariant. The prior is invariant when it is i.i.d. across the units of
/// each hidden layer (layer-wise priors; zero means for sign flips): check with
/// [`SymmetryGroup::prior_is_invariant`]. Only then is the posterior `G`-invariant with `|G|`
/// equivalent modes.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::SymmetryGroup;
/// #[bnn]
/// struct Deep {
///     #[layer(prior = Normal(0.0, 1.0))] a: Dense<2, 16, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0))] b: Dense<16, 16, Relu>,
///     #[layer(prior = Normal(0.0, 1.0))] out: Dense<16, 1>,
///     #[likelihood] noise: Gaussian<Fixed<0.1>>,
/// }
/// let group = SymmetryGroup::of(Deep::<f32, Cpu>::ARCH);
/// assert_eq!(group.factors().len(), 2);
/// assert!(group.factors()[0].sign_flips && !group.factors()[1].sign_flips);
/// // log|G| = ln(16!·2^16) + ln(16!)
/// let expected = 2.0 * (1..=16).map(|k| (k as f64).ln()).sum::<f64>() + 16.0 * 2f64.ln();
/// assert!((group.log_order() - expected).abs() < 1e-9);
/// let fact16: u128 = (1..=16u128).product();
/// assert_eq!(group.order(), Some(fact16 * fact16 * (1 << 16)));
/// assert!(group.elements().is_err()); // far too many to enumerate
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetryGroup {
    arch: Architecture,
    factors: Vec<HiddenFactor>,
}

impl SymmetryGroup {
    /// The group of a declared network: permutations of every hidden layer, and sign flips where the
    /// hidden activation is odd. Use it as `SymmetryGroup::of(M::ARCH)`.
    pub fn of(arch: &Architecture) -> Self {
        let n = arch.layers.len();
        let factors = arch.layers[..n.saturating_sub(1)]
            .iter()
            .enumerate()
            .map(|(layer, l)| HiddenFactor {
                layer,
                name: l.name,
                width: l.d_out,
                activation: l.activation,
                sign_flips: l.activation.is_odd(),
            })
            .collect();
        Self { arch: *arch, factors }
    }

    /// The same group without sign flips (the permutation group `Π_l S_{M_l}` of SYM-VI).
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let g = SymmetryGroup::of(Net::<f32, Cpu>::ARCH).without_sign_flips();
    /// assert_eq!(g.order(), Some(6));
    /// ```
    pub fn without_sign_flips(mut self) -> Self {
        for f in &mut self.factors {
            f.sign_flips = false;
        }
        self
    }

    /// The network the group acts on.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// One factor per hidden layer, in layer order.
    pub fn factors(&self) -> &[HiddenFactor] {
        &self.factors
    }

    /// `ln |G|`, computed with `ln Γ` so that it is finite for any width.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Wide { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 100, Relu>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<100, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let g = SymmetryGroup::of(Wide::<f32, Cpu>::ARCH);
    /// assert!((g.log_order() - 363.739).abs() < 1e-3); // ln 100!
    /// ```
    pub fn log_order(&self) -> f64 {
        self.factors.iter().map(|f| f.log_order()).sum()
    }

    /// `|G|`, if it fits in a `u128`.
    pub fn order(&self) -> Option<u128> {
        self.factors.iter().try_fold(1u128, |acc, f| acc.checked_mul(f.order()?))
    }

    /// The identity element.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// assert!(group.identity().is_identity());
    /// let w: Vec<f64> = (0..10).map(f64::from).collect();
    /// assert_eq!(group.apply_flat(&group.identity(), &w)?, w);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn identity(&self) -> GroupElement {
        GroupElement { factors: self.factors.iter().map(|f| FactorElement::identity(f.width)).collect() }
    }

    /// A uniformly random element: an independent uniform permutation per hidden layer, and
    /// independent fair sign flips where the layer has them.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Relu>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let swaps = (0..1000).filter(|_| group.random(&mut rng).factors()[0].perm() == [1, 0]).count();
    /// assert!((400..600).contains(&swaps)); // |G| = 2! = 2, each element half of the time
    /// ```
    pub fn random(&self, rng: &mut impl Rng) -> GroupElement {
        let factors = self
            .factors
            .iter()
            .map(|f| {
                let mut perm: Vec<usize> = (0..f.width).collect();
                perm.shuffle(rng);
                let flips = (0..f.width).map(|_| f.sign_flips && rng.gen::<bool>()).collect();
                FactorElement { perm, flips }
            })
            .collect();
        GroupElement { factors }
    }

    /// Builds an element from one permutation and one flip mask per hidden layer (`perm[p]` is the
    /// original unit moved to position `p`). Errors on a wrong number of layers or width, a
    /// non-permutation, or a flip on a layer whose activation is not odd.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Relu>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let g = SymmetryGroup::of(Net::<f32, Cpu>::ARCH);
    /// assert!(g.element(vec![vec![1, 0]], vec![vec![false, false]]).is_ok());
    /// assert!(g.element(vec![vec![1, 0]], vec![vec![true, false]]).is_err()); // relu has no flips
    /// assert!(g.element(vec![vec![1, 1]], vec![vec![false, false]]).is_err()); // not a permutation
    /// ```
    pub fn element(&self, perms: Vec<Vec<usize>>, flips: Vec<Vec<bool>>) -> Result<GroupElement> {
        if perms.len() != self.factors.len() || flips.len() != self.factors.len() {
            return Err(Error::Shape {
                what: "group element (hidden layers)".into(),
                expected: self.factors.len().to_string(),
                got: format!("{} permutations and {} flip masks", perms.len(), flips.len()),
            });
        }
        let mut factors = Vec::with_capacity(perms.len());
        for ((f, perm), fl) in self.factors.iter().zip(perms).zip(flips) {
            if perm.len() != f.width || fl.len() != f.width {
                return Err(Error::Shape {
                    what: format!("group element for layer `{}`", f.name),
                    expected: format!("{} units", f.width),
                    got: format!("{} and {}", perm.len(), fl.len()),
                });
            }
            let mut seen = vec![false; f.width];
            for &p in &perm {
                if p >= f.width || std::mem::replace(&mut seen[p], true) {
                    return Err(Error::config(
                        "GroupElement::perm",
                        format!("{perm:?}"),
                        "each hidden layer needs a permutation of 0..width",
                    ));
                }
            }
            if !f.sign_flips && fl.iter().any(|&x| x) {
                return Err(Error::config(
                    "GroupElement::flips",
                    f.name,
                    "sign flips are symmetries only of odd activations (tanh, identity)",
                ));
            }
            factors.push(FactorElement { perm, flips: fl });
        }
        Ok(GroupElement { factors })
    }

    /// Every element of `G`, the identity first. Errors when `|G|` exceeds [`ENUMERATION_LIMIT`].
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let g = SymmetryGroup::of(Net::<f32, Cpu>::ARCH);
    /// let all: Vec<_> = g.elements()?.collect();
    /// assert_eq!(all.len(), 48);
    /// assert!(all[0].is_identity());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn elements(&self) -> Result<Elements<'_>> {
        match self.order() {
            Some(n) if n <= ENUMERATION_LIMIT => Ok(Elements { group: self, next: Some(self.identity()), remaining: n }),
            _ => Err(Error::config(
                "SymmetryGroup::elements",
                format!("|G| = e^{:.1}", self.log_order()),
                "the group is too large to enumerate (limit 2^20 elements)",
            )),
        }
    }

    pub(crate) fn check_element(&self, g: &GroupElement) -> Result<()> {
        let ok = g.factors.len() == self.factors.len()
            && g.factors.iter().zip(&self.factors).all(|(e, f)| e.perm.len() == f.width && (f.sign_flips || e.flips.iter().all(|x| !x)));
        if ok {
            Ok(())
        } else {
            Err(Error::Shape {
                what: "group element".into(),
                expected: format!("an element of the group of {}", self.arch.name),
                got: format!("an element with hidden widths {:?}", g.factors.iter().map(|f| f.perm.len()).collect::<Vec<_>>()),
            })
        }
    }

    /// The entry map of layer `l` under `g`.
    pub(crate) fn layer_map(&self, g: &GroupElement, l: usize) -> LayerMap {
        let spec = &self.arch.layers[l];
        let (o, i) = (spec.d_out, spec.d_in);
        let i1 = i + 1;
        let out = g.factors.get(l);
        let inp = if l > 0 { g.factors.get(l - 1) } else { None };
        let mut src = Vec::with_capacity(o * i1);
        let mut neg = Vec::with_capacity(o * i1);
        for r in 0..o {
            let (sr, fr) = out.map_or((r, false), |f| (f.perm[r], f.flips[r]));
            for c in 0..i1 {
                let (sc, fc) = if c < i { inp.map_or((c, false), |f| (f.perm[c], f.flips[c])) } else { (c, false) };
                src.push(sr * i1 + sc);
                neg.push(fr ^ fc);
            }
        }
        LayerMap { src, neg }
    }

    /// `g·ω` for one flat weight vector (layout of [`Weights::to_flat`]).
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// // hidden rows (w, b) = (1, 2), (3, 4); output row (v1, v2, c) = (5, 6, 7)
    /// let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
    /// let swap_and_flip = group.element(vec![vec![1, 0]], vec![vec![true, false]])?;
    /// assert_eq!(group.apply_flat(&swap_and_flip, &w)?, vec![-3.0, -4.0, 1.0, 2.0, -6.0, 5.0, 7.0]);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply_flat(&self, g: &GroupElement, sample: &[f64]) -> Result<Vec<f64>> {
        self.check_element(g)?;
        let p = self.arch.num_weights();
        if sample.len() != p {
            return Err(Error::Shape {
                what: "flat weight sample".into(),
                expected: format!("({p},)"),
                got: format!("({},)", sample.len()),
            });
        }
        let mut out = Vec::with_capacity(p);
        let mut off = 0;
        for l in 0..self.arch.layers.len() {
            let m = self.layer_map(g, l);
            out.extend(m.src.iter().zip(&m.neg).map(|(&s, &n)| if n { -sample[off + s] } else { sample[off + s] }));
            off += m.src.len();
        }
        Ok(out)
    }

    /// `g·ω` for every sample of `weights` (the same `g` for all), on the device and on the
    /// weights' tape (so it is differentiable).
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<2, 5, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<5, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    /// let w = model.sample_prior(4, &mut rng)?;
    /// let gw = group.apply(&group.random(&mut rng), w.clone())?;
    /// let x = dev.tensor_from_vec(vec![0.3, -1.2, 2.0, 0.5], (2usize, 2usize));
    /// let (a, b) = (model.forward(w, &x)?.as_vec(), model.forward(gw, &x)?.as_vec());
    /// assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-12));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply<E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(
        &self,
        g: &GroupElement,
        weights: Weights<E, D, T>,
    ) -> Result<Weights<E, D, T>> {
        let s = weights.num_samples();
        self.apply_each(&vec![g.clone(); s.max(1)], weights)
    }

    /// `g_s·ω_s`: a different element for every sample (`elements.len()` must equal the number of
    /// samples). On the device and on the weights' tape.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    /// let w = model.sample_prior(3, &mut rng)?;
    /// let gs: Vec<_> = (0..3).map(|_| group.random(&mut rng)).collect();
    /// let moved = group.apply_each(&gs, w.clone())?.to_flat();
    /// for (s, row) in w.to_flat().iter().enumerate() {
    ///     assert_eq!(group.apply_flat(&gs[s], row)?, moved[s]);
    /// }
    /// assert!(group.apply_each(&gs[..2], w).is_err()); // one element per sample
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply_each<E: Real, D: Device<E>, T: Tape<E, D> + Merge<NoneTape>>(
        &self,
        elements: &[GroupElement],
        weights: Weights<E, D, T>,
    ) -> Result<Weights<E, D, T>> {
        crate::model::bnn::check_weights(&self.arch, &weights)?;
        let s = weights.num_samples();
        if elements.len() != s {
            return Err(Error::Shape {
                what: "group elements (one per sample)".into(),
                expected: s.to_string(),
                got: elements.len().to_string(),
            });
        }
        for g in elements {
            self.check_element(g)?;
        }
        let mut layers = Vec::with_capacity(weights.layers.len());
        for (l, t) in weights.layers.into_iter().enumerate() {
            let shape = *t.shape();
            let p = shape.1 * shape.2;
            let mut idx = Vec::with_capacity(s * p);
            let mut sign = Vec::with_capacity(s * p);
            let mut any_neg = false;
            for (si, g) in elements.iter().enumerate() {
                let m = self.layer_map(g, l);
                any_neg |= m.any_neg();
                idx.extend(m.src.iter().map(|&k| si * p + k));
                sign.extend(m.neg.iter().map(|&n| if n { -E::one() } else { E::one() }));
            }
            let dev = t.device().clone();
            let flat = t.reshape_like(&(s * p,)).gather(dev.tensor_from_vec(idx, (s * p,)));
            let flat = if any_neg { flat * dev.tensor_from_vec(sign, (s * p,)) } else { flat };
            layers.push(flat.reshape_like(&shape));
        }
        Ok(Weights { layers })
    }

    /// Applies `g` to mean-field parameters (one [`NormalView`] per layer, layout of
    /// [`MeanFieldGuide::layer_params`]): if `ω ~ N(μ, σ²)` then `g·ω ~ N(g·μ, |g|·σ²)`, where `|g|`
    /// permutes without flipping. The result is new, untaped tensors.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let guide = model.guide_from_values(&[(vec![1.0, 2.0, 3.0, 4.0], vec![0.1, 0.2, 0.3, 0.4]), (vec![5.0, 6.0, 7.0], vec![0.5, 0.6, 0.7])])?;
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let g = group.element(vec![vec![1, 0]], vec![vec![true, false]])?;
    /// let moved = group.apply_to_params(&g, &guide.layer_params())?;
    /// assert_eq!(moved[0].loc.as_vec(), vec![-3.0, -4.0, 1.0, 2.0]); // means move and flip
    /// let sd: Vec<f64> = moved[0].log_scale.as_vec().iter().map(|v| v.exp()).collect();
    /// assert!((sd[0] - 0.3).abs() < 1e-12 && (sd[2] - 0.1).abs() < 1e-12); // scales only move
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply_to_params<E: Real, D: Device<E>>(&self, g: &GroupElement, params: &[NormalView<E, D>]) -> Result<Vec<NormalView<E, D>>> {
        self.check_element(g)?;
        self.check_params(params)?;
        Ok(params
            .iter()
            .enumerate()
            .map(|(l, v)| {
                let m = self.layer_map(g, l);
                let dev = v.loc.device().clone();
                let n = m.src.len();
                let idx = dev.tensor_from_vec(m.src.clone(), (n,));
                let loc = v.loc.clone().gather(idx.clone());
                let loc = if m.any_neg() {
                    loc * dev.tensor_from_vec(m.neg.iter().map(|&x| if x { -E::one() } else { E::one() }).collect(), (n,))
                } else {
                    loc
                };
                NormalView { loc, log_scale: v.log_scale.clone().gather(idx) }
            })
            .collect())
    }

    pub(crate) fn check_params<E: Real, D: Device<E>>(&self, params: &[NormalView<E, D>]) -> Result<()> {
        check_params_for(&self.arch, params)
    }

    /// The guide `g·q`: the distribution of `g·ω` for `ω ~ q`, as a new guide of the model's type.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// let model = Net::<f64, Cpu>::new(&dev);
    /// let guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, ..Default::default() })?;
    /// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
    /// let g = group.random(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1));
    /// let moved = group.apply_to_guide(&g, &model, &guide)?;
    /// // the means move with the weights
    /// let mu: Vec<f64> = guide.layer_params().iter().flat_map(|v| v.loc.as_vec()).collect();
    /// let moved_mu: Vec<f64> = moved.layer_params().iter().flat_map(|v| v.loc.as_vec()).collect();
    /// assert_eq!(group.apply_flat(&g, &mu)?, moved_mu);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn apply_to_guide<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, g: &GroupElement, model: &M, guide: &M::Guide) -> Result<M::Guide> {
        self.check_arch(M::ARCH)?;
        let moved = self.apply_to_params(g, &guide.layer_params())?;
        let values: Vec<(Vec<f64>, Vec<f64>)> = moved
            .iter()
            .map(|v| {
                (
                    v.loc.as_vec().iter().map(|x| x.cast_to_f64()).collect(),
                    v.log_scale.as_vec().iter().map(|x| x.cast_to_f64().exp()).collect(),
                )
            })
            .collect();
        model.guide_from_values(&values)
    }

    pub(crate) fn check_arch(&self, arch: &Architecture) -> Result<()> {
        if *arch != self.arch {
            return Err(Error::Shape {
                what: "symmetry group".into(),
                expected: format!("the group of {arch}"),
                got: format!("the group of {}", self.arch),
            });
        }
        Ok(())
    }

    /// Whether the model's prior (at its current hyperparameters) is invariant under `G`: the
    /// expanded prior is identical across the units of every hidden layer (their rows of
    /// `[W_l | b_l]` and their columns of `W_{l+1}`), with zero means wherever sign flips act.
    /// Errors if the model is not the group's architecture.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::symmetry::SymmetryGroup;
    /// #[bnn]
    /// struct Iid { #[layer(prior = Normal(0.0, Learned(1.0)))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// #[bnn]
    /// struct Shifted { #[layer(prior = Normal(0.5, 1.0))] h: Dense<1, 3, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<3, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
    /// let dev = Cpu::default();
    /// assert!(SymmetryGroup::of(Iid::<f32, Cpu>::ARCH).prior_is_invariant(&Iid::<f32, Cpu>::new(&dev))?);
    /// // a non-zero mean breaks the sign flips (permutations are still fine)
    /// let g = SymmetryGroup::of(Shifted::<f32, Cpu>::ARCH);
    /// assert!(!g.prior_is_invariant(&Shifted::<f32, Cpu>::new(&dev))?);
    /// assert!(g.without_sign_flips().prior_is_invariant(&Shifted::<f32, Cpu>::new(&dev))?);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn prior_is_invariant<E: Real, D: Device<E>, M: Bnn<E, D>>(&self, model: &M) -> Result<bool> {
        self.check_arch(M::ARCH)?;
        let priors = crate::vi::prior::expand(M::ARCH.layers, &model.prior_params(), false);
        let host: Vec<(Vec<E>, Vec<E>)> = priors.into_iter().map(|p| (p.loc.as_vec(), p.log_scale.as_vec())).collect();
        for f in &self.factors {
            let l = f.layer;
            let i1 = self.arch.layers[l].d_in + 1;
            let (loc, ls) = &host[l];
            // every unit's row of [W_l | b_l] has the same prior
            for r in 1..f.width {
                if loc[r * i1..(r + 1) * i1] != loc[..i1] || ls[r * i1..(r + 1) * i1] != ls[..i1] {
                    return Ok(false);
                }
            }
            if f.sign_flips && loc.iter().any(|v| *v != E::zero()) {
                return Ok(false);
            }
            // and the same prior on its outgoing column of W_{l+1}
            let next = &self.arch.layers[l + 1];
            let n1 = next.d_in + 1;
            let (nloc, nls) = &host[l + 1];
            for r in 0..next.d_out {
                let row = r * n1;
                for c in 1..f.width {
                    if nloc[row + c] != nloc[row] || nls[row + c] != nls[row] {
                        return Ok(false);
                    }
                }
                if f.sign_flips && nloc[row..row + f.width].iter().any(|v| *v != E::zero()) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Checks that mean-field parameters have one `d_out · (d_in + 1)` view per layer of `arch`.
pub(crate) fn check_params_for<E: Real, D: Device<E>>(arch: &Architecture, params: &[NormalView<E, D>]) -> Result<()> {
    if params.len() != arch.layers.len() {
        return Err(Error::Shape {
            what: "guide parameters (layers)".into(),
            expected: arch.layers.len().to_string(),
            got: params.len().to_string(),
        });
    }
    for (spec, v) in arch.layers.iter().zip(params) {
        if v.len() != spec.num_weights() || v.log_scale.shape().0 != spec.num_weights() {
            return Err(Error::Shape {
                what: format!("guide parameters of layer `{}`", spec.name),
                expected: format!("({},)", spec.num_weights()),
                got: format!("({},)", v.len()),
            });
        }
    }
    Ok(())
}

/// Iterator over every element of a small group ([`SymmetryGroup::elements`]), the identity first.
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::symmetry::{Elements, SymmetryGroup};
/// #[bnn]
/// struct Net { #[layer(prior = Normal(0.0, 1.0))] h: Dense<1, 2, Tanh>, #[layer(prior = Normal(0.0, 1.0))] out: Dense<2, 1>, #[likelihood] noise: Gaussian<Fixed<0.1>> }
/// let group = SymmetryGroup::of(Net::<f64, Cpu>::ARCH);
/// let elements: Elements<'_> = group.elements()?;
/// let all: Vec<GroupElement> = elements.collect();
/// assert_eq!(all.len(), 8); // 2! permutations × 2² sign patterns
/// assert!(all[0].is_identity());
/// // every element appears once
/// assert!(all.iter().enumerate().all(|(i, g)| all[i + 1..].iter().all(|h| h != g)));
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    group: &'a SymmetryGroup,
    next: Option<GroupElement>,
    remaining: u128,
}

/// Advances `perm` to the next permutation in lexicographic order; false after the last one.
fn next_permutation(perm: &mut [usize]) -> bool {
    let n = perm.len();
    if n < 2 {
        return false;
    }
    let mut i = n - 1;
    while i > 0 && perm[i - 1] >= perm[i] {
        i -= 1;
    }
    if i == 0 {
        return false;
    }
    let mut j = n - 1;
    while perm[j] <= perm[i - 1] {
        j -= 1;
    }
    perm.swap(i - 1, j);
    perm[i..].reverse();
    true
}

impl Iterator for Elements<'_> {
    type Item = GroupElement;

    fn next(&mut self) -> Option<GroupElement> {
        let current = self.next.take()?;
        self.remaining -= 1;
        if self.remaining > 0 {
            // odometer: flips of a factor count fastest, then its permutation, then the next factor
            let mut g = current.clone();
            for (fe, f) in g.factors.iter_mut().zip(&self.group.factors) {
                if f.sign_flips {
                    if let Some(k) = fe.flips.iter().position(|x| !x) {
                        fe.flips[..k].iter_mut().for_each(|x| *x = false);
                        fe.flips[k] = true;
                        break;
                    }
                    fe.flips.iter_mut().for_each(|x| *x = false);
                }
                if next_permutation(&mut fe.perm) {
                    break;
                }
                fe.perm.sort_unstable();
            }
            self.next = Some(g);
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Elements<'_> {}
