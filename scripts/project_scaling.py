#!/usr/bin/env python3
"""Projects the many-chain SYM-MCMC workflow's time on R MPI ranks from measured inputs.

Model (weightspace's sharded ChEES sampler, shared step size):
  chains are dealt to ranks in blocks of 8, so the slowest rank holds 8*ceil(B/R) chains,
  B = ceil(C/8); every chain takes the same leapfrog steps, so compute = c * 8*ceil(B/R)
  with c the measured seconds per chain on one core;
  each of the I = warmup + draws iterations runs 3 collectives (2 after warm-up), each costing
  alpha * ceil(log2 R) in latency, plus the all-gather of the per-block partial sums,
  B * (6 + 2d) doubles per warm-up iteration, at bandwidth beta.

Usage: project_scaling.py SECONDS_PER_CHAIN DIM [--chains 1274] [--warmup 1024] [--draws 1]
                          [--alpha-us 2] [--beta-gbs 10] [--ranks 1,2,16,64] [--budget 300]
"""
import argparse
import math

p = argparse.ArgumentParser()
p.add_argument("seconds_per_chain", type=float)
p.add_argument("dim", type=int)
p.add_argument("--chains", type=int, default=1274)
p.add_argument("--warmup", type=int, default=1024)
p.add_argument("--draws", type=int, default=1)
p.add_argument("--alpha-us", type=float, default=2.0)
p.add_argument("--beta-gbs", type=float, default=10.0)
p.add_argument("--ranks", default="1,2,16,64")
p.add_argument("--budget", type=float, default=300.0)
a = p.parse_args()

blocks = math.ceil(a.chains / 8)


def seconds(r):
    compute = a.seconds_per_chain * min(a.chains, 8 * math.ceil(blocks / r))
    if r == 1:
        return compute, 0.0
    hops = math.ceil(math.log2(r))
    latency = (3 * a.warmup + 2 * a.draws) * a.alpha_us * 1e-6 * hops
    volume = a.warmup * blocks * (6 + 2 * a.dim) * 8 / (a.beta_gbs * 1e9)
    return compute, latency + volume


for r in [int(x) for x in a.ranks.split(",")]:
    c, m = seconds(r)
    print(f"ranks={r} compute_seconds={c:.1f} communication_seconds={m:.3f} seconds={c + m:.1f}")
r = 1
while sum(seconds(r)) >= a.budget and r < blocks:
    r += 1
print(f"ranks_for_budget={r} budget_seconds={a.budget:.0f} seconds={sum(seconds(r)):.1f}")
