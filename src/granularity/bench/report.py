"""A Markdown table of a benchmark JSON (for benchmarks/README.md):
``python -m granularity.bench.report benchmarks/results/cpu-2core.json``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any


def _f(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def _spread(sec: dict[str, float]) -> str:
    return f"{sec['median']:.3g} s (min {sec['min']:.3g}, max {sec['max']:.3g}, n={sec['n']})"


def _machine(rec: dict[str, Any]) -> str:
    m = rec["machine"]
    return (
        f"Machine: {m.get('cpu_model')}{' [' + ', '.join(m['cpu_flags']) + ']' if m.get('cpu_flags') else ''} "
        f"({m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads), "
        f"{m.get('memory_gib')} GiB; device {rec['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}; "
        f"torch {m.get('torch')}, Python {m.get('python')}; git {str(m.get('git_revision'))[:10]}; "
        f"{m.get('time')}. Load average before/after: {rec.get('load_average_before')} / "
        f"{rec.get('load_average_after')}; total {rec.get('seconds', 0):.0f} s."
    )


def _seeds_row(s: dict[str, Any]) -> str:
    return (f"| 2 | 8 seeds of the paper coarse model, {s['steps']} steps: batched vs sequential "
            f"| {s['batched_seconds']:.1f} s vs {s['sequential_seconds']:.1f} s = **x{_f(s['speedup'], 1)}**; "
            f"weights agree to {s['max_rel_weight_diff']:.0e}, errors to {s['max_error_diff']:.3f} "
            f"| >= 3x | {'yes' if s['met'] else 'no'} |")


def _error_table(s: dict[str, Any], caption_tail: str) -> list[str]:
    """Figure 3's error table of a ``whole`` result (simulator vs baseline, per source and protocol)."""
    lines = ["", f"Figure 3, error tables (mean over seeds; easy / hard target test error{caption_tail}):", "",
             "| source | protocol | simulator easy | simulator hard | baseline easy | baseline hard |",
             "|---|---|---|---|---|---|"]
    for src, protos in s["errors_simulator"].items():
        for proto, v in protos.items():
            b = s["errors_baseline"][src][proto]
            lines.append(f"| {src} | {proto} | {v['easy']['mean']:.3f} | {v['hard']['mean']:.3f} "
                         f"| {b['easy']['mean']:.3f} | {b['hard']['mean']:.3f} |")
    return lines


