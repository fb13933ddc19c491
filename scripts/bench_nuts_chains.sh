#!/usr/bin/env bash
# Side-by-side many-chain NUTS timing on the f1 (1×3 tanh) sinusoidal workflow: weightspace's
# batched NUTS (`mcmc_bench --sampler nuts`, 1274 chains, both cores) against NumPyro's vectorised
# NUTS (benches/peers/numpyro_multichain_nuts.py, 16 chains at a time), alternating the two, in one
# run. Both sample the peers' exact split, 1024 warm-up steps and 1 draw per chain, and report
# seconds per chain. Needs the peers' Python venv (benches/peers/README.md).
# PY (default .peers/bin/python), CHAINS (weightspace, default 1274) and PEER_CHAINS (NumPyro,
# default 64: its time per chain does not depend on the count, 16 chains run at a time) override.
# Usage: scripts/bench_nuts_chains.sh [pairs]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.peers/bin/python}
CHAINS=${CHAINS:-1274}
PEER_CHAINS=${PEER_CHAINS:-64}
R=${1:-2}
cargo build --release --example mcmc_bench -q
data=target/peer-sinusoidal
mkdir -p "$data"
"$PY" examples/data/dump_peer_sinusoidal.py "$data" > /dev/null
for i in $(seq "$R"); do
  echo "pair $i: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  ws=$(target/release/examples/mcmc_bench --sampler nuts --chains "$CHAINS" --train "$data/train.csv" --test "$data/test.csv" | tail -1)
  echo "  $ws"
  np=$(CHAINS=$PEER_CHAINS "$PY" benches/peers/numpyro_multichain_nuts.py 2> /dev/null | tail -1)
  echo "  $np"
  w=$(echo "$ws" | sed 's/.*seconds_per_chain=\([0-9.]*\).*/\1/')
  p=$(echo "$np" | sed 's/.*: \([0-9.]*\) s\/chain.*/\1/')
  echo "nuts_chains pair=$i weightspace_s_per_chain=$w numpyro_s_per_chain=$p ratio=$(awk -v a="$w" -v b="$p" 'BEGIN {printf "%.4f", a/b}')"
done
