#!/usr/bin/env bash
# `cargo check --features cuda` and `--features nccl` on a machine without a GPU: installs nvcc from
# Debian's non-free nvidia-cuda-toolkit (CUDA 11.8) when missing, and pins the compute capability
# (no GPU to detect). This compiles candle's CUDA kernels (~14 min on 2 cores the first time) and
# type-checks every crate with CUDA, then with NCCL data parallelism; it runs nothing on a GPU.
# The NCCL check needs no NCCL headers or library: cudarc ships its own bindings and only a real
# build (linking) needs libnccl.so (candle asks cudarc for dynamic linking).
#   scripts/check-cuda.sh            # install if needed, then check
#   IBOT_CUDA_INSTALL=0 scripts/check-cuda.sh   # never install; skip when nvcc is missing
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
    if [ "${IBOT_CUDA_INSTALL:-1}" = "0" ]; then
        echo "check-cuda: nvcc not found and IBOT_CUDA_INSTALL=0: skipped" >&2
        exit 0
    fi
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO="sudo"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        $SUDO sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' \
            /etc/apt/sources.list.d/debian.sources
    fi
    if ! ($SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            $SUDO apt-get install -y -q --no-install-recommends nvidia-cuda-toolkit) >/tmp/ibot-cuda-apt.log 2>&1; then
        echo "check-cuda: could not install nvidia-cuda-toolkit (see /tmp/ibot-cuda-apt.log): skipped" >&2
        exit 0
    fi
fi
nvcc --version | tail -1
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
cargo check --features cuda --target-dir "${CUDA_TARGET_DIR:-target/cuda-check}"
cargo check --features nccl --target-dir "${CUDA_TARGET_DIR:-target/cuda-check}"
