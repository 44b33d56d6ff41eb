"""The hashing tokenizer and the text models (shared model interface, padding, sparse SGD)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from granularity.data.text import HashTokenizer
from granularity.errors import GranularityError
from granularity.models import Backbone, create_model

TEXTS = ["A dog's bark, LOUD!", "the cat sat on the mat", "", "Über naïve café"]


def test_words_lowercase_split_and_cut():
    tok = HashTokenizer(max_words=3)
    assert tok.words("A dog\u2019s bark, LOUD!") == ["a", "dog's", "bark"]
    assert HashTokenizer().words("Über naïve café_bar") == ["über", "naïve", "café", "bar"]
    assert HashTokenizer().words("  ;; ") == []


def test_ids_are_unigrams_then_bigrams_in_range():
    tok = HashTokenizer(buckets=1000, ngrams=2)
    ids = tok.ids("a dog barks")
    assert len(ids) == 3 + 2 and all(1 <= i < 1000 for i in ids)
    assert ids[:3] == [tok.ids(w)[0] for w in ("a", "dog", "barks")]  # unigrams first, each as alone
    assert tok.ids("A DOG barks") == ids  # lowercased
    assert HashTokenizer(buckets=1000, ngrams=1).ids("a dog barks") == ids[:3]
    assert tok.max_tokens == 64 + 63


def test_ids_are_pinned_and_the_same_in_a_fresh_process():
    tok = HashTokenizer()
    ids = tok.ids("the dog barked all night")
    # pinned: the hash defines every input and must never change; it is the documented
    # 1 + CRC-32("<n>\x1f<n-gram>") mod (buckets - 1)
    assert ids[:2] == [122277, 55240] and ids[5] == 10571
    import zlib

    assert ids[5] == 1 + zlib.crc32("2\x1fthe dog".encode()) % (2**17 - 1)
    code = "from granularity.data.text import HashTokenizer as T; print(T().ids('the dog barked all night'))"
    env = {**os.environ, "PYTHONHASHSEED": "777"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(ids)


def test_encode_pads_left_aligned_rows():
    tok = HashTokenizer(buckets=500)
    x = tok.encode(TEXTS)
    assert x.dtype == np.int64 and x.shape == (4, max(len(tok.ids(t)) for t in TEXTS))
    for row, t in zip(x, TEXTS):
        n = len(tok.ids(t))
        assert row[:n].tolist() == tok.ids(t) and (row[n:] == 0).all()
    assert tok.encode(TEXTS, length=40).shape == (4, 40)
    assert tok.encode([]).shape == (0, 1)
    with pytest.raises(GranularityError, match="'length' parameter must be at least the longest text's"):
        tok.encode(TEXTS, length=2)


@pytest.mark.parametrize("bad", [{"buckets": 1}, {"ngrams": 0}, {"max_words": 0}, {"buckets": 2.5}])
def test_tokenizer_options_are_checked(bad):
    with pytest.raises(GranularityError, match=f"'{next(iter(bad))}' parameter must be an int"):
        HashTokenizer(**bad)


SMALL = {"text-ngrams": {"buckets": 500, "dim": 8}, "text-ngrams-hidden": {"buckets": 500, "dim": 8, "hidden": 6},
         "text-transformer": {"buckets": 500, "dim": 8, "depth": 1, "heads": 2}}


def _model(key: str, n: int = 3):
    torch.manual_seed(0)
    return create_model(key.replace("-hidden", ""), (12,), n, **SMALL[key])


@pytest.mark.parametrize("key", sorted(SMALL))
def test_interface(key):
    m = _model(key)
    assert isinstance(m, Backbone)
    x = torch.as_tensor(HashTokenizer(buckets=500).encode(TEXTS, length=12))
    m.eval()
    f = m.forward_features(x)
    assert f.shape == (4, m.num_features) and torch.isfinite(f).all()  # the empty text too
    torch.testing.assert_close(m(x), m.forward_head(f))
    m.reset_head(7)
    assert m.num_classes == 7 and m(x).shape == (4, 7)
    head = {id(p) for p in m.head.parameters()}
    assert all(id(p) not in head for p in m.backbone_parameters())


@pytest.mark.parametrize("key", sorted(SMALL))
def test_padding_does_not_change_the_features(key):
    m = _model(key).eval()
    tok = HashTokenizer(buckets=500)
    short = torch.as_tensor(tok.encode(TEXTS[:2]))
    padded = torch.cat([short, torch.zeros(2, 9, dtype=torch.int64)], 1)
    torch.testing.assert_close(m.forward_features(short), m.forward_features(padded))
    alone = m.forward_features(torch.as_tensor(tok.encode(TEXTS[1:2])))
    torch.testing.assert_close(m.forward_features(short)[1:], alone)  # batch-mates do not matter


def test_bag_is_the_mean_of_its_ngram_embeddings():
    m = _model("text-ngrams").eval()
    ids = torch.tensor([[5, 9, 9, 0, 0]])
    expected = m.embed.weight[[5, 9, 9]].mean(0, keepdim=True)
    torch.testing.assert_close(m.forward_features(ids), expected)
    torch.testing.assert_close(m.forward_features(torch.tensor([[9, 5, 9]])), expected)  # a bag: order-free


def test_sparse_gradients_train_with_plain_sgd():
    torch.manual_seed(0)
    m = create_model("text-ngrams", (6,), 2, buckets=100, dim=4, sparse=True)
    x = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 0, 0]] * 8)
    y = torch.tensor([0, 1] * 8)
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        assert m.embed.weight.grad.is_sparse
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert m.embed.weight[50].abs().sum() > 0 and torch.equal(m.embed.weight[0], torch.zeros(4))  # untouched row, padding row


def test_model_errors():
    with pytest.raises(GranularityError, match="reads token ids of shape \\(L,\\)"):
        create_model("text-ngrams", (1, 8, 8), 2)
    m = create_model("text-ngrams", (4,), 2, buckets=10, dim=4)
    with pytest.raises(GranularityError, match="Token ids must lie in \\[0, 9\\] for model 'text-ngrams'"):
        m(torch.tensor([[3, 12, 0, 0]]))
    with pytest.raises(GranularityError, match="reads integer token ids"):
        m(torch.rand(2, 4))
    with pytest.raises(GranularityError, match="'dim' parameter of model 'text-transformer' must be a multiple of heads=4"):
        create_model("text-transformer", (4,), 2, dim=6)
    with pytest.raises(GranularityError, match="Unknown option 'width' for model 'text-ngrams'"):
        create_model("text-ngrams", (4,), 2, width=3)
