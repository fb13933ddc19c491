//! Weight-space symmetry: group actions, the symmetrised guide and its information bound (SYM-VI),
//! canonicalisation and mode counting (SYM-MCMC).
//!
//! Statistical checks use bounds of 4 Monte-Carlo standard errors (a false-alarm rate of about 6e-5
//! per check under normality) with fixed seeds; exact identities use round-off tolerances.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use weightspace::prelude::*;
use weightspace::symmetry::{
    cluster_modes, information, spectral_modes, symmetrised_elbo, Canonicalisation, DataDrivenSettings, GuideLogDensity, InfoBound,
    ModeSettings, SpectralSettings, SymmetrisedElbo, SymmetrisedGuide, SymmetryGroup,
};
use weightspace::testing::reference::{TanhNet, TanhNetProblem, TanhNetReference};
use weightspace::Taped;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Mean and standard error of independent draws.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Network outputs of flat weight samples on inputs `x` (row-major, `d_in` columns).
fn outputs<M: Bnn<f64, Cpu>>(model: &M, flat: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    let dev = Cpu::default();
    let w = Weights::from_flat(&dev, M::ARCH, flat).unwrap();
    let d = M::ARCH.d_in();
    let xt = dev.tensor_from_vec(x.to_vec(), (x.len() / d, d));
    model.forward(w, &xt).unwrap().as_vec()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

// ---------------------------------------------------------------------------------------------
// One model per activation, all with the same shapes: 2 -> 3 -> 4 -> 2, two hidden layers.

macro_rules! act_model {
    ($name:ident, $act:ident) => {
        #[bnn]
        struct $name {
            #[layer(prior = Normal(0.0, 1.0))]
            a: Dense<2, 3, $act>,
            #[layer(prior = Normal(0.0, 1.0))]
            b: Dense<3, 4, $act>,
            #[layer(prior = Normal(0.0, 1.0))]
            out: Dense<4, 2>,
            #[likelihood]
            noise: Gaussian<Fixed<0.1>>,
        }
    };
}

act_model!(NetTanh, Tanh);
act_model!(NetIdentity, Identity);
act_model!(NetRelu, Relu);
act_model!(NetSigmoid, Sigmoid);
act_model!(NetSoftplus, Softplus);
act_model!(NetSilu, Silu);
act_model!(NetGelu, Gelu);

/// A tanh layer feeding a relu layer: flips in the first factor only.
#[bnn]
struct NetMixed {
    #[layer(prior = Normal(0.0, 1.0))]
    a: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    b: Dense<3, 4, Relu>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

const P: usize = 3 * 3 + 4 * 4 + 2 * 5;

/// Raw material for a group element of the 3-4 hidden widths: permutations and flip masks (masked
/// per group by the factors that allow flips).
fn raw_element() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<bool>, Vec<bool>)> {
    (
        Just((0..3).collect::<Vec<usize>>()).prop_shuffle(),
        Just((0..4).collect::<Vec<usize>>()).prop_shuffle(),
        prop::collection::vec(any::<bool>(), 3),
        prop::collection::vec(any::<bool>(), 4),
    )
}

fn element_of(group: &SymmetryGroup, raw: &(Vec<usize>, Vec<usize>, Vec<bool>, Vec<bool>)) -> GroupElement {
    let f = group.factors();
    let mask = |v: &Vec<bool>, on: bool| v.iter().map(|&x| x && on).collect::<Vec<bool>>();
    group.element(vec![raw.0.clone(), raw.1.clone()], vec![mask(&raw.2, f[0].sign_flips), mask(&raw.3, f[1].sign_flips)]).unwrap()
}

fn check_invariance<M: Bnn<f64, Cpu>>(
    model: &M,
    raw: &(Vec<usize>, Vec<usize>, Vec<bool>, Vec<bool>),
    w: &[Vec<f64>],
    x: &[f64],
) -> std::result::Result<(), TestCaseError> {
    let group = SymmetryGroup::of(M::ARCH);
    let g = element_of(&group, raw);
    let moved: Vec<Vec<f64>> = w.iter().map(|s| group.apply_flat(&g, s).unwrap()).collect();
    let (a, b) = (outputs(model, w, x), outputs(model, &moved, x));
    prop_assert!(close(&a, &b, 1e-10), "{}: f(g·ω) != f(ω) for g = {g}", M::ARCH.name);
    // the device action agrees with the host one
    let dev = Cpu::default();
    let on_device = group.apply(&g, Weights::<f64, Cpu>::from_flat(&dev, M::ARCH, w).unwrap()).unwrap().to_flat();
    prop_assert_eq!(on_device, moved);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// f(g·ω)(x) = f(ω)(x) for every activation, with the group derived from its declaration.
    #[test]
    fn function_is_invariant_for_every_activation(
        raw in raw_element(),
        w in prop::collection::vec(prop::collection::vec(-2.0f64..2.0, P), 1..3),
        x in prop::collection::vec(-3.0f64..3.0, 10),
    ) {
        let dev = Cpu::default();
        check_invariance(&NetTanh::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetIdentity::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetRelu::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetSigmoid::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetSoftplus::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetSilu::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetGelu::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_invariance(&NetMixed::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
    }

    /// g ∘ g⁻¹ = g⁻¹ ∘ g = e, composition is associative, and the action is a homomorphism:
    /// (gh)·ω = g·(h·ω).
    #[test]
    fn group_algebra(
        a in raw_element(), b in raw_element(), c in raw_element(),
        w in prop::collection::vec(-2.0f64..2.0, P),
    ) {
        let group = SymmetryGroup::of(NetTanh::<f64, Cpu>::ARCH);
        let (g, h, k) = (element_of(&group, &a), element_of(&group, &b), element_of(&group, &c));
        prop_assert!(g.compose(&g.inverse()).unwrap().is_identity());
        prop_assert!(g.inverse().compose(&g).unwrap().is_identity());
        prop_assert_eq!(g.inverse().inverse(), g.clone());
        prop_assert_eq!(g.compose(&h).unwrap().compose(&k).unwrap(), g.compose(&h.compose(&k).unwrap()).unwrap());
        let gh = g.compose(&h).unwrap();
        prop_assert_eq!(group.apply_flat(&gh, &w).unwrap(), group.apply_flat(&g, &group.apply_flat(&h, &w).unwrap()).unwrap());
        prop_assert_eq!(group.apply_flat(&g.inverse(), &group.apply_flat(&g, &w).unwrap()).unwrap(), w.clone());
        prop_assert_eq!(group.apply_flat(&group.identity(), &w).unwrap(), w);
    }

    /// The log prior is invariant for priors that are i.i.d. across the units of a hidden layer.
    #[test]
    fn log_prior_is_invariant_for_iid_priors(
        raw in raw_element(),
        w in prop::collection::vec(prop::collection::vec(-3.0f64..3.0, P), 1..4),
    ) {
        let dev = Cpu::default();
        let model = IidPrior::<f64, Cpu>::new(&dev);
        let group = SymmetryGroup::of(IidPrior::<f64, Cpu>::ARCH);
        prop_assert!(group.prior_is_invariant(&model).unwrap());
        let g = element_of(&group, &raw);
        let ws = Weights::<f64, Cpu>::from_flat(&dev, IidPrior::<f64, Cpu>::ARCH, &w).unwrap();
        let a = model.log_prior(&ws).unwrap();
        let b = model.log_prior(&group.apply(&g, ws).unwrap()).unwrap();
        prop_assert!(close(&a, &b, 1e-12), "{a:?} vs {b:?}");
    }
}

/// Learned, fan-in scaled and separate bias priors, all per layer: invariant.
#[bnn]
struct IidPrior {
    #[layer(prior = Normal(0.0, Learned(1.3)), bias_prior = Normal(0.0, 2.0))]
    a: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 0.7), fan_in_scaled)]
    b: Dense<3, 4, Relu>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

/// A per-weight prior whose means are not zero: permutations keep it, sign flips do not.
#[bnn]
struct ShiftedPrior {
    #[layer(prior = Normal(Learned(0.4), 1.0), per = weight)]
    a: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    b: Dense<3, 4, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

#[test]
fn non_odd_activations_have_no_sign_flips_and_non_invariant_priors_are_detected() {
    let dev = Cpu::default();
    let flips = |arch| SymmetryGroup::of(arch).factors().iter().map(|f| f.sign_flips).collect::<Vec<_>>();
    assert_eq!(flips(NetTanh::<f64, Cpu>::ARCH), [true, true]);
    assert_eq!(flips(NetIdentity::<f64, Cpu>::ARCH), [true, true]);
    assert_eq!(flips(NetMixed::<f64, Cpu>::ARCH), [true, false]);
    for arch in [
        NetRelu::<f64, Cpu>::ARCH,
        NetSigmoid::<f64, Cpu>::ARCH,
        NetSoftplus::<f64, Cpu>::ARCH,
        NetSilu::<f64, Cpu>::ARCH,
        NetGelu::<f64, Cpu>::ARCH,
    ] {
        assert_eq!(flips(arch), [false, false], "{arch}");
    }
    // a sign flip (taken from the tanh group of the same shapes) does change a non-odd network
    let tanh = SymmetryGroup::of(NetTanh::<f64, Cpu>::ARCH);
    let flip = tanh.element(vec![vec![0, 1, 2], vec![0, 1, 2, 3]], vec![vec![true, false, false], vec![false; 4]]).unwrap();
    let mut r = rng(1);
    let w: Vec<Vec<f64>> = vec![(0..P).map(|_| r.gen_range(-2.0..2.0)).collect()];
    let x: Vec<f64> = (0..10).map(|_| r.gen_range(-3.0..3.0)).collect();
    let moved = vec![tanh.apply_flat(&flip, &w[0]).unwrap()];
    fn changed<M: Bnn<f64, Cpu>>(m: &M, w: &[Vec<f64>], moved: &[Vec<f64>], x: &[f64]) -> f64 {
        outputs(m, w, x).iter().zip(outputs(m, moved, x)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }
    assert!(changed(&NetRelu::<f64, Cpu>::new(&dev), &w, &moved, &x) > 1e-3);
    assert!(changed(&NetSigmoid::<f64, Cpu>::new(&dev), &w, &moved, &x) > 1e-3);
    assert!(changed(&NetSoftplus::<f64, Cpu>::new(&dev), &w, &moved, &x) > 1e-3);
    assert!(changed(&NetSilu::<f64, Cpu>::new(&dev), &w, &moved, &x) > 1e-3);
    assert!(changed(&NetGelu::<f64, Cpu>::new(&dev), &w, &moved, &x) > 1e-3);
    assert!(changed(&NetTanh::<f64, Cpu>::new(&dev), &w, &moved, &x) < 1e-10);
    // and the group refuses to build such an element for a relu network
    assert!(SymmetryGroup::of(NetRelu::<f64, Cpu>::ARCH)
        .element(vec![vec![0, 1, 2], vec![0, 1, 2, 3]], vec![vec![true, false, false], vec![false; 4]])
        .is_err());

    // a non-zero prior mean: flips are detected as non-invariant, permutations are fine
    let shifted = ShiftedPrior::<f64, Cpu>::new(&dev);
    let group = SymmetryGroup::of(ShiftedPrior::<f64, Cpu>::ARCH);
    assert!(!group.prior_is_invariant(&shifted).unwrap());
    assert!(group.clone().without_sign_flips().prior_is_invariant(&shifted).unwrap());
    let ws = Weights::<f64, Cpu>::from_flat(&dev, ShiftedPrior::<f64, Cpu>::ARCH, &w).unwrap();
    let moved = group.apply(&flip, ws.clone()).unwrap();
    assert!((shifted.log_prior(&ws).unwrap()[0] - shifted.log_prior(&moved).unwrap()[0]).abs() > 1e-3);
    // a model of another architecture is an error, not a panic
    assert!(matches!(group.prior_is_invariant(&NetTanh::<f64, Cpu>::new(&dev)), Err(Error::Shape { .. })));
}

#[bnn]
struct Tiny3 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.3>>,
}

#[bnn]
struct Deep16 {
    #[layer(prior = Normal(0.0, 1.0))]
    a: Dense<1, 16, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    b: Dense<16, 16, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    c: Dense<16, 16, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<16, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

#[test]
fn order_log_order_and_enumeration() {
    // docs/methods.md §4: 48 for one hidden layer of 3; about 10^54 for three layers of 16
    let g3 = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    assert_eq!(g3.order(), Some(48));
    assert!((g3.log_order() - 48f64.ln()).abs() < 1e-12);
    let deep = SymmetryGroup::of(Deep16::<f64, Cpu>::ARCH);
    let log10 = deep.log_order() / std::f64::consts::LN_10;
    assert!((54.0..55.0).contains(&log10), "log10 |G| = {log10}");
    assert!(deep.elements().is_err());
    // enumeration: identity first, all distinct, closed under composition, a faithful action
    let all: Vec<GroupElement> = g3.elements().unwrap().collect();
    assert_eq!(all.len(), 48);
    assert!(all[0].is_identity());
    let set: std::collections::HashSet<_> = all.iter().cloned().collect();
    assert_eq!(set.len(), 48);
    for g in &all {
        for h in &all {
            assert!(set.contains(&g.compose(h).unwrap()));
        }
    }
    let w: Vec<f64> = (0..10).map(|i| (i as f64 * 0.37).sin() + 0.1 * i as f64).collect();
    let images: std::collections::HashSet<Vec<u64>> =
        all.iter().map(|g| g3.apply_flat(g, &w).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    assert_eq!(images.len(), 48);
    // two hidden layers of 2: (2!·2²)² = 64
    #[bnn]
    struct TwoByTwo {
        #[layer(prior = Normal(0.0, 1.0))]
        a: Dense<1, 2, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        b: Dense<2, 2, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        out: Dense<2, 1>,
        #[likelihood]
        noise: Gaussian<Fixed<0.1>>,
    }
    let g22 = SymmetryGroup::of(TwoByTwo::<f64, Cpu>::ARCH);
    assert_eq!(g22.elements().unwrap().count(), 64);
    assert_eq!(g22.clone().without_sign_flips().elements().unwrap().count(), 4);
    // random elements are uniform: each of the 48 appears about 1/48 of the time (chi-square)
    let mut r = rng(2);
    let n = 48_000;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        *counts.entry(g3.random(&mut r)).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), 48);
    let e = n as f64 / 48.0;
    let chi2: f64 = counts.values().map(|&c| (c as f64 - e).powi(2) / e).sum();
    let p = weightspace::testing::special::chi_square_sf(chi2, 47.0);
    assert!(p > 1e-4, "chi-square {chi2}, p = {p}");
}

// ---------------------------------------------------------------------------------------------
// Guide actions and transformed densities.

/// A guide that only exposes `draw` and `log_density`, so it takes the generic path for transformed
/// densities (apply each element, then evaluate).
struct Generic<'a, G>(&'a G);

impl<G: GuideLogDensity<f64, Cpu>> GuideLogDensity<f64, Cpu> for Generic<'_, G> {
    fn draw<R: Rng>(
        &self,
        arch: &weightspace::Architecture,
        s: usize,
        rng: &mut R,
        trace: bool,
    ) -> weightspace::Result<Weights<f64, Cpu, OwnedTape<f64, Cpu>>> {
        self.0.draw(arch, s, rng, trace)
    }
    fn log_density(
        &self,
        arch: &weightspace::Architecture,
        w: Weights<f64, Cpu, OwnedTape<f64, Cpu>>,
        trace: bool,
    ) -> weightspace::Result<Taped<(usize,), f64, Cpu>> {
        self.0.log_density(arch, w, trace)
    }
}

