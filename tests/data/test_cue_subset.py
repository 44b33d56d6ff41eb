"""A ``train_size`` / ``test_size`` subset of a data set with a planted cue carries the cue rates
exactly: the cues are planned again on the subset's own rows (from their cue-free versions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from granularity.data import load_dataset
from granularity.data.cues import NO_CUE, cue_patterns, cue_present


@pytest.mark.parametrize("rho,leak", [(0.37, 0.25), (0.5, 0.0), (1.0, 0.0)])
def test_subset_carries_rho_and_leak_exactly(make_fmnist, rho, leak):
    root = make_fmnist(240, 60)
    ds = load_dataset("fashion-mnist", root=root, download=False, cue={"rho": rho, "leak": leak, "level": 2, "size": 3, "seed": 5})
    plain = load_dataset("fashion-mnist", root=root, download=False)
    sub, ref = ds.subset(train=50, test=21, seed=3), plain.subset(train=50, test=21, seed=3)
    pats = cue_patterns(plain.hierarchy.num_classes(2), 3, seed=5)
    for name in ("train", "test"):
        split, orig = getattr(sub, name), getattr(ref, name)
        assert torch.equal(split.variants["hard"], orig.x) and torch.equal(split.y, orig.y)  # same rows, cue-free kept
        coarse = np.asarray(plain.hierarchy.relabel(orig.y.numpy(), 2))
        found = cue_present(split.x, pats, 1.0, (0, 0), original=orig.x)
        with_cue = other = 0
        for g in np.unique(coarse):
            mine = found[coarse == g]
            k = round(rho * len(mine))
            assert int((mine != NO_CUE).sum()) == k  # exactly round(rho * n_g) of the subset's class g
            assert int(((mine != NO_CUE) & (mine != g)).sum()) == round(leak * k)
            with_cue, other = with_cue + k, other + round(leak * k)
        assert sub.info["cue"]["counts"][name] == {"n": len(coarse), "with_cue": with_cue, "own_cue": with_cue - other,
                                                   "other_cue": other}
    if rho == 1.0 and leak == 0.0:  # every image its own cue: the same images as the full split's plan
        assert torch.equal(sub.train.x, sub.train.variants["easy"]) and torch.equal(sub.train.x, ds.subset(train=50, seed=3).train.x)
