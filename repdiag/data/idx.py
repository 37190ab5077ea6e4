"""Reader and writer for the IDX file format (MNIST, Fashion-MNIST).

An IDX file is: two zero bytes, one type byte, one byte giving the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then the data in
big-endian order. Files ending in ``.gz`` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from repdiag.errors import UserError

# type byte -> numpy dtype (big-endian)
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_TO_CODE = {dt.newbyteorder("="): code for code, dt in _CODE_TO_DTYPE.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped if the name ends in ``.gz``) into a native-order array.

    Raises :class:`UserError` naming the file if the magic number, the header
    or the data length is wrong.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise UserError(f"not an IDX file (too short): {path}")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _CODE_TO_DTYPE:
        magic = int.from_bytes(raw[:4], "big")
        raise UserError(f"not an IDX file (bad magic number 0x{magic:08x}): {path}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise UserError(f"IDX file has a truncated header: {path}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise UserError(
            f"IDX file {path} should hold {expected} data bytes for shape {shape}, "
            f"has {len(raw) - header_end}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    # copy: frombuffer views are read-only, and callers hand the result to torch
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    code = _DTYPE_TO_CODE.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(_CODE_TO_DTYPE[code], copy=False).tobytes(order="C")
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
