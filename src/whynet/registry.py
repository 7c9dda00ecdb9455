"""The named registry of explainers: name -> class and what it can do.

Each method registers itself with one line here (listing the methods must not import every
method's dependencies, so entries are ``"module:Class"`` strings resolved on first use). The
command line, the tour, the hook-leak test and the contract suite read this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arg:
    """One command-line argument of a method: ``--NAME`` maps to the constructor's ``name``."""

    name: str
    type: type = str
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class MethodInfo:
    """A registered method and its capabilities.

    ``fitted``: needs ``fit(train_data)`` before ``explain``. ``inputs``: the input kinds it
    explains (``"image"`` (B, C, H, W) floats, ``"tokens"`` integer ids, ``"vector"`` (B, F)).
    ``targets``: ``"class"`` (any class per input), ``"qoi"`` (a class or the configured
    quantity of interest) or ``"trained"`` (only what it was trained on: None/"predicted").
    ``args``: its command-line arguments.
    """

    name: str
    target: str
    description: str
    fitted: bool = False
    inputs: tuple[str, ...] = ("image",)
    targets: str = "class"
    args: tuple[Arg, ...] = ()

    def load(self) -> Any:
        """The explainer class (imports its module)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, MethodInfo] = {}


def register_explainer(name: str, target: str, description: str, **capabilities: Any) -> None:
    """Add an explainer under ``name``; ``target`` is ``"package.module:Class"``."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    _REGISTRY[name] = MethodInfo(name, target, description, **capabilities)


_LAYER = Arg("layer", str, "dotted name of the layer to explain", required=True)

register_explainer(
    "influence",
    "whynet.influence:InternalInfluence",
    "internal influence of a layer's neurons (Leino et al. 2018)",
    inputs=("image", "tokens", "vector"),
    targets="qoi",
    args=(_LAYER,),
)
register_explainer(
    "inversion",
    "whynet.inversion:GuidedFeatureInversion",
    "guided feature inversion input masks (Du et al. 2018)",
    args=(
        Arg("inversion_layer", str, "layer whose features stage 1 reconstructs", True),
        Arg("basis_layer", str, "layer whose channels span the mask", True),
    ),
)
register_explainer(
    "masks",
    "whynet.masks:MaskExplainer",
    "trained explanatory-mask network (Phillips et al. 2019)",
    fitted=True,
    inputs=("image", "tokens"),
    targets="trained",
)
register_explainer(
    "representer",
    "whynet.representer:RepresenterPoints",
    "representer point selection over training data (Yeh et al. 2018)",
    fitted=True,
    inputs=("image", "tokens", "vector"),
    args=(Arg("head", str, "dotted name of the final nn.Linear", True),),
)
register_explainer(
    "clusters",
    "whynet.clusters:ClusterSurrogate",
    "activation-clustering surrogate (Liu & Arik 2020)",
    fitted=True,
    inputs=("image", "tokens", "vector"),
)
register_explainer(
    "gradcam",
    "whynet.gradcam:GradCAM",
    "Grad-CAM class activation maps at a convolutional layer (Selvaraju et al. 2017)",
    args=(_LAYER,),
)


def list_explainers() -> dict[str, str]:
    """Registered explainer names with their one-line descriptions."""
    return {name: info.description for name, info in sorted(_REGISTRY.items())}


def method_info(name: str) -> MethodInfo:
    """The registry entry (capabilities) of ``name``."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown explainer {name!r}; registered: {known}")
    return _REGISTRY[name]


def registered() -> list[MethodInfo]:
    """Every registry entry, in registration order (the tour and report follow it)."""
    return list(_REGISTRY.values())


def get_explainer(name: str) -> Any:
    """The explainer class registered under ``name``."""
    return method_info(name).load()
