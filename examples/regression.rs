//! 1-D regression with a gap in the inputs: mean-field VI on a tanh BNN whose hidden prior scale is
//! learned. Prints test metrics and writes `target/weightspace/regression.png` with the predictive
//! mean, a 95 % band and posterior function samples.
//!
//! ```text
//! cargo run --release --example regression
//! cargo run --release --example regression -- --quick   # smoke run
//! ```
//!
//! `--points N` sets the training (and test) set size (default 200), `--batch B` fits on minibatches
//! of `B` points (default: the whole set), `--steps N` the number of steps (default 8000). Built
//! with `--features mpi` and launched by `mpirun`/`srun`, the fit is data-parallel: every rank
//! evaluates its part of each minibatch and the gradients are summed over ranks (`fit_on`); rank 0
//! evaluates, plots and prints:
//!
//! ```text
//! cargo build --release --features mpi --example regression
//! mpirun -n 2 target/release/examples/regression --points 20000 --batch 4000 --steps 300
//! ```

mod common;

use rand::{Rng, SeedableRng};
use weightspace::comm::Communicator;
use weightspace::prelude::*;
use weightspace::{band_plot, BandPlot};

/// One tanh hidden layer whose prior scale is learned; the output layer is fan-in scaled.
#[bnn]
struct SineNet {
    #[layer(prior = Normal(0.0, Learned(2.0)))]
    hidden: Dense<1, 50, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<50, 1>,
    #[likelihood(upper = 1.0)]
    noise: Gaussian<Learned<0.2>>,
}

fn sample(rng: &mut impl Rng, n: usize) -> (Vec<f64>, Vec<f64>) {
    // inputs in [-4, -1] ∪ [1, 4]: nothing in the gap (-1, 1)
    let x: Vec<f64> = (0..n).map(|i| if i % 2 == 0 { rng.gen_range(-4.0..-1.0) } else { rng.gen_range(1.0..4.0) }).collect();
    let y = x.iter().map(|&x: &f64| x.sin() + 0.1 * x + 0.15 * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
    (x, y)
}

fn main() {
    // over MPI (`--features mpi`, launched by mpirun/srun) the fit is data-parallel and rank 0
    // evaluates; a rank that fails ends the whole job
    #[cfg(feature = "mpi")]
    weightspace::comm::Mpi::run(|comm| {
        if let Err(e) = job(comm) {
            comm.abort(1, &format!("regression: rank {} of {} failed: {e}; aborting all ranks", comm.rank(), comm.size()));
        }
        Ok(())
    });
    #[cfg(not(feature = "mpi"))]
    if let Err(e) = job(&weightspace::comm::SingleProcess) {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn job(comm: &dyn Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse("[--quick] [--points N] [--batch B] [--steps N]", &[], &["--points", "--batch", "--steps"], 0);
    let quick = args.quick();
    // sizes: points (train and test), steps, ELBO samples, predictive samples (test, grid)
    let (n, steps, samples, k, k_grid) = if quick { (40, 300, 2, 100, 200) } else { (200, 8000, 8, 1000, 2000) };
    let n: usize = args.get("--points", n);
    let steps: usize = args.get("--steps", steps);
    let batch: Option<usize> = args.value("--batch").map(|_| args.get("--batch", 0));
    if n < 2 {
        args.fail("--points must be at least 2");
    }
    if steps == 0 {
        args.fail("--steps must be at least 1");
    }
    if let Some(b) = batch {
        if b < comm.size() || b > n {
            args.fail(&format!("--batch must be between the number of ranks ({}) and --points ({n})", comm.size()));
        }
    }
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (x, y) = sample(&mut rng, n);
    let (xt, yt) = sample(&mut rng, n);
    let train = Dataset::regression(&dev, &x, 1, &y, 1)?;
    let test = Dataset::regression(&dev, &xt, 1, &yt, 1)?;

    let mut model = SineNet::<f32, Cpu>::new(&dev);
    // means start at a draw from the prior (jitter 1) so the hidden units differ from the outset
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed: 1 })?;
    let cfg = FitConfig {
        steps,
        batch_size: batch,
        lr: 2e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples, ..Default::default() },
        progress: !quick,
        ..Default::default()
    };
    let report = weightspace::fit_on(comm, &mut model, &mut guide, &train, &cfg)?;
    if !comm.is_root() {
        return Ok(()); // rank 0 evaluates and plots
    }
    let last = report.history.last().expect("history");
    println!(
        "fit: {} steps in {:.1} s; final ELBO {:.2} = E[log lik] {:.2} - KL {:.2}",
        report.steps, report.seconds, last.elbo, last.expected_log_lik, last.kl
    );
    println!("learned noise sd {:.3}", model.noise_scale().unwrap_or(f64::NAN));

    let m = Predictive::new(k).evaluate(&model, &guide, &test)?;
    println!(
        "test: rmse {:.3}  mean log predictive density {:.3} ± {:.3}  95% coverage {:.3}",
        m.rmse.unwrap_or(f64::NAN),
        m.mean_lpd,
        m.mean_lpd_se,
        m.coverage_95.unwrap_or(f64::NAN)
    );

    // the picture: predictive band over a grid, with a few posterior function draws
    let grid: Vec<f64> = (0..300).map(|i| -6.0 + 12.0 * i as f64 / 299.0).collect();
    let xg = dev.tensor_from_vec(grid.iter().map(|&v| v as f32).collect(), (grid.len(), 1usize));
    let pred = Predictive { quantiles: vec![0.025, 0.975], ..Predictive::new(k_grid) }.run(&model, &guide, &xg)?;
    let draws = weightspace::sample_guide(SineNet::<f32, Cpu>::ARCH, &guide, 8, &mut rng)?;
    let f = model.forward(draws, &xg)?.as_vec();
    let samples: Vec<Vec<f64>> = f.chunks(grid.len()).map(|c| c.iter().map(|&v| v as f64).collect()).collect();
    let gap_sd = pred.f_std[150];
    let data_sd = pred.f_std[(2.5 + 6.0) as usize * 299 / 12];
    println!("epistemic sd at x=0 (gap) {:.3} vs x=2.5 (data) {:.3}", gap_sd, data_sd);
    std::fs::create_dir_all("target/weightspace")?;
    let path = "target/weightspace/regression.png";
    band_plot(
        path,
        &BandPlot {
            title: "SineNet posterior predictive (mean-field VI), 95% band",
            x: &grid,
            mean: &pred.mean,
            lower: pred.quantile(0.025).expect("requested"),
            upper: pred.quantile(0.975).expect("requested"),
            samples: &samples,
            points: Some((&x, &y)),
        },
    )?;
    println!("wrote {path}");
    println!(
        "regression ranks={} rmse={:.4} lpd={:.4} gap_sd={:.4} data_sd={:.4} elbo={:.4} fit_seconds={:.3} allreduce_seconds={:.3}",
        comm.size(),
        m.rmse.unwrap_or(f64::NAN),
        m.mean_lpd,
        gap_sd,
        data_sd,
        last.elbo,
        report.seconds,
        report.communication_seconds
    );
    Ok(())
}
