#!/usr/bin/env bash
# Multi-node launcher: run once per node; torchrun starts NPROC_PER_NODE ranks of
# `python -m dancegrpo_hpc.train CONFIG [overrides...] --resume auto`, so a restarted or
# requeued job continues from the latest checkpoint in the config's output_dir.
#
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0> examples/launch_torchrun.sh \
#       examples/hunyuan_t2v_64gpu.yaml train.iterations=300
#   DRY_RUN=1 examples/launch_torchrun.sh CONFIG ...   # print the command, run nothing
#
# Environment (defaults): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
# NPROC_PER_NODE (8), RDZV_ID (dancegrpo), RDZV_BACKEND (c10d; "static" pins node ranks to
# NODE_RANK), MAX_RESTARTS (0: torchrun restarts failed workers this many times), TORCHRUN (torchrun).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 CONFIG [key.sub=value ...]  (env: NNODES NODE_RANK MASTER_ADDR MASTER_PORT NPROC_PER_NODE)" >&2
    exit 2
fi
CONFIG=$1
shift

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
RDZV_ID=${RDZV_ID:-dancegrpo}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
MAX_RESTARTS=${MAX_RESTARTS:-0}
TORCHRUN=${TORCHRUN:-torchrun}

# NCCL hints; uncomment what your fabric needs:
# export NCCL_IB_HCA=mlx5                  # InfiniBand adapters for inter-node traffic
# export NCCL_SOCKET_IFNAME=eth0           # interface for NCCL's bootstrap (not lo / docker0)
# export NCCL_DEBUG=WARN                   # INFO to see the chosen transports and rings
# export NCCL_TIMEOUT=1800                 # seconds; long rollouts leave collectives waiting
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job, not hangs it
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # Megatron TP: keep comm kernels in issue order
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}  # CPU threads per rank (decode / reward pre-processing)

cmd=("$TORCHRUN"
     --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE"
     --rdzv_backend="$RDZV_BACKEND" --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID"
     --max_restarts="$MAX_RESTARTS"
     -m dancegrpo_hpc.train "$CONFIG" "$@" --resume auto)

if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
