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


# --- hard samples follow the target level (issue 19) -------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def trees_and_targets(draw):
    """A random tree (superclasses, subclasses, deeper levels, views) and a target level in it."""
    K = draw(st.integers(2, 3))
    k = draw(st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=K, max_size=K)))
    deeper = draw(st.lists(st.integers(1, 2), max_size=3))
    views_common, views_fine = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    target = draw(st.integers(1, 2 + len(deeper)))
    return {"K": K, "k": k, "deeper": deeper, "views_common": views_common, "views_fine": views_fine}, target


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_and_targets(), st.integers(0, 2**31))
def test_hard_test_samples_lack_exactly_the_target_levels(tree_target, seed):
    """Through the engine's own test sampler: a hard sample for target t carries no feature of its
    levels 1..t, every feature of its levels t+1..L at full strength, and nothing else."""
    from granularity.theory.config import SimConfig
    from granularity.theory.train import SeedBatch

    data, t = tree_target
    probe = DataConfig.build({**data, "d": 4096, "P": 4096, "s": 1})
    L, M = probe.levels, probe.num_features
    blocks = data["views_common"] + data["views_fine"] * (L - 1)
    data = {**data, "d": M + 1, "P": blocks + 1, "s": 1, "sigma": 0.0, "gamma": 0.0}
    cfg = SimConfig.build({"data": data, "train": {"n_train": 2}, "transfer": {"target": t}})
    sb = SeedBatch.build(cfg, [seed], torch.device("cpu"))
    dist = sb.dists[0]
    flevel, fnode = dist.tree.feature_level(), dist.tree.feature_node()
    for hard in (False, True):
        x, labels = next(sb.test_stream(40, hard))
        coef = x[0] @ dist.dictionary.T  # (n, P, M): exact up to rounding (sigma = gamma = 0)
        present = coef.abs().sum(1) > 1e-4  # (n, M) feature anywhere in the sample
        on_path = labels[0][:, flevel - 1] == fnode  # (n, M) feature of the sample's own nodes
        expect = on_path & ((flevel > t) if hard else torch.ones_like(flevel, dtype=torch.bool))
        assert torch.equal(present, expect), (hard, t)


def test_hard_level_null_follows_the_target_and_mismatch_is_refused():
    from granularity.theory.config import SimConfig

    deep = {"k": 2, "deeper": [2], "P": 8}
    for t in (1, 2, 3):
        cfg = SimConfig.build({"data": deep, "transfer": {"target": t, "sources": ["fine"]}})
        assert cfg.data.hard_level == t
    with pytest.raises(GranularityError, match=r"data.hard_level=1 .*transfer.target=2.*allow_hard_level_mismatch"):
        SimConfig.build({"data": {**deep, "hard_level": 1}, "transfer": {"target": 2}})
    cfg = SimConfig.build({"data": {**deep, "hard_level": 1, "allow_hard_level_mismatch": True},
                           "transfer": {"target": 2}})
    assert cfg.data.hard_level == 1
    # the resolved config round-trips (a run folder's config.json is validated again on resume)
    assert SimConfig.build(cfg.to_dict()) == cfg
    # alone, the distribution's hard samples lose level 1 (the coarse task), as before
    assert DataConfig().hard_level is None
    s = make(sigma=0.0, k=2, deeper=[2]).sample(30, generator(0), hard=True)
    assert torch.all(s.block_strength[:, 0] == 0) and torch.all(s.block_strength[:, 1:] == 1)


def test_seed_batch_refuses_a_config_changed_after_validation():
    from granularity.theory.config import SimConfig
    from granularity.theory.train import SeedBatch

    cfg = SimConfig.build({"data": {"d": 32, "P": 6, "k": 2, "deeper": [2]}, "train": {"n_train": 4},
                           "transfer": {"target": 2}})
    cfg.transfer.target = 3  # re-validated field by field only: the link is checked at run time
    with pytest.raises(GranularityError, match="hard_level"):
        SeedBatch.build(cfg, [0], torch.device("cpu"))


# --- save, seeds (issue 19) ----------------------------------------------------------------------


