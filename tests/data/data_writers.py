"""Writers of tiny data sets in each real on-disk format (shared by the data tests)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_FINE = ["beaver", "dolphin", "orchid", "rose", "bus", "train"]
CIFAR_COARSE = ["aquatic_mammals", "flowers", "vehicles_1"]
CIFAR_PARENT = [0, 0, 1, 1, 2, 2]


def write_cifar100(folder: Path, n_train: int = 24, n_test: int = 12, bytes_keys: bool = True) -> Path:
    """A cifar-100-python folder (meta/train/test pickles, keys as bytes like the originals)."""
    d = folder / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    meta = {k("fine_label_names"): [k(n) for n in CIFAR_FINE], k("coarse_label_names"): [k(n) for n in CIFAR_COARSE]}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        fine = [i % len(CIFAR_FINE) for i in range(n)]
        data = np.zeros((n, 3072), dtype=np.uint8)
        data[:, :1024] = np.array(fine, dtype=np.uint8)[:, None] * 10  # red plane encodes the class
        data[:, 2048:] = rng.integers(0, 255, (n, 1024), dtype=np.uint8)
        rec = {
            k("filenames"): [k(f"img{i}.png") for i in range(n)],
            k("fine_labels"): fine,
            k("coarse_labels"): [CIFAR_PARENT[f] for f in fine],
            k("data"): data,
        }
        (d / part).write_bytes(pickle.dumps(rec, protocol=2))
    return folder


def _img(path: Path, value: int, size=(20, 14), mode="RGB") -> None:
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95) if path.suffix.lower() in (".jpeg", ".jpg") else img.save(path)


def write_image_folder(root: Path, classes=("n01440764", "n01443537", "n02102040"), per_class=(4, 2)) -> Path:
    """root/{train,val}/<wnid>/*.JPEG (and one PNG); class c images are grey value 60*c+20."""
    for part, n in zip(("train", "val"), per_class):
        for c, wnid in enumerate(classes):
            for i in range(n):
                ext = ".png" if i == 0 else ".JPEG"
                _img(root / part / wnid / f"{wnid}_{i}{ext}", 60 * c + 20)
    return root


INAT_CATS = [
    dict(id=0, name="Morus bassanus", kingdom="Animalia", phylum="Chordata", **{"class": "Aves"},
         order="Suliformes", family="Sulidae", genus="Morus", specific_epithet="bassanus"),
    dict(id=1, name="Sula sula", kingdom="Animalia", phylum="Chordata", **{"class": "Aves"},
         order="Suliformes", family="Sulidae", genus="Sula", specific_epithet="sula"),
    dict(id=2, name="Morus alba", kingdom="Plantae", phylum="Tracheophyta", **{"class": "Magnoliopsida"},
         order="Rosales", family="Moraceae", genus="Morus", specific_epithet="alba"),
]


def write_inat(root: Path, per_class=(3, 1)) -> Path:
    """train.json / val.json in the iNat2021 format plus the image folders they point to."""
    next_id = 0
    for part, n in zip(("train", "val"), per_class):
        images, anns = [], []
        for cat in INAT_CATS:
            dirname = f"{cat['id']:05d}_{cat['kingdom']}_{cat['genus']}_{cat['specific_epithet']}"
            for i in range(n):
                fname = f"{part}/{dirname}/{next_id:04d}.jpg"
                _img(root / fname, 70 * cat["id"] + 30, size=(16, 16))
                images.append({"id": next_id, "file_name": fname, "width": 16, "height": 16})
                anns.append({"id": next_id, "image_id": next_id, "category_id": cat["id"]})
                next_id += 1
        data = {"info": {"year": 2021}, "images": images, "annotations": anns,
                "categories": INAT_CATS, "licenses": []}
        (root / f"{part}.json").write_text(json.dumps(data))
    return root
