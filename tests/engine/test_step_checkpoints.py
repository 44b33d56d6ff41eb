"""Progress and safety inside long epochs (issue 14 item 5): checkpoints every N steps, a run
interrupted at random steps and resumed each time ends bit-identical to an uninterrupted one on
the CPU; steps/s, images/s and ETA lines during an epoch; the cadence is not in a sweep's run id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.engine import TransferConfig, run_transfer
from granularity.utils.io import read_jsonl

from .conftest import tiny_config


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


@pytest.mark.parametrize("every, protocol", [(3, "finetune"), (1, "probe")])
def test_interrupted_at_random_steps_resumes_bit_identical(tiny, tmp_path, every, protocol):
    # 6 steps per epoch: 12 pretraining steps, 6 transfer steps; dropout-free CNN with augmentation
    base = tiny_config(transfer={"epochs": 1, "batch_size": 16, "lr": 0.02, "protocol": protocol}, save_checkpoints=True)
    full = run_transfer(base, tmp_path / "full", dataset=tiny)  # no mid-epoch checkpoints at all
    cfg = {**base, "checkpoint_every_steps": every}
    rng = np.random.default_rng(every)
    stops = 0
    while True:
        try:
            cut = run_transfer(cfg, tmp_path / "cut", dataset=tiny, stop_after_steps=int(rng.integers(1, 6)))
            break
        except KeyboardInterrupt:
            stops += 1
            assert stops < 40
    assert stops >= 4  # several interruptions, most of them inside an epoch
    for key in ("target_acc", "per_fine_class_target_acc", "levels", "pretrain_levels"):
        assert cut[key] == full[key]
    a, b = np.load(tmp_path / "full" / "predictions.npz"), np.load(tmp_path / "cut" / "predictions.npz")
    np.testing.assert_array_equal(a["margin"], b["margin"])  # bit for bit
    assert _strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == _strip(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    wa = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_step_checkpoint_holds_the_position(tiny, tmp_path):
    cfg = tiny_config(checkpoint_every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(cfg, tmp_path / "r", dataset=tiny, stop_after_steps=9)  # pretraining epoch 2, step 3
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert (ck["stage"], ck["epoch"], ck["partial"]["epoch"], ck["partial"]["step"]) == ("pretrain", 1, 2, 2)
    assert ck["partial"]["totals"][2] == 32  # images seen in the epoch: 2 steps of 16


def test_progress_lines_inside_an_epoch(tiny, tmp_path, capsys):
    run_transfer(tiny_config(progress_every_s=1e-9), tmp_path / "p", dataset=tiny, progress=True)
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if "pretrain epoch 1: step" in ln]
    assert len(lines) == 5  # steps 1..5 of 6 (the epoch's own line reports the end)
    assert all("steps/s" in ln and "images/s" in ln and "ETA" in ln for ln in lines)
    assert lines[0].startswith("[p] pretrain epoch 1: step 1/6,")


def test_cadence_is_not_in_the_run_id():
    from granularity.sweeps.kinds import get_kind

    kind = get_kind("transfer")
    a = TransferConfig.build({}).to_dict()
    b = TransferConfig.build({"checkpoint_every_steps": 500, "progress_every_s": 5}).to_dict()
    assert a != b and kind.result_config(a) == kind.result_config(b)


def test_new_fields_keep_old_configs_and_ids(tiny, tmp_path):
    """At their defaults the new fields are not dumped: config.json files and run ids of runs
    made before them stay valid; a resume may change the cadence (it changes no number)."""
    d = TransferConfig.build({}).to_dict()
    assert not {"data_options", "checkpoint_every_steps", "progress_every_s"} & set(d)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(tiny_config(), tmp_path / "r", dataset=tiny, stop_after_steps=4)
    full = run_transfer(tiny_config(), tmp_path / "full", dataset=tiny)
    res = run_transfer(tiny_config(checkpoint_every_steps=2), tmp_path / "r", dataset=tiny)
    assert res["target_acc"] == full["target_acc"] and res["levels"] == full["levels"]
