"""Checks weightspace's `.npz` output with NumPy and ArviZ.

Loads the files the `symmetry_mcmc` example writes, builds an ArviZ InferenceData from them with
`az.from_dict`, checks the ArviZ dimension order (`chain`, `draw`, then the quantity's own
dimensions), and compares `az.summary` with the summary tables weightspace computed
(`summary_weights.npz`, `summary_function.npz`), column by column. Exits with status 1 if any
column differs by more than 1e-6 (absolute) or a file has the wrong shape.

Set-up and run (from the repository root):

    python3 -m venv /tmp/azenv && /tmp/azenv/bin/pip install -r scripts/requirements.txt
    cargo run --release --example symmetry_mcmc -- --quick      # or any run with --draws >= 6
    /tmp/azenv/bin/python scripts/check_arviz.py target/weightspace/symmetry_mcmc
"""

import sys
from pathlib import Path

import arviz as az
import numpy as np

COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
TOLERANCE = 1e-6


def load(path):
    return dict(np.load(path))


def compare(label, ours, theirs):
    """Largest absolute difference per column; NaN and inf must match exactly."""
    failures = []
    print(f"{label}: {len(theirs)} rows")
    if list(ours) != COLUMNS:
        failures.append(f"{label}: columns {list(ours)} are not {COLUMNS}")
        return failures
    for col in COLUMNS:
        a, b = np.asarray(ours[col], dtype=float), theirs[col].to_numpy(dtype=float)
        if a.shape != b.shape:
            failures.append(f"{label} {col}: {a.shape} rows vs ArviZ {b.shape}")
            continue
        finite = np.isfinite(b)
        if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(a[np.isinf(b)], b[np.isinf(b)]):
            failures.append(f"{label} {col}: NaN/inf entries differ")
        diff = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
        print(f"  {col:>9}: max |weightspace - az.summary| = {diff:.3e}")
        if diff > TOLERANCE:
            failures.append(f"{label} {col}: differs by {diff:.3e}")
    return failures


def main(directory):
    d = Path(directory)
    print(f"arviz {az.__version__}, numpy {np.__version__}")
    # the README's three lines: one group per file
    idata = az.from_dict(
        posterior=load(d / "canonical.npz"),
        posterior_predictive=load(d / "predictive.npz"),
        sample_stats=load(d / "sample_stats.npz"),
    )
    raw = az.from_dict(posterior=load(d / "raw.npz"))
    failures = []

    post = idata.posterior
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    if post["w"].dims != ("chain", "draw", "w_dim_0"):
        failures.append(f"posterior w dims {post['w'].dims}")
    if raw.posterior["w"].shape != post["w"].shape:
        failures.append("raw and canonical draws differ in shape")
    f = idata.posterior_predictive["f"]
    if f.dims[:2] != ("chain", "draw") or f.shape[:2] != (chains, draws) or f.ndim != 4:
        failures.append(f"posterior_predictive f has dims {f.dims} and shape {f.shape}")
    for name, var in idata.sample_stats.data_vars.items():
        if var.shape != (chains, draws):
            failures.append(f"sample_stats {name} has shape {var.shape}")
    print(f"posterior: {chains} chains x {draws} draws; w {post['w'].shape}; predictive f {f.shape}")

    weight_vars = [v for v in ("w", "log_sigma") if v in post]
    theirs_w = az.summary(idata, var_names=weight_vars, round_to="none")
    failures += compare("canonicalised weights", load(d / "summary_weights.npz"), theirs_w)
    theirs_f = az.summary(idata, group="posterior_predictive", var_names=["f"], round_to="none")
    failures += compare("function values at the test inputs", load(d / "summary_function.npz"), theirs_f)

    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"OK: every az.summary column agrees to {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR  (the --out directory of the symmetry_mcmc example)")
    sys.exit(main(sys.argv[1]))
