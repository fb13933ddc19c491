//! Meta-learn a BNN prior on sawtooth functions with BNNP, then use it on held-out tasks with very
//! little data.
//!
//! 1. Meta-training: every step draws 4 fresh sawtooth tasks (40–99 points on [−2, 2]), splits each
//!    at random into context and targets, and takes an Adam step on the PP-AVI objective for the
//!    learned prior, the inference networks and the noise. The tasks are the paper's family (the
//!    teeth at the same place in every task); `--shift` draws a random shift per task instead.
//!    The prior is diagonal and its hidden layers start narrow around one network
//!    ([`PriorInit::Network`], spread 0.01): every weight sample then shares the hidden features,
//!    and the prior's means learn the teeth. `--spread 0` starts the prior centred at zero instead,
//!    where the hidden features stay random and the learned prior only draws lines;
//!    `--family unit` learns a full-rank prior per unit.
//! 2. Held-out tasks with 1, 2, 4 and 8 context points: the mean per-point log predictive density of
//!    100 target points under
//!    - BNNP with the learned prior (amortised: one forward pass per task),
//!    - mean-field VI with the standard `N(0, 1/(fan_in+1))` prior (fitted per task),
//!    - mean-field VI with the learned prior (prior transfer, fitted per task).
//!
//!    All three use the meta-learned noise. Beside them, the `oracle` column is the Bayes-optimal
//!    predictor of the same targets (it knows the generator: [`OracleLpd`]), the best any prior
//!    can do.
//! 3. PNGs in `target/weightspace/`: function samples of the initial and the learned prior, and
//!    posterior predictives on one held-out task with 4 context points.
//!
//! ```text
//! cargo run --release --example meta_sawtooth              # 10000 steps, a few minutes
//! cargo run --release --example meta_sawtooth -- --quick   # smoke run
//! cargo run --release --example meta_sawtooth -- --steps 20000
//! cargo run --release --example meta_sawtooth -- --spread 0 --steps 3000   # a prior centred at zero
//! cargo run --release --example meta_sawtooth -- --shift   # the harder family: a random shift per task
//! ```
//!
//! Over MPI, the meta-training is data-parallel (each rank evaluates its share of a step's tasks;
//! the gradients are summed over ranks) and rank 0 evaluates and plots. The line
//! `meta_training ranks=R steps=… seconds=… compute_seconds=… allreduce_seconds=…` splits the
//! training time:
//!
//! ```text
//! cargo build --release --features mpi --example meta_sawtooth
//! mpirun -n 2 target/release/examples/meta_sawtooth --steps 3000
//! ```

mod common;

use rand::SeedableRng;
use weightspace::bnnp::*;
use weightspace::comm::Communicator;
use weightspace::prelude::*;
use weightspace::{band_plot, BandPlot};

/// The network: two ReLU layers of 32 units; the noise is learned (at most 0.5).
#[bnn]
struct SawNet {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h1: Dense<1, 32, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h2: Dense<32, 32, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<32, 1>,
    #[likelihood(upper = 0.5)]
    noise: Gaussian<Learned<0.1>>,
}

type G = AmortisedGuide<f32, Cpu>;
/// A fitted mean-field model and its guide.
type Fitted = (SawNet<f32, Cpu>, SawNetGuide<f32, Cpu>);

/// Samples, mean and a central 95 % band of `(S, N)` function values.
fn band(f: &[f32], n: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let s = f.len() / n;
    let samples: Vec<Vec<f64>> = f.chunks(n).map(|c| c.iter().map(|&v| v as f64).collect()).collect();
    let (mut mean, mut lo, mut hi) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let mut col: Vec<f64> = samples.iter().map(|r| r[i]).collect();
        col.sort_by(|a, b| a.partial_cmp(b).unwrap());
        mean[i] = col.iter().sum::<f64>() / s as f64;
        lo[i] = col[(0.025 * (s - 1) as f64) as usize];
        hi[i] = col[(0.975 * (s - 1) as f64) as usize];
    }
    (samples, mean, lo, hi)
}

fn plot(path: &str, title: &str, grid: &[f64], f: &[f32], points: Option<(&[f64], &[f64])>) -> Result<(), weightspace::Error> {
    let (samples, mean, lo, hi) = band(f, grid.len());
    let shown: Vec<Vec<f64>> = samples.into_iter().take(12).collect();
    band_plot(path, &BandPlot { title, x: grid, mean: &mean, lower: &lo, upper: &hi, samples: &shown, points })
}

