"""Generator tests: the samples carry exactly what their records say."""

import pytest
import torch

from granularity.errors import GranularityError
from granularity.theory.config import DataConfig
from granularity.theory.data import HierarchicalMultiView, build_tree, generator


def make(seed=0, **kw):
    return HierarchicalMultiView(DataConfig.build({"d": 64, "P": 8, "k": 4, **kw}), seed)


def reconstruct(dist, s):
    """Coefficient of every dictionary feature in every patch, from the records alone."""
    n, P = s.x.shape[:2]
    coef = torch.zeros(n, P, dist.M)
    rows = torch.arange(n)[:, None]
    noise = s.noise_features >= 0
    coef[noise.nonzero(as_tuple=True) + (s.noise_features[noise],)] = dist.cfg.gamma
    B, sp = s.block_patches.shape[1:]
    coef[rows.expand(n, B * sp), s.block_patches.reshape(n, -1), s.block_features.repeat_interleave(sp, 1)] = (
        s.block_strength.reshape(n, -1)
    )
    return coef


@pytest.mark.parametrize("dictionary", ["random", "standard"])
def test_dictionary_orthonormal(dictionary):
    dist = make(dictionary=dictionary)
    D = dist.dictionary
    assert D.shape == (2 + 8, 64)
    assert torch.allclose(D @ D.T, torch.eye(D.shape[0]), atol=1e-5)


def test_patches_carry_exactly_the_recorded_features():
    dist = make(sigma=0.0, common_strength=(0.5, 1.5), fine_strength=(0.8, 1.0), gamma=0.1)
    s = dist.sample(200, generator(3))
    coef = s.x @ dist.dictionary.T  # (n, P, M): exact since sigma = 0 and D orthonormal
    assert torch.allclose(coef, reconstruct(dist, s), atol=1e-5)
    # every patch is in the span of the dictionary (no other signal)
    assert torch.allclose(coef @ dist.dictionary, s.x, atol=1e-5)
    # strengths inside the configured ranges, s patches per block, blocks on distinct patches
    common, fine = s.block_strength[:, 0], s.block_strength[:, 1]
    assert common.min() >= 0.5 and common.max() <= 1.5 and common.std() > 0.1
    assert fine.min() >= 0.8 and fine.max() <= 1.0
    assert s.block_patches.shape[1:] == (2, dist.cfg.s)
    flat = s.block_patches.reshape(len(s), -1)
    assert all(len(set(r.tolist())) == flat.shape[1] for r in flat)
    # block features are the label's nodes
    tree = dist.tree
    assert torch.equal(s.block_features[:, 0], tree.feature_base[0] + s.labels[:, 0])
    assert torch.equal(s.block_features[:, 1], tree.feature_base[1] + s.labels[:, 1])


def test_noise_is_gaussian_with_configured_std():
    dist = make(gamma=0.0, sigma=0.3)
    s = dist.sample(400, generator(0))
    resid = s.x - reconstruct(dist, s) @ dist.dictionary
    assert abs(resid.std().item() - 0.3) < 0.01
    assert abs(resid.mean().item()) < 0.01


def test_hard_samples_lack_only_the_common_feature():
    dist = make(sigma=0.0)
    g1, g2 = generator(5), generator(5)
    easy, hard = dist.sample(300, g1, hard=False), dist.sample(300, g2, hard=True)
    assert not easy.hard.any() and hard.hard.all()
    coef_h = hard.x @ dist.dictionary.T
    common_ids = hard.block_features[:, 0]
    fine_ids = hard.block_features[:, 1]
    rows = torch.arange(300)
    # common feature: absent from its patches (hard strength [0, 0]); only feature noise can put
    # gamma on it elsewhere
    on_common = coef_h[rows[:, None], hard.block_patches[:, 0], common_ids[:, None]]
    assert torch.all(on_common == 0)
    # fine feature: exactly as in an easy sample (strength 1)
    on_fine = coef_h[rows[:, None], hard.block_patches[:, 1], fine_ids[:, None]]
    assert torch.allclose(on_fine, torch.ones_like(on_fine))
    # and same labels / patches as the easy draw with the same generator state
    assert torch.equal(easy.labels, hard.labels)


def test_weak_hard_strength_and_hard_noise():
    dist = make(sigma=0.0, gamma=0.0, hard_strength=(0.2, 0.3), hard_noise=0.5)
    s = dist.sample(200, generator(1), hard=True)
    st = s.block_strength
    assert st[:, 0].min() >= 0.2 and st[:, 0].max() <= 0.3
    assert torch.all(st[:, 1] == 1.0)
    # the hard noise sits on the common block's patches only
    resid = s.x - reconstruct(dist, s) @ dist.dictionary
    rows = torch.arange(200)[:, None]
    on_common = resid[rows, s.block_patches[:, 0]]
    on_fine = resid[rows, s.block_patches[:, 1]]
    assert abs(on_common.std().item() - 0.5) < 0.05
    assert on_fine.abs().max() < 1e-5


