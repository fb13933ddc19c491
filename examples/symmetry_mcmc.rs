//! The SYM-MCMC workflow (Wiese et al. 2023) on the paper's regression benchmarks, with the
//! published numbers beside ours.
//!
//! ```text
//! cargo run --release --example symmetry_mcmc -- --dataset sinusoidal|regression2d|diabetes \
//!     --arch f1|f2 --chains 1274 --warmup 1024 [--draws 1] [--threads 0] [--seed 0] [--no-single] \
//!     [--sampler chees|nuts] [--per-chain] [--diag] [--out target/weightspace/symmetry_mcmc]
//! cargo run --release --example symmetry_mcmc -- --quick   # smoke run: 24 chains × 50 warm-up steps × 8 draws, 40 sinusoidal points
//! ```
//!
//! Over MPI (`--features mpi`), every rank runs its share of the chains; rank 0 gathers the draws,
//! canonicalises them, computes the LPPD and writes the files:
//!
//! ```text
//! cargo build --release --features mpi --example symmetry_mcmc
//! mpirun -n 4 target/release/examples/symmetry_mcmc --dataset sinusoidal --arch f1 --chains 1274 --no-single
//! ```
//!
//! For runs too large to gather on rank 0, `--shards DIR` makes every rank write its chains to a
//! safetensors shard in `DIR` instead (`sym_mcmc_shard`), and a later one-process run with
//! `--merge DIR` and the same settings joins them, canonicalises and reports (`sym_mcmc_merge`),
//! with the LPPD of the gathered run:
//!
//! ```text
//! mpirun -n 4 target/release/examples/symmetry_mcmc --dataset sinusoidal --arch f1 --chains 1274 --no-single --shards target/shards
//! target/release/examples/symmetry_mcmc --dataset sinusoidal --arch f1 --chains 1274 --no-single --merge target/shards
//! ```
//!
//! The last line, `symmetry_mcmc ranks=R lppd=… seconds=… … compute_seconds=… allreduce_seconds=…
//! modes=…`, splits the sampling time into compute and collectives (on rank 0) and gives the number
//! of distinct modes among the canonicalised draws (`SymMcmcRun::modes`: spectral clustering of at
//! most 1000 of them, `K` by the eigengap rule). `--fail-rank R` (with
//! `--fail-how err|panic`) makes rank `R` fail on purpose before sampling, to check that the job
//! ends on every rank instead of hanging.
//!
//! Results out: the run writes, under `--out`, `.npz` files for NumPy and ArviZ (arrays in ArviZ's
//! `(chain, draw, ...)` order): `raw.npz` and `canonical.npz` (`w`, `log_sigma`),
//! `sample_stats.npz` (`step_size`, `lp`), `predictive.npz` (`f`, `y` at the test inputs) and, with
//! at least 6 draws per chain, `summary_weights.npz` and `summary_function.npz` (the `az.summary`
//! columns of the canonicalised weights and of the function values at the test inputs, whose
//! tables it also prints). `scripts/check_arviz.py` loads them with NumPy and ArviZ and compares.
//!
//! - f1 is a 1×3 tanh MLP, f2 a 3×16 tanh MLP; N(0, 1) priors on every weight, σ ~ HalfNormal(1).
//! - Protocol of the paper: every column, the target included, is standardised with whole-dataset
//!   statistics, then one seeded 80/20 split; the ± is the standard error over test points.
//! - The many-chain run is `--chains` chains of the batched ChEES-HMC sampler from U(−2, 2) (with
//!   `--per-chain`: per-chain step sizes, which on f2 regression2d halve the gradient evaluations,
//!   since a chain in a wide mode takes fewer steps; `--diag`: per-chain diagonal mass matrices), or with
//!   `--sampler nuts` the paper's own method, NUTS in every chain (each chain with its own tree,
//!   step size and mass matrix; all chains advanced together, one batched gradient call per
//!   leapfrog step); each keeps `--draws` draws after `--warmup` warm-up steps. The baseline is one NUTS chain
//!   (nuts-rs, target acceptance 0.8, max tree depth 10) keeping as many draws.
//! - The pooled draws pass through the workflow's canonicalisation step, the symmetry module's
//!   exact rule (`Canonicalisation::Exact`: positive hidden biases, sorted by bias), so R-hat/ESS
//!   on weights are computed in the symmetry-free reference set; the LPPD is unchanged by it,
//!   since canonicalisation never changes the network function.
//! - diabetes is the classic 442 × 10 set, read from the `smartcore` crate, which ships all 442
//!   rows (linfa-datasets' loader drops the first one).

