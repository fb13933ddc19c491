"""Peer baseline for the many-chain MCMC benchmark in README.md ("MCMC over the weights"): BlackJAX ChEES-HMC.

What it measures: the total wall time (JIT compilation included) of CHAINS chains of jittered HMC
adapted jointly by BlackJAX's ChEES for WARMUP steps, then one draw per chain, and the mean test LPPD
of those draws (logsumexp over draws, each with its own sigma, no test point dropped).
Workload (the same as examples/mcmc_bench.rs and numpyro_multichain_nuts.py): sinusoidal data
(numpy seed 0; x ~ U(0, 8), y = sin x + N(0, 0.3^2), 150 points, 80/20 split, standardised with the
training statistics; examples/data/dump_peer_sinusoidal.py writes the same split for weightspace),
a tanh MLP with hidden widths HIDDEN, N(0, 1) priors on all weights, noise sigma ~ HalfNormal(1)
sampled as log sigma, chains started uniformly on (-2, 2), initial step size 0.1, Adam(0.025) on the
trajectory length.

Knobs (environment): HIDDEN (default "3"; "16,16,16" for the deeper net), CHAINS (1274), WARMUP (1024).
Output: one line, 'blackjax_chees hidden=[..] chains=.. warmup=..: <s> s total, <s> s/chain, test LPPD <f>'.

Run (from the repository root, with the venv of benches/peers/README.md):
    .peers/bin/python benches/peers/blackjax_chees_chains.py
"""
import os, time
import numpy as np, jax, jax.numpy as jnp, optax, blackjax
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

HIDDEN = [int(h) for h in os.environ.get("HIDDEN", "3").split(",")]
CHAINS = int(os.environ.get("CHAINS", 1274)); WARMUP = int(os.environ.get("WARMUP", 1024))

rng = np.random.default_rng(0)
x = rng.uniform(0, 8, (150, 1)); y = np.sin(x[:, 0]) + 0.3 * rng.standard_normal(150)
idx = rng.permutation(150); tr, te = idx[:120], idx[120:]
mx, sx, my, sy = x[tr].mean(0), x[tr].std(0), y[tr].mean(), y[tr].std()
xtr, xte = jnp.array((x[tr] - mx) / sx), jnp.array((x[te] - mx) / sx)
ytr, yte = jnp.array((y[tr] - my) / sy), jnp.array((y[te] - my) / sy)
sizes = [1] + HIDDEN + [1]
shapes = [(sizes[l], sizes[l + 1]) for l in range(len(sizes) - 1)]
dim = sum(a * b + b for a, b in shapes) + 1

def unpack(theta):
    params, i = [], 0
    for a, b in shapes:
        w = theta[i:i + a * b].reshape(a, b); i += a * b
        bb = theta[i:i + b]; i += b
        params.append((w, bb))
    return params, theta[i]

def f(theta, xx):
    params, _ = unpack(theta)
    h = xx
    for l, (w, b) in enumerate(params):
        h = h @ w + b
        if l < len(params) - 1:
            h = jnp.tanh(h)
    return h[:, 0]

def logdensity(theta):
    _, log_sigma = unpack(theta)
    sigma = jnp.exp(log_sigma)
    lp = norm.logpdf(theta[:-1]).sum()
    lp += jnp.log(2.0) + norm.logpdf(sigma) + log_sigma  # HalfNormal(1) on sigma, Jacobian of exp
    return lp + norm.logpdf(ytr, f(theta, xtr), sigma).sum()

key = jax.random.PRNGKey(0)
init = jax.random.uniform(key, (CHAINS, dim), minval=-2, maxval=2)
t = time.perf_counter()
warmup = blackjax.chees_adaptation(logdensity, num_chains=CHAINS)
(states, params), _ = warmup.run(jax.random.PRNGKey(1), init, step_size=0.1, optim=optax.adam(0.025), num_steps=WARMUP)
kernel = blackjax.dynamic_hmc(logdensity, **params).step
keys = jax.random.split(jax.random.PRNGKey(2), CHAINS)
states, _ = jax.vmap(kernel)(keys, states)
thetas = states.position; thetas.block_until_ready()
dt = time.perf_counter() - t
fs = jax.vmap(lambda th: f(th, xte))(thetas)
sig = jnp.exp(thetas[:, -1])[:, None]
ll = norm.logpdf(yte[None, :], fs, sig)
lppd = float(jnp.mean(logsumexp(ll, axis=0) - jnp.log(CHAINS)))
print(f"blackjax_chees hidden={HIDDEN} chains={CHAINS} warmup={WARMUP}: {dt:.1f} s total, {dt / CHAINS:.4f} s/chain, test LPPD {lppd:.3f}")
