import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from whynet import Explanation, get_explainer, list_explainers
from whynet.core import (
    check_batch_size,
    check_inputs,
    data_length,
    iter_batches,
    predict_logits,
    resolve_targets,
)


def make_explanation() -> Explanation:
    return Explanation(
        values=torch.randn(3, 2, 4, dtype=torch.float64),
        target=torch.tensor([0, 2, 1]),
        method="influence",
        layer="features.2",
        params={"steps": 8, "rule": "gl"},
        extras={"omega": torch.rand(3, 5)},
        meta={"tokens": ["<b>", "x"]},
    )


def test_explanation_round_trip(tmp_path):
    e = make_explanation()
    path = e.save(tmp_path / "sub" / "e.safetensors")
    back = Explanation.load(path)
    assert torch.equal(back.values, e.values) and back.values.dtype == torch.float64
    assert torch.equal(back.target, e.target) and torch.equal(
        back.extras["omega"], e.extras["omega"]
    )
    assert (back.method, back.layer, back.params, back.meta) == (
        e.method,
        e.layer,
        e.params,
        e.meta,
    )
    assert os.listdir(tmp_path / "sub") == ["e.safetensors"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_truncated_and_foreign_files_raise(tmp_path):
    path = make_explanation().save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Explanation.load(tmp_path / "cut.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError):
        Explanation.load(tmp_path / "pickle.pt")
    from safetensors.torch import save_file

    save_file(
        {"values": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"}
    )
    with pytest.raises(ValueError, match="not a whynet.explanation file"):
        Explanation.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        Explanation.load(tmp_path / "missing.safetensors")


def test_unserialisable_params_fail_before_writing(tmp_path):
    e = make_explanation()
    e.params["fn"] = print
    with pytest.raises(TypeError, match="JSON"):
        e.save(tmp_path / "e.safetensors")
    assert not list(tmp_path.iterdir())


def test_iter_batches_accepts_three_forms():
    x, y = torch.arange(10.0)[:, None], torch.arange(10) % 3
    forms = [
        iter_batches(x, y, batch_size=4),
        iter_batches(TensorDataset(x, y), batch_size=4),
        iter_batches(DataLoader(TensorDataset(x, y), batch_size=3)),
    ]
    for it in forms:
        xs, ys = zip(*it)
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    assert data_length(x) == data_length(TensorDataset(x, y)) == 10
    with pytest.raises(ValueError, match="without labels"):
        list(iter_batches(x, need_labels=True))
    with pytest.raises(ValueError, match="labels has 3"):
        list(iter_batches(x, y[:3]))
    with pytest.raises(TypeError, match="DataLoader"):
        list(iter_batches([1, 2, 3]))


def test_input_checks_name_the_problem():
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_inputs(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="floating"):
        check_inputs(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="4 dimensions"):
        check_inputs(torch.zeros(2, 3), ndim=4)
    with pytest.raises(ValueError, match="non-empty"):
        check_inputs(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_inputs([1.0])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        check_batch_size(0)
    with pytest.raises(TypeError):
        check_batch_size(2.5)  # type: ignore[arg-type]


def test_targets_and_predictions(mlp):
    x = torch.randn(5, 5, dtype=torch.float64)
    out = predict_logits(mlp, x, batch_size=2)
    torch.testing.assert_close(out, mlp(x).detach())
    assert resolve_targets(out, None).tolist() == out.argmax(1).tolist()
    assert resolve_targets(out, 1).tolist() == [1] * 5
    with pytest.raises(ValueError, match="out of range"):
        resolve_targets(out, 3)
    with pytest.raises(ValueError, match="2 classes for 5"):
        resolve_targets(out, torch.tensor([0, 1]))


def test_registry_lists_and_rejects_unknown():
    names = list_explainers()
    assert {"influence", "inversion", "masks", "representer", "clusters"} <= set(names)
    with pytest.raises(ValueError, match="unknown explainer 'nope'"):
        get_explainer("nope")


def test_top_level_names_resolve():
    import whynet

    for name in [
        "Class",
        "Comparative",
        "MaxClass",
        "Channel",
        "Point",
        "LinearPath",
        "Gaussian",
        "DatasetDoI",
        "Explanation",
        "capture",
        "intervene",
    ]:
        assert getattr(whynet, name) is not None
    with pytest.raises(AttributeError):
        whynet.nope  # noqa: B018
