"""The ``cue`` data option: planted exactly as planned on a loaded data set, easy/hard versions
kept row for row, one-line option errors, and the cue settings in the fingerprint and run id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.data import load_dataset
from granularity.data.cues import NO_CUE, cue_patterns, cue_present
from granularity.errors import GranularityError


def _load(root, **cue):
    return load_dataset("fashion-mnist", root=root, download=False, cue=cue) if cue else load_dataset(
        "fashion-mnist", root=root, download=False)


@pytest.mark.parametrize("rho,leak,strength,level", [(0.37, 0.25, 0.5, 2), (1.0, 0.0, 1.0, 1), (0.9, 0.5, 1.0, 3)])
def test_cue_option_is_planted_exactly_as_planned(make_fmnist, rho, leak, strength, level):
    root = make_fmnist(240, 60)
    plain = _load(root)
    ds = _load(root, rho=rho, leak=leak, strength=strength, level=level, size=3, seed=5)
    n_groups = plain.hierarchy.num_classes(level)
    pats = cue_patterns(n_groups, 3, seed=5)
    for name in ("train", "test"):
        split, orig = getattr(ds, name), getattr(plain, name)
        assert torch.equal(split.y, orig.y)
        assert torch.equal(split.variants["hard"], orig.x)  # cue-free: the original images, bit for bit
        coarse = np.asarray(plain.hierarchy.relabel(orig.y.numpy(), level))
        found = cue_present(split.x, pats, strength, (0, 0), original=orig.x)
        counts = {"with_cue": 0, "own_cue": 0, "other_cue": 0}
        for g in range(n_groups):
            mine, n_g = found[coarse == g], int((coarse == g).sum())
            k = round(rho * n_g)
            assert int((mine != NO_CUE).sum()) == k  # exactly round(rho * n_g) images of class g carry a cue
            assert int(((mine != NO_CUE) & (mine != g)).sum()) == round(leak * k)  # exactly that many leaked
            counts["with_cue"] += k
            counts["other_cue"] += round(leak * k)
        counts["own_cue"] = counts["with_cue"] - counts["other_cue"]
        assert ds.info["cue"]["counts"][name] == {"n": len(coarse), **counts}
        easy = split.variants["easy"]
        assert np.array_equal(cue_present(easy, pats, strength, (0, 0), original=orig.x), coarse)  # every image its own cue
        # easy differs from hard exactly on the cue's patch of every image, nowhere else
        differs = (easy != orig.x)
        assert differs.flatten(1).any(1).all() and not differs[:, :, 3:, :].any() and not differs[:, :, :, 3:].any()
        assert torch.equal(split.x[found == NO_CUE], orig.x[found == NO_CUE])  # no cue: untouched


def test_subsets_keep_the_versions_row_for_row(make_fmnist):
    root = make_fmnist(240, 60)
    ds, plain = _load(root, rho=0.5, level=2), _load(root)
    sub = ds.subset(train=50, test=20, seed=3)
    ref = plain.subset(train=50, test=20, seed=3)
    assert torch.equal(sub.train.variants["hard"], ref.train.x) and torch.equal(sub.test.variants["hard"], ref.test.x)
    idx = [5, 0, 17]
    part = sub.train.take(idx)
    for name in ("easy", "hard"):
        assert torch.equal(part.variants[name], sub.train.variants[name][idx])
    assert torch.equal(part.x, sub.train.x[idx])


@pytest.mark.parametrize("cue,match", [
    ({"rhoo": 1}, r"Unknown config key 'rhoo' \(did you mean 'rho'\?\); valid keys here are: corner, leak, level, rho"),
    ({"rho": 2}, r"Invalid value for 'rho': Input should be less than or equal to 1"),
    ({"level": 4}, r"'cue.level' must be a hierarchy level in \[1, 3\]. Got 4"),
    ({"size": 3, "corner": [26, 0]}, r"must fit in the 28x28 images"),
    (3, r"The data option 'cue' must be a mapping of rho, strength"),
])
def test_cue_option_errors_are_one_line(make_fmnist, cue, match):
    with pytest.raises(GranularityError, match=match) as exc:
        load_dataset("fashion-mnist", root=make_fmnist(240, 60), download=False, cue=cue)
    assert "\n" not in str(exc.value)


def test_cue_option_needs_in_memory_images(tmp_path):
    import pandas as pd

    path = tmp_path / "t.csv"
    pd.DataFrame({"f1": np.arange(20.0), "coarse": ["a", "b"] * 10, "fine": ["a1", "b1", "a2", "b2"] * 5}).to_csv(path, index=False)
    with pytest.raises(GranularityError, match=r"The data option 'cue' needs in-memory uint8 images \(N, C, H, W\); data set 'table' has torch.float32"):
        load_dataset("table", root=path, label_columns=["coarse", "fine"], cue={"rho": 1})


def test_cue_option_errors_exit_2_from_the_cli(cli, make_fmnist):
    root = make_fmnist(240, 60)
    for opt, match in (("cue.rhoo=1", "did you mean 'rho'"), ("cue.strength=0", "strength"), ("cue=1", "must be a mapping")):
        code, _, err = cli("transfer", "--data-root", root, "--data-option", opt, "--dry-run")
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fingerprint_and_run_id_change_with_the_cue(make_fmnist):
    from granularity.data.fingerprint import data_fingerprint
    from granularity.sweeps.spec import run_id
    from granularity.engine.config import TransferConfig

    root = make_fmnist(240, 60)
    settings = [None, {"rho": 1.0}, {"rho": 0.5}, {"rho": 1.0, "strength": 0.5}, {"rho": 1.0, "leak": 0.2},
                {"rho": 1.0, "size": 3}, {"rho": 1.0, "level": 2}, {"rho": 1.0, "seed": 1}]
    fps, ids = set(), set()
    for cue in settings:
        opts = {} if cue is None else {"cue": cue}
        cfg = TransferConfig.build({"data_root": str(root), "data_options": opts})
        ds = load_dataset("fashion-mnist", root=root, download=False, **cfg.data_options)
        fps.add(data_fingerprint(ds, cfg.data_options, root)["fingerprint"])
        ids.add(run_id("transfer", cfg.to_dict()))
    assert len(fps) == len(settings) and len(ids) == len(settings)
    # the same cue spelt with or without its defaults is one run
    short = TransferConfig.build({"data_options": {"cue": {"rho": 1.0}}}).to_dict()
    full = TransferConfig.build({"data_options": {"cue": {"rho": 1, "strength": 1.0, "size": 4, "leak": 0.0,
                                                           "corner": [0, 0], "level": 1, "seed": 0}}}).to_dict()
    assert run_id("transfer", short) == run_id("transfer", full)


def test_design_plants_as_its_plan(make_fmnist):
    """The bridge design plants through :func:`plant` with its own draw: the cue found in every
    pretraining image is the one :func:`plan_cues` draws with the design's generator."""
    from granularity.data.cues import plan_cues
    from granularity.experiments.designs import _rng, build_cell_data, cells, design_config

    ds = _load(make_fmnist(240, 60))
    cfg = design_config("bridge", {"seeds": [0], "pretrain_size": 100, "val_size": 20, "test_size": 30,
                                   "transfer_per_class": [5], "cue": {"rho": 0.6, "leak": 0.3}})
    cell = cells(cfg)[0]
    data = build_cell_data(cfg, cell, 0, ds)
    coarse = data.group[data.leaf_pre]
    plan = plan_cues(coarse, data.n_groups, 0.6, 0.3, _rng(0, "pretrain"))
    assert np.array_equal(cue_present(data.x_pre, cue_patterns(data.n_groups, 4, cfg.cue_seed), 1.0), plan)
    assert data.cue_counts["pretrain"] == {"n": 100, "with_cue": int((plan >= 0).sum()), "own_cue": int((plan == coarse).sum()),
                                           "other_cue": int(((plan >= 0) & (plan != coarse)).sum())}


