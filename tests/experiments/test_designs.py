"""The paired designs (bridge, bridge-phase, groupings, fewshot) end to end on tiny Fashion-MNIST files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from granularity.data.cues import NO_CUE, cue_patterns, cue_present
from granularity.errors import GranularityError
from granularity.experiments.designs import _fresh_model, build_cell_data, cells, design_config, transfers, unit_dir
from granularity.experiments.registry import run_study


def run_design(cfg, out, **kw):
    return run_study(cfg, out, design=cfg.design, **kw)


@pytest.fixture(scope="module")
def fm(make_fmnist):
    from granularity.data import load_dataset

    return load_dataset("fashion-mnist", root=make_fmnist(1200, 200))


def tiny(design: str, **kw):
    over = {"device": "cpu", "pretrain_size": 300, "val_size": 100, "test_size": 100,
            "model": {"name": "cnn", "options": {"width": 4}}, "pretrain": {"batch_size": 64}}
    over.update(kw)
    return design_config(design, over, quick=True)


def test_bridge_hard_images_cue_free_easy_cued_training_exact(fm):
    cfg = tiny("bridge", cue={"rho": 0.7, "strength": 1.0, "leak": 0.1})
    cell = cells(cfg)[0]
    d = build_cell_data(cfg, cell, 0, fm)
    pats = cue_patterns(d.n_groups, cell.cue.size, cfg.cue_seed)
    x_hard, leaf = d.evals["test_hard"]
    orig = fm.test.x[np.asarray(__import__("granularity.data.base", fromlist=["x"]).stratified_indices(fm.test.y, 100, 0))]
    assert torch.equal(x_hard, orig)  # hard images are the untouched originals
    assert (cue_present(x_hard, pats, 1.0, cell.cue.corner) == NO_CUE).all()  # no cue in any hard test image
    x_easy, _ = d.evals["test_easy"]
    assert np.array_equal(cue_present(x_easy, pats, 1.0, cell.cue.corner, original=x_hard), d.group[leaf])  # every easy one: own cue
    found = cue_present(d.x_pre, pats, 1.0, cell.cue.corner)
    coarse = d.group[d.leaf_pre]
    for g in range(d.n_groups):
        k = round(0.7 * (coarse == g).sum())
        assert (found[coarse == g] != NO_CUE).sum() == k  # exactly rho of each class
        assert ((found[coarse == g] != NO_CUE) & (found[coarse == g] != g)).sum() == round(0.1 * k)  # leaked
    assert d.cue_counts["pretrain"]["with_cue"] == int((found != NO_CUE).sum())


def test_arms_share_backbone_initialisation():
    a = _fresh_model(design_config("bridge"), (1, 28, 28), 4, seed=3, device="cpu")
    b = _fresh_model(design_config("bridge"), (1, 28, 28), 10, seed=3, device="cpu")
    fa, fb = a.state_dict(), b.state_dict()
    assert all(torch.equal(fa[k], fb[k]) for k in fa if not k.startswith("head."))
    assert a.head.out_features == 4 and b.head.out_features == 10


@pytest.mark.parametrize("design", ["bridge", "bridge-phase", "groupings", "fewshot"])
def test_design_end_to_end_and_resume(design, fm, tmp_path, monkeypatch):
    cfg = tiny(design)
    res = run_design(cfg, tmp_path, dataset=fm, progress=False, simulate=False)
    rows = res["table"]
    assert rows[0]["primary"] and sum(r["primary"] for r in rows) == 1
    assert json.loads((tmp_path / "study.json").read_text())["primary"] == cfg.primary.model_dump(mode="json")
    n_rows = len(cells(cfg)) * len(transfers(cfg))
    assert len({(r["cell"], r["transfer"]) for r in rows}) == n_rows
    for r in rows:  # the table is the per-seed values it says it is
        p = r["per_seed"]
        assert r["leaf_minus_target"]["mean"] == pytest.approx(np.mean(np.subtract(p["leaf"], p["target"])))
        assert r["target"]["n"] == len(cfg.seeds)
    # recompute one number from the prediction files
    r = rows[0]
    cell = next(c for c in cells(cfg) if c.name == r["cell"])
    evalset = {"hard_error": "test_hard", "target_error": "test"}[r["metric"]]
    errs = [float(np.mean((z := np.load(unit_dir(tmp_path, cell, s, "leaf") / r["transfer"] / "predictions.npz"))[f"pred_{evalset}"]
                          != z[f"target_{evalset}"])) for s in cfg.seeds]
    assert r["per_seed"]["leaf"] == pytest.approx(errs)
    for f in ("results.json", "results.csv", "report.md", "paired_difference.png"):
        assert (tmp_path / f).exists()
    from granularity.experiments.design_report import where_fine_labels_help

    page = where_fine_labels_help([tmp_path])
    assert f"| **{rows[0]['cell']}** | {rows[0]['transfer']} | {rows[0]['metric']} |" in page
    # resume: nothing is trained again, same table
    import granularity.experiments.designs as dz

    monkeypatch.setattr(dz, "_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = run_design(cfg, tmp_path, dataset=fm, progress=False, simulate=False)
    assert [r["leaf_minus_target"]["mean"] for r in again["table"]] == [r["leaf_minus_target"]["mean"] for r in rows]


def test_interrupted_unit_is_redone_identically(fm, tmp_path):
    cfg = tiny("bridge", protocols=["probe"], primary={"protocol": "probe"})
    first = run_design(cfg, tmp_path, dataset=fm, progress=False)
    cell = cells(cfg)[0]
    d = unit_dir(tmp_path, cell, 1, "leaf")
    (d / "probe-n20" / "result.json").unlink()  # as if killed before the transfer finished
    (d / "pretrain.pt").unlink()
    again = run_design(cfg, tmp_path, dataset=fm, progress=False)
    assert again["table"][0]["per_seed"] == first["table"][0]["per_seed"]


def test_design_config_errors(fm, tmp_path):
    with pytest.raises(GranularityError, match="primary.protocol 'map' must be one of the run protocols"):
        design_config("fewshot", {"primary": {"protocol": "map"}})
    for old in ({"modes": ["linear"]}, {"primary": {"mode": "linear"}}):  # the spelling before `protocol`: unknown
        with pytest.raises(GranularityError, match="Unknown config key '(modes|primary.mode)'"):
            design_config("bridge", old)
    with pytest.raises(GranularityError, match="'linear'"):
        design_config("bridge", {"protocols": ["linear"]})
    with pytest.raises(GranularityError, match="Unknown design 'brige'"):
        design_config("brige")
    with pytest.raises(GranularityError, match="primary.metric 'hard_error' needs a cue"):
        design_config("groupings", {"primary": {"metric": "hard_error"}})
    with pytest.raises(GranularityError, match="primary.cell 'nope' must be one of"):
        design_config("groupings", {"primary": {"cell": "nope"}})
    with pytest.raises(GranularityError, match="not_a_key"):
        design_config("bridge", {"not_a_key": 1})
    run_design(tiny("fewshot", protocols=["probe"], transfer_per_class=[2], primary={"transfer_per_class": 2}), tmp_path,
               dataset=fm, progress=False)
    with pytest.raises(GranularityError, match="holds a study with another config"):
        run_design(tiny("fewshot"), tmp_path, dataset=fm, progress=False)
    with pytest.raises(GranularityError, match="do not fit the 1200 training images"):
        run_design(tiny("groupings", pretrain_size=1150), tmp_path / "b", dataset=fm, progress=False)


def test_cli_design_quick_and_errors(cli, make_fmnist, tmp_path):
    root = make_fmnist(1200, 200)
    code, out, err = cli("study", "--dataset", "fashion-mnist", "--design", "fewshot", "--quick", "--data-root", root, "--device", "cpu",
                         "--quiet", "--out", tmp_path / "f", "--set", "pretrain_size=300", "--set", "val_size=50")
    assert code == 0, err
    assert "* confusable" in out and (tmp_path / "f" / "report.md").exists()
    code, out, err = cli("study", "--design", "groupings", "--quick", "--grouping", "0,1;2", "--data-root", root, "--out", tmp_path / "g")
    assert code == 2 and "leaves out 7 leaf class" in err and "Traceback" not in err
    code, out, err = cli("study", "--design", "bridge", "--quick", "--dry-run", "--grouping", "natural2", "--data-root", root)
    assert code == 0 and "4 pretraining runs (1 cells x 2 seeds x 2 arms)" in out
    code, out, err = cli("study", "--grouping", "natural2", "--quick")
    assert code == 2 and "--grouping applies to the designs bridge, bridge-phase, groupings, fewshot, not to levels" in err
    code, out, err = cli("study", "--design", "fewshot", "--quick", "--protocol", "probe", "--dry-run", "--data-root", root)
    assert code == 0 and '"protocols": [\n    "probe"\n  ]' in out and "8 transfers" in out  # 4 runs x probe-n2, probe-n20
    code, out, err = cli("study", "--design", "bridge", "--data-option", "cue.rho=1")
    assert code == 2 and "--data-option applies to the designs levels, not to bridge" in err


def test_shards_split_the_jobs_and_the_last_one_summarises(fm, tmp_path):
    cfg = tiny("bridge", protocols=["map"], primary={"protocol": "map"})
    assert run_design(cfg, tmp_path, dataset=fm, progress=False, shard=(0, 2)) is None  # seed 1 missing
    assert (unit_dir(tmp_path, cells(cfg)[0], 0, "leaf") / "map" / "result.json").exists()
    assert not (unit_dir(tmp_path, cells(cfg)[0], 1, "leaf") / "map").exists()
    res = run_design(cfg, tmp_path, dataset=fm, progress=False, shard=(1, 2))
    assert res is not None and res["table"][0]["target"]["n"] == 2
    with pytest.raises(GranularityError, match="'shard' parameter must be i/n"):
        run_design(cfg, tmp_path, dataset=fm, progress=False, shard=(2, 2))


def test_simulator_axes_match_the_real_grid(tmp_path, monkeypatch):
    import granularity.theory.experiment as ex
    from granularity.experiments.phase_bridge import plot_bridge_phase, real_grid, simulator_configs, simulator_phase

    cfgs = simulator_configs([0.5, 1.0], [0.25, 1.0])  # real SimConfigs: the axis values must validate
    assert [(c.data.train_hard_fraction, tuple(c.data.common_strength)) for _, _, _, c in cfgs] == [
        (0.5, (0.25, 0.25)), (0.0, (0.25, 0.25)), (0.5, (1.0, 1.0)), (0.0, (1.0, 1.0))]
    ran = []

    def fake_simulate(cfg, out, progress):
        ran.append(cfg.data.train_hard_fraction)
        hard = {"coarse": 0.1 + cfg.data.common_strength[0], "fine": 0.1}
        from granularity.utils.io import write_json

        write_json(out / "result.json", {"errors": {src: {p: {"hard": {"mean": v}} for p in ("map", "probe")} for src, v in hard.items()}})

    monkeypatch.setattr(ex, "simulate", fake_simulate)
    monkeypatch.setattr(ex, "load_result", lambda out: __import__("json").loads((out / "result.json").read_text()))
    (tmp_path / "cells").mkdir()
    for name, *_ in cfgs:
        (tmp_path / "cells" / name).mkdir()
    sim = simulator_phase([0.5, 1.0], [0.25, 1.0], tmp_path)
    assert len(ran) == 4 and sim["probe"]["grids"]["coarse"] == [[0.35, 0.35], [1.1, 1.1]]  # rows strength, columns rho
    again = simulator_phase([0.5, 1.0], [0.25, 1.0], tmp_path)  # resumed: nothing simulated again
    assert len(ran) == 4 and again == sim
    rows = [{"metric": "hard_error", "protocol": m, "rho": r, "strength": s, "leaf_minus_target": {"mean": r - s, "p_t": 0.01}}
            for m in ("map", "probe") for r in (0.5, 1.0) for s in (0.25, 1.0)]
    rhos, sts, mean, _ = real_grid({"table": rows}, "probe")
    assert rhos == [0.5, 1.0] and sts == [0.25, 1.0] and mean[1, 0] == pytest.approx(0.5 - 1.0)
    assert plot_bridge_phase({"table": rows}, tmp_path, sim) == ["phase_real_vs_simulator.png"]
    assert (tmp_path / "phase_real_vs_simulator.png").exists()


def test_partial_stage_override_keeps_the_design_defaults():
    # --epochs 3 must change only the epochs, not reset batch size / augmentation / width
    cfg = design_config("bridge", {"pretrain": {"epochs": 3}, "transfer": {"lr": 0.01}, "model": {"name": "cnn"}})
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.augment) == (3, 32, False)
    assert (cfg.transfer.lr, cfg.transfer.batch_size, cfg.transfer.epochs) == (0.01, 32, 3)
    assert cfg.model.options == {"width": 16}
    from granularity.experiments.designs import DesignConfig

    assert DesignConfig.build({"pretrain": {"epochs": 1}, "primary": {"metric": "target_error"}}).pretrain.batch_size == 32


def test_design_models_are_channels_last_on_the_cpu():
    """The designs train in float32 in the engine's CPU layout (channels-last): the same numbers
    up to the order of the convolutions' sums, about 1.5x the images/s of the default layout."""
    m = _fresh_model(design_config("bridge"), (1, 28, 28), 4, seed=0, device="cpu")
    conv = m.features[1][0].weight  # (32, 16, 3, 3): the layouts differ (for 1 input channel they coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
