"""Small files in real formats, shared by several test folders (tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from granularity.data.idx import write_idx


def write_fake_fmnist(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """Tiny Fashion-MNIST lookalike: class c images are filled with 20*c (+ noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n, dtype=np.uint8) % 10
        x = (y[:, None, None] * 20 + rng.integers(0, 5, (n, 28, 28))).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
    return folder