mod common;

use std::path::Path;

use common::Args;
use weightspace::comm::Communicator;
use weightspace::diagnostics::SummaryTable;
use weightspace::export::Npz;
use weightspace::mcmc::data::Table;
use weightspace::mcmc::*;
use weightspace::prelude::*;

macro_rules! nets {
    ($($f1:ident, $f2:ident, $d:literal);*) => {$(
        #[bnn]
        struct $f1 {
            #[layer(prior = Normal(0.0, 1.0))]
            hidden: Dense<$d, 3, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            out: Dense<3, 1>,
            #[likelihood]
            noise: Gaussian<Learned<1.0>>,
        }
        #[bnn]
        struct $f2 {
            #[layer(prior = Normal(0.0, 1.0))]
            h1: Dense<$d, 16, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            h2: Dense<16, 16, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            h3: Dense<16, 16, Tanh>,
            #[layer(prior = Normal(0.0, 1.0))]
            out: Dense<16, 1>,
            #[likelihood]
            noise: Gaussian<Learned<1.0>>,
        }
    )*};
}

nets!(F1In1, F2In1, 1; F1In2, F2In2, 2; F1In10, F2In10, 10);

/// The classic diabetes data: 442 rows, 10 (already scaled) features, the disease-progression
/// target.
fn diabetes() -> Table {
    let d = smartcore::dataset::diabetes::load_dataset();
    assert_eq!((d.num_samples, d.num_features), (442, 10), "the shipped diabetes data");
    Table::new(d.data.iter().map(|&v| v as f64).collect(), 10, d.target.iter().map(|&v| v as f64).collect()).expect("valid data")
}

/// Published mean test LPPD (s.e.): (many-chain, single chain) per (dataset, arch).
fn published(dataset: &str, arch: &str) -> Option<((f64, f64), (f64, f64))> {
    Some(match (dataset, arch) {
        ("sinusoidal", "f1") => ((-0.53, 0.09), (-0.56, 0.11)),
        ("sinusoidal", "f2") => ((-0.59, 0.12), (-0.59, 0.12)),
        ("regression2d", "f1") => ((0.64, 0.10), (0.75, 0.11)),
        ("regression2d", "f2") => ((0.95, 0.08), (0.95, 0.08)),
        ("diabetes", "f1") => ((-1.20, 0.07), (-1.20, 0.07)),
        ("diabetes", "f2") => ((-1.18, 0.08), (-1.22, 0.09)),
        _ => return None,
    })
}

struct Outcome {
    lppd: Lppd,
    /// Distinct modes among the canonicalised draws (spectral clustering).
    modes: usize,
    single: Option<Lppd>,
    seconds: f64,
    communication_seconds: f64,
    ranks: usize,
}

/// The most canonicalised draws the mode count clusters (spectral clustering is dense, `O(n³)`).
const MODE_POINTS: usize = 1000;

