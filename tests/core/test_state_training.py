"""Declared fitted state and its persistence, the activation store, the training loop and the
image reference/blend."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from whynet.core import (
    ActivationStore,
    Explainer,
    Explanation,
    FittedMixin,
    NotFittedError,
    State,
    StoreCache,
    Target,
    blend,
    reference,
    run_model,
    train,
)


def _lin_config(m: nn.Module) -> dict[str, Any]:
    return {"d": m.in_features}


def _lin_build(c: dict[str, Any]) -> nn.Module:
    return nn.Linear(c["d"], 1)


class MeanShift(FittedMixin, Explainer):
    """Fits the mean activation of the head's input; explains ``f(x) - mean``."""

    method = "mean-shift"
    _format = "whynet.test.meanshift"
    _check_fingerprint = True
    _fitted_state = {
        "mean_": State(),
        "per_class_": State("tensors"),
        "n_": State("json"),
        "probe_": State("module", config=_lin_config, build=_lin_build),
        "note_": State("json", optional=True),
        "features_": State(device=False),
    }

    def __init__(
        self,
        model: nn.Module,
        head: str = "head",
        transform: Any = None,
        *,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, batch_size=batch_size, progress=progress)
        self.head = head
        self.transform = transform

    def fit(self, data: torch.Tensor, fail_after: int | None = None) -> MeanShift:
        self._reset_fitted()
        feats = []
        for b in run_model(self.model, data, inputs=[self.head], batch_size=2):
            if fail_after is not None and b.start >= fail_after:
                raise RuntimeError("fit failed half-way")
            feats.append(b.layer_inputs[self.head])
        f = torch.cat(feats)
        torch.manual_seed(1)
        self._set_fitted(
            mean_=f.mean(0),
            per_class_={"all": f.amax(0)},
            n_=int(f.shape[0]),
            probe_=nn.Linear(f.shape[1], 1).to(f.dtype),
            note_=None,
            features_=f,
        )
        return self

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, Any]:
        (b,) = run_model(self.model, x, inputs=[self.head], batch_size=len(x))
        v = b.layer_inputs[self.head] - self.mean_
        return {"values": v, "probe": self.probe_(v)[:, 0]}


def test_not_fitted_before_fit_and_after_a_failed_fit(tiny_cnn):
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    ex = MeanShift(tiny_cnn)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ex.explain(x)
    with pytest.raises(RuntimeError, match="half-way"):
        ex.fit(x, fail_after=2)
    with pytest.raises(NotFittedError):
        ex.check_is_fitted()
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(ex))
    ex.fit(x)
    ex.check_is_fitted()
    with pytest.raises(RuntimeError):  # a failed refit does not leave the old state behind
        ex.fit(x, fail_after=2)
    with pytest.raises(NotFittedError):
        ex.explain(x)


def test_set_fitted_checks_the_declaration(tiny_cnn):
    ex = MeanShift(tiny_cnn)
    with pytest.raises(AttributeError, match="does not declare"):
        ex._set_fitted(mean_=torch.zeros(1), other_=1)
    with pytest.raises(AttributeError, match="did not produce"):
        ex._set_fitted(mean_=torch.zeros(1))


def test_save_load_round_trip(tiny_cnn, tmp_path):
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    ex = MeanShift(tiny_cnn, batch_size=4).fit(x)
    e = ex.explain(x)
    path = ex.save(tmp_path / "ms.safetensors")
    back = MeanShift.load(path, tiny_cnn, batch_size=2)
    assert back.batch_size == 2 and back.n_ == 6 and back.note_ is None
    torch.testing.assert_close(back.per_class_["all"], ex.per_class_["all"])
    e2 = back.explain(x)
    torch.testing.assert_close(e2.values, e.values, rtol=0, atol=0)
    torch.testing.assert_close(e2.extras["probe"], e.extras["probe"], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["ms.safetensors"]  # no temp files left


def test_load_refuses_other_weights_and_unsaved_settings(tiny_cnn, tmp_path):
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    path = MeanShift(tiny_cnn).fit(x).save(tmp_path / "a.safetensors")
    other = type(tiny_cnn)().double()
    with pytest.raises(ValueError, match="different weights"):
        MeanShift.load(path, other)
    MeanShift.load(path, other, strict=False).check_is_fitted()
    with_fn = MeanShift(tiny_cnn, transform=torch.relu).fit(x)
    p2 = with_fn.save(tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=r"transform \(was relu\)"):
        MeanShift.load(p2, tiny_cnn)
    assert MeanShift.load(p2, tiny_cnn, transform=torch.relu).transform is torch.relu
    Explanation(values=torch.zeros(1)).save(tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match="not a whynet.test.meanshift file"):
        MeanShift.load(tmp_path / "e.safetensors", tiny_cnn)


# ---- store ------------------------------------------------------------------------------------


def test_activation_store_spills_to_the_same_arrays(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 2, 2, generator=g) for _ in range(4)]
    mem, disk = ActivationStore(), ActivationStore(memory_limit=64, cache_dir=tmp_path)
    for b in batches:
        mem.append("a", b)
        disk.append("a", b)
        disk.append("ids", (b > 0).long().sum((1, 2)))
    assert disk.on_disk and not mem.on_disk
    arrays = disk.arrays()
    assert (arrays["a"] == mem.arrays()["a"]).all() and arrays["ids"].dtype.kind == "i"
    disk.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="changed shape"):
        mem.append("a", torch.zeros(1, 3))


