//! Speed of one BNNP meta-training step in the paper's 1-D setting: a batch of 5 tasks of 70
//! points (30 % context), a [64, 64] ReLU BNN with [64, 64] inference networks, S = 32 weight
//! samples, the PP-AVI objective, one Adam update.
//!
//! Prints seconds per step, the step's floating-point work and the achieved GFLOP/s against this
//! machine's f32 FLOP bound, and how long the paper's 50k-step schedule would take. The work is
//! counted two ways (see [`task_flops`] and [`lowrank_task_flops`]): by the fixed work model of the
//! dense conjugate update (18.8 GFLOP per step; the `gflops` and `bound_fraction` figures use it,
//! so that they compare across versions), and by the arithmetic the low-rank form that now runs
//! for the hidden and output layers actually performs (`lowrank_gflop_per_step`, smaller).
//!
//! The bound is cores × clock × f32 FLOP per cycle: 64 with AVX-512 on Intel (two 16-lane FMA
//! units), 32 with AVX2 and FMA or with AMD's AVX-512 (two 8-lane FMA units), from
//! `/proc/cpuinfo`; `--peak-gflops` sets it instead.
//!
//! ```text
//! cargo run --release --example bnnp_bench
//! cargo run --release --example bnnp_bench -- --steps 3 --threads 1 --peak-gflops 147
//! cargo run --release --example bnnp_bench -- --quick   # smoke run: 1 step, 2 tasks × 20 points, S = 4
//! ```

mod common;

use rand::SeedableRng;
use weightspace::bnnp::*;
use weightspace::prelude::*;

use common::sawtooth::PaperNet;

/// Floating-point operations of one task's pass (forward and backward), counted from the algorithm
/// as implemented: the BNN over all points and samples, the inference networks, the host conjugate
/// update (design products, Cholesky, triangular inverse, `C = L⁻ᵀL⁻¹`, KL gradient by the
/// low-rank route), the prior's natural parameters, and the tape surrogates. A backward pass counts
/// as twice its forward.
fn task_flops(widths: &[usize], s: usize, nc: usize, nt: usize) -> f64 {
    let (s, nc, nt) = (s as f64, nc as f64, nt as f64);
    let n = nc + nt;
    let mut total = 0.0;
    let layers = widths.len() - 1;
    let inf_hidden = [64.0, 64.0];
    for l in 0..layers {
        let (di, dout) = (widths[l] as f64, widths[l + 1] as f64);
        let k = di + 1.0;
        // BNN layer, all points, all samples: forward + backward
        total += 3.0 * 2.0 * s * n * k * dout;
        // inference network on the context: [x, y] -> 64 -> 64 -> out
        let out = if l + 1 == layers { dout } else { 2.0 * dout };
        total += 3.0 * 2.0 * nc * (2.0 * inf_hidden[0] + inf_hidden[0] * inf_hidden[1] + inf_hidden[1] * out);
        // distinct posteriors: the first layer's does not depend on the samples
        let sp = if l == 0 { 1.0 } else { s };
        let per_post = 2.0 * nc * k * k // A = Φᵀ Λ Φ
            + k * k * k / 3.0 // Cholesky
            + k * k * k / 3.0 // L⁻¹
            + 2.0 * k * k * k // C = L⁻ᵀ L⁻¹
            + 10.0 * k * k // m, Πe, Cg, Πu, and the KL value
            + if nc < k { 4.0 * k * k * nc } else { 4.0 * k * k * k } // C Π C (low-rank or dense)
            + 2.0 * k * k * nc + 8.0 * k * nc; // P̄ Φᵀ and the per-point gradients
        total += sp * dout * per_post;
        total += s * dout * (2.0 * k * k + 4.0 * nc * k); // samples: P⁻¹ b and the perturbation
                                                          // prior: Σ = F Fᵀ, Σ⁻¹ (host and tape surrogate), ζ noise, Π(μ − w₀) and C₀ r on the tape
        total += dout * (2.0 * k * k * k * 3.0 + (k * k * k / 3.0) * 2.0 + 2.0 * k * k * k + 4.0 * k * k * k * 3.0);
        total += 3.0 * (2.0 * dout * k * k * s * 3.0 + 4.0 * s * nc * k * dout);
    }
    total
}

