"""Influence-directed explanations (Leino, Sen, Datta, Fredrikson, Li, ITC 2018).

- :class:`InternalInfluence`: distributional influence of a layer's neurons on a quantity of
  interest (influence space), or times ``z - z_baseline`` (attribution space).
- :func:`visualize_neuron`: what an internal channel responds to, as a heatmap and a mask.
- :func:`essence`: keep only a class's top-k channels and measure class-vs-rest accuracy.
"""

from whynet.influence.essence import EssenceResult, essence
from whynet.influence.internal import InternalInfluence
from whynet.influence.neurons import gaussian_blur, visualize_neuron
from whynet.influence.ranking import collapse, top_neurons

__all__ = [
    "EssenceResult",
    "InternalInfluence",
    "collapse",
    "essence",
    "gaussian_blur",
    "top_neurons",
    "visualize_neuron",
]
