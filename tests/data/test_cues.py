"""The planted cue: exact counts in training, absent from every hard test image, present in every easy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.data.cues import NO_CUE, CueConfig, apply_cues, cue_patterns, cue_present, plan_cues
from granularity.errors import GranularityError


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))


def test_patterns_are_distinct_binary_and_seeded():
    p = cue_patterns(4, 4, seed=3)
    assert p.shape == (4, 4, 4) and set(np.unique(p)) <= {0, 255}
    assert len({q.tobytes() for q in p}) == 4 and all(0 < (q > 0).sum() < 16 for q in p)
    assert np.array_equal(p, cue_patterns(4, 4, seed=3)) and not np.array_equal(p, cue_patterns(4, 4, seed=4))
    with pytest.raises(GranularityError, match="'size' parameter 1 gives too few"):
        cue_patterns(4, 1)


@pytest.mark.parametrize("rho,leak", [(0.0, 0.0), (0.37, 0.0), (0.9, 0.25), (1.0, 0.5)])
def test_plan_counts_are_exact_per_class(rho, leak):
    rng = np.random.default_rng(0)
    coarse = np.repeat([0, 1, 2, 3], [101, 7, 250, 33])
    plan = plan_cues(coarse, 4, rho, leak, np.random.default_rng(1))
    for g, n in zip(range(4), [101, 7, 250, 33]):
        mine = plan[coarse == g]
        k = round(rho * n)
        assert int((mine != NO_CUE).sum()) == k  # present at the asked rate, counted exactly
        assert int(((mine != NO_CUE) & (mine != g)).sum()) == round(leak * k)  # leaked cues
    assert rng is not None and np.array_equal(plan, plan_cues(coarse, 4, rho, leak, np.random.default_rng(1)))


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_cue_found_exactly_where_planted(strength):
    x = _images(300)
    coarse = np.arange(300) % 3
    pats = cue_patterns(3, 4, seed=0)
    plan = plan_cues(coarse, 3, 0.6, 0.2, np.random.default_rng(0))
    cued = apply_cues(x, plan, pats, strength, (2, 3))
    found = cue_present(cued, pats, strength, (2, 3), original=x)
    assert np.array_equal(found, plan)
    # only the patch changes
    mask = torch.ones(28, 28, dtype=torch.bool)
    mask[2:6, 3:7] = False
    assert torch.equal(cued[:, :, mask], x[:, :, mask])
    # the input is not modified in place
    assert not torch.equal(cued, x)


def test_corner_must_fit():
    with pytest.raises(GranularityError, match="must fit in the 28x28 images"):
        apply_cues(_images(2), np.array([0, 1]), cue_patterns(2, 4), 1.0, (26, 0))


def test_leak_needs_two_classes():
    with pytest.raises(GranularityError, match="'leak' parameter needs at least 2"):
        plan_cues(np.zeros(5, dtype=int), 1, 1.0, 0.5, np.random.default_rng(0))


def test_config_rejects_out_of_range():
    with pytest.raises(GranularityError, match="rho"):
        CueConfig.build({"rho": 1.5})