/// Floating-point operations of one task's conjugate updates in the low-rank form that runs when
/// a unit sees fewer context points than it has weights (`n < k`, every layer after the first
/// here), per posterior and unit, forward and backward, with a full prior precision: `Φ Π⁻¹` and
/// the samples' `Π⁻¹ζ` (one product per unit), `S₀ = Φ Π⁻¹ Φᵀ`, the `n × n` factorisation of
/// `M`, the KL's `M⁻²`, `N₁G` and `S₀Λ½M⁻¹`, the prior's gradient `Lᵀ R` (`n + 3` rows), the
/// `O(nk)` vector work, and the backward pass (`Π⁻¹ḡ`, `a(μ − w)ᵀ` and the `O(nk)` terms). The
/// first layer (`n ≥ k`) keeps the dense count of [`task_flops`].
fn lowrank_task_flops(widths: &[usize], s: usize, nc: usize, nt: usize) -> f64 {
    let (sf, n) = (s as f64, nc as f64);
    let mut total = task_flops(&widths[..2], s, nc, nt);
    for l in 1..widths.len() - 1 {
        let (di, dout) = (widths[l] as f64, widths[l + 1] as f64);
        let k = di + 1.0;
        let per_post = 2.0 * (n + 1.0) * k * k // Φ Π⁻¹ and Π⁻¹ζ
            + n * (n + 1.0) * k // S₀ (symmetric)
            + n * n * n // M⁻¹ and ln det M
            + 2.0 * n * n * n * 2.0 + 2.0 * n * n * k // M⁻², S₀Λ½M⁻¹, N₁G
            + 2.0 * (n + 3.0) * k * k // Π̄ = Lᵀ R
            + 30.0 * n * k + 20.0 * n * n // vectors: m, w, Πe, u, μ̄, Φ̄, λ̄, v̄
            + 2.0 * k * k + 2.0 * k * k + 12.0 * n * k; // backward: Π⁻¹ḡ, a(μ − w)ᵀ, the rest
        total += sf * dout * per_post;
        // the BNN layer, the inference network, the prior and the tape, as in the dense model
        total += 3.0 * 2.0 * sf * (n + nt as f64) * k * dout;
        let out = if l + 2 == widths.len() { dout } else { 2.0 * dout };
        total += 3.0 * 2.0 * n * (2.0 * 64.0 + 64.0 * 64.0 + 64.0 * out);
        total += dout * (2.0 * k * k * k * 3.0 + (k * k * k / 3.0) * 3.0 + 2.0 * k * k * k + 4.0 * k * k * k * 3.0);
    }
    total
}

/// This machine's f32 FLOP bound in GFLOP/s, and how it was derived: cores × clock × FLOP per
/// cycle, read from `/proc/cpuinfo` (Linux, x86-64).
fn detected_peak() -> Option<(f64, String)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name: &str| info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).map(str::trim);
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let flags = field("flags")?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let intel = field("vendor_id") == Some("GenuineIntel");
    let (per_cycle, why) = match (has("avx512f"), has("avx2") && has("fma")) {
        (true, _) if intel => (64.0, "2 AVX-512 FMA units × 16 lanes × 2"),
        (true, _) => (32.0, "AVX-512 on 2 × 8-lane FMA units × 2"),
        (false, true) => (32.0, "2 AVX2 FMA units × 8 lanes × 2"),
        _ => (8.0, "SSE, 4 lanes × 2"),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some((cores * mhz / 1000.0 * per_cycle, format!("{cores} cores × {:.2} GHz × {why}", mhz / 1000.0)))
}

/// CPU seconds (user + system) of this process so far, from `/proc/self/stat` (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + s) / 100.0)
}

