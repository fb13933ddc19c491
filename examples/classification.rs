//! Two-moons classification with a Bernoulli BNN and mean-field VI. Prints test accuracy, NLL and
//! ECE, and writes `target/weightspace/classification.png`: the predictive probability of class 1
//! over the plane (uncertain far from the data) with the training points.
//!
//! ```text
//! cargo run --release --example classification
//! cargo run --release --example classification -- --quick   # smoke run
//! ```

mod common;

use rand::{Rng, SeedableRng};
use weightspace::prelude::*;
use weightspace::probability_map;

#[bnn]
struct MoonNet {
    #[layer(prior = Normal(0.0, 2.0))]
    hidden: Dense<2, 32, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<32, 1>,
    #[likelihood]
    label: Bernoulli,
}

/// The classic two interleaved half-circles with Gaussian noise.
fn two_moons(rng: &mut impl Rng, n: usize, noise: f64) -> (Vec<f64>, Vec<usize>) {
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let t = rng.gen_range(0.0..std::f64::consts::PI);
        let (a, b, label) = if i % 2 == 0 { (t.cos(), t.sin(), 0) } else { (1.0 - t.cos(), 0.5 - t.sin(), 1) };
        x.push(a + noise * rng.sample::<f64, _>(rand_distr::StandardNormal));
        x.push(b + noise * rng.sample::<f64, _>(rand_distr::StandardNormal));
        y.push(label);
    }
    (x, y)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = common::Args::parse("[--quick]", &[], &[], 0).quick();
    // sizes: training points, test points, steps, predictive samples (test, grid), grid columns and rows
    let (n, n_test, steps, k, k_grid, cols, rows) =
        if quick { (80, 100, 200, 50, 30, 20, 16) } else { (400, 1000, 6000, 500, 300, 80, 64) };
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (x, y) = two_moons(&mut rng, n, 0.15);
    let (xt, yt) = two_moons(&mut rng, n_test, 0.15);
    let train = Dataset::classification(&dev, &x, 2, &y, 2)?;
    let test = Dataset::classification(&dev, &xt, 2, &yt, 2)?;

    let mut model = MoonNet::<f32, Cpu>::new(&dev);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed: 0 })?;
    let cfg = FitConfig { steps, lr: 2e-2, lr_end: Some(1e-3), progress: !quick, ..Default::default() };
    let report = fit(&mut model, &mut guide, &train, &cfg)?;
    let last = report.history.last().expect("history");
    println!(
        "fit: {} steps in {:.1} s; final ELBO {:.2} (E[log lik] {:.2}, KL {:.2})",
        report.steps, report.seconds, last.elbo, last.expected_log_lik, last.kl
    );

    let m = Predictive::new(k).evaluate(&model, &guide, &test)?;
    let (acc, ece) = (m.accuracy.unwrap_or(f64::NAN), m.ece.unwrap_or(f64::NAN));
    println!("test ({} points): accuracy {:.3}  NLL {:.3} ± {:.3}  ECE {:.3}", yt.len(), acc, -m.mean_lpd, m.mean_lpd_se, ece);

    // predictive probability of class 1 on a grid
    let (gx, gy): (Vec<f64>, Vec<f64>) = (
        (0..cols).map(|i| -2.0 + 5.0 * i as f64 / (cols - 1) as f64).collect(),
        (0..rows).map(|i| -1.5 + 3.5 * i as f64 / (rows - 1) as f64).collect(),
    );
    let grid: Vec<f32> = gy.iter().flat_map(|&b| gx.iter().flat_map(move |&a| [a as f32, b as f32])).collect();
    let xg = dev.tensor_from_vec(grid, (gx.len() * gy.len(), 2usize));
    let pred = Predictive::new(k_grid).run(&model, &guide, &xg)?;
    let p1: Vec<f64> = pred.mean.chunks(2).map(|p| p[1]).collect();
    let pts: Vec<[f64; 2]> = x.chunks(2).map(|p| [p[0], p[1]]).collect();
    std::fs::create_dir_all("target/weightspace")?;
    let path = "target/weightspace/classification.png";
    probability_map(path, "two moons: predictive P(class 1), mean-field VI", &gx, &gy, &p1, &pts, &y)?;
    println!("wrote {path}");
    println!("classification accuracy={acc:.4} nll={:.4} ece={ece:.4}", -m.mean_lpd);
    Ok(())
}