def test_store_cache_round_trip_and_corruption(tmp_path):
    cache = StoreCache(tmp_path, "k" * 40, what="feature")
    feats = torch.randn(5, 3)
    cache.write({"features": feats, "labels": torch.arange(5), "skip": None}, {"n": 5})
    assert cache.exists()
    arrays, meta = cache.read(mmap=("features",))
    assert torch.equal(arrays["features"], feats) and meta["n"] == 5 and "skip" not in arrays
    raw = bytearray(cache.path("labels").read_bytes())
    raw[-1] ^= 1
    cache.path("labels").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted feature cache.*sha256"):
        cache.read()


# ---- training ---------------------------------------------------------------------------------


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    return net, x, y


def _fit(seed: int, **kw: Any) -> tuple[nn.Module, Any]:
    net, x, y = _problem()

    def batches(epoch: int, gen: torch.Generator) -> Any:
        perm = torch.randperm(len(x), generator=gen)
        return [perm[i : i + 16] for i in range(0, len(x), 16)]

    def loss(idx: torch.Tensor) -> Any:
        value = (net(x[idx])[:, 0] - y[idx]).pow(2).mean()
        return value, {"loss": value.item()}, len(idx)

    return net, train(net, batches, loss, epochs=3, lr=1e-2, seed=seed, **kw)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, ra = _fit(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = _fit(0)
    c, _ = _fit(1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert not a.training and [r["epoch"] for r in ra.history] == [1.0, 2.0, 3.0]
    assert ra.history[-1]["loss"] < ra.history[0]["loss"]


def test_training_early_stopping_keeps_the_best_weights():
    snapshots: list[dict[str, torch.Tensor]] = []
    losses = iter([3.0, 1.0, 2.0, 2.5, 0.5])
    net_holder: list[nn.Module] = []

    def validate() -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in net_holder[0].state_dict().items()})
        return {"loss": next(losses)}

    net, x, y = _problem()
    net_holder.append(net)

    def loss(idx: torch.Tensor) -> Any:
        value = (net(x[idx])[:, 0] - y[idx]).pow(2).mean()
        return value, {}, len(idx)

    res = train(
        net,
        lambda e, g: [torch.arange(16)],
        loss,
        epochs=5,
        validate=validate,
        patience=2,
    )
    assert res.stopped_early and res.best_epoch == 2 and len(res.history) == 4
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train(net, lambda e, g: [], loss, epochs=0)
    with pytest.raises(ValueError, match="training data is empty"):
        train(net, lambda e, g: [], loss, epochs=1)


# ---- image reference / blend ------------------------------------------------------------------


def test_reference_and_blend():
    x = torch.rand(2, 3, 8, 8)
    ones, zeros = torch.ones(2, 8, 8), torch.zeros(2, 1, 8, 8)
    for spec in ("blur", "zero", "mean", 0.5, torch.zeros(3, 1, 1)):
        ref = reference(x, spec, 1.0)
        assert ref.shape == x.shape
        assert torch.equal(blend(x, ones, ref), x)  # a mask of ones keeps the input exactly
        assert torch.equal(blend(x, zeros, ref), ref)
    torch.testing.assert_close(reference(x, "mean")[:, :, 0, 0], x.mean((2, 3)))
    with pytest.raises(ValueError, match="baseline must be one of"):
        reference(x, "noise", name="baseline")
    with pytest.raises(ValueError, match="must be finite"):
        reference(x, float("nan"))
    with pytest.raises(ValueError, match="does not broadcast"):
        reference(x, torch.zeros(5, 5))
    with pytest.raises(TypeError):
        reference(x, [1, 2])  # type: ignore[arg-type]


class Embeds(FittedMixin, Explainer):
    """A float32 embedder kept beside a float64 model (``cast=False``), an optional state."""

    method = "embeds"
    _format = "whynet.test.embeds"
    _fitted_state = {
        "embedder_": State("module", config=_lin_config, build=_lin_build, cast=False),
        "scale_": State("json", optional=True),
    }

    def __init__(self, model: nn.Module, *, batch_size: int = 64) -> None:
        super().__init__(model, batch_size=batch_size)

    def fit(self) -> Embeds:
        self._reset_fitted()
        self._set_fitted(embedder_=nn.Linear(6, 1))  # float32; scale_ not given
        return self


def test_module_state_keeps_its_dtype_and_optional_state_is_none(tiny_cnn, tmp_path):
    ex = Embeds(tiny_cnn).fit()
    assert ex.scale_ is None  # an optional entry not given reads None, as after load
    back = Embeds.load(ex.save(tmp_path / "e.safetensors"), tiny_cnn)
    assert back.embedder_.weight.dtype == torch.float32 and back.scale_ is None
    assert torch.equal(back.embedder_.weight, ex.embedder_.weight)


def test_load_names_an_old_layout(tiny_cnn, tmp_path):
    from whynet.core import save_tensors

    save_tensors(tmp_path / "old.safetensors", {"w": torch.zeros(1)}, {"x": 1}, Embeds._format, 1)
    with pytest.raises(ValueError, match="older whynet.*fit again and save"):
        Embeds.load(tmp_path / "old.safetensors", tiny_cnn)


def test_training_clips_the_gradient_norm():
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    x = torch.full((1, 3), 100.0)

    def loss(batch: Any) -> Any:
        return -(net(x)).sum(), {}, 1

    train(net, lambda e, g: [0], loss, epochs=1, optimizer=opt, clip_grad_norm=0.5)
    assert torch.linalg.vector_norm(net.weight).item() == pytest.approx(0.5)
