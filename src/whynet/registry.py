"""The named registry of explainers: name -> class.

The command line resolves ``--method NAME`` here and the hook-leak test runs every entry.
Entries are ``"module:attribute"`` strings resolved on first use, so listing the methods does
not import every method's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY: dict[str, tuple[str, str]] = {
    # name: ("module:Class", one-line description)
    "influence": (
        "whynet.influence:InternalInfluence",
        "internal influence of a layer's neurons (Leino et al. 2018)",
    ),
    "inversion": (
        "whynet.inversion:GuidedFeatureInversion",
        "guided feature inversion input masks (Du et al. 2018)",
    ),
    "masks": (
        "whynet.masks:MaskExplainer",
        "trained explanatory-mask network (Phillips et al. 2019)",
    ),
    "representer": (
        "whynet.representer:RepresenterPoints",
        "representer point selection over training data (Yeh et al. 2018)",
    ),
    "clusters": (
        "whynet.clusters:ClusterSurrogate",
        "activation-clustering surrogate (Liu & Arik 2020)",
    ),
}


def register_explainer(name: str, target: str, description: str) -> None:
    """Add an explainer under ``name``; ``target`` is ``"package.module:Class"``."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    _REGISTRY[name] = (target, description)


def list_explainers() -> dict[str, str]:
    """Registered explainer names with their one-line descriptions."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def get_explainer(name: str) -> Any:
    """The explainer class registered under ``name``."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown explainer {name!r}; registered: {known}")
    module, _, attr = _REGISTRY[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)
