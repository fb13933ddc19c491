//! Runtime checks of what `#[bnn]` generates: the architecture constant matches the declaration,
//! `new` starts every parameter at its declared value, the dfdx `TensorCollection` impls see every
//! tensor (also past dfdx's six-field tuple limit), and the typed weights reject wrong shapes.

use weightspace::prelude::*;

/// The example from the macro's documentation.
#[bnn]
pub struct SineNet {
    /// Hidden layer.
    #[layer(prior = Normal(0.0, Learned(1.0)))]
    hidden: Dense<1, 50, Tanh>,
    #[layer(prior = Normal(0.0, Learned(1.0)), per = unit)]
    hidden2: Dense<50, 50, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled, bias_prior = Normal(0.0, Learned(2.0)), bias_per = unit)]
    out: Dense<50, 1>,
    #[likelihood]
    noise: Gaussian<Learned<0.1>>,
}

/// Every other option: negative and learned locations, per-weight priors, a bounded noise.
#[bnn]
struct Bounded {
    #[layer(prior = Normal(Learned(-0.5), Fixed(3)), per = weight)]
    a: Dense<3, 4, Relu>,
    #[layer]
    b: Dense<4, 2, Softplus>,
    #[likelihood(upper = 1.0)]
    noise: Gaussian<Learned<0.25>>,
}

/// Seven layers and a likelihood: more fields than dfdx's largest `ModuleFields` tuple.
#[bnn]
struct Deep {
    #[layer]
    l0: Dense<2, 3, Tanh>,
    #[layer]
    l1: Dense<3, 3, Relu>,
    #[layer]
    l2: Dense<3, 3, Sigmoid>,
    #[layer]
    l3: Dense<3, 3, Softplus>,
    #[layer]
    l4: Dense<3, 3, Silu>,
    #[layer]
    l5: Dense<3, 3, Gelu>,
    #[layer]
    l6: Dense<3, 4>,
    #[likelihood]
    y: Categorical,
}

#[bnn]
struct Logistic {
    #[layer(prior = Normal(0.0, 1.0))]
    r#in: Dense<2, 1, Identity>,
    #[likelihood]
    y: Bernoulli,
}

type Net = SineNet<f32, Cpu>;

fn assert_close(a: f32, b: f64) {
    assert!((a as f64 - b).abs() < 1e-6, "{a} != {b}");
}

#[test]
fn arch_matches_the_declaration() {
    let arch = Net::ARCH;
    assert_eq!(arch.name, "SineNet");
    assert_eq!(arch.likelihood_name, "noise");
    assert_eq!(arch.likelihood, LikelihoodSpec::Gaussian { scale: Param::Learned(0.1), upper: None });
    let expected = [
        LayerSpec {
            name: "hidden",
            d_in: 1,
            d_out: 50,
            activation: Activation::Tanh,
            prior: NormalSpec { loc: Param::Fixed(0.0), scale: Param::Learned(1.0), per: Granularity::Layer, fan_in_scaled: false },
            bias_prior: None,
        },
        LayerSpec {
            name: "hidden2",
            d_in: 50,
            d_out: 50,
            activation: Activation::Tanh,
            prior: NormalSpec { loc: Param::Fixed(0.0), scale: Param::Learned(1.0), per: Granularity::Unit, fan_in_scaled: false },
            bias_prior: None,
        },
        LayerSpec {
            name: "out",
            d_in: 50,
            d_out: 1,
            activation: Activation::Identity,
            prior: NormalSpec { loc: Param::Fixed(0.0), scale: Param::Fixed(1.0), per: Granularity::Layer, fan_in_scaled: true },
            bias_prior: Some(NormalSpec {
                loc: Param::Fixed(0.0),
                scale: Param::Learned(2.0),
                per: Granularity::Unit,
                fan_in_scaled: false,
            }),
        },
    ];
    assert_eq!(arch.layers, &expected);
    assert_eq!(arch.num_weights(), 2 * 50 + 51 * 50 + 51);
    assert_eq!(arch.to_string(), "SineNet: hidden 1->50 tanh, hidden2 50->50 tanh, out 50->1 identity; noise gaussian");
}

