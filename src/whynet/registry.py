"""The named registry of explainers: name -> class and what it can do.

Each method registers itself with one line here (listing the methods must not import every
method's dependencies, so entries are ``"module:Class"`` strings resolved on first use). The
command line, the tour, the hook-leak test and the contract suite read this table.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any

#: arguments of ``fit`` that the caller supplies as data, not as settings
FIT_DATA = ("self", "train_data", "labels")
#: constructor parameters that name a layer of the model (command-line flags of their own)
LAYER_ARGS = ("layer", "head", "embedding")


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
    :attr:`args` (its command-line arguments) and :meth:`param_names` (every setting a config
    or ``--param`` may give) are read from the class's signature, never listed twice.
    """

    name: str
    target: str
    description: str
    fitted: bool = False
    inputs: tuple[str, ...] = ("image",)
    targets: str = "class"

    def load(self) -> Any:
        """The explainer class (imports its module)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def args(self) -> tuple[Arg, ...]:
        """The command-line arguments: the constructor's ``str`` parameters that are required
        or name a layer (``layer``, ``head``, ``embedding``, ``*_layer``), with the first
        sentence of their docstring entry as help."""
        cls = self.load()
        out = []
        for p in list(inspect.signature(cls).parameters.values())[1:]:  # after the model
            required = p.default is inspect.Parameter.empty
            plain = str(p.annotation).split("|")[0].strip() == "str"  # str, str | None
            layer = p.name in LAYER_ARGS or p.name.endswith("_layer")
            if plain and p.kind is p.POSITIONAL_OR_KEYWORD and (required or layer):
                out.append(Arg(p.name, str, _param_doc(cls, p.name), required=required))
        return tuple(out)

    def param_names(self) -> tuple[list[str], list[str]]:
        """(constructor parameters, keyword parameters of ``fit``): the names a method table
        of ``whynet run`` and ``--param KEY=VALUE`` accept (``fit``'s data arguments and any
        name the constructor already has excluded)."""
        from whynet.core.params import param_names

        cls = self.load()
        init = param_names(cls)
        fit = getattr(cls, "fit", None)
        if fit is None:
            return init, []
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names = [
            p.name
            for p in inspect.signature(fit).parameters.values()
            if p.name not in FIT_DATA and p.kind not in kinds and p.name not in init
        ]
        return init, names


def _param_doc(cls: type, name: str) -> str:
    """The first sentence of ``name``'s entry in the numpy-style docstring of ``cls``."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(rf"^{re.escape(name)}\s*:[^\n]*\n((?:[ \t]+[^\n]*\n?)+)", doc, re.M)
    if m is None:
        return name.replace("_", " ")
    text = " ".join(line.strip() for line in m.group(1).splitlines()).replace("``", "")
    text = re.sub(r"\s*\([^()]*\)", "", text)  # asides in brackets
    return re.split(r"\.\s|;|, or ", text, maxsplit=1)[0].rstrip(".").lower()


_REGISTRY: dict[str, MethodInfo] = {}


def register_explainer(name: str, target: str, description: str, **capabilities: Any) -> None:
    """Add an explainer under ``name``; ``target`` is ``"package.module:Class"``."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    _REGISTRY[name] = MethodInfo(name, target, description, **capabilities)


register_explainer(
    "influence",
    "whynet.influence:InternalInfluence",
    "internal influence of a layer's neurons (Leino et al. 2018)",
    inputs=("image", "tokens", "vector"),
    targets="qoi",
)
register_explainer(
    "inversion",
    "whynet.inversion:GuidedFeatureInversion",
    "guided feature inversion input masks (Du et al. 2018)",
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
