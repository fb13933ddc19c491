//! BALI: exactness against Bayesian linear regression, the matrix-normal sampler, the minibatch
//! moving average, and a comparison with mean-field VI.
//!
//! Exactness checks run in f64; their tolerance is a few hundred ulps of the quantities compared
//! (the solves involve matrices with condition numbers below 1e3). Statistical checks use
//! Bonferroni-corrected bounds from the exact Monte-Carlo variance, with fixed seeds.

use rand::{Rng, SeedableRng};
use weightspace::bali::{fit_bali, Bali, BaliConfig, BaliPosterior, Linearisation, MatrixNormal, PriorPrecision};
use weightspace::linalg::Matrix;
use weightspace::prelude::*;
use weightspace::testing::assert::{assert_covariance, assert_mean, check_covariance};
use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};
use weightspace::testing::special::normal_quantile;

fn normal(rng: &mut impl Rng) -> f64 {
    rng.sample(rand_distr::StandardNormal)
}

/// Relative agreement of two matrices, scaled by the larger entry of the reference.
fn rel_diff(a: &Matrix, b: &Matrix) -> f64 {
    let scale = b.as_slice().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.max_abs_diff(b).unwrap() / scale
}

/// Two outputs, three inputs; weights N(0.3, 0.8²), biases N(0, 2²); fixed noise.
#[bnn]
struct Lin {
    #[layer(prior = Normal(0.3, 0.8), bias_prior = Normal(0.0, 2.0))]
    out: Dense<3, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.4>>,
}

const SIGMA: f64 = 0.4;

fn lin_data(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..n {
        let r: [f64; 3] = [normal(&mut rng), rng.gen_range(-1.0..1.0), 2.0 * normal(&mut rng)];
        x.extend(r);
        y.push(0.5 * r[0] - r[1] + 0.2 * r[2] + 1.0 + SIGMA * normal(&mut rng));
        y.push(-0.3 * r[0] + 0.1 * r[2] - 0.5 + SIGMA * normal(&mut rng));
    }
    (x, y)
}

/// The exact BLR posterior of output `d` of `Lin`.
fn lin_blr(x: &[f64], y: &[f64], d: usize) -> BlrPosterior {
    let design = x.chunks(3).map(|r| vec![r[0], r[1], r[2], 1.0]).collect();
    let targets = y.chunks(2).map(|r| r[d]).collect();
    BlrPosterior::compute(&BlrProblem {
        design,
        targets,
        prior_mean: vec![0.3, 0.3, 0.3, 0.0],
        prior_covariance: PriorCovariance::Diagonal(vec![0.64, 0.64, 0.64, 4.0]),
        noise_std: SIGMA,
    })
    .unwrap()
}

/// Checks one matrix-normal layer posterior against the exact BLR posteriors of its outputs
/// (independent given `Σ = σ² I`).
fn assert_matches_blr(mn: &MatrixNormal, exact: &[BlrPosterior], tol: f64) {
    let (o, i) = mn.shape();
    let cov = mn.covariance();
    for (d, blr) in exact.iter().enumerate() {
        let row = Matrix::from_row_major(1, i, mn.mean().row(d).to_vec()).unwrap();
        let want = Matrix::from_row_major(1, i, blr.mean().to_vec()).unwrap();
        assert!(rel_diff(&row, &want) < tol, "output {d}: mean {:?} vs exact {:?}", row.as_slice(), want.as_slice());
        let mut block = Matrix::zeros(i, i);
        for j in 0..i {
            for k in 0..i {
                block[(j, k)] = cov[(d * i + j, d * i + k)];
            }
        }
        assert!(rel_diff(&block, blr.covariance()) < tol, "output {d}: covariance differs by {}", rel_diff(&block, blr.covariance()));
        // and the outputs are independent a posteriori, as in the exact model
        for e in (0..o).filter(|e| *e != d) {
            for j in 0..i {
                assert!(cov[(d * i + j, e * i + j)].abs() < tol * block[(j, j)]);
            }
        }
    }
}

