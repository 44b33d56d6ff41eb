"""Run folders, resume, interruption, phase diagrams."""

import json

import numpy as np
import pytest

from granularity.errors import GranularityError
from granularity.theory.config import SimConfig
from granularity.theory.experiment import estimate_memory, check_memory, simulate
from granularity.sweeps.phase import run_phase
from granularity.theory.phase import build_phase

from fakes import TINY_SIM  # tests/ is on sys.path

TINY = {
    **TINY_SIM,
    "seeds": 2,
    "seed_batch": 1,
}


def tiny(**kw):
    from granularity.utils.config import deep_merge

    return SimConfig.build(deep_merge(TINY, kw))


def test_run_folder_contents(tmp_path):
    res = simulate(tiny(), tmp_path, progress=False)
    for name in ("config.json", "env.json", "metrics.jsonl", "result.json", "figures/errors.png", "figures/alignment.png"):
        assert (tmp_path / name).exists(), name
    z = np.load(tmp_path / "alignment" / "seed_0_fine.npz")
    assert z["alignment"].shape[1:] == (6 * 4, 2 + 6)  # (T, N, M)
    assert z["steps"][0] == 0 and z["steps"][-1] == 40
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {x["source"] for x in lines} == {"coarse", "fine"} and {x["seed"] for x in lines} == {0, 1}
    assert set(res["errors"]) == {"coarse", "fine"}
    assert set(res["errors"]["fine"]) == {"map", "probe", "finetune"}
    assert res["errors"]["fine"]["map"]["hard"]["n"] == 2


def test_same_seed_same_metrics_and_batching_does_not_matter(tmp_path):
    a = simulate(tiny(), tmp_path / "a", progress=False)
    b = simulate(tiny(seed_batch=2), tmp_path / "b", progress=False)
    for src in ("coarse", "fine"):
        for proto in ("map", "probe", "finetune"):
            for kind in ("easy", "hard"):
                va = a["errors"][src][proto][kind]["values"]
                vb = b["errors"][src][proto][kind]["values"]
                assert np.allclose(va, vb, atol=0.011), (src, proto, kind)
    c = simulate(tiny(), tmp_path / "c", progress=False)
    assert a["errors"] == c["errors"]  # identical on CPU


