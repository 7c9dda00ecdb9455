"""File integrity (issue 16, defect classes 1 and 5): one read per load, a content checksum,
validated headers, sizes bounded before allocation, stale temp files removed."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from whynet.core import Explainer, Explanation, FittedMixin, State, Target


def _version(k: int) -> Explanation:
    """Two distinguishable versions: every field says which one it is."""
    n = 64 if k == 0 else 96
    return Explanation(
        values=torch.full((n, 32), float(k)),
        target=torch.full((n,), k),
        method=f"v{k}",
        layer=f"layer{k}",
        params={"k": k},
    )


def _consistent(e: Explanation) -> bool:
    k = int(e.method[1:])
    n = 64 if k == 0 else 96
    return (
        e.values.shape == (n, 32)
        and bool((e.values == k).all())
        and e.target is not None
        and bool((e.target == k).all())
        and e.layer == f"layer{k}"
        and e.params == {"k": k}
    )


def _writer(path: str, rounds: int) -> None:
    versions = [_version(0), _version(1)]
    for i in range(rounds):
        versions[i % 2].save(path)


def test_concurrent_save_and_load_never_mix_versions(tmp_path):
    path = tmp_path / "e.safetensors"
    _version(0).save(path)
    ctx = mp.get_context("spawn")
    writer = ctx.Process(target=_writer, args=(str(path), 100_000), daemon=True)
    writer.start()
    try:
        mixed, loads = 0, 0
        while loads < 300:
            e = Explanation.load(path)
            loads += 1
            mixed += not _consistent(e)
    finally:
        writer.kill()
        writer.join()
    assert mixed == 0, f"{mixed} of {loads} loads mixed two versions"


def _data_offset(raw: bytes) -> int:
    return 8 + struct.unpack("<Q", raw[:8])[0]


def test_flipped_bytes_in_the_data_are_refused_naming_the_file(tmp_path):
    path = _version(1).save(tmp_path / "e.safetensors")
    raw = bytearray(path.read_bytes())
    raw[_data_offset(bytes(raw)) + 17] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"e\.safetensors.*checksum"):
        Explanation.load(path)


def _edit_header(path: Path, edit: Any) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    edit(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(json="[]"),
        lambda m: m.update(json='{"method": 3, "params": {}, "meta": {}, "layer": null}'),
        lambda m: m.update(json='{"method": "x", "params": [], "meta": {}, "layer": null}'),
        lambda m: m.update(format_version="one"),
        lambda m: m.pop("json"),
    ],
)
def test_edited_explanation_headers_give_a_clear_error(tmp_path, edit):
    path = _version(0).save(tmp_path / "e.safetensors")
    _edit_header(path, edit)
    with pytest.raises(ValueError, match=r"e\.safetensors"):
        Explanation.load(path)


def _cfg(m: nn.Module) -> dict[str, Any]:
    return {"d": m.in_features}


def _build(c: dict[str, Any]) -> nn.Module:
    return nn.Linear(c["d"], c["d"])


class Probe(FittedMixin, Explainer):
    method = "probe"
    _format = "whynet.test.probe"
    _fitted_state = {"net_": State("module", config=_cfg, build=_build), "n_": State("json")}

    def fit(self) -> Probe:
        self._reset_fitted()
        self._set_fitted(net_=nn.Linear(3, 3), n_=3)
        return self

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, Any]:
        return {"values": x}


def _raw_load(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8 : 8 + n])
    return h, h["__metadata__"]


def _set_meta(path: Path, edit: Any) -> None:
    def inner(m: dict[str, str]) -> None:
        meta = json.loads(m["json"])
        edit(meta)
        m["json"] = json.dumps(meta)

    _edit_header(path, inner)


def _drop_checksum(m: dict[str, str]) -> None:
    m.pop("sha256", None)


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: meta["state"].update(net_=[1, 2]),
        lambda meta: meta["state"].update(net_={"config": {"d": 3}, "keys": 5}),
        lambda meta: meta["state"].update(net_={"keys": ["weight", "bias"]}),
        lambda meta: meta.update(state=[]),
        lambda meta: meta.update(params={"batch_size": 7}),
    ],
)
def test_edited_state_headers_give_a_clear_error(tmp_path, edit):
    path = Probe(nn.Linear(3, 3)).fit().save(tmp_path / "p.safetensors")
    _set_meta(path, edit)
    _edit_header(path, _drop_checksum)  # an edit that also removed the checksum
    with pytest.raises(ValueError, match=r"p\.safetensors"):
        Probe.load(path, nn.Linear(3, 3))


def test_a_crafted_state_file_cannot_ask_for_a_huge_allocation(tmp_path):
    path = Probe(nn.Linear(3, 3)).fit().save(tmp_path / "p.safetensors")
    _set_meta(path, lambda meta: meta["state"]["net_"]["config"].update(d=10**7))  # 400 TB
    _edit_header(path, _drop_checksum)
    with pytest.raises(ValueError, match=r"p\.safetensors.*net_"):
        Probe.load(path, nn.Linear(3, 3))


def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "e.safetensors"
    _version(0).save(path)
    code = textwrap.dedent(
        f"""
        import os, torch
        from whynet.core import Explanation
        os.replace = lambda *a: os._exit(9)  # killed between writing the temp file and rename
        Explanation(values=torch.ones(3)).save({str(path)!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "the kill left no temp"
    assert _consistent(Explanation.load(path))  # the old version is intact
    _version(1).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]


def test_tensors_sharing_memory_are_saved(tmp_path):
    x = torch.arange(12.0).reshape(3, 4)
    e = Explanation(values=x, extras={"same": x, "view": x[:, :2]})
    back = Explanation.load(e.save(tmp_path / "e.safetensors"))
    assert torch.equal(back.extras["same"], x) and torch.equal(back.extras["view"], x[:, :2])


def test_store_cache_flipped_bytes_and_torn_meta(tmp_path):
    from whynet.core import StoreCache

    cache = StoreCache(tmp_path, "k" * 24)
    cache.write({"a": torch.arange(10.0)}, {})
    f = cache.path("a")
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="a-k"):
        cache.read(mmap=("a",))
    os.unlink(f)