def test_hard_fraction():
    dist = make()
    s = dist.sample(4000, generator(2), hard=0.25)
    assert abs(s.hard.float().mean().item() - 0.25) < 0.03


def test_same_seed_identical_different_seeds_differ():
    a = make(seed=1).sample(50, generator(7))
    b = make(seed=1).sample(50, generator(7))
    c = make(seed=1).sample(50, generator(8))
    d = make(seed=2).sample(50, generator(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, d.x)  # another dictionary


def test_stream_is_chunked_and_matches_config():
    dist = make()
    chunks = list(dist.stream(1000, generator(0), chunk=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]


def test_labels_consistent_with_tree():
    dist = make(K=3, k=[2, 3, 5], deeper=[2])
    tree = dist.tree
    s = dist.sample(500, generator(0))
    assert tree.nodes_per_level == [3, 10, 20]
    for lvl in (2, 3):
        parent = tree.parents[lvl - 2][s.labels[:, lvl - 1]]
        assert torch.equal(parent, s.labels[:, lvl - 2])
    # subclass j of superclass y: index offsets by k
    sub = s.labels[:, 1]
    assert torch.equal(tree.ancestor_map(2, 1)[sub], s.labels[:, 0])
    assert set(sub[s.labels[:, 0] == 0].tolist()) <= {0, 1}
    assert set(sub[s.labels[:, 0] == 2].tolist()) <= set(range(5, 10))
    # leaves cover all nodes
    assert len(set(s.labels[:, 2].tolist())) == 20


def test_deeper_tree_blocks_and_hard_level():
    cfg = dict(k=2, deeper=[2, 2], P=16, sigma=0.0, hard_level=2)
    dist = make(**cfg)
    assert dist.cfg.levels == 4 and dist.tree.nodes_per_level == [2, 4, 8, 16]
    s = dist.sample(100, generator(0), hard=True)
    assert s.block_features.shape[1] == 4
    # hard at level 2: levels 1 and 2 weakened to 0, levels 3 and 4 intact
    assert torch.all(s.block_strength[:, :2] == 0) and torch.all(s.block_strength[:, 2:] == 1)
    for b, lvl in enumerate(range(1, 5)):
        expect = dist.tree.feature_base[lvl - 1] + s.labels[:, lvl - 1]
        assert torch.equal(s.block_features[:, b], expect)


def test_several_views_per_node():
    dist = make(views_common=2, views_fine=3, P=16, sigma=0.0)
    assert dist.M == 2 * 2 + 8 * 3
    s = dist.sample(50, generator(0))
    assert s.block_features.shape[1] == 5
    assert torch.equal(s.block_features[:, 1] - s.block_features[:, 0], torch.ones(50, dtype=torch.long))
    coef = s.x @ dist.dictionary.T
    assert torch.allclose(coef, reconstruct(dist, s), atol=1e-5)


def test_long_tail_frequencies():
    dist = make(k=4, tail_exponent=2.0)
    s = dist.sample(20000, generator(0))
    sub = s.labels[:, 1]
    freq = torch.bincount(sub, minlength=8).float() / len(sub)
    expect = dist.leaf_probabilities().float()
    assert torch.allclose(freq, expect, atol=0.01)
    assert freq[0] > 5 * freq[3]  # the first subclass is common, the last one rare


def test_unequal_k_and_more_superclasses():
    dist = make(K=4, k=[1, 2, 3, 4])
    s = dist.sample(2000, generator(0))
    assert set(s.labels[:, 0].tolist()) == {0, 1, 2, 3}
    assert dist.tree.nodes_per_level == [4, 10]
    assert torch.equal(build_tree(dist.cfg).parents[0], torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"d": 8, "k": 8}, "do not fit"),
        ({"K": 3, "k": [2, 2]}, "one k per superclass"),
        ({"k": 0}, "k must be >= 1"),
        ({"P": 4, "s": 3}, "patches but P=4"),
        ({"common_strength": (2.0, 1.0)}, "low <= high"),
        ({"hard_level": 3}, "deeper than the tree"),
        ({"deeper": [0]}, "branching"),
        ({"kk": 3}, "Unknown config key 'kk'.*did you mean 'k'"),
        ({"sigma": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_configs_rejected(kw, match):
    with pytest.raises(GranularityError, match=match):
        DataConfig.build({"d": 64, "P": 8, "k": 4, **kw})


def test_save_with_dictionary(tmp_path):
    import json

    import numpy as np

    dist = make()
    s = dist.sample(20, generator(0))
    dist.save(tmp_path / "data.npz", s)
    z = np.load(tmp_path / "data.npz")
    assert np.array_equal(z["x"], s.x.numpy()) and np.array_equal(z["dictionary"], dist.dictionary.numpy())
    assert json.loads((tmp_path / "data.json").read_text())["data"]["k"] == 4
