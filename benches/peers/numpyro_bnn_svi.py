"""Peer baseline for the SVI speed table in README.md ("Speed"): the time of one SVI step in NumPyro.

What it measures: the mean wall time of one jitted SVI step (mean-field Gaussian guide, AutoNormal;
reparameterised ELBO with K vectorised particles; Adam update) over STEPS steps, after one step that
compiles. The model is the one in examples/elbo_bench.rs: a 1 -> H -> H -> 1 tanh MLP, N(0, 1) priors
on every weight and bias, Gaussian likelihood with fixed noise 0.1, N data points with x ~ U(-3, 3),
y = sin x + N(0, 0.1^2), f32 on the CPU.

Knobs (environment): H (default 50), N (128), K (8), STEPS (2000).
Output: one line, 'numpyro_svi H=.. N=.. K=..: <us> us/step' (scripts/bench_svi.sh parses it).

Run (from the repository root, with the venv of benches/peers/README.md):
    H=50 N=128 K=8 STEPS=200 .peers/bin/python benches/peers/numpyro_bnn_svi.py
or side by side with weightspace, alternating the two: scripts/bench_svi.sh 5
"""
import os, time
import numpy as np, jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

H = int(os.environ.get("H", 50)); N = int(os.environ.get("N", 128))
K = int(os.environ.get("K", 8)); STEPS = int(os.environ.get("STEPS", 2000))

def model(x, y=None):
    w1 = numpyro.sample("w1", dist.Normal(0, 1).expand([1, H]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0, 1).expand([H]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0, 1).expand([H, H]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0, 1).expand([H]).to_event(1))
    w3 = numpyro.sample("w3", dist.Normal(0, 1).expand([H, 1]).to_event(2))
    b3 = numpyro.sample("b3", dist.Normal(0, 1).expand([1]).to_event(1))
    h = jnp.tanh(x @ w1 + b1); h = jnp.tanh(h @ w2 + b2); f = (h @ w3 + b3)[..., 0]
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(f, 0.1), obs=y)

rng = np.random.default_rng(0)
x = rng.uniform(-3, 3, (N, 1)).astype(np.float32)
y = (np.sin(x[:, 0]) + 0.1 * rng.standard_normal(N)).astype(np.float32)
svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(1e-3), Trace_ELBO(num_particles=K, vectorize_particles=True))
state = svi.init(jax.random.PRNGKey(0), x, y)
update = jax.jit(svi.update)
state, loss = update(state, x, y); loss.block_until_ready()  # compile outside the timing
t = time.perf_counter()
for _ in range(STEPS):
    state, loss = update(state, x, y)
loss.block_until_ready()
print(f"numpyro_svi H={H} N={N} K={K}: {(time.perf_counter() - t) / STEPS * 1e6:.1f} us/step")
