"""Writing a snapshot's files durably: safetensors streamed from each array's memory
and hashed on a second thread while written, small files written and fsynced, a
directory fsynced, and the SHA-256 digests the manifest records. Used by
:class:`online_models.snapshot.SnapshotStore`, which also checks the digests on load.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__: list[str] = []

# Large files are hashed and written in chunks so hashing overlaps writing.
_CHUNK = 16 << 20


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def _write_durable(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``, fsync it, and return its SHA-256."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return _sha256(data)


_ST_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def _write_safetensors(path: Path, arrays: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """Stream ``arrays`` to ``path`` in the safetensors layout; return (SHA-256, bytes).

    ``safetensors.numpy.save`` first builds the whole file in one ``bytes`` object,
    which for a 256 MB table costs more than the disk write. This writes the same
    layout (8-byte little-endian header length, JSON header padded to 8 bytes, then
    the raw little-endian buffers in header order) straight from each array's memory
    and hashes it on a second thread while the first one writes. Files are read back
    with the library's own ``safetensors.numpy.load``, which validates the layout.
    """
    header: dict[str, Any] = {}
    buffers: list[memoryview] = []
    offset = 0
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        code = _ST_DTYPES.get(np.dtype(arr.dtype.str.replace(">", "<")))
        if code is None:
            raise TypeError(f"array {name!r}: dtype {arr.dtype} not storable")
        buf = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(buf)],
        }
        buffers.append(buf)
        offset += len(buf)
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 8)
    prefix = len(head).to_bytes(8, "little") + head

    h = hashlib.sha256(prefix)
    pool = _hash_pool()
    chunks = [b[i : i + _CHUNK] for b in buffers for i in range(0, len(b), _CHUNK)]
    # hashlib and file writes both release the GIL on large buffers, so hashing
    # chunk n+1 overlaps writing chunk n on a second core.
    pending = pool.submit(_hash_all, h, chunks)
    with open(path, "wb") as f:
        f.write(prefix)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    pending.result()
    return h.hexdigest(), len(prefix) + offset


def _write_files(root: Path, files: Mapping[str, Mapping[str, np.ndarray]], threads: int
                 ) -> dict[str, tuple[str, int]]:
    """Write each ``files[name]`` to ``root / name`` (``threads`` at a time, largest
    first); (SHA-256, bytes) by name."""
    def one(name: str) -> tuple[str, int]:
        return _write_safetensors(root / name, files[name])

    if threads <= 1 or len(files) <= 1:
        return {name: one(name) for name in files}
    order = sorted(files, key=lambda n: -sum(a.nbytes for a in files[n].values()))
    with ThreadPoolExecutor(threads, thread_name_prefix="snapshot-write") as pool:
        return dict(zip(order, pool.map(one, order), strict=True))


def _hash_all(h: Any, chunks: list[memoryview]) -> None:
    for c in chunks:
        h.update(c)


_POOL: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-hash")
    return _POOL


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
