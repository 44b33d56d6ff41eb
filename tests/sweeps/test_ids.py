"""Run ids hash what determines a run's result, not how it is launched: one rule for both kinds
(the simulator's own config hash leaves out name, device and checkpoint cadence)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granularity.errors import GranularityError
from granularity.sweeps.kinds import SIM_RUN_ONLY, get_kind
from granularity.sweeps.spec import expand
from granularity.utils.config import deep_merge
from granularity.utils.io import write_json

from sweep_helpers import TINY_BASE

FAST = settings(max_examples=30, deadline=None)
TRANSFER = {"kind": "transfer", "preset": "study-quick", "axes": {"source": ["target", "leaf"]}, "seeds": 2}


def ids(spec: dict) -> list[str]:
    return [r.run_id for r in expand(spec).runs]


def sim(base: dict | None = None, **kw) -> dict:
    return {"kind": "simulate", "base": deep_merge(TINY_BASE, base or {}), "axes": {"data.k": [2, 3]}, "seeds": 2, **kw}


def test_the_simulate_rule_is_the_simulators_own():
    from granularity.theory.experiment import _RUN_ONLY

    assert set(SIM_RUN_ONLY) == set(_RUN_ONLY)


@FAST
@given(name=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12),
       device=st.sampled_from(["auto", "cpu", "cuda"]), every=st.integers(0, 10_000))
def test_simulate_ids_ignore_name_device_and_checkpoints(name, device, every):
    assert ids(sim({"name": name, "device": device, "checkpoint_every": every})) == ids(sim())


def test_a_preset_and_its_overrides_written_out_are_one_run():
    from granularity.theory.presets import get_preset

    quick = {"kind": "simulate", "preset": "quick", "seeds": 2}
    seed_keys = get_kind("simulate").seed_keys  # set per run by the sweep's seeds
    written = {"kind": "simulate", "seeds": 2,
               "base": {k: v for k, v in get_preset("quick").overrides.items() if k not in seed_keys}}
    assert expand(quick).runs[0].config["name"] == "quick" and expand(written).runs[0].config["name"] == "custom"
    assert ids(quick) == ids(written)


@FAST
@given(device=st.sampled_from(["auto", "cpu", "cuda"]), workers=st.integers(0, 64), ckpt=st.booleans())
def test_transfer_ids_ignore_device_workers_and_checkpoints(device, workers, ckpt):
    # float32 (bf16 False): with bf16 "auto" (the study's default) the device decides the arithmetic
    spec = {**TRANSFER, "base": {"bf16": False, "device": device, "workers": workers, "save_checkpoints": ckpt}}
    assert ids(spec) == ids({**TRANSFER, "base": {"bf16": False}})


@pytest.mark.parametrize("flag,value", [("bf16", True), ("bf16", "auto"), ("tf32", True)])
def test_with_device_dependent_arithmetic_the_device_is_part_of_the_id(flag, value):
    cpu, cuda = ({**TRANSFER, "base": {"bf16": False, flag: value, "device": d}} for d in ("cpu", "cuda"))
    assert set(ids(cpu)).isdisjoint(ids(cuda))
    assert set(ids(cpu)).isdisjoint(ids({**TRANSFER, "base": {"bf16": False}}))  # and the flag itself


@pytest.mark.parametrize("spec, change", [
    (sim(), {"base": deep_merge(TINY_BASE, {"train": {"lr": 0.25}})}),
    (sim(), {"base": deep_merge(TINY_BASE, {"data": {"d": 40}})}),
    (sim(), {"seeds": [2, 3]}),
    (TRANSFER, {"base": {"pretrain.lr": 0.01}}),
    (TRANSFER, {"base": {"data_seed": 1}}),
    (TRANSFER, {"base": {"eval_batch_size": 500}}),
    (TRANSFER, {"base": {"deterministic": True}}),
    (TRANSFER, {"seeds": [2, 3]}),
])
def test_result_relevant_fields_change_the_id(spec, change):
    assert set(ids(spec)).isdisjoint(ids({**spec, **change}))


def test_runs_that_differ_only_in_run_only_fields_are_duplicates():
    with pytest.raises(GranularityError, match="same config .* apart from fields that do not change results"):
        expand({**TRANSFER, "base": {"bf16": False}, "axes": {"device": ["cpu", "auto"]}})
    with pytest.raises(GranularityError, match="same config"):
        expand(sim(axes={"checkpoint_every": [0, 5]}))


def test_a_finished_transfer_folder_is_adopted_across_run_only_fields(tmp_path):
    kind = get_kind("transfer")
    cfg = kind.build(expand({**TRANSFER, "base": {"bf16": False}}).runs[0].config)
    write_json(tmp_path / "result.json", {"target_error": 0.1})
    write_json(tmp_path / "config.json", {**cfg.to_dict(), "workers": 3, "device": "cpu", "save_checkpoints": False})
    assert kind.is_complete(tmp_path, cfg)
    write_json(tmp_path / "config.json", {**cfg.to_dict(), "data_seed": 5})
    assert not kind.is_complete(tmp_path, cfg)


def test_an_interrupted_transfer_run_resumes_across_run_only_fields(tmp_path, make_fmnist, one_thread):
    from granularity.engine.run import run_transfer

    kind = get_kind("transfer")
    raw = {"data_root": str(make_fmnist(60, 30)), "train_size": None, "test_size": None, "device": "cpu",
           "model": {"options": {"width": 2}}, "pretrain": {"epochs": 2, "batch_size": 16},
           "transfer": {"epochs": 1, "batch_size": 16}}
    cfg, other = kind.build(raw), kind.build({**raw, "workers": 2})  # in-memory data: workers unused
    full = run_transfer(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):  # cut in pretraining epoch 2, after epoch 1's checkpoint
        run_transfer(cfg, tmp_path / "cut", stop_after_steps=5)
    assert not kind.is_complete(tmp_path / "cut", other)
    resumed = kind.run(other, tmp_path / "cut")  # the engine alone refuses: "another config"
    assert resumed["target_acc"] == full["target_acc"]
    assert resumed["per_fine_class_target_acc"] == full["per_fine_class_target_acc"]
    assert kind.is_complete(tmp_path / "cut", cfg) and kind.is_complete(tmp_path / "cut", other)
