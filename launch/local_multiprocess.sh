#!/usr/bin/env bash
# N processes on this machine, each with 2 CPU devices, joined through a local coordinator (gloo).
# For testing multi-process code paths without a cluster.
# Usage: launch/local_multiprocess.sh N CONFIG WORKDIR [--config.x=...]
set -euo pipefail
n=${1:?number of processes}; config=${2:?config file}; workdir=${3:?workdir}
port=${PORT:-$((20000 + RANDOM % 20000))}
export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}
pids=()
for ((i = 0; i < n; i++)); do
  python -m layered_jax.main --config="$config" --workdir="$workdir" --coordinator_address=127.0.0.1:$port \
    --num_processes="$n" --process_id=$i "${@:4}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
