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
