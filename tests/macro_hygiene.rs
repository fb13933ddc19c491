//! Every option of `#[bnn]` in declarations that must compile without a single warning, with the
//! names generated code could trip over shadowed at module level.
//!
//! This test has no harness (`harness = false` in `Cargo.toml`), so the shadowing names below sit at
//! the root of a crate that nothing else generates code into, and `main` is the test.
#![deny(warnings)]

use weightspace::prelude::*;

// Hygiene: generated code must reach these only through `::weightspace::__private` and `::core`.
#[allow(dead_code)]
type Result = ();
#[allow(dead_code)]
type Option = ();
#[allow(dead_code)]
type Vec = ();
#[allow(dead_code, non_camel_case_types)]
type f32 = ();
#[allow(dead_code, non_camel_case_types)]
type f64 = ();
#[allow(dead_code, non_camel_case_types)]
type usize = ();
#[allow(dead_code)]
struct Clone;
#[allow(dead_code)]
struct Debug;
#[allow(dead_code)]
struct String;
#[allow(unused_macros)]
macro_rules! format {
    ($($t:tt)*) => {
        ()
    };
}

/// A regression net with learned priors at every granularity.
#[bnn]
pub struct Regressor {
    /// Layer-wise prior, learned scale.
    #[layer(prior = Normal(0.0, Learned(1.0)))]
    pub hidden: Dense<1, 8, Tanh>,
    /// Unit-wise prior with a learned, negative location.
    #[layer(prior = Normal(Learned(-0.5), Learned(1)), per = unit)]
    pub(crate) hidden2: Dense<8, 8, Relu>,
    /// Weight-wise prior, fan-in scaled.
    #[layer(prior = Normal(0, 2.5), per = weight, fan_in_scaled)]
    hidden3: Dense<8, 8, Sigmoid>,
    /// A separate, unit-wise bias prior.
    #[layer(prior = Normal(0.0, 1.0), bias_prior = Normal(0.0, Learned(2.0)), bias_per = unit)]
    hidden4: Dense<8, 8, Softplus>,
    /// A separate layer-wise bias prior; a bare `#[layer]` would do as well.
    #[layer(bias_prior = Normal(Fixed(1.0), 5.0))]
    hidden5: Dense<8, 4, Silu>,
    /// Default prior.
    #[layer]
    hidden6: Dense<4, 4, Gelu>,
    /// Identity activation, spelled out.
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<4, 1, Identity>,
    /// Learned noise with an upper bound.
    #[likelihood(upper = 1.0)]
    noise: Gaussian<Learned<0.1>>,
}

/// A classifier with a categorical likelihood.
#[bnn]
struct Classifier {
    /// Hidden layer.
    #[layer(prior = Normal(0.0, 1.0))]
    r#type: Dense<4, 16, Relu>,
    /// Logits.
    #[layer(prior = Normal(0.0, 1.0))]
    logits: Dense<16, 3>,
    /// Class labels.
    #[likelihood]
    labels: Categorical,
}

/// Logistic regression.
#[bnn]
pub(crate) struct Logistic {
    /// One logit.
    #[layer(prior = Normal(0.0, 1.0))]
    logit: Dense<2, 1>,
    /// Binary labels.
    #[likelihood]
    y: Bernoulli,
}

/// Gaussian noise learned from its default start, 1.0.
#[bnn]
struct DefaultNoise {
    /// The only layer.
    #[layer]
    out: Dense<1, 1>,
    /// Noise.
    #[likelihood]
    noise: Gaussian<Learned>,
}

/// Fixed Gaussian noise.
#[bnn]
struct FixedNoise {
    /// The only layer.
    #[layer]
    out: Dense<1, 1>,
    /// Noise.
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {
    let dev = Cpu::default();

    let r = Regressor::<::core::primitive::f32, Cpu>::new(&dev);
    assert_eq!(Regressor::<::core::primitive::f32, Cpu>::ARCH.layers.len(), 7);
    let g: RegressorGuide<::core::primitive::f32, Cpu> = r.mean_field();
    assert_eq!(g.layer_params().len(), 7);
    assert_eq!(r.prior_params().len(), 7);
    let _ = (&r.hidden, &r.hidden2, &r.hidden3, &r.hidden4, &r.hidden5, &r.hidden6, &r.out, &r.noise);

    let c = Classifier::<::core::primitive::f64, Cpu>::new(&dev);
    assert_eq!(Classifier::<::core::primitive::f64, Cpu>::ARCH.layers[0].name, "type");
    let _ = (&c.r#type, &c.logits, &c.labels, c.mean_field());

    let l: Logistic = Logistic::new(&dev);
    let _ = (&l.logit, &l.y);
    let w = Weights::from_flat(&dev, Logistic::<::core::primitive::f32, Cpu>::ARCH, &[vec![0.0; 3]]).unwrap();
    let typed: LogisticWeights = LogisticWeights::from_weights(w).unwrap();
    let _ = typed.clone().into_weights();

    let d = DefaultNoise::<::core::primitive::f32, Cpu>::new(&dev);
    let _ = (&d.out, &d.noise);
    let f = FixedNoise::<::core::primitive::f32, Cpu>::new(&dev);
    let _ = (&f.out, &f.noise);
}
