"""Properties of whynet.clusters (Liu & Arik 2020): tables, surrogate, query, IDEC, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from whynet.clusters import (
    ClusterSurrogate,
    ConvAE,
    WeightedIndex,
    soft_assign,
    target_distribution,
)
from whynet.clusters._acts import reduce_activation
from whynet.clusters.surrogate import fit_mixture_weights
from whynet.core import NotFittedError

pytest.importorskip("sklearn")

C = 3  # classes


def blobs(n: int = 240, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Well separated Gaussian blobs and a model whose first layer is the identity and whose
    head is the nearest-centre rule, so the model's class is the blob."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, d, generator=g) * 8
    y = torch.arange(n) % C
    x = centres[y] + torch.randn(n, d, generator=g)
    head = nn.Linear(d, C)
    with torch.no_grad():
        head.weight.copy_(centres)
        head.bias.copy_(-0.5 * centres.pow(2).sum(1))
    model = nn.Sequential(nn.Identity(), head)
    return x, y, model


FAST = {"pretrain_epochs": 3, "max_iter": 120, "update_interval": 20, "n_init": 3}


@pytest.fixture(scope="module")
def data():
    return blobs()


@pytest.fixture(scope="module")
def km(data):
    x, y, model = data
    return ClusterSurrogate(
        model, ["0", "1"], n_clusters=C, algorithm="kmeans", embed_dim=4, batch_size=32
    ).fit(x, y)


@pytest.fixture(scope="module")
def idec(data):
    x, y, model = data
    torch.manual_seed(0)
    return ClusterSurrogate(
        model, ["0"], n_clusters=C, algorithm="idec", embed_dim=4, batch_size=32, **FAST
    ).fit(x, y)


# ------------------------------------------------------------------ closed forms
def test_soft_assignment_matches_student_t_and_target_is_sharper():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 4, generator=g, dtype=torch.float64)
    mu = torch.randn(5, 4, generator=g, dtype=torch.float64)
    for a in (1.0, 100.0):
        q = soft_assign(z, mu, a)
        kern = (1 + ((z[:, None] - mu[None]) ** 2).sum(-1) / a) ** (-(a + 1) / 2)
        torch.testing.assert_close(q, kern / kern.sum(1, keepdim=True))
        p = target_distribution(q)
        torch.testing.assert_close(p.sum(1), torch.ones(50, dtype=torch.float64))
        f = q.sum(0)
        expect = (q**2 / f) / (q**2 / f).sum(1, keepdim=True)
        torch.testing.assert_close(p, expect)

        def entropy(t: torch.Tensor) -> torch.Tensor:
            return -(t * t.log()).sum(1)

        assert bool((entropy(p) <= entropy(q) + 1e-12).all())
        assert float(entropy(p).mean()) < float(entropy(q).mean())


@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (5, 6), (1, 1)])
def test_conv_autoencoder_restores_shape_and_radius(hw):
    ae = ConvAE((3, *hw), embed_dim=5, radius=8.0)
    x = torch.randn(4, 3, *hw)
    z, rec = ae(x)
    assert rec.shape == x.shape
    torch.testing.assert_close(z.norm(dim=1), torch.full((4,), 8.0))


def test_posterior_rows_sum_to_one_and_empty_cluster_has_no_nan(km):
    for h in km.posteriors_.values():
        assert h.dtype == torch.float64
        torch.testing.assert_close(h.sum(1), torch.ones(C, dtype=torch.float64))
    counts = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for s in (1.0, 0.0):
        km.smoothing = s
        h = km._posterior(counts)
        assert bool(torch.isfinite(h).all())
        torch.testing.assert_close(h.sum(1), torch.ones(2, dtype=torch.float64))
    km.smoothing = 1.0
    torch.testing.assert_close(
        km._posterior(counts)[0], torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64)
    )


def test_posterior_counts_are_the_training_assignments(km, data):
    x, y, model = data
    for name in km.layers:
        a = km.train_assignments_[name]
        counts = torch.zeros(C, C, dtype=torch.float64)
        for k, t in zip(a.tolist(), model(x).argmax(1).tolist()):
            counts[k, t] += 1
        torch.testing.assert_close(km.clusterer(name).counts_, counts)


def test_predict_proba_rows_sum_to_one_for_any_weights(km, data):
    x = data[0][:40]
    g = torch.Generator().manual_seed(3)
    for w in ([1.0, 1.0], [2.0, 0.0], [0.0, 0.3], torch.rand(2, generator=g).tolist()):
        p = km.predict_proba(x, layer_weights=w)
        assert p.shape == (40, C)
        torch.testing.assert_close(p.sum(1), torch.ones(40, dtype=torch.float64))
    # the combination divides by the weight sum: weights [2, 0] equal layer 0 alone
    torch.testing.assert_close(km.predict_proba(x, [2.0, 0.0]), km.predict_proba(x, [1.0, 0.0]))


def test_separable_clusters_give_fidelity_one(km, idec, data):
    x, y, _ = data
    for s in (km, idec):
        assert s.fidelity(x) >= 0.99
        assert s.accuracy(x, y) >= 0.99
        rep = s.layer_report(x, y)
        for name in s.layers:
            assert rep[name]["fidelity"] >= 0.99 and rep[name]["purity"] >= 0.99


def test_idec_stops_on_small_assignment_change(idec):
    hist = idec.history_["0"]
    assert hist["pretrain_loss"][-1] < hist["pretrain_loss"][0]
    assert hist["delta"] and hist["delta"][-1] < 0.001  # stopped by the tolerance


@pytest.mark.parametrize("which", ["km", "idec"])
def test_query_with_training_point_returns_it_first(which, request, data):
    s = request.getfixturevalue(which)
    x = data[0]
    idx, dist = s.similar(x[:20], k=5)
    assert torch.equal(idx[:, 0], torch.arange(20))
    assert float(dist[:, 0].max()) < 1e-4  # 0 up to float32 rounding of the embedding
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())


def test_weighted_index_equals_brute_force():
    g = torch.Generator().manual_seed(5)
    blocks = [torch.randn(300, 3, generator=g), torch.randn(300, 5, generator=g)]
    q = [torch.randn(7, 3, generator=g), torch.randn(7, 5, generator=g)]
    index = WeightedIndex(blocks)
    # both search paths: faiss for small batches, matrix product + top-k (in score chunks of
    # 2 queries here) for large ones
    for threshold, chunk in ((10**9, 1 << 24), (0, 600)):
        index.batch_threshold, index.chunk_scores = threshold, chunk
        for w in ([1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [0.3, 1.7]):
            wt = torch.tensor(w, dtype=torch.float64)
            idx, dist = index.search(q, wt, 6)
            d2 = sum(wt[i] * torch.cdist(q[i].double(), blocks[i].double()) ** 2 for i in range(2))
            ref_d, ref_i = d2.sort(dim=1)
            torch.testing.assert_close(dist, ref_d[:, :6].sqrt())
            assert torch.equal(idx, ref_i[:, :6])


def test_concepts_are_nearest_to_each_centre(km):
    name = "1"
    idx = km.concepts(name, k=4)
    emb, centres = km.train_embeddings_[name], km.centres_[name]
    d = torch.cdist(centres.double(), emb.double())
    ref = d.topk(4, dim=1, largest=False)
    assert idx.shape == (C, 4)
    # the same distances (float32 search: near-ties may swap order, never change the set's
    # distances beyond float32 rounding)
    torch.testing.assert_close(d.gather(1, idx), ref.values, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(km, idec, data, tmp_path):
    x, _, model = data
    for s in (km, idec):
        path = s.save(tmp_path / f"{s.algorithm}.safetensors")
        t = ClusterSurrogate.load(path, model)
        assert torch.equal(s.predict_proba(x), t.predict_proba(x))
        assert torch.equal(s.layer_weights_, t.layer_weights_)
        assert torch.equal(s.similar(x[:5], k=3)[0], t.similar(x[:5], k=3)[0])
        assert torch.equal(s.concepts(s.layers[0], 3), t.concepts(t.layers[0], 3))
    raw = tmp_path / "bad.safetensors"
    raw.write_bytes(b"not a file")
    with pytest.raises(ValueError):
        ClusterSurrogate.load(raw, model)


def test_explain_and_hygiene(km, data):
    x, _, model = data
    model.train()
    e = km.explain(x[:6])
    assert model.training and all(m.training for m in model.modules())
    assert hook_count(model) == 0
    assert e.values.shape == (6, C) and e.method == "clusters"
    assert e.extras["clusters"].shape == (6, 2)
    assert torch.equal(e.extras["similar"][:, 0], torch.arange(6))
    model.eval()


def test_spill_to_disk_gives_the_same_surrogate(data, tmp_path):
    x, y, model = data
    kw = {"n_clusters": C, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32}
    mem = ClusterSurrogate(model, ["0"], **kw).fit(x)
    disk = ClusterSurrogate(model, ["0"], cache_dir=tmp_path, memory_limit=1000, **kw).fit(x)
    assert disk.spilled_to_disk_ and not mem.spilled_to_disk_
    assert list(tmp_path.iterdir()) == []  # cache removed after fit
    torch.testing.assert_close(mem.train_embeddings_["0"], disk.train_embeddings_["0"])
    torch.testing.assert_close(mem.predict_proba(x), disk.predict_proba(x))


def test_conv_layers_idec_end_to_end(tiny_cnn):
    model = tiny_cnn.float()
    x = torch.randn(96, 1, 6, 6)
    s = ClusterSurrogate(
        model,
        ["features.0", "features.2", "head"],
        n_clusters=3,
        batch_size=32,
        embed_dim=3,
        pretrain_epochs=1,
        max_iter=10,
        update_interval=5,
        n_init=1,
    ).fit(x)
    # features.0 is followed by an in-place ReLU: the captured activations keep their sign
    assert s.clusterer("features.0").mean_.shape == (4, 1, 1)
    p = s.predict_proba(x[:10])
    torch.testing.assert_close(p.sum(1), torch.ones(10, dtype=torch.float64))
    assert hook_count(model) == 0


class TinyGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 5, padding_idx=0)
        self.gru = nn.GRU(5, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(ids), lengths, batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return self.head(torch.cat([h[0], h[1]], 1))


def test_sequence_activations_pool_over_valid_tokens():
    ids = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8]])
    t = torch.randn(2, 4, 3, dtype=torch.float64)
    out = reduce_activation(t, None, ids, "emb")
    torch.testing.assert_close(out[0], t[0, :2].mean(0).float())
    torch.testing.assert_close(out[1], t[1].mean(0).float())
    conv = torch.randn(2, 3, 4)  # (B, C, T) over token ids: pooled along the last axis
    pooled = reduce_activation(conv, None, ids, "conv")
    torch.testing.assert_close(pooled[0], conv[0, :, :2].mean(1))
    torch.manual_seed(0)
    model = TinyGRU().eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 7, (64,), generator=g)
    ids = torch.randint(1, 12, (64, 6), generator=g) * (torch.arange(6) < lengths[:, None])
    s = ClusterSurrogate(
        model, ["embedding", "gru"], n_clusters=2, algorithm="kmeans", embed_dim=3, batch_size=16
    ).fit(ids)
    # the GRU emits a PackedSequence: its padded output is averaged over each sequence's length
    with torch.no_grad():
        packed = nn.utils.rnn.pack_padded_sequence(
            model.embedding(ids[:2]), lengths[:2], batch_first=True, enforce_sorted=False
        )
        out, _ = nn.utils.rnn.pad_packed_sequence(model.gru(packed)[0], batch_first=True)
    st = s.clusterer("gru")
    want = torch.stack([out[i, : lengths[i]].mean(0) for i in range(2)])
    torch.testing.assert_close(
        s.embed(ids[:2])["gru"], st.embedder_.encode((want - st.mean_) / st.std_)
    )
    assert s.predict_proba(ids[:5]).shape == (5, 2)
    assert hook_count(model) == 0


# ------------------------------------------------------------------ bad input
class IntLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).long()


class Cast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_bad_input_errors(data):
    x, y, model = data
    with pytest.raises(ValueError, match="n_clusters=500 is larger than the number"):
        ClusterSurrogate(
            model, ["0"], n_clusters=500, algorithm="kmeans", batch_size=32, max_fit_points=None
        ).fit(x)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ClusterSurrogate(model, ["0"], n_clusters=3, algorithm="kmeans", batch_size=256).fit(x)
    bad = nn.Sequential(IntLayer(), Cast())
    with pytest.raises(TypeError, match=r"layer '0.0' gives activations of dtype torch.int64"):
        ClusterSurrogate(
            nn.Sequential(bad, nn.Linear(6, 3)), ["0.0"], n_clusters=3, batch_size=32
        ).fit(x)
    with pytest.raises(ValueError, match="unknown layer"):
        ClusterSurrogate(model, ["nope"], n_clusters=3, batch_size=32).fit(x)
    with pytest.raises(ValueError, match="layer_weights has 1 entries for 2 layers"):
        ClusterSurrogate(model, ["0", "1"], layer_weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        ClusterSurrogate(model, ["0"], layer_weights=[-1.0])
    with pytest.raises(ValueError, match="algorithm must be one of"):
        ClusterSurrogate(model, ["0"], algorithm="dbscan")
    with pytest.raises(ValueError, match='layer_weights must be "fit"'):
        ClusterSurrogate(model, ["0"], layer_weights="learn")
    with pytest.raises(ValueError, match="weight_holdout"):
        ClusterSurrogate(model, ["0"], weight_holdout=0.9)
    with pytest.raises(ValueError, match="leaving fewer than n_clusters"):
        ClusterSurrogate(
            model, ["0"], n_clusters=40, algorithm="kmeans", batch_size=32, weight_holdout=0.5
        ).fit(x[:64])
    with pytest.raises(ValueError, match="labels are needed"):
        ClusterSurrogate(model, ["0"], n_clusters=3, batch_size=32, posterior="labels").fit(x)
    with pytest.raises(NotFittedError):
        ClusterSurrogate(model, ["0"]).predict(x)
    with pytest.raises(ValueError, match="n_classes >= 2"):
        ClusterSurrogate(
            nn.Sequential(nn.Identity(), nn.Linear(6, 1)), ["0"], n_clusters=3, batch_size=32
        ).fit(x)


class RaisesAfter(nn.Module):
    """A model that, once armed, raises from its ``after``-th forward on (a failure half-way
    through the walk over the training data)."""

    def __init__(self, net: nn.Module, after: int) -> None:
        super().__init__()
        self.net, self.after, self.calls, self.armed = net, after, 0, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.armed and self.calls >= self.after:
            raise RuntimeError("boom in fit")
        return self.net(x)


def _assert_unfitted(s: ClusterSurrogate, x: torch.Tensor) -> None:
    for call in (
        s.check_is_fitted,
        lambda: s.explain(x[:4]),
        lambda: s.predict(x[:4]),
        lambda: s.similar(x[:4]),
        lambda: s.posteriors_,
        lambda: s.clusterer("net.0"),
    ):
        with pytest.raises(NotFittedError):
            call()


def test_fit_that_raises_half_way_leaves_the_surrogate_unfitted(data, monkeypatch, tmp_path):
    x, _, model = data
    net = RaisesAfter(model, after=3)
    kw = {"n_clusters": C, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32}
    s = ClusterSurrogate(net, ["net.0", "net.1"], **kw)
    net.armed = True
    with pytest.raises(RuntimeError, match="boom in fit"):
        s.fit(x)  # two batches walked, the third raises
    _assert_unfitted(s, x)
    # a fitted surrogate whose refit fails forgets the earlier fit (no mix of old and new)
    net.armed = False
    s.fit(x)
    assert s.predict(x[:4]).shape == (4,)
    net.calls, net.armed = 0, True
    with pytest.raises(RuntimeError, match="boom in fit"):
        s.fit(x)
    _assert_unfitted(s, x)
    with pytest.raises(NotFittedError):
        s.save(tmp_path / "never.safetensors")
    # a failure after the walk, while clustering the second layer, as well
    import whynet.clusters.layer as layer

    real, calls = layer.kmeans, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in k-means")
        return real(*args, **kwargs)

    net.armed = False
    s.fit(x)
    monkeypatch.setattr(layer, "kmeans", fails_second)
    with pytest.raises(RuntimeError, match="boom in k-means"):
        s.fit(x)
    _assert_unfitted(s, x)


def test_posterior_from_labels(data):
    x, y, model = data
    flipped = (y + 1) % C  # labels that disagree with the model everywhere
    s = ClusterSurrogate(
        model,
        ["0"],
        n_clusters=C,
        algorithm="kmeans",
        embed_dim=4,
        batch_size=32,
        posterior="labels",
    ).fit(x, flipped)
    assert s.accuracy(x, flipped) >= 0.99
    assert s.fidelity(x) <= 0.01


# ------------------------------------------------------------------ fitted layer weights
class InfoAndNoise(nn.Module):
    """Layer ``info`` sees the blob coordinates (which decide the class), layer ``noise``
    independent noise dimensions of the input; the head reads ``info`` only."""

    def __init__(self, head: nn.Module, d: int) -> None:
        super().__init__()
        self.d = d
        self.info = nn.Identity()
        self.noise = nn.Identity()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.noise(x[:, self.d :])
        return self.head(self.info(x[:, : self.d]))


def test_fit_mixture_weights_rejects_bad_likelihoods():
    for bad, msg in (
        (torch.ones(5), "shape"),
        (torch.ones(2, 0), "shape"),
        (-torch.ones(2, 3), ">= 0"),
        (torch.full((2, 3), float("nan")), "finite"),
    ):
        with pytest.raises(ValueError, match=msg):
            fit_mixture_weights(bad)


def test_fit_mixture_weights_is_the_constrained_maximum():
    g = torch.Generator().manual_seed(7)
    p = torch.rand(4, 300, generator=g, dtype=torch.float64) * torch.tensor(
        [[1.0], [0.2], [0.9], [0.05]], dtype=torch.float64
    )
    w, info = fit_mixture_weights(p, max_iter=5000, tol=1e-13)
    assert w.dtype == torch.float64 and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert info["log_likelihood"] >= info["log_likelihood_equal"]
    # KKT of max mean log(w^T p) on the simplex: gradient = 1 where w > 0, <= 1 where w = 0
    grad = (p / (w[:, None] * p).sum(0)).mean(1)
    active = w > 1e-6
    torch.testing.assert_close(grad[active], torch.ones(int(active.sum()), dtype=torch.float64))
    assert bool((grad[~active] <= 1 + 1e-6).all())
    # one layer explains every point perfectly, the other not at all: all weight on it
    w1, _ = fit_mixture_weights(torch.tensor([[1.0] * 5, [0.0] * 5], dtype=torch.float64))
    torch.testing.assert_close(w1, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_fitted_weights_favour_the_informative_layer(data, tmp_path):
    x, _, model = data
    g = torch.Generator().manual_seed(11)
    xn = torch.cat([x, 8 * torch.randn(len(x), 4, generator=g)], 1)
    net = InfoAndNoise(model[1], x.shape[1])
    kw = {"n_clusters": C, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32}
    s = ClusterSurrogate(net, ["noise", "info"], **kw).fit(xn)
    assert s.layer_weights == "fit"
    w = s.layer_weights_
    assert w.dtype == torch.float64 and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(w[1]) > 0.9
    assert s.weight_fit_["n_holdout"] == round(0.1 * len(x))
    assert s.weight_fit_["holdout_fidelity_fitted"] >= s.weight_fit_["holdout_fidelity_equal"]
    assert s.fidelity(xn) >= 0.99
    equal = ClusterSurrogate(net, ["noise", "info"], layer_weights=None, **kw).fit(xn)
    torch.testing.assert_close(equal.layer_weights_, torch.ones(2, dtype=torch.float64))
    assert equal.weight_fit_ == {}
    p = s.predict_proba(xn[:50])
    torch.testing.assert_close(p.sum(1), torch.ones(50, dtype=torch.float64))
    # save/load keeps the fitted weights and the setting
    t = ClusterSurrogate.load(s.save(tmp_path / "w.safetensors"), net)
    assert t.layer_weights == "fit"
    assert torch.equal(t.layer_weights_, w)
    assert t.weight_fit_ == s.weight_fit_
    assert torch.equal(t.predict_proba(xn[:50]), p)


@pytest.fixture
def kmeans_sizes(monkeypatch):
    """The number of points each k-means call of the surrogate clusters, in call order."""
    import whynet.clusters.layer as sur

    sizes: list[int] = []
    real = sur.kmeans

    def spy(z, *args, **kwargs):
        sizes.append(len(z))
        return real(z, *args, **kwargs)

    monkeypatch.setattr(sur, "kmeans", spy)
    return sizes


def test_weights_are_fitted_on_held_out_training_points(data, kmeans_sizes):
    """The clustering never sees the held-out points; only fit's data enters the weights."""
    x, _, model = data
    kw = {"n_clusters": C, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32}
    s = ClusterSurrogate(model, ["0", "1"], **kw).fit(x)
    n_out = round(0.1 * len(x))
    assert kmeans_sizes == [len(x) - n_out] * 2
    holdout, pool = s._split_holdout(len(x), np.random.default_rng(0))
    assert len(holdout) == n_out and len(set(holdout) | set(pool)) == len(x)
    assert not set(holdout) & set(pool)
    # the same training data gives the same weights, whatever is evaluated afterwards
    w = s.layer_weights_.clone()
    s.fidelity(x[:30] + 0.5)
    assert torch.equal(s.layer_weights_, w)
    again = ClusterSurrogate(model, ["0", "1"], **kw).fit(x)
    assert torch.equal(again.layer_weights_, w)


