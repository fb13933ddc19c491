//! Times one full mean-field SVI step (ELBO estimate + gradient + Adam update) on a 1-H-H-1 tanh BNN,
//! the same model as `benches/peers/numpyro_bnn_svi.py`: N(0,1) priors on every weight and bias, a
//! fixed noise of 0.1, K weight samples per step, f32 on the CPU.
//!
//! ```text
//! cargo run --release --example elbo_bench -- --hidden 50 --n 128 --samples 8 --steps 2000
//! cargo run --release --example elbo_bench -- --quick   # smoke run: --hidden 25 --n 32 --samples 2 --steps 50
//! ```
//! Widths are compile-time in weightspace, so `--hidden` takes one of 25, 50, 100, 200.
//! The last line is `elbo_bench hidden=H n=N samples=K us_per_step=<float>`.

mod common;

use weightspace::dfdx::tensor::Cache;
use weightspace::prelude::*;

macro_rules! bench_net {
    ($name:ident, $h:literal) => {
        #[bnn]
        struct $name {
            #[layer(prior = Normal(0.0, 1.0))]
            l1: Dense<1, $h, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            l2: Dense<$h, $h, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            out: Dense<$h, 1>,
            #[likelihood]
            noise: Gaussian<Fixed<0.1>>,
        }
    };
}
bench_net!(Net25, 25);
bench_net!(Net50, 50);
bench_net!(Net100, 100);
bench_net!(Net200, 200);

fn time_steps<M: Bnn<f32, Cpu>>(model: &mut M, data: &Dataset<f32, Cpu>, samples: usize, steps: usize) -> Result<f64, Error> {
    let mut guide = model.mean_field_with(MeanFieldInit::default())?;
    let cfg = |steps| FitConfig {
        steps,
        lr: 1e-3,
        progress: false,
        record_every: steps,
        elbo: ElboConfig { samples, ..Default::default() },
        ..Default::default()
    };
    fit(model, &mut guide, data, &cfg(20.min(steps)))?; // warm-up: allocator caches, page faults
    let rep = fit(model, &mut guide, data, &cfg(steps))?;
    Ok(rep.seconds / steps as f64 * 1e6)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse(
        "[--quick] [--hidden 25|50|100|200] [--n N] [--samples K] [--steps N] [--no-cache]",
        &["--no-cache"],
        &["--hidden", "--n", "--samples", "--steps"],
        0,
    );
    // defaults: the benchmark, or with --quick a smoke run
    let (hidden, n, samples, steps) = if args.quick() { (25, 32, 2, 50) } else { (50, 128, 8, 2000) };
    let hidden: usize = args.get("--hidden", hidden);
    let n: usize = args.get("--n", n);
    let samples: usize = args.get("--samples", samples);
    let steps: usize = args.get("--steps", steps);
    let dev = Cpu::default();
    if !args.flag("--no-cache") {
        // dfdx's allocation cache: buffers freed by one step are reused by the next
        dev.enable_cache();
    }
    // same data recipe as the peer: x ~ U(-3, 3), y = sin x + 0.1 ε
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    use rand::Rng;
    let x: Vec<f64> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let y: Vec<f64> = x.iter().map(|x| x.sin() + 0.1 * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
    let data = Dataset::regression(&dev, &x, 1, &y, 1)?;
    let us = match hidden {
        25 => time_steps(&mut Net25::<f32, Cpu>::new(&dev), &data, samples, steps)?,
        50 => time_steps(&mut Net50::<f32, Cpu>::new(&dev), &data, samples, steps)?,
        100 => time_steps(&mut Net100::<f32, Cpu>::new(&dev), &data, samples, steps)?,
        200 => time_steps(&mut Net200::<f32, Cpu>::new(&dev), &data, samples, steps)?,
        h => return Err(format!("--hidden {h} is not compiled in: choose 25, 50, 100 or 200").into()),
    };
    println!("elbo_bench hidden={hidden} n={n} samples={samples} us_per_step={us:.1}");
    Ok(())
}