def test_a_store_cache_write_killed_before_its_sidecar_leaves_the_old_cache(tmp_path):
    from whynet.core import StoreCache

    cache = StoreCache(tmp_path, "k" * 24)
    cache.write({"a": torch.zeros(10)}, {"v": 0})
    code = textwrap.dedent(
        f"""
        import os, torch
        from whynet.core import StoreCache
        real, n = os.replace, [0]
        def replace(a, b):
            n[0] += 1
            if n[0] == 2:  # the array is written, the sidecar not yet
                os._exit(9)
            real(a, b)
        os.replace = replace
        StoreCache({str(tmp_path)!r}, "k" * 24).write({{"a": torch.ones(12)}}, {{"v": 1}})
        """
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    arrays, meta = cache.read()
    assert meta["v"] == 0 and torch.equal(arrays["a"], torch.zeros(10))
    cache.write({"a": torch.ones(12)}, {"v": 1})
    arrays, meta = cache.read()
    assert meta["v"] == 1 and torch.equal(arrays["a"], torch.ones(12))
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _cache_writer(folder: str, k: int, rounds: int) -> None:
    from whynet.core import StoreCache

    torch.set_num_threads(1)
    cache = StoreCache(folder, "k" * 24)
    for _ in range(rounds):
        cache.write(
            {"a": torch.full((2000 + k,), float(k)), "b": torch.full((3,), float(k))}, {"v": k}
        )


def test_two_processes_writing_one_store_cache_key_leave_one_whole_version(tmp_path):
    """Two writers of the same key at once, a reader in a loop: each read is one whole version
    (both arrays and the sidecar agree), and the cache left at the end is whole with no stray
    files (a writer's cleanup used to delete the other writer's fresh arrays)."""
    from whynet.core import StoreCache

    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_cache_writer, args=(str(tmp_path), k, 60)) for k in (0, 1)]
    for w in writers:
        w.start()
    cache, reads, errors = StoreCache(tmp_path, "k" * 24), 0, []
    while any(w.is_alive() for w in writers):
        if not cache.exists():
            continue
        try:
            arrays, meta = cache.read()
        except ValueError as e:
            errors.append(str(e))
            continue
        k = meta["v"]
        reads += 1
        assert torch.equal(arrays["a"], torch.full((2000 + k,), float(k)))
        assert torch.equal(arrays["b"], torch.full((3,), float(k)))
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert errors == [] and reads > 0
    arrays, meta = cache.read()
    assert torch.equal(arrays["b"], torch.full((3,), float(meta["v"])))
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        ".json",
        ".npy",
        ".npy",
    ]
