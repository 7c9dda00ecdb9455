"""Faithfulness metrics at their floor (issue 17): deletion / insertion curves against the least
work they need, in one process.

A deletion (insertion) curve of B images with ``steps`` steps must score B x (steps + 1)
perturbed images: the floor is the model's no-grad forward passes over exactly those images,
already built, in batches of the same size. whynet also builds each perturbed image (rank the
saliency once, compare ranks with the step's pixel count, blend with the baseline) and, for
insertion, blurs the baseline once per image. Ratios from one run, medians over ``--repeats``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_metrics.py [--n 32] [--steps 32] [--repeats 3]

Writes ``benchmarks/results/metrics_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from whynet.core import blend, reference
from whynet.metrics import deletion_curve, insertion_curve
from whynet.metrics.faithfulness import pixel_counts, saliency_ranks

ROOT = Path(__file__).resolve().parents[1]


def floor_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    sal: torch.Tensor,
    steps: int,
    baseline: Any,
    mode: str,
    batch: int,
    classes: torch.Tensor,
) -> tuple[torch.Tensor, float]:
    """The perturbed images built beforehand (not timed), then only the forward passes (timed):
    returns the softmax scores and the seconds of the passes."""
    b, _, h, w = x.shape
    base = reference(x, baseline, 3.0, name="baseline")
    ranks = saliency_ranks(sal)
    counts = pixel_counts(h * w, steps)
    changed = (ranks[:, None] < counts.view(1, -1, 1, 1)).to(x.dtype)  # (B, S+1, H, W)
    keep = 1 - changed if mode == "deletion" else changed
    imgs = torch.stack(
        [
            blend(x[i : i + 1].expand(steps + 1, -1, -1, -1), keep[i][:, None], base[i : i + 1])
            for i in range(b)
        ]
    )
    imgs = imgs.reshape(b * (steps + 1), *x.shape[1:])
    rows = classes.repeat_interleave(steps + 1)
    out = torch.empty(len(imgs), dtype=torch.float64)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(imgs), batch):
            p = model(imgs[s : s + batch]).softmax(-1)
            out[s : s + batch] = p.gather(1, rows[s : s + batch, None])[:, 0].double()
    return out.view(b, steps + 1), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from whynet.data.canvas import canvas
    from whynet.zoo import load_model

    model, _ = load_model("canvas-cnn")
    model.eval()
    x, _ = canvas("test", n=1000 + args.n).tensors()
    x = x[1000:]
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(x.shape[0], x.shape[-2], x.shape[-1], generator=g)
    with torch.no_grad():
        classes = model(x).argmax(-1)
    out: dict[str, Any] = {
        "n": args.n,
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
    }
    for mode, baseline, fn in (
        ("deletion", "zero", deletion_curve),
        ("insertion", "blur", insertion_curve),
    ):
        ours, floor = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            curve = fn(
                model,
                x,
                sal,
                classes,
                baseline=baseline,
                blur_sigma=3.0,
                steps=args.steps,
                batch_size=args.batch,
            )
            ours.append(time.perf_counter() - t0)
            ref, t = floor_curve(model, x, sal, args.steps, baseline, mode, args.batch, classes)
            floor.append(t)
        out[mode] = {
            "whynet_s": round(statistics.median(ours), 4),
            "floor_forward_s": round(statistics.median(floor), 4),
            "ratio": round(statistics.median(ours) / statistics.median(floor), 3),
            "max_abs_diff_vs_floor": float((curve - ref).abs().max()),
        }
        print(mode, out[mode])
    dest = ROOT / "benchmarks" / "results" / "metrics_floor.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