/// `None` on the ranks other than 0.
fn run<M: Bnn<f32, Cpu>>(
    comm: &dyn Communicator,
    model: &M,
    train: &Dataset<f32, Cpu>,
    test: &Dataset<f32, Cpu>,
    args: &Args,
) -> weightspace::Result<Option<Outcome>> {
    let chains: usize = args.get("--chains", if args.quick() { 24 } else { 1274 });
    let warmup: usize = args.get("--warmup", if args.quick() { 50 } else { 1024 });
    let draws: usize = args.get("--draws", if args.quick() { 8 } else { 1 });
    let seed: u64 = args.get("--seed", 0);
    let sampler = match args.value("--sampler").unwrap_or("chees") {
        // the paper's own method: every chain on its own with NUTS
        "nuts" => ChainSampler::Nuts(NutsSettings { seed, ..Default::default() }),
        "chees" => ChainSampler::ManyChain(ManyChainSettings {
            step_size: if args.flag("--per-chain") { StepSizeAdaptation::PerChain } else { StepSizeAdaptation::Shared },
            diagonal_mass_matrix: args.flag("--diag"),
            seed,
            ..Default::default()
        }),
        other => args.fail(&format!("--sampler {other}: use chees or nuts")),
    };
    let name = match sampler {
        ChainSampler::Nuts(_) => "NUTS per chain",
        ChainSampler::ManyChain(_) => "batched ChEES-HMC",
    };
    let settings = SymMcmcSettings {
        chains,
        warmup,
        draws_per_chain: draws,
        sampler,
        threads: args.get("--threads", 0),
        seed,
        progress: !args.quick(),
        ..Default::default()
    };
    if args.value("--fail-rank").map(|r| r.parse::<usize>().ok() == Some(comm.rank())).unwrap_or(false) {
        if args.value("--fail-how") == Some("panic") {
            panic!("--fail-rank {}: this rank panics on purpose", comm.rank());
        }
        return Err(weightspace::Error::InvalidConfig {
            name: "--fail-rank",
            value: comm.rank().to_string(),
            reason: "this rank fails on purpose",
        });
    }
    let run = match (args.value("--shards"), args.value("--merge")) {
        (Some(_), Some(_)) => args.fail("--shards writes the shards and --merge reads them: use one, then the other"),
        (Some(dir), None) => {
            // every rank writes its chains; nothing is gathered
            let t = std::time::Instant::now();
            let path = sym_mcmc_shard(comm, model, train, &settings, dir)?;
            comm.all_max(0.0)?; // every shard is written before rank 0 reports
            if comm.is_root() {
                println!("wrote {} shard(s) like {} (merge them with --merge {dir} and the same settings)", comm.size(), path.display());
                println!("symmetry_mcmc_shards ranks={} dir={dir} chains={chains} seconds={:.3}", comm.size(), t.elapsed().as_secs_f64());
            }
            return Ok(None);
        }
        (None, Some(dir)) => {
            if comm.size() > 1 {
                args.fail("--merge runs on one process (the ranks' shards are already written)");
            }
            sym_mcmc_merge(model, train, &settings, &Canonicalisation::Exact, dir)?
        }
        (None, None) => {
            let Some(run) = sym_mcmc_on(comm, model, train, &settings, &Canonicalisation::Exact)? else { return Ok(None) };
            run
        }
    };
    let lppd = run.lppd(model, test)?;
    println!(
        "many-chain ({name}): {chains} chains × {warmup} warm-up × {draws} draw(s), {:.1} s, {} gradient evaluations, {} divergences after warm-up",
        run.seconds, run.gradient_evaluations, run.divergences
    );
    if draws >= 4 {
        let d = run.diagnostics(model, test)?;
        println!(
            "  diagnostics: max R-hat {:.3} (function values at the test inputs), {:.3} (canonicalised weights); min bulk ESS {:.0} / {:.0}",
            d.max_rhat_function, d.max_rhat_weights, d.min_ess_function, d.min_ess_weights
        );
    } else {
        println!("  diagnostics: R-hat/ESS need >= 4 draws per chain (use --draws 4)");
    }
    let modes = run.modes(MODE_POINTS, &weightspace::symmetry::SpectralSettings { seed, ..Default::default() })?;
    println!(
        "  modes: {} among the canonicalised draws (spectral clustering of at most {MODE_POINTS} of them, K by the eigengap rule; sizes {:?})",
        modes.count(),
        modes.sizes
    );
    write_results(model, test, &run, args, seed)?;
    let single = if args.flag("--no-single") {
        None
    } else {
        let s = SymMcmcSettings {
            chains: 1,
            warmup,
            draws_per_chain: chains * draws,
            sampler: ChainSampler::Nuts(NutsSettings { seed, ..Default::default() }),
            seed: seed + 1,
            ..settings.clone()
        };
        let single = sym_mcmc(model, train, &s, &NoCanonicalisation)?;
        if let SamplerReport::Nuts(per) = &single.report {
            println!(
                "single chain: NUTS, {} draws after {warmup} warm-up, {:.1} s, mean tree depth {:.1}, step size {:.4}, {} divergences",
                chains * draws,
                single.seconds,
                per[0].1,
                per[0].2,
                per[0].0
            );
        }
        Some(single.lppd(model, test)?)
    };
    Ok(Some(Outcome {
        lppd,
        modes: modes.count(),
        single,
        seconds: run.seconds,
        communication_seconds: run.communication_seconds,
        ranks: run.ranks,
    }))
}

