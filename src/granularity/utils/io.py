"""Atomic file writes and run records.

A result file is written to a temporary name in the same folder and renamed into place, so a
half-written file is never taken as complete (rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from granularity.errors import GranularityError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically (sorted keys, NumPy scalars/arrays converted)."""
    _atomic(Path(path), lambda fh: json.dump(data, fh, indent=2, sort_keys=True, default=_default), "w")


def read_json(path: Path | str, what: str | None = None) -> Any:
    """Parse a JSON file. A missing or invalid file is one :class:`GranularityError` line; with
    ``what`` (e.g. "iNat2021 annotation file") every failure, unreadable or too deeply nested
    files too, is one :class:`~granularity.errors.DataError` line naming ``what`` and the file."""
    from granularity.errors import DataError

    src = f"{what} {str(path)!r}" if what else f"File {str(path)!r}"
    err = DataError if what else GranularityError
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise err(f"{src} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise err(f"{src} is not valid JSON ({exc}).") from None
    except OSError as exc:  # a folder, no permission, an I/O error
        if what is None:
            raise
        raise DataError(f"{src} cannot be read ({exc.strerror or exc}).") from None
    except RecursionError:
        if what is None:
            raise
        raise DataError(f"{src} nests too deeply to be a {what}.") from None


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` atomically."""
    _atomic(Path(path), lambda fh: np.savez_compressed(fh, **arrays), "wb")


def write_csv_table(path: Path | str, columns: Sequence[str], rows: Sequence[Mapping[str, Any] | Sequence[Any]],
                    lineterminator: str = "\r\n") -> None:
    """Write a CSV table atomically (UTF-8): a header of ``columns``, then ``rows``, each a dict
    by column name (absent columns left empty) or a sequence in column order. The line ending
    is the csv module's default unless given."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow(columns)
    for row in rows:
        w.writerow([row.get(c, "") for c in columns] if isinstance(row, Mapping) else row)
    _atomic(Path(path), lambda fh: fh.write(buf.getvalue().encode("utf-8")), "wb")


def write_bytes_atomic(path: Path | str, write: Callable[[Any], None]) -> None:
    """Call ``write(fh)`` on a binary temp file and rename it to ``path``."""
    _atomic(Path(path), write, "wb")


def append_jsonl(path: Path | str, record: dict[str, Any]) -> None:
    """Append one JSON line (a partial last line after a crash is skipped by :func:`read_jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=_default) + "\n")


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - git missing or not a checkout
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, machine and device, for every run record."""
    import torch

    import granularity

    env = {
        "granularity": granularity.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": device or "cpu",
        "git_revision": git_revision(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def check_writable(out: Path | str) -> Path:
    """Create ``out`` and check that a file can be written there, before any heavy work."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a unique probe name: several processes may check one folder at once (sweep workers)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
    except OSError as exc:
        raise GranularityError(
            f"The output folder {str(out)!r} is not writable ({exc.strerror or exc}); choose another with --out."
        ) from None
    return out