#[test]
fn exact_linear_layer_is_bayesian_linear_regression() {
    let dev = Cpu::default();
    let (x, y) = lin_data(50, 1);
    let data = Dataset::<f64, _>::regression(&dev, &x, 3, &y, 2).unwrap();
    let exact = [lin_blr(&x, &y, 0), lin_blr(&x, &y, 1)];
    let mut model = Lin::<f64, Cpu>::new(&dev);
    let mut bali = Bali::new(&model, BaliConfig { progress: false, ..Default::default() }).unwrap();
    // one full-batch update is exact, and it is a fixed point: further updates change nothing
    for _ in 0..4 {
        bali.step(&mut model, &data, data.len()).unwrap();
        assert_matches_blr(&bali.posterior().layers()[0], &exact, 1e-10);
    }
    // α = 1 pseudo-targets are the targets whatever the linearisation point: sampled too
    let cfg = BaliConfig { linearisation: Linearisation::Samples(3), progress: false, ..Default::default() };
    let (post, _) = fit_bali(&mut model, &data, &BaliConfig { epochs: 3, ..cfg }).unwrap();
    assert_matches_blr(&post.layers()[0], &exact, 1e-10);
}

/// A tanh hidden layer below a linear Gaussian output.
#[bnn]
struct Deep {
    #[layer(prior = Normal(0.0, 1.0))]
    h: Dense<2, 5, Tanh>,
    #[layer(prior = Normal(0.0, 0.7))]
    out: Dense<5, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.3>>,
}

#[test]
fn last_layer_update_is_exact_blr_on_the_features_below() {
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let x: Vec<f64> = (0..80).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let y: Vec<f64> = x.chunks(2).map(|r| (r[0] * r[1]).sin() + 0.3 * normal(&mut rng)).collect();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let mut model = Deep::<f64, Cpu>::new(&dev);
    let mut bali = Bali::new(&model, BaliConfig { linearisation: Linearisation::Mean, progress: false, ..Default::default() }).unwrap();
    for _ in 0..3 {
        let hidden = bali.posterior().layers()[0].mean().clone();
        bali.step(&mut model, &data, data.len()).unwrap();
        // the update linearised at the previous means: its features are tanh(M_h [x, 1])
        let design = x
            .chunks(2)
            .map(|r| {
                let mut phi: Vec<f64> = (0..5).map(|u| (hidden[(u, 0)] * r[0] + hidden[(u, 1)] * r[1] + hidden[(u, 2)]).tanh()).collect();
                phi.push(1.0);
                phi
            })
            .collect();
        let exact = BlrPosterior::compute(&BlrProblem {
            design,
            targets: y.clone(),
            prior_mean: vec![0.0; 6],
            prior_covariance: PriorCovariance::Isotropic(0.49),
            noise_std: 0.3,
        })
        .unwrap();
        assert_matches_blr(&bali.posterior().layers()[1], &[exact], 1e-9);
    }
}

#[test]
fn matrix_normal_sampler_has_the_kronecker_covariance() {
    let dev = Cpu::default();
    let mean = Matrix::from_rows(&[vec![1.0, -0.5, 0.2], vec![0.0, 2.0, -1.0]]).unwrap();
    let row_cov = Matrix::from_rows(&[vec![0.8, -0.3], vec![-0.3, 0.5]]).unwrap();
    let col_prec = Matrix::from_rows(&[vec![2.0, 0.6, 0.1], vec![0.6, 1.5, -0.4], vec![0.1, -0.4, 3.0]]).unwrap();
    let mn = MatrixNormal::new(mean.clone(), row_cov, col_prec).unwrap();
    let want = mn.covariance();
    // Σ ⊗ Λ⁻¹ entry by entry
    let ci = mn.column_covariance();
    assert!((want[(1, 5)] - (-0.3) * ci[(1, 2)]).abs() < 1e-14);
    static LAYERS: [LayerSpec; 1] =
        [LayerSpec { name: "w", d_in: 2, d_out: 2, activation: Activation::Identity, prior: NormalSpec::STANDARD, bias_prior: None }];
    static ARCH: Architecture = Architecture {
        name: "MN",
        layers: &LAYERS,
        likelihood_name: "noise",
        likelihood: LikelihoodSpec::Gaussian { scale: Param::Fixed(1.0), upper: None },
    };
    let post = BaliPosterior::<f64, Cpu>::new(&dev, &ARCH, vec![mn.clone()]).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let device_draws = post.sample(20_000, &mut rng).unwrap().to_flat();
    let host_draws: Vec<Vec<f64>> = (0..20_000).map(|_| mn.sample(&mut rng).unwrap().as_slice().to_vec()).collect();
    for draws in [&device_draws, &host_draws] {
        // every covariance entry within its Bonferroni-corrected MCSE bound (false alarm ≤ 1e-3)
        assert_covariance(draws, &want, 1e-3);
        for (j, m) in mean.as_slice().iter().enumerate() {
            let col: Vec<f64> = draws.iter().map(|d| d[j]).collect();
            assert_mean(&col, *m, 1e-3 / 6.0);
        }
        // power: the transposed Kronecker order (Λ⁻¹ ⊗ Σ read row-major) is rejected
        let mut swapped = Matrix::zeros(6, 6);
        for a in 0..6 {
            for b in 0..6 {
                let (d, j, e, k) = (a % 2, a / 2, b % 2, b / 2);
                swapped[(a, b)] = mn.row_covariance()[(d, e)] * ci[(j, k)];
            }
        }
        assert!(!check_covariance(draws, &swapped, 1e-3).unwrap().passed);
    }
}

