//! Smoke runs of every example at `--quick` size: each must exit with status 0, print its
//! machine-readable `key=value` summary line with finite numbers, and write the files it writes.
//!
//! `cargo test` builds the examples (into `target/<profile>/examples/`) before it runs the
//! integration tests, so `cargo test --workspace --release` runs these against fresh binaries. A
//! narrower `cargo test --release --test examples` does not build them: run
//! `cargo build --release --examples` first (a missing or stale binary fails with that advice).
//!
//! Each example runs in its own scratch directory under `CARGO_TARGET_TMPDIR`, so the files it
//! writes to `target/weightspace/` (relative to its working directory) land there and do not
//! overwrite the figures of a full run in the workspace's `target/weightspace/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The example binary `name`, next to this test binary: tests live in `target/<profile>/deps/`,
/// examples in `target/<profile>/examples/`.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary in target/<profile>/deps");
    let path = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let build = "build the examples first: `cargo build --release --examples` (plain `cargo test --release` builds them too)";
    let built = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => panic!("example binary {} is missing; {build}", path.display()),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for source in
        [root.join("examples").join(format!("{name}.rs")), root.join("examples/common/mod.rs"), root.join("examples/common/sawtooth.rs")]
    {
        let changed = std::fs::metadata(&source).and_then(|m| m.modified()).expect("example source");
        assert!(changed <= built, "example binary {} is older than {}; {build}", path.display(), source.display());
    }
    path
}

/// A fresh, empty working directory for one run.
fn scratch(run: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples").join(run);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clearing the scratch directory");
    }
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// Runs example `name` with `--quick` and `extra` arguments in `dir`; asserts exit status 0 and
/// returns its stdout.
fn run_in(dir: &Path, name: &str, extra: &[&str]) -> String {
    let bin = binary(name);
    let command = [name, "--quick"].iter().chain(extra).copied().collect::<Vec<_>>().join(" ");
    let start = Instant::now();
    let out = Command::new(&bin)
        .arg("--quick")
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // visible with `--nocapture`
    eprintln!("example `{command}`: {:.2} s", start.elapsed().as_secs_f64());
    assert!(out.status.success(), "`{command}` failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    stdout
}

/// Runs example `name` with `--quick` in a fresh scratch directory; returns its stdout and the
/// directory.
fn run(name: &str) -> (String, PathBuf) {
    let dir = scratch(name);
    (run_in(&dir, name, &[]), dir)
}

/// The `key=value` pairs of the last stdout line that starts with `prefix`.
fn summary<'a>(stdout: &'a str, prefix: &str) -> HashMap<&'a str, &'a str> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with `{prefix}` in the output:\n{stdout}"));
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

/// Asserts that `keys` are present and finite numbers; returns their values in order.
fn finite(fields: &HashMap<&str, &str>, keys: &[&str]) -> Vec<f64> {
    keys.iter()
        .map(|k| {
            let v = fields.get(k).unwrap_or_else(|| panic!("`{k}=` missing from {fields:?}"));
            let x: f64 = v.parse().unwrap_or_else(|_| panic!("`{k}={v}` is not a number"));
            assert!(x.is_finite(), "`{k}={v}` is not finite");
            x
        })
        .collect()
}

/// Asserts that the run in `dir` wrote the non-empty files `paths` (relative to `dir`).
fn wrote(dir: &Path, paths: &[&str]) {
    for p in paths {
        let len = std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{p} was not written (looked in {})", dir.display());
    }
}

