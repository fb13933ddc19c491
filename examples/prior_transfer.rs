//! Prior transfer, the BNNP paper's claim measured: does a meta-learned prior help exact-ish
//! inference (NUTS) as well as amortised inference (BNNP), and does BNNP do as well as NUTS under
//! the same prior?
//!
//! On held-out sawtooth tasks with 1, 2, 4 and 8 context points it prints the mean per-point log
//! predictive density of 100 target points under
//! - NUTS with the standard `N(0, 1/(fan_in+1))` prior (one chain per task),
//! - NUTS with the meta-learned prior ([`AmortisedGuide::weight_prior`]),
//! - BNNP with the meta-learned prior (one forward pass per task),
//! - mean-field VI with the meta-learned prior ([`LearnedPriorElbo`], fitted per task),
//!
//! all with the meta-learned noise held fixed, and beside them the Bayes-optimal predictor of the
//! same targets ([`OracleLpd`]). The meta-learned guide is the one a full `meta_sawtooth` run wrote
//! (`target/weightspace/meta_sawtooth.safetensors`, or `…_shift.safetensors` with `--shift`); without
//! one, or with `--retrain`, it meta-trains here with the same settings first.
//!
//! ```text
//! cargo run --release --example meta_sawtooth && cargo run --release --example prior_transfer
//! cargo run --release --example prior_transfer -- --quick   # smoke run (meta-trains 60 steps)
//! ```

mod common;

use rand::{Rng, SeedableRng};
use weightspace::bnnp::*;
use weightspace::mcmc::{lppd, sample_nuts, BnnPosterior, NoisePrior, NutsSettings};
use weightspace::metrics::mean_and_se;
use weightspace::prelude::*;

use common::sawtooth::{checkpoint_path, held_out_tasks, meta_config, mfvi, prior_config, SawNet, DEFAULT_SPREAD};

/// One method's per-task values at one context size.
#[derive(Default)]
struct Column {
    lpd: Vec<f64>,
    divergences: usize,
    depth: f64,
}