#[test]
fn arch_of_the_other_options() {
    let arch = Bounded::<f32, Cpu>::ARCH;
    assert_eq!(
        arch.layers[0].prior,
        NormalSpec { loc: Param::Learned(-0.5), scale: Param::Fixed(3.0), per: Granularity::Weight, fan_in_scaled: false }
    );
    assert_eq!(arch.layers[0].activation, Activation::Relu);
    assert_eq!(arch.layers[1].prior, NormalSpec::STANDARD, "a bare #[layer] is Normal(0, 1) per layer");
    assert_eq!(arch.layers[1].activation, Activation::Softplus);
    assert_eq!(arch.likelihood, LikelihoodSpec::Gaussian { scale: Param::Learned(0.25), upper: Some(1.0) });

    let deep = Deep::<f32, Cpu>::ARCH;
    let acts: Vec<Activation> = deep.layers.iter().map(|l| l.activation).collect();
    let all: Vec<Activation> = Activation::ALL.iter().map(|(_, a)| *a).filter(|a| *a != Activation::Identity).collect();
    assert_eq!(acts[..6], all[..]);
    assert_eq!(acts[6], Activation::Identity);
    assert_eq!(deep.likelihood, LikelihoodSpec::Categorical);
    assert_eq!(deep.d_out(), 4);

    let logistic = Logistic::<f64, Cpu>::ARCH;
    assert_eq!(logistic.layers[0].name, "in", "raw identifiers lose their r#");
    assert_eq!(logistic.likelihood, LikelihoodSpec::Bernoulli);
}

#[test]
fn new_starts_at_the_declared_values() {
    let dev = Cpu::default();
    let m = Net::new(&dev);
    // One (loc, scale) pair per layer, tied bias: no bias entries.
    assert_eq!(m.hidden.weight.loc.array(), [0.0]);
    assert_close(m.hidden.weight.log_scale.array()[0], 1f64.ln());
    assert_eq!(m.hidden.bias.loc.array(), [0.0f32; 0]);
    // Per unit: 50 pairs.
    assert_eq!(m.hidden2.weight.loc.array(), [0.0; 50]);
    assert!(m.hidden2.weight.log_scale.array().iter().all(|v| v.abs() < 1e-7));
    // Separate per-unit bias prior, learned from 2.
    assert_eq!(m.out.bias.loc.array(), [0.0]);
    assert_close(m.out.bias.log_scale.array()[0], 2f64.ln());
    // Learned noise from 0.1, stored as ln σ.
    assert_close(m.noise.raw.array()[0], 0.1f64.ln());

    let b = Bounded::<f64, Cpu>::new(&dev);
    assert_eq!(b.a.weight.loc.array(), [-0.5; 12]);
    assert!(b.a.weight.log_scale.array().iter().all(|v| (v - 3f64.ln()).abs() < 1e-12));
    assert_eq!(b.a.bias.loc.array(), [-0.5; 4], "per-weight priors give the biases their own entries");
    // Bounded noise: raw = logit(σ0 / upper).
    assert!((b.noise.raw.array()[0] - (0.25f64 / 0.75).ln()).abs() < 1e-12);
}

