//! MCMC tests: NUTS and the many-chain sampler on known targets, the BNN log density (fused kernel
//! against the generic dfdx path and finite differences), the chain-count bound, the LPPD, and
//! the SYM-MCMC workflow end to end.
//!
//! Statistical checks use the toolkit's MCSE-based assertions (`Draws::chains`, so the standard
//! errors use the ESS) at a false-alarm rate of 0.001 per check, with fixed seeds.

use rand::{Rng, SeedableRng};
use weightspace::comm::{Communicator, Workers};
use weightspace::diagnostics::rhat;
use weightspace::linalg::Matrix;
use weightspace::mcmc::*;
use weightspace::prelude::*;
use weightspace::testing::assert::{assert_covariance, assert_mean, Draws, VectorDraws};
use weightspace::testing::reference::{BlrPosterior, BlrProblem, PriorCovariance};

const ALPHA: f64 = 0.001;

/// A correlated 2-D Gaussian: mean (1, −2), sds (1, 2), correlation 0.8.
struct Correlated;

const MU: [f64; 2] = [1.0, -2.0];
const COV: [[f64; 2]; 2] = [[1.0, 1.6], [1.6, 4.0]];

fn correlated_logp(x: &[f64], g: &mut [f64]) -> f64 {
    let det = COV[0][0] * COV[1][1] - COV[0][1] * COV[1][0];
    let prec = [[COV[1][1] / det, -COV[0][1] / det], [-COV[1][0] / det, COV[0][0] / det]];
    let dx = [x[0] - MU[0], x[1] - MU[1]];
    let pd = [prec[0][0] * dx[0] + prec[0][1] * dx[1], prec[1][0] * dx[0] + prec[1][1] * dx[1]];
    g[0] = -pd[0];
    g[1] = -pd[1];
    -0.5 * (dx[0] * pd[0] + dx[1] * pd[1])
}

impl LogDensity for Correlated {
    fn dim(&self) -> usize {
        2
    }
    fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
        Ok(correlated_logp(x, g))
    }
}

impl BatchLogDensity for Correlated {
    fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
        for (c, l) in lp.iter_mut().enumerate() {
            *l = correlated_logp(&x[2 * c..2 * c + 2], &mut g[2 * c..2 * c + 2]);
        }
        Ok(())
    }
}

fn cov_matrix() -> Matrix {
    Matrix::from_rows(&[COV[0].to_vec(), COV[1].to_vec()]).unwrap()
}

/// Checks the mean of every coordinate and the covariance of chains of vector draws.
fn check_moments(chains: &[Vec<Vec<f64>>], mean: &[f64], cov: &Matrix) {
    for (j, &m) in mean.iter().enumerate() {
        let series: Vec<Vec<f64>> = chains.iter().map(|c| c.iter().map(|x| x[j]).collect()).collect();
        let r = rhat(&series).unwrap();
        assert!(r < 1.02, "R-hat {r} of coordinate {j}");
        assert_mean(Draws::chains(&series), m, ALPHA);
    }
    assert_covariance(VectorDraws::chains(chains), cov, ALPHA);
}

#[test]
fn nuts_recovers_a_correlated_gaussian() {
    let chains: Vec<NutsRun> = (0..4)
        .map(|c| {
            sample_nuts(&mut Correlated, &[0.0, 0.0], &NutsSettings { warmup: 500, draws: 1000, seed: c, ..Default::default() }).unwrap()
        })
        .collect();
    for run in &chains {
        assert_eq!(run.divergences(), 0);
        assert!(run.step_size().unwrap() > 0.05);
        assert!(run.mean_tree_depth() >= 1.0 && run.stats.iter().all(|s| s.tree_depth <= 10));
    }
    let draws: Vec<Vec<Vec<f64>>> = chains.into_iter().map(|r| r.draws).collect();
    check_moments(&draws, &MU, &cov_matrix());
}

#[test]
fn many_chain_sampler_recovers_a_correlated_gaussian() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let init: Vec<Vec<f64>> = (0..32).map(|_| vec![rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)]).collect();
    for (step_size, diag) in [(StepSizeAdaptation::Shared, false), (StepSizeAdaptation::PerChain, true)] {
        let s = ManyChainSettings { warmup: 400, draws: 1000, seed: 1, step_size, diagonal_mass_matrix: diag, ..Default::default() };
        let run = sample_many_chains(&mut Correlated, init.clone(), &s).unwrap();
        assert_eq!(run.total_divergences(), 0, "{step_size:?}");
        assert!(run.trajectory_length > run.step_sizes[0], "ChEES should lengthen trajectories beyond one step");
        check_moments(&run.draws, &MU, &cov_matrix());
    }
}

/// The correlated Gaussian, evaluated on the worker threads a sampler offers it.
#[derive(Default)]
struct OnWorkers {
    workers: Option<Workers>,
    /// Batched calls before the sampler offered its workers, and calls that ran on a worker
    /// rather than on the sampler's own thread.
    calls_before_sharing: usize,
    calls: usize,
    calls_on_a_worker: usize,
}

impl LogDensity for OnWorkers {
    fn dim(&self) -> usize {
        2
    }
    fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
        Ok(correlated_logp(x, g))
    }
}

impl BatchLogDensity for OnWorkers {
    fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
        let Some(workers) = &self.workers else {
            self.calls_before_sharing += 1;
            return Correlated.logp_batch(x, lp, g);
        };
        let caller = std::thread::current().id();
        let elsewhere = workers.install(|| Correlated.logp_batch(x, lp, g).map(|()| std::thread::current().id() != caller))?;
        self.calls += 1;
        self.calls_on_a_worker += usize::from(elsewhere);
        Ok(())
    }
    fn share_workers(&mut self, workers: &Workers) {
        self.workers = Some(workers.clone());
    }
}

#[test]
fn the_many_chain_samplers_share_their_threads_with_the_target() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let init: Vec<Vec<f64>> = (0..40).map(|_| vec![rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)]).collect();
    let (mut chees_draws, mut nuts_draws) = (Vec::new(), Vec::new());
    for threads in [1, 2] {
        let check = |t: &OnWorkers| {
            assert_eq!(t.calls_before_sharing, 0, "the workers are offered before the first evaluation");
            assert_eq!(t.workers.as_ref().map(Workers::threads), Some(threads));
            // with a pool, every call runs on one of its threads; without, on the sampler's
            assert_eq!(t.calls_on_a_worker, if threads > 1 { t.calls } else { 0 }, "{threads} threads");
            assert!(t.calls > 100);
        };
        let mut target = OnWorkers::default();
        let s = ManyChainSettings { warmup: 50, draws: 5, seed: 2, threads, ..Default::default() };
        chees_draws.push(sample_many_chains(&mut target, init.clone(), &s).unwrap().draws);
        check(&target);
        let mut target = OnWorkers::default();
        let s = NutsSettings { warmup: 50, draws: 5, seed: 2, threads, ..Default::default() };
        nuts_draws.push(sample_nuts_chains(&mut target, init.clone(), &s).unwrap().draws());
        check(&target);
    }
    // the threads change where the work runs, not the draws
    assert_eq!(chees_draws[0], chees_draws[1]);
    assert_eq!(nuts_draws[0], nuts_draws[1]);
}

