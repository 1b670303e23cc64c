#!/usr/bin/env bash
# One node with N GPUs: a single process drives them all through jax.pmap.
# Usage: launch/gpu_node.sh CONFIG WORKDIR [GPU_IDS]   e.g. launch/gpu_node.sh configs/reflection.py work/reflection 0,1
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}
if [[ -n "${3:-}" ]]; then export CUDA_VISIBLE_DEVICES=$3; fi
exec python -m layered_jax.main --config="$config" --workdir="$workdir" "${@:4}"
