"""Explanatory masks from a trained explainer network (Phillips, Goh & Hodas, 2019).

``MaskExplainer(model, modality).fit(data).explain(x)`` gives per-pixel or per-token masks in
[0, 1] from one forward pass of a small trained network. Pre-trained explainers for whynet's zoo
models ship under ``whynet/masks/weights`` (:func:`load_pretrained`).
"""

from whynet.masks.explainer import MaskExplainer
from whynet.masks.fill import apply_image_mask, fill_value, gaussian_blur
from whynet.masks.networks import ImageMaskNet, SequenceMaskNet, build_network
from whynet.masks.pretrained import PRETRAINED, load_pretrained

__all__ = [
    "MaskExplainer",
    "ImageMaskNet",
    "SequenceMaskNet",
    "build_network",
    "apply_image_mask",
    "fill_value",
    "gaussian_blur",
    "load_pretrained",
    "PRETRAINED",
]
