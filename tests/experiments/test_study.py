"""A tiny end-to-end study on the CPU (seconds), resume by skipping finished runs."""

from __future__ import annotations

import csv

import pytest

from granularity.errors import GranularityError
from granularity.experiments import StudyConfig, run_study
from granularity.experiments.study import arms

from engine.conftest import tiny_dataset  # tests/ is on sys.path (rootdir import mode)


RUN_KEYS = ("dataset", "target", "train_size", "test_size", "device", "model", "pretrain", "transfer")


def tiny_study(**kw) -> dict:
    """A tiny study config; keyword arguments named like run settings go under ``run``."""
    cfg = {
        "seeds": [0, 1], "kmeans_sizes": [4], "random_classes": [3], "rare": {"classes": ["b"], "keep_fraction": 0.25},
        "reference_seeds": 2,
        "run": {"dataset": "tiny", "target": 1, "train_size": None, "test_size": None, "device": "cpu",
                "model": {"name": "cnn", "options": {"width": 4}},
                "pretrain": {"epochs": 1, "batch_size": 32}, "transfer": {"epochs": 1, "batch_size": 32}},
    }
    cfg["run"].update({k: v for k, v in kw.items() if k in RUN_KEYS})
    cfg.update({k: v for k, v in kw.items() if k not in RUN_KEYS})
    return cfg


