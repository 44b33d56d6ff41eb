"""Images/s of the tar-shard loader vs the image-folder loader on the same images.

    nice -n 5 python benchmarks/shard_loader.py --images 2000 --out benchmarks/results/shards-cpu-2core.json

Writes one JSON: the machine, the load average before/after, and per figure the seconds of
every repeat (the sides interleaved A B B A ..., so a change of load hits both alike), their
medians and images/s. The same JPEG files are read in the engine's order (a seeded random
permutation, as one training epoch) through each loader's Dataset in this process:

* ``decode``: read + decode + resize + crop (what a training step waits for);
* ``read``: the image bytes only (open/read a file vs seek/read in a shard);
* ``sequential``: the shards read in file order (:func:`iter_rank_shards`) vs the folder in
  file order (both with decoding);
* ``index``: building each loader's file list (folder: listing; shards: tar scan without
  cache, then with the cached index).

Files are in the page cache (each side is read once before timing): the figures compare the
loaders' own work, not the disk. The machine is shared with other jobs; see load_average.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from granularity.bench.common import interleaved, load_average, machine, median
from granularity.data.image_folder import load_image_folder
from granularity.data.shards import iter_rank_shards, load_shards, write_shards


def make_folder(root: Path, n: int, classes: int, size: tuple[int, int]) -> Path:
    """``n`` JPEGs (smooth gradients plus noise, quality 90) in train/<class>/ and 10% in val/."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    for part, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            c = i % classes
            base = (xx * (c + 1) * 3 + yy * 2 + 40 * c) % 256
            img = np.stack([base, np.roll(base, c, 0), 255 - base], -1) + rng.integers(0, 20, (size[1], size[0], 3))
            d = root / part / f"class{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)
    return root


def passes(folder_ds, shard_ds, order: list[int]) -> dict[str, dict]:
    def decode(ds):
        return lambda: [ds[i] for i in order]

    def read_files():
        for i in order:
            with open(folder_ds.paths[i], "rb") as fh:
                fh.read()

    return {"decode": {"image-folder": decode(folder_ds), "shards": decode(shard_ds)},
            "read": {"image-folder": read_files, "shards": lambda: [shard_ds.read(i) for i in order]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=32, help="loader output side (pixels)")
    ap.add_argument("--source-size", default="96x72", help="stored JPEG size WxH")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shards-cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rec = {"machine": machine(torch.device("cpu")), "load_average_before": load_average(), "args": {
        k: str(v) for k, v in vars(args).items()}, "figures": {}}
    w, h = (int(v) for v in args.source_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src = make_folder(Path(tmp) / "folder", args.images, args.classes, (w, h))
        write_shards(src, Path(tmp) / "shards", shard_size=args.shard_size)
        t0 = time.perf_counter()
        folder = load_image_folder(src, image_size=args.image_size, in_memory=False)
        t_list = time.perf_counter() - t0
        for f in (Path(tmp) / "shards").glob("*.index.json"):
            f.unlink()
        t0 = time.perf_counter()
        load_shards(Path(tmp) / "shards", image_size=args.image_size, in_memory=False)
        t_scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        shards = load_shards(Path(tmp) / "shards", image_size=args.image_size, in_memory=False)
        t_cached = time.perf_counter() - t0
        rec["figures"]["index"] = {"folder_listing_s": t_list, "shards_scan_s": t_scan, "shards_cached_s": t_cached}
        fds, sds = folder.train.dataset, shards.train.dataset
        n = len(fds)
        assert all(torch.equal(fds[i][0], sds[i][0]) for i in range(0, n, max(1, n // 50)))  # same pixels
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        figs = passes(fds, sds, order)
        figs["sequential"] = {"image-folder": lambda: [fds[i] for i in range(n)],
                              "shards": lambda: list(iter_rank_shards(shards.train))}
        for name, fns in figs.items():
            times = interleaved(fns, args.repeats, torch.device("cpu"))
            med = {k: median(v) for k, v in times.items()}
            rec["figures"][name] = {"seconds": times, "median_s": med,
                                    "images_per_s": {k: n / v for k, v in med.items()},
                                    "shards_over_folder": med["image-folder"] / med["shards"]}
            print(f"{name}: folder {n / med['image-folder']:.0f} img/s, shards {n / med['shards']:.0f} img/s, "
                  f"ratio {med['image-folder'] / med['shards']:.2f}", flush=True)
        rec["images"] = n
    rec["load_average_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=2, sort_keys=True))
    print(f"index: folder listing {t_list:.3f} s, shard scan {t_scan:.3f} s, cached {t_cached:.3f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
