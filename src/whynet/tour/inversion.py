"""Tour: guided feature inversion (Du, Liu, Song & Hu, KDD 2018).

Uses shipped weights and bundled data only: canvas-cnn on canvas test images (exact item boxes:
pointing game, localisation error, deletion/insertion AUC, against whynet's Grad-CAM and a
centre baseline) and EfficientNet-Lite0 on bundled photos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from whynet.tour import Figure, Section, Table

TITLE = "Guided feature inversion (Du et al. 2018)"
INTRO = (
    "Which input region carries the evidence for a class? Guided feature inversion builds a mask "
    "from the channels of a late convolutional layer (a non-negative weight per channel, "
    "computed on the image itself). Stage 1 picks the channels whose mask keeps the image's "
    "deep features when everything else is blurred: all foreground evidence, whatever the "
    "class. Stage 2 refines the weights so that the masked image keeps the class's "
    "probability while the image with the mask blurred out loses it."
)


def _centre(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    r = torch.arange(h, dtype=torch.float32)[:, None] - (h - 1) / 2
    c = torch.arange(w, dtype=torch.float32)[None, :] - (w - 1) / 2
    return torch.exp(-(r**2 + c**2) / (2 * (h / 4) ** 2)).expand(len(x), h, w).clone()


def _canvas(section: Section, fast: bool, progress: bool | None) -> None:
    from whynet.data.canvas import canvas
    from whynet.gradcam import GradCAM
    from whynet.inversion import GuidedFeatureInversion
    from whynet.metrics import deletion_auc, insertion_auc, localisation_error, pointing_game
    from whynet.viz import grid_png, overlay
    from whynet.zoo import load_model

    model, info = load_model("canvas-cnn")
    n = 8 if fast else 64
    ds = canvas("test", n=n)
    x, y = ds.tensors()
    boxes = ds.boxes
    # canvas items sit on black: a zero background removes an item where the paper's blur keeps
    # a blurred copy of it; lam = 3 was chosen on validation images (benchmarks, tune part)
    gfi = GuidedFeatureInversion(
        model,
        "pool",
        "features.block4",
        background="zero",
        lam=3.0,
        batch_size=16,
        progress=progress,
    )
    t0 = time.perf_counter()
    e = gfi.explain(x, y)
    per_image = (time.perf_counter() - t0) / n
    maps = {
        "GFI stage 2 (class)": e.values,
        "GFI stage 1 (class-agnostic)": e.extras["stage1_mask"],
        # ablation: the mask GFI starts from (uniform omega: the basis channels' sum), no steps
        "GFI initial mask (no steps)": GuidedFeatureInversion(
            model, "pool", "features.block4", stage1_steps=0, stage2_steps=0
        )
        .explain(x, y)
        .values,
        "Grad-CAM (features.block4)": GradCAM(model, "features.block4", upsample=False)
        .explain(x, y)
        .values,
        "centre baseline": _centre(x),
    }
    names = info.get("class_names") or [str(i) for i in range(10)]
    hits = pointing_game(e.values, boxes)
    k = 8
    imgs = (
        [x[i, 0].numpy() for i in range(k)]
        + [overlay(x[i, 0].numpy(), e.extras["stage1_mask"][i].numpy()) for i in range(k)]
        + [overlay(x[i, 0].numpy(), e.values[i].numpy()) for i in range(k)]
    )
    titles = (
        [names[int(y[i])] for i in range(k)]
        + ["stage 1"] * k
        + [f"stage 2 {'hit' if hits[i] else 'miss'}" for i in range(k)]
    )
    section.figures.append(
        Figure(
            caption=(
                "canvas-cnn on canvas test images: input with its label (top), the "
                "class-agnostic stage-1 mask (middle) and the class-discriminative stage-2 mask "
                "(bottom; 'hit' = the mask's maximum lies in the item's exact box). Canvas "
                "settings: zero background, lambda = 3 (chosen on validation images), otherwise "
                f"the paper's (10 + 70 Adam steps); {per_image:.2f} s per image at batch 16."
            ),
            png=grid_png(imgs, ncol=k, titles=titles),
        )
    )
    rows = []
    metrics: dict[str, Any] = {}
    size = (x.shape[-2], x.shape[-1])  # the Grad-CAM map is 8x8; boxes are image pixels
    for name, s in maps.items():
        row = {
            "pointing game": float(pointing_game(s, boxes, size=size).mean()),
            "loc. error @0.5": float(localisation_error(s, boxes, 0.5, size=size).mean()),
            "deletion AUC": float(deletion_auc(model, x, s, y, baseline="zero", steps=16).mean()),
            "insertion AUC": float(
                insertion_auc(model, x, s, y, baseline="blur", blur_sigma=3.0, steps=16).mean()
            ),
        }
        metrics[name] = row
        rows.append([name] + [f"{v:.3f}" for v in row.values()])
    section.tables.append(
        Table(
            caption=(
                f"Localisation and faithfulness on {n} canvas test images (target = label). "
                "Pointing game: higher is better; localisation error (box of the largest "
                "component >= 0.5 x max, IoU < 0.5): lower; deletion AUC (pixels zeroed in "
                "saliency order): lower; insertion AUC (pixels restored into a blurred copy): "
                "higher. 16 steps. 'GFI initial mask' is an ablation: the mask GFI starts "
                "from, before any step; on 1,000 held-out canvas images it localises better "
                "than both GFI and Grad-CAM (docs/inversion.md has the full comparison)."
            ),
            columns=["method", "pointing game", "loc. error @0.5", "deletion AUC", "insertion AUC"],
            rows=rows,
        )
    )
    section.metrics["canvas"] = {"n_images": n, "s_per_image_gfi": per_image, "methods": metrics}


def _photos(section: Section, fast: bool, progress: bool | None) -> None:
    import torch.nn.functional as F

    from whynet.data.photos import photos
    from whynet.inversion import GuidedFeatureInversion
    from whynet.metrics import deletion_auc, insertion_auc
    from whynet.viz import grid_png, overlay, to_rgb
    from whynet.zoo import imagenet_deprocess, load_model

    model, info = load_model("efficientnet-lite0")
    ph = photos(["coffee"] if fast else ["coffee", "chelsea", "motorcycle", "flower"])
    x = info["preprocess"]([p.image for p in ph])
    s1, s2 = (5, 25) if fast else (10, 70)
    gfi = GuidedFeatureInversion(
        model,
        "_avg_pooling",
        "_bn1",
        basis_transform=F.relu6,
        stage1_steps=s1,
        stage2_steps=s2,
        batch_size=4,
        progress=progress,
    )
    t0 = time.perf_counter()
    e = gfi.explain(x)
    dt = time.perf_counter() - t0
    names = info["class_names"]
    assert e.target is not None
    rgb = [to_rgb(imagenet_deprocess(x[i]).numpy()) for i in range(len(ph))]
    imgs, titles = [], []
    for i in range(len(ph)):
        imgs += [
            rgb[i],
            overlay(rgb[i], e.extras["stage1_mask"][i].numpy()),
            overlay(rgb[i], e.values[i].numpy()),
        ]
        p_kept, p_rem = float(e.extras["prob_kept"][i]), float(e.extras["prob_removed"][i])
        titles += [names[int(e.target[i])], "stage 1", f"stage 2: p {p_kept:.2f} / {p_rem:.2f}"]
    section.figures.append(
        Figure(
            caption=(
                "EfficientNet-Lite0 on bundled photos, predicted class: image, stage-1 mask, "
                "stage-2 mask with the class probability of the masked image / of the image "
                "with the mask blurred out. Basis: the head convolution after ReLU6 (_bn1 + "
                f"ReLU6, 7x7), inversion layer: the global average pool. {s1} + {s2} steps, "
                f"{dt / len(ph):.1f} s per image."
            ),
            png=grid_png(imgs, ncol=3, titles=titles, size=2.2),
        )
    )
    d = deletion_auc(model, x, e.values, e.target, baseline="zero", steps=8, batch_size=16)
    ins = insertion_auc(model, x, e.values, e.target, baseline="blur", steps=8, batch_size=16)
    section.metrics["photos"] = {
        "photos": [p.name for p in ph],
        "s_per_image_gfi": dt / len(ph),
        "deletion_auc": d.tolist(),
        "insertion_auc": ins.tolist(),
        "steps": [s1, s2],
    }
    section.notes.append(
        f"Photos: deletion AUC {float(d.mean()):.3f}, insertion AUC {float(ins.mean()):.3f} "
        "(8 steps; stage-2 masks)."
    )


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    """Build the inversion section of the report (about a minute on 2 cores when ``fast``)."""
    section = Section(title=TITLE, intro=INTRO)
    try:
        _canvas(section, fast, progress)
    except FileNotFoundError as exc:  # canvas-cnn weights not trained/shipped
        section.notes.append(f"canvas-cnn part skipped: {exc}")
    try:
        _photos(section, fast, progress)
    except (FileNotFoundError, ImportError) as exc:
        section.notes.append(f"EfficientNet-Lite0 part skipped: {exc}")
    section.notes.append(
        "Photos: the paper's settings, blurred background (sigma = image side / 16), omega "
        "initialised to 0.1, Adam lr 0.01 (halved every 10 steps in stage 2), gamma = 10, "
        "lambda = 1, delta = 1; omega clamped >= 0 after every step. Images in a batch are "
        "optimised jointly with independent losses (an image's mask is the same alone or in a "
        "batch); on this 2-core CPU batch 16 gave 1.8x-4.3x the images/s of batch 1 "
        "(benchmarks/bench_inversion.py): the convolutions themselves are the cost."
    )
    return section