use dfdx::prelude::{OwnedTape, SplitTape, WithEmptyTape};

#[test]
fn mean_field_transformed_densities_match_the_generic_path_and_guide_actions() {
    let dev = Cpu::default();
    let model = NetTanh::<f64, Cpu>::new(&dev);
    let arch = NetTanh::<f64, Cpu>::ARCH;
    let group = SymmetryGroup::of(arch);
    let guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.4, seed: 3 }).unwrap();
    let mut r = rng(4);
    let mut elements = vec![group.identity()];
    elements.extend((0..7).map(|_| group.random(&mut r)));
    let w = guide.draw(arch, 5, &mut r, false).unwrap();
    let copy = || Weights { layers: w.layers.iter().map(|t| t.with_empty_tape()).collect() };
    let fast = guide.log_density_transformed(&group, copy(), &elements, false).unwrap().as_vec();
    let slow = Generic(&guide).log_density_transformed(&group, copy(), &elements, false).unwrap().as_vec();
    assert!(close(&fast, &slow, 1e-10), "{fast:?}\n{slow:?}");
    // the information term: the mean-field host computation (value and gradients) agrees with the
    // generic log-sum-exp over transformed densities
    for trace_draw in [false, true] {
        let info = |generic: bool| {
            let w = guide.draw(arch, 5, &mut rng(21), trace_draw).unwrap();
            let (term, per) = if generic {
                Generic(&guide).information_term(&group, w, &elements, 8f64.ln(), true).unwrap()
            } else {
                guide.information_term(&group, w, &elements, 8f64.ln(), true).unwrap()
            };
            let value = term.with_empty_tape().split_tape().0.as_vec()[0];
            let grads = term.backward();
            let g: Vec<f64> = guide
                .layer_params()
                .iter()
                .flat_map(|v| grads.get(&v.loc).as_vec().into_iter().chain(grads.get(&v.log_scale).as_vec()))
                .collect();
            (value, per, g)
        };
        let (fast, slow) = (info(false), info(true));
        assert!((fast.0 - slow.0).abs() < 1e-10 && close(&fast.1, &slow.1, 1e-10), "{:?} vs {:?}", fast.1, slow.1);
        assert!((fast.0 - fast.1.iter().sum::<f64>() / 5.0).abs() < 1e-10);
        assert!(close(&fast.2, &slow.2, 1e-9), "gradients (reparameterised draw: {trace_draw})");
    }
    // row 0 is the identity: ln q(ω)
    let lq = guide.log_density(arch, copy(), false).unwrap().as_vec();
    assert!(close(&fast[..5], &lq, 1e-12));
    // ln (g·q)(g·ω) = ln q(ω), and apply_to_params agrees with apply_to_guide
    let plain: Vec<Vec<f64>> = Weights { layers: w.layers.iter().map(|t| t.with_empty_tape().split_tape().0).collect() }.to_flat();
    for g in &elements[1..] {
        let moved_guide = group.apply_to_guide(g, &model, &guide).unwrap();
        let moved_w =
            Weights::<f64, Cpu>::from_flat(&dev, arch, &plain.iter().map(|s| group.apply_flat(g, s).unwrap()).collect::<Vec<_>>()).unwrap();
        let retaped = Weights { layers: moved_w.layers.iter().map(|t| t.clone().retaped()).collect() };
        let lq_moved = moved_guide.log_density(arch, retaped, false).unwrap().as_vec();
        assert!(close(&lq_moved, &lq, 1e-12));
        let views = group.apply_to_params(g, &guide.layer_params()).unwrap();
        for (a, b) in views.iter().zip(moved_guide.layer_params()) {
            assert_eq!(a.loc.as_vec(), b.loc.as_vec());
            assert!(close(&a.log_scale.as_vec(), &b.log_scale.as_vec(), 1e-14));
        }
    }
}