/// Prints at most `max` rows of a summary table.
fn print_table(title: &str, table: &SummaryTable, max: usize) {
    let shown = SummaryTable { rows: table.rows.iter().take(max).cloned().collect(), ..table.clone() };
    let more = if table.rows.len() > max { format!(" (first {max} of {} rows)", table.rows.len()) } else { String::new() };
    println!("{title}{more}:\n{shown}");
}

/// Writes the draws, sampler statistics, predictive draws at the test inputs and the summary
/// tables as `.npz` files under `--out`, and prints the tables.
fn write_results<M: Bnn<f32, Cpu>>(
    model: &M,
    test: &Dataset<f32, Cpu>,
    run: &SymMcmcRun,
    args: &Args,
    seed: u64,
) -> weightspace::Result<()> {
    let dir: String = args.get("--out", "target/weightspace/symmetry_mcmc".to_string());
    let dir = Path::new(&dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        args.fail(&format!("--out {}: {e}", dir.display()));
    }
    run.posterior_npz(DrawSet::Raw)?.write(dir.join("raw.npz"))?;
    run.posterior_npz(DrawSet::Canonical)?.write(dir.join("canonical.npz"))?;
    run.sample_stats_npz()?.write(dir.join("sample_stats.npz"))?;
    let pred = run.predictive_draws(model, &test.x, seed)?;
    pred.write_npz(dir.join("predictive.npz"))?;
    if run.canonical[0].len() >= 6 {
        let weights = run.weight_summary(DrawSet::Canonical)?;
        let function = pred.summary()?;
        print_table("az.summary of the canonicalised weights", &weights, 12);
        print_table("az.summary of the function values at the test inputs", &function, 12);
        Npz::from_summary(&weights)?.write(dir.join("summary_weights.npz"))?;
        Npz::from_summary(&function)?.write(dir.join("summary_function.npz"))?;
    } else {
        println!("  summary tables need >= 6 draws per chain (use --draws 6)");
    }
    println!("  wrote raw, canonical, sample_stats and predictive .npz files to {}", dir.display());
    Ok(())
}

