"""A small pure-Python/numpy reader for IDX files (the MNIST / Fashion-MNIST format).

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number
of dimensions, then each dimension as a big-endian uint32, then the data in row-major order.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from whynet.data._base import DatasetMissingError

__all__ = ["read_idx", "write_idx"]

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_CODES: dict[str, int] = {
    "uint8": 0x08,
    "int8": 0x09,
    "int16": 0x0B,
    "int32": 0x0C,
    "float32": 0x0D,
    "float64": 0x0E,
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, by a ``.gz`` suffix or its magic bytes).

    Raises
    ------
    DatasetMissingError
        The file does not exist (a ``FileNotFoundError`` and a ``ValueError``).
    ValueError
        The file is corrupt: bad gzip stream, bad magic, unknown type, or a body whose size does
        not match the header (truncated or with trailing bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetMissingError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"corrupt IDX file {path}: bad gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"corrupt IDX file {path}: bad magic number {raw[:4]!r}")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise ValueError(f"corrupt IDX file {path}: unknown data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"corrupt IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise ValueError(
            f"corrupt IDX file {path}: {kind} (header says {dims} = {expected} bytes, "
            f"body has {body})"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.name)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.dtype(_DTYPES[code])).tobytes()
    data = header + body
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
