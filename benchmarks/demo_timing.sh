#!/usr/bin/env bash
# Wall time of `make demo`'s main job (the two commands after `make install`), each under
# /usr/bin/time -v, written as JSON: benchmarks/demo_timing.sh [OUT_JSON] [RUN_DIR]
# Run it on a quiet machine: the figure is a wall time, not a ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/demo-cpu-$(nproc)core.json}
RUN=${2:-$(mktemp -d)}
mkdir -p "$RUN"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
s=$(date +%s.%N)
/usr/bin/time -v granularity simulate --out "$RUN/simulate" >"$RUN/sim.log" 2>"$RUN/sim.time"
m=$(date +%s.%N)
/usr/bin/time -v granularity study --dataset fashion-mnist --out "$RUN/study" >"$RUN/study.log" 2>"$RUN/study.time"
e=$(date +%s.%N)
load1=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$OUT" "$RUN" "$s" "$m" "$e" "$load0" "$load1" <<'PY'
import json, platform, re, subprocess, sys
out, run, s, m, e, l0, l1 = sys.argv[1:]
def rusage(path):
    t = open(path).read()
    get = lambda key: float(re.search(rf"{key}: ([0-9.]+)", t).group(1))
    return {"user_s": get("User time \\(seconds\\)"), "sys_s": get("System time \\(seconds\\)"),
            "max_rss_mib": get("Maximum resident set size \\(kbytes\\)") / 1024}
flags = open("/proc/cpuinfo").read()
res = {"what": "make demo main job: granularity simulate; granularity study --dataset fashion-mnist",
       "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
       "cores": len(__import__("os").sched_getaffinity(0)), "cpu_bf16": "avx512_bf16" in flags, "python": platform.python_version(),
       "load_before": l0, "load_after": l1,
       "simulate_s": float(m) - float(s), "study_s": float(e) - float(m), "demo_s": float(e) - float(s),
       "simulate": rusage(f"{run}/sim.time"), "study": rusage(f"{run}/study.time"), "target_s": 480}
res["met"] = res["demo_s"] <= res["target_s"]
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
PY
