"""whynet: explain pre-trained deep networks from the inside.

Public names are resolved lazily (PEP 562) so that ``import whynet`` stays cheap and optional
extras (RDKit, faiss, scikit-learn) are only imported by the methods that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (one table; the registry of explainers is in registry.py)
_EXPORTS: dict[str, str] = {
    # core
    "Explanation": "whynet.core.explanation",
    "Class": "whynet.core.qoi",
    "Comparative": "whynet.core.qoi",
    "MaxClass": "whynet.core.qoi",
    "Channel": "whynet.core.qoi",
    "QoI": "whynet.core.qoi",
    "Point": "whynet.core.doi",
    "LinearPath": "whynet.core.doi",
    "Gaussian": "whynet.core.doi",
    "DatasetDoI": "whynet.core.doi",
    "DoI": "whynet.core.doi",
    "capture": "whynet.core.hooks",
    "intervene": "whynet.core.hooks",
    "resolve_layer": "whynet.core.layers",
    # methods
    "InternalInfluence": "whynet.influence",
    "visualize_neuron": "whynet.influence",
    "essence": "whynet.influence",
    "GuidedFeatureInversion": "whynet.inversion",
    "GradCAM": "whynet.gradcam",
    "MaskExplainer": "whynet.masks",
    "RepresenterPoints": "whynet.representer",
    "ClusterSurrogate": "whynet.clusters",
    # models and registry
    "load_model": "whynet.zoo",
    "get_explainer": "whynet.registry",
    "list_explainers": "whynet.registry",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'whynet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