/// Mean tree depth and leapfrog steps per transition after warm-up, over chains.
fn tree_stats(chains: &[NutsRun]) -> (f64, f64) {
    let kept: Vec<&DrawStats> = chains.iter().flat_map(|c| c.stats.iter().filter(|s| !s.warmup)).collect();
    let n = kept.len() as f64;
    (kept.iter().map(|s| s.tree_depth as f64).sum::<f64>() / n, kept.iter().map(|s| s.leapfrog_steps as f64).sum::<f64>() / n)
}

/// The batched NUTS against nuts-rs on the same target: both without divergences, and trees of
/// the same size. The two adapt differently (Stan's windows and acceptance statistic here,
/// nuts-rs's gradient-based mass matrix and symmetric acceptance statistic late in warm-up), which
/// moves the step size by up to about 20 %; a wrong U-turn rule changes the tree sizes by far more.
fn compare_with_nuts_rs(batched: &[NutsRun], reference: &[NutsRun]) {
    assert_eq!(batched.iter().map(NutsRun::divergences).sum::<usize>(), 0);
    assert_eq!(reference.iter().map(NutsRun::divergences).sum::<usize>(), 0);
    let ((depth, steps), (depth_ref, steps_ref)) = (tree_stats(batched), tree_stats(reference));
    assert!((depth - depth_ref).abs() < 0.75, "mean tree depth {depth} against nuts-rs {depth_ref}");
    assert!(steps / steps_ref < 1.6 && steps_ref / steps < 1.6, "leapfrog steps per transition {steps} against nuts-rs {steps_ref}");
    assert!(batched.iter().all(|c| c.stats.iter().all(|s| s.tree_depth <= 10 && s.leapfrog_steps < 1 << 10)));
}

#[test]
fn batched_nuts_recovers_a_correlated_gaussian_like_nuts_rs() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let init: Vec<Vec<f64>> = (0..8).map(|_| vec![rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)]).collect();
    let s = NutsSettings { warmup: 500, draws: 1000, seed: 2, ..Default::default() };
    let run = sample_nuts_chains(&mut Correlated, init, &s).unwrap();
    check_moments(&run.draws(), &MU, &cov_matrix());
    let reference: Vec<NutsRun> =
        (0..8).map(|c| sample_nuts(&mut Correlated, &[0.0, 0.0], &NutsSettings { seed: 20 + c, ..s.clone() }).unwrap()).collect();
    compare_with_nuts_rs(&run.chains, &reference);
    // every chain adapts its own step size, all near the same value on the same target
    let eps: Vec<f64> = run.chains.iter().map(|c| c.step_size().unwrap()).collect();
    assert!(eps.windows(2).any(|w| w[0] != w[1]), "{eps:?}");
    assert!(eps.iter().all(|e| *e > 0.3 && *e < 2.0), "{eps:?}");
}

/// A 10-D Gaussian whose odd coordinates have scale 10: the mass-matrix adaptation must find the
/// scales (without it, the trees would be ten times deeper).
struct Scaled;

impl LogDensity for Scaled {
    fn dim(&self) -> usize {
        10
    }
    fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
        let mut lp = 0.0;
        for j in 0..10 {
            let v = if j % 2 == 0 { 1.0 } else { 100.0 };
            g[j] = -x[j] / v;
            lp -= 0.5 * x[j] * x[j] / v;
        }
        Ok(lp)
    }
}

impl BatchLogDensity for Scaled {}

#[test]
fn batched_nuts_adapts_the_mass_matrix_and_matches_nuts_rs_on_a_scaled_gaussian() {
    let s = NutsSettings { warmup: 1000, draws: 500, seed: 4, ..Default::default() };
    let run = sample_nuts_chains(&mut Scaled, vec![vec![0.5; 10]; 8], &s).unwrap();
    let mut cov = Matrix::zeros(10, 10);
    for j in 0..10 {
        cov[(j, j)] = if j % 2 == 0 { 1.0 } else { 100.0 };
    }
    check_moments(&run.draws(), &[0.0; 10], &cov);
    let reference: Vec<NutsRun> =
        (0..8).map(|c| sample_nuts(&mut Scaled, &[0.5; 10], &NutsSettings { seed: 30 + c, ..s.clone() }).unwrap()).collect();
    compare_with_nuts_rs(&run.chains, &reference);
}

#[test]
fn batched_nuts_chains_do_not_depend_on_each_other_or_on_ranks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let init: Vec<Vec<f64>> = (0..7).map(|_| vec![rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0)]).collect();
    let s = NutsSettings { warmup: 100, draws: 20, seed: 1, ..Default::default() };
    let all = sample_nuts_chains(&mut Correlated, init.clone(), &s).unwrap();
    // the first three chains alone: the same draws, bit for bit
    let three = sample_nuts_chains(&mut Correlated, init[..3].to_vec(), &s).unwrap();
    assert_eq!(three.draws(), all.draws()[..3].to_vec());
    // split over 3 ranks and gathered on rank 0
    let parts = weightspace::testing::ranks::on_threads(3, |comm| sample_nuts_chains_on(comm, &mut Correlated, init.clone(), &s));
    let mut parts = parts.into_iter().map(Result::unwrap);
    let gathered = parts.next().unwrap().expect("rank 0 has the draws");
    assert!(parts.all(|p| p.is_none()));
    assert_eq!((gathered.ranks, gathered.chains.len()), (3, 7));
    assert_eq!(gathered.draws(), all.draws());
    assert_eq!(
        gathered.chains.iter().map(|c| c.stats.clone()).collect::<Vec<_>>(),
        all.chains.iter().map(|c| c.stats.clone()).collect::<Vec<_>>()
    );
    assert_eq!(gathered.gradient_evaluations, all.gradient_evaluations);
}

#[test]
fn batched_nuts_reports_bad_input_as_errors() {
    let s = NutsSettings { warmup: 10, draws: 5, ..Default::default() };
    assert!(matches!(sample_nuts_chains(&mut Correlated, Vec::new(), &s), Err(Error::InvalidConfig { name: "chains", .. })));
    let e = sample_nuts_chains(&mut Correlated, vec![vec![0.0, 0.0], vec![0.0]], &s).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("chain 1"), "{e}");
    let e = sample_nuts_chains(&mut Cliff, vec![vec![0.0], vec![4.0]], &s).unwrap_err();
    assert!(e.to_string().contains("chain 1"), "{e}");
    for bad in [
        NutsSettings { draws: 0, ..s.clone() },
        NutsSettings { target_accept: 1.0, ..s.clone() },
        NutsSettings { max_tree_depth: 0, ..s.clone() },
        NutsSettings { max_tree_depth: 31, ..s.clone() },
        NutsSettings { max_energy_error: f64::NAN, ..s.clone() },
    ] {
        assert!(matches!(sample_nuts_chains(&mut Correlated, vec![vec![0.0, 0.0]], &bad), Err(Error::InvalidConfig { .. })), "{bad:?}");
    }
}

/// y = w·x + b + ε with fixed noise and a N(0, 1) prior: the exact posterior is Bayesian linear
/// regression.
#[bnn]
struct Conj {
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<2, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.5>>,
}

