"""Peer baseline for the many-chain MCMC benchmark in README.md ("MCMC over the weights"): NumPyro NUTS.

What it measures: the wall time per chain of CHAINS independent NUTS chains (NumPyro's defaults:
step-size and diagonal mass-matrix adaptation, target acceptance 0.8, maximum tree depth 10), each
with WARMUP warm-up steps and one kept draw, run CHAINS_AT_ONCE at a time with
chain_method="vectorized"; and the mean test LPPD of the draws (logsumexp over draws, each with its
own sigma, no test point dropped). The README extrapolates the time per chain to 1274 chains.
Workload (the same as blackjax_chees_chains.py and examples/mcmc_bench.rs): sinusoidal data (numpy
seed 0; x ~ U(0, 8), y = sin x + N(0, 0.3^2), 150 points, 80/20 split, standardised with the training
statistics), a tanh MLP with hidden widths HIDDEN, N(0, 1) priors on all weights, sigma ~ HalfNormal(1).

Knobs (environment): HIDDEN (default "3"; "16,16,16" for the deeper net), CHAINS (64), WARMUP (1024),
CHAINS_AT_ONCE (16).
Output: one line, 'numpyro_multichain_nuts hidden=[..] chains=.. warmup=..: <s> s/chain, <s> s total, test LPPD <f>'.

Run (from the repository root, with the venv of benches/peers/README.md; the README's figure uses 32 chains):
    CHAINS=32 .peers/bin/python benches/peers/numpyro_multichain_nuts.py
"""
import os, time
import numpy as np, jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from jax.scipy.special import logsumexp

HIDDEN = [int(h) for h in os.environ.get("HIDDEN", "3").split(",")]
CHAINS = int(os.environ.get("CHAINS", 64)); WARMUP = int(os.environ.get("WARMUP", 1024))
AT_ONCE = int(os.environ.get("CHAINS_AT_ONCE", 16))

def model(x, y=None):
    h = x
    sizes = [x.shape[1]] + HIDDEN + [1]
    for l in range(len(sizes) - 1):
        w = numpyro.sample(f"w{l}", dist.Normal(0, 1).expand([sizes[l], sizes[l + 1]]).to_event(2))
        b = numpyro.sample(f"b{l}", dist.Normal(0, 1).expand([sizes[l + 1]]).to_event(1))
        h = h @ w + b
        if l < len(sizes) - 2:
            h = jnp.tanh(h)
    numpyro.deterministic("f", h[:, 0])
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(h[:, 0], sigma), obs=y)

rng = np.random.default_rng(0)
x = rng.uniform(0, 8, (150, 1)); y = np.sin(x[:, 0]) + 0.3 * rng.standard_normal(150)
idx = rng.permutation(150); tr, te = idx[:120], idx[120:]
mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
xtr, xte = (x[tr] - mx) / sx, (x[te] - mx) / sx; ytr, yte = (y[tr] - my) / sy, (y[te] - my) / sy

draws = []
t = time.perf_counter()
for start in range(0, CHAINS, AT_ONCE):
    n = min(AT_ONCE, CHAINS - start)
    mcmc = MCMC(NUTS(model), num_warmup=WARMUP, num_samples=1, num_chains=n, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(start), xtr, ytr)
    draws.append(mcmc.get_samples())
dt = time.perf_counter() - t
samples = {k: jnp.concatenate([d[k] for d in draws]) for k in draws[0]}
from numpyro.infer import Predictive
f = Predictive(model, samples, return_sites=["f"])(jax.random.PRNGKey(1), xte)["f"]
sig = samples["sigma"][:, None]
ll = dist.Normal(f, sig).log_prob(yte[None, :])
lppd = float(jnp.mean(logsumexp(ll, axis=0) - jnp.log(ll.shape[0])))
print(f"numpyro_multichain_nuts hidden={HIDDEN} chains={CHAINS} warmup={WARMUP}: {dt / CHAINS:.3f} s/chain, {dt:.1f} s total, test LPPD {lppd:.3f}")
