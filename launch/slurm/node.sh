#!/bin/bash
# One node's share of a Slurm job (srun runs it once per node; see train.sbatch): the node's
# rank and the node count come from Slurm, the rendezvous and hostfile from train.sbatch.
set -euo pipefail
exec deepspeed --no_ssh --hostfile "$HOSTFILE" --num_nodes "$SLURM_NNODES" \
    --node_rank "$SLURM_NODEID" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    launch/train.py "$@"
