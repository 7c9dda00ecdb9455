"""``Explanation``: the one result type every explainer returns, saved as safetensors + JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = "whynet.explanation"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
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


def save_tensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    kind: str,
    version: int,
) -> Path:
    """Write ``tensors`` and JSON ``meta`` to one safetensors file, atomically."""
    from safetensors.torch import save_file

    header = {"format": kind, "format_version": str(version), "json": json.dumps(meta)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_tensors(
    path: str | os.PathLike[str], kind: str, max_version: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`; truncated or foreign files raise ValueError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if header.get("format") != kind:
        raise ValueError(f"{path} is not a {kind} file (format={header.get('format')!r})")
    version = int(header.get("format_version", "0"))
    if version > max_version:
        raise ValueError(f"{path} has format version {version}; this whynet reads <= {max_version}")
    try:
        meta = json.loads(header["json"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} has corrupt metadata ({e})") from None
    return tensors, meta


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
        if "values" not in tensors:
            raise ValueError(f"{path} has no 'values' tensor")
        extras = {k[len("extras.") :]: v for k, v in tensors.items() if k.startswith("extras.")}
        return cls(
            values=tensors["values"],
            target=tensors.get("target"),
            method=meta.get("method", ""),
            layer=meta.get("layer"),
            params=meta.get("params", {}),
            extras=extras,
            meta=meta.get("meta", {}),
        )
