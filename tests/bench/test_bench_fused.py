"""Smoke test of the fused-runs benchmark (figure 6) at tiny size; figures are not meaningful."""

import pytest
import torch

from granularity.bench.common import Ceilings
from granularity.bench.fused import bench_fused, summary, train_flops_per_image
from granularity.models import create_model


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_fused_bench_tiny(one_thread):
    cpu = torch.device("cpu")
    ceilings = Ceilings(cpu, 256)
    r = bench_fused(cpu, tiny=True, ceilings=ceilings)
    assert r["ks"] == [1, 2] and set(r["models"]) == {"cnn", "mlp", "cnn16-b32"}
    assert r["cases"]["cnn16-b32"] == {"model": "cnn", "options": {"width": 16}, "batch_size": 32}
    for m in r["models"].values():
        for k, row in m["by_k"].items():
            assert row["fused_images_per_s"] > 0 and row["sequential_images_per_s"] > 0, k
            assert row["speedup"] == pytest.approx(row["fused_images_per_s"] / row["sequential_images_per_s"])
            assert 0 < row["fused_fraction_of_ceiling"] == pytest.approx(row["fused_gflops"] / r["ceiling"]["best_gflops"])
            assert row["spread"]["fused"]["n"] == 1
    assert r["rss"]["fused"]["maxrss_mib"] > 0 and r["rss"]["fused"]["k"] == 2
    assert r["value"] == r["models"]["cnn"]["by_k"]["2"]["speedup"] and isinstance(r["met"], bool)
    assert "cnn: K=1" in summary(r)
    best = r["ceiling"]["best_gflops"]
    for name, m in r["models"].items():
        p = m["step_profile"]
        assert p["matmul_seconds"] + p["other_seconds"] == pytest.approx(p["seconds_profiled"])
        assert 0 < p["matmul_fraction"] < 1, name
        # the bound recomputed by hand from the profile and the ceiling
        conv_at_ceiling = p["images"] * p["train_flops_per_image"] / (best * 1e9)
        assert p["bound_convs_at_ceiling"] == pytest.approx(p["seconds_profiled"] / (p["other_seconds"] + conv_at_ceiling))
        assert p["bound_convs_free"] >= p["bound_convs_at_ceiling"] > 0
    conv_ops = [o["op"] for o in r["models"]["cnn"]["step_profile"]["top_ops"] if "convolution" in o["op"]]
    assert conv_ops, r["models"]["cnn"]["step_profile"]["top_ops"]
    from granularity.bench.report import markdown_v2

    table = markdown_v2({"machine": {}, "device": "cpu", "ceilings": {}, "results": {"fused": r}})
    assert "| 6 | cnn: K runs fused vs one by one" in table and "| 6 | peak RSS, 2 cnn runs fused" in table
    assert "| 6 | cnn16-b32: one solo step, convolutions/matmuls vs the rest (profiler)" in table


def test_train_flops_of_the_default_cnn():
    # by hand: 3 x 2 x (1*32*9*28^2 + 32*64*9*14^2 + 64*128*9*7^2 + 128*10) multiply-adds
    want = 3 * 2 * (1 * 32 * 9 * 784 + 32 * 64 * 9 * 196 + 64 * 128 * 9 * 49 + 128 * 10)
    assert train_flops_per_image(create_model("cnn", (1, 28, 28), 10), (1, 28, 28)) == want


def test_study_wall_figure_tiny(tmp_path, one_thread):
    from granularity.bench.fused import bench_study_wall

    from engine.conftest import tiny_dataset  # tests/ is on sys.path
    from experiments.test_study import tiny_study

    cfg = tiny_study(train_size=96, seeds=[0], reference_seeds=1)
    cfg["run"]["bf16"] = False
    r = bench_study_wall("levels", cfg, dataset=tiny_dataset(n_train=160))
    assert len(r["seconds"]["fused"]) == len(r["seconds"]["unfused"]) == 1 and r["speedup"] > 0
    assert r["rows"] and all(row["figures"] for row in r["rows"])
    assert r["tables_same_within_ci"], [row for row in r["rows"] if not row["same"]]
    assert r["rows"][0]["row"] == {"arm": "target"}


def test_study_rows_compare_within_either_kind_of_ci():
    from granularity.bench.fused import _compare_rows

    fused = {"arm": "a", "x": {"mean": 0.30, "ci": 0.02}, "boot": {"mean": -0.050, "lo": -0.08, "hi": -0.02}}
    unfused = {"arm": "a", "x": {"mean": 0.33, "ci": 0.02}, "boot": {"mean": -0.055, "lo": -0.09, "hi": -0.02}}
    r = _compare_rows(fused, unfused)
    assert r["figures"]["x"] == {"fused": 0.30, "unfused": 0.33, "tolerance": pytest.approx(0.04), "same": True}
    assert r["figures"]["boot"]["tolerance"] == pytest.approx(0.03 + 0.035) and r["figures"]["boot"]["same"]
    far = dict(unfused, boot={"mean": 0.05, "lo": 0.04, "hi": 0.06})
    assert not _compare_rows(fused, far)["figures"]["boot"]["same"] and not _compare_rows(fused, far)["same"]


def test_tables_against_committed_results_row_by_row(tmp_path):
    from granularity.bench.fused import tables_against
    from granularity.errors import GranularityError

    committed = [{"arm": "target", "x": {"mean": 0.30, "ci": 0.02}}, {"arm": "leaf", "x": {"mean": 0.20, "ci": 0.02}}]
    near = [{"arm": "target", "x": {"mean": 0.31, "ci": 0.02}}, {"arm": "leaf", "x": {"mean": 0.19, "ci": 0.02}}]
    far = [{"arm": "target", "x": {"mean": 0.31, "ci": 0.02}}, {"arm": "leaf", "x": {"mean": 0.30, "ci": 0.02}}]
    out = tables_against({"fused": near, "unfused": far}, committed, "results.json")
    assert out["fused"] == {"rows": 2, "same_within_ci": True, "differ": []}
    assert out["unfused"] == {"rows": 2, "same_within_ci": False, "differ": [{"arm": "leaf"}]}
    with pytest.raises(GranularityError, match="hold different rows"):
        tables_against({"fused": near[::-1]}, committed, "results.json")  # another order is another table


def test_against_writes_the_comparison_into_the_record(tmp_path):
    import json
    import subprocess
    import sys

    table = [{"arm": "target", "x": {"mean": 0.30, "ci": 0.02}}]
    rec, res = tmp_path / "rec.json", tmp_path / "results.json"
    rec.write_text(json.dumps({"design": "levels", "tables": {"fused": table, "unfused": table}}))
    res.write_text(json.dumps({"table": table}))
    proc = subprocess.run([sys.executable, "-m", "granularity.bench.fused", "against", str(rec), str(res)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(rec.read_text())
    assert got["design"] == "levels" and got["against"]["unfused"]["same_within_ci"] is True
    bad = subprocess.run([sys.executable, "-m", "granularity.bench.fused", "against", str(rec), str(tmp_path / "no.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
