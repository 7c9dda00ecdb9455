"""The one activation store: per-name arrays appended batch by batch, in memory until a limit,
then spilled to raw files (``np.memmap``); optionally kept on disk as a verified cache.

Representer points keep the head's inputs and the model's outputs here, clustering surrogates
the reduced layer activations. A 60k-point set of conv feature maps never has to fit in memory
twice, and a cache of 1M feature rows is read back memory-mapped, not into RAM.

Cache files: ``NAME-KEY.npy`` per array and ``store-KEY.json`` with each file's sha256, shape
and dtype; every file is written atomically and every checksum is verified on read. Writers and
readers of one key take the key's file lock (``.store-KEY.lock``, threads and processes alike):
two writers at once used to delete each other's fresh arrays in their cleanup, and a reader could
open an array a writer had just replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from whynet.core.explanation import atomic_write, file_sha256

CACHE_VERSION = 1


class ActivationStore:
    """Append-only arrays by name; spills to files in ``cache_dir`` past ``memory_limit`` bytes.

    Arrays keep the dtype of what is appended (floating batches are stored as float32 unless
    appended with ``dtype=``); every batch of a name must have the same per-row shape.
    """

    def __init__(
        self, memory_limit: int = 1 << 30, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.memory_limit = memory_limit
        self.cache_dir = cache_dir
        self.chunks: dict[str, list[np.ndarray]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype[Any]] = {}
        self.rows: dict[str, int] = {}
        self.bytes = 0
        self.folder: Path | None = None
        self.files: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}

    def append(self, name: str, batch: torch.Tensor, dtype: Any = None) -> None:
        t = batch.detach().cpu()
        if dtype is None:
            dtype = np.float32 if t.is_floating_point() else None
        arr = np.ascontiguousarray(t.numpy(), dtype=dtype)
        shape = tuple(arr.shape[1:])
        if self.shapes.setdefault(name, shape) != shape:
            raise ValueError(
                f"layer {name!r} changed shape between batches: "
                f"{self.shapes[name]} then {shape} (pad sequences to one length?)"
            )
        self.dtypes.setdefault(name, arr.dtype)
        self.rows[name] = self.rows.get(name, 0) + len(arr)
        if self.folder is not None:
            self._file(name).write(arr.tobytes())
            return
        self.chunks.setdefault(name, []).append(arr)
        self.bytes += arr.nbytes
        if self.bytes > self.memory_limit:
            self._spill()

    def _spill(self) -> None:
        base = None if self.cache_dir is None else str(self.cache_dir)
        if base is not None:
            os.makedirs(base, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="whynet-acts-", dir=base))
        for name, chunks in self.chunks.items():
            fh = self._file(name)
            for c in chunks:
                fh.write(c.tobytes())
        self.chunks = {}

    def _file(self, name: str) -> Any:
        if name not in self.files:
            assert self.folder is not None
            self.paths[name] = self.folder / f"layer{len(self.paths)}.bin"
            self.files[name] = open(self.paths[name], "wb")  # noqa: SIM115
        return self.files[name]

    def arrays(self) -> dict[str, np.ndarray]:
        """Each name's rows as one array (in memory or memory-mapped, read-only)."""
        out: dict[str, np.ndarray] = {}
        for name, shape in self.shapes.items():
            if self.folder is None:
                out[name] = np.concatenate(self.chunks.pop(name))  # free chunks as we go
            else:
                self.files[name].close()
                out[name] = np.memmap(
                    self.paths[name],
                    dtype=self.dtypes[name],
                    mode="r",
                    shape=(self.rows[name], *shape),
                )
        return out

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def close(self) -> None:
        """Delete the spill files (arrays returned by :meth:`arrays` become invalid)."""
        for fh in self.files.values():
            fh.close()
        self.files = {}
        self.chunks = {}
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _plain(name: str) -> bool:
    """A bare file name (no folder part): a sidecar cannot point outside its folder."""
    return bool(name) and os.path.basename(name) == name and name not in (".", "..")


def _read_verified(path: Path, sha256: object, mmap: bool) -> np.ndarray | None:
    """The array in ``path`` if its bytes hash to ``sha256`` (None otherwise).

    The file is opened once: the bytes hashed are the bytes loaded (or memory-mapped), so a
    concurrent rewrite of the cache (an atomic rename) cannot slip another version in between.
    """
    with open(path, "rb") as f:
        if not mmap:
            raw = f.read()
            if hashlib.sha256(raw).hexdigest() != sha256:
                return None
            try:
                return np.load(io.BytesIO(raw), allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"corrupted cache file {path} ({e})") from None
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
        if h.hexdigest() != sha256:
            return None
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise ValueError(f"corrupted cache file {path} ({e})") from None
        if dtype.hasobject:
            raise ValueError(f"corrupted cache file {path} (object arrays are never loaded)")
        # copy-on-write map of the inode we hashed (our handle keeps it even if replaced)
        return np.memmap(
            f, dtype=dtype, mode="c", shape=shape, order="F" if fortran else "C", offset=f.tell()
        )