def test_likelihood_restart_selection_keeps_the_best_held_out_restart(data, kmeans_sizes):
    x, _, model = data
    kw = {"n_clusters": C + 2, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32, "n_init": 4}
    s = ClusterSurrogate(
        model, ["0", "1"], layer_weights=[1.0, 1.0], restart_selection="likelihood", **kw
    ).fit(x)
    assert kmeans_sizes == [len(x) - round(0.1 * len(x))] * 8  # 4 single restarts per layer
    for name in s.layers:
        h = s.history_[name]
        assert len(h["restart_loglik"]) == 4 and len(h["restart_inertia"]) == 4
        assert h["restart_chosen"] == [float(np.argmax(h["restart_loglik"]))]
    assert s.weight_fit_ == {}  # fixed weights: a holdout for the restarts only
    torch.testing.assert_close(s.layer_weights_, torch.ones(2, dtype=torch.float64))
    assert s.fidelity(x) >= 0.99
    p = s.predict_proba(x[:20])
    torch.testing.assert_close(p.sum(1), torch.ones(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="restart_selection must be one of"):
        ClusterSurrogate(model, ["0"], restart_selection="best")


def test_likelihood_selection_of_the_idec_initialisation(data):
    x, _, model = data
    s = ClusterSurrogate(
        model,
        ["0"],
        n_clusters=C,
        embed_dim=4,
        batch_size=32,
        restart_selection="likelihood",
        **{**FAST, "n_init": 3},
    ).fit(x)
    h = s.history_["0"]
    assert len(h["restart_loglik"]) == 3 and h["pretrain_loss"]
    assert h["restart_chosen"] == [float(np.argmax(h["restart_loglik"]))]
    assert s.fidelity(x) >= 0.99


def test_given_initial_centres_run_lloyd_to_a_fixed_point(data, km):
    """``fit(init=...)``: Lloyd from the given centres in float64, on the fitting rows (all but
    the held-out ones): each centre ends as the mean of the points assigned to it, and a
    centre given at a blob's point ends at that blob's mean."""
    x, y, model = data
    emb = km.train_embeddings_
    init = {k: v[[0, 1, 2]].double() for k, v in emb.items()}  # one point of each blob
    kw = {"n_clusters": C, "algorithm": "kmeans", "embed_dim": 4, "batch_size": 32}
    s = ClusterSurrogate(model, ["0", "1"], **kw).fit(x, y, init=init)
    holdout, _ = s._split_holdout(len(x), np.random.default_rng(0))
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[torch.from_numpy(holdout)] = False
    for layer in ("0", "1"):
        c = s.clusterer(layer)
        assert torch.equal(c.embeddings_, emb[layer])  # the embedding does not depend on init
        z, a = c.embeddings_[keep].double(), torch.cdist(c.embeddings_[keep].double(), c.centres_)
        assign = a.argmin(1)
        means = torch.stack([z[assign == k].mean(0) for k in range(C)])
        torch.testing.assert_close(c.centres_, means, atol=1e-12, rtol=0)
        assert torch.equal(assign, y[keep])  # the blobs, in the order of the given points
        assert c.history_["lloyd_converged"] == [1.0]
    with pytest.raises(ValueError, match=r"expected \(n_clusters, embedding dim\)"):
        ClusterSurrogate(model, ["0", "1"], **kw).fit(x, init=[v[:, :2] for v in init.values()])