fn conj_problem() -> (Vec<f64>, Vec<f64>, BlrPosterior) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (a, b) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
        x.extend([a, b]);
        y.push(0.7 * a - 1.2 * b + 0.3 + 0.5 * rng.sample::<f64, _>(rand_distr::StandardNormal));
    }
    let design = x.chunks(2).map(|r| vec![r[0], r[1], 1.0]).collect();
    let post = BlrPosterior::compute(&BlrProblem {
        design,
        targets: y.clone(),
        prior_mean: vec![0.0; 3],
        prior_covariance: PriorCovariance::Isotropic(1.0),
        noise_std: 0.5,
    })
    .unwrap();
    (x, y, post)
}

#[test]
fn nuts_recovers_the_conjugate_regression_posterior() {
    let dev = Cpu::default();
    let (x, y, exact) = conj_problem();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let model = Conj::<f64, Cpu>::new(&dev);
    let mut post = BnnPosterior::new(&model, &data, NoisePrior::Fixed).unwrap();
    assert_eq!(LogDensity::dim(&post), 3);
    let draws: Vec<Vec<Vec<f64>>> = (0..4)
        .map(|c| {
            let run =
                sample_nuts(&mut post, &[0.0; 3], &NutsSettings { warmup: 400, draws: 600, seed: 10 + c, ..Default::default() }).unwrap();
            assert_eq!(run.divergences(), 0);
            run.draws
        })
        .collect();
    check_moments(&draws, exact.mean(), exact.covariance());
}

#[test]
fn many_chain_sampler_recovers_the_conjugate_regression_posterior() {
    let dev = Cpu::default();
    let (x, y, exact) = conj_problem();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let model = Conj::<f64, Cpu>::new(&dev);
    for generic in [false, true] {
        let post = BnnPosterior::new(&model, &data, NoisePrior::Fixed).unwrap();
        let mut post = if generic { post.generic() } else { post };
        assert_eq!(post.is_fused(), !generic);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let init: Vec<Vec<f64>> = (0..32).map(|_| (0..3).map(|_| rng.gen_range(-2.0..2.0)).collect()).collect();
        let run =
            sample_many_chains(&mut post, init, &ManyChainSettings { warmup: 400, draws: 300, seed: 2, ..Default::default() }).unwrap();
        assert_eq!(run.total_divergences(), 0);
        check_moments(&run.draws, exact.mean(), exact.covariance());
    }
}

#[test]
fn batched_nuts_recovers_the_conjugate_regression_posterior() {
    let dev = Cpu::default();
    let (x, y, exact) = conj_problem();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let model = Conj::<f64, Cpu>::new(&dev);
    let mut post = BnnPosterior::new(&model, &data, NoisePrior::Fixed).unwrap().threads(2);
    assert!(post.is_fused());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let init: Vec<Vec<f64>> = (0..16).map(|_| (0..3).map(|_| rng.gen_range(-2.0..2.0)).collect()).collect();
    let run = sample_nuts_chains(&mut post, init, &NutsSettings { warmup: 400, draws: 300, seed: 2, ..Default::default() }).unwrap();
    check_moments(&run.draws(), exact.mean(), exact.covariance());
    let reference: Vec<NutsRun> = (0..8)
        .map(|c| sample_nuts(&mut post, &[0.0; 3], &NutsSettings { warmup: 400, draws: 300, seed: 10 + c, ..Default::default() }).unwrap())
        .collect();
    compare_with_nuts_rs(&run.chains, &reference);
}

/// Sampling under a replaced weight prior (`with_weight_prior`, e.g. a meta-learned one): with one
/// correlated Gaussian block over `(w₁, w₂, b)` the exact posterior is again Bayesian linear
/// regression, now with a full prior covariance. Both the fused and the generic path are checked.
#[test]
fn samplers_follow_a_replaced_correlated_weight_prior() {
    let dev = Cpu::default();
    let (x, y, _) = conj_problem();
    let prior_mean = vec![0.5, -0.5, 0.2];
    let prior_cov = vec![0.5, 0.3, 0.1, 0.3, 0.8, -0.2, 0.1, -0.2, 0.3];
    let exact = BlrPosterior::compute(&BlrProblem {
        design: x.chunks(2).map(|r| vec![r[0], r[1], 1.0]).collect(),
        targets: y.clone(),
        prior_mean: prior_mean.clone(),
        prior_covariance: PriorCovariance::Full(Matrix::from_row_major(3, 3, prior_cov.clone()).unwrap()),
        noise_std: 0.5,
    })
    .unwrap();
    let data = Dataset::<f64, _>::regression(&dev, &x, 2, &y, 1).unwrap();
    let model = Conj::<f64, Cpu>::new(&dev);
    let prior = GaussianWeightPrior::from_blocks(3, vec![(0, prior_mean, prior_cov)]).unwrap();
    for generic in [false, true] {
        let post = BnnPosterior::new(&model, &data, NoisePrior::Fixed).unwrap();
        let post = if generic { post.generic() } else { post };
        let mut post = post.with_weight_prior(prior.clone()).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let init: Vec<Vec<f64>> = (0..32).map(|_| prior.sample(&mut rng)).collect();
        let run =
            sample_many_chains(&mut post, init, &ManyChainSettings { warmup: 400, draws: 300, seed: 6, ..Default::default() }).unwrap();
        assert_eq!(run.total_divergences(), 0);
        check_moments(&run.draws, exact.mean(), exact.covariance());
    }
    // a prior over the wrong number of weights, or not positive definite, is an error
    let wrong = GaussianWeightPrior::from_blocks(2, vec![(0, vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0])]).unwrap();
    assert!(matches!(BnnPosterior::new(&model, &data, NoisePrior::Fixed).unwrap().with_weight_prior(wrong), Err(Error::Shape { .. })));
    let indefinite = GaussianWeightPrior::from_blocks(2, vec![(0, vec![0.0; 2], vec![1.0, 2.0, 2.0, 1.0])]);
    assert!(matches!(indefinite, Err(Error::NotPositiveDefinite { .. })), "{indefinite:?}");
    let gap = GaussianWeightPrior::from_blocks(3, vec![(0, vec![0.0], vec![1.0]), (2, vec![0.0], vec![1.0])]);
    assert!(matches!(gap, Err(Error::Shape { .. })), "{gap:?}");
    assert!(matches!(prior.log_density(&[0.0; 2], &mut [0.0; 3]), Err(Error::Shape { .. })));
}

#[bnn]
struct Tanh2 {
    #[layer(prior = Normal(0.1, 1.5))]
    hidden: Dense<2, 4, Tanh>,
    #[layer(prior = Normal(0.0, Learned(0.7)), fan_in_scaled)]
    out: Dense<4, 1>,
    #[likelihood]
    noise: Gaussian<Learned<0.3>>,
}