def test_tiny_study_end_to_end(tmp_path):
    ds = tiny_dataset(n_train=160)
    res = run_study(tiny_study(train_size=96), tmp_path, dataset=ds, progress=False)
    names = [r["arm"] for r in res["table"]]
    assert names == ["target", "level:2", "kmeans-within:4", "kmeans-global:4", "random:3", "per-sample", "rare/target", "rare/leaf"]
    base = res["table"][0]
    assert base["target_error"]["n"] == 2 and "target_error_minus_baseline" not in base
    lvl = res["table"][1]
    assert lvl["num_source_classes"] == 4 and lvl["family"] == "hierarchy"
    assert lvl["target_error_minus_baseline"]["n"] == 2
    rare = res["table"][-1]
    assert {"rare_error", "common_error", "rare_error_minus_first_rare_arm"} <= set(rare)
    for f in ("results.json", "results.csv", "hard.npz", "study.json", *res["figures"]):
        assert (tmp_path / f).exists(), f
    hs = res["hard_samples"]
    assert "2 target-, 2 leaf-trained" in hs["rule"] and set(hs["hard_by_reference_labelling"]) == {"target", "leaf"}
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["leaf-seed1000", "leaf-seed1001", "target-seed1000", "target-seed1001"]
    assert set(res["figures"]) == {"error_vs_classes.png", "easy_vs_hard.png", "rare_subclasses.png"}
    with open(tmp_path / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(names)
    # rerunning skips every finished run (result.json files are left untouched)
    stamp = (tmp_path / "runs/target/seed0/result.json").stat().st_mtime_ns
    again = run_study(tiny_study(train_size=96), tmp_path, dataset=ds, progress=False)
    assert (tmp_path / "runs/target/seed0/result.json").stat().st_mtime_ns == stamp
    assert again["table"][0]["target_error"] == base["target_error"]


def test_study_errors(tmp_path):
    ds = tiny_dataset()
    with pytest.raises(GranularityError, match="coarser than the leaves"):
        run_study(tiny_study(target=2), tmp_path / "a", dataset=ds, progress=False)
    with pytest.raises(GranularityError, match="Unknown rare class 'bb'"):
        run_study(tiny_study(rare={"classes": ["bb"]}), tmp_path / "b", dataset=ds, progress=False)
    with pytest.raises(GranularityError, match="Unknown config key 'seed'"):
        StudyConfig.build({"seed": 1})


def test_default_arms_cover_the_paper():
    names = [a for a, _, _ in arms(StudyConfig(), depth=3)]
    assert names[:3] == ["target", "level:1", "level:3"]
    assert {"kmeans-within:20", "kmeans-global:20", "random:10", "per-sample", "rare/target", "rare/leaf"} <= set(names)


def test_map_mode_keeps_only_nesting_arms():
    cfg = StudyConfig(run={"transfer": {"protocol": "map"}})
    names = [a for a, _, _ in arms(cfg, depth=3)]
    assert names[:2] == ["target", "level:3"] and not any(n.startswith(("random", "kmeans-global", "level:1")) for n in names)


def test_reference_models_train_on_images_disjoint_from_the_study():
    from granularity.data.base import stratified_indices
    from granularity.experiments.study import reference_dataset, reference_jobs

    ds = tiny_dataset(n_train=160)
    cfg = StudyConfig.build(tiny_study(train_size=96))
    ref = reference_dataset(cfg, ds)
    used = ds.train.x[stratified_indices(ds.train.y, 96, cfg.run.data_seed)]
    assert len(ref.train) == 64
    flat = {bytes(r.numpy().tobytes()) for r in used}
    assert not any(bytes(r.numpy().tobytes()) in flat for r in ref.train.x)  # no study image is a reference image
    jobs = reference_jobs(cfg, ds)
    assert [j[1].source for j in jobs] == ["target", "target", "leaf", "leaf"] and all(j[1].train_size == 64 for j in jobs)
    assert reference_dataset(StudyConfig.build(tiny_study()), ds) is None  # train_size null: nothing left, no hard set


def test_study_holds_a_transfer_config_and_the_old_flat_keys_are_unknown():
    """Every run config is what the old field-by-field copy built, plus the run keys the study
    used to lack (workers, tf32, deterministic, eval_batch_size) now settable; the flat
    spelling of before ``run`` (run keys at the top) is an unknown key, no longer an alias."""
    from granularity.engine.config import TransferConfig
    from granularity.experiments.study import run_config

    new = tiny_study(train_size=96)
    cfg = StudyConfig.build(new)
    by_copy = TransferConfig(  # the field-by-field copy of before
        dataset="tiny", data_root=None, data_options={}, train_size=96, test_size=None, data_seed=0, target=1,
        source="kmeans-within:4", embedding="pca", rare=None, model=cfg.run.model, pretrain=cfg.run.pretrain,
        transfer=cfg.run.transfer, seed=1, device="cpu", bf16="auto", eval_every_epoch=False)
    assert run_config(cfg, "kmeans-within:4", 1, None).to_dict() == by_copy.to_dict()
    more = StudyConfig.build({**new, "run": {**new["run"], "workers": 2, "tf32": True, "eval_batch_size": 7}})
    rc = run_config(more, "leaf", 0, None)
    assert (rc.workers, rc.tf32, rc.eval_batch_size) == (2, True, 7)
    with pytest.raises(GranularityError, match="'run.source' for each arm"):
        StudyConfig.build({"run": {"source": "leaf"}})
    for old in ({"train_size": 5}, {"dataset": "tiny"}, {"target_level": 1}):
        with pytest.raises(GranularityError, match=f"Unknown config key '{next(iter(old))}'"):
            StudyConfig.build(old)
    with pytest.raises(GranularityError, match="Unknown config key 'run.transfer.mode'"):
        StudyConfig.build({"run": {"transfer": {"mode": "linear"}}})
    assert StudyConfig().run.test_size == 5000 and StudyConfig.build({"run": {"train_size": 5}}).run.test_size == 5000


def test_presets_and_table_text():
    from granularity.experiments.registry import REGISTRY
    from granularity.experiments.study import FULL, QUICK, format_table

    assert REGISTRY["levels"].presets == {"quick": QUICK, "full": FULL} and QUICK["run"]["train_size"] == 600
    assert StudyConfig.build(FULL).run.train_size is None and StudyConfig.build(FULL).seeds == [0, 1, 2, 3, 4]
    ci = {"mean": 0.25, "ci": 0.05, "n": 3}
    text = format_table({"table": [{"arm": "target", "num_source_classes": 4, "target_error": ci},
                                   {"arm": "rare/leaf", "num_source_classes": 10, "target_error": ci, "rare_error": ci}]})
    lines = text.splitlines()
    assert lines[0].split() == ["arm", "classes", "target_error", "rare_error"]
    assert lines[1].split()[:3] == ["target", "4", "0.250"] and lines[1].split()[-1] == "-"
    assert lines[2].split()[:2] == ["rare/leaf", "10"] and lines[2].count("0.250") == 2
