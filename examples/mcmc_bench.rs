//! Many-chain benchmark: the f1 (1×3 tanh) SYM-MCMC workflow on the sinusoidal data, 1274 chains
//! × 1024 warm-up steps × 1 draw, as in `benches/peers/blackjax_chees_chains.py` (BlackJAX ChEES-HMC)
//! and `numpyro_multichain_nuts.py` (NumPyro NUTS).
//!
//! ```text
//! cargo run --release --example mcmc_bench -- [--chains 1274] [--warmup 1024] [--threads 0]
//!     [--train train.csv --test test.csv] [--seed 0] [--diag] [--per-chain] [--sampler chees|nuts]
//! cargo run --release --example mcmc_bench -- --quick   # smoke run: 16 chains × 64 warm-up steps, 40 generated points
//! ```
//!
//! With `--train/--test` it reads the peers' exact split (CSV rows `x,y`, already standardised with
//! the training statistics; `examples/data/dump_peer_sinusoidal.py` writes them from the peers'
//! generator). Otherwise it generates the same kind of data: 150 points, x ~ U(0, 8),
//! y = sin x + N(0, 0.3²), 80/20 split, standardised with the training statistics as the peers do.
//! Model: N(0, 1) priors on every weight, σ ~ HalfNormal(1) sampled as ln σ, chains from U(−2, 2).
//! The sampler is the batched ChEES-HMC (as BlackJAX's), or with `--sampler nuts` NUTS in every
//! chain (as NumPyro's; `scripts/bench_nuts_chains.sh` runs the two side by side). The last line is
//! machine-readable, with `seconds_per_chain=`.

mod common;

use std::time::Instant;

use weightspace::mcmc::data::Table;
use weightspace::mcmc::*;
use weightspace::prelude::*;

#[bnn]
struct F1 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

/// A peer split file: CSV rows `x,y`, no header.
fn read_csv(path: &str) -> Result<Table, Box<dyn std::error::Error>> {
    let opts = CsvOptions { has_header: false, features: Some(vec![0.into()]), targets: vec![1.into()], ..Default::default() };
    let t = DataTable::from_csv(path, &opts)?;
    let weightspace::TableTargets::Real { y, .. } = t.targets else { unreachable!("real targets were asked for") };
    Ok(Table::new(t.x, 1, y)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse(
        "[--quick] [--chains 1274] [--warmup 1024] [--threads 0] [--train train.csv --test test.csv] [--seed 0] [--diag] [--per-chain] [--sampler chees|nuts]",
        &["--diag", "--per-chain"],
        &["--chains", "--warmup", "--threads", "--train", "--test", "--seed", "--sampler"],
        0,
    );
    // the benchmark, or with --quick a smoke run: chains, warm-up steps, generated points
    let (chains, warmup, points) = if args.quick() { (16, 64, 40) } else { (1274, 1024, 150) };
    let chains: usize = args.get("--chains", chains);
    let warmup: usize = args.get("--warmup", warmup);
    let threads: usize = args.get("--threads", 0);
    let seed: u64 = args.get("--seed", 0);
    let (train, test, source) = match (args.value("--train"), args.value("--test")) {
        (Some(tr), Some(te)) => (read_csv(tr)?, read_csv(te)?, "peer split (csv)"),
        (None, None) => {
            let raw = weightspace::mcmc::data::sinusoidal(points, seed);
            let (tr, te) = raw.split(0.8, seed)?;
            let (tr, stats) = tr.standardise();
            (tr, te.apply(&stats), "generated")
        }
        _ => args.fail("--train and --test go together"),
    };
    let dev = Cpu::default();
    let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
    let model = F1::<f32, Cpu>::new(&dev);
    let mc = ManyChainSettings {
        diagonal_mass_matrix: args.flag("--diag"),
        step_size: if args.flag("--per-chain") { StepSizeAdaptation::PerChain } else { StepSizeAdaptation::Shared },
        seed,
        ..Default::default()
    };
    let sampler = match args.value("--sampler").unwrap_or("chees") {
        "chees" => ChainSampler::ManyChain(mc),
        "nuts" => ChainSampler::Nuts(NutsSettings { seed, ..Default::default() }),
        other => args.fail(&format!("--sampler {other}: use chees or nuts")),
    };
    let settings = SymMcmcSettings { chains, warmup, draws_per_chain: 1, sampler, threads, seed, progress: false, ..Default::default() };
    let t0 = Instant::now();
    let run = sym_mcmc(&model, &train, &settings, &NoCanonicalisation)?;
    let total = t0.elapsed().as_secs_f64();
    let l = run.lppd(&model, &test)?;
    if let SamplerReport::Nuts(per) = &run.report {
        let n = per.len() as f64;
        println!(
            "data: {source}, {} train / {} test points; NUTS per chain: mean tree depth {:.2}, mean step size {:.4}; gradient evaluations {} ({:.3} µs each)",
            train.len(),
            test.len(),
            per.iter().map(|p| p.1).sum::<f64>() / n,
            per.iter().map(|p| p.2).sum::<f64>() / n,
            run.gradient_evaluations,
            1e6 * run.seconds / run.gradient_evaluations as f64
        );
    }
    if let SamplerReport::ManyChain(r) = &run.report {
        let mean_steps = r.iterations.iter().map(|i| i.max_leapfrog_steps as f64).sum::<f64>() / r.iterations.len() as f64;
        println!(
            "data: {source}, {} train / {} test points; step size {:.4}, trajectory {:.3}, mean leapfrog steps per iteration {:.1}, warm-up divergences {}",
            train.len(),
            test.len(),
            r.step_sizes[0],
            r.trajectory_length,
            mean_steps,
            r.warmup_divergences.iter().sum::<usize>()
        );
        println!(
            "batched calls {}, gradient evaluations {} ({:.3} µs each)",
            r.batched_calls,
            r.gradient_evaluations,
            1e6 * r.seconds / r.gradient_evaluations as f64
        );
    }
    println!("test LPPD {:.3} ± {:.3} over {} draws; divergences after warm-up {}", l.mean, l.se, run.pooled().len(), run.divergences);
    println!(
        "mcmc_bench sampler={} chains={chains} warmup={warmup} threads={threads} seconds={:.2} total_seconds={total:.2} seconds_per_chain={:.5} lppd={:.4} se={:.4}",
        args.value("--sampler").unwrap_or("chees"),
        run.seconds,
        total / chains as f64,
        l.mean,
        l.se
    );
    Ok(())
}