fn main() {
    #[cfg(feature = "mpi")]
    weightspace::comm::Mpi::run(|comm| job(comm));
    #[cfg(not(feature = "mpi"))]
    if let Err(e) = job(&weightspace::comm::SingleProcess) {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn job(comm: &dyn Communicator) -> weightspace::Result<()> {
    let args = Args::parse(
        "[--quick] [--dataset sinusoidal|regression2d|diabetes] [--arch f1|f2] [--chains 1274] [--warmup 1024] [--draws 1] \
         [--threads 0] [--seed 0] [--no-single] [--sampler chees|nuts] [--per-chain] [--diag] [--out target/weightspace/symmetry_mcmc] \
         [--shards DIR | --merge DIR] [--fail-rank R --fail-how err|panic]",
        &["--no-single", "--per-chain", "--diag"],
        &[
            "--dataset",
            "--arch",
            "--chains",
            "--warmup",
            "--draws",
            "--threads",
            "--seed",
            "--sampler",
            "--out",
            "--fail-rank",
            "--fail-how",
            "--shards",
            "--merge",
        ],
        0,
    );
    let quick = args.quick();
    let dataset: String = args.get("--dataset", "sinusoidal".to_string());
    let arch: String = args.get("--arch", "f1".to_string());
    let chains: usize = args.get("--chains", if quick { 24 } else { 1274 });
    let seed: u64 = args.get("--seed", 0);
    // the paper's sizes, or with --quick fewer rows of the generated data sets (diabetes stays whole)
    let table = match dataset.as_str() {
        "sinusoidal" => weightspace::mcmc::data::sinusoidal(if quick { 40 } else { 150 }, seed),
        "regression2d" => weightspace::mcmc::data::regression2d(if quick { 64 } else { 256 }, seed),
        "diabetes" => diabetes(),
        other => {
            return Err(weightspace::Error::InvalidConfig {
                name: "--dataset",
                value: other.into(),
                reason: "use sinusoidal, regression2d or diabetes",
            })
        }
    };
    // the paper's protocol: standardise every column with whole-dataset statistics, then split
    let (train, test) = table.standardise().0.split(0.8, seed)?;
    let say = comm.is_root();
    if say {
        println!(
        "dataset {dataset} ({} rows × {} features), arch {arch}; protocol: all columns (target included) standardised with whole-dataset statistics, one 80/20 split (seed {seed}), ± = s.e. over {} test points",
        table.len(),
        table.d_in,
        test.len()
    );
    }
    let dev = Cpu::default();
    let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
    let out = match (arch.as_str(), table.d_in) {
        ("f1", 1) => run(comm, &F1In1::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        ("f1", 2) => run(comm, &F1In2::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        ("f1", 10) => run(comm, &F1In10::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        ("f2", 1) => run(comm, &F2In1::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        ("f2", 2) => run(comm, &F2In2::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        ("f2", 10) => run(comm, &F2In10::<f32, Cpu>::new(&dev), &train, &test, &args)?,
        _ => {
            return Err(weightspace::Error::InvalidConfig { name: "--arch", value: arch, reason: "use f1 (1×3 tanh) or f2 (3×16 tanh)" })
        }
    };
    let Some(out) = out else { return Ok(()) }; // ranks other than 0: rank 0 reports
    let fmt = |l: &Option<Lppd>| l.as_ref().map_or("n/a".to_string(), |l| format!("{:.3} ({:.3})", l.mean, l.se));
    println!("mean test LPPD (s.e.)      many-chain          single chain");
    println!("  weightspace              {:<19} {}", format!("{:.3} ({:.3})", out.lppd.mean, out.lppd.se), fmt(&out.single));
    match published(&dataset, &arch) {
        Some(((a, sa), (b, sb))) => println!("  published (Wiese et al.) {:<19} {b:.2} ({sb:.2})", format!("{a:.2} ({sa:.2})")),
        None => println!("  published: none"),
    }
    // the LPPD with all digits: runs on different numbers of ranks compare it exactly
    println!(
        "symmetry_mcmc ranks={} lppd={:?} seconds={:.3} dataset={dataset} arch={arch} chains={chains} se={:.4} lppd_single={} \
         compute_seconds={:.3} allreduce_seconds={:.3} modes={}",
        out.ranks,
        out.lppd.mean,
        out.seconds,
        out.lppd.se,
        out.single.as_ref().map_or("none".to_string(), |l| format!("{:.4}", l.mean)),
        out.seconds - out.communication_seconds,
        out.communication_seconds,
        out.modes
    );
    Ok(())
}
