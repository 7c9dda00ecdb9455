"""The Ray engine on the local cluster started once for the test run (``ray_cluster`` in
tests/conftest.py, ``cluster`` in tests/scale/conftest.py): the same answers as the local
engine, a worker killed mid-shard, bad addresses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TinyCNN
from whynet import scale
from whynet.influence import InternalInfluence
from whynet.representer import RepresenterPoints
from whynet.scale.store import ShardedStore

ray = pytest.importorskip("ray")


class DiesOnce(nn.Module):
    """The weights of ``inner``; the first forward of row ``row`` in any process, marked by a
    file, kills that worker process (``os._exit``): Ray must restart it and retry the shard."""

    def __init__(self, inner: nn.Module, marker: str, row0: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.marker = inner, marker
        self.register_buffer("row0", row0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not os.path.exists(self.marker) and bool((x == self.row0).all(dim=(1, 2, 3)).any()):
            Path(self.marker).write_text("died")
            os._exit(1)
        return self.inner(x)


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def test_ray_kmeans_and_influence_equal_local(cluster, tmp_path):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 4, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 3, (200,), generator=g)
    st = ShardedStore.create(tmp_path / "z", fingerprint="z", n_rows=200, shard_rows=50)
    for i in range(st.n_shards):
        a, b = st.range(i)
        st.put(i, {"z": z[a:b], "labels": lab[a:b]})
    res_r = scale.fit_kmeans(st, "z", z[:4], n_classes=3, max_iter=20, engine=cluster)
    res_l = scale.fit_kmeans(st, "z", z[:4], n_classes=3, max_iter=20)
    assert torch.equal(res_r.centres, res_l.centres) and torch.equal(res_r.counts, res_l.counts)

    torch.manual_seed(0)
    cnn = TinyCNN().double().eval()
    x, y = _data(64)
    infl = InternalInfluence(cnn, "features.2", batch_size=16)
    d_r = scale.influence_dataset(infl, x, y, cls=2, shard_rows=32, engine=cluster)
    d_1 = infl.explain_dataset(x, labels=y, cls=2)
    torch.testing.assert_close(d_r.values, d_1.values, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="target"):  # a worker's error reaches the caller
        scale.influence_dataset(infl, x, y, target=7, shard_rows=32, engine=cluster)


def test_ray_cluster_fit_equals_local(cluster, tmp_path):
    """The sharded surrogate fit on Ray (embeddings on one-thread workers, Lloyd steps and
    tables as Ray tasks) equals the same fit on the local engine."""
    from whynet.clusters import ClusterSurrogate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    x = torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    kw = dict(n_clusters=4, algorithm="kmeans", embed_dim=3, batch_size=64, progress=False)
    st = scale.extract(
        net.eval(), x, store=tmp_path / "a", layers=["1"], shard_rows=256, batch_size=64
    )
    init = {"1": torch.randn(4, 3, dtype=torch.float64)}
    local = scale.fit_clusters(ClusterSurrogate(net, ["1"], **kw), st, init=init)
    on_ray = scale.fit_clusters(ClusterSurrogate(net, ["1"], **kw), st, init=init, engine=cluster)
    a, b = local.clusterer("1"), on_ray.clusterer("1")
    assert torch.equal(a.embeddings_, b.embeddings_) and torch.equal(a.counts_, b.counts_)
    torch.testing.assert_close(b.centres_, a.centres_, atol=1e-10, rtol=0)
    assert a.history_["lloyd_iter"][0] > 1


def test_ray_extraction_with_a_killed_worker_equals_local(cluster, tmp_path):
    torch.manual_seed(0)
    cnn = TinyCNN().double().eval()
    x, y = _data()
    marker = tmp_path / "killed"
    model = DiesOnce(cnn, str(marker), x[40])  # row 40: in the middle of shard 1
    kw = dict(head="inner.head", shard_rows=32, batch_size=16)
    marker.write_text("not here")  # the local run must not die
    local = scale.extract(model, x, y, store=tmp_path / "local", **kw)
    marker.unlink()
    # reductions and queries on Ray equal the local engine (summed in shard order); run
    # before the actors so that they reuse the warm task workers
    expl = RepresenterPoints(model, "inner.head", batch_size=16, progress=False)
    expl = scale.fit_representer(expl, local)
    one = RepresenterPoints(cnn, "head", batch_size=16, progress=False).fit(x, labels=y)
    assert torch.equal(expl.alpha_, one.alpha_)
    top_r = scale.top_points(expl, x[:5], k=3, store=local, engine=cluster)
    top_l = scale.top_points(expl, x[:5], k=3, store=local)
    assert all(torch.equal(a, b) for a, b in zip(top_r, top_l, strict=True))
    w = torch.randn(3, 7, dtype=torch.float64)
    j_r, g_r = scale.representer_objective(local, w, 0.01, engine=cluster)
    j_l, g_l = scale.representer_objective(local, w, 0.01)
    assert j_r == j_l and torch.equal(g_r, g_l)
    # the map/reduce L-BFGS fit: every oracle call a round of Ray tasks
    mr = RepresenterPoints(model, "inner.head", batch_size=16, progress=False)
    mr = scale.fit_representer(mr, local, mapreduce=True, engine=cluster)
    torch.testing.assert_close(mr.alpha_, expl.alpha_, atol=1e-10, rtol=0)
    # Ray Data actors, one of which dies in the middle of shard 1: retried, same bytes
    on_ray = scale.extract(model, x, y, store=tmp_path / "ray", engine=cluster, **kw)
    assert marker.exists(), "the worker was not killed"
    assert on_ray.computed == local.computed == 3
    for name in ("features", "outputs", "labels"):
        assert torch.equal(on_ray.gather(name), local.gather(name)), name


def _pid_of(marker: str, item: int) -> tuple[int, int]:
    """``(item, pid)``; the first call for item 3 in any process kills that process."""
    if item == 3 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)
    return item, os.getpid()


def _refuse(_shared: None, item: int) -> int:
    if item == 2:
        raise ValueError(f"bad item {item}")
    return item


def test_sticky_reductions_ask_the_same_process_for_the_same_items(cluster, tmp_path):
    """Inside ``sticky()``: item k of every call on actor k mod n (what keeps the map/reduce
    fit's shard cache useful), results in item order, a killed actor restarted and its call
    retried; the actors are gone after the block (their CPUs free for plain tasks)."""
    marker = str(tmp_path / "killed")
    with cluster.sticky():
        first = cluster.map_tasks(_pid_of, marker, range(8))
        assert os.path.exists(marker), "the actor was not killed"
        again = cluster.map_tasks(_pid_of, marker, range(8))
        assert len(cluster._actors) == 2
        with pytest.raises(ValueError, match="bad item"):  # an actor's error reaches the caller
            cluster.map_tasks(_refuse, None, range(4))
    assert [i for i, _ in first] == [i for i, _ in again] == list(range(8))
    assert len({p for _, p in again}) == 2
    assert [p for _, p in again] == [again[k % 2][1] for k in range(8)]
    # the same processes on the second pass (the killed one was restarted before `first` ended)
    assert [p for _, p in again] == [p for _, p in first]
    assert cluster._actors == [] and len(cluster.map_tasks(_pid_of, marker, range(4))) == 4


def test_unreachable_address_is_one_clear_error(cluster):
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster"):
        scale.Engine("ray", address="127.0.0.1:1")
