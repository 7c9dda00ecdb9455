"""The sharded store: fixed-size safetensors shards and one manifest, usable with or without Ray.

Layout of a store folder::

    manifest.json          format, version, fingerprint, n_rows, shard_rows, schema, shards
    shard-00000.safetensors  rows [0, shard_rows)
    shard-00001.safetensors  rows [shard_rows, 2 shard_rows) ...

Every shard holds the same named tensors (the *schema*: names, dtypes, trailing shapes), each
with the shard's rows along the first axis. The manifest records, per shard, its index, row range,
row count, file and sha256; it is the commit point. A shard file is written atomically by whoever
computes it (a Ray worker or the local loop, :func:`write_shard`), then verified by the one
process that owns the manifest (:meth:`ShardedStore.commit`) before it is listed; the manifest is
rewritten atomically after each commit. A run killed half-way therefore leaves a manifest that
lists only complete, verified shards, and a rerun computes only the missing ones
(:meth:`ShardedStore.missing`). Every read verifies the shard's checksum against the manifest.

The ``fingerprint`` ties the store to what produced it (model weights, layers, data, shard size):
opening a store with another fingerprint is refused, so a store of another model or layer is
never read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from whynet.core.explanation import atomic_write, file_sha256

FORMAT = "whynet.scale.store"
VERSION = 1
MANIFEST = "manifest.json"


class StoreError(ValueError):
    """A store that cannot be read as valid (fingerprint, manifest, checksum or schema)."""


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def shard_range(index: int, n_rows: int, shard_rows: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` (the last shard may be shorter)."""
    start = index * shard_rows
    return start, min(start + shard_rows, n_rows)


def n_shards(n_rows: int, shard_rows: int) -> int:
    return -(-n_rows // shard_rows)


def schema_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Names -> dtype and trailing shape (what every shard of a store must agree on)."""
    return {
        name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape[1:])}
        for name, t in sorted(tensors.items())
    }


def write_shard(
    folder: str | os.PathLike[str], index: int, start: int, tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Write one shard file atomically and return its manifest record (no manifest change).

    Pure and idempotent: a retried task (Ray) rewrites the same bytes under the same name.
    """
    from safetensors.torch import save

    rows = {int(t.shape[0]) for t in tensors.values()}
    if len(rows) != 1:
        raise ValueError(f"shard {index}: tensors have different row counts {sorted(rows)}")
    raw = save({k: t.detach().cpu().contiguous() for k, t in tensors.items()})
    path = Path(folder) / shard_file(index)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(raw))
    n = rows.pop()
    return {
        "index": index,
        "start": start,
        "stop": start + n,
        "rows": n,
        "file": path.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "schema": schema_of(tensors),
    }


