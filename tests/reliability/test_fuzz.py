"""Fuzz every registered explainer and the file loaders (issue 16, hypothesis).

Properties: a call either raises a clear whynet error (``ValueError`` / ``TypeError`` with a
message, raised from whynet's own code, not from inside torch) or returns finite values equal
at every batch size; never a hook left, never a changed model. Recipes come from the contract
suite. ``max_examples`` is small: the suite stays fast.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.test_contract import (  # noqa: E402
    NAMES,
    assert_same,
    assert_untouched,
    fresh_model,
    ready,
    snapshot,
)
from whynet.core import Explanation  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FUZZ = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_CACHE: dict[str, Any] = {}


def _explainer(name: str) -> tuple[Any, Any]:
    """One fitted explainer per method for the whole module (fitting is the slow part)."""
    if name not in _CACHE:
        model = fresh_model()
        _CACHE[name] = (ready(name, model), model)
    return _CACHE[name]


def _clear(e: BaseException) -> None:
    """A clear whynet error: ValueError/TypeError with a message, raised by whynet's code."""
    assert isinstance(e, (ValueError, TypeError)), f"raw {type(e).__name__}: {e}"
    assert str(e).strip(), f"{type(e).__name__} without a message"
    last = traceback.extract_tb(e.__traceback__)[-1]
    assert "/whynet/" in last.filename and "site-packages" not in last.filename, (
        f"{type(e).__name__} raised from {last.filename}:{last.lineno}: {e}"
    )


@st.composite
def calls(draw: Any) -> tuple[torch.Tensor, Any, int]:
    n = draw(st.integers(1, 4))
    side = draw(st.sampled_from([16, 12]))  # sizes and channels the model can take: a
    # model that cannot run on the inputs still raises its own torch error (reported)
    channels = 1
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))  # int64: reported
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(n, channels, side, side, generator=g)
    if draw(st.booleans()) and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf")])
        )
    x = (x * 10).long() if dtype is torch.int64 else x.to(dtype)
    target = draw(
        st.one_of(
            st.none(),
            st.just("predicted"),
            st.integers(-2, 4),
            st.lists(st.integers(0, 2), min_size=n, max_size=n),
            st.just(1.5),
            st.just(torch.zeros(n)),
        )
    )
    return x, target, draw(st.integers(1, 5))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(call=calls())
def test_fuzzed_explain_is_a_clear_error_or_a_finite_batch_independent_result(
    name: str, call: tuple[torch.Tensor, Any, int]
) -> None:
    explainer, model = _explainer(name)
    x, target, batch = call
    before = snapshot(model)
    try:
        explainer.batch_size = 8
        try:
            whole = explainer.explain(x, target=target)
        except Exception as e:
            _clear(e)
            return
        assert torch.isfinite(whole.values.double()).all(), f"{name}: non-finite values"
        explainer.batch_size = batch
        chunked = explainer.explain(x, target=target)
        assert_same(chunked, whole, f"{name}: batch_size {batch} vs 8", rtol=1e-6)
    finally:
        explainer.batch_size = 8
        assert_untouched(model, before, f"after fuzzed {name}")


@FUZZ
@given(
    offset=st.integers(0, 10_000),
    byte=st.integers(1, 255),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_corrupted_explanation_files_fail_clearly(
    tmp_path_factory: Any, offset: int, byte: int, cut: int | None
) -> None:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    e = Explanation(values=torch.rand(4, 8), target=torch.arange(4), method="m", params={"a": 1})
    path = e.save(folder / "e.safetensors")
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= byte
    if cut is not None:
        raw = raw[: cut % len(raw)]
    path.write_bytes(bytes(raw))
    try:
        back = Explanation.load(path)
    except ValueError as err:
        assert "e.safetensors" in str(err)
        return
    # a change the checksum does not cover can only be JSON whitespace-equivalent: same content
    assert torch.equal(back.values, e.values) and back.params == e.params


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("masks", "representer", "clusters")])
@FUZZ
@given(offset=st.integers(0, 10**6), byte=st.integers(1, 255))
def test_corrupted_fitted_files_fail_clearly(
    tmp_path_factory: Any, name: str, offset: int, byte: int
) -> None:
    explainer, model = _explainer(name)
    folder: Path = tmp_path_factory.mktemp("fuzz")
    path = explainer.save(folder / "f.safetensors")
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= byte
    path.write_bytes(bytes(raw))
    try:
        type(explainer).load(path, model)
    except Exception as e:
        _clear(e)
        assert "f.safetensors" in str(e), str(e)