/// The information term's gradient (fixed noise and elements) matches central finite differences
/// in every guide parameter.
#[test]
fn information_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let model = Tiny3::<f64, Cpu>::new(&dev);
    let group = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    let guide = model.mean_field_with(MeanFieldInit { jitter: 0.5, scale: 0.6, seed: 9 }).unwrap();
    let values = |g: &Tiny3Guide<f64, Cpu>| -> Vec<(Vec<f64>, Vec<f64>)> {
        g.layer_params().iter().map(|v| (v.loc.as_vec(), v.log_scale.as_vec().iter().map(|x| x.exp()).collect())).collect()
    };
    for bound in [InfoBound::Sampled { k: 6 }, InfoBound::Exact] {
        let value = |g: &Tiny3Guide<f64, Cpu>| information(&group, g, bound, 4, &mut rng(17)).unwrap().value;
        let est = information(&group, &guide, bound, 4, &mut rng(17)).unwrap();
        let grads = est.term.backward();
        let base = values(&guide);
        let h = 1e-6;
        let mut checked = 0;
        for (l, v) in guide.layer_params().iter().enumerate() {
            for (what, analytic) in [("loc", grads.get(&v.loc).as_vec()), ("log_scale", grads.get(&v.log_scale).as_vec())] {
                for (k, a) in analytic.iter().enumerate() {
                    let bumped = |d: f64| {
                        let mut vals = base.clone();
                        if what == "loc" {
                            vals[l].0[k] += d;
                        } else {
                            vals[l].1[k] *= d.exp();
                        }
                        value(&model.guide_from_values(&vals).unwrap())
                    };
                    let fd = (bumped(h) - bumped(-h)) / (2.0 * h);
                    assert!(
                        (a - fd).abs() <= 1e-5 * (1.0 + fd.abs()),
                        "{bound:?} layer {l} {what}[{k}]: backward {a} vs finite difference {fd}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * (6 + 4));
    }
}

// ---------------------------------------------------------------------------------------------
// The I_K bound.

/// A guide on the 1-3-1 tanh net whose 48 symmetric copies overlap: `I` is well inside
/// `(0, ln 48)`.
fn overlapping_guide(model: &Tiny3<f64, Cpu>) -> Tiny3Guide<f64, Cpu> {
    model.mean_field_with(MeanFieldInit { jitter: 0.9, scale: 0.5, seed: 5 }).unwrap()
}

fn host_logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[test]
fn information_bound_lies_between_zero_and_log_k_and_is_zero_for_an_invariant_guide() {
    let dev = Cpu::default();
    let model = Tiny3::<f64, Cpu>::new(&dev);
    let group = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    let guide = overlapping_guide(&model);
    let mut r = rng(6);
    for k in [1usize, 2, 8, 64] {
        let means: Vec<f64> = (0..200)
            .map(|_| {
                let est = information(&group, &guide, InfoBound::Sampled { k }, 8, &mut r).unwrap();
                // every per-sample term is at most ln K (its sum includes the identity's q(ω₀))
                assert!(est.per_sample.iter().all(|v| *v <= (k as f64).ln() + 1e-12), "K = {k}: {:?}", est.per_sample);
                assert_eq!(est.k, k);
                est.value
            })
            .collect();
        let (m, se) = mean_se(&means);
        if k == 1 {
            assert!(means.iter().all(|v| v.abs() < 1e-12), "I_1 must be exactly 0");
        } else {
            assert!(m >= -4.0 * se && m <= (k as f64).ln(), "K = {k}: I_K = {m} ± {se}");
            assert!(m > 0.05, "K = {k}: the overlapping guide should have a clearly positive I_K, got {m}");
        }
    }
    // a guide invariant under G (zero means, equal scales) has q(h·ω) = q(ω): I_K = I = 0 exactly
    let invariant = model.mean_field();
    for bound in [InfoBound::Sampled { k: 16 }, InfoBound::Exact] {
        let est = information(&group, &invariant, bound, 16, &mut r).unwrap();
        assert!(est.per_sample.iter().all(|v| v.abs() < 1e-9), "{bound:?}: {:?}", est.per_sample);
    }
    // bad settings, and a guide of another network, are errors
    assert!(matches!(information(&group, &guide, InfoBound::Sampled { k: 0 }, 4, &mut r), Err(Error::InvalidConfig { .. })));
    let other = Tiny1::<f64, Cpu>::new(&dev).mean_field();
    assert!(matches!(information(&group, &other, InfoBound::Sampled { k: 4 }, 4, &mut r), Err(Error::Shape { .. })));
    let w = model.sample_prior(2, &mut r).unwrap();
    assert!(matches!(SymmetrisedGuide::new(&group, &other).log_density(&w), Err(Error::Shape { .. })));
    assert!(matches!(information(&group, &guide, InfoBound::Sampled { k: 4 }, 0, &mut r), Err(Error::InvalidConfig { .. })));
}

/// `E[I_K]` does not decrease with `K`, never exceeds the exact `I`, and approaches it.
///
/// The check runs on the host from the exact `(|G|, S)` matrix of `ln q(g·ω₀)`: for each `ω₀` the
/// `K − 1` random elements are rows drawn uniformly. With `r_g = q(g·ω₀) / q(ω₀)` and `m` its mean
/// over `G`, the exact term is `−ln m` and `I_K = −ln((1 + Σ_{k≥2} r_{h_k}) / K)`; Jensen's
/// inequality bounds the gap: `0 ≤ I − E[I_K] ≤ E[ln((1 + (K−1) m) / (K m))]`, which tends to 0
/// as `K` grows.
#[test]
fn information_bound_increases_with_k_and_approaches_the_exact_value() {
    let dev = Cpu::default();
    let model = Tiny3::<f64, Cpu>::new(&dev);
    let arch = Tiny3::<f64, Cpu>::ARCH;
    let group = SymmetryGroup::of(arch);
    let guide = overlapping_guide(&model);
    let all: Vec<GroupElement> = group.elements().unwrap().collect();
    let n_g = all.len();
    let s = 4000;
    let mut r = rng(7);
    let w = guide.draw(arch, s, &mut r, false).unwrap();
    let lq = guide.log_density_transformed(&group, w, &all, false).unwrap().as_vec(); // (|G|, S)
    let col = |j: usize| (0..n_g).map(|g| lq[g * s + j]).collect::<Vec<f64>>();
    // the exact term per ω₀, checked against the library's exact estimator on the same draws
    let exact: Vec<f64> = (0..s).map(|j| (n_g as f64).ln() + lq[j] - host_logsumexp(&col(j))).collect();
    let lib = information(&group, &guide, InfoBound::Exact, s, &mut rng(7)).unwrap();
    assert!(close(&lib.per_sample, &exact, 1e-9));
    let (i_exact, i_se) = mean_se(&exact);
    assert!(i_exact > 0.3 && i_exact < (n_g as f64).ln() - 0.3, "I = {i_exact} ± {i_se} should be well inside (0, ln 48)");
    let mut previous = f64::NEG_INFINITY;
    let mut previous_se = 0.0;
    for k in [2usize, 4, 16, 64, 256, 1024] {
        let mut terms = Vec::with_capacity(s);
        let mut gaps = Vec::with_capacity(s);
        let mut jensen = 0.0;
        for (j, ex) in exact.iter().enumerate() {
            let c = col(j);
            let mut picks = vec![c[0]];
            picks.extend((1..k).map(|_| c[r.gen_range(0..n_g)]));
            let t = (k as f64).ln() + c[0] - host_logsumexp(&picks);
            terms.push(t);
            gaps.push(ex - t);
            let m = (-ex).exp();
            jensen += ((1.0 + (k as f64 - 1.0) * m) / (k as f64 * m)).ln() / s as f64;
        }
        let (m, se) = mean_se(&terms);
        let (gap, gap_se) = mean_se(&gaps);
        eprintln!("K = {k}: E[I_K] = {m:.4} ± {se:.4}; I = {i_exact:.4}; gap {gap:.4} ± {gap_se:.4} (Jensen bound {jensen:.4})");
        assert!(m <= (k as f64).ln() + 1e-12);
        // non-decreasing in K
        assert!(m >= previous - 4.0 * (se * se + previous_se * previous_se).sqrt(), "E[I_{k}] = {m} < previous {previous}");
        // never above I (paired: same ω₀)
        assert!(gap >= -4.0 * gap_se, "K = {k}: I_K exceeds I by {}", -gap);
        // and below its Jensen bound, which vanishes as K grows
        assert!(gap <= jensen + 4.0 * gap_se, "K = {k}: gap {gap} ± {gap_se}, Jensen bound {jensen}");
        if k == 1024 {
            assert!(jensen < 0.05 && gap < 0.05, "I_1024 = {m} should be close to I = {i_exact} (Jensen bound on the gap {jensen})");
        }
        previous = m;
        previous_se = se;
    }
    // the library's sampled estimator agrees with the host simulation of the same bound
    let lib: Vec<f64> = (0..400).map(|_| information(&group, &guide, InfoBound::Sampled { k: 16 }, 8, &mut r).unwrap().value).collect();
    let (lm, lse) = mean_se(&lib);
    let host: Vec<f64> = (0..s)
        .map(|j| {
            let c = col(j);
            let mut picks = vec![c[0]];
            picks.extend((1..16).map(|_| c[r.gen_range(0..n_g)]));
            16f64.ln() + c[0] - host_logsumexp(&picks)
        })
        .collect();
    let (hm, hse) = mean_se(&host);
    assert!((lm - hm).abs() < 4.0 * (lse * lse + hse * hse).sqrt(), "library I_16 = {lm} ± {lse}, host simulation {hm} ± {hse}");
}

// ---------------------------------------------------------------------------------------------
// Validity of the symmetrised objective.

#[bnn]
struct Tiny1 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 1, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<1, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.3>>,
}

#[bnn]
struct Tiny2 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 2, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<2, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.3>>,
}

const XS: [f64; 5] = [-1.0, -0.5, 0.0, 0.5, 1.0];
const YS: [f64; 5] = [-0.71, -0.52, 0.08, 0.43, 0.74];

/// Fits a symmetrised guide, then estimates the symmetrised objective, the plain ELBO and `ELBO(q^G)`
/// computed directly from `q^G` samples and its exact density, each as (mean, se).
fn fit_and_estimate<M: Bnn<f64, Cpu>>(mut model: M, seed: u64) -> ((f64, f64), (f64, f64), (f64, f64)) {
    let dev = Cpu::default();
    let data = Dataset::<f64, _>::regression(&dev, &XS, 1, &YS, 1).unwrap();
    let group = SymmetryGroup::of(M::ARCH);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.3, seed }).unwrap();
    let mut obj =
        SymmetrisedElbo { elbo: ElboConfig { samples: 16, ..Default::default() }, ..SymmetrisedElbo::new(group.clone(), InfoBound::Exact) };
    let cfg = FitConfig { steps: 1500, lr: 0.03, lr_end: Some(1e-3), seed, progress: false, ..Default::default() };
    fit_objective(&mut model, &mut guide, &data, &cfg, &mut obj).unwrap();
    let eval = SymmetrisedElbo { elbo: ElboConfig { samples: 64, ..Default::default() }, ..obj };
    let mut r = rng(seed + 100);
    let (mut sym, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let est = symmetrised_elbo(&model, &guide, &data, 5, &eval, &mut r).unwrap();
        sym.push(est.estimate.elbo);
        plain.push(est.plain_elbo);
    }
    // ELBO(q^G) = E_{q^G}[ln p(D|ω) + ln p(ω) − ln q^G(ω)], straight from the definition
    let sg = SymmetrisedGuide::new(&group, &guide);
    let w = sg.sample::<f64, Cpu, _>(20_000, &mut r).unwrap();
    let ll = model.log_likelihood(w.clone(), &data).unwrap();
    let lp = model.log_prior(&w).unwrap();
    let lqg = sg.log_density(&w).unwrap();
    let direct: Vec<f64> = (0..20_000).map(|i| ll[i * 5..(i + 1) * 5].iter().sum::<f64>() + lp[i] - lqg[i]).collect();
    (mean_se(&sym), mean_se(&plain), mean_se(&direct))
}