/// `Var` of the bias-corrected EMA after `k` updates, relative to one update's variance.
fn ema_var_factor(rho: f64, k: usize) -> f64 {
    (1.0 - rho).powi(2) * (1.0 - rho.powi(2 * k as i32)) / ((1.0 - rho * rho) * (1.0 - rho.powi(k as i32)).powi(2))
}

#[test]
fn moving_average_converges_to_the_full_batch_posterior_as_rho_goes_to_one() {
    let dev = Cpu::default();
    let (n, b) = (200usize, 20usize);
    let (x, y) = lin_data(n, 5);
    let data = Dataset::<f64, _>::regression(&dev, &x, 3, &y, 2).unwrap();
    let lambda0 = 0.5;
    let base = BaliConfig { prior: PriorPrecision::Fixed(lambda0), progress: false, ..Default::default() };
    let mut model = Lin::<f64, Cpu>::new(&dev);
    let mut full = Bali::new(&model, base.clone()).unwrap();
    full.step(&mut model, &data, n).unwrap();
    let full = full.posterior().layers()[0].clone();
    let (m, lam) = (full.mean().clone(), full.column_precision().clone());
    // Per-point contributions. A batch estimate is (N/B) Σ_B u_n, B points drawn without replacement:
    // its covariance is N² (N−B) / (B (N−1)) · Cov_pop(u). For Λ, u_n = φ_n φ_nᵀ; for the mean,
    // linearising M = (M_0 Λ_0 + T) Λ⁻¹ in (T, A) gives δM = Σ (t_n − M φ_n) φ_nᵀ Λ⁻¹ per point.
    let phi: Vec<[f64; 4]> = x.chunks(3).map(|r| [r[0], r[1], r[2], 1.0]).collect();
    let lam_inv = lam.cholesky().unwrap().inverse();
    let per_point = |k: usize| -> (Vec<f64>, Vec<f64>) {
        let p = &phi[k];
        let aa: Vec<f64> = (0..16).map(|e| p[e / 4] * p[e % 4]).collect();
        let mut dm = vec![0.0; 8];
        for d in 0..2 {
            let r = y[2 * k + d] - (0..4).map(|j| m[(d, j)] * p[j]).sum::<f64>();
            for j in 0..4 {
                dm[d * 4 + j] = (0..4).map(|a| r * p[a] * lam_inv[(a, j)]).sum();
            }
        }
        (aa, dm)
    };
    let pop_var = |f: &dyn Fn(usize) -> Vec<f64>, len: usize| -> Vec<f64> {
        let vals: Vec<Vec<f64>> = (0..n).map(f).collect();
        (0..len)
            .map(|e| {
                let mean = vals.iter().map(|v| v[e]).sum::<f64>() / n as f64;
                vals.iter().map(|v| (v[e] - mean).powi(2)).sum::<f64>() / n as f64
            })
            .collect()
    };
    let batch_factor = (n * n) as f64 * (n - b) as f64 / (b as f64 * (n - 1) as f64);
    let var_aa: Vec<f64> = pop_var(&|k| per_point(k).0, 16).iter().map(|v| v * batch_factor).collect();
    let var_m: Vec<f64> = pop_var(&|k| per_point(k).1, 8).iter().map(|v| v * batch_factor).collect();
    // 16 + 8 z-scores per ρ, three ρ: Bonferroni at a total false-alarm rate of 1e-3
    let z_max = normal_quantile(1.0 - 1e-3 / (2.0 * 24.0 * 3.0));
    let mut rms = Vec::new();
    for (rho, seed) in [(0.9, 11u64), (0.99, 12), (0.999, 13)] {
        let steps = (8.0 / (1.0 - rho)) as usize;
        let mut model = Lin::<f64, Cpu>::new(&dev);
        let mut bali = Bali::new(&model, BaliConfig { rho: Some(rho), ..base.clone() }).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..n).collect();
        for _ in 0..steps {
            // independent batches of B distinct points
            let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(&mut idx[..], &mut rng, b);
            let batch = data.rows(chosen).unwrap();
            bali.step(&mut model, &batch, n).unwrap();
        }
        let post = &bali.posterior().layers()[0];
        let f = ema_var_factor(rho, steps);
        let got_lam = post.column_precision().as_slice().iter().zip(lam.as_slice());
        for (e, ((got, want), var)) in got_lam.zip(&var_aa).enumerate() {
            // the bias-bias entry Σ 1·1 = N has no sampling variance: it must be exact
            let z = (got - want) / (f * var).sqrt().max(1e-300);
            assert!(
                z.abs() < z_max || (*var == 0.0 && (got - want).abs() < 1e-9 * want),
                "rho {rho}: Λ entry {e} off by {z:.2} standard errors"
            );
        }
        let mut sq = 0.0;
        for (e, ((got, want), var)) in post.mean().as_slice().iter().zip(m.as_slice()).zip(&var_m).enumerate() {
            let err = got - want;
            let z = err / (f * var).sqrt();
            assert!(z.abs() < z_max, "rho {rho}: mean entry {e} off by {z:.2} standard errors");
            sq += err * err;
        }
        rms.push((sq / 8.0).sqrt());
    }
    println!("rms error of the EMA posterior mean for rho = 0.9, 0.99, 0.999: {rms:?}");
    // the error shrinks like sqrt((1−ρ)/(1+ρ)): about ten-fold per step of ρ here
    assert!(rms[2] < rms[1] && rms[1] < rms[0], "{rms:?}");
}

