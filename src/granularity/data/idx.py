"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order, big-endian. Every problem raises a one-line
:class:`~granularity.errors.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from granularity.errors import DataError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read IDX file {path}: {exc.strerror or exc}.") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path} is a truncated or corrupt gzip file ({exc}); delete it and fetch it again."
            ) from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a native-endian array."""
    if len(data) < 4:
        raise DataError(f"IDX file {name} is truncated: {len(data)} bytes, shorter than the 4-byte magic number.")
    zero, code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES:
        raise DataError(
            f"File {name} is not an IDX file: magic number 0x{data[:4].hex()} "
            f"(expected 0x0000TTDD with type TT in {{08,09,0b,0c,0d,0e}})."
        )
    if ndim == 0:
        raise DataError(f"IDX file {name} declares 0 dimensions.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {name} is truncated inside its header ({len(data)} of {header} bytes).")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DataError(
            f"IDX file {name} is truncated: dims {dims} need {expected} data bytes, found {got}; "
            "delete it and fetch it again."
        )
    if got > expected:
        raise DataError(
            f"IDX file {name} is corrupt: dims {dims} need {expected} data bytes, found {got} (trailing data)."
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(dims)


def read_idx_bytes(path: str | Path) -> bytes:
    """The uncompressed bytes of an IDX file (``.gz`` or raw), with one-line errors."""
    return _read_bytes(Path(path))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected from the content) into a NumPy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip if ``compress`` or the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    code = next((k for k, v in IDX_TYPES.items() if v.newbyteorder("=") == native), None)
    if code is None:
        raise DataError(f"Cannot write dtype {array.dtype} to IDX file {path}.")
    body = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(body, compresslevel=6) if compress else body)
    return path
