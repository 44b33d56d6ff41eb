"""The advisor's race and figures, on synthetic validation/test errors (no training)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from granularity.errors import GranularityError
from granularity.experiments.advise import (
    AdviseConfig, candidate_list, ci_of_difference, confirmation_runs, decide, replay, sentence, summarise,
)
from granularity.hierarchy import fashion_mnist_hierarchy


def fake_errors(means: dict[str, float], seeds: int, noise: float = 0.002, seed: int = 0):
    """val/test errors per (candidate, seed): a shared per-seed effect (pairing) plus noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.02, seeds)  # seed effect common to all candidates: pairing removes it
    out = {}
    for c, m in means.items():
        for s in range(seeds):
            out[(c, s)] = {"val_error": m + shared[s] + rng.normal(0, noise),
                           "test_error": m + shared[s] + rng.normal(0, noise), "worst_subclass_error": 2 * m,
                           "seconds": 1.0, "num_source_classes": 4}
    return out


def run_race(cfg: AdviseConfig, cands: list[str], table):
    val = {}
    while True:
        race = replay(cfg, cands, val)
        if race.finished:
            return race, val
        assert race.next_runs, "an unfinished race must ask for runs"
        for key in race.next_runs:
            val[key] = table[key]["val_error"]


def test_candidates_fashion_mnist_levels_kmeans_random():
    h = fashion_mnist_hierarchy()
    cands = candidate_list(AdviseConfig(), h, target=2)
    assert cands == ["target", "level:3", "kmeans-within:8", "kmeans-within:16", "random:10"]
    cands = candidate_list(AdviseConfig(remove=["random:10"], add=["kmeans-global:40"]), h, target=1)
    assert cands == ["target", "level:2", "level:3", "kmeans-within:4", "kmeans-within:8", "kmeans-global:40"]


@pytest.mark.parametrize("kw,match", [
    ({"remove": ["level:9"]}, "not in the list"),
    ({"remove": ["target"]}, "cannot remove 'target'"),
    ({"add": ["kmeans-within"]}, "kmeans-within"),
    ({"candidates": ["target"]}, "at least one candidate"),
])
def test_candidate_errors(kw, match):
    with pytest.raises(GranularityError, match=match):
        candidate_list(AdviseConfig(**kw), fashion_mnist_hierarchy(), target=2)


def test_config_refuses_per_run_fields_and_bad_seeds():
    with pytest.raises(GranularityError, match="set by the advisor"):
        AdviseConfig.build({"run": {"source": "leaf"}})
    with pytest.raises(GranularityError, match="max_seeds"):
        AdviseConfig.build({"min_seeds": 5, "max_seeds": 3})


def test_race_drops_clearly_worse_keeps_baseline_and_recommends_better():
    means = {"target": 0.10, "level:3": 0.08, "random:10": 0.20, "kmeans-within:8": 0.12}
    table = fake_errors(means, 15)
    cfg = AdviseConfig(min_seeds=3, seeds_per_round=2, max_seeds=10)
    race, val = run_race(cfg, list(means), table)
    assert "random:10" in race.eliminated and race.eliminated["random:10"]["round"] == 0
    assert set(race.eliminated) == {"random:10", "kmeans-within:8"}
    assert "target" in race.alive and race.best == "level:3"
    # early stop: baseline and one contender left, significantly different -> fewer than 10 seeds
    assert len(race.seeds["level:3"]) < 10
    # eliminated candidates got fewer runs than the survivors (the budget went to contenders)
    assert len(race.seeds["random:10"]) == 3
    summ = summarise(cfg, race, table, {c: 4 for c in means})
    assert summ["decision"]["recommendation"] == "level:3" and summ["decision"]["confirmed_on_test"]
    d = summ["decision"]["test_diff_vs_target"]
    # the confirmation: fresh seeds 10-14, never raced on, paired by seed
    assert d["seeds"] == list(range(10, 15)) and not set(d["seeds"]) & set(race.seeds["level:3"])
    diffs = [table[("level:3", s)]["test_error"] - table[("target", s)]["test_error"] for s in d["seeds"]]
    assert d["mean"] == pytest.approx(np.mean(diffs)) and d["hi"] < 0
    text = sentence(summ, race.finished)
    assert text.startswith(f"Pretrain on level:3 (4 classes): target test error {100 * np.mean(diffs):+.1f} points ± ")
    assert "5 fresh paired seeds the race never saw" in text and "random:10: +" in text