#[test]
fn fused_log_density_matches_the_generic_path_and_finite_differences() {
    let dev = Cpu::default();
    let t = weightspace::mcmc::data::regression2d(40, 3).standardise().0;
    let data = t.to_dataset::<f64, _>(&dev).unwrap();
    let model = Tanh2::<f64, Cpu>::new(&dev);
    for noise in [NoisePrior::HalfNormal(0.8), NoisePrior::Fixed] {
        let mut fused = BnnPosterior::new(&model, &data, noise).unwrap().threads(2);
        let mut generic = BnnPosterior::new(&model, &data, noise).unwrap().generic();
        let d = fused.dim();
        assert_eq!(d, 4 * 3 + 5 + usize::from(noise != NoisePrior::Fixed));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let c = 40;
        let pos: Vec<f64> = (0..c * d).map(|_| rng.gen_range(-1.5..1.5)).collect();
        let (mut lf, mut gf) = (vec![0.0; c], vec![0.0; c * d]);
        let (mut lg, mut gg) = (vec![0.0; c], vec![0.0; c * d]);
        fused.logp_batch(&pos, &mut lf, &mut gf).unwrap();
        generic.logp_batch(&pos, &mut lg, &mut gg).unwrap();
        for i in 0..c {
            assert!((lf[i] - lg[i]).abs() < 1e-9 * lg[i].abs().max(1.0), "chain {i}: fused {} generic {}", lf[i], lg[i]);
        }
        for (a, b) in gf.iter().zip(&gg) {
            assert!((a - b).abs() < 1e-8 * b.abs().max(1.0), "gradient: fused {a} generic {b}");
        }
        // central differences on the first chain
        let h = 1e-6;
        for j in 0..d {
            let (mut p1, mut p2) = (pos[..d].to_vec(), pos[..d].to_vec());
            p1[j] += h;
            p2[j] -= h;
            let mut g = vec![0.0; d];
            let f1 = LogDensity::logp(&mut fused, &p1, &mut g).unwrap();
            let f2 = LogDensity::logp(&mut fused, &p2, &mut g).unwrap();
            let fd = (f1 - f2) / (2.0 * h);
            assert!((fd - gf[j]).abs() < 1e-5 * fd.abs().max(1.0), "coordinate {j}: finite difference {fd}, gradient {}", gf[j]);
        }
    }
}

/// The fused kernel in f32 (on AVX-512 CPUs the tiled products with tanh fused into the stores)
/// against the generic dfdx path in f32, on a 3×16 tanh net like the paper's f2.
#[test]
fn fused_log_density_matches_the_generic_path_in_f32_on_a_deep_net() {
    #[bnn]
    struct F2 {
        #[layer(prior = Normal(0.0, 1.0))]
        h1: Dense<1, 16, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        h2: Dense<16, 16, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        h3: Dense<16, 16, Tanh>,
        #[layer(prior = Normal(0.0, 1.0))]
        out: Dense<16, 1>,
        #[likelihood]
        noise: Gaussian<Learned<1.0>>,
    }
    let dev = Cpu::default();
    let data = weightspace::mcmc::data::sinusoidal(120, 3).standardise().0.to_dataset::<f32, _>(&dev).unwrap();
    let model = F2::<f32, Cpu>::new(&dev);
    let mut fused = BnnPosterior::new(&model, &data, NoisePrior::HalfNormal(1.0)).unwrap().threads(2);
    let mut generic = BnnPosterior::new(&model, &data, NoisePrior::HalfNormal(1.0)).unwrap().generic();
    let d = fused.dim();
    assert_eq!(d, 16 * 2 + 17 * 16 * 2 + 17 + 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let c = 40;
    let pos: Vec<f64> = (0..c * d).map(|_| rng.gen_range(-1.0..1.0) * 0.5).collect();
    let (mut lf, mut gf) = (vec![0.0; c], vec![0.0; c * d]);
    let (mut lg, mut gg) = (vec![0.0; c], vec![0.0; c * d]);
    fused.logp_batch(&pos, &mut lf, &mut gf).unwrap();
    generic.logp_batch(&pos, &mut lg, &mut gg).unwrap();
    for i in 0..c {
        assert!((lf[i] - lg[i]).abs() < 1e-4 * lg[i].abs().max(1.0), "chain {i}: fused {} generic {}", lf[i], lg[i]);
        let scale = gg[i * d..(i + 1) * d].iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for j in 0..d {
            let (a, b) = (gf[i * d + j], gg[i * d + j]);
            assert!((a - b).abs() < 1e-4 * scale, "chain {i}, coordinate {j}: fused {a} generic {b}");
        }
    }
    // a batch of a few f2 chains is split over both threads (one chain is worth a thread); every
    // chain's result is the one it has in the 40-chain batch, bit for bit, and one thread agrees
    let mut serial = BnnPosterior::new(&model, &data, NoisePrior::HalfNormal(1.0)).unwrap().threads(1);
    for c in [1, 2, 3] {
        let (mut l2, mut g2) = (vec![0.0; c], vec![0.0; c * d]);
        let (mut l1, mut g1) = (vec![0.0; c], vec![0.0; c * d]);
        fused.logp_batch(&pos[..c * d], &mut l2, &mut g2).unwrap();
        serial.logp_batch(&pos[..c * d], &mut l1, &mut g1).unwrap();
        assert_eq!((&l2[..], &g2[..]), (&lf[..c], &gf[..c * d]), "{c} chains on two threads");
        assert_eq!((&l1[..], &g1[..]), (&lf[..c], &gf[..c * d]), "{c} chains on one thread");
    }
    // only the listed rows, evaluated where they are (what ChEES calls when some chains have
    // finished their trajectory): each equals its row of the whole batch bit for bit, on one
    // thread and two, and the other rows keep what they held; the generic path gathers them
    for rows in [vec![5], vec![0, 39], vec![1, 2, 3, 17, 30], (0..c).step_by(3).collect::<Vec<_>>()] {
        for (target, whole_lp, whole_g) in [(&mut fused, &lf, &gf), (&mut serial, &lf, &gf), (&mut generic, &lg, &gg)] {
            let (mut l, mut g) = (vec![7.0; c], vec![7.0; c * d]);
            target.logp_batch_rows(&rows, &pos, &mut l, &mut g).unwrap();
            for i in 0..c {
                let (want_l, want_g) =
                    if rows.contains(&i) { (whole_lp[i], &whole_g[i * d..(i + 1) * d]) } else { (7.0, &[7.0; 1024][..d]) };
                assert_eq!((l[i], &g[i * d..(i + 1) * d]), (want_l, want_g), "row {i} of {rows:?}");
            }
        }
    }
    let (mut l, mut g) = (vec![0.0; c], vec![0.0; c * d]);
    for bad in [vec![3, 3], vec![4, 2], vec![c]] {
        let err = fused.logp_batch_rows(&bad, &pos, &mut l, &mut g).unwrap_err().to_string();
        assert!(err.contains("rows to evaluate"), "{bad:?}: {err}");
    }
}

/// A target that is NaN for x > 3: moving there is a divergence, never a panic.
struct Cliff;

impl BatchLogDensity for Cliff {
    fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
        for (i, l) in lp.iter_mut().enumerate() {
            *l = if x[i] > 3.0 { f64::NAN } else { -0.5 * x[i] * x[i] };
            g[i] = -x[i];
        }
        Ok(())
    }
}