#[test]
fn trait_methods_follow_layer_order() {
    let dev = Cpu::default();
    let m = Net::new(&dev);
    let priors = m.prior_params();
    let lens: Vec<(usize, Option<usize>)> = priors.iter().map(|p| (p.weight.len(), p.bias.as_ref().map(|b| b.len()))).collect();
    assert_eq!(lens, [(1, None), (50, None), (1, Some(1))], "tied biases have no view of their own");
    assert_close(m.likelihood_params().raw.array()[0], 0.1f64.ln());

    let guide = m.mean_field();
    let sizes: Vec<usize> = guide.layer_params().iter().map(|v| v.len()).collect();
    assert_eq!(sizes, [50 * 2, 50 * 51, 51]);
    assert_eq!(guide.hidden.loc.array().len(), 100);

    let err = m.guide_from_values(&[(vec![0.0; 100], vec![1.0; 100])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("3 layers"), "{err}");
}

#[test]
fn collections_visit_every_tensor() {
    // Save and load go through the generated `TensorCollection` impls; a round trip restores every
    // parameter, including those past the sixth field.
    let dev = Cpu::default();
    let dir = std::env::temp_dir().join(format!("weightspace-macro-expand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("deep.safetensors");

    let mut a = Deep::<f32, Cpu>::new(&dev);
    a.l6.weight.loc = dev.tensor([1.5]);
    a.y.raw = dev.tensor([0.25]);
    save(&a, &path).unwrap();
    let mut b = Deep::<f32, Cpu>::new(&dev);
    load(&mut b, &path).unwrap();
    assert_eq!(b.l6.weight.loc.array(), [1.5]);
    assert_eq!(b.y.raw.array(), [0.25]);

    let mut g = a.mean_field();
    g.l5.loc = dev.tensor([2.0; 12]);
    let gpath = dir.join("deep-guide.safetensors");
    save(&g, &gpath).unwrap();
    let mut h = a.mean_field();
    load(&mut h, &gpath).unwrap();
    assert_eq!(h.l5.loc.array(), [2.0; 12]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn typed_weights_round_trip() {
    let dev = Cpu::default();
    let arch = Net::ARCH;
    let flat: Vec<Vec<f64>> = (0..3).map(|s| (0..arch.num_weights()).map(|i| (s * 1000 + i) as f64).collect()).collect();
    let w = Weights::<f32, Cpu>::from_flat(&dev, arch, &flat).unwrap();
    let typed = SineNetWeights::from_weights(w.clone()).unwrap();
    assert_eq!(typed.hidden.shape().0, 3);
    assert_eq!(typed.out.as_vec(), w.layers[2].as_vec());
    let back = typed.into_weights();
    assert_eq!(back.to_flat(), w.to_flat());
}

#[test]
fn typed_weights_reject_wrong_shapes() {
    let dev = Cpu::default();
    let zeros = |s: usize, o: usize, i1: usize| dev.tensor_from_vec(vec![0.0f32; s * o * i1], (s, o, i1));
    let good = |o: usize, i1: usize| zeros(2, o, i1);
    let ok: Weights<f32, Cpu> = Weights { layers: vec![good(50, 2), good(50, 51), good(1, 51)] };
    assert!(SineNetWeights::from_weights(ok).is_ok());

    // `hidden2` declared 50 x (50 + 1), given 40 x 51.
    let wrong: Weights<f32, Cpu> = Weights { layers: vec![good(50, 2), good(40, 51), good(1, 51)] };
    let err = SineNetWeights::from_weights(wrong).unwrap_err();
    match &err {
        Error::Shape { what, expected, got } => {
            assert!(what.contains("hidden2"), "{err}");
            assert_eq!(expected, "(2, 50, 51)");
            assert_eq!(got, "(2, 40, 51)");
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // Too few layers.
    let short: Weights<f32, Cpu> = Weights { layers: vec![good(50, 2), good(50, 51)] };
    let err = SineNetWeights::from_weights(short).unwrap_err();
    assert!(err.to_string().contains("3 layers") && err.to_string().contains("got 2 layers"), "{err}");

    // Layers that disagree on the number of samples.
    let ragged: Weights<f32, Cpu> = Weights { layers: vec![good(50, 2), good(50, 51), zeros(3, 1, 51)] };
    let err = SineNetWeights::from_weights(ragged).unwrap_err();
    assert!(err.to_string().contains("`out`"), "{err}");
}

#[test]
fn typed_weights_keep_the_tape() {
    // Reparameterised samples carry the guide's tape; the typed form is generic over it.
    use rand::SeedableRng;
    let dev = Cpu::default();
    let model = Net::new(&dev);
    let guide = model.mean_field();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let w = weightspace::rsample_guide(Net::ARCH, &guide, 4, &mut rng).unwrap();
    let flat_shapes: Vec<(usize, usize, usize)> = w.layers.iter().map(|t| *t.shape()).collect();
    let typed = SineNetWeights::from_weights(w).unwrap();
    assert_eq!(typed.hidden2.shape().0, 4);
    let back = typed.into_weights();
    let shapes: Vec<(usize, usize, usize)> = back.layers.iter().map(|t| *t.shape()).collect();
    assert_eq!(shapes, flat_shapes);
    assert_eq!(shapes, [(4, 50, 2), (4, 50, 51), (4, 1, 51)]);
}