def test_decision_waits_for_its_fresh_seeds():
    means = {"target": 0.10, "level:3": 0.08}
    table = fake_errors(means, 15)
    cfg = AdviseConfig(min_seeds=3, max_seeds=10)
    race, _ = run_race(cfg, list(means), table)
    need = confirmation_runs(cfg, race)
    assert need == [(c, s) for s in range(10, 15) for c in ("target", "level:3")]
    test = {k: v["test_error"] for k, v in table.items() if k[1] < 10}
    assert decide(cfg, race, test)["confirmation"] == "pending" and decide(cfg, race, test)["recommendation"] == "target"


def test_race_no_difference_says_so():
    means = {"target": 0.10, "level:3": 0.10}
    table = fake_errors(means, 11, noise=0.01, seed=3)
    race, _ = run_race(AdviseConfig(min_seeds=3, max_seeds=6), list(means), table)
    summ = summarise(AdviseConfig(min_seeds=3, max_seeds=6), race, table, {"target": 4, "level:3": 10})
    if summ["decision"]["recommendation"] == "target":  # with equal means the CI almost always covers 0
        assert sentence(summ, race.finished).startswith("No candidate beats the target labels")


def test_race_is_replayable_and_respects_partial_rounds():
    means = {"target": 0.10, "level:3": 0.09, "random:10": 0.3}
    table = fake_errors(means, 10)
    cfg = AdviseConfig(min_seeds=3, max_seeds=7)
    race_all, val = run_race(cfg, list(means), table)
    # dropping one run of the last round: the race stops there and asks exactly for it
    last = max(val, key=lambda k: (k[1], k[0]))
    partial = {k: v for k, v in val.items() if k != last}
    again = replay(cfg, list(means), partial)
    assert not again.finished and again.next_runs == [last]
    # the same results in another insertion order: the same race
    shuffled = dict(sorted(val.items(), key=lambda kv: hash(kv[0]) % 97))
    r2 = replay(cfg, list(means), shuffled)
    assert r2.seeds == race_all.seeds and r2.eliminated == race_all.eliminated and r2.best == race_all.best


def test_ci_of_difference_matches_scipy():
    from scipy import stats

    d = [0.01, -0.02, 0.015, 0.03, 0.0]
    m, lo, hi = ci_of_difference(d, 0.95)
    res = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((res.low, res.high)) and m == pytest.approx(np.mean(d))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 0.5), min_size=2, max_size=5), st.integers(2, 4), st.integers(1, 3), st.integers(4, 8),
       st.integers(0, 10_000))
def test_race_invariants(means, min_seeds, step, max_seeds, seed):
    cands = ["target"] + [f"level:{i + 3}" for i in range(len(means) - 1)]
    table = fake_errors(dict(zip(cands, means)), max(max_seeds, min_seeds), seed=seed)
    cfg = AdviseConfig(min_seeds=min_seeds, seeds_per_round=step, max_seeds=max(max_seeds, min_seeds))
    race, val = run_race(cfg, cands, table)
    assert "target" in race.alive  # the baseline is never dropped
    for c in cands:  # seeds are always a prefix: paired across candidates
        assert race.seeds[c] == list(range(len(race.seeds[c])))
        assert min_seeds <= len(race.seeds[c]) <= cfg.max_seeds
    for c, e in race.eliminated.items():  # a dropped candidate was significantly worse on validation
        assert e["ci"][0] > 0 and c != "target" and e["p"] <= e["threshold"]
    assert len(val) == sum(len(s) for s in race.seeds.values())
