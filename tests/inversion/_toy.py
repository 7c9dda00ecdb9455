"""A two-object toy task trained in about a second: class 0 = horizontal bar, class 1 = vertical
bar, placed at random on a noisy 16x16 canvas."""

from __future__ import annotations

import torch
from torch import nn

SIZE = 16


def bar(img: torch.Tensor, cls: int, r: int, c: int) -> tuple[int, int, int, int]:
    """Draw a 2x6 (class 0) or 6x2 (class 1) bar at (r, c); return its box (x0, y0, x1, y1)."""
    h, w = (2, 6) if cls == 0 else (6, 2)
    img[..., r : r + h, c : c + w] = 1.0
    return c, r, c + w, r + h


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = 0.1 * torch.rand(n, 1, SIZE, SIZE, generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, SIZE - 6, (2,), generator=gen))
        bar(x[i], int(y[i]), r, c)
    return x, y


def toy_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def trained_toy(seed: int = 0, steps: int = 150) -> nn.Sequential:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = toy_model()
    x, y = make_data(512, gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for t in range(steps):
        i = torch.arange(t * 32, t * 32 + 32) % len(x)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def two_object_image() -> tuple[torch.Tensor, dict[int, tuple[int, int, int, int]]]:
    """One image with a horizontal bar (class 0) top-left and a vertical bar (class 1)
    bottom-right; returns the image (1, 1, 16, 16) and each class's box."""
    gen = torch.Generator().manual_seed(123)
    x = 0.1 * torch.rand(1, 1, SIZE, SIZE, generator=gen)
    boxes = {0: bar(x[0], 0, 2, 1), 1: bar(x[0], 1, 8, 11)}
    return x, boxes