def test_resume_skips_finished_seeds_and_extends(tmp_path):
    simulate(tiny(), tmp_path, progress=False)
    before = (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns
    res = simulate(tiny(seeds=3), tmp_path, progress=False)
    assert (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns == before
    assert res["seeds"] == [0, 1, 2]


def test_interrupt_keeps_finished_seeds(tmp_path, monkeypatch):
    import granularity.theory.experiment as ex

    real = ex.run_seed_batch
    calls = []

    def flaky(cfg, seeds, device, progress=None, partial=None):
        calls.append(seeds)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, seeds, device, progress, partial)

    monkeypatch.setattr(ex, "run_seed_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        simulate(tiny(), tmp_path, progress=False)
    assert (tmp_path / "seeds" / "seed_0.json").exists()
    assert not (tmp_path / "seeds" / "seed_1.json").exists()
    monkeypatch.setattr(ex, "run_seed_batch", real)
    reference = simulate(tiny(), tmp_path / "ref", progress=False)
    resumed = simulate(tiny(), tmp_path, progress=False)
    assert resumed["errors"] == reference["errors"]


def test_other_config_in_folder_is_refused(tmp_path):
    simulate(tiny(seeds=1), tmp_path, progress=False)
    with pytest.raises(GranularityError, match="different config"):
        simulate(tiny(seeds=1, data={"k": 2}), tmp_path, progress=False)


def test_memory_estimate_refuses_too_big():
    cfg = tiny()
    assert estimate_memory(cfg) > 0
    with pytest.raises(GranularityError, match="GiB of memory"):
        check_memory(cfg, limit=1000)


def test_generalisations_run(tmp_path):
    """Each generalisation runs through the whole engine (deep tree trains at every level)."""
    cfg = tiny(data={"k": 2, "deeper": [2], "P": 8}, transfer={"sources": [1, 2, 3], "target": 1}, seeds=1)
    res = simulate(cfg, tmp_path / "deep", progress=False)
    assert set(res["errors"]) == {"1", "2", "3"}
    cfg = tiny(data={"K": 3, "k": [1, 2, 3], "train_hard_fraction": 0.2, "tail_exponent": 1.0,
                     "views_common": 2}, seeds=1)
    res = simulate(cfg, tmp_path / "mix", progress=False)
    assert res["errors"]["fine"]["map"]["easy"]["n"] == 1


def test_source_coarser_than_target_rejected():
    with pytest.raises(GranularityError, match="coarser than transfer.target"):
        tiny(data={"deeper": [2]}, transfer={"target": 2, "sources": [1]})


def test_phase_diagram(tmp_path):
    base = {**TINY, "seeds": 1, "transfer": {**TINY["transfer"], "protocols": ["map"]}}
    phase = run_phase(base, "data.k=2,3", "data.sigma=0.1", tmp_path, progress=False)
    assert phase["x_values"] == [2, 3] and phase["y_values"] == [0.1]
    assert np.isfinite(np.asarray(phase["grids"]["coarse"])).all()
    assert (tmp_path / "phase.png").exists()
    (tmp_path / "phase.png").unlink()
    again = build_phase(tmp_path)
    assert again["grids"] == phase["grids"] and (tmp_path / "phase.png").exists()
    with pytest.raises(GranularityError, match="key=v1,v2"):
        run_phase(base, "data.k", "data.sigma=0.1", tmp_path / "bad", progress=False)


def test_mid_training_checkpoint_resumes_identically(tmp_path, monkeypatch):
    """Interrupt inside pretraining (after a checkpoint), resume: same result as uninterrupted."""
    import granularity.theory.train as tr

    cfg = tiny(seeds=2, seed_batch=2, checkpoint_every=7)
    reference = simulate(cfg, tmp_path / "ref", progress=False)
    real_step = tr.PatchCNN.step
    count = {"n": 0}

    def dying_step(self, *a, **k):
        count["n"] += 1
        if count["n"] == 40 + 25:  # inside the fine model's pretraining, after checkpoints
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(tr.PatchCNN, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg, tmp_path / "run", progress=False)
    partial = list((tmp_path / "run" / "partial").glob("*.pt"))
    assert len(partial) == 1
    import torch

    state = torch.load(partial[0], weights_only=False)
    assert "coarse" in state["done"] and state["current"]["src"] == "fine"
    assert 0 < state["current"]["state"]["step"] < 40
    monkeypatch.setattr(tr.PatchCNN, "step", real_step)
    count["n"] = 0
    resumed = simulate(cfg, tmp_path / "run", progress=False)
    assert resumed["errors"] == reference["errors"]
    assert resumed["alignment_final"] == reference["alignment_final"]
    assert not list((tmp_path / "run" / "partial").glob("*.pt"))  # cleaned up once saved


# --- issue 19 ----------------------------------------------------------------------------------


def test_hard_errors_follow_the_target_level(tmp_path):
    """The issue's repro, smaller: target level 2 of a 3-level tree. Hard test samples lack the
    level-1 and level-2 features, so the level-2 model is at chance on them (easy: near 0), while
    the leaf model's map still reads the level-3 features."""
    cfg = tiny(data={"d": 32, "P": 6, "k": 2, "deeper": [2]}, seeds=2, seed_batch=2,
               train={"steps": 120}, transfer={"sources": [2, 3], "target": 2, "protocols": ["map"]})
    assert cfg.data.hard_level == 2
    err = simulate(cfg, tmp_path, progress=False, figures=False)["errors"]
    for src in ("2", "3"):
        assert err[src]["map"]["easy"]["mean"] < 0.1, src
    assert err["2"]["map"]["hard"]["mean"] > 0.3  # chance on 4 classes is 0.75
    assert min(err["2"]["map"]["hard"]["values"]) > err["2"]["map"]["easy"]["mean"] + 0.2


def test_level_keys_sort_numerically_and_the_finest_is_labelled_fine(tmp_path, monkeypatch):
    """An 11-level tree (branching 1 below the subclasses): table and figure list level 2 before
    level 10, and '(fine)' marks level 11."""
    import matplotlib.figure

    from granularity.theory.experiment import format_table

    cfg = tiny(data={"d": 32, "P": 11, "k": 1, "s": 1, "deeper": [1] * 9}, seeds=1,
               train={"steps": 3}, transfer={"sources": ["fine"], "protocols": ["map"], "n_test": 10})
    assert cfg.data.levels == 11
    labels = []

    def record(fig, *a, **k):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                labels.append([t.get_text() for t in ax.get_legend().get_texts()])

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    res = simulate(cfg, tmp_path, progress=False)
    line = next(x for x in format_table(res).splitlines() if x.strip().startswith("fine:"))
    levels = [int(part.split(":")[0].split()[-1]) for part in line.split(":", 1)[1].split(", ")]
    assert levels == list(range(1, 12))
    alignment_legend = labels[-1]
    assert alignment_legend[0] == "common (level 1)" and alignment_legend[-1] == "level 11 (fine)"
    assert [x for x in alignment_legend if "(fine)" in x] == ["level 11 (fine)"]
    assert alignment_legend[1:3] == ["level 2", "level 3"]