/// One tanh hidden layer, learned noise: the synthetic regression task of the MFVI comparison.
#[bnn]
struct Wave {
    #[layer(prior = Normal(0.0, 1.0))]
    h: Dense<1, 32, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<32, 1>,
    #[likelihood]
    noise: Gaussian<Learned<0.5>>,
}

fn wave(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f64> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let y = x.iter().map(|&x: &f64| (1.5 * x).sin() + 0.3 * x + 0.2 * normal(&mut rng)).collect();
    (x, y)
}

/// The claim: within 30 epochs (minibatches of 32, so 300 updates) BALI's test NLL is at least as
/// good as that of mean-field VI after 3000 full-batch Adam steps on the same model. Both test NLLs
/// are averages over 300 test points of a 400-sample predictive; "as good" is tested on the paired
/// per-point differences (not worse beyond two standard errors), and the figures are printed.
#[test]
fn bali_matches_mean_field_vi_in_few_epochs() {
    let dev = Cpu::default();
    let (x, y) = wave(300, 21);
    let (xt, yt) = wave(300, 22);
    let train = Dataset::<f32, _>::regression(&dev, &x, 1, &y, 1).unwrap();
    let test = Dataset::<f32, _>::regression(&dev, &xt, 1, &yt, 1).unwrap();

    let mut vmodel = Wave::<f32, Cpu>::new(&dev);
    let mut guide = vmodel.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed: 1 }).unwrap();
    let cfg = FitConfig {
        steps: 3000,
        lr: 2e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples: 8, local_reparam: true, ..Default::default() },
        progress: false,
        ..Default::default()
    };
    fit(&mut vmodel, &mut guide, &train, &cfg).unwrap();
    let mfvi = Predictive::new(400).evaluate(&vmodel, &guide, &test).unwrap();

    let epochs = 30;
    let mut model = Wave::<f32, Cpu>::new(&dev);
    let (post, report) =
        fit_bali(&mut model, &train, &BaliConfig { epochs, batch_size: Some(32), progress: false, ..Default::default() }).unwrap();
    let bali = Predictive::new(400).evaluate(&model, post.clone(), &test).unwrap();
    println!(
        "test NLL: BALI {:.4} ± {:.4} after {epochs} epochs ({} updates, {:.2} s); MFVI {:.4} ± {:.4} after 3000 steps; train NLL per epoch {:?}",
        -bali.mean_lpd,
        bali.mean_lpd_se,
        report.steps,
        report.seconds,
        -mfvi.mean_lpd,
        mfvi.mean_lpd_se,
        report.history.iter().map(|r| (r.train_nll * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
    // "at least as good", tested as: BALI is not worse than MFVI beyond 2 standard errors of the
    // paired per-point difference of log predictive densities (a one-sided ~2.5 % test)
    let diff: Vec<f64> = bali.pointwise_lpd.iter().zip(&mfvi.pointwise_lpd).map(|(b, v)| b - v).collect();
    let (d, se) = weightspace::metrics::mean_and_se(&diff).unwrap();
    println!("paired LPD difference BALI - MFVI: {d:.4} ± {se:.4}");
    assert!(d >= -2.0 * se, "BALI NLL {} vs MFVI {}: paired difference {d} ± {se}", -bali.mean_lpd, -mfvi.mean_lpd);
}

#[bnn]
struct Blobs {
    #[layer(prior = Normal(0.0, 1.0))]
    h: Dense<2, 16, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<16, 3>,
    #[likelihood]
    labels: Categorical,
}

#[test]
fn classifier_separates_three_blobs() {
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let centres = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]];
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for i in 0..240 {
        let c = i % 3;
        x.extend([centres[c][0] + 0.6 * normal(&mut rng), centres[c][1] + 0.6 * normal(&mut rng)]);
        labels.push(c);
    }
    let train = Dataset::<f32, _>::classification(&dev, &x[..320], 2, &labels[..160], 3).unwrap();
    let test = Dataset::<f32, _>::classification(&dev, &x[320..], 2, &labels[160..], 3).unwrap();
    let mut model = Blobs::<f32, Cpu>::new(&dev);
    let cfg = BaliConfig { epochs: 20, batch_size: Some(32), alpha: 0.3, damping: 1.0, progress: false, ..Default::default() };
    let (post, _) = fit_bali(&mut model, &train, &cfg).unwrap();
    let m = Predictive::new(200).evaluate(&model, post.clone(), &test).unwrap();
    println!("blobs: accuracy {:?}, NLL {:.3}, ECE {:?}", m.accuracy, -m.mean_lpd, m.ece);
    // the blobs overlap by less than 2 % (centres ≥ 3.2 sd apart): a working classifier is above 90 %
    assert!(m.accuracy.unwrap() > 0.9, "{:?}", m.accuracy);
}