fn main() {
    if let Err(e) = job() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn job() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse(
        "[--quick] [--shift] [--retrain] [--steps N] [--tasks N]",
        &["--shift", "--retrain"],
        &["--steps", "--tasks"],
        0,
    );
    let quick = args.quick();
    let held_out = args.get("--tasks", if quick { 2 } else { 20 });
    if held_out < 2 {
        args.fail(&format!("--tasks {held_out}: at least 2 tasks are needed for a standard error"));
    }
    let (warmup, draws, mf_steps) = if quick { (60, 30, 60) } else { (1000, 500, 600) };
    let contexts: &[usize] = if quick { &[2] } else { &[1, 2, 4, 8] };
    let sawtooth = Sawtooth { random_shift: args.flag("--shift"), ..Default::default() };
    let dev = Cpu::default();

    // the meta-learned guide: a full meta_sawtooth run's, or trained here
    let model = SawNet::<f32, Cpu>::new(&dev);
    let prior = prior_config(DEFAULT_SPREAD, PriorFamily::WeightDiagonal, None);
    let mut guide = model.amortised_guide(GuideConfig { prior, ..Default::default() })?;
    let path = checkpoint_path(sawtooth.random_shift);
    if !quick && !args.flag("--retrain") && std::path::Path::new(path).exists() {
        guide.load(path).map_err(|e| format!("{path}: {e} (rerun meta_sawtooth, or pass --retrain)"))?;
        println!("meta-learned guide: loaded {path}");
    } else {
        let steps = args.get("--steps", if quick { 60 } else { 10_000 });
        let report = MetaLearner::new(meta_config(steps, None, !quick))?.run(&mut guide, &mut Generated(sawtooth))?;
        println!("meta-learned guide: trained here, {} steps in {:.1} s", report.steps, report.seconds);
    }
    let sigma = guide.noise_scale();
    let noise_raw = guide.store().values(guide.noise_param())[0];
    let learned_prior = guide.weight_prior()?;
    println!("learned noise sd {sigma:.4} (true {}); every method below uses it", sawtooth.noise);

    // NUTS targets: the same network in f64 with the learned noise fixed
    let mut model64 = SawNet::<f64, Cpu>::new(&dev);
    model64.noise.raw = dev.tensor([noise_raw]);
    let tasks = held_out_tasks(sawtooth, held_out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);

    println!("\nheld-out tasks: {held_out}, 100 targets each; NUTS: {warmup} warm-up + {draws} draws, one chain per task");
    println!("mean per-point log predictive density (higher is better), ± s.e. over tasks");
    println!(
        "{:>7} | {:>16} | {:>16} | {:>16} | {:>16} | {:>16}",
        "context", "NUTS standard", "NUTS learned", "BNNP learned", "MFVI learned", "oracle"
    );
    let mut summary = String::from("prior_transfer");
    let started = std::time::Instant::now();
    for &nc in contexts {
        let mut cols: [Column; 5] = Default::default();
        for (ti, (x, y)) in tasks.iter().enumerate() {
            let seed = 1000 * nc as u64 + ti as u64;
            let ctx = Dataset::<f64, _>::regression(&dev, &x[..nc], 1, &y[..nc], 1)?;
            let tgt = Dataset::<f64, _>::regression(&dev, &x[8..], 1, &y[8..], 1)?;
            for (k, learned) in [false, true].into_iter().enumerate() {
                let post = BnnPosterior::new(&model64, &ctx, NoisePrior::Fixed)?;
                // start at a draw from the prior being sampled
                let (mut post, init) = if learned {
                    let init = learned_prior.sample(&mut rng);
                    (post.with_weight_prior(learned_prior.clone())?, init)
                } else {
                    let (loc, scale) = post.prior_values();
                    let init = loc.iter().zip(&scale).map(|(m, s)| m + s * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
                    (post, init)
                };
                let run = sample_nuts(&mut post, &init, &NutsSettings { warmup, draws, seed, ..Default::default() })?;
                let ll = post.pointwise_log_lik(&run.draws, &tgt)?;
                let col = &mut cols[k];
                col.lpd.push(lppd(&ll, run.draws.len(), tgt.len())?.mean);
                col.divergences += run.divergences();
                col.depth += run.mean_tree_depth() / held_out as f64;
            }
            let ctx32 = Dataset::<f32, _>::regression(&dev, &x[..nc], 1, &y[..nc], 1)?;
            let tgt32 = Dataset::<f32, _>::regression(&dev, &x[8..], 1, &y[8..], 1)?;
            cols[2].lpd.push(guide.log_predictive(Some(&ctx32), &tgt32, 500, &mut rng)?);
            let (m, q) = mfvi(&ctx32, noise_raw as f32, Some(&guide), mf_steps, seed)?;
            cols[3].lpd.push(Predictive::new(500).evaluate(&m, &q, &tgt32)?.mean_lpd);
            cols[4].lpd.push(sawtooth.oracle_lpd((&x[..nc], &y[..nc]), (&x[8..], &y[8..]))?);
        }
        let mut line = format!("{nc:>7}");
        for (col, key) in cols.iter().zip(["nuts_standard", "nuts_learned", "bnnp", "mfvi_learned", "oracle"]) {
            let (m, se) = mean_and_se(&col.lpd)?;
            line.push_str(&format!(" | {m:>8.3} ± {se:<5.3}"));
            summary.push_str(&format!(" nc{nc}_{key}={m:.3}"));
        }
        println!("{line}");
        println!(
            "{:>7}   NUTS divergences after warm-up: standard {}, learned {}; mean tree depth {:.1} / {:.1}",
            "", cols[0].divergences, cols[1].divergences, cols[0].depth, cols[1].depth
        );
    }
    println!("{summary} noise={sigma:.4} seconds={:.1}", started.elapsed().as_secs_f64());
    Ok(())
}