#[test]
fn symmetrised_objective_is_a_valid_bound_below_the_log_evidence() {
    let problem = |hidden| TanhNetProblem {
        net: TanhNet { hidden, prior_std: 1.0, noise_std: 0.3 },
        xs: XS.to_vec(),
        ys: YS.to_vec(),
        test_xs: vec![],
    };
    // H = 1 (|G| = 2, the sign flip): the evidence by quadrature
    let z1 = TanhNetReference::quadrature(&problem(1), 300).unwrap().log_evidence();
    let (sym, plain, direct) = fit_and_estimate(Tiny1::<f64, Cpu>::new(&Cpu::default()), 1);
    eprintln!("H=1: log Z {z1:.4}; symmetrised {sym:?}; plain {plain:?}; ELBO(q^G) directly {direct:?}");
    assert!(sym.0 <= z1 + 4.0 * sym.1, "H=1: symmetrised objective {} ± {} above log Z = {z1}", sym.0, sym.1);
    // the objective is ELBO(q^G): the definition, estimated from q^G directly, agrees
    assert!(
        (sym.0 - direct.0).abs() < 4.0 * (sym.1 * sym.1 + direct.1 * direct.1).sqrt(),
        "H=1: objective {sym:?} vs ELBO(q^G) {direct:?}"
    );
    // and it gains on the plain ELBO of the same guide (up to ln 2, the guide covering one sign)
    assert!(sym.0 - plain.0 > 0.3 && sym.0 - plain.0 <= 2f64.ln() + 1e-9, "H=1: gain {}", sym.0 - plain.0);
    // H = 2 (|G| = 8): the evidence by importance sampling, with its standard error
    let z2 = TanhNetReference::importance_sampling(&problem(2), 400_000, 3).unwrap();
    let (sym, plain, direct) = fit_and_estimate(Tiny2::<f64, Cpu>::new(&Cpu::default()), 2);
    eprintln!(
        "H=2: log Z {:.4} ± {:?}; symmetrised {sym:?}; plain {plain:?}; ELBO(q^G) directly {direct:?}",
        z2.log_evidence(),
        z2.log_evidence_se()
    );
    let tol = 4.0 * (sym.1 * sym.1 + z2.log_evidence_se().unwrap().powi(2)).sqrt();
    assert!(
        sym.0 <= z2.log_evidence() + tol,
        "H=2: symmetrised objective {} ± {} above log Z = {} ± {:?}",
        sym.0,
        sym.1,
        z2.log_evidence(),
        z2.log_evidence_se()
    );
    assert!(
        (sym.0 - direct.0).abs() < 4.0 * (sym.1 * sym.1 + direct.1 * direct.1).sqrt(),
        "H=2: objective {sym:?} vs ELBO(q^G) {direct:?}"
    );
    assert!(sym.0 >= plain.0, "H=2: {sym:?} vs plain {plain:?}");
}