#[test]
fn bad_settings_and_data_are_errors_and_leave_the_state_untouched() {
    let dev = Cpu::default();
    let (x, y) = lin_data(20, 9);
    let data = Dataset::<f64, _>::regression(&dev, &x, 3, &y, 2).unwrap();
    let mut model = Lin::<f64, Cpu>::new(&dev);
    for cfg in [
        BaliConfig { alpha: 0.0, ..Default::default() },
        BaliConfig { rho: Some(1.0), ..Default::default() },
        BaliConfig { damping: f64::NAN, ..Default::default() },
        BaliConfig { output_damping: -0.5, ..Default::default() },
        BaliConfig { epochs: 0, ..Default::default() },
        BaliConfig { batch_size: Some(21), ..Default::default() },
        BaliConfig { prior: PriorPrecision::Fixed(-1.0), ..Default::default() },
        BaliConfig { linearisation: Linearisation::Samples(0), ..Default::default() },
        BaliConfig { learn_noise: Some(true), ..Default::default() },
    ] {
        let r = fit_bali(&mut model, &data, &BaliConfig { progress: false, ..cfg.clone() });
        // learn_noise is valid for this Gaussian model; everything else is rejected up front
        if cfg.learn_noise == Some(true) {
            assert!(r.is_ok());
        } else {
            assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{cfg:?}: {r:?}");
        }
    }
    // a noise scale for a classifier, targets of the wrong kind
    assert!(matches!(
        Bali::<f32, Cpu>::new(&Blobs::<f32, Cpu>::new(&dev), BaliConfig { learn_noise: Some(true), ..Default::default() }),
        Err(Error::InvalidConfig { .. })
    ));
    let mut bali = Bali::new(&model, BaliConfig::default()).unwrap();
    let labels = Dataset::<f64, _>::classification(&dev, &x, 3, &[0; 20], 2).unwrap();
    assert!(matches!(bali.step(&mut model, &labels, 20), Err(Error::Shape { .. })));
    assert!(matches!(bali.step(&mut model, &data, 5), Err(Error::InvalidConfig { .. })));
    // overflowing targets: the update fails as a divergence and the posterior is unchanged
    bali.step(&mut model, &data, 20).unwrap();
    let before = bali.posterior().layers()[0].clone();
    let huge: Vec<f64> = y.iter().map(|v| v * 1e300).collect();
    let bad = Dataset::<f64, _>::regression(&dev, &x, 3, &huge, 2).unwrap();
    let err = bali.step(&mut model, &bad, 20).unwrap_err();
    assert!(matches!(err, Error::Diverged { .. } | Error::NonFinite { .. }), "{err}");
    assert_eq!(bali.posterior().layers()[0], before);
    assert_eq!(bali.steps(), 1);
}