impl LogDensity for Cliff {
    fn dim(&self) -> usize {
        1
    }
    fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
        let mut l = [0.0];
        self.logp_batch(x, &mut l, g)?;
        Ok(l[0])
    }
}

#[test]
fn non_finite_densities_are_divergences_not_errors() {
    let run = sample_many_chains(
        &mut Cliff,
        vec![vec![0.0]; 32],
        &ManyChainSettings { warmup: 100, draws: 50, initial_step_size: 2.0, ..Default::default() },
    )
    .unwrap();
    assert!(run.warmup_divergences.iter().sum::<usize>() > 0);
    assert!(run.pooled().iter().all(|x| x[0] <= 3.0));
    let nuts = sample_nuts(&mut Cliff, &[0.5], &NutsSettings { warmup: 200, draws: 300, ..Default::default() }).unwrap();
    assert!(nuts.stats.iter().any(|s| s.diverging));
    assert!(nuts.draws.iter().all(|x| x[0] <= 3.0));
    let batched =
        sample_nuts_chains(&mut Cliff, vec![vec![0.5]; 4], &NutsSettings { warmup: 200, draws: 300, ..Default::default() }).unwrap();
    assert!(batched.chains.iter().flat_map(|c| &c.stats).any(|s| s.diverging));
    assert!(batched.draws().iter().flatten().all(|x| x[0] <= 3.0));
    // a non-finite start is an error that names the chain
    let err = sample_many_chains(&mut Cliff, vec![vec![0.0], vec![4.0]], &ManyChainSettings::default()).unwrap_err();
    assert!(err.to_string().contains("chain 1"), "{err}");
}

#[test]
fn zero_chains_is_a_settings_error() {
    let err = sample_many_chains(&mut Correlated, Vec::new(), &ManyChainSettings::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { name: "chains", .. }), "{err:?}");
    assert_eq!(err.to_string(), "invalid setting chains = 0: must be >= 1 (one initial position per chain)");
}

fn harmonic(n: usize) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}