/// At the same θ the symmetrised objective is at least the plain ELBO: their difference is the
/// information term, whose expectation is non-negative (a KL divergence for the exact term).
#[test]
fn symmetrised_objective_is_at_least_the_plain_elbo_at_the_same_parameters() {
    let dev = Cpu::default();
    let model = Tiny3::<f64, Cpu>::new(&dev);
    let data = Dataset::<f64, _>::regression(&dev, &XS, 1, &YS, 1).unwrap();
    let group = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    for (seed, jitter, scale) in [(1u64, 0.2, 0.8), (2, 1.0, 0.1), (3, 0.5, 0.5)] {
        let guide = model.mean_field_with(MeanFieldInit { jitter, scale, seed }).unwrap();
        for bound in [InfoBound::Sampled { k: 8 }, InfoBound::Exact] {
            let cfg = SymmetrisedElbo::new(group.clone(), bound);
            let diffs: Vec<f64> = (0..150)
                .map(|i| {
                    // the same seed for both: the plain parts are identical draws
                    let sym = symmetrised_elbo(&model, &guide, &data, 5, &cfg, &mut rng(i)).unwrap();
                    let plain = weightspace::elbo(&model, &guide, &data, 5, &cfg.elbo, &mut rng(i)).unwrap();
                    assert!((sym.plain_elbo - plain.elbo).abs() < 1e-9);
                    sym.estimate.elbo - plain.elbo
                })
                .collect();
            let (m, se) = mean_se(&diffs);
            assert!(m >= -4.0 * se, "guide {seed} {bound:?}: E[sym − plain] = {m} ± {se}");
        }
    }
}