@dataclass
class ShardedStore:
    """A folder of shards and its manifest (see the module doc).

    Use :meth:`create` to open a store for writing (new, or resumed when the fingerprint matches)
    and :meth:`open` to read a finished one.
    """

    folder: Path
    manifest: dict[str, Any]
    #: shards committed by this process since it opened the store (counts recomputation)
    computed: int = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        *,
        fingerprint: str,
        n_rows: int,
        shard_rows: int,
        meta: Mapping[str, Any] | None = None,
    ) -> ShardedStore:
        """Open ``folder`` for writing: a new store, or the existing one to resume.

        An existing manifest must carry the same fingerprint, row count and shard size; its
        shards are verified and any whose file is missing or corrupt is dropped (recomputed).
        """
        if n_rows < 1:
            raise ValueError("the data has no examples")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        folder = Path(folder)
        if (folder / MANIFEST).exists():
            store = cls.open(folder, fingerprint=fingerprint, verify=False)
            m = store.manifest
            if (m["n_rows"], m["shard_rows"]) != (n_rows, shard_rows):
                raise StoreError(
                    f"store {folder} holds {m['n_rows']} rows in shards of {m['shard_rows']}, "
                    f"not {n_rows} in shards of {shard_rows}; use another folder"
                )
            for key in list(m["shards"]):
                if not store._intact(m["shards"][key]):
                    del m["shards"][key]  # corrupt or missing: recomputed by the resumed run
            if not m["shards"]:
                m["schema"] = None
            store._save()
            return store
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": fingerprint,
            "n_rows": n_rows,
            "shard_rows": shard_rows,
            "n_shards": n_shards(n_rows, shard_rows),
            "schema": None,
            "meta": dict(meta or {}),
            "shards": {},
        }
        store = cls(folder, manifest)
        store._save()
        return store

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        *,
        fingerprint: str | None = None,
        verify: bool = True,
    ) -> ShardedStore:
        """Open a store for reading; with ``fingerprint`` it must be the store of that producer.

        ``verify`` checks that the manifest tiles the rows and every shard's file matches its
        checksum (``StoreError`` otherwise).
        """
        folder = Path(folder)
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("format") != FORMAT:
                raise KeyError("format")
            for key in ("fingerprint", "n_rows", "shard_rows", "shards"):
                manifest[key]  # noqa: B018 - presence check
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{path} is not a whynet sharded store manifest ({e})") from None
        if manifest["version"] > VERSION:
            raise StoreError(f"{path} has version {manifest['version']}; this reads <= {VERSION}")
        if fingerprint is not None and manifest["fingerprint"] != fingerprint:
            raise StoreError(
                f"store {folder} was written for another model, layer or data set (fingerprint "
                f"{manifest['fingerprint'][:12]}..., expected {fingerprint[:12]}...); use "
                "another folder or delete this one"
            )
        store = cls(folder, manifest)
        if verify:
            store.check_complete()
            for index in range(store.n_shards):
                store.read_shard(index)  # verifies checksum, rows and schema
        return store

    # ------------------------------------------------------------------ properties
    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def shard_rows(self) -> int:
        return int(self.manifest["shard_rows"])

    @property
    def n_shards(self) -> int:
        return n_shards(self.n_rows, self.shard_rows)

    @property
    def schema(self) -> dict[str, Any] | None:
        return self.manifest.get("schema")

    def range(self, index: int) -> tuple[int, int]:
        return shard_range(index, self.n_rows, self.shard_rows)

    def missing(self) -> list[int]:
        """Shard indices not (yet) listed in the manifest, in order."""
        return [i for i in range(self.n_shards) if str(i) not in self.manifest["shards"]]

    @property
    def complete(self) -> bool:
        return not self.missing()

    # ------------------------------------------------------------------ writing
    def _save(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        atomic_write(self.folder / MANIFEST, lambda tmp: Path(tmp).write_text(text))

    def _intact(self, rec: Mapping[str, Any]) -> bool:
        path = self.folder / str(rec.get("file", ""))
        return path.is_file() and file_sha256(path) == rec.get("sha256")

    def commit(self, record: Mapping[str, Any]) -> None:
        """List a shard written by :func:`write_shard` after checking it (the commit point)."""
        index = int(record["index"])
        start, stop = self.range(index)
        if (record["start"], record["stop"]) != (start, stop):
            raise StoreError(
                f"shard {index} holds rows [{record['start']}, {record['stop']}), "
                f"expected [{start}, {stop})"
            )
        if self.schema is not None and record["schema"] != self.schema:
            raise StoreError(
                f"mixed shard schemas in {self.folder}: shard {index} has {record['schema']}, "
                f"the store {self.schema}"
            )
        if not self._intact(record):
            raise StoreError(f"shard file {record['file']} is incomplete or was changed")
        rec = {k: v for k, v in record.items() if k != "schema"}
        self.manifest["schema"] = record["schema"]
        self.manifest["shards"][str(index)] = rec
        self.computed += 1
        self._save()

    def put(self, index: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Write and commit one shard from this process (the local engine)."""
        self.commit(write_shard(self.folder, index, self.range(index)[0], tensors))

    # ------------------------------------------------------------------ reading
    def check_complete(self) -> None:
        missing = self.missing()
        if missing:
            raise StoreError(
                f"store {self.folder} is incomplete: {len(missing)} of {self.n_shards} shards "
                f"missing (first {missing[0]}); rerun the extraction to resume it"
            )
        extra = set(self.manifest["shards"]) - {str(i) for i in range(self.n_shards)}
        if extra:
            raise StoreError(f"manifest of {self.folder} lists unknown shards {sorted(extra)}")

    def read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """One shard's tensors, verified against the manifest (checksum, rows, schema)."""
        from safetensors.torch import load

        rec = self.manifest["shards"].get(str(index))
        if rec is None:
            raise StoreError(f"shard {index} of {self.folder} is not in the manifest")
        path = self.folder / str(rec["file"])
        if os.path.basename(str(rec["file"])) != rec["file"]:
            raise StoreError(f"manifest of {self.folder} names a bad file {rec['file']!r}")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise StoreError(f"shard {index} of {self.folder} cannot be read ({e})") from None
        if hashlib.sha256(raw).hexdigest() != rec["sha256"]:
            raise StoreError(
                f"corrupted shard {path}: its sha256 does not match the manifest; rerun the "
                "extraction on this store to recompute it"
            )
        tensors = load(raw)
        start, stop = self.range(index)
        if (rec["start"], rec["stop"]) != (start, stop) or any(
            t.shape[0] != stop - start for t in tensors.values()
        ):
            raise StoreError(
                f"manifest of {self.folder} does not match shard {index}: it should hold rows "
                f"[{start}, {stop}) ({stop - start} rows)"
            )
        if schema_of(tensors) != self.schema:
            raise StoreError(
                f"mixed shard schemas in {self.folder}: shard {index} has "
                f"{schema_of(tensors)}, the manifest {self.schema}"
            )
        return tensors

    def iter_shards(self, names: tuple[str, ...] | None = None) -> Iterator[tuple[int, dict]]:
        """``(start row, tensors)`` per shard in order (verified)."""
        self.check_complete()
        for i in range(self.n_shards):
            t = self.read_shard(i)
            yield self.range(i)[0], t if names is None else {k: t[k] for k in names}

    def gather(self, name: str) -> torch.Tensor:
        """All rows of one tensor, concatenated on this node (for what fits in memory)."""
        schema = self.schema or {}
        if name not in schema:
            raise KeyError(f"store {self.folder} has no tensor {name!r} (has {sorted(schema)})")
        return torch.cat([t[name] for _, t in self.iter_shards((name,))])
