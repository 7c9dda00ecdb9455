"""A fitted ClusterSurrogate from the sharded store (k-means path): Lloyd steps and class tables
summed over shards equal the one-process fit from the same initial centres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from whynet import scale
from whynet.clusters import ClusterSurrogate

# tiny ops: one intra-op thread (OpenMP spin on a loaded machine made them ~25x slower)
pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["1", "3"]  # a feature map (B, 3, 4, 4) and the logits
KW = dict(n_clusters=5, algorithm="kmeans", embed_dim=4, batch_size=64, progress=False)


def _data(n: int = 2560) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randn(n, 1, 4, 4, generator=g)


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor], ClusterSurrogate]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread: the PCA (on the driver) must see the same BLAS
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    cnn.eval()
    x = _data()
    try:
        first = ClusterSurrogate(cnn, LAYERS, n_init=1, **KW).fit(x)
        # initial centres: training points' embeddings (the embedding does not depend on them)
        init = {
            k: v[[0, 500, 1000, 1500, 2000]].clone() for k, v in first.train_embeddings_.items()
        }
        yield cnn, x, init, ClusterSurrogate(cnn, LAYERS, **KW).fit(x, init=init)
    finally:
        torch.set_num_threads(before)


def _assert_same(a: ClusterSurrogate, b: ClusterSurrogate, x: torch.Tensor) -> None:
    for layer in LAYERS:
        ca, cb = a.clusterer(layer), b.clusterer(layer)
        for name in ("mean_", "std_", "embeddings_", "assign_", "counts_"):
            assert torch.equal(getattr(ca, name), getattr(cb, name)), (layer, name)
        torch.testing.assert_close(cb.centres_, ca.centres_, atol=1e-10, rtol=0)
        assert ca.history_ == cb.history_
    assert torch.equal(a.train_targets_, b.train_targets_)
    torch.testing.assert_close(b.layer_weights_, a.layer_weights_, atol=1e-10, rtol=0)
    ea, eb = a.explain(x), b.explain(x)
    torch.testing.assert_close(eb.values, ea.values, atol=1e-10, rtol=0)
    assert torch.equal(ea.extras["clusters"], eb.extras["clusters"])


def test_sharded_fit_equals_one_process_from_the_same_centres(setup, tmp_path):
    cnn, x, init, one = setup
    for layer in LAYERS:  # Lloyd ran and moved the centres
        hist = one.clusterer(layer).history_
        assert hist["lloyd_converged"] == [1.0] and hist["lloyd_iter"][0] > 1
        assert not torch.allclose(one.clusterer(layer).centres_, init[layer].double())
    sharded = scale.fit(
        ClusterSurrogate(cnn, LAYERS, **KW), x, store=tmp_path / "acts", shard_rows=1024, init=init
    )
    assert scale.ShardedStore.open(tmp_path / "acts").n_shards == 3
    assert not list((tmp_path / "acts").glob("embed-*"))  # the embedding shards are removed
    _assert_same(one, sharded, x[:50])
    # the class tables: every point's (cluster, model class) counted once
    c = sharded.clusterer("3")
    pairs = torch.bincount(c.assign_ * 3 + sharded.train_targets_, minlength=15).view(5, 3)
    assert torch.equal(c.counts_, pairs.double()) and float(c.counts_.sum()) == len(x)


def test_sharded_fit_without_init_runs_the_restarts_of_one_process(setup, tmp_path):
    cnn, x, _, _ = setup
    kw = {**KW, "n_init": 2, "layer_weights": None}
    one = ClusterSurrogate(cnn, LAYERS, **kw).fit(x)
    st = scale.extract(cnn, x, store=tmp_path / "a", layers=LAYERS, shard_rows=1024, batch_size=64)
    sharded = scale.fit_clusters(ClusterSurrogate(cnn, LAYERS, **kw), st)
    _assert_same(one, sharded, x[:20])


def test_bad_sharded_cluster_fits(setup, tmp_path):
    cnn, x, init, _ = setup
    st = scale.extract(
        cnn, x[:512], store=tmp_path / "a", layers=LAYERS, shard_rows=256, batch_size=64
    )
    with pytest.raises(ValueError, match="algorithm='kmeans'"):
        scale.fit_clusters(ClusterSurrogate(cnn, LAYERS, **{**KW, "algorithm": "idec"}), st)
    with pytest.raises(ValueError, match="multiple of the surrogate's batch_size"):
        scale.fit_clusters(ClusterSurrogate(cnn, LAYERS, **{**KW, "batch_size": 96}), st)
    with pytest.raises(ValueError, match=r"expected \(n_clusters, embedding dim\) = \(5, 4\)"):
        scale.fit_clusters(
            ClusterSurrogate(cnn, LAYERS, **KW), st, init={k: v[:, :3] for k, v in init.items()}
        )
    with pytest.raises(ValueError, match="centres for every layer"):
        ClusterSurrogate(cnn, LAYERS, **KW).fit(x, init={"3": init["3"]})
    with pytest.raises(ValueError, match="pass one of the two"):
        ClusterSurrogate(cnn, LAYERS, restart_selection="likelihood", **KW).fit(x, init=init)
    other = scale.extract(
        cnn, x[:512], store=tmp_path / "h", head="3", shard_rows=256, batch_size=64
    )
    with pytest.raises(scale.StoreError, match="has no"):
        scale.fit_clusters(ClusterSurrogate(cnn, LAYERS, **KW), other)