#[test]
fn symmetrised_objective_plumbing_and_errors() {
    let dev = Cpu::default();
    let data = Dataset::<f32, _>::regression(&dev, &XS, 1, &YS, 1).unwrap();
    let group = SymmetryGroup::of(Tiny3::<f32, Cpu>::ARCH);
    let mut model = Tiny3::<f32, Cpu>::new(&dev);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, ..Default::default() }).unwrap();
    let cfg = FitConfig { steps: 40, progress: false, record_every: 1, ..Default::default() };
    // the history reports the symmetrised value, with kl = KL(q‖p) − I_K
    let mut obj = SymmetrisedElbo::new(group.clone(), InfoBound::Sampled { k: 4 });
    let report = fit_objective(&mut model, &mut guide, &data, &cfg, &mut obj).unwrap();
    for rec in &report.history {
        assert!((rec.elbo - (rec.expected_log_lik - rec.kl)).abs() < 1e-6 * (1.0 + rec.elbo.abs()));
    }
    let mut exact = SymmetrisedElbo::new(group.clone(), InfoBound::Exact);
    fit_objective(&mut model, &mut guide, &data, &cfg, &mut exact).unwrap();
    // K = 0, zero information samples, a group of another network, a group too large to enumerate
    let mut bad = SymmetrisedElbo::new(group.clone(), InfoBound::Sampled { k: 0 });
    assert!(matches!(fit_objective(&mut model, &mut guide, &data, &cfg, &mut bad), Err(Error::InvalidConfig { .. })));
    let mut bad = SymmetrisedElbo { info_samples: Some(0), ..SymmetrisedElbo::new(group.clone(), InfoBound::Sampled { k: 4 }) };
    assert!(matches!(fit_objective(&mut model, &mut guide, &data, &cfg, &mut bad), Err(Error::InvalidConfig { .. })));
    let mut bad = SymmetrisedElbo::new(SymmetryGroup::of(Tiny1::<f32, Cpu>::ARCH), InfoBound::Sampled { k: 4 });
    assert!(matches!(fit_objective(&mut model, &mut guide, &data, &cfg, &mut bad), Err(Error::Shape { .. })));
    #[bnn]
    struct Wide {
        #[layer(prior = Normal(0.0, 1.0))]
        h: Dense<1, 12, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        out: Dense<12, 1>,
        #[likelihood]
        noise: Gaussian<Fixed<0.3>>,
    }
    let mut wm = Wide::<f32, Cpu>::new(&dev);
    let mut wg = wm.mean_field();
    let mut too_big = SymmetrisedElbo::new(SymmetryGroup::of(Wide::<f32, Cpu>::ARCH), InfoBound::Exact);
    assert!(matches!(fit_objective(&mut wm, &mut wg, &data, &cfg, &mut too_big), Err(Error::InvalidConfig { .. })));
    // a prior that is not invariant makes the bound invalid: an error, not a wrong number
    #[bnn]
    struct Shifted {
        #[layer(prior = Normal(0.5, 1.0))]
        h: Dense<1, 3, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        out: Dense<3, 1>,
        #[likelihood]
        noise: Gaussian<Fixed<0.3>>,
    }
    let mut sm = Shifted::<f32, Cpu>::new(&dev);
    let mut sg = sm.mean_field();
    let mut obj = SymmetrisedElbo::new(SymmetryGroup::of(Shifted::<f32, Cpu>::ARCH), InfoBound::Sampled { k: 4 });
    assert!(matches!(fit_objective(&mut sm, &mut sg, &data, &cfg, &mut obj), Err(Error::InvalidConfig { .. })));
    // ... unless the group is restricted to the symmetries it has
    let mut obj = SymmetrisedElbo::new(SymmetryGroup::of(Shifted::<f32, Cpu>::ARCH).without_sign_flips(), InfoBound::Sampled { k: 4 });
    fit_objective(&mut sm, &mut sg, &data, &cfg, &mut obj).unwrap();
}

/// Predictions under `q^G` equal those under `q`.
#[test]
fn symmetrised_guide_predicts_like_the_guide() {
    let dev = Cpu::default();
    let model = Tiny3::<f64, Cpu>::new(&dev);
    let group = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    let guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.3, seed: 8 }).unwrap();
    let x = dev.tensor_from_vec(vec![-2.0, 0.0, 1.5], (3usize, 1usize));
    let n = 4000;
    let plain = Predictive { seed: 1, ..Predictive::new(n) }.run(&model, &guide, &x).unwrap();
    let mut sym = SymmetrisedGuide::new(&group, &guide);
    let symd = Predictive { seed: 2, ..Predictive::new(n) }.run(&model, &mut sym, &x).unwrap();
    for j in 0..3 {
        let se = ((plain.f_std[j].powi(2) + symd.f_std[j].powi(2)) / n as f64).sqrt();
        assert!((plain.mean[j] - symd.mean[j]).abs() < 4.0 * se, "x{j}: {} vs {} (se {se})", plain.mean[j], symd.mean[j]);
    }
    // the draws themselves are spread over the orbit: the first hidden weight changes sign
    let w = sym.sample::<f64, Cpu, _>(400, &mut rng(3)).unwrap().to_flat();
    let pos = w.iter().filter(|s| s[0] > 0.0).count();
    assert!((120..280).contains(&pos), "{pos} of 400 positive");
}

// ---------------------------------------------------------------------------------------------
// Canonicalisation.

