"""Explanatory masks from a trained explainer network (Phillips, Goh & Hodas, 2019).

``MaskExplainer(model, modality).fit(data).explain(x)`` gives per-pixel or per-token masks in
[0, 1] from one forward pass of a small trained network. Pre-trained explainers for whynet's zoo
models ship with the zoo (:func:`whynet.zoo.masks_pretrained.load_pretrained`).
"""

from whynet.masks.explainer import FILLS, MaskExplainer
from whynet.masks.networks import ImageMaskNet, SequenceMaskNet, build_network

__all__ = [
    "FILLS",
    "MaskExplainer",
    "ImageMaskNet",
    "SequenceMaskNet",
    "build_network",
]
