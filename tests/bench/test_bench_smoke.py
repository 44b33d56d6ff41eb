"""Smoke test of the benchmark code at tiny size (figures are not meaningful at this size)."""

import json

import pytest
import torch

from granularity.bench.run import BENCHMARKS, run_benchmarks
from granularity.bench.whole import compare
from granularity.cli.main import main


@pytest.fixture
def one_thread():
    """Tiny ops on a shared 2-core machine run far faster on one thread (no OpenMP barriers
    waiting for a descheduled second thread); the peak-RSS subprocesses inherit it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_bench_all_figures_tiny(tmp_path, one_thread):
    rec = run_benchmarks(device="cpu", tiny=True, out=tmp_path, name="smoke")
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert set(data["results"]) == set(BENCHMARKS)
    assert data["machine"]["torch"] and data["device"] == "cpu"
    for name, r in data["results"].items():
        assert isinstance(r["met"], bool) and r["value"] > 0, name
    assert rec["results"]["seeds"]["results_agree"]  # batched and sequential seeds give the same models
    if "bfloat16" in data["ceilings"]:  # and so they do with bf16 operands
        assert rec["results"]["seeds"]["bfloat16"]["results_agree"]
    step = data["results"]["step"]["cases"]["large"]["step"]["float32"]
    assert 0 < step["ratio"]["vs_float32_ceiling"] and step["gflops"] > 0
    # one ceiling per dtype for the whole run, the best of all its interleaved samples
    ceil = data["ceilings"]["float32"]
    assert ceil["samples"] >= 3 and ceil["best_gflops"] >= ceil["median_gflops"] >= ceil["worst_gflops"] > 0
    assert step["ratio"]["vs_float32_ceiling"] == pytest.approx(step["gflops"] / ceil["best_gflops"])
    assert data["results"]["whole"]["comparison"]["rows"]  # both error tables were compared
    from granularity.bench.report import markdown

    table = markdown(data)  # the README's renderer handles every figure of the current schema
    assert "| 1 | simulator step, large preset" in table and "| 4 | engine" in table and "Ceilings" in table
    cmp = data["results"]["whole"]["comparison"]
    assert len(cmp["rows"]) == 12  # coarse/fine x map/probe/finetune x easy/hard, all compared
    # the simulator and the peer-style baseline agree: every mean within the stated tolerance
    # (the two 95% CIs added, at least compare()'s 0.03 floor) ...
    assert cmp["all_same_within_noise"], [r for r in cmp["rows"] if not r["same"]]
    # ... and, since two seeds give wide CIs, also within the floor alone (seen: <= 0.007)
    assert all(r["diff"] <= 0.03 for r in cmp["rows"]), cmp["rows"]
    rss = data["results"]["generator"]["eval_rss"]
    assert all(v["maxrss_mib"] > 0 for v in rss.values())


def test_compare_flags_a_real_difference():
    tab = lambda m: {"coarse": {"map": {"easy": {"mean": 0.0, "ci": 0.0}, "hard": {"mean": m, "ci": 0.01}}}}  # noqa: E731
    assert compare(tab(0.2), tab(0.21))["all_same_within_noise"]
    assert not compare(tab(0.2), tab(0.4))["all_same_within_noise"]


def test_cli_rejects_unknown_benchmark(tmp_path, capsys):
    assert main(["bench", "--only", "stepp", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step" in err


def test_round_ratios_pair_each_rounds_engine_with_its_bare_loop():
    from granularity.bench.engine import _round_ratios

    t = {"engine": [2.0, 1.0, 4.0], "bare": [1.0, 1.0, 5.0]}  # seconds: ratios bare/engine 0.5, 1, 1.25
    assert _round_ratios(t, "engine", "bare") == {"median": 1.0, "min": 0.5, "max": 1.25, "n": 3}


def test_engine_bench_models_are_in_the_engines_layout(monkeypatch, one_thread):
    """Like for like: each side trains in the layout engine.run would pick (channels-last on the
    CPU in both precisions), except the NCHW reference; the ratios come from the sides' samples."""
    import granularity.bench.engine as be

    layouts: dict[str, bool] = {}

    def spy(fns, repeats, device, ceilings=None):
        for name, fn in fns.items():  # each side's model, read from its closure (a bare loop names its key)
            cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
            w = cells["models"][cells.get("key", name)].features[1][0].weight  # 2nd conv: > 1 input channel
            layouts[name] = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        return {name: [1.0 + 0.1 * i, 1.0] for i, name in enumerate(fns)}

    monkeypatch.setattr(be, "interleaved", spy)
    monkeypatch.setattr(be, "peak_rss", lambda kind, args: {"maxrss_mib": 1.0})
    out = be.bench_engine(torch.device("cpu"), tiny=True, images=256)
    assert layouts.pop("bare_nchw") is False and layouts and all(layouts.values()), layouts
    assert out["channels_last"] == {"float32": True, "bfloat16": True}
    ips = out["images_per_s"]
    assert out["layout_speedup"] == pytest.approx(ips["bare"] / ips["bare_nchw"])
    assert out["ratio_no_augment"] == pytest.approx(ips["engine_no_aug"] / ips["bare"])
    assert out["ratio_no_augment_rounds"]["n"] == 2
