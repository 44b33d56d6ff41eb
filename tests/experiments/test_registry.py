"""The registered study designs and the one runner: every design is listed (registry, ``study
--help``), an unknown name is a one-line error, and a tiny registered design runs end to end,
resumes without recomputing a finished unit, shards and refuses a folder of another config."""

from __future__ import annotations

import json

import pytest

import granularity.experiments.runner as runner
from granularity.errors import GranularityError
from granularity.experiments.registry import REGISTRY, default_design, design_of, get_design
from granularity.experiments.runner import Design, Plan, Unit, run_design
from granularity.utils.config import Config
from granularity.utils.io import read_json, write_json

NAMES = ["levels", "bridge", "bridge-phase", "groupings", "fewshot", "wordnet-glosses"]


def test_every_design_is_registered_and_listed_in_help(cli):
    assert list(REGISTRY) == NAMES
    code, out, _ = cli("study", "--help")
    assert code == 0
    text = " ".join(out.split()).replace("- ", "-")  # click wraps lines at hyphens too
    assert "--design [" + "|".join(NAMES) + "]" in text
    for d in REGISTRY.values():
        assert f"{d.name}: {d.help}".replace("- ", "-") in text  # each with its one-line help
        for preset in d.presets.values():  # every preset is a valid config of its design
            assert d.config(dict(preset)).to_dict() == d.build(d.config(dict(preset))).to_dict()
        assert d.config({}).to_dict() == d.config(json.loads(json.dumps(d.config({}).to_dict()))).to_dict()  # study.json round trip
    assert default_design(None) == default_design("fashion-mnist") == "levels" and default_design("wordnet-glosses") == "wordnet-glosses"


def test_unknown_design_is_one_line_with_the_choices(cli):
    with pytest.raises(GranularityError, match=r"Unknown design 'brige' \(did you mean 'bridge'\?\); valid designs are: bridge, "):
        get_design("brige")
    code, _, err = cli("study", "--design", "brige")
    assert code == 2 and len(err.strip().splitlines()) == 1 and all(n in err for n in NAMES)


def test_results_files_name_their_design():
    assert design_of({"design": "bridge", "table": []}) == "bridge"
    assert design_of({"hard_samples": {}, "table": []}) == "levels"
    assert design_of({"table": [{"level": 2}]}) == "wordnet-glosses"
    assert design_of({"design": "nope", "table": []}) is None and design_of({"table": [{"arm": "x"}]}) is None


class ToyConfig(Config):
    seeds: list[int] = [0, 1, 2]
    arms: list[str] = ["a", "b"]


def toy_design(trained: list[str]) -> Design:
    """Units (arm, seed) whose 'training' writes result.json = seed * 10 + arm index; both arms
    of a seed are one group."""

    def plan(cfg, data):
        return Plan(cfg.arms, [Unit(a, s, {"value": s * 10 + i}, f"runs/{a}/seed{s}", group=f"seed{s}")
                               for s in cfg.seeds for i, a in enumerate(cfg.arms)], {"main": data})

    def train(cfg, plan):
        def one(unit, folder):
            trained.append(unit.folder)
            write_json(folder / "result.json", unit.config)
        return one

    def summarise(cfg, out, plan):
        return {"table": [{"arm": a, "values": {"sum": sum(read_json(out / u.folder / "result.json")["value"]
                                                            for u in plan.units if u.arm == a)}} for a in cfg.arms]}

    return Design(name="toy", help="a toy", contrast="none", config=ToyConfig.build, presets={}, flags={}, data_name=lambda c: "toy", load=lambda c: "data", plan=plan, train=train,
                  summarise=summarise, csv_columns=("arm", "total=values.sum"), figures=lambda s, out, sim: [],
                  describe=lambda s, out: "", dry_run=lambda c: "", report=lambda s: "# toy\n")


def test_a_registered_design_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    trained: list[str] = []
    toy = toy_design(trained)
    batches = []
    real = runner.execute_units
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **k: (batches.append([u.folder for u in units]),
                                                                           real(units, *a, **k)))
    res = run_design(toy, {}, tmp_path, progress=False)
    assert res["table"] == [{"arm": "a", "values": {"sum": 30}}, {"arm": "b", "values": {"sum": 33}}]
    assert (tmp_path / "results.csv").read_text().splitlines() == ["arm,total", "a,30", "b,33"]
    assert read_json(tmp_path / "study.json") == ToyConfig().to_dict() and (tmp_path / "report.md").read_text() == "# toy\n"
    assert read_json(tmp_path / "results.json")["figures"] == [] and "seconds_this_invocation" in res
    assert res["contrast"] == "none"  # the registered primary contrast, recorded with the results
    assert len(trained) == 6 and batches == [trained]  # one call of execute_units with every unit
    # rerun: nothing is trained again, the same table
    again = run_design(toy, {}, tmp_path, progress=False)
    assert len(trained) == 6 and again["table"] == res["table"] and batches[-1] == []
    # a unit whose result went missing is the only one trained
    (tmp_path / "runs/b/seed1/result.json").unlink()
    run_design(toy, {}, tmp_path, progress=False)
    assert trained[6:] == ["runs/b/seed1"] and batches[-1] == ["runs/b/seed1"]
    with pytest.raises(GranularityError, match="holds a study with another config"):
        run_design(toy, {"seeds": [0]}, tmp_path, progress=False)


def test_shards_take_whole_groups_and_the_last_one_summarises(tmp_path):
    trained: list[str] = []
    toy = toy_design(trained)
    assert run_design(toy, {}, tmp_path, progress=False, shard=(1, 2)) is None  # seed 1 only: others missing
    assert trained == ["runs/a/seed1", "runs/b/seed1"] and not (tmp_path / "results.json").exists()
    res = run_design(toy, {}, tmp_path, progress=False, shard=(0, 2))  # seeds 0 and 2: now complete
    assert sorted(trained) == sorted(f"runs/{a}/seed{s}" for a in "ab" for s in (0, 1, 2)) and res["table"][0]["values"]["sum"] == 30
    with pytest.raises(GranularityError, match="'shard' parameter must be i/n"):
        run_design(toy, {}, tmp_path, progress=False, shard=(2, 2))
