"""Activation-clustering surrogates (Liu & Arik, "Explaining Deep Neural Networks using
Unsupervised Clustering", 2020): which learned concepts, and which similar training samples?

``ClusterSurrogate(model, layers=[...]).fit(train_data)`` clusters each layer's activations
(IDEC on a small autoencoder embedding, or PCA + k-means), attaches a class distribution to every
cluster and predicts by combining the clusters an input falls into; one
:class:`LayerClusterer` per layer holds that layer's embedding, clusters and table.
"""

from whynet.clusters.embedding import (
    ConvAE,
    DenseAE,
    PCAEmbed,
    kl_loss,
    soft_assign,
    target_distribution,
)
from whynet.clusters.index import WeightedIndex
from whynet.clusters.layer import LayerClusterer
from whynet.clusters.surrogate import ClusterSurrogate

__all__ = [
    "ClusterSurrogate",
    "ConvAE",
    "DenseAE",
    "LayerClusterer",
    "PCAEmbed",
    "WeightedIndex",
    "kl_loss",
    "soft_assign",
    "target_distribution",
]