/// An output layer with a non-identity activation: BALI regresses the pre-activation, so it refuses.
#[bnn]
struct SquashedOut {
    #[layer(prior = Normal(0.0, 1.0))]
    h: Dense<3, 4, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 2, Sigmoid>,
    #[likelihood]
    noise: Gaussian<Fixed<0.4>>,
}

#[test]
fn output_activation_other_than_identity_is_an_error() {
    let dev = Cpu::default();
    let model = SquashedOut::<f64, Cpu>::new(&dev);
    let err = Bali::<f64, Cpu>::new(&model, BaliConfig::default()).unwrap_err();
    match &err {
        Error::InvalidConfig { name, value, .. } => {
            assert_eq!(*name, "output layer activation");
            assert!(value.contains("Sigmoid") && value.contains("`out`"), "{value}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    let (x, y) = lin_data(10, 3);
    let data = Dataset::<f64, _>::regression(&dev, &x, 3, &y, 2).unwrap();
    let mut model = model;
    assert!(matches!(fit_bali(&mut model, &data, &BaliConfig { progress: false, ..Default::default() }), Err(Error::InvalidConfig { .. })));
    // the same network with an identity output is accepted
    assert!(Bali::<f64, Cpu>::new(&Lin::<f64, Cpu>::new(&dev), BaliConfig::default()).is_ok());
}

/// `init_scale` moves every layer's initial mean off the prior mean, the last included.
#[test]
fn init_scale_perturbs_every_layer_including_the_last() {
    let dev = Cpu::default();
    let model = SquashedOutId::<f64, Cpu>::new(&dev);
    let at = |init_scale: f64| {
        let bali = Bali::<f64, Cpu>::new(&model, BaliConfig { init_scale, ..Default::default() }).unwrap();
        bali.posterior().layers().iter().map(|l| l.mean().as_slice().iter().map(|v| v.abs()).fold(0.0, f64::max)).collect::<Vec<_>>()
    };
    // prior mean 0: init_scale 0 leaves every mean at exactly 0, init_scale 1 moves every layer
    assert!(at(0.0).iter().all(|&m| m == 0.0));
    assert!(at(1.0).iter().all(|&m| m > 0.0));
}

#[bnn]
struct SquashedOutId {
    #[layer(prior = Normal(0.0, 1.0))]
    h: Dense<3, 4, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.4>>,
}

/// One softmax layer, prior N(0, 1.5²) on every weight and bias.
#[bnn]
struct Softmax {
    #[layer(prior = Normal(0.0, 1.5))]
    out: Dense<2, 3>,
    #[likelihood]
    labels: Categorical,
}

/// The mean step with the model's prior converges to the model's MAP: at BALI's posterior mean
/// (linearised at the mean, full batch) the gradient of the negative log posterior,
/// `Σ_n (p_n − e_{y_n}) φ_nᵀ + W / c`, vanishes. With the matrix-normal prior in the mean step the
/// fixed point is the MAP of another prior, and the model's gradient there does not vanish.
#[test]
fn mean_step_converges_to_the_models_map() {
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let centres = [[-1.0, 0.0], [1.0, 0.0], [0.0, 1.2]];
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for i in 0..90 {
        let c = i % 3;
        x.extend([centres[c][0] + 0.8 * normal(&mut rng), centres[c][1] + 0.8 * normal(&mut rng)]);
        labels.push(c);
    }
    let data = Dataset::<f64, _>::classification(&dev, &x, 2, &labels, 3).unwrap();
    let grad_norm = |model_prior_in_mean: bool| {
        let mut model = Softmax::<f64, Cpu>::new(&dev);
        let cfg =
            BaliConfig { epochs: 2000, linearisation: Linearisation::Mean, model_prior_in_mean, progress: false, ..Default::default() };
        let (post, _) = fit_bali(&mut model, &data, &cfg).unwrap();
        let w = post.layers()[0].mean();
        let mut g = [[0.0f64; 3]; 3];
        for (r, &y) in x.chunks(2).zip(&labels) {
            let phi = [r[0], r[1], 1.0];
            let z: Vec<f64> = (0..3).map(|d| (0..3).map(|j| w[(d, j)] * phi[j]).sum()).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let tot: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for d in 0..3 {
                let p = (z[d] - m).exp() / tot - if d == y { 1.0 } else { 0.0 };
                for j in 0..3 {
                    g[d][j] += p * phi[j];
                }
            }
        }
        let mut norm = 0.0;
        for d in 0..3 {
            for j in 0..3 {
                norm += (g[d][j] + w[(d, j)] / 2.25).powi(2);
            }
        }
        norm.sqrt()
    };
    let with_model_prior = grad_norm(true);
    let with_mn_prior = grad_norm(false);
    // the data term alone is O(N) = 90 per weight far from the optimum
    println!("gradient norm: model prior {with_model_prior:e}, matrix-normal prior {with_mn_prior:e}");
    assert!(with_model_prior < 1e-6, "gradient at the fixed point {with_model_prior}");
    assert!(with_mn_prior > 1e-2, "matrix-normal prior's fixed point: gradient {with_mn_prior}");
}

/// A categorical output layer's `Σ_L` is the inverse of its exact Gauss–Newton factor
/// `G_L = mean_n (diag p_n − p_n p_nᵀ)` plus `output_damping · tr(G_L)/o · I`, whatever the hidden
/// layers' damping, and the softmax's invariant direction 1 gets `G_L`'s mean non-zero eigenvalue
/// `tr(G_L)/(o − 1)` on top (so that `output_damping = 0` is the undamped factor, gauge fixed).
#[test]
fn categorical_output_layer_has_its_own_damping_and_the_softmax_gauge_fixed() {
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let x: Vec<f64> = (0..60).map(|_| normal(&mut rng)).collect();
    let labels: Vec<usize> = (0..30).map(|i| i % 3).collect();
    let data = Dataset::<f64, _>::classification(&dev, &x, 2, &labels, 3).unwrap();
    let sigma_after_one_step = |damping: f64, output_damping: f64| {
        let mut model = Softmax::<f64, Cpu>::new(&dev);
        let cfg = BaliConfig { damping, output_damping, linearisation: Linearisation::Mean, progress: false, ..Default::default() };
        let mut bali = Bali::new(&model, cfg).unwrap();
        let w = bali.posterior().layers()[0].mean().clone();
        bali.step(&mut model, &data, 30).unwrap();
        (w, bali.posterior().layers()[0].row_covariance().clone())
    };
    let (w, _) = sigma_after_one_step(0.1, 0.0);
    let mut g = [0.0; 9];
    for r in x.chunks(2) {
        let z: Vec<f64> = (0..3).map(|d| w[(d, 0)] * r[0] + w[(d, 1)] * r[1] + w[(d, 2)]).collect();
        let tot: f64 = z.iter().map(|v| v.exp()).sum();
        let p: Vec<f64> = z.iter().map(|v| v.exp() / tot).collect();
        for a in 0..3 {
            g[a * 3 + a] += p[a] / 30.0;
            for b in 0..3 {
                g[a * 3 + b] -= p[a] * p[b] / 30.0;
            }
        }
    }
    let tr = g[0] + g[4] + g[8];
    for output_damping in [0.0, 1.0] {
        let (_, sigma) = sigma_after_one_step(0.1, output_damping);
        let expected: Vec<f64> = (0..9).map(|k| g[k] + tr / 2.0 / 3.0 + if k % 4 == 0 { output_damping * tr / 3.0 } else { 0.0 }).collect();
        let expected = Matrix::from_row_major(3, 3, expected).unwrap().cholesky().unwrap().inverse();
        println!("output damping {output_damping}: Σ_L {sigma:?}\nexpected {expected:?}");
        let d = rel_diff(&sigma, &expected);
        assert!(d < 1e-9, "output damping {output_damping}: Σ_L is not (G_L + δ I + tr(G_L)/(o−1) · 11ᵀ/o)⁻¹: {d}");
        let (_, heavily_damped) = sigma_after_one_step(10.0, output_damping);
        assert!(rel_diff(&heavily_damped, &sigma) < 1e-12, "the hidden layers' damping reached the output layer");
    }
}

/// The linearised predictive of a BALI posterior: for a single linear layer it is the plain
/// predictive (same draws, same outputs); for a hidden layer its mean is the network at the
/// posterior means, up to Monte-Carlo error (`E[J (W − M)] = 0`), which the sampled network's is not.
#[test]
fn linearised_predictive_of_a_bali_posterior() {
    let dev = Cpu::default();
    let (x, y) = lin_data(40, 9);
    let data = Dataset::<f64, _>::regression(&dev, &x, 3, &y, 2).unwrap();
    let mut model = Lin::<f64, Cpu>::new(&dev);
    let (post, _) = fit_bali(&mut model, &data, &BaliConfig { epochs: 1, progress: false, ..Default::default() }).unwrap();
    let plain = Predictive::new(50).run(&model, post.clone(), &data.x).unwrap();
    let lin = Predictive::new(50).run(&model, post.linearised(), &data.x).unwrap();
    for (a, b) in plain.mean.iter().zip(&lin.mean).chain(plain.f_std.iter().zip(&lin.f_std)) {
        assert!((a - b).abs() < 1e-12);
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let x: Vec<f64> = (0..80).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let y: Vec<f64> = x.chunks(2).map(|r| (r[0] * r[1]).sin() + 0.3 * normal(&mut rng)).collect();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let mut model = Deep::<f64, Cpu>::new(&dev);
    let (post, _) = fit_bali(&mut model, &data, &BaliConfig { epochs: 5, progress: false, ..Default::default() }).unwrap();
    let k = 4000;
    let at_mean = model.forward(post.mean_weights(), &data.x).unwrap().as_vec();
    let lin = Predictive::new(k).run(&model, post.linearised(), &data.x).unwrap();
    let sampled = Predictive::new(k).run(&model, post.clone(), &data.x).unwrap();
    let mut sampled_off = 0;
    for (i, f_m) in at_mean.iter().enumerate() {
        let se = lin.f_std[i] / (k as f64).sqrt();
        assert!((lin.mean[i] - f_m).abs() < 4.0 * se + 1e-12, "point {i}: {} against f(M) = {f_m}", lin.mean[i]);
        if (sampled.mean[i] - f_m).abs() > 4.0 * sampled.f_std[i] / (k as f64).sqrt() {
            sampled_off += 1;
        }
    }
    // the tanh network's curvature moves the sampled network's mean off f(M) at many points
    assert!(sampled_off > data.len() / 4, "{sampled_off} of {} points", data.len());
}