fn check_canonical<M: Bnn<f64, Cpu>>(
    model: &M,
    raw: &(Vec<usize>, Vec<usize>, Vec<bool>, Vec<bool>),
    w: &[f64],
    x: &[f64],
) -> std::result::Result<(), TestCaseError> {
    let group = SymmetryGroup::of(M::ARCH);
    let g = element_of(&group, raw);
    let c = group.canonicalise_flat(w).unwrap();
    // the element reproduces the canonical point
    prop_assert_eq!(group.apply_flat(&group.canonical_element(w).unwrap(), w).unwrap(), c.clone());
    // idempotent, orbit-invariant, function-preserving
    prop_assert_eq!(group.canonicalise_flat(&c).unwrap(), c.clone());
    prop_assert_eq!(group.canonicalise_flat(&group.apply_flat(&g, w).unwrap()).unwrap(), c.clone());
    prop_assert!(close(&outputs(model, &[w.to_vec()], x), &outputs(model, std::slice::from_ref(&c), x), 1e-10));
    // the canonical form: hidden biases sorted ascending, and non-negative where flips act
    let arch = M::ARCH;
    let mut off = 0;
    for (l, spec) in arch.layers.iter().enumerate() {
        let i1 = spec.d_in + 1;
        if l + 1 < arch.layers.len() {
            let b: Vec<f64> = (0..spec.d_out).map(|u| c[off + u * i1 + i1 - 1]).collect();
            prop_assert!(b.windows(2).all(|p| p[0] <= p[1]), "biases {b:?}");
            if spec.activation.is_odd() {
                prop_assert!(b.iter().all(|v| *v >= 0.0));
            }
        }
        off += spec.num_weights();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Exact canonicalisation is idempotent, leaves the output unchanged, and maps ω and g·ω to the
    /// same point.
    #[test]
    fn exact_canonicalisation_properties(
        raw in raw_element(),
        w in prop::collection::vec(-2.0f64..2.0, P),
        x in prop::collection::vec(-3.0f64..3.0, 10),
    ) {
        let dev = Cpu::default();
        check_canonical(&NetTanh::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_canonical(&NetRelu::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
        check_canonical(&NetMixed::<f64, Cpu>::new(&dev), &raw, &w, &x)?;
    }
}

#[test]
fn canonicalisation_of_batches_matches_single_samples() {
    let dev = Cpu::default();
    let model = NetTanh::<f64, Cpu>::new(&dev);
    let group = SymmetryGroup::of(NetTanh::<f64, Cpu>::ARCH);
    let w = model.sample_prior(16, &mut rng(10)).unwrap();
    let flat = w.to_flat();
    let batch = group.canonicalise(&w).unwrap().to_flat();
    let exact = group.canonicalise_batch(&flat, &Canonicalisation::Exact).unwrap();
    for (s, f) in flat.iter().enumerate() {
        let c = group.canonicalise_flat(f).unwrap();
        assert_eq!(batch[s], c);
        assert_eq!(exact.samples[s], c);
        assert_eq!(group.apply_flat(&exact.elements[s], f).unwrap(), c);
    }
    // bad input is an error
    assert!(matches!(group.canonicalise_flat(&[0.0; 3]), Err(Error::Shape { .. })));
    let mut nan = flat[0].clone();
    nan[4] = f64::NAN;
    assert!(matches!(group.canonicalise_flat(&nan), Err(Error::NonFinite { .. })));
    assert!(matches!(group.canonicalise_batch(&[], &Canonicalisation::Exact), Err(Error::Empty { .. })));
}

/// Ties on the bias (and a zero bias on a tanh unit) are broken deterministically and the same way
/// for every member of the orbit.
#[test]
fn ties_are_deterministic() {
    let group = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    let all: Vec<GroupElement> = group.elements().unwrap().collect();
    // rows (w, b): two units tie on b = 0.5; one has b = 0, its sign decided by its weight
    let cases = [
        vec![1.0, 0.5, -2.0, 0.5, -0.7, 0.0, 0.3, 0.6, 0.9, 0.2],
        // two identical units (same w, b and v): any order is the same point
        vec![1.0, 0.5, 1.0, 0.5, -0.7, 0.0, 0.3, 0.3, 0.9, 0.2],
        // a unit with zero bias and zero weight: its sign follows its outgoing weight
        vec![1.0, 0.5, 0.0, 0.0, -0.7, 0.2, 0.3, -0.6, 0.9, 0.2],
    ];
    for w in &cases {
        let c = group.canonicalise_flat(w).unwrap();
        assert_eq!(group.canonicalise_flat(w).unwrap(), c, "not deterministic");
        assert_eq!(group.canonicalise_flat(&c).unwrap(), c, "not idempotent");
        for g in &all {
            assert_eq!(group.canonicalise_flat(&group.apply_flat(g, w).unwrap()).unwrap(), c, "orbit member {g} of {w:?}");
        }
    }
    // the first case in full: biases 0 (flipped to w > 0), then the tie at 0.5 by weight
    assert_eq!(group.canonicalise_flat(&cases[0]).unwrap(), vec![0.7, 0.0, -2.0, 0.5, 1.0, 0.5, -0.9, 0.6, 0.3, 0.2]);
}

#[bnn]
struct One5 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 5, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<5, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

/// A `NetTanh` weight vector with standard-normal weights and the given hidden biases.
fn with_biases(r: &mut impl Rng, a: [f64; 3], b: [f64; 4]) -> Vec<f64> {
    let mut w: Vec<f64> = (0..P).map(|_| 1.5 * r.sample::<f64, _>(StandardNormal)).collect();
    for (u, v) in a.iter().enumerate() {
        w[u * 3 + 2] = *v;
    }
    for (u, v) in b.iter().enumerate() {
        w[9 + u * 4 + 3] = *v;
    }
    w
}

/// `n` noisy copies of `base`, each moved by a uniform random element.
fn noisy_orbit(group: &SymmetryGroup, base: &[f64], n: usize, noise: f64, r: &mut impl Rng) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            let noisy: Vec<f64> = base.iter().map(|v| v + noise * r.sample::<f64, _>(StandardNormal)).collect();
            group.apply_flat(&group.random(r), &noisy).unwrap()
        })
        .collect()
}

fn spread(v: &[Vec<f64>]) -> f64 {
    let mut worst: f64 = 0.0;
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            worst = worst.max(weightspace::symmetry::distance(&v[i], &v[j]).unwrap());
        }
    }
    worst
}

/// The data-driven variant: output unchanged, deterministic for a seed, and symmetric noisy copies
/// of one network collapse to one cluster: with the paper's procedure on one hidden layer, and,
/// started from the exact rule, on two hidden layers where the exact rule alone splits the copies
/// at a near-tie of two biases.
#[test]
fn data_driven_canonicalisation_recovers_one_network() {
    let mut r = rng(11);
    let noise = 0.02;
    // one hidden layer of 5: the paper's procedure
    let group = SymmetryGroup::of(One5::<f64, Cpu>::ARCH);
    let base: Vec<f64> = (0..16).map(|_| 1.5 * r.sample::<f64, _>(StandardNormal)).collect();
    let batch = noisy_orbit(&group, &base, 80, noise, &mut r);
    let rule = Canonicalisation::DataDriven(DataDrivenSettings { neighbours: 40, iterations: 64, seed: 3, ..Default::default() });
    let out = group.canonicalise_batch(&batch, &rule).unwrap();
    assert_eq!(out, group.canonicalise_batch(&batch, &rule).unwrap(), "not deterministic for a seed");
    // two noisy copies are about noise·sqrt(2P) ≈ 0.11 apart; 1.0 is 9 of those
    assert!(spread(&batch) > 3.0);
    assert!(spread(&out.samples) < 1.0, "one layer: data-driven spread {}", spread(&out.samples));

    // two hidden layers, with two biases of the first 0.01 apart (inside the noise)
    let model = NetTanh::<f64, Cpu>::new(&Cpu::default());
    let group = SymmetryGroup::of(NetTanh::<f64, Cpu>::ARCH);
    let base = with_biases(&mut r, [0.5, 0.51, 1.4], [0.4, 1.0, 1.6, 2.2]);
    let batch = noisy_orbit(&group, &base, 80, noise, &mut r);
    let settings = ModeSettings { threshold: 1.0, min_size: 1 };
    let exact = group.count_modes(&batch, &Canonicalisation::Exact, &settings).unwrap();
    eprintln!("near-tie: exact-rule clusters {:?}", exact.sizes);
    assert!(exact.count() >= 2, "the exact rule should split the copies at the near-tie: {:?}", exact.sizes);
    let rule = Canonicalisation::DataDriven(DataDrivenSettings {
        neighbours: 40,
        iterations: 64,
        start_from_exact: true,
        seed: 3,
        ..Default::default()
    });
    let out = group.canonicalise_batch(&batch, &rule).unwrap();
    assert!(spread(&out.samples) < 1.0, "two layers: data-driven spread {}", spread(&out.samples));
    assert_eq!(group.count_modes(&batch, &rule, &settings).unwrap().count(), 1);
    let x: Vec<f64> = (0..10).map(|_| r.gen_range(-3.0..3.0)).collect();
    for (s, (c, g)) in out.samples.iter().zip(&out.elements).enumerate() {
        assert_eq!(&group.apply_flat(g, &batch[s]).unwrap(), c);
        assert!(close(&outputs(&model, &[batch[s].clone()], &x), &outputs(&model, std::slice::from_ref(c), &x), 1e-10));
    }
    // bad settings are errors, and so is the reverse order on two hidden layers without the exact start
    for bad in [
        DataDrivenSettings { accept: 0.0, start_from_exact: true, ..Default::default() },
        DataDrivenSettings { svm_starts: 0, start_from_exact: true, ..Default::default() },
        DataDrivenSettings { start_from_exact: false, ..Default::default() },
    ] {
        let bad = Canonicalisation::DataDriven(bad);
        assert!(matches!(group.canonicalise_batch(&batch, &bad), Err(Error::InvalidConfig { .. })));
    }
}

