#!/bin/bash
# Multi-node training on the torch engine under SLURM (docs/scale-out.md): one attnres train per
# node, 8 GPUs each, FSDP; PRESET, MODE and RUN choose the run.
#SBATCH --job-name=attnres-delta
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun bash -c "node bin/attnres.mjs train --engine torch --device cuda --dtype bfloat16 --fsdp \
  --nproc-per-node 8 --nnodes $SLURM_NNODES --node-rank \$SLURM_NODEID \
  --master-addr $MASTER_ADDR --master-port 29500 \
  --preset ${PRESET:-sotu-tiny} --mode ${MODE:-delta} --out runs/${RUN:-delta-4x8}"
