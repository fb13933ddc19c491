#!/usr/bin/env bash
# SYM-MCMC over MPI under Slurm: the 1274-chain f2 workflow on the sinusoidal data, the chains
# split across the job's ranks (one core each). Build first, on a login node:
#   cargo build --release --features mpi --example symmetry_mcmc
# then submit from the repository root:
#   sbatch scripts/slurm_symmetry_mcmc.sh
# Adjust --ntasks (ranks) and the module lines to your cluster.
#SBATCH --job-name=symmetry_mcmc
#SBATCH --ntasks=64
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=symmetry_mcmc-%j.out
set -euo pipefail
# module load openmpi   # on clusters that provide MPI as a module
export OMP_NUM_THREADS=1
srun target/release/examples/symmetry_mcmc \
  --dataset sinusoidal --arch f2 --chains 1274 --warmup 1024 --threads 1 --no-single \
  --out "target/weightspace/symmetry_mcmc-${SLURM_JOB_ID}"
# the last line: symmetry_mcmc ranks=64 lppd=… seconds=… compute_seconds=… allreduce_seconds=…