#[test]
fn bali_uci() {
    // the default dataset is wine
    let (out, dir) = run("bali_uci");
    let s = summary(&out, "bali_uci dataset=wine ");
    let regression_keys = ["rmse", "rmse_se", "ll", "ll_se", "mfvi_rmse", "mfvi_ll", "lin_rmse", "lin_ll", "blr_rmse", "blr_ll", "epochs"];
    finite(&s, &regression_keys);
    assert!(out.contains("the noise scale against the residuals"), "{out}");
    for name in ["boston", "diabetes"] {
        let out = run_in(&dir, "bali_uci", &["--dataset", name]);
        let s = summary(&out, &format!("bali_uci dataset={name} "));
        finite(&s, &regression_keys);
        if name == "boston" {
            assert!(out.contains("row 505 LSTAT corrected from 7.8 to 7.88"), "{out}");
        }
    }
    for name in ["iris", "breast-cancer", "digits"] {
        let out = run_in(&dir, "bali_uci", &["--dataset", name]);
        let s = summary(&out, &format!("bali_uci dataset={name} "));
        let v = finite(&s, &["acc", "nll", "ece", "mfvi_acc", "mfvi_nll", "mfvi_ece", "sampled_acc", "sampled_nll", "sampled_ece"]);
        assert!(v.iter().all(|x| *x >= 0.0) && v[0] <= 1.0 && v[3] <= 1.0 && v[6] <= 1.0, "{s:?}");
        // BALI's damping and mean-field VI's learning rate chosen on the training rows (2 folds under --quick)
        assert_eq!(finite(&s, &["cv_folds"]), [2.0], "{s:?}");
        assert!(out.contains("chosen by cross-validation, splits per value: BALI damping {1: "), "{out}");
        if name == "iris" {
            // the exact Gauss–Newton Laplace reference, on by default on iris
            let v = finite(&s, &["laplace_acc", "laplace_nll", "laplace_ece", "laplace_eb_nll", "laplace_tau_min", "laplace_tau_max"]);
            assert!((0.0..=1.0).contains(&v[0]) && v[1] > 0.0 && (0.01..=100.0).contains(&v[4]) && v[4] <= v[5], "{s:?}");
        }
    }
    // the NUTS reference (on by default for the full iris run, off under --quick)
    let out = run_in(&dir, "bali_uci", &["--dataset", "iris", "--nuts", "2"]);
    let s = summary(&out, "bali_uci dataset=iris ");
    let v = finite(&s, &["nuts_acc", "nuts_nll", "nuts_ece"]);
    assert!((0.0..=1.0).contains(&v[0]) && v[1] >= 0.0, "{s:?}");
    let out = run_in(&dir, "bali_uci", &["--dataset", "digits-ood"]);
    let s = summary(&out, "bali_uci dataset=digits-ood ");
    let v = finite(&s, &["auroc_bali", "auroc_mfvi", "auroc_det", "auroc_bali_mi", "auroc_mfvi_mi", "auroc_sampled", "auroc_sampled_mi"]);
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{s:?}");
    // an unknown dataset is a usage error
    let bad = Command::new(binary("bali_uci")).args(["--dataset", "mnist"]).output().expect("starting bali_uci");
    assert_eq!(bad.status.code(), Some(2));
    // one fold cannot cross-validate
    let bad = Command::new(binary("bali_uci")).args(["--dataset", "iris", "--cv", "1"]).output().expect("starting bali_uci");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn bnnp_bench() {
    let (out, _) = run("bnnp_bench");
    let s = summary(&out, "bnnp_bench ");
    let v = finite(&s, &["seconds_per_step", "gflop_per_step", "lowrank_gflop_per_step", "gflops", "bound_fraction"]);
    assert!(v.iter().all(|&x| x > 0.0), "{s:?}");
    // the low-rank form does less arithmetic than the dense update's model counts
    assert!(v[2] < v[1], "{s:?}");
}

#[test]
fn classification() {
    let (out, dir) = run("classification");
    let s = summary(&out, "classification ");
    let v = finite(&s, &["accuracy", "nll", "ece"]);
    assert!((0.0..=1.0).contains(&v[0]), "accuracy {}", v[0]);
    wrote(&dir, &["target/weightspace/classification.png"]);
}

#[test]
fn elbo_bench() {
    let (out, _) = run("elbo_bench");
    let s = summary(&out, "elbo_bench ");
    assert!(finite(&s, &["us_per_step"])[0] > 0.0, "{s:?}");
}

#[test]
fn elbo_tightness() {
    let (out, _) = run("elbo_tightness");
    let s = summary(&out, "elbo_tightness ");
    finite(&s, &["log_z", "bnnp_elbo", "mfvi_elbo"]);
}

#[test]
fn inference_test_demo() {
    let (out, dir) = run("inference_test_demo");
    for sampler in ["exact", "overconfident"] {
        let s = summary(&out, &format!("sbc sampler={sampler} "));
        let p = finite(&s, &["p_value"])[0];
        assert!((0.0..=1.0).contains(&p), "{sampler}: p_value {p}");
    }
    wrote(&dir, &["target/inference_test_demo/sbc_ranks_exact.png", "target/inference_test_demo/sbc_ranks_overconfident.png"]);
}

#[test]
fn mcmc_bench() {
    let (out, _) = run("mcmc_bench");
    assert!(out.contains("data: generated"), "{out}");
    let s = summary(&out, "mcmc_bench ");
    finite(&s, &["seconds", "total_seconds", "lppd", "se"]);
}

/// The `--train/--test` CSV path, with two tiny files.
#[test]
fn mcmc_bench_csv() {
    let dir = scratch("mcmc_bench_csv");
    let rows =
        |n: usize, off: f64| (0..n).map(|i| format!("{:.3},{:.3}\n", i as f64 * 0.1 - off, (i as f64 * 0.1).sin())).collect::<String>();
    std::fs::write(dir.join("train.csv"), rows(24, 1.0)).expect("writing train.csv");
    std::fs::write(dir.join("test.csv"), rows(8, 0.5)).expect("writing test.csv");
    let out = run_in(&dir, "mcmc_bench", &["--train", "train.csv", "--test", "test.csv"]);
    assert!(out.contains("data: peer split (csv), 24 train / 8 test points"), "{out}");
    finite(&summary(&out, "mcmc_bench "), &["lppd", "se"]);
}

#[test]
fn meta_custom() {
    let (out, dir) = run("meta_custom");
    let s = summary(&out, "meta_custom ");
    assert_eq!(s.get("objective_restored_equal"), Some(&"true"), "the checkpoint did not round-trip: {s:?}");
    wrote(&dir, &["target/weightspace/meta_custom.safetensors"]);
}

#[test]
fn meta_sawtooth() {
    let (out, dir) = run("meta_sawtooth");
    finite(&summary(&out, "meta_training ranks=1 "), &["steps", "seconds", "compute_seconds", "allreduce_seconds"]);
    let s = summary(&out, "meta_sawtooth ");
    for nc in [1, 2, 4, 8] {
        let v = finite(&s, &[&format!("nc{nc}_bnnp"), &format!("nc{nc}_mfvi"), &format!("nc{nc}_mfvi_learned"), &format!("nc{nc}_oracle")]);
        // nothing beats the Bayes-optimal predictor by more than the Monte-Carlo noise of 3 tasks
        assert!(v[3] > v[0] - 0.5, "nc{nc}: oracle {} below BNNP {}", v[3], v[0]);
    }
    assert!(out.contains("no shift (the paper's)"), "{out}");
    let pngs =
        ["prior_initial", "prior_learned", "posterior_bnnp", "posterior_mfvi"].map(|p| format!("target/weightspace/meta_sawtooth_{p}.png"));
    wrote(&dir, &pngs.each_ref().map(String::as_str));
}

/// `--paper` in two segments: the second resumes from the first's checkpoint and extends the
/// learning curve.
#[test]
fn meta_sawtooth_paper_resumes() {
    let dir = scratch("meta_sawtooth_paper");
    let first = run_in(&dir, "meta_sawtooth", &["--paper", "--steps", "2"]);
    assert_eq!(summary(&first, "meta_sawtooth_paper ").get("step"), Some(&"2"), "{first}");
    let second = run_in(&dir, "meta_sawtooth", &["--paper"]);
    assert!(second.contains("resumed from target/weightspace/meta_sawtooth_paper.safetensors at step 2"), "{second}");
    let s = summary(&second, "meta_sawtooth_paper ");
    assert_eq!(s.get("step"), Some(&"4"), "{second}");
    finite(&s, &["nc4_bnnp", "nc4_oracle", "nc8_bnnp", "nc8_oracle", "noise"]);
    let curve = std::fs::read_to_string(dir.join("target/weightspace/meta_sawtooth_paper_curve.csv")).expect("the curve");
    assert_eq!(curve.lines().count(), 3, "a header and one row per segment: {curve}");
    wrote(&dir, &["target/weightspace/meta_sawtooth_paper_curve.png", "target/weightspace/meta_sawtooth_paper_prior_learned.png"]);
}

#[test]
fn prior_transfer() {
    let (out, _) = run("prior_transfer");
    assert!(out.contains("meta-learned guide: trained here, 60 steps"), "{out}");
    let s = summary(&out, "prior_transfer ");
    let v = finite(&s, &["nc2_nuts_standard", "nc2_nuts_learned", "nc2_bnnp", "nc2_mfvi_learned", "nc2_oracle", "noise"]);
    // nothing beats the Bayes-optimal predictor by more than the Monte-Carlo noise of 2 tasks
    for (i, m) in v[..4].iter().enumerate() {
        assert!(v[4] > m - 0.5, "method {i}: {m} above the oracle {}", v[4]);
    }
}

/// Settings that make no sense are usage errors (exit status 2, with the usage line), not a silent
/// default or a failure deep inside.
#[test]
fn bad_settings_are_usage_errors() {
    for (name, args, says) in [
        ("prior_transfer", &["--tasks", "1"][..], "at least 2 tasks"),
        ("meta_sawtooth", &["--paper", "--minutes", "-1"][..], "expected a finite number >= 0"),
        ("meta_sawtooth", &["--paper", "--shift"][..], "--paper runs the paper's family"),
        ("regression", &["--quick", "--batch", "0"][..], "--batch must be between"),
        ("regression", &["--quick", "--points", "1"][..], "--points must be at least 2"),
    ] {
        let out = Command::new(binary(name)).args(args).output().expect("starting the example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {}\n{stderr}", out.status);
        assert!(stderr.contains(says) && stderr.contains("usage:"), "{name} {args:?}: {stderr}");
    }
}

/// Without `--csv`: the synthetic file it writes first.
#[test]
fn own_data() {
    let (out, dir) = run("own_data");
    let s = summary(&out, "own_data csv=target/weightspace/own_data_synthetic.csv target=y rows=120 features=3 splits=2 ");
    let v = finite(&s, &["rmse", "rmse_se", "ll", "ll_se"]);
    assert!(v[0] > 0.0, "{s:?}");
    wrote(&dir, &["target/weightspace/own_data_synthetic.csv", "target/weightspace/own_data_predictive.npz"]);
}

/// A user's file: a header, a target chosen by name, features chosen by name, `;` as delimiter.
#[test]
fn own_data_csv() {
    let dir = scratch("own_data_csv");
    let mut text = String::from("id;size;rooms;price\n");
    for i in 0..60 {
        let (size, rooms) = (40.0 + (i * 7 % 60) as f64, (i % 4 + 1) as f64);
        text.push_str(&format!("{i};{size};{rooms};{:.1}\n", 1000.0 + 30.0 * size + 50.0 * rooms + (i % 5) as f64 * 20.0));
    }
    std::fs::write(dir.join("houses.csv"), text).expect("writing houses.csv");
    let args = ["--csv", "houses.csv", "--target", "price", "--features", "size,rooms", "--delimiter", ";"];
    let out = run_in(&dir, "own_data", &args);
    let s = summary(&out, "own_data csv=houses.csv target=price rows=60 features=2 splits=2 ");
    finite(&s, &["rmse", "rmse_se", "ll", "ll_se"]);
}

/// A malformed file: exit status 1 and a message naming the file, row and column; no panic.
#[test]
fn own_data_bad_csv() {
    let dir = scratch("own_data_bad_csv");
    std::fs::write(dir.join("bad.csv"), "a,b,y\n1,2,3\n4,,6\n").expect("writing bad.csv");
    let out = Command::new(binary("own_data")).args(["--quick", "--csv", "bad.csv"]).current_dir(&dir).output().expect("starting own_data");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("own_data: bad.csv:3: row 1, column `b` (index 1): the cell is empty"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn regression() {
    let (out, dir) = run("regression");
    let s = summary(&out, "regression ranks=1 ");
    finite(&s, &["rmse", "lpd", "gap_sd", "data_sd", "elbo", "fit_seconds", "allreduce_seconds"]);
    wrote(&dir, &["target/weightspace/regression.png"]);
}

#[test]
fn symmetrised_vi() {
    let (out, _) = run("symmetrised_vi");
    for width in [4, 16, 64] {
        let s = summary(&out, &format!("symmetrised_vi width={width} "));
        finite(&s, &["elbo_plain", "elbo_sym", "lppd_plain", "lppd_sym"]);
    }
}

/// `--shards` then `--merge`: the shards of a run, merged by a second process, give the LPPD of
/// the gathered run to the last digit; settings that differ from the shards' are refused.
#[test]
fn symmetry_mcmc_shards_then_merge() {
    let dir = scratch("symmetry_mcmc_shards");
    let plain = run_in(&dir, "symmetry_mcmc", &["--no-single", "--out", "plain"]);
    let written = run_in(&dir, "symmetry_mcmc", &["--no-single", "--shards", "shards"]);
    let w = summary(&written, "symmetry_mcmc_shards ranks=1 ");
    assert_eq!((w["dir"], w["chains"]), ("shards", "24"));
    assert!(dir.join("shards/sym_mcmc.rank-00000-of-00001.safetensors").is_file());
    let merged = run_in(&dir, "symmetry_mcmc", &["--no-single", "--merge", "shards", "--out", "merged"]);
    let (a, b) = (summary(&plain, "symmetry_mcmc ranks="), summary(&merged, "symmetry_mcmc ranks="));
    assert_eq!(a["lppd"], b["lppd"], "merged shards vs the gathered run");
    assert_eq!(a["modes"], b["modes"], "merged shards vs the gathered run");
    let other = Command::new(binary("symmetry_mcmc"))
        .args(["--quick", "--no-single", "--seed", "1", "--merge", "shards"])
        .current_dir(&dir)
        .output()
        .expect("starting symmetry_mcmc");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("seed = 1 (the shards': 0)"), "{stderr}");
}

#[test]
fn symmetry_mcmc() {
    let (out, dir) = run("symmetry_mcmc");
    let s = summary(&out, "symmetry_mcmc ranks=1 ");
    assert_eq!((s["dataset"], s["arch"]), ("sinusoidal", "f1"));
    let v = finite(&s, &["lppd", "se", "lppd_single", "seconds", "compute_seconds", "allreduce_seconds", "modes"]);
    // 24 chains × 8 draws: between 1 and the spectral rule's 10 modes
    assert!((1.0..=10.0).contains(&v[6]), "{s:?}");
    assert_eq!(summary(&run_in(&dir, "symmetry_mcmc", &["--no-single"]), "symmetry_mcmc ranks=1 ")["lppd_single"], "none");
    // the az.summary tables are printed, and every .npz file is written
    assert!(out.contains("az.summary of the canonicalised weights"), "{out}");
    assert!(out.contains("hdi_3%  hdi_97%  mcse_mean  mcse_sd  ess_bulk  ess_tail  r_hat"), "{out}");
    assert!(out.contains("f[7, 0]"), "the function table has a row per test input: {out}");
    for file in ["raw", "canonical", "sample_stats", "predictive", "summary_weights", "summary_function"] {
        let path = dir.join("target/weightspace/symmetry_mcmc").join(format!("{file}.npz"));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} was not written", path.display());
    }
}

#[test]
fn chain_budget() {
    for dataset in ["regression2d", "sinusoidal"] {
        let dir = scratch(&format!("chain_budget_{dataset}"));
        let out = run_in(&dir, "chain_budget", &["--dataset", dataset]);
        let s = summary(&out, "chain_budget ");
        assert_eq!((s["dataset"], s["chains"], s["seeds"]), (dataset, "16", "2"));
        finite(
            &s,
            &[
                "lppd_many",
                "lppd_handful",
                "lppd_one",
                "modes_many",
                "modes_one",
                "diff_many_one",
                "diff_se",
                "lppd_many_sd",
                "lppd_one_sd",
                "kl_many",
                "kl_handful",
                "kl_one",
                "kl_diff_one_many",
                "kl_diff_se",
                "kl_reference_halves",
            ],
        );
        assert!(out.contains("KL(predictive of all 16 chains"), "{out}");
        assert!(out.contains("reference: 64 chains × 120 warm-up × 16 draws"), "{out}");
        assert!(["kl_many", "kl_one"].iter().all(|k| s[k].parse::<f64>().unwrap() >= 0.0), "{out}");
    }
}

/// Every example in `examples/` has a test above, and a flag it does not know is an error.
#[test]
fn all_examples_covered_and_unknown_flags_rejected() {
    let tested = [
        "bali_uci",
        "bnnp_bench",
        "chain_budget",
        "classification",
        "elbo_bench",
        "elbo_tightness",
        "inference_test_demo",
        "mcmc_bench",
        "meta_custom",
        "meta_sawtooth",
        "own_data",
        "prior_transfer",
        "regression",
        "symmetrised_vi",
        "symmetry_mcmc",
    ];
    let mut found: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    found.sort();
    assert_eq!(found, tested, "examples/ and the list of smoke-tested examples differ: add a test for the new example");
    for name in tested {
        let out = Command::new(binary(name)).arg("--no-such-flag").output().expect("starting the example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} --no-such-flag: {}\n{stderr}", out.status);
        assert!(stderr.contains("unknown argument `--no-such-flag`") && stderr.contains("usage:"), "{name}: {stderr}");
    }
}
