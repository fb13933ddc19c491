//! Simulation-based calibration of a conjugate model, run twice: once with the exact posterior
//! sampler (the ranks must look uniform) and once with an over-confident sampler whose posterior
//! standard deviations are halved (the ranks must pile up at both ends).
//!
//! The model is Bayesian linear regression `y = w₀ + w₁ x + ε`, `w ~ N(0, I)`, `ε ~ N(0, 0.5²)`,
//! on 8 fixed inputs; its exact posterior comes from `weightspace::testing::reference`.
//!
//! ```text
//! cargo run --release --example inference_test_demo [OUTPUT_DIR]
//! cargo run --release --example inference_test_demo -- --quick   # smoke run: 40 replicates × 19 draws, 5 bins
//! ```
//!
//! Rank histograms are written to `OUTPUT_DIR` (default `target/inference_test_demo`). The last
//! two lines printed are `sbc sampler=exact p_value=<float>` and
//! `sbc sampler=overconfident p_value=<float>`.

mod common;

use std::convert::Infallible;
use std::path::PathBuf;

use rand::RngCore;
use weightspace::testing::reference::{BlrPosterior, BlrProblem, Gaussian, PriorCovariance};
use weightspace::testing::sbc::{run_sbc, SbcReport, SbcSettings};

const NOISE_STD: f64 = 0.5;

fn inputs() -> Vec<f64> {
    (0..8).map(|i| -1.0 + 2.0 * i as f64 / 7.0).collect()
}

fn problem(targets: Vec<f64>) -> BlrProblem {
    BlrProblem {
        design: inputs().iter().map(|&x| vec![1.0, x]).collect(),
        targets,
        prior_mean: vec![0.0, 0.0],
        prior_covariance: PriorCovariance::Isotropic(1.0),
        noise_std: NOISE_STD,
    }
}

/// Runs SBC with a sampler that draws from the exact posterior with its covariance multiplied
/// by `covariance_scale` (1 is exact; 0.25 halves every posterior standard deviation).
fn sbc(covariance_scale: f64, quick: bool) -> Result<SbcReport, Box<dyn std::error::Error>> {
    let settings = if quick {
        SbcSettings { n_replicates: 40, n_draws: 19, n_bins: 5, seed: 2024 }
    } else {
        SbcSettings { n_replicates: 200, n_draws: 99, n_bins: 10, seed: 2024 }
    };
    let standard = Gaussian::standard(2);
    let prior = |rng: &mut dyn RngCore| -> Vec<f64> { standard.sample(rng) };
    let noise = Gaussian::standard(1);
    let simulate = |w: &[f64], rng: &mut dyn RngCore| -> Vec<f64> {
        inputs().iter().map(|x| w[0] + w[1] * x + NOISE_STD * noise.sample(rng)[0]).collect()
    };
    let mut sampler = |y: &Vec<f64>, n: usize, rng: &mut dyn RngCore| {
        let exact = BlrPosterior::compute(&problem(y.clone())).expect("well-posed problem");
        let posterior = exact.posterior().with_scaled_covariance(covariance_scale).expect("scaled covariance is SPD");
        Ok::<_, Infallible>(posterior.sample_n(rng, n))
    };
    Ok(run_sbc(&settings, prior, simulate, &mut sampler)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse("[--quick] [OUTPUT_DIR]", &[], &[], 1);
    let out_dir: PathBuf = args.positional(0, PathBuf::from("target/inference_test_demo"));
    std::fs::create_dir_all(&out_dir)?;

    let exact = sbc(1.0, args.quick())?;
    let overconfident = sbc(0.25, args.quick())?;

    for (name, report) in [("exact", &exact), ("overconfident", &overconfident)] {
        let path = out_dir.join(format!("sbc_ranks_{name}.png"));
        report.write_rank_histogram_png(&path)?;
        println!("{name}: {}", report.check(0.01));
        for (p, h) in report.histograms.iter().enumerate() {
            println!("  w{p} rank histogram {h:?}, p = {:.3e}", report.p_values[p]);
        }
        println!("  rank histogram written to {}", path.display());
    }
    println!("sbc sampler=exact p_value={:e}", exact.p_value());
    println!("sbc sampler=overconfident p_value={:e}", overconfident.p_value());
    Ok(())
}
