"""Threads (issue 16, defect class 2): explaining one model from two threads gives the
sequential results and leaves the model as it was (``frozen_eval`` holds a per-model lock)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from tests.test_contract import NAMES, assert_same, assert_untouched, fresh_model, inputs, ready
from tests.test_contract import snapshot as snap
from whynet.core.model import frozen_eval

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", NAMES)
def test_two_threads_explaining_one_model_give_sequential_results(name: str) -> None:
    model = fresh_model()
    explainer = ready(name, model)
    x = inputs(4)
    before = snap(model)
    expected = explainer.explain(x)
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work() -> None:
        start.wait()
        for _ in range(6):
            try:
                results.append(explainer.explain(x))
            except BaseException as e:  # collected: a thread's exception is otherwise lost
                errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert len(results) == 12
    for r in results:
        assert_same(r, expected, f"{name} from two threads")
    assert_untouched(model, before, f"after {name} from two threads")


def test_frozen_eval_is_reentrant_and_restores_after_threads() -> None:
    model = fresh_model()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with frozen_eval(model), frozen_eval(model):  # nested on one thread: no deadlock
        assert not model.training
    seen: list[bool] = []

    def inside() -> None:
        with frozen_eval(model):
            seen.append(any(p.requires_grad for p in model.parameters()) or model.training)

    threads = [threading.Thread(target=inside) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False] * 8  # every block saw the frozen model, none a half-restored one
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.is_grad_enabled()
