#!/usr/bin/env bash
# Run every benchmark on the CUDA device of this machine and write
# benchmarks/results/cuda-<gpu>.json (figures 1-5 on the GPU), then time the simulator with many
# seeds batched, in float32 and bf16, into benchmarks/results/cuda-<gpu>-seeds.json.
#   - ceilings: one per dtype for the whole run, the best of interleaved torch.mm samples
#     (float32 with TF32 allowed; bf16 where torch.cuda.is_bf16_supported()). Figure 1 reports
#     the step in float32 and with bf16 operands against both ceilings; target >= 0.6 of bf16.
#   - figure 3 runs simulate in float32 and bf16 against the peer-style float32 implementation.
#   - --full: the full-size comparison 3 (paper preset, 5 seeds, 3000 steps) and paper-size
#     generator memory; both fit in a few minutes on a GPU.
#   - figure 6 (fused runs): K = 1, 2, 4, 8, 16 and 64 runs of the default CNN (and of the MLP
#     and the paired designs' CNN, width 16 at batch 32) trained as one fused model vs one after
#     the other, bf16 autocast + channels-last (the engine's default on a card with bf16);
#     images/s, fraction of the bf16 ceiling, where a solo step's time goes, peak RSS; target:
#     16 fused runs >= 10x the throughput of one run at a time. Unmeasured until a session with
#     a GPU runs this script (`--only fused` runs it alone).
#   - the 10-seed bridge design's wall time fused vs not (study --fuse / --no-fuse), tables
#     compared within their CIs: benchmarks/results/cuda-<gpu>-fused-bridge.json.
#   - batched seeds: `simulate` of the paper preset with SEEDS seeds as one batch (default 40),
#     each precision twice, alternating; wall seconds and every error table are kept.
# Usage: benchmarks/run_gpu.sh [extra `granularity bench` options, e.g. --only step,seeds]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-40}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh: no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -m granularity.cli.main bench --device cuda --full --out benchmarks/results "$@"
python - "$SEEDS" <<'PY'
import json, re, sys, tempfile, time
import torch
from granularity.bench.common import load_average, machine
from granularity.bench.simulator import preset_config
from granularity.theory.experiment import simulate

seeds = int(sys.argv[1])
dev = torch.device("cuda")
rec = {"machine": machine(dev), "seeds": seeds, "load_average_before": load_average(), "runs": []}
for rep in range(2):
    for prec in (("float32", "bfloat16") if rep % 2 == 0 else ("bfloat16", "float32")):
        cfg = preset_config("paper", seeds=seeds, seed_batch=seeds, device="cuda", model={"precision": prec})
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = simulate(cfg, tempfile.mkdtemp(), progress=False, figures=False)
        torch.cuda.synchronize()
        rec["runs"].append({"precision": res["precision"], "seconds": time.perf_counter() - t0, "errors": res["errors"]})
rec["load_average_after"] = load_average()
gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")
path = f"benchmarks/results/cuda-{gpu}-seeds.json"
json.dump(rec, open(path, "w"), indent=1)
print(path, [(r["precision"], round(r["seconds"], 1)) for r in rec["runs"]])
PY
gpu=$(python -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
python -m granularity.bench.fused study bridge "benchmarks/results/cuda-$gpu-fused-bridge.json" --full
