#!/bin/bash
# Multi-node brainstacks training on SLURM (sample; adapt partition, account, paths, modules).
#
#   sbatch scripts/slurm_brainstacks.sh configs/qlora_fsdp.yaml runs/qlora_fsdp
#
# One task per GPU: srun starts NODES x GPUS_PER_NODE copies of `brainstacks fit`, and
# Lightning's SLURMEnvironment reads SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID /
# SLURM_NTASKS and the first node of SLURM_JOB_NODELIST (MASTER_ADDR) itself, so no
# torchrun is needed. trainer.num_nodes and trainer.devices must match the allocation; they
# are set below from the SLURM variables. Only global rank 0 writes the run directory, which
# must be on a filesystem every node sees. A preempted/requeued job resumes from the run
# directory (same SLURM_JOB_ID: the old lock is recognised as this job's and taken over).
#
#SBATCH --job-name=brainstacks
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = GPUs per node: one task per GPU
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --requeue                    # resume after preemption: same command, same run directory
#SBATCH --signal=SIGUSR1@90          # Lightning's SLURM plugin: requeue 90 s before the time limit
#SBATCH --output=%x-%j.out

set -euo pipefail
CONFIG=${1:-configs/qlora_fsdp.yaml}
RUN_DIR=${2:-runs/${SLURM_JOB_NAME}}

# module load cuda/12.4  # site specific
# source .venv/bin/activate
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
export HF_HOME=${HF_HOME:-$PWD/.hf_cache}        # download models/data once, before the job (login node)
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}       # compute nodes often have no internet
export NCCL_ASYNC_ERROR_HANDLING=1

GPUS_PER_NODE=${SLURM_NTASKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
# FSDP2 configs (ModelParallelStrategy) shard over every device of every node.
EXTRA=()
if grep -q ModelParallelStrategy "$CONFIG"; then
  EXTRA=(--trainer.strategy.data_parallel_size "$((SLURM_JOB_NUM_NODES * GPUS_PER_NODE))")
fi

srun --kill-on-bad-exit=1 brainstacks fit \
  --config "$CONFIG" \
  --trainer.default_root_dir "$RUN_DIR" \
  --trainer.num_nodes "$SLURM_JOB_NUM_NODES" \
  --trainer.devices "$GPUS_PER_NODE" \
  "${EXTRA[@]}"