#[test]
fn chain_bound() {
    let p = paper_mode_probabilities();
    assert!((p[0] - 0.5665).abs() < 1e-4 && (p[1] - 0.3505).abs() < 1e-4 && (p[2] - 0.0830).abs() < 1e-4);
    assert!((expected_chains(&p).unwrap() - 12.73).abs() < 0.005);
    assert_eq!(chains_needed(&p, 0.01).unwrap(), 1274);
    // uniform probabilities: ν·H_ν, both by inclusion–exclusion (ν ≤ 16) and by the integral (ν > 16)
    for nu in [1, 2, 5, 16, 17, 48] {
        let e = expected_chains(&vec![1.0; nu]).unwrap();
        let want = nu as f64 * harmonic(nu);
        assert!((e - want).abs() < 1e-6 * want, "ν = {nu}: {e} vs {want}");
    }
    // 48 copies of a 1×3 net treated as modes: about 21,402 chains
    assert_eq!(chains_needed(&[1.0; 48], 0.01).unwrap(), (48.0 * harmonic(48) / 0.01).ceil() as usize);
    // the bound grows as δ shrinks
    let counts: Vec<usize> = [0.5, 0.1, 0.05, 0.01, 0.001].iter().map(|&d| chains_needed(&p, d).unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    assert!(chains_needed(&p, 0.0).is_err() && expected_chains(&[]).is_err() && expected_chains(&[0.5, -0.1]).is_err());
}

#[test]
fn lppd_matches_a_direct_computation_and_survives_underflow() {
    // 3 samples × 2 points
    let ll = [-1.0, -2.0, -0.5, -3.0, -2.0, -1.5];
    let l = lppd(&ll, 3, 2).unwrap();
    let direct: Vec<f64> = (0..2).map(|i| ((0..3).map(|s| f64::exp(ll[s * 2 + i])).sum::<f64>() / 3.0).ln()).collect();
    for (got, want) in l.pointwise.iter().zip(&direct) {
        assert!((got - want).abs() < 1e-12);
    }
    assert!((l.mean - (direct[0] + direct[1]) / 2.0).abs() < 1e-12);
    let se = ((direct[0] - direct[1]).powi(2) / 2.0 / 2.0).sqrt();
    assert!((l.se - se).abs() < 1e-12);
    // one sample's likelihood underflows (e^{-5000} = 0 in f64): the point is kept and finite
    let ll = [-5000.0, -1.0, -2.0, -1.0];
    let l = lppd(&ll, 2, 2).unwrap();
    assert!(l.pointwise.iter().all(|v| v.is_finite()));
    assert!((l.pointwise[0] - (-2.0 - 2f64.ln())).abs() < 1e-12);
    assert_eq!(l.pointwise.len(), 2);
}

#[bnn]
struct F1 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

#[test]
fn workflow_runs_end_to_end_with_a_pluggable_canonicalisation() {
    let dev = Cpu::default();
    let (train, test) = weightspace::mcmc::data::sinusoidal(100, 2).standardise().0.split(0.8, 2).unwrap();
    let (train, test) = (train.to_dataset::<f32, _>(&dev).unwrap(), test.to_dataset::<f32, _>(&dev).unwrap());
    let model = F1::<f32, Cpu>::new(&dev);
    // a stand-in canonicalisation that counts its calls: the workflow must pass every pooled draw
    let calls = std::cell::Cell::new(0usize);
    let canon = |_: &weightspace::Architecture, w: &Weights<f32, Cpu>| {
        calls.set(calls.get() + w.num_samples());
        Ok(w.clone())
    };
    let settings = SymMcmcSettings { chains: 48, warmup: 300, draws_per_chain: 8, threads: 2, ..Default::default() };
    let run = sym_mcmc(&model, &train, &settings, &canon).unwrap();
    assert_eq!(calls.get(), 48 * 8);
    assert_eq!(run.pooled().len(), 48 * 8);
    assert!(run.samples_noise && run.num_weights == 10);
    let l = run.lppd(&model, &test).unwrap();
    // a 1×3 tanh net fits a standardised sine with noise 0.3 / sd(y) ≈ 0.4: LPPD around −0.5
    assert!(l.mean > -1.2 && l.mean < 0.5, "LPPD {} ± {}", l.mean, l.se);
    let pred = run.predictive(&model, &test).unwrap();
    assert!(pred.std.iter().zip(&pred.f_std).all(|(s, f)| s > f));
    let diag = run.diagnostics(&model, &test).unwrap();
    assert!(diag.max_rhat_function.is_finite() && diag.min_ess_weights > 0.0);
    // the NUTS path of the workflow on a few chains
    let nuts = SymMcmcSettings {
        chains: 3,
        warmup: 200,
        draws_per_chain: 5,
        sampler: ChainSampler::Nuts(NutsSettings::default()),
        ..Default::default()
    };
    let run = sym_mcmc(&model, &train, &nuts, &NoCanonicalisation).unwrap();
    assert_eq!(run.pooled().len(), 15);
    assert!(run.lppd(&model, &test).unwrap().mean.is_finite());
}

#[bnn]
struct F1In2 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

/// Many short chains against one long chain at the same gradient budget, on regression2d with the
/// 1×3 network and NUTS in every chain (`chain_budget --chains 64 --warmup 256`'s protocol: 64
/// chains × 256 warm-up steps × 1 draw against one chain with 64 · 257 − 256 draws), over seeds
/// 0–4. The many chains must be better in the two ways the data support (see the README):
/// - **Closer to the posterior.** Each run's posterior predictive is scored by its KL divergence
///   from a reference run (256 chains × 512 warm-up steps × 16 draws, its own seed). One chain
///   stays in the functional mode it reaches, so its predictive misses most of the posterior's.
///   Over the seeds, the mean of ln(KL_one / KL_many) must exceed t(4)'s 99th percentile (3.747)
///   times its standard error: one chain is further from the reference, at the one-sided 1 %
///   level (measured: 4.97 ± 0.75, one chain 26–1100 times further).
/// - **Steadier.** The one-chain LPPD's variance over the seeds must exceed the 64 chains' by more
///   than F(4, 4)'s 99th percentile, 15.98. Their mean LPPD does not separate them (30 seeds:
///   many − one = 0.114 ± 0.080): the posterior's predictive is not the test set's best mode.
#[test]
fn many_short_chains_beat_one_long_chain_at_the_same_budget() {
    let dev = Cpu::default();
    let (train, test) = weightspace::mcmc::data::regression2d(256, 0).standardise().0.split(0.8, 0).unwrap();
    let (train, test) = (train.to_dataset::<f32, _>(&dev).unwrap(), test.to_dataset::<f32, _>(&dev).unwrap());
    let model = F1In2::<f32, Cpu>::new(&dev);
    let (chains, warmup) = (64, 256);
    let run = |chains: usize, warmup: usize, draws_per_chain: usize, seed: u64| {
        let sampler = ChainSampler::Nuts(NutsSettings { seed, ..Default::default() });
        let settings = SymMcmcSettings { chains, warmup, draws_per_chain, sampler, seed, ..Default::default() };
        sym_mcmc(&model, &train, &settings, &NoCanonicalisation).unwrap()
    };
    let reference = run(4 * chains, 2 * warmup, 16, 10_000).predictive(&model, &test).unwrap();
    let kl_from_reference = |run: &SymMcmcRun| reference.kl(&run.predictive(&model, &test).unwrap()).unwrap();
    let (mut many, mut one, mut log_kl_ratio) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..5 {
        let (m, o) = (run(chains, warmup, 1, seed), run(1, warmup, chains * (warmup + 1) - warmup, seed + 2000));
        many.push(m.lppd(&model, &test).unwrap().mean);
        one.push(o.lppd(&model, &test).unwrap().mean);
        log_kl_ratio.push((kl_from_reference(&o) / kl_from_reference(&m)).ln());
    }
    let (mean, se) = weightspace::metrics::mean_and_se(&log_kl_ratio).unwrap();
    let var = |v: &[f64]| weightspace::metrics::mean_and_se(v).map(|(_, se)| se * se * v.len() as f64).unwrap();
    let ratio = var(&one) / var(&many);
    eprintln!(
        "ln(KL_one / KL_many) per seed {log_kl_ratio:.2?}: {mean:.2} ± {se:.2}; test LPPD 64 chains {many:.3?}, one chain {one:.3?}; variance ratio {ratio:.1}"
    );
    assert!(mean > 3.747 * se, "ln(KL_one / KL_many) = {mean} ± {se} per seed {log_kl_ratio:?}");
    assert!(ratio > 15.98, "variance ratio {ratio} (one chain {one:?} against 64 chains {many:?})");
}

/// The mean test LPPD of a run and its Monte-Carlo standard error, by the jackknife over chains
/// (the chains are independent, so leaving one out at a time measures the spread of the estimate).
fn lppd_and_mc_se(model: &F1<f64, Cpu>, test: &Dataset<f64, Cpu>, run: &SymMcmcRun) -> (f64, f64) {
    let post = BnnPosterior::new(model, test, NoisePrior::HalfNormal(1.0)).unwrap();
    let n = test.len();
    let per_chain: Vec<Vec<f64>> = run.draws.iter().map(|ch| post.pointwise_log_lik(ch, test).unwrap()).collect();
    let lppd_of = |skip: Option<usize>| {
        let rows: Vec<f64> = per_chain.iter().enumerate().filter(|(c, _)| Some(*c) != skip).flat_map(|(_, v)| v.iter().copied()).collect();
        weightspace::mcmc::lppd(&rows, rows.len() / n, n).unwrap().mean
    };
    let c = per_chain.len() as f64;
    let loo: Vec<f64> = (0..per_chain.len()).map(|k| lppd_of(Some(k))).collect();
    let mean = loo.iter().sum::<f64>() / c;
    ((lppd_of(None)), ((c - 1.0) / c * loo.iter().map(|v| (v - mean).powi(2)).sum::<f64>()).sqrt())
}

/// The workflow's LPPD bounded by its standard error against a reference run on the same data,
/// and R-hat of the canonicalised weights. The reference is many NUTS chains with many draws each;
/// the many-chain (ChEES) run and a NUTS run estimate the same quantity and must agree with it
/// within 4 Monte-Carlo standard errors of the difference (each run's by the jackknife over its
/// independent chains; the test points are the same, so their spread is not part of the error).
/// Canonicalisation must remove the weight-space multimodality that the symmetries create: the
/// largest R-hat of the canonicalised weights is far below that of the raw weights (the remaining
/// excess is chains in functionally different modes).
#[test]
fn workflow_lppd_agrees_with_a_reference_run_within_its_standard_error() {
    let dev = Cpu::default();
    let (train, test) = weightspace::mcmc::data::sinusoidal(100, 2).standardise().0.split(0.8, 2).unwrap();
    let (train, test) = (train.to_dataset::<f64, _>(&dev).unwrap(), test.to_dataset::<f64, _>(&dev).unwrap());
    let model = F1::<f64, Cpu>::new(&dev);
    let canon = weightspace::symmetry::Canonicalisation::Exact;
    let nuts = |seed: u64| ChainSampler::Nuts(NutsSettings { seed, ..Default::default() });
    let reference = SymMcmcSettings { chains: 32, warmup: 300, draws_per_chain: 30, sampler: nuts(11), seed: 11, ..Default::default() };
    let (ref_lppd, ref_se) = lppd_and_mc_se(&model, &test, &sym_mcmc(&model, &train, &reference, &canon).unwrap());
    let short = SymMcmcSettings { chains: 64, warmup: 300, draws_per_chain: 8, seed: 3, ..Default::default() };
    for (name, settings) in [("many-chain", short.clone()), ("nuts", SymMcmcSettings { sampler: nuts(4), seed: 4, ..short })] {
        let run = sym_mcmc(&model, &train, &settings, &canon).unwrap();
        let (l, se) = lppd_and_mc_se(&model, &test, &run);
        let whole = run.lppd(&model, &test).unwrap().mean;
        assert!((l - whole).abs() < 1e-9, "{name}: {l} against the run's own {whole}");
        let tol = 4.0 * (se * se + ref_se * ref_se).sqrt();
        eprintln!("{name}: LPPD {l:.4} ± {se:.4} against the reference {ref_lppd:.4} ± {ref_se:.4}");
        assert!((l - ref_lppd).abs() < tol, "{name}: LPPD {l} ± {se} against the reference {ref_lppd} ± {ref_se}");
        let canonical = run.diagnostics(&model, &test).unwrap();
        let raw = SymMcmcRun { canonical: run.draws.clone(), ..run }.diagnostics(&model, &test).unwrap();
        assert!(
            canonical.max_rhat_weights < 0.5 * raw.max_rhat_weights,
            "{name}: max R-hat of the canonicalised weights {} against the raw weights' {}",
            canonical.max_rhat_weights,
            raw.max_rhat_weights
        );
        // the function values do not change under canonicalisation
        assert_eq!(canonical.max_rhat_function, raw.max_rhat_function);
    }
}

/// The function-space R-hat and bulk ESS of a many-chain run agree with ArviZ: the fixture holds
/// the function values at the test inputs of `symmetry_mcmc --quick --no-single` (24 chains × 8
/// draws, 8 points) and ArviZ 0.23.4's `az.rhat` and `az.ess(method="bulk")` of each point.
#[test]
fn function_space_rhat_of_many_chains_agrees_with_arviz() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/function_rhat_arviz.txt")).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let dims: Vec<usize> = lines.next().unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
    let (c, s, n) = (dims[0], dims[1], dims[2]);
    let rows: Vec<Vec<f64>> = lines.by_ref().take(c * s).map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect()).collect();
    let named = |l: &str, name: &str| -> Vec<f64> {
        let rest = l.strip_prefix(name).unwrap_or_else(|| panic!("expected `{name}` in the fixture"));
        rest.split_whitespace().map(|v| v.parse().unwrap()).collect()
    };
    let want_rhat = named(lines.next().unwrap(), "rhat ");
    let want_ess = named(lines.next().unwrap(), "ess_bulk ");
    for j in 0..n {
        let chains: Vec<Vec<f64>> = (0..c).map(|ci| (0..s).map(|t| rows[ci * s + t][j]).collect()).collect();
        let (r, e) = (rhat(&chains).unwrap(), weightspace::diagnostics::ess_bulk(&chains).unwrap());
        assert!((r - want_rhat[j]).abs() < 1e-9 * want_rhat[j], "point {j}: R-hat {r}, ArviZ {}", want_rhat[j]);
        assert!((e - want_ess[j]).abs() < 1e-8 * want_ess[j], "point {j}: bulk ESS {e}, ArviZ {}", want_ess[j]);
    }
    // the chains of this short run sit in different modes: R-hat far above 1
    assert!(want_rhat.iter().all(|&r| r > 1.4));
}

