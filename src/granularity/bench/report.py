"""A Markdown table of a benchmark JSON (for benchmarks/README.md):
``python -m granularity.bench.report benchmarks/results/cpu-2core.json``."""

from __future__ import annotations

import json
import sys
from typing import Any


def _f(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def markdown(rec: dict[str, Any]) -> str:
    m, r = rec["machine"], rec["results"]
    lines = [
        f"Machine: {m.get('cpu_model')} ({m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads), "
        f"{m.get('memory_gib')} GiB; device {rec['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; "
        f"torch {m.get('torch')}, Python {m.get('python')}; git {str(m.get('git_revision'))[:10]}; "
        f"{m.get('time')}. Load average before/after: {rec.get('load_average_before')} / "
        f"{rec.get('load_average_after')}; total {rec.get('seconds', 0):.0f} s.",
        "",
        "| # | figure | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    if "step" in r:
        s = r["step"]
        for name, c in s["cases"].items():
            lines.append(
                f"| 1 | simulator step, {name} preset fine model (S={c['S']}, N={c['N']}, d={c['d']}, P={c['P']}) "
                f"| {c['step_gflops']:.0f} GFLOP/s / {c['matmul_fp32_gflops']:.0f} GFLOP/s mm = **{_f(c['ratio'])}** "
                f"| {'>= ' + str(s['target']) if name == 'large' else '-'} | {('yes' if s['met'] else 'no') if name == 'large' else ''} |")
    if "seeds" in r:
        s = r["seeds"]
        lines.append(
            f"| 2 | 8 seeds of the paper coarse model, {s['steps']} steps: batched vs sequential "
            f"| {s['batched_seconds']:.1f} s vs {s['sequential_seconds']:.1f} s = **x{_f(s['speedup'], 1)}**; "
            f"weights agree to {s['max_rel_weight_diff']:.0e}, errors to {s['max_error_diff']:.3f} "
            f"| >= 3x | {'yes' if s['met'] else 'no'} |")
    if "whole" in r:
        s = r["whole"]
        lines.append(
            f"| 3 | simulate(paper, {s['seeds']} seeds, steps x{s['scale']}: {s['steps']}/{s['probe_steps']}/{s['finetune_steps']}) "
            f"vs peer-style baseline | {s['simulator_seconds']:.0f} s vs {s['baseline_seconds']:.0f} s = **x{_f(s['speedup'], 1)}**; "
            f"errors same within noise: {s['comparison']['all_same_within_noise']} | >= 3x | {'yes' if s['met'] else 'no'} |")
    if "engine" in r:
        s = r["engine"]
        ips = s["images_per_s"]
        lines.append(
            f"| 4 | engine train images/s (Fashion-MNIST, {s['model']}, batch {s['batch_size']}) vs bare loop "
            f"| {ips['engine']:.0f} vs {ips['bare']:.0f} img/s = **{_f(s['ratio'])}** (augmentation off: "
            f"{ips['engine_no_aug']:.0f} img/s, {_f(s['ratio_no_augment'])}) | >= 0.9 | {'yes' if s['met'] else 'no'} |")
        rr = s["run_rss"]
        idle = s.get("idle_rss", {}).get("maxrss_mib")
        lines.append(
            f"| 4 | peak RSS of a default transfer run (n_train={rr.get('n_train')}, epochs reduced to 1+1) "
            f"| {rr['maxrss_mib']:.0f} MiB{f' (python+torch alone: {idle:.0f} MiB)' if idle else ''} | - | - |")
    if "generator" in r:
        s = r["generator"]
        sp = ", ".join(f"{k}: {v['samples_per_s']:.0f}/s" for k, v in s["speed"].items())
        rss = ", ".join(f"{int(k):.0e}: {v['maxrss_mib']:.0f} MiB" for k, v in s["eval_rss"].items())
        lines.append(f"| 5 | generator samples/s | {sp} | - | - |")
        lines.append(
            f"| 5 | peak RSS, streamed evaluation ({s['eval_preset']} data) | {rss}; ratio **{_f(s['rss_ratio_largest_to_smallest'])}** "
            f"| flat (<= 1.1) | {'yes' if s['met'] else 'no'} |")
    if "whole" in r:
        s = r["whole"]
        lines += ["", "Figure 3, error tables (mean over seeds; easy / hard target test error):", "",
                  "| source | protocol | simulator easy | simulator hard | baseline easy | baseline hard |",
                  "|---|---|---|---|---|---|"]
        for src, protos in s["errors_simulator"].items():
            for proto, v in protos.items():
                b = s["errors_baseline"][src][proto]
                lines.append(f"| {src} | {proto} | {v['easy']['mean']:.3f} | {v['hard']['mean']:.3f} "
                             f"| {b['easy']['mean']:.3f} | {b['hard']['mean']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(open(sys.argv[1]).read())))
