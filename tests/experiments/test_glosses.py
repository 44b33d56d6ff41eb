"""The WordNet-gloss study end to end on a tiny subset (seconds once the data set is built),
its numbers recomputed from the run folders, resume, and its errors; the LSA embedding."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from granularity.errors import GranularityError


def run_glosses_study(config, out, **kw):
    from granularity.experiments.registry import run_study

    return run_study(config, out, design="wordnet-glosses", **kw)

WORDNET_OK = all(Path("/usr/share/wordnet", f).is_file() for f in ("data.noun", "index.noun"))
needs_wordnet = pytest.mark.skipif(not WORDNET_OK and not os.environ.get("GRANULARITY_WORDNET_DIR"), reason="WordNet 3.0 not installed")

TINY = {
    "seeds": [0, 1],
    "train_size": 300,
    "test_size": 200,
    "levels": [1, 4],
    "kmeans_sizes": [12],
    "random_classes": [12],
    "model": {"name": "text-ngrams", "options": {"dim": 8, "sparse": True}},
    "pretrain": {"epochs": 1, "lr": 3.0},  # merged into the study's defaults (plain SGD)
    "transfer": {"epochs": 1, "lr": 3.0},
}


@pytest.fixture(scope="module")
def glosses():
    from granularity.data.wordnet_glosses import load_wordnet_glosses

    return load_wordnet_glosses()


@needs_wordnet
@pytest.mark.slow  # the first build of the data set (~20 s); the study itself takes seconds
def test_tiny_study_end_to_end(glosses, tmp_path):
    res = run_glosses_study(TINY, tmp_path, dataset=glosses, progress=False)
    arms = [r["arm"] for r in res["table"]]
    assert arms == ["target", "level:1", "level:4", "kmeans-within:12", "random:12", "per-sample"]
    rows = {r["arm"]: r for r in res["table"]}
    assert rows["level:1"]["num_source_classes"] == 2 and rows["level:4"]["num_source_classes"] == 134
    assert rows["per-sample"]["num_source_classes"] == 300 and rows["target"]["num_source_classes"] == 11
    # every figure recomputed from the run folders: mean and the paired difference to the baseline
    for arm, row in rows.items():
        errs = [json.loads((tmp_path / "runs" / arm.replace(":", "") / f"seed{s}" / "result.json").read_text())["target_error"] for s in (0, 1)]
        pred = [np.load(tmp_path / "runs" / arm.replace(":", "") / f"seed{s}" / "predictions.npz") for s in (0, 1)]
        assert errs == pytest.approx([float((p["pred"] != p["y_target"]).mean()) for p in pred])
        assert row["target_error"]["mean"] == pytest.approx(np.mean(errs))
        if arm != "target":
            base = rows["target"]["per_seed_target_error"]
            assert row["target_error_minus_baseline"]["mean"] == pytest.approx(np.mean(np.subtract(errs, base)))
    with open(tmp_path / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["arm"] for r in table] == arms
    assert float(table[1]["target_error_mean"]) == pytest.approx(rows["level:1"]["target_error"]["mean"])
    assert (tmp_path / "u_curve.png").stat().st_size > 1000
    from granularity.experiments.glosses import level_rows

    assert [r["arm"] for r in level_rows(res["table"])] == ["level:1", "target", "level:4"]  # the plotted curve
    data = json.loads((tmp_path / "dataset.json").read_text())
    assert [lv["classes"] for lv in data["levels"]] == [2, 11, 53, 134, 254, 388, 508]
    assert data["n_train_used"] == 300 and data["lemma_scrub"]["enabled"] is True

    # resuming: nothing is recomputed, the same table comes back
    stamp = (tmp_path / "runs/level4/seed1/result.json").stat().st_mtime_ns
    again = run_glosses_study(TINY, tmp_path, dataset=glosses, progress=False)
    assert again["table"] == res["table"]
    assert (tmp_path / "runs/level4/seed1/result.json").stat().st_mtime_ns == stamp
    with pytest.raises(GranularityError, match="holds a study with another config"):
        run_glosses_study({**TINY, "seeds": [0]}, tmp_path, dataset=glosses, progress=False)


@needs_wordnet
@pytest.mark.slow
def test_study_errors(glosses, tmp_path):
    with pytest.raises(GranularityError, match="'target' parameter must be a level coarser than the leaves, in \\[1, 6\\]"):
        run_glosses_study({**TINY, "target": 7}, tmp_path / "a", dataset=glosses, progress=False)
    with pytest.raises(GranularityError, match="'kmeans_sizes' parameter must hold sizes >= the 11 classes"):
        run_glosses_study({**TINY, "kmeans_sizes": [5]}, tmp_path / "b", dataset=glosses, progress=False)
    with pytest.raises(GranularityError, match="'levels' parameter must hold WordNet levels in \\[1, 7\\]"):
        run_glosses_study({**TINY, "levels": [9]}, tmp_path / "c", dataset=glosses, progress=False)


def test_sparse_model_needs_plain_sgd(tmp_path):
    with pytest.raises(GranularityError, match="'sparse' .* needs plain SGD in every stage, but 'pretrain' has optimizer='adamw'"):
        run_glosses_study({"pretrain": {"optimizer": "adamw"}}, tmp_path, progress=False)
    with pytest.raises(GranularityError, match="but 'transfer' has optimizer='sgd', momentum=0.9"):
        run_glosses_study({"transfer": {"momentum": 0.9}}, tmp_path, progress=False)


def test_cli_refuses_options_that_do_not_apply(cli):
    code, _, err = cli("study", "--dataset", "wordnet-glosses", "--protocol", "map")
    assert code == 2 and err.count("\n") == 1 and "--protocol applies to the designs levels, bridge" in err
    assert "not to wordnet-glosses" in err
    code, _, err = cli("study", "--dataset", "wordnet-glosses", "--data-root", "x")
    assert code == 2 and "--data-root applies to the designs" in err
    code, _, err = cli("study", "--design", "wordnet-glosses", "--dataset", "fashion-mnist")
    assert code == 2 and "runs on the data set wordnet-glosses, not on 'fashion-mnist'" in err
    code, _, err = cli("study", "--dataset", "wordnet-glosses", "--set", "pretrain.optimizer=adamw")
    assert code == 2 and "needs plain SGD" in err
    code, _, err = cli("study", "--dataset", "wordnet-glosses", "--set", "data.min_cout=3")
    assert code == 2 and "min_cout" in err and "min_count" in err


def test_lsa_embedding_of_token_ids():
    from granularity.engine.embeddings import compute_embeddings

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.integers(0, 300, size=(60, 12)))
    x[:, 8:] = 0
    z = compute_embeddings("lsa", x, np.zeros(60), 1, seed=0)
    assert z.shape == (60, 32) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(z, compute_embeddings("lsa", x, np.zeros(60), 1, seed=0))
    # rows with the same bag of ids (in any order, any padding) get the same embedding
    y = x.clone()
    y[0, :8] = x[1, :8].flip(0)
    zy = compute_embeddings("lsa", y, np.zeros(60), 1, seed=0)
    np.testing.assert_allclose(np.abs(zy[0] @ zy[1]), 1.0, rtol=1e-4)
    with pytest.raises(GranularityError, match="'pca' reads pixels or features, but this data set holds token ids; use 'lsa'"):
        compute_embeddings("pca", x, np.zeros(60), 1, seed=0)
    with pytest.raises(GranularityError, match="'lsa' is for token-id inputs"):
        compute_embeddings("lsa", torch.rand(5, 3), np.zeros(5), 1, seed=0)