/// The batched sampler on CUDA: the generic path's chain axis is the weight-sample axis on the GPU.
/// Compile-checked with `--features cuda,ci-check`; runs only on a machine with a GPU.
#[cfg(feature = "cuda")]
#[test]
fn cuda_log_density_matches_cpu_and_the_many_chain_sampler_runs() {
    let t = weightspace::mcmc::data::regression2d(40, 3).standardise().0;
    let cpu = Cpu::default();
    let gpu = Cuda::default();
    let (dc, dg) = (t.to_dataset::<f64, _>(&cpu).unwrap(), t.to_dataset::<f64, _>(&gpu).unwrap());
    let (mc, mg) = (Tanh2::<f64, Cpu>::new(&cpu), Tanh2::<f64, Cuda>::new(&gpu));
    let mut pc = BnnPosterior::new(&mc, &dc, NoisePrior::default()).unwrap();
    let mut pg = BnnPosterior::new(&mg, &dg, NoisePrior::default()).unwrap();
    assert!(!pg.is_fused());
    let d = pc.dim();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let pos: Vec<f64> = (0..16 * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let (mut l1, mut g1, mut l2, mut g2) = (vec![0.0; 16], vec![0.0; 16 * d], vec![0.0; 16], vec![0.0; 16 * d]);
    pc.logp_batch(&pos, &mut l1, &mut g1).unwrap();
    pg.logp_batch(&pos, &mut l2, &mut g2).unwrap();
    for (a, b) in l1.iter().zip(&l2).chain(g1.iter().zip(&g2)) {
        assert!((a - b).abs() < 1e-8 * b.abs().max(1.0), "cpu {a} gpu {b}");
    }
    let init: Vec<Vec<f64>> = pos.chunks(d).map(|c| c.to_vec()).collect();
    let run = sample_many_chains(&mut pg, init, &ManyChainSettings { warmup: 50, draws: 2, ..Default::default() }).unwrap();
    assert_eq!(run.pooled().len(), 32);
}

#[bnn]
struct Clf {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 3>,
    #[likelihood]
    labels: Categorical,
}

#[test]
fn classifiers_sample_on_the_generic_path() {
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let x: Vec<f64> = (0..60).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let labels: Vec<usize> = x
        .chunks(2)
        .map(|p| {
            if p[0] + p[1] > 0.5 {
                2
            } else if p[0] > -0.5 {
                1
            } else {
                0
            }
        })
        .collect();
    let data = Dataset::<f64, _>::classification(&dev, &x, 2, &labels, 3).unwrap();
    let model = Clf::<f64, Cpu>::new(&dev);
    // the noise setting is ignored for classifiers: the position is the weights alone
    let mut post = BnnPosterior::new(&model, &data, NoisePrior::default()).unwrap();
    assert!(!post.is_fused() && !post.samples_noise());
    let d = LogDensity::dim(&post);
    assert_eq!(d, 3 * 3 + 3 * 4);
    let pos: Vec<f64> = (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut g = vec![0.0; d];
    LogDensity::logp(&mut post, &pos, &mut g).unwrap();
    for j in [0, 7, d - 1] {
        let (mut p1, mut p2) = (pos.clone(), pos.clone());
        p1[j] += 1e-6;
        p2[j] -= 1e-6;
        let mut tmp = vec![0.0; d];
        let fd = (LogDensity::logp(&mut post, &p1, &mut tmp).unwrap() - LogDensity::logp(&mut post, &p2, &mut tmp).unwrap()) / 2e-6;
        assert!((fd - g[j]).abs() < 1e-5 * fd.abs().max(1.0), "coordinate {j}: {fd} vs {}", g[j]);
    }
    let run = sample_nuts(&mut post, &pos, &NutsSettings { warmup: 100, draws: 20, ..Default::default() }).unwrap();
    assert_eq!(run.draws.len(), 20);
    assert!(run.stats.iter().all(|s| s.step_size > 0.0 && s.tree_depth <= 10));
}

/// A fresh scratch directory for shard files.
fn shard_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ws_shards_{name}_{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn starts(c: usize) -> Vec<Vec<f64>> {
    (0..c).map(|i| vec![(i as f64 * 0.37).sin() * 2.0, (i as f64 * 0.91).cos() * 2.0]).collect()
}

/// Three threaded ranks each write their share of a many-chain run to a shard; the merged shards
/// are the one-process run, bit for bit (draws, log densities, step sizes, mass matrices, per-chain
/// divergences, the per-iteration statistics and the gradient-evaluation count).
#[test]
fn many_chain_shards_merge_into_the_one_process_run() {
    let settings = ManyChainSettings {
        warmup: 120,
        draws: 15,
        seed: 4,
        step_size: StepSizeAdaptation::PerChain,
        diagonal_mass_matrix: true,
        ..Default::default()
    };
    let alone = sample_many_chains(&mut Correlated, starts(29), &settings).unwrap();
    let dir = shard_dir("many_chain");
    let parts = weightspace::testing::ranks::on_threads(3, |comm| {
        let part = sample_many_chains_sharded(comm, &mut Correlated, starts(29), &settings)?;
        part.write_shard(&dir, comm.rank())?;
        Ok((part.first_chain, part.draws.len()))
    });
    let parts: Vec<(usize, usize)> = parts.into_iter().collect::<weightspace::Result<_>>().unwrap();
    assert_eq!(parts, vec![(0, 16), (16, 8), (24, 5)], "chains are dealt in blocks of 8");
    let merged = ManyChainRun::merge_shards(&dir).unwrap();
    assert_eq!(merged.draws, alone.draws);
    assert_eq!(merged.logp, alone.logp);
    assert_eq!(merged.step_sizes, alone.step_sizes);
    assert_eq!(merged.inverse_mass, alone.inverse_mass);
    assert_eq!((&merged.warmup_divergences, &merged.divergences), (&alone.warmup_divergences, &alone.divergences));
    assert_eq!(merged.iterations, alone.iterations);
    assert_eq!(merged.trajectory_length, alone.trajectory_length);
    assert_eq!(merged.gradient_evaluations, alone.gradient_evaluations);
    // (batched calls are per rank: the most any of the 3 ranks made, at most the one process's)
    assert!(merged.batched_calls <= alone.batched_calls);
    assert_eq!((merged.ranks, merged.first_chain, merged.total_chains), (3, 0, 29));

    // an incomplete set is an error that names the problem, not a silently smaller run
    std::fs::remove_file(dir.join("many_chain.rank-00001-of-00003.safetensors")).unwrap();
    let e = ManyChainRun::merge_shards(&dir).unwrap_err();
    assert!(matches!(&e, weightspace::Error::Checkpoint { reason, .. } if reason.contains("not ranks 0..3")), "{e}");
    // shards of two runs on different rank counts do not mix
    let two = weightspace::testing::ranks::on_threads(2, |comm| {
        sample_many_chains_sharded(comm, &mut Correlated, starts(29), &settings)?.write_shard(&dir, comm.rank())
    });
    assert!(two.iter().all(Result::is_ok));
    assert!(ManyChainRun::merge_shards(&dir).is_err());
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(ManyChainRun::merge_shards(&dir), Err(weightspace::Error::Checkpoint { .. })), "a missing directory");
}

/// The SYM-MCMC workflow written as shards by 3 threaded ranks and merged on one process equals
/// the one-process workflow (draws, canonical draws, divergences, evaluations), with the many-chain
/// sampler and with NUTS, also when a rank holds no chains; settings that differ from the shards'
/// are refused.
#[test]
fn sym_mcmc_shards_merge_into_the_one_process_run() {
    let dev = Cpu::default();
    let train = weightspace::mcmc::data::sinusoidal(40, 3).standardise().0.to_dataset::<f64, _>(&dev).unwrap();
    let model = F1::<f64, Cpu>::new(&dev);
    let canon = weightspace::symmetry::Canonicalisation::Exact;
    let many = SymMcmcSettings { chains: 20, warmup: 150, draws_per_chain: 3, seed: 5, ..Default::default() };
    let nuts = SymMcmcSettings {
        chains: 2, // fewer chains than ranks: rank 2 holds none
        warmup: 100,
        draws_per_chain: 3,
        sampler: ChainSampler::Nuts(NutsSettings { seed: 3, ..Default::default() }),
        ..many.clone()
    };
    for (name, settings) in [("many", &many), ("nuts", &nuts)] {
        let alone = sym_mcmc(&model, &train, settings, &canon).unwrap();
        let dir = shard_dir(name);
        let written = weightspace::testing::ranks::on_threads(3, |comm| sym_mcmc_shard(comm, &model, &train, settings, &dir));
        assert!(written.iter().all(Result::is_ok), "{name}: {written:?}");
        let merged = sym_mcmc_merge(&model, &train, settings, &canon, &dir).unwrap();
        assert_eq!(merged.draws, alone.draws, "{name}: draws");
        assert_eq!(merged.canonical, alone.canonical, "{name}: canonical draws");
        assert_eq!((merged.divergences, merged.gradient_evaluations), (alone.divergences, alone.gradient_evaluations), "{name}");
        assert_eq!(merged.ranks, 3);
        let other = SymMcmcSettings { seed: settings.seed + 1, ..settings.clone() };
        let e = sym_mcmc_merge(&model, &train, &other, &canon, &dir).unwrap_err();
        assert!(matches!(e, weightspace::Error::InvalidConfig { .. }), "{name}: {e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The per-chain work split over threads gives the draws of the one-thread run bit for bit, with
/// per-chain step sizes and mass matrices too (64 chains: several tasks of 16 per thread).
#[test]
fn many_chain_draws_do_not_depend_on_the_threads() {
    for (step_size, diag) in [(StepSizeAdaptation::Shared, false), (StepSizeAdaptation::PerChain, true)] {
        let settings = ManyChainSettings { warmup: 100, draws: 10, seed: 9, step_size, diagonal_mass_matrix: diag, ..Default::default() };
        let one = sample_many_chains(&mut Correlated, starts(64), &ManyChainSettings { threads: 1, ..settings.clone() }).unwrap();
        let three = sample_many_chains(&mut Correlated, starts(64), &ManyChainSettings { threads: 3, ..settings }).unwrap();
        assert_eq!(one.draws, three.draws);
        assert_eq!(one.logp, three.logp);
        assert_eq!(one.iterations, three.iterations);
        assert_eq!(one.gradient_evaluations, three.gradient_evaluations);
    }
}

/// Batched NUTS advances the chains' trees over threads; the draws, statistics and gradient counts
/// are the one-thread run's bit for bit (120 chains of a 10-coordinate target: two tasks of 55).
#[test]
fn batched_nuts_draws_do_not_depend_on_the_threads() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let init: Vec<Vec<f64>> = (0..120).map(|_| (0..10).map(|_| rng.gen_range(-2.0..2.0)).collect()).collect();
    let s = NutsSettings { warmup: 60, draws: 10, seed: 5, ..Default::default() };
    let one = sample_nuts_chains(&mut Scaled, init.clone(), &NutsSettings { threads: 1, ..s.clone() }).unwrap();
    let two = sample_nuts_chains(&mut Scaled, init, &NutsSettings { threads: 2, ..s }).unwrap();
    assert_eq!(one.draws(), two.draws());
    assert_eq!(
        one.chains.iter().map(|c| c.stats.clone()).collect::<Vec<_>>(),
        two.chains.iter().map(|c| c.stats.clone()).collect::<Vec<_>>()
    );
    assert_eq!((one.gradient_evaluations, one.batched_calls), (two.gradient_evaluations, two.batched_calls));
}