def test_save_refuses_a_path_its_sidecar_would_overwrite(tmp_path):
    dist = make()
    s = dist.sample(5, generator(0))
    for name in ("ds.json", "ds", "ds.npy"):
        with pytest.raises(GranularityError, match=rf"'path'.*\.npz.*{name}'"):
            dist.save(tmp_path / name, s)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_generator_uses_every_bit_of_a_63_bit_seed():
    def draw(g):
        return torch.rand(8, generator=g)

    # small seeds keep torch's own stream (every stored result depends on it)
    for seed in (0, 5, 2**32 - 1):
        assert torch.equal(draw(generator(seed)), draw(torch.Generator().manual_seed(seed)))
    streams = {seed: draw(generator(seed)) for seed in (5, 2**32 + 5, 2**40 + 5, 2**62 + 5, 2**63 - 1)}
    values = list(streams.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
    assert torch.equal(draw(generator(2**40 + 5)), streams[2**40 + 5])  # deterministic
    assert generator(2**40 + 5).initial_seed() == 2**40 + 5
    # independently: the words behind torch.rand are those of NumPy's MT19937 of the same seed
    import numpy as np

    for seed in (2**32, 2**40 + 5, 2**63 - 1):
        words = np.random.MT19937(seed).random_raw(700)  # past a twist of the 624-word state
        expect = torch.from_numpy(((words & 0xFFFFFF) / 2**24).astype(np.float32))
        assert torch.equal(torch.rand(700, generator=generator(seed)), expect)
    # the state is a proper mt19937 state: normal draws and randperm work, and differ from seed 5's
    assert not torch.equal(torch.randn(4, generator=generator(2**40 + 5)), torch.randn(4, generator=generator(5)))
    with pytest.raises(GranularityError, match="'seed'.*0 <= seed < 2\\*\\*63"):
        generator(2**63)
    with pytest.raises(GranularityError, match="'seed'"):
        generator(-1)


def test_engine_streams_keep_their_32_bit_seeds():
    """The engine seeds its streams with the low 32 bits of each SeedSequence draw, as torch's
    manual_seed always did with the full draw: default runs stay bit-identical."""
    from granularity.theory.config import SimConfig
    from granularity.theory.data import derive_seeds
    from granularity.theory.train import _INIT, SeedBatch

    cfg = SimConfig.build({"data": {"d": 32, "P": 6, "k": 2}, "train": {"n_train": 4}})
    sb = SeedBatch.build(cfg, [3], torch.device("cpu"))
    full = derive_seeds(3, 6)[_INIT] + 2
    assert full >= 2**32
    assert torch.equal(torch.rand(5, generator=sb.generators(_INIT, 2)[0]),
                       torch.rand(5, generator=torch.Generator().manual_seed(full)))


@pytest.mark.parametrize("kw", [{}, {"views_common": 2, "views_fine": 2, "P": 16, "gamma": 0.3},
                                {"k": 2, "deeper": [2], "P": 16, "hard_strength": (0.1, 0.4)}])
def test_inputs_are_exactly_the_coefficients_times_the_dictionary(kw):
    """The generator builds each patch as one coefficient times one dictionary row; that must be
    exactly (bit for bit, not only close) the product of the recorded coefficient tensor with the
    dictionary, the formula of the model's definition."""
    dist = make(sigma=0.0, gamma=kw.pop("gamma", 0.2), **kw)
    s = dist.sample(64, generator(3), hard=0.5)
    assert torch.equal(s.x, reconstruct(dist, s) @ dist.dictionary)


def test_sample_into_out_is_the_same_draw():
    dist = make()
    a = dist.sample(40, generator(9), hard=0.3)
    buf = torch.full((2, 40, 8, 64), float("nan"))
    b = dist.sample(40, generator(9), hard=0.3, out=buf[1])
    assert b.x.data_ptr() == buf[1].data_ptr() and torch.equal(a.x, buf[1]) and torch.isnan(buf[0]).all()
    assert torch.equal(a.labels, b.labels) and torch.equal(a.block_strength, b.block_strength)
    with pytest.raises(ValueError, match="contiguous float32"):
        dist.sample(40, generator(9), out=torch.empty(40, 8, 32))


def test_seed_batch_draws_do_not_depend_on_threads():
    """Seeds draw their samples side by side in threads; one thread must give the same bits."""
    from granularity.theory.config import SimConfig
    from granularity.theory.train import SeedBatch

    cfg = SimConfig.build({"data": {"d": 64, "P": 8, "k": 4}, "train": {"n_train": 100}, "transfer": {"n_test": 50}})
    old = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sb = SeedBatch.build(cfg, [0, 1, 2], torch.device("cpu"))
            out.append((sb.x.clone(), sb.labels(2).clone(), [t.clone() for c in sb.test_stream(50, True) for t in c]))
    finally:
        torch.set_num_threads(old)
    (xa, ya, ta), (xb, yb, tb) = out
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and all(torch.equal(u, v) for u, v in zip(ta, tb))
    assert all(torch.equal(sb.train[i].x, sb.x[i]) for i in range(3))  # each seed's set is its slot of the stack
