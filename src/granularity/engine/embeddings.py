"""Embeddings of the training images for the k-means label functions.

The paper clusters CLIP ViT-L/14 embeddings; no pretrained model can be had offline here, so
the default is ``"pca"``: the first 32 principal components of the standardised pixels. It is
deterministic, takes about a second on 10k images, and — unlike features of a network trained on
the target labels — it keeps the variation *inside* a target class that clustering is meant to
find (a net trained on coarse labels is pushed to collapse exactly that variation). ``"cnn"``
(features of the small CNN trained for 2 epochs on the target labels) is offered to test how
sensitive the results are to the embedding; a path to a ``.npy`` file of shape
``(n_train, d)`` (rows in the run's training order, after subsetting) uses your own.
For token inputs (text data sets: integer ids ``(N, L)``, 0 = padding) ``"lsa"`` is the
counterpart of ``"pca"``: TF-IDF of the token ids (sublinear counts), reduced to 32 dimensions
by a seeded truncated SVD and scaled to unit length (latent semantic analysis).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from granularity.errors import GranularityError

PCA_DIM = 32  # enough for ~75% of the pixel variance of Fashion-MNIST; k-means cost grows with it


def compute_embeddings(
    method: str,
    x: torch.Tensor,
    y_target: np.ndarray,
    num_target: int,
    seed: int,
    device: torch.device | str = "cpu",
    norm=None,
) -> np.ndarray:
    """``(N, d)`` float32 embeddings of the training inputs ``x`` (see the module docstring).
    ``norm``: the run's :class:`~granularity.engine.train.Normaliser` (the "cnn" embedding
    trains on normalised inputs); default: statistics of all of ``x``."""
    n = len(x)
    tokens = isinstance(x, torch.Tensor) and x.dtype in (torch.int64, torch.int32)
    if method == "lsa":
        if not tokens:
            raise GranularityError("The 'embedding' 'lsa' is for token-id inputs (text data sets); use 'pca' or 'cnn' for images and tables.")
        return _lsa(x, seed)
    if method == "pca" and tokens:
        raise GranularityError("The 'embedding' 'pca' reads pixels or features, but this data set holds token ids; use 'lsa' (or a .npy file).")
    if method == "pca":
        if not isinstance(x, torch.Tensor):  # a streamed data set (check_plan refuses this earlier)
            raise GranularityError(
                "The 'embedding' 'pca' needs all training pixels in memory; for a streamed data set use 'cnn' or a .npy file."
            )
        from sklearn.decomposition import PCA

        flat = x.reshape(n, -1).float().cpu().numpy()
        flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
        dim = min(PCA_DIM, flat.shape[1], n)
        return PCA(dim, svd_solver="randomized", random_state=seed).fit_transform(flat).astype(np.float32)
    if method == "cnn":
        return _cnn_features(x, y_target, num_target, seed, torch.device(device), norm)
    path = Path(method)
    if path.suffix != ".npy":
        raise GranularityError(
            f"The 'embedding' parameter must be 'pca', 'cnn' or a path to a .npy file ('lsa' for token ids). Got {method!r} instead."
        )
    if not path.is_file():
        raise GranularityError(f"Embedding file {str(path)!r} does not exist.")
    try:
        emb = np.load(path)
    except (OSError, ValueError) as exc:
        raise GranularityError(f"Embedding file {str(path)!r} cannot be read as .npy ({exc}).") from None
    if emb.ndim != 2 or emb.shape[0] != n:
        raise GranularityError(
            f"Embedding file {str(path)!r} must have shape (n_train={n}, d). Got {emb.shape} instead."
        )
    return emb.astype(np.float32)


def _cnn_features(x, y_target, num_target, seed, device, norm=None) -> np.ndarray:
    from granularity.engine.config import StageConfig
    from granularity.engine.train import (Normaliser, engine_layout, epoch_generator, make_optimizer, make_scheduler,
                                          predict, train_epoch)
    from granularity.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("cnn", tuple(x.shape[1:]), int(num_target)).to(device)
    model = engine_layout(model, device, False)  # float32, in the layout the engine trains in
    stage = StageConfig(epochs=2)
    norm = norm if norm is not None else Normaliser(x)
    y = torch.as_tensor(y_target, dtype=torch.int64)
    opt = make_optimizer(model.parameters(), stage)
    steps = -(-len(y) // stage.batch_size)
    sched = make_scheduler(opt, stage, steps)
    for ep in range(stage.epochs):
        train_epoch(model, x, y, norm, stage, opt, sched, epoch_generator(seed, "embed", ep), device,
                    label=f"the embedding CNN's epoch {ep + 1}")
    model.eval()
    return predict(model.forward_features, x, norm, 1000, device).numpy()


def _lsa(x: torch.Tensor, seed: int) -> np.ndarray:
    """Unit-length LSA embeddings of token-id rows (see the module docstring)."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize

    ids = x.cpu().numpy()
    rows, cols = np.nonzero(ids)
    counts = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, ids[rows, cols])),
                               shape=(len(ids), int(ids.max(initial=0)) + 1))  # duplicates are summed
    tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    dim = max(1, min(PCA_DIM, tfidf.shape[1] - 1, len(ids) - 1))
    z = TruncatedSVD(dim, random_state=seed).fit_transform(tfidf)
    return normalize(z).astype(np.float32)
