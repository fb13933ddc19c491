"""Writes the peers' sinusoidal split (benches/peers/*_chains.py, *_nuts.py: numpy seed 0, 150 points, 80/20,
standardised with the training statistics) as CSV rows `x,y`, for `cargo run --release --example mcmc_bench --
--train train.csv --test test.csv`, so that weightspace and the peers sample the same data.

Usage (needs numpy, e.g. the venv of benches/peers/README.md):
    .peers/bin/python examples/data/dump_peer_sinusoidal.py OUT_DIR
"""
import sys
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "."
rng = np.random.default_rng(0)
x = rng.uniform(0, 8, (150, 1)); y = np.sin(x[:, 0]) + 0.3 * rng.standard_normal(150)
idx = rng.permutation(150); tr, te = idx[:120], idx[120:]
mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
np.savetxt(f"{out}/train.csv", np.c_[(x[tr, 0] - mx[0]) / sx[0], (y[tr] - my) / sy], delimiter=",")
np.savetxt(f"{out}/test.csv", np.c_[(x[te, 0] - mx[0]) / sx[0], (y[te] - my) / sy], delimiter=",")
