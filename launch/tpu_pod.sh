#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker; JAX detects the slice.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=...]
# WORKDIR should be a gs:// bucket or other storage every worker sees; the repo must be
# checked out (and requirements installed) at the same path on every worker.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file}; workdir=${4:?workdir}
repo=${REPO_DIR:-~/layered_jax}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="cd $repo && \
  python -m layered_jax.main --config=$config --workdir=$workdir --config.dtype=bfloat16 ${*:5}"
