"""Shipped explanatory-mask explainers (:class:`whynet.masks.MaskExplainer`) for whynet's zoo
models: ``weights/masks/NAME.safetensors`` + ``NAME.json``.

Each ``NAME.json`` records how the file was trained (``python -m whynet.zoo.masks_train NAME``),
the zoo model it explains, the loss (``objective``: ``"preserve"``, the paper's, or
``"preserve+delete"`` with the deletion term of :mod:`whynet.masks.objective`) and its measured
validation mask size and fidelity. ``NAME-delete`` files are trained with the deletion term and
ship next to the paper-loss ``NAME`` ones (docs/masks.md says which is better for what).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from whynet.masks import MaskExplainer
from whynet.zoo import load_model

__all__ = ["PRETRAINED", "WEIGHTS_DIR", "load_pretrained", "pretrained_info"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "masks"

#: shipped explainer name -> zoo model it explains
PRETRAINED: dict[str, str] = {
    "canvas-cnn": "canvas-cnn",
    "fashion-cnn": "fashion-cnn",
    "sentiment-gru": "sentiment-gru",
    "solubility-smiles": "solubility-smiles",
    "tpsa-smiles": "tpsa-smiles",
    # trained with the deletion term (objective "preserve+delete"): finds the TPSA atoms
    "tpsa-smiles-delete": "tpsa-smiles",
}


def pretrained_info(name: str) -> dict[str, Any]:
    """The JSON record of shipped explainer ``name``."""
    path = WEIGHTS_DIR / f"{name}.json"
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained explainer {name!r}; known: {sorted(PRETRAINED)}")
    if not path.is_file():
        raise FileNotFoundError(
            f"explainer weights for {name!r} are not shipped ({path}); "
            f"train them with `python -m whynet.zoo.masks_train {PRETRAINED[name]}`"
            + (f" (with --deletion and --file {name})" if name != PRETRAINED[name] else "")
        )
    return json.loads(path.read_text())


def load_pretrained(
    name: str,
    model: nn.Module | None = None,
    *,
    weights_dir: str | Path | None = None,
    zoo_dir: str | Path | None = None,
) -> tuple[MaskExplainer, nn.Module, dict[str, Any]]:
    """Load shipped explainer ``name`` with its zoo model (or the ``model`` given).

    ``weights_dir`` / ``zoo_dir`` override where the explainer / the zoo model are read from.
    Returns ``(explainer, model, info)`` where ``info`` is the zoo model's info dict (empty
    when ``model`` is given).
    """
    wdir = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained explainer {name!r}; known: {sorted(PRETRAINED)}")
    record_path = wdir / f"{name}.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    info: dict[str, Any] = {}
    if model is None:
        model, info = load_model(PRETRAINED[name], weights_dir=zoo_dir)
        trained_on = record.get("model_sha256")
        current = info.get("meta", {}).get("sha256")
        if trained_on and current and trained_on != current:
            warnings.warn(
                f"the {name!r} explainer was trained for a different version of the "
                f"zoo model (sha256 {trained_on[:12]}..., now {current[:12]}...); "
                f"retrain it with `{record.get('command', 'python -m whynet.zoo.masks_train')}`",
                stacklevel=2,
            )
    explainer = MaskExplainer.load(wdir / f"{name}.safetensors", model)
    return explainer, model, info
