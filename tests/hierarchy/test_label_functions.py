import numpy as np
import pytest

from granularity.errors import GranularityError
from granularity.hierarchy.label_functions import (
    kmeans_global,
    kmeans_within,
    per_sample_labels,
    random_labels,
)


def blobs(seed=0):
    # 3 coarse classes, each made of 2 well separated blobs in 2-D
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [0, 10], [10, 0], [10, 10], [20, 0], [20, 10]], float)
    sub = np.repeat(np.arange(6), 20)
    x = centers[sub] + 0.1 * rng.standard_normal((120, 2))
    return x, sub // 2, sub


def test_kmeans_within_nests_and_recovers_blobs():
    x, coarse, sub = blobs()
    lf = kmeans_within(x, coarse, clusters_per_class=2, seed=0)
    assert lf.num_classes == 6 and lf.labels.dtype == np.int64
    np.testing.assert_array_equal(lf.hierarchy.relabel(lf.labels, 1), coarse)
    # the clusters are the blobs (up to renaming)
    pairs = set(zip(lf.labels.tolist(), sub.tolist()))
    assert len(pairs) == 6
    assert lf.meta["kind"] == "kmeans_within" and lf.meta["seed"] == 0
    assert lf.meta["parameters"]["clusters_per_class"] == 2
    again = kmeans_within(x, coarse, clusters_per_class=2, seed=0)
    np.testing.assert_array_equal(again.labels, lf.labels)
    assert lf.record()["hierarchy_hash"] == lf.hierarchy.content_hash


def test_kmeans_within_small_and_empty_classes():
    x = np.array([[0.0], [1.0], [5.0], [5.0]])
    lf = kmeans_within(x, np.array([0, 0, 2, 2]), clusters_per_class=3, seed=1)
    assert lf.meta["clusters_per_class_used"] == [2, 1, 1]  # class 1 empty, class 2 one point
    assert lf.hierarchy.num_classes(1) == 3
    np.testing.assert_array_equal(lf.hierarchy.relabel(lf.labels, 1), [0, 0, 2, 2])


def test_kmeans_global_flat_and_purity():
    x, coarse, _ = blobs()
    lf = kmeans_global(x, 3, seed=0, coarse_labels=coarse)
    assert lf.hierarchy.depth == 1 and lf.hierarchy.num_classes(1) == 3
    assert 0.0 < lf.meta["purity"] <= 1.0 and "nmi" in lf.meta and lf.meta["aligned"] is False


def test_random_and_per_sample():
    a = random_labels(1000, 7, seed=3)
    b = random_labels(1000, 7, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.min() >= 0 and a.labels.max() < 7 and len(np.unique(a.labels)) == 7
    assert a.hierarchy.level_sizes() == [1, 7] and a.meta == {"kind": "random", "parameters": {"n": 1000, "num_classes": 7}, "seed": 3, "aligned": False}
    p = per_sample_labels(50)
    np.testing.assert_array_equal(p.labels, np.arange(50))
    assert p.num_classes == 50 and p.hierarchy.num_leaves == 50


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kmeans_within(np.zeros((3, 2)), np.array([0, 1]), 2, 0), "coarse_labels"),
        (lambda: kmeans_within(np.zeros(3), np.array([0, 1, 0]), 2, 0), "embeddings"),
        (lambda: kmeans_within(np.zeros((2, 2)), np.array([0, 1]), 0, 0), "clusters_per_class"),
        (lambda: kmeans_global(np.zeros((2, 2)), 2, 0), "num_clusters"),
        (lambda: kmeans_global(np.full((2, 2), np.nan), 1, 0), "finite"),
        (lambda: random_labels(10, 0, 0), "num_classes"),
        (lambda: per_sample_labels(0), "'n'"),
    ],
)
def test_label_function_errors(call, match):
    with pytest.raises(GranularityError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_source_labels_build_no_tree_they_throw_away(monkeypatch):
    # the engine keeps only the labels of a per-sample or random source: the flat tree of one
    # class per sample (0.5 s for 60,000 samples) is built only when someone reads .hierarchy
    from granularity.engine.labels import build_source_labels
    from granularity.hierarchy import fashion_mnist_hierarchy
    from granularity.hierarchy import label_functions as lfs

    flat, built = lfs._flat, []
    monkeypatch.setattr(lfs, "_flat", lambda *a: built.append(a[1]) or flat(*a))
    leaf = np.arange(40) % 10
    for spec in ("per-sample", "random:5"):
        src = build_source_labels(spec, fashion_mnist_hierarchy(), leaf, 1, lambda: None, seed=0)
        assert src.num_classes == (40 if spec == "per-sample" else 5)
    assert built == []
    lf = lfs.per_sample_labels(40)
    assert lf.hierarchy.num_leaves == 40 and lf.hierarchy is lf.hierarchy and built == ["sample_"]
