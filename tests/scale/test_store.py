"""The sharded store and the local engine (no Ray): same answers as one process, resume,
checksums and the bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import TinyCNN
from whynet import scale
from whynet.influence import InternalInfluence
from whynet.representer import RepresenterPoints
from whynet.scale.store import ShardedStore, StoreError, write_shard

# tiny ops: one intra-op thread (OpenMP spin on a loaded machine made them ~25x slower)
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


class Flaky(nn.Module):
    """The same weights as ``inner``; raises on forward number ``fail_at`` (an interrupted run)."""

    def __init__(self, inner: nn.Module, fail_at: int | None) -> None:
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return self.inner(x)


def test_representer_fit_through_the_store_equals_one_process(cnn, tmp_path):
    x, y = _data()
    local = RepresenterPoints(cnn, "head", batch_size=16, progress=False).fit(x, labels=y)
    sharded = scale.fit(
        RepresenterPoints(cnn, "head", batch_size=16, progress=False),
        x,
        y,
        store=tmp_path / "s",
        shard_rows=32,
    )
    for name in ("alpha_", "weight_", "features_", "labels_"):
        assert torch.equal(getattr(local, name), getattr(sharded, name)), name
    st = ShardedStore.open(tmp_path / "s")
    assert st.n_shards == 3 and st.complete
    q = x[:5]
    top_l = local.top(q, k=4)
    top_s = scale.top_points(sharded, q, k=4, store=st)
    assert torch.equal(top_l.excitatory, top_s.excitatory)
    assert torch.equal(top_l.inhibitory, top_s.inhibitory)
    torch.testing.assert_close(top_l.excitatory_values, top_s.excitatory_values, atol=1e-12, rtol=0)
    torch.testing.assert_close(top_l.inhibitory_values, top_s.inhibitory_values, atol=1e-12, rtol=0)
    al = scale.write_alpha(sharded, st, tmp_path / "alpha")
    top_a = scale.top_points(sharded, q, k=4, store=st, alpha=al)
    assert all(torch.equal(a, b) for a, b in zip(top_a, top_s, strict=True))
    other = RepresenterPoints(cnn, "head", batch_size=16, progress=False).fit(x[:64], labels=y[:64])
    with pytest.raises(ValueError, match="not fitted on the features"):
        scale.top_points(other, q, k=4, store=st)


def test_sharded_objective_and_gradient_equal_the_solver(cnn, tmp_path):
    from whynet.representer._features import head_weight
    from whynet.representer._solver import augment, gradient, objective

    x, y = _data()
    st = scale.extract(cnn, x, y, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    f, out = st.gather("features"), st.gather("outputs")
    w = head_weight(cnn.head).double() + 0.1
    fa, t = augment(f, torch.float64), torch.softmax(out, 1)
    j, g = scale.representer_objective(st, w, 0.01)
    assert abs(j - float(objective(fa @ w.T, w, t, 0.01))) < 1e-12
    torch.testing.assert_close(g, gradient(fa, w, t, 0.01), atol=1e-13, rtol=0)


def test_resume_computes_only_missing_shards(cnn, tmp_path):
    x, y = _data()
    flaky = Flaky(cnn, fail_at=5)  # batch 16, shards of 32: dies in the third shard
    with pytest.raises(RuntimeError, match="interrupted"):
        scale.extract(
            flaky, x, y, store=tmp_path / "s", head="inner.head", shard_rows=32, batch_size=16
        )
    half = ShardedStore.open(tmp_path / "s", verify=False)
    assert half.missing() == [2]
    with pytest.raises(StoreError, match="incomplete"):
        ShardedStore.open(tmp_path / "s")
    again = scale.extract(
        Flaky(cnn, None),
        x,
        y,
        store=tmp_path / "s",
        head="inner.head",
        shard_rows=32,
        batch_size=16,
    )
    assert again.computed == 1
    whole = scale.extract(
        Flaky(cnn, None),
        x,
        y,
        store=tmp_path / "w",
        head="inner.head",
        shard_rows=32,
        batch_size=16,
    )
    assert whole.computed == 3
    assert torch.equal(again.gather("features"), whole.gather("features"))


def test_corrupt_shard_is_detected_and_recomputed(cnn, tmp_path):
    x, y = _data()
    kw = dict(head="head", shard_rows=32, batch_size=16)
    st = scale.extract(cnn, x, y, store=tmp_path / "s", **kw)
    ref = st.gather("features")
    path = tmp_path / "s" / "shard-00001.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupted shard"):
        ShardedStore.open(tmp_path / "s")
    again = scale.extract(cnn, x, y, store=tmp_path / "s", **kw)
    assert again.computed == 1
    assert torch.equal(again.gather("features"), ref)


def test_store_of_another_model_or_layer_is_refused(cnn, tmp_path):
    x, y = _data()
    scale.extract(cnn, x, y, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    other = TinyCNN().double().eval()
    with pytest.raises(StoreError, match="another model, layer or data"):
        scale.extract(other, x, y, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    with pytest.raises(StoreError, match="another model, layer or data"):
        scale.extract(
            cnn, x, y, store=tmp_path / "s", layers=["features.2"], shard_rows=32, batch_size=16
        )


def test_manifest_that_does_not_match_its_shards(cnn, tmp_path):
    x, y = _data()
    scale.extract(cnn, x, y, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    mpath = tmp_path / "s" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["shards"]["0"], m["shards"]["1"] = m["shards"]["1"], m["shards"]["0"]
    mpath.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="does not match shard 0"):
        ShardedStore.open(tmp_path / "s")
    mpath.write_text("{not json")
    with pytest.raises(StoreError, match="not a whynet sharded store manifest"):
        ShardedStore.open(tmp_path / "s")


def test_mixed_schemas_are_refused(tmp_path):
    st = ShardedStore.create(tmp_path / "s", fingerprint="f", n_rows=8, shard_rows=4)
    st.put(0, {"a": torch.zeros(4, 3)})
    rec = write_shard(tmp_path / "s", 1, 4, {"a": torch.zeros(4, 2)})
    with pytest.raises(StoreError, match="mixed shard schemas"):
        st.commit(rec)
    rec = write_shard(tmp_path / "s", 1, 4, {"a": torch.zeros(4, 3, dtype=torch.float64)})
    with pytest.raises(StoreError, match="mixed shard schemas"):
        st.commit(rec)


def test_bad_settings(cnn, tmp_path):
    x, y = _data()
    with pytest.raises(ValueError, match="multiple of batch_size"):
        scale.extract(cnn, x, y, store=tmp_path / "s", head="head", shard_rows=30, batch_size=16)
    with pytest.raises(TypeError, match="random access"):
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
        scale.extract(cnn, loader, store=tmp_path / "s", head="head", shard_rows=32, batch_size=16)
    with pytest.raises(ValueError, match="engine must be"):
        scale.Engine("spark")


def test_kmeans_over_shards_equals_lloyd_from_the_same_centres(tmp_path):
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=torch.float64)
    lab = torch.randint(0, 3, (300,), generator=g)
    z = centres[lab] + torch.randn(300, 2, generator=g, dtype=torch.float64)
    st = ShardedStore.create(tmp_path / "s", fingerprint="z", n_rows=300, shard_rows=64)
    for i in range(st.n_shards):
        a, b = st.range(i)
        st.put(i, {"z": z[a:b], "labels": lab[a:b]})
    init = z[:3].clone()
    res = scale.fit_kmeans(st, "z", init, n_classes=3)
    ref = KMeans(3, init=init.numpy(), n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(
        z.numpy()
    )
    torch.testing.assert_close(
        res.centres, torch.from_numpy(ref.cluster_centers_), atol=1e-10, rtol=0
    )
    assert res.converged and abs(res.inertia - ref.inertia_) < 1e-8
    assign = scale.assign_points(st, "z", res.centres)
    assert torch.equal(assign, torch.from_numpy(ref.labels_).long())
    from whynet.clusters.layer import class_counts

    assert torch.equal(res.counts, class_counts(assign, lab, 3, 3))
    assert torch.allclose(res.posterior.sum(1), torch.ones(3, dtype=torch.float64))
    q = z[:4]
    idx, d2 = scale.nearest_points(st, "z", q, k=3)
    full = torch.cdist(q, z).pow(2)
    ref_d, ref_i = full.topk(3, dim=1, largest=False)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(d2, ref_d, atol=1e-10, rtol=0)
    assert res.proba(q).shape == (4, 3)


def test_class_wide_influence_is_a_sum_over_shards(cnn):
    x, y = _data()
    expl = InternalInfluence(cnn, "features.2", batch_size=16)
    local = expl.explain_dataset(x, labels=y, cls=1)
    sharded = scale.influence_dataset(expl, x, y, cls=1, shard_rows=32)
    assert sharded.meta["n_examples"] == local.meta["n_examples"]
    torch.testing.assert_close(sharded.values, local.values, atol=1e-10, rtol=0)


def test_explain_per_shard_equals_one_call(cnn, tmp_path):
    x, _ = _data(64)
    infl = InternalInfluence(cnn, "features.2", batch_size=16)
    st = scale.explain(infl, x, target=2, store=tmp_path / "e", shard_rows=32)
    whole = infl.explain(x, target=2)
    assert st.n_shards == 2
    assert torch.equal(st.gather("values"), whole.values)
    assert torch.equal(st.gather("target"), whole.target)
    one = scale.explain_all(infl, x, 2, store=tmp_path / "e2", shard_rows=32)
    assert torch.equal(one.values, whole.values) and one.params == whole.params
    assert (one.method, one.layer) == (whole.method, whole.layer)
    assert one.meta == {**whole.meta, "shards": 2}  # the method's own meta is kept


def test_ray_engine_without_ray_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):  # type: ignore[no-untyped-def]
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'whynet\[scale\]'"):
        scale.require_ray()


def test_layer_activations_equal_one_walk(cnn, tmp_path):
    from whynet.clusters._acts import reduce_activation
    from whynet.core import run_model

    x, y = _data(64)
    st = scale.extract(
        cnn, x, y, store=tmp_path / "a", layers=["features.2"], shard_rows=32, batch_size=16
    )
    whole = torch.cat(
        [
            reduce_activation(b.acts["features.2"], b.lengths["features.2"], b.inputs, "features.2")
            for b in run_model(cnn, x, layers=["features.2"], batch_size=16)
        ]
    )
    assert torch.equal(st.gather("acts.features.2"), whole)
    assert torch.equal(st.gather("labels"), y)


def test_explanations_of_another_fit_are_not_resumed(cnn, tmp_path):
    x, y = _data(64)
    rp = RepresenterPoints(cnn, "head", batch_size=16, progress=False).fit(x, labels=y)
    scale.explain(rp, x[:32], store=tmp_path / "e", shard_rows=16)
    rp.fit(x[:48], labels=y[:48])  # same settings, another fit
    with pytest.raises(StoreError, match="another model, layer or data"):
        scale.explain(rp, x[:32], store=tmp_path / "e", shard_rows=16)
    with pytest.raises(StoreError, match="another model, layer or data"):
        scale.explain(
            rp,
            x[:32],
            target=torch.zeros(32, dtype=torch.long),
            store=tmp_path / "e",
            shard_rows=16,
        )


def test_one_switch_local_is_the_explainers_own_fit(tmp_path):
    class Fake:
        def fit(self, data, labels=None, **kw):  # type: ignore[no-untyped-def]
            self.got = (data, labels, kw)
            return self

    f = scale.fit(Fake(), "data", "labels", epochs=3)
    assert f.got == ("data", "labels", {"epochs": 3})
    with pytest.raises(TypeError, match="sharded fit"):
        scale.fit(Fake(), "data", store=tmp_path / "s", engine="ray")
