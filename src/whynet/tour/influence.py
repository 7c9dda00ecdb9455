"""Tour: influence-directed explanations (Leino et al., ITC 2018) on shipped models and data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from whynet.core import Comparative, predict_logits
from whynet.influence import InternalInfluence, essence, top_neurons, visualize_neuron
from whynet.tour import Figure, Section, Table

LAYER = "features.block3"
EFF_LAYER = "_blocks.15"


def _fashion(fast: bool) -> tuple[Any, ...]:
    from whynet.data import fashion_mnist
    from whynet.zoo import load_model

    model, _ = load_model("fashion-cnn")
    tr, te = fashion_mnist("train"), fashion_mnist("test")
    xtr, ytr = tr.tensors()
    xte, yte = te.tensors()
    n_tr, n_te = (2000, 500) if fast else (20000, 10000)
    return model.eval(), xtr[:n_tr], ytr[:n_tr], xte[:n_te], yte[:n_te], list(tr.class_names or [])


def _neuron_grid(
    model: Any,
    layer: str,
    channels: list[int],
    x: torch.Tensor,
    titles: list[str],
    progress: bool | None,
) -> bytes:
    from whynet.viz import grid_png, to_rgb

    images, names = [], []
    for c in channels:
        _, masked = visualize_neuron(
            model, layer, c, x, blur=1.0, percentile=0.8, progress=progress
        )
        for i, m in enumerate(masked):
            images.append(to_rgb(m, lo=float(x.min()), hi=float(x.max())))
            names.append(f"ch {c} | {titles[i]}")
    return grid_png(images, ncol=len(x), titles=names)


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    """Class-wide influence, neuron visualisations, comparative channels and the essence of a
    class on fashion-cnn; most influential channels of a late EfficientNet block on photos."""
    t0 = time.perf_counter()
    sec = Section(
        title="Influence-directed explanations",
        intro=(
            "Which internal channels drive a decision, over which inputs? Influence of a "
            "channel = expected gradient of a quantity of interest (a class logit, or the "
            "difference of two logits) w.r.t. the channel's activation, averaged over a "
            "distribution of interest (one input, or all training examples of a class). "
            "Top channels are interpreted by attributing their activation back to the "
            "input (bright pixels: what the channel responds to)."
        ),
    )
    model, xtr, ytr, xte, yte, names = _fashion(fast)

    # 1. class-wide influence: top channels per class (train examples of the class)
    rows, tops = [], {}
    for c in range(10):
        e = InternalInfluence(
            model, LAYER, qoi=c, batch_size=256, progress=progress
        ).explain_dataset(xtr, ytr, cls=c)
        idx, sc = top_neurons(e, 5)
        tops[c] = idx.tolist()
        rows.append(
            [names[c], e.meta["n_examples"], ", ".join(map(str, tops[c])), f"{float(sc[0]):.3f}"]
        )
    sec.tables.append(
        Table(
            caption=(
                f"fashion-cnn, layer {LAYER}: top-5 channels per class by class-wide "
                "influence (QoI = class logit, DoI = the class's images among the first "
                f"{len(xtr)} training images, spatial sum)"
            ),
            columns=["class", "examples", "top channels", "top influence"],
            rows=rows,
        )
    )

    # 2. what the top channels of one class respond to
    cls = 7  # sneaker
    sel = (yte == cls).nonzero().flatten()[:5]
    sec.figures.append(
        Figure(
            caption=(
                f"Top-3 channels for '{names[cls]}' at {LAYER}: each row is one channel, "
                "the image is shown through the channel's attribution mask (gradient x input, "
                "blur 1 px, top 20% of pixels kept, the rest at 20% brightness)"
            ),
            png=_neuron_grid(
                model, LAYER, tops[cls][:3], xte[sel], [names[cls]] * len(sel), progress
            ),
        )
    )

    # 3. comparative: shirt vs T-shirt/top
    a, b = 6, 0
    comp = InternalInfluence(
        model, LAYER, qoi=Comparative(a, b), batch_size=256, progress=progress
    ).explain_dataset(xtr, ytr, cls=[a, b])
    pos, _ = top_neurons(comp, 3)
    neg, _ = top_neurons(-comp.values, 3)
    sec.tables.append(
        Table(
            caption=f"Comparative QoI y[{names[a]}] - y[{names[b]}] over training images of both",
            columns=["direction", "top channels"],
            rows=[
                [f"towards {names[a]}", ", ".join(map(str, pos.tolist()))],
                [f"towards {names[b]}", ", ".join(map(str, neg.tolist()))],
            ],
        )
    )
    both = torch.cat([(yte == a).nonzero().flatten()[:3], (yte == b).nonzero().flatten()[:3]])
    sec.figures.append(
        Figure(
            caption=(
                f"Channel {int(pos[0])} (most {names[a]}-vs-{names[b]} influence) and channel "
                f"{int(neg[0])} (the other way) on three images of each class"
            ),
            png=_neuron_grid(
                model,
                LAYER,
                [int(pos[0]), int(neg[0])],
                xte[both],
                [names[int(yte[i])] for i in both],
                progress,
            ),
        )
    )

    # 4. essence of one class
    r = essence(
        model,
        LAYER,
        cls,
        [1, 3, 5, 10],
        xte,
        yte,
        influence_data=xtr,
        influence_labels=ytr,
        random_draws=1 if fast else 5,
        seed=0,
        batch_size=500,
        progress=progress,
    )
    sec.tables.append(
        Table(
            caption=(
                f"Essence of '{names[cls]}': keep only the top-k channels of {LAYER} (others "
                f"set to their mean activation), class-vs-rest balanced accuracy on {r.n_eval} "
                "test images"
            ),
            columns=["k", "top-k", "random-k (mean)", "full model"],
            rows=[
                [
                    row["k"],
                    f"{row['reduced_bacc']:.3f}",
                    f"{row['random_bacc']:.3f}",
                    f"{row['full_bacc']:.3f}",
                ]
                for row in r.rows
            ],
        )
    )
    sec.metrics["essence_sneaker"] = r.rows
    sec.metrics["top_channels_per_class"] = {names[c]: tops[c] for c in tops}

    # 5. EfficientNet-Lite0 on the bundled photos
    try:
        _effnet(sec, progress)
    except (ImportError, FileNotFoundError) as e:
        sec.notes.append(f"EfficientNet-Lite0 part skipped: {e}")
    sec.notes.append(f"tour ran in {time.perf_counter() - t0:.1f} s")
    return sec


def _effnet(sec: Section, progress: bool | None) -> None:
    from whynet.data import photos
    from whynet.viz import grid_png, overlay
    from whynet.zoo import imagenet_classes, imagenet_preprocess, load_model

    model, _ = load_model("efficientnet-lite0")
    model.eval()
    ph = photos()[:2]
    x = imagenet_preprocess([p.image for p in ph])
    pred = predict_logits(model, x).argmax(1)
    classes = imagenet_classes()
    e = InternalInfluence(model, EFF_LAYER, batch_size=8, progress=progress).explain(x)
    idx, _ = top_neurons(e, 3, per_input=True)
    images, titles, rows = [], [], []
    for i, p in enumerate(ph):
        rows.append([p.name, classes[int(pred[i])], ", ".join(map(str, idx[i].tolist()))])
        for c in idx[i].tolist():
            heat, _ = visualize_neuron(
                model, EFF_LAYER, c, x[i : i + 1], blur=8.0, percentile=0.8, progress=progress
            )
            images.append(overlay(x[i], heat[0], alpha=0.5))
            titles.append(f"{p.name}: ch {c}")
    sec.tables.append(
        Table(
            caption=(
                f"EfficientNet-Lite0, layer {EFF_LAYER}: most influential channels for the "
                "predicted class (point influence, spatial sum)"
            ),
            columns=["photo", "predicted", "top channels"],
            rows=rows,
        )
    )
    sec.figures.append(
        Figure(
            caption=(
                "What those channels respond to: each channel's activation attributed to the "
                "photo (gradient x input, blurred, positive part)"
            ),
            png=grid_png(images, ncol=3, titles=titles, size=2.2),
        )
    )