/// The 1-minute load average (Linux), to judge how much of the machine the run had.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args =
        common::Args::parse("[--quick] [--steps N] [--threads T] [--peak-gflops G]", &[], &["--steps", "--threads", "--peak-gflops"], 0);
    // the paper's setting, or with --quick a smoke run of the same step: steps, tasks, points per task, samples
    let (steps, n_tasks, points, samples) = if args.quick() { (1, 2, 20, 4) } else { (5, 5, 70, 32) };
    let steps: usize = args.get("--steps", steps);
    let (peak, peak_why) = match args.value("--peak-gflops") {
        Some(_) => (args.get("--peak-gflops", 0.0), "--peak-gflops".to_string()),
        None => detected_peak().unwrap_or((2.0 * 2.3 * 2.0 * 16.0 * 2.0, "not detected; the 2-core 2.3 GHz AVX-512 Xeon's".into())),
    };
    let dev = Cpu::default();
    let mut guide = PaperNet::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let tasks = TaskCollection::generate(&Sawtooth { n_range: (points, points + 1), ..Default::default() }, n_tasks, &dev, &mut rng)?;
    let cfg = MetaConfig {
        steps: steps + 1,
        tasks_per_step: n_tasks,
        samples,
        context_fraction: (0.3, 0.3),
        progress: false,
        threads: args.get("--threads", 0),
        ..Default::default()
    };
    let mut meta = MetaLearner::new(cfg)?;
    let mut source = tasks;
    meta.step(&mut guide, &mut source)?; // warm-up (allocations)
    let t = std::time::Instant::now();
    let cpu0 = cpu_seconds();
    for _ in 0..steps {
        meta.step(&mut guide, &mut source)?;
    }
    let per_step = t.elapsed().as_secs_f64() / steps as f64;
    let cpu_per_step = cpu_seconds().zip(cpu0).map(|(b, a)| (b - a) / steps as f64);
    // 30 % context: 21 of 70 points
    let nc = (0.3 * points as f64).round() as usize;
    let nt = points - nc;
    let flops = n_tasks as f64 * task_flops(&[1, 64, 64, 1], samples, nc, nt);
    let lowrank = n_tasks as f64 * lowrank_task_flops(&[1, 64, 64, 1], samples, nc, nt);
    let gflops = flops / per_step / 1e9;
    println!("one meta-training step: {n_tasks} tasks × {points} points ({nc} context), [64, 64] ReLU BNN, S = {samples}");
    println!(
        "  {:.3} s per step = {:.2} steps/s (wall clock; 1-minute load average {:.1} on {} cores)",
        per_step,
        1.0 / per_step,
        load_average().unwrap_or(f64::NAN),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(c) = cpu_per_step {
        println!("  {c:.3} CPU-seconds per step (all threads)");
    }
    println!("  f32 FLOP bound: {peak:.0} GFLOP/s ({peak_why})");
    println!(
        "  work per step, dense-update model: {:.2} GFLOP -> {:.1} GFLOP/s, {:.1} % of the bound",
        flops / 1e9,
        gflops,
        100.0 * gflops / peak
    );
    println!(
        "  work per step, low-rank form as run: {:.2} GFLOP -> {:.1} GFLOP/s, {:.1} % of the bound",
        lowrank / 1e9,
        lowrank / per_step / 1e9,
        100.0 * lowrank / per_step / 1e9 / peak
    );
    println!("  the paper's 50k-step schedule: {:.1} h", 50_000.0 * per_step / 3600.0);
    println!(
        "bnnp_bench seconds_per_step={:.4} cpu_s_per_step={:.3} gflop_per_step={:.3} lowrank_gflop_per_step={:.3} peak_gflops={:.0} gflops={:.2} bound_fraction={:.4}",
        per_step,
        cpu_per_step.unwrap_or(f64::NAN),
        flops / 1e9,
        lowrank / 1e9,
        peak,
        gflops,
        gflops / peak
    );
    Ok(())
}