def _run(tmp_path, root, mode, cue, name):
    from granularity.engine.run import run_transfer

    cfg = {"data_root": str(root), "data_options": {"download": False, "cue": cue}, "train_size": None, "val_size": 40,
           "target": 2, "source": "leaf", "device": "cpu", "model": {"name": "cnn", "options": {"width": 4}},
           "pretrain": {"epochs": 1, "batch_size": 32, "augment": False},
           "transfer": {"protocol": mode, "epochs": 1, "batch_size": 32}, "save_checkpoints": False}
    return run_transfer(cfg, tmp_path / name)


@pytest.mark.parametrize("mode", ["map", "probe", "finetune"])
def test_engine_reports_hard_and_easy_errors_pinned_to_the_main_path(tmp_path, make_fmnist, one_thread, mode):
    """rho 0: the test and validation images are their cue-free versions, so the hard figures
    must equal the main ones (computed by another code path); rho 1: likewise the easy ones."""
    root = make_fmnist(240, 60)
    none = _run(tmp_path, root, mode, {"rho": 0.0, "level": 2}, "rho0")
    full = _run(tmp_path, root, mode, {"rho": 1.0, "level": 2}, "rho1")
    assert none["hard_error"] == none["target_error"] and none["val"]["hard_error"] == none["val"]["target_error"]
    assert full["easy_error"] == full["target_error"] and full["val"]["easy_error"] == full["val"]["target_error"]
    assert none["variants"]["hard"]["per_fine_class_target_acc"] == none["per_fine_class_target_acc"]
    for r in (none, full):
        assert set(r["variants"]) == {"easy", "hard"} and r["data"]["options"]["cue"]["level"] == 2
        assert r["cue"]["counts"]["train"]["with_cue"] == (240 if r is full else 0)
    assert none["data"]["fingerprint"] != full["data"]["fingerprint"]


def test_dotted_data_option_keys_nest():
    import click

    from granularity.cli.transfer import _data_options

    assert _data_options(("cue.rho=0.9", "cue.corner=0,2", "download=false")) == {
        "cue": {"rho": 0.9, "corner": [0, 2]}, "download": False}
    with pytest.raises(click.BadParameter, match="'cue' is given both as a value and as a mapping"):
        _data_options(("cue=1", "cue.rho=1"))
