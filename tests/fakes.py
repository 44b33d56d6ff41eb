"""Small files in real formats, shared by several test folders (tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from granularity.data.idx import write_idx

# the tiny simulator config of the simulate, sweep and report tests (a run takes ~1 s)
TINY_SIM = {
    "name": "tiny",
    "data": {"d": 32, "P": 6, "k": 3},
    "model": {"m": 4},
    "train": {"n_train": 120, "steps": 40, "batch_size": 32, "log_points": 5},
    "transfer": {"n_test": 100, "probe_steps": 20, "finetune_steps": 20},
}


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


# family -> genus -> species: penguins and two petrels (real taxa)
TAXA = [
    ("Spheniscidae", "Pygoscelis", "Pygoscelis adeliae"),
    ("Spheniscidae", "Pygoscelis", "Pygoscelis papua"),
    ("Spheniscidae", "Pygoscelis", "Pygoscelis antarcticus"),
    ("Spheniscidae", "Aptenodytes", "Aptenodytes forsteri"),
    ("Spheniscidae", "Aptenodytes", "Aptenodytes patagonicus"),
    ("Spheniscidae", "Eudyptes", "Eudyptes chrysocome"),
    ("Procellariidae", "Fulmarus", "Fulmarus glacialis"),
    ("Procellariidae", "Puffinus", "Puffinus puffinus"),
]
MEASURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def survey_table(n: int = 12_500, seed: int = 0, family: bool = True) -> pd.DataFrame:
    """Specimen rows: taxonomy + 4 measurements (species-specific means, Gaussian noise)."""
    rng = np.random.default_rng(seed)
    sp = rng.integers(0, len(TAXA), size=n)
    means = rng.uniform([30, 12, 170, 2500], [60, 22, 240, 6000], size=(len(TAXA), 4))
    x = means[sp] * (1 + 0.04 * rng.standard_normal((n, 4)))
    df = pd.DataFrame({"family": [TAXA[i][0] for i in sp], "genus": [TAXA[i][1] for i in sp],
                       "species_id": [TAXA[i][2] for i in sp]})
    for j, m in enumerate(MEASURES):
        df[m] = x[:, j].round(1)
    return df if family else df.drop(columns=["family"])