/// Counting modes: noisy symmetric copies of two different networks are two modes once
/// canonicalised, and many clusters before.
#[test]
fn distances_and_mode_counting_in_canonical_space() {
    let group = SymmetryGroup::of(NetTanh::<f64, Cpu>::ARCH);
    let mut r = rng(12);
    // the exact rule is discontinuous where biases tie or cross zero, so the two networks keep
    // their hidden biases apart from each other and from zero by far more than the noise
    let bases =
        [with_biases(&mut r, [0.3, -0.9, 1.5], [-0.4, 1.0, 1.6, 2.2]), with_biases(&mut r, [-0.5, 1.1, 1.7], [0.3, -0.9, 1.5, 2.1])];
    let mut samples = Vec::new();
    for b in &bases {
        samples.extend(noisy_orbit(&group, b, 30, 0.02, &mut r));
    }
    let settings = ModeSettings { threshold: 1.0, min_size: 5 };
    let modes = group.count_modes(&samples, &Canonicalisation::Exact, &settings).unwrap();
    assert_eq!(modes.count(), 2);
    assert_eq!(modes.sizes, vec![30, 30]);
    assert!(modes.labels[..30].iter().all(|&l| l == modes.labels[0]) && modes.labels[30..].iter().all(|&l| l == modes.labels[30]));
    let raw = cluster_modes(&samples, &settings).unwrap();
    assert!(raw.sizes.len() > 10, "without canonicalisation the copies do not cluster: {:?}", raw.sizes);
    // spectral clustering with the eigengap rule finds the same two modes in canonical space
    let canonical = group.canonicalise_batch(&samples, &Canonicalisation::Exact).unwrap().samples;
    let spectral = spectral_modes(&canonical, &SpectralSettings::default()).unwrap();
    assert_eq!(spectral.sizes, vec![30, 30]);
    assert_eq!(spectral.labels, modes.labels);
    assert!(spectral_modes(&samples, &SpectralSettings::default()).unwrap().sizes != vec![30, 30]);
    // canonical distance: 0 within an orbit, the orbit distance never exceeds it (tiny net)
    let tiny = SymmetryGroup::of(Tiny3::<f64, Cpu>::ARCH);
    for _ in 0..20 {
        let a: Vec<f64> = (0..10).map(|_| r.sample::<f64, _>(StandardNormal)).collect();
        let b: Vec<f64> = (0..10).map(|_| r.sample::<f64, _>(StandardNormal)).collect();
        let ga = tiny.apply_flat(&tiny.random(&mut r), &a).unwrap();
        assert_eq!(tiny.canonical_distance(&a, &ga).unwrap(), 0.0);
        assert!(tiny.orbit_distance(&a, &ga).unwrap() < 1e-12);
        assert!(tiny.orbit_distance(&a, &b).unwrap() <= tiny.canonical_distance(&a, &b).unwrap() + 1e-12);
    }
}

/// Spectral mode counting: the eigengap rule recovers the number of well-separated Gaussian blobs
/// and their members, whatever their sizes; bad input is an error.
#[test]
fn spectral_clustering_counts_separated_blobs() {
    let mut r = rng(21);
    for (centres, sizes) in
        [(vec![[0.0, 0.0], [6.0, 0.0]], vec![40, 25]), (vec![[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]], vec![30, 20, 15, 10])]
    {
        let mut points = Vec::new();
        let mut truth = Vec::new();
        for (c, (centre, &size)) in centres.iter().zip(&sizes).enumerate() {
            for _ in 0..size {
                points
                    .push(vec![centre[0] + 0.5 * r.sample::<f64, _>(StandardNormal), centre[1] + 0.5 * r.sample::<f64, _>(StandardNormal)]);
                truth.push(c);
            }
        }
        let modes = spectral_modes(&points, &SpectralSettings { seed: 4, ..Default::default() }).unwrap();
        assert_eq!(modes.sizes, sizes, "clusters of {} blobs", centres.len());
        // the blobs come out ordered by size, as generated
        assert_eq!(modes.labels, truth);
        assert_eq!(modes.count(), centres.len());
        assert_eq!(spectral_modes(&points, &SpectralSettings { seed: 4, ..Default::default() }).unwrap(), modes, "not deterministic");
    }
    // one point, identical points: one mode
    assert_eq!(spectral_modes(&[vec![1.0]], &SpectralSettings::default()).unwrap().count(), 1);
    assert_eq!(spectral_modes(&vec![vec![2.0, 1.0]; 5], &SpectralSettings::default()).unwrap().sizes, vec![5]);
    // bad input
    assert!(matches!(spectral_modes(&[], &SpectralSettings::default()), Err(Error::Empty { .. })));
    assert!(matches!(spectral_modes(&[vec![0.0], vec![f64::NAN]], &SpectralSettings::default()), Err(Error::NonFinite { .. })));
    assert!(matches!(spectral_modes(&[vec![0.0], vec![1.0, 2.0]], &SpectralSettings::default()), Err(Error::Shape { .. })));
    for bad in [
        SpectralSettings { max_clusters: 0, ..Default::default() },
        SpectralSettings { restarts: 0, ..Default::default() },
        SpectralSettings { bandwidth: Some(0.0), ..Default::default() },
        SpectralSettings { bandwidth: Some(f64::NAN), ..Default::default() },
    ] {
        assert!(matches!(spectral_modes(&[vec![0.0], vec![1.0]], &bad), Err(Error::InvalidConfig { .. })));
    }
}
