"""``Explanation``: the one result type every explainer returns, saved as safetensors + JSON."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "whynet.explanation"
FORMAT_VERSION = 1
#: a safetensors header larger than this is refused before it is parsed
MAX_HEADER = 64 << 20
#: our temp files: ``.NAME.w<pid>-<random>.tmp`` (a folder artefact uses the same names)
_TMP = re.compile(r"^\..+\.w(\d+)-[A-Za-z0-9_]+\.tmp$")
#: temp paths this process is writing now (never removed as stale by another thread)
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Remove our temp files and folders in ``folder`` left by a killed save.

    A temp belongs to a dead process (its pid is in the name) or to this process but no save
    of ours is writing it. Temps of live processes are kept: they may be saving right now.
    Returns how many were removed.
    """
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = _TMP.match(name)
        if m is None:
            continue
        p = os.path.join(folder, name)
        with _ACTIVE_LOCK:
            busy = p in _ACTIVE
        if busy or (int(m.group(1)) != os.getpid() and _alive(int(m.group(1)))):
            continue
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def temp_path(path: Path, folder: bool = False) -> Iterator[str]:
    """A temp file (or folder) beside ``path`` named as ours, registered while in use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    prefix, suffix = f".{path.name}.w{os.getpid()}-", ".tmp"
    with _ACTIVE_LOCK:  # registered before it exists: a concurrent cleanup never sees it idle
        if folder:
            tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent)
        else:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
            os.close(fd)
        _ACTIVE.add(tmp)
    try:
        yield tmp
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(tmp)


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    Two writers of one path: the last complete file wins. Temp files of ours left in the folder
    by a killed save are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    with temp_path(path) as tmp:
        try:
            write(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in chunks (weights and cache integrity checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksum(data: bytes | memoryview, kind: str, version: str, meta_json: str) -> str:
    """sha256 of the tensor bytes and everything else the header says (format, version, meta)."""
    h = hashlib.sha256()
    for part in (kind, version, meta_json):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def _split(raw: bytes, path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header of ``raw`` and the offset of its data, bounded and validated."""
    if len(raw) < 8:
        raise ValueError(f"{path} is not a readable safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(MAX_HEADER, len(raw) - 8):
        raise ValueError(
            f"{path} is not a readable safetensors file (header of {n} bytes in a file of "
            f"{len(raw)})"
        )
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a readable safetensors file (header is not a map)")
    return header, 8 + n


def save_tensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    kind: str,
    version: int,
) -> Path:
    """Write ``tensors`` and JSON ``meta`` to one safetensors file, atomically.

    The header holds ``sha256``: a checksum of the tensor bytes, the format, its version and
    the metadata, verified by :func:`load_tensors`.
    """
    from safetensors.torch import save

    meta_json = json.dumps(meta)
    tensors = _unshare(tensors)
    header = {"format": kind, "format_version": str(version), "json": meta_json}
    raw = save(tensors, metadata=header)  # the data layout does not depend on the metadata
    _, start = _split(raw, Path(path))
    header["sha256"] = _checksum(memoryview(raw)[start:], kind, str(version), meta_json)
    raw = save(tensors, metadata=header)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(raw))


def load_tensors(
    path: str | os.PathLike[str], kind: str, max_version: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`.

    The file is read once into memory, so a concurrent save (an atomic rename) yields the old
    version or the new, never a mixture. Truncated, foreign, edited (checksum) or corrupted
    files raise ``ValueError`` naming the file. Tensor sizes are checked against the file's
    size by safetensors before anything is allocated. Files without a checksum (written
    before it existed) are read unverified.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    raw = path.read_bytes()
    header_map, start = _split(raw, path)
    try:
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    header = header_map.get("__metadata__") or {}
    if not isinstance(header, dict) or not all(isinstance(v, str) for v in header.values()):
        raise ValueError(f"{path} has a corrupt safetensors metadata map")
    if header.get("format") != kind:
        raise ValueError(f"{path} is not a {kind} file (format={header.get('format')!r})")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        raise ValueError(
            f"{path} has a corrupt format version {header.get('format_version')!r}"
        ) from None
    if version > max_version:
        raise ValueError(f"{path} has format version {version}; this whynet reads <= {max_version}")
    if "json" not in header:
        raise ValueError(f"{path} has corrupt metadata (no 'json' entry)")
    if "sha256" in header:
        expected = _checksum(
            memoryview(raw)[start:], kind, header.get("format_version", "0"), header["json"]
        )
        if header["sha256"] != expected:
            raise ValueError(
                f"{path} is corrupted: its content does not match the checksum in its header "
                "(changed bytes or an edited header); save it again"
            )
    try:
        meta = json.loads(header["json"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} has corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has corrupt metadata (a {type(meta).__name__}, not a map)")
    return tensors, meta


def check_schema(path: object, meta: dict[str, Any], schema: dict[str, Any]) -> None:
    """``meta[key]`` must be an instance of ``schema[key]`` (a type or tuple of types)."""
    for key, types in schema.items():
        if key not in meta:
            raise ValueError(f"{path} has corrupt metadata: no {key!r} entry")
        if not isinstance(meta[key], types):
            raise ValueError(
                f"{path} has corrupt metadata: {key!r} is a {type(meta[key]).__name__}"
            )


@dataclass
class Explanation:
    """What an explainer returns.

    Attributes
    ----------
    values : torch.Tensor
        The explanation, first dimension = inputs (attributions, masks, representer values...).
    target : torch.Tensor or None
        The class (or other target) explained per input.
    method : str
        Registry name of the method that produced it.
    layer : str or None
        The layer explained, where one applies.
    params : dict
        The settings used (JSON-serialisable).
    extras : dict of str to torch.Tensor
        Further tensors (stage-1 masks, omega, losses, indices...).
    meta : dict
        Further JSON-serialisable information (class names, tokens...).
    """

    values: torch.Tensor
    target: torch.Tensor | None = None
    method: str = ""
    layer: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def _repr_html_(self) -> str:
        """Jupyter's view: the report's figures of this explanation
        (:func:`whynet.viz.explanation_html`)."""
        import importlib

        # viz sits above core: looked up at call time, never imported by core's modules
        viz = importlib.import_module("whynet.viz.explanation")
        return str(viz.explanation_html(self))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (safetensors + JSON metadata, atomically)."""
        tensors = {"values": self.values}
        if self.target is not None:
            tensors["target"] = self.target
        tensors.update({f"extras.{k}": v for k, v in self.extras.items()})
        meta = {
            "method": self.method,
            "layer": self.layer,
            "params": self.params,
            "meta": self.meta,
        }
        try:
            json.dumps(meta)
        except TypeError as e:
            raise TypeError(f"Explanation params/meta must be JSON-serialisable: {e}") from None
        return save_tensors(path, tensors, meta, FORMAT, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read a file written by :meth:`save`. Never unpickles anything."""
        tensors, meta = load_tensors(path, FORMAT, FORMAT_VERSION)
        check_schema(
            path, meta, {"method": str, "layer": (str, type(None)), "params": dict, "meta": dict}
        )
        if "values" not in tensors:
            raise ValueError(f"{path} has no 'values' tensor")
        extras = {k[len("extras.") :]: v for k, v in tensors.items() if k.startswith("extras.")}
        return cls(
            values=tensors["values"],
            target=tensors.get("target"),
            method=meta["method"],
            layer=meta["layer"],
            params=meta["params"],
            extras=extras,
            meta=meta["meta"],
        )