class StoreCache:
    """A keyed on-disk cache of named arrays in ``folder`` (see the module doc).

    ``KEY`` should combine the model's and the data's fingerprints. Reading verifies every
    checksum; a mismatch raises ``ValueError`` naming the file (delete it to rebuild). Arrays
    named in ``mmap`` come back memory-mapped (copy-on-write: the file is never changed).
    """

    def __init__(self, folder: str | os.PathLike[str], key: str, what: str = "activation") -> None:
        self.folder = Path(folder)
        self.key = key[:24]
        self.what = what
        self.meta_path = self.folder / f"store-{self.key}.json"
        self._lock_path = self.folder / f".store-{self.key}.lock"

    def _lock(self) -> FileLock:
        return FileLock(self._lock_path)

    def path(self, name: str) -> Path:
        """The file holding ``name`` now (the one the sidecar names; the old layout's
        ``NAME-KEY.npy`` where no sidecar names one)."""
        try:
            file = json.loads(self.meta_path.read_text())["files"][name]["file"]
            if isinstance(file, str) and _plain(file):
                return self.folder / file
        except (OSError, KeyError, TypeError, ValueError):
            pass
        return self.folder / f"{name}-{self.key}.npy"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def write(
        self, arrays: dict[str, torch.Tensor | np.ndarray | None], extra: dict[str, Any]
    ) -> None:
        """Write the arrays, then the sidecar naming them (the commit point): each write gets
        new file names (``NAME-KEY.<token>.npy``), so a write killed at any point leaves the
        previous cache whole; files no sidecar names are removed after the commit."""
        with self._lock():
            self._write(arrays, extra)

    def _write(
        self, arrays: dict[str, torch.Tensor | np.ndarray | None], extra: dict[str, Any]
    ) -> None:
        meta: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key, "files": {}, **extra}
        token = uuid.uuid4().hex[:12]
        for name, value in arrays.items():
            if value is None:
                continue
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            path = self.folder / f"{name}-{self.key}.{token}.npy"

            def write(tmp: str, arr: np.ndarray = arr) -> None:
                with open(tmp, "wb") as f:  # a file object: np.save would append ".npy"
                    np.save(f, arr)

            atomic_write(path, write)
            meta["files"][name] = {
                "file": path.name,
                "sha256": file_sha256(path),
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
            }
        atomic_write(self.meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta)))
        keep = {info["file"] for info in meta["files"].values()}
        for old in self.folder.glob(f"*-{self.key}*.npy"):  # earlier or killed writes
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def read(self, mmap: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Verified arrays by name and the sidecar metadata."""
        lock = self._lock()
        try:
            lock.acquire()
        except OSError:  # a read-only folder: nobody can be writing into it
            return self._read(mmap)
        try:
            return self._read(mmap)
        finally:
            lock.release()

    def _read(self, mmap: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        where = f"{self.what} cache"
        try:
            meta = json.loads(self.meta_path.read_text())
            files = meta["files"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"corrupted {where} {self.meta_path} ({e}); delete it to rebuild"
            ) from None
        if meta.get("version", 0) > CACHE_VERSION:
            raise ValueError(
                f"{self.meta_path} has cache version {meta.get('version')}; "
                f"this whynet reads <= {CACHE_VERSION}"
            )
        if not isinstance(files, dict) or not all(isinstance(i, dict) for i in files.values()):
            raise ValueError(f"corrupted {where} {self.meta_path}; delete it to rebuild")
        out: dict[str, torch.Tensor] = {}
        for name, info in files.items():
            file = info.get("file", f"{name}-{self.key}.npy")
            if not isinstance(file, str) or not _plain(file):
                raise ValueError(f"corrupted {where} {self.meta_path}: bad file name {file!r}")
            path = self.folder / file
            try:
                arr = _read_verified(path, info.get("sha256"), name in mmap)
            except OSError:
                arr = None
            if arr is None:
                raise ValueError(
                    f"corrupted {where}: {path} is missing or its sha256 does not match the "
                    f"recorded checksum; delete {self.folder}/*-{self.key}.* to rebuild"
                )
            if str(arr.dtype) != info.get("dtype") or list(arr.shape) != info.get("shape"):
                raise ValueError(
                    f"corrupted {where} {path}: {arr.dtype} {arr.shape}, expected "
                    f"{info.get('dtype')} {info.get('shape')}"
                )
            out[name] = torch.from_numpy(arr)
        return out, meta
