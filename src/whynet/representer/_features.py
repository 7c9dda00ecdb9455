"""Head-input features: extraction in eval mode (streamed), and an on-disk cache with checksums.

The representer decomposition needs ``f_i``, the input of the final linear layer (Yeh et al.
2018, Sec. 3). They are captured with a forward-pre hook on the head (registered through
:func:`whynet.core.hooked`), stored as float32, and optionally cached as ``.npy`` files that are
memory-mapped on reuse so that n = 1M training points never need to sit in RAM.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from whynet.core import (
    as_logits,
    atomic_write,
    data_length,
    frozen_eval,
    hooked,
    iter_batches,
    model_device,
    progress,
    resolve_layer,
)
from whynet.core.explanation import file_sha256

CACHE_VERSION = 1


def linear_head(model: nn.Module, head: str) -> nn.Linear:
    """The head module, which must be an ``nn.Linear`` (the decomposition is linear in it)."""
    module = resolve_layer(model, head)
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"head {head!r} must be a torch.nn.Linear (representer points decompose "
            f"a final linear layer), got {type(module).__name__}"
        )
    return module


def head_weight(module: nn.Linear) -> torch.Tensor:
    """``[W, b]`` (C, D+1): the head with its bias as the last column (zero if it has none)."""
    w = module.weight.detach()
    if module.bias is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    else:
        b = module.bias.detach()
    return torch.cat([w, b[:, None].to(w.dtype)], dim=1)


def forward_features(
    model: nn.Module, head: str, x: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """One eval-mode forward: ``(features (B, D) float32, model output (B, C))``.

    Call inside :func:`frozen_eval` and ``torch.no_grad()``.
    """
    module = linear_head(model, head)
    seen: list[torch.Tensor] = []

    def pre(mod: nn.Module, args: Any) -> None:
        seen.append(args[0].detach())

    with hooked([(module, "forward_pre", pre)]):
        out = as_logits(model(x, **kwargs))
    if len(seen) != 1:
        raise ValueError(
            f"head {head!r} ran {len(seen)} times in one forward pass; representer "
            "points need a head that runs exactly once"
        )
    f = seen[0]
    if f.dim() != 2 or f.shape[0] != x.shape[0]:
        raise ValueError(
            f"head {head!r} input has shape {tuple(f.shape)}; representer points "
            "need flat (batch, features) inputs to the head"
        )
    return f.float(), out


def iter_features(
    model: nn.Module,
    head: str,
    data: Any,
    labels: torch.Tensor | None,
    batch_size: int,
    need_labels: bool,
    show: bool | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Stream ``(features, model output, labels)`` over ``data`` in eval mode."""
    n = data_length(data)
    total = None if n is None else math.ceil(n / batch_size)
    device = model_device(model)
    batches = iter_batches(
        data, labels, batch_size=batch_size, need_labels=need_labels, device=device
    )
    with frozen_eval(model), torch.no_grad():
        for x, y in progress(batches, total=total, desc="representer features", enabled=show):
            f, out = forward_features(model, head, x)
            yield f, out, y


def check_finite(features: torch.Tensor, where: str = "training") -> None:
    """Reject NaN/inf features with the first offending row."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{where} features are not finite (first at row {row}, "
            f"{int(bad.sum())} rows in all); check the model and inputs"
        )


# ---- fingerprints and the on-disk cache ------------------------------------------------------


def model_fingerprint(model: nn.Module, head: str) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes) and the head name."""
    h = hashlib.sha256(head.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(data: Any, labels: torch.Tensor | None, batch_size: int) -> str:
    """sha256 over the data length and the first batch (inputs and labels).

    Cheap on purpose (one batch): it guards against reusing a cache for another data set of
    the same model, not against edits deep inside the same data set.
    """
    h = hashlib.sha256(str(data_length(data)).encode())
    for x, y in iter_batches(data, labels, batch_size=batch_size):
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        if y is not None:
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
        break
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a str path
            np.save(f, array)

    atomic_write(path, write)


class FeatureCache:
    """``features-KEY.npy``, ``outputs-KEY.npy`` (+ ``labels-KEY.npy``) and a JSON sidecar with
    their sha256 checksums.

    ``KEY`` combines the model and data fingerprints. Reading verifies every checksum; a
    mismatch raises ``ValueError`` naming the file (delete it to rebuild). Features come back
    memory-mapped (float32), so a cache of 1M rows is not read into RAM.
    """

    names = ("features", "outputs", "labels")

    def __init__(self, folder: str | os.PathLike[str], key: str) -> None:
        self.folder = Path(folder)
        self.key = key[:24]
        self.meta_path = self.folder / f"features-{self.key}.json"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}-{self.key}.npy"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def write(self, arrays: dict[str, torch.Tensor | None], extra: dict[str, Any]) -> None:
        meta: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key, "files": {}, **extra}
        for name in self.names:
            t = arrays.get(name)
            if t is None:
                continue
            cpu = t.detach().cpu()
            arr = (
                cpu.long()
                if name == "labels"
                else cpu.float()
                if name == "features"
                else cpu.double()
            ).numpy()
            _save_npy(self.path(name), arr)
            meta["files"][name] = {
                "sha256": file_sha256(self.path(name)),
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
            }
        atomic_write(self.meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta)))

    def read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Verified arrays by name (features memory-mapped) and the sidecar metadata."""
        try:
            meta = json.loads(self.meta_path.read_text())
            files = meta["files"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"corrupted representer feature cache {self.meta_path} ({e}); delete it to rebuild"
            ) from None
        if meta.get("version", 0) > CACHE_VERSION:
            raise ValueError(
                f"{self.meta_path} has cache version {meta.get('version')}; "
                f"this whynet reads <= {CACHE_VERSION}"
            )
        out: dict[str, torch.Tensor] = {}
        for name, info in files.items():
            path = self.path(name)
            if not path.is_file() or file_sha256(path) != info.get("sha256"):
                raise ValueError(
                    f"corrupted representer feature cache: {path} is missing or its "
                    "sha256 does not match the recorded checksum; delete "
                    f"{self.folder}/*-{self.key}.* to rebuild"
                )
            try:
                # copy-on-write map: torch wraps it without copying, the file is never changed
                arr = np.load(path, mmap_mode="c" if name == "features" else None)
            except ValueError as e:
                raise ValueError(f"corrupted representer feature cache {path} ({e})") from None
            if str(arr.dtype) != info.get("dtype") or list(arr.shape) != info.get("shape"):
                raise ValueError(
                    f"corrupted representer feature cache {path}: {arr.dtype} "
                    f"{arr.shape}, expected {info.get('dtype')} {info.get('shape')}"
                )
            out[name] = torch.from_numpy(arr)
        if "features" not in out or "outputs" not in out:
            raise ValueError(
                f"corrupted representer feature cache {self.meta_path}: "
                "no features/outputs recorded"
            )
        return out, meta
