"""Tour: Grad-CAM on a CNN and on a vision transformer, side by side (issue 15).

Shipped weights and bundled data only: ``canvas-cnn`` (whynet's CNN) and ``canvas-vit`` (an HF
``ViTForImageClassification`` trained here) on the same canvas test images with exact item
boxes. The ViT's block outputs are ``(B, 1 + 8*8, 96)`` tokens: Grad-CAM lays the 64 patch
tokens on their 8x8 grid (CLS dropped), as pytorch-grad-cam's ``reshape_transform``.
"""

from __future__ import annotations

import time
from pathlib import Path

from whynet.tour import Figure, Section, Table

TITLE = "Grad-CAM on a CNN and on a vision transformer (Selvaraju et al. 2017)"
INTRO = (
    "Which region carries the evidence, from one gradient at a late layer? Grad-CAM weights a "
    "layer's feature maps by their average gradient for the class. A vision transformer has no "
    "feature maps, only tokens: whynet lays the patch tokens of a block on their image grid, so "
    "the same method explains a transformer and a CNN on the same images, measured against the "
    "items' exact boxes."
)

# the ViT: the block before the last (the last block's patch tokens never reach the CLS head)
MODELS = (("canvas-cnn", "features.block4"), ("canvas-vit", "vit.layers.2"))


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    from whynet.data.canvas import canvas
    from whynet.gradcam import GradCAM
    from whynet.metrics import localisation_error, pointing_game
    from whynet.viz import grid_png, overlay
    from whynet.zoo import load_model

    section = Section(title=TITLE, intro=INTRO)
    n = 32 if fast else 256
    ds = canvas("test", n=n)
    x, y = ds.tensors()
    k = 8
    imgs = [x[i, 0].numpy() for i in range(k)]
    titles = [f"#{i}" for i in range(k)]
    rows = []
    for name, layer in MODELS:
        model, info = load_model(name)
        t0 = time.perf_counter()
        e = GradCAM(model, layer, batch_size=32, progress=progress).explain(x, y)
        took = (time.perf_counter() - t0) / n
        hits = pointing_game(e.values, ds.boxes)
        err = localisation_error(e.values, ds.boxes)
        acc = float(info["metrics"].get("test_accuracy", float("nan")))
        rows.append(
            [
                name,
                layer,
                f"{tuple(e.extras['cam'].shape[1:])}",
                f"{acc:.3f}",
                f"{float(hits.mean()):.3f}",
                f"{float(err.mean()):.3f}",
                f"{took * 1000:.1f}",
            ]
        )
        imgs += [overlay(x[i, 0].numpy(), e.values[i].numpy()) for i in range(k)]
        titles += [f"{name} {'hit' if hits[i] else 'miss'}" for i in range(k)]
        section.metrics[name] = {
            "pointing_game": float(hits.mean()),
            "loc_error": float(err.mean()),
            "test_accuracy": acc,
        }
    section.figures.append(
        Figure(
            caption=(
                "Canvas test images (top); Grad-CAM of the true class on canvas-cnn's last block "
                "(middle) and on canvas-vit's third of four blocks, patch tokens on their 8x8 grid "
                "(bottom). 'hit': the map's maximum lies in the item's exact box."
            ),
            png=grid_png(imgs, ncol=k, titles=titles),
        )
    )
    section.tables.append(
        Table(
            caption=(
                f"Grad-CAM of the true class on {n} canvas test images. Pointing game: higher is "
                "better; localisation error (box of the largest component >= 0.5 x max, IoU < "
                "0.5): lower. canvas-vit is far less accurate than canvas-cnn (trained here on "
                "2 shared CPU cores; docs/zoo_hf.md), so its maps are weaker evidence."
            ),
            columns=[
                "model",
                "layer",
                "map",
                "test accuracy",
                "pointing game",
                "loc. error @0.5",
                "ms / image",
            ],
            rows=rows,
        )
    )
    return section
