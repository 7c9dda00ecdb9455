"""whynet.inversion: guided feature inversion (Du et al., KDD 2018).

:class:`GuidedFeatureInversion` explains an image classifier's prediction by a mask over the
input built from a basis layer's channels: stage 1 keeps the image's features (class-agnostic
foreground), stage 2 keeps the target class's probability while the complement loses it.
"""

from whynet.inversion.explainer import GuidedFeatureInversion
from whynet.inversion.masks import basis_mask, normalise, phi_bg

__all__ = ["GuidedFeatureInversion", "basis_mask", "normalise", "phi_bg"]