def markdown(rec: dict[str, Any]) -> str:
    """The tables of one benchmark JSON; benchmarks/README.md embeds them verbatim (a test
    regenerates them from the committed JSON)."""
    if rec.get("schema", 1) >= 2:
        return markdown_v2(rec)
    r = rec["results"]
    lines = [
        _machine(rec),
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
        lines.append(_seeds_row(r["seeds"]))
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
        lines += _error_table(r["whole"], "")
    return "\n".join(lines)


def _header(rec: dict[str, Any]) -> list[str]:
    lines = [
        _machine(rec),
        "",
        "Ceilings (one per dtype for the whole run: the best of all interleaved `torch.mm` samples):",
        "",
        "| dtype | shape | best GFLOP/s | median | worst | samples |",
        "|---|---|---|---|---|---|",
    ]
    for dt, c in rec["ceilings"].items():
        lines.append(f"| {dt} | {c['shape']} | **{c['best_gflops']:.0f}** | {c['median_gflops']:.0f} "
                     f"| {c['worst_gflops']:.0f} | {c['samples']} |")
    lines += ["", "| # | figure | measured (medians; spread in the JSON) | target | met |", "|---|---|---|---|---|"]
    return lines


def markdown_v2(rec: dict[str, Any]) -> str:
    r = rec["results"]
    lines = _header(rec)
    if "step" in r:
        s = r["step"]
        for name, c in s["cases"].items():
            for prec, st in c["step"].items():
                ratios = ", ".join(f"**{v:.2f}** {k.replace('_', ' ')}" for k, v in st["ratio"].items())
                target = name == "large" and prec == ("bfloat16" if "bf16" in s["target_of"] else "float32")
                lines.append(
                    f"| 1 | simulator step, {name} preset fine model, {prec} (S={c['S']}, N={c['N']}, d={c['d']}, "
                    f"P={c['P']}) | {_spread(st['seconds'])}: {st['gflops']:.0f} GFLOP/s = {ratios} "
                    f"| {'>= ' + str(s['target']) if target else '-'} | {('yes' if s['met'] else 'no') if target else ''} |")
    if "seeds" in r:
        lines.append(_seeds_row(r["seeds"]))
    if "whole" in r:
        s = r["whole"]
        sec = s["spread"]
        parts = "; ".join(f"{k.replace('_', ' ')} {_spread(v)}" for k, v in sec.items())
        lines.append(
            f"| 3 | simulate(paper, {s['seeds']} seeds, steps x{s['scale']}: {s['steps']}/{s['probe_steps']}/"
            f"{s['finetune_steps']}) vs peer-style float32 baseline | {parts}: **x{_f(s['speedup'], 2)}** in "
            f"{s['precision']} (x{_f(s['speedup_float32'], 2)} in float32); errors same within noise: "
            f"{s['comparison']['all_same_within_noise']} ({s['precision']}), "
            f"{s['comparison_float32']['all_same_within_noise']} (float32) | >= 3x | {'yes' if s['met'] else 'no'} |")
    if "engine" in r:
        s = r["engine"]
        ips = s["images_per_s"]
        if "ratio_bf16_no_augment" in s:  # like for like = the engine without augmentation (the bare loop has none)
            bf = (f"; bf16 autocast + channels-last, both sides: {ips['engine_bf16_no_aug']:.0f} vs {ips['bare_bf16']:.0f} "
                  f"img/s = **{_f(s['ratio_bf16_no_augment'])}** (with augmentation {_f(s['ratio_bf16'])}; "
                  f"x{_f(s['bf16_speedup'])} the float32 engine)")
            f32 = (f"float32: {ips['engine_no_aug']:.0f} vs {ips['bare']:.0f} img/s = **{_f(s['ratio_no_augment'])}** "
                   f"(with augmentation {_f(s['ratio'])})")
        else:
            bf = (f"; bf16 autocast + channels-last, both sides: {ips['engine_bf16']:.0f} vs {ips['bare_bf16']:.0f} img/s "
                  f"= **{_f(s['ratio_bf16'])}** (x{_f(s['bf16_speedup'])} the float32 engine)") if "ratio_bf16" in s else ""
            f32 = (f"float32: {ips['engine']:.0f} vs {ips['bare']:.0f} img/s = **{_f(s['ratio'])}** (augmentation off: "
                   f"{_f(s['ratio_no_augment'])})")
        rounds = [(p, s[f"ratio{k}_no_augment_rounds"]) for p, k in (("float32", ""), ("bf16", "_bf16"))
                  if f"ratio{k}_no_augment_rounds" in s]
        if rounds:  # the like-for-like ratio of each interleaved round: how far it moves
            bf += "; per round " + ", ".join(f"{p} {_f(q['min'])}-{_f(q['max'])}" for p, q in rounds)
        lines.append(
            f"| 4 | engine train images/s (Fashion-MNIST, {s['model']}, batch {s['batch_size']}) vs bare loop, like for like "
            f"| {f32}{bf} | >= {s['target']} in each | {'yes' if s['met'] else 'no'} |")
        if "layout_speedup" in s:
            lines.append(f"| 4 | float32 bare loop, channels-last vs PyTorch's default layout | {ips['bare']:.0f} vs "
                         f"{ips['bare_nchw']:.0f} img/s = **x{_f(s['layout_speedup'])}** | - | - |")
        rr = s["run_rss"]
        lines.append(f"| 4 | peak RSS of a default transfer run (n_train={rr.get('n_train')}, epochs reduced to 1+1) "
                     f"| {rr['maxrss_mib']:.0f} MiB | - | - |")
    if "fused" in r:
        from granularity.bench.fused import markdown_rows

        lines += markdown_rows(r["fused"])
    if "whole" in r:
        lines += _error_table(r["whole"], f"; simulator in {r['whole']['precision']}")
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- generated: python -m granularity\.bench\.report (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def refresh(text: str, root: Path) -> str:
    """``text`` (benchmarks/README.md) with every generated block rewritten from its JSON
    (paths relative to the repository ``root``)."""
    def sub(m: re.Match) -> str:
        table = markdown(json.loads((root / m.group(2)).read_text()))
        return f"{m.group(1)}\n{table}\n\n{m.group(4)}"

    return BLOCK.sub(sub, text)


if __name__ == "__main__":
    # python -m granularity.bench.report results.json      -> print its tables
    # python -m granularity.bench.report --readme README.md  -> rewrite its generated blocks
    if sys.argv[1] == "--readme":
        path = Path(sys.argv[2])
        path.write_text(refresh(path.read_text(), path.resolve().parent.parent))
    else:
        print(markdown(json.loads(open(sys.argv[1]).read())))
