#!/usr/bin/env bash
# Run every benchmark on the CUDA device of this machine and write
# benchmarks/results/cuda-<gpu>.json (figures 1-5 on the GPU; figure 6 of benchmarks/README.md).
#   - figure 1's ceiling on CUDA is the TF32 torch.mm rate (the simulator's fp32 bmm's run with
#     TF32 allowed during the benchmark); the bf16 rate is recorded beside it. Target >= 0.5.
#   - --full: the full-size comparison 3 (paper preset, 5 seeds, 3000 steps) and paper-size
#     generator memory; both fit in a few minutes on a GPU.
# Usage: benchmarks/run_gpu.sh [extra `granularity bench` options, e.g. --only step,seeds]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh: no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -m granularity.cli.main bench --device cuda --full --out benchmarks/results "$@"
