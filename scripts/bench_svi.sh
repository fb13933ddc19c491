#!/usr/bin/env bash
# Side-by-side SVI step timing: weightspace's elbo_bench against NumPyro (benches/peers/numpyro_bnn_svi.py)
# on the same model, in the same run, alternating the two. Needs the peers' Python venv (benches/peers/README.md):
#   python3 -m venv .peers && .peers/bin/pip install -r benches/peers/requirements.txt
# PY (default .peers/bin/python) and PEER (default benches/peers/numpyro_bnn_svi.py) override the two.
# Usage: scripts/bench_svi.sh [repeats]   (default 3; the median of the repeats is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.peers/bin/python}
PEER=${PEER:-benches/peers/numpyro_bnn_svi.py}
R=${1:-3}
cargo build --release --example elbo_bench -q
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for cfg in "50 128 8 2000 200" "100 1000 16 100 20"; do
  set -- $cfg
  H=$1; N=$2; K=$3; WS_STEPS=$4; PEER_STEPS=$5
  ws=(); np=()
  for _ in $(seq "$R"); do
    ws+=("$(target/release/examples/elbo_bench --hidden "$H" --n "$N" --samples "$K" --steps "$WS_STEPS" | tail -1 | sed 's/.*us_per_step=//')")
    np+=("$(H=$H N=$N K=$K STEPS=$PEER_STEPS "$PY" "$PEER" | tail -1 | sed 's/.*: \([0-9.]*\) us\/step/\1/')")
  done
  w=$(printf '%s\n' "${ws[@]}" | median); p=$(printf '%s\n' "${np[@]}" | median)
  echo "svi_step hidden=$H n=$N samples=$K weightspace_us=$w numpyro_us=$p ratio=$(awk -v a="$w" -v b="$p" 'BEGIN {printf "%.3f", a/b}')"
done