/// Mean-field VI on one context set; returns the fitted model and guide.
fn mfvi(ctx: &Dataset<f32, Cpu>, noise_raw: f32, learned: Option<&G>, steps: usize, seed: u64) -> Result<Fitted, weightspace::Error> {
    let dev = Cpu::default();
    let mut model = SawNet::<f32, Cpu>::new(&dev);
    model.noise.raw = dev.tensor([noise_raw]);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed })?;
    let cfg = FitConfig {
        steps,
        lr: 1e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples: 4, learn_hyperparameters: false, ..Default::default() },
        seed,
        progress: false,
        ..Default::default()
    };
    match learned {
        None => {
            fit(&mut model, &mut guide, ctx, &cfg)?;
        }
        Some(g) => {
            let mut objective = LearnedPriorElbo::new(g, 4)?;
            fit_objective(&mut model, &mut guide, ctx, &cfg, &mut objective)?;
        }
    }
    Ok((model, guide))
}

fn main() {
    // over MPI (`--features mpi`, launched by mpirun/srun) the meta-training is data-parallel and
    // rank 0 evaluates; a rank that fails ends the whole job
    #[cfg(feature = "mpi")]
    weightspace::comm::Mpi::run(|comm| {
        if let Err(e) = job(comm) {
            comm.abort(1, &format!("meta_sawtooth: rank {} of {} failed: {e}; aborting all ranks", comm.rank(), comm.size()));
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
    let args = common::Args::parse(
        "[--quick] [--shift] [--bnnp-only] [--steps N] [--spread F] [--family diagonal|unit|diagonal-unit-output]",
        &["--shift", "--bnnp-only"],
        &["--steps", "--spread", "--family"],
        0,
    );
    let quick = args.quick();
    let steps = args.get("--steps", if quick { 60 } else { 10_000 });
    let (held_out, mf_steps) = if quick { (3, 100) } else { (20, 600) };
    std::fs::create_dir_all("target/weightspace")?;
    let dev = Cpu::default();
    let model = SawNet::<f32, Cpu>::new(&dev);
    // the prior starts narrow around one network, so that the hidden layers learn features
    // (`--spread 0` starts centred at zero: then only the output layer learns, see `PriorInit`)
    let spread = args.get("--spread", 0.01);
    let init = if spread > 0.0 { PriorInit::Network { spread, seed: 0 } } else { PriorInit::Centred };
    let (family, output_family) = match args.value("--family").unwrap_or("diagonal") {
        "diagonal" => (PriorFamily::WeightDiagonal, None),
        "unit" => (PriorFamily::UnitFullRank, None),
        "diagonal-unit-output" => (PriorFamily::WeightDiagonal, Some(PriorFamily::UnitFullRank)),
        other => args.fail(&format!("--family {other}: expected diagonal, unit or diagonal-unit-output")),
    };
    let prior = PriorConfig { family, output_family, init, ..Default::default() };
    let mut guide = model.amortised_guide(GuideConfig { prior, ..Default::default() })?;
    // `--bnnp-only` skips the mean-field VI columns (for ablations)
    let with_mfvi = !args.flag("--bnnp-only");
    let initial = guide.clone();
    let sawtooth = Sawtooth { random_shift: args.flag("--shift"), ..Default::default() };
    println!(
        "task family: sawtooth, {}; prior {:?} (output layer {:?}), {:?}",
        if sawtooth.random_shift { "random shift s ~ U[0, p) (--shift)" } else { "no shift (the paper's)" },
        family,
        output_family.unwrap_or(family),
        init
    );

    // 1. meta-training
    let cfg = MetaConfig {
        steps,
        tasks_per_step: 4,
        samples: 4,
        adam: AdamSettings { lr: 3e-3, ..Default::default() },
        lr_end: Some(3e-4),
        checkpoint: Some(Checkpointing { path: "target/weightspace/meta_sawtooth.safetensors".into(), every: 500 }),
        progress: !quick,
        record_every: (steps / 10).max(1),
        ..Default::default()
    };
    let report = MetaLearner::new(cfg)?.run_on(comm, &mut guide, &mut Generated(sawtooth))?;
    println!(
        "meta_training ranks={} steps={} seconds={:.3} compute_seconds={:.3} allreduce_seconds={:.3}",
        comm.size(),
        report.steps,
        report.seconds,
        report.seconds - report.communication_seconds,
        report.communication_seconds
    );
    if !comm.is_root() {
        return Ok(()); // rank 0 evaluates and plots
    }
    println!(
        "meta-training: {} steps ({} skipped for a non-finite loss) in {:.1} s ({:.1} ms/step); learned noise sd {:.3} (true {})",
        report.steps,
        report.skipped_steps,
        report.seconds,
        1e3 * report.seconds / report.steps as f64,
        guide.noise_scale(),
        sawtooth.noise
    );
    for r in &report.history {
        println!(
            "  step {:5}  objective {:9.2}  ctx ell {:8.2}  tgt lpp {:8.2}  KL {:8.2}  σ_y {:.3}",
            r.step, r.objective, r.ctx_ell, r.tgt_lpp, r.kl, r.noise
        );
    }
    let noise_raw = guide.store().values(guide.noise_param())[0] as f32;

    // 2. held-out tasks
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let tasks: Vec<(Vec<f64>, Vec<f64>)> =
        (0..held_out).map(|_| Sawtooth { n_range: (108, 109), ..sawtooth }.generate(&mut rng)).collect::<Result<_, _>>()?;
    println!("\nheld-out tasks: {held_out}, 100 targets each; mean per-point log predictive density (higher is better)");
    println!("{:>9} | {:>16} | {:>16} | {:>16} | {:>16}", "context", "BNNP learned", "MFVI standard", "MFVI learned", "oracle");
    let mut summary = String::from("meta_sawtooth");
    for nc in [1usize, 2, 4, 8] {
        let (mut b, mut ms, mut ml, mut or) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (ti, (x, y)) in tasks.iter().enumerate() {
            let ctx = Dataset::<f32, _>::regression(&dev, &x[..nc], 1, &y[..nc], 1)?;
            let tgt = Dataset::<f32, _>::regression(&dev, &x[8..], 1, &y[8..], 1)?;
            b.push(guide.log_predictive(Some(&ctx), &tgt, 500, &mut rng)?);
            if with_mfvi {
                let (m, q) = mfvi(&ctx, noise_raw, None, mf_steps, ti as u64)?;
                ms.push(Predictive::new(500).evaluate(&m, &q, &tgt)?.mean_lpd);
                let (m, q) = mfvi(&ctx, noise_raw, Some(&guide), mf_steps, ti as u64)?;
                ml.push(Predictive::new(500).evaluate(&m, &q, &tgt)?.mean_lpd);
            }
            or.push(sawtooth.oracle_lpd((&x[..nc], &y[..nc]), (&x[8..], &y[8..]))?);
        }
        let stat = |v: &[f64]| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let se = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt() } else { 0.0 };
            (m, se)
        };
        let ((bm, bs), (sm, ss), (lm, ls), (om, os)) = (stat(&b), stat(&ms), stat(&ml), stat(&or));
        if with_mfvi {
            println!("{nc:>9} | {bm:>8.3} ± {bs:<5.3} | {sm:>8.3} ± {ss:<5.3} | {lm:>8.3} ± {ls:<5.3} | {om:>8.3} ± {os:<5.3}");
            summary.push_str(&format!(" nc{nc}_bnnp={bm:.3} nc{nc}_mfvi={sm:.3} nc{nc}_mfvi_learned={lm:.3} nc{nc}_oracle={om:.3}"));
        } else {
            println!("{nc:>9} | {bm:>8.3} ± {bs:<5.3} | {:>16} | {:>16} | {om:>8.3} ± {os:<5.3}", "-", "-");
            summary.push_str(&format!(" nc{nc}_bnnp={bm:.3} nc{nc}_oracle={om:.3}"));
        }
    }

    // 3. pictures
    let grid: Vec<f64> = (0..300).map(|i| -2.0 + 4.0 * i as f64 / 299.0).collect();
    let xg = dev.tensor_from_vec(grid.iter().map(|&v| v as f32).collect(), (grid.len(), 1usize));
    plot(
        "target/weightspace/meta_sawtooth_prior_initial.png",
        "initial prior: function samples",
        &grid,
        &initial.predict(None, &xg, 200, &mut rng)?.as_vec(),
        None,
    )?;
    plot(
        "target/weightspace/meta_sawtooth_prior_learned.png",
        "meta-learned prior: function samples",
        &grid,
        &guide.predict(None, &xg, 200, &mut rng)?.as_vec(),
        None,
    )?;
    let (x, y) = &tasks[0];
    let ctx = Dataset::<f32, _>::regression(&dev, &x[..4], 1, &y[..4], 1)?;
    let pts = (&x[..4], &y[..4]);
    plot(
        "target/weightspace/meta_sawtooth_posterior_bnnp.png",
        "BNNP, learned prior: posterior given 4 points",
        &grid,
        &guide.predict(Some(&ctx), &xg, 200, &mut rng)?.as_vec(),
        Some(pts),
    )?;
    let (m, q) = mfvi(&ctx, noise_raw, None, mf_steps, 0)?;
    let draws = weightspace::sample_guide(SawNet::<f32, Cpu>::ARCH, &q, 200, &mut rng)?;
    plot(
        "target/weightspace/meta_sawtooth_posterior_mfvi.png",
        "mean-field VI, standard prior: posterior given 4 points",
        &grid,
        &m.forward(draws, &xg)?.as_vec(),
        Some(pts),
    )?;
    println!("\nwrote target/weightspace/meta_sawtooth_{{prior_initial,prior_learned,posterior_bnnp,posterior_mfvi}}.png");
    println!("{summary} noise={:.4}", guide.noise_scale());
    Ok(())
}
