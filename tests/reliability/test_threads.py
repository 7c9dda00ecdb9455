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


def test_frozen_eval_of_a_submodule_and_its_parent_from_two_threads_do_not_interleave() -> None:
    """An explainer of ``model`` and one of ``model.features`` share modules: the submodule's
    block must not restore train mode / ``requires_grad`` under the parent's running block."""
    import time

    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout()))
    model.train()
    child_in, seen = threading.Event(), []

    def child() -> None:
        with frozen_eval(model[0]):
            child_in.set()
            time.sleep(0.2)

    def parent() -> None:
        child_in.wait()
        with frozen_eval(model):
            for _ in range(20):
                seen.append(any(m.training for m in model.modules()))
                seen.append(any(p.requires_grad for p in model.parameters()))
                time.sleep(0.02)

    threads = [threading.Thread(target=child), threading.Thread(target=parent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen and not any(seen)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
