"""Shared fixtures: tiny hermetic models, seeded, and a check that no hooks were left behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn


def hook_count(model: nn.Module) -> int:
    """Number of forward/backward/pre hooks on every module of ``model``."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


class TinyCNN(nn.Module):
    """conv -> in-place ReLU -> conv -> ReLU -> GAP -> head; 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for modules of tiny ops: on a shared, loaded 2-core machine OpenMP
    spin contention made them 5-50x slower. Use with ``pytest.mark.usefixtures("one_thread")``;
    the previous setting is restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster (2 CPUs) for the whole test run: starting one costs ~10 s, so every
    Ray test module shares it (whynet.scale's Ray engine joins an initialised Ray). Skips where
    Ray is not installed."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.Softplus(), nn.Linear(4, 3))
        .double()
        .eval()
    )
