"""Tour: explanatory masks from trained explainer networks (Phillips, Goh & Hodas, 2019).

Uses the shipped explainers (``whynet/zoo/weights/masks``) and zoo models with bundled data only:
canvas images (masks over the item, pointing game on held-out images), movie reviews (token
masks as highlighted text), molecules (character masks drawn on atoms; the TPSA ground truth).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whynet.tour import Figure, Section, Table

TITLE = "Explanatory masks (Phillips, Goh & Hodas 2019)"
INTRO = (
    "A small explainer network is trained once to output, for any input, a mask in [0, 1] that "
    "is as small as possible while the frozen model still makes the same prediction on the "
    "masked input (pixels blended into a blurred copy; token embeddings scaled). Explaining a "
    "new input is then one forward pass of the explainer."
)


def _record(name: str) -> dict[str, Any]:
    from whynet.zoo.masks_pretrained import pretrained_info

    return pretrained_info(name)


def _canvas(section: Section, fast: bool) -> None:
    from whynet.data.canvas import canvas
    from whynet.metrics import pointing_game
    from whynet.viz import grid_png, overlay
    from whynet.zoo.masks_pretrained import load_pretrained

    me, model, info = load_pretrained("canvas-cnn")
    n = 64 if fast else 256
    ds = canvas("test", n=1000 + n)
    x, y = ds.tensors()
    x, y, boxes = x[1000:], y[1000:], ds.boxes[1000:]
    t0 = time.perf_counter()
    masks = me.explain(x).values
    per_image = (time.perf_counter() - t0) / n
    from whynet.core import predict_logits

    pred = predict_logits(model, x).argmax(1)
    hits = pointing_game(masks, boxes)
    names = info.get("class_names") or [str(i) for i in range(10)]
    k = 8
    images = [x[i, 0].numpy() for i in range(k)] + [
        overlay(x[i, 0].numpy(), masks[i].numpy()) for i in range(k)
    ]
    titles = [f"{names[int(pred[i])]}" for i in range(k)] + [
        f"mask {float(masks[i].mean()):.2f} {'hit' if hits[i] else 'miss'}" for i in range(k)
    ]
    section.figures.append(
        Figure(
            caption=(
                "canvas-cnn on held-out canvas images: input with the predicted class (top) and "
                "the explainer's mask over it (bottom, red = kept; 'hit' = the mask's maximum "
                "lies in the item's exact box). At the shipped sparsity the mask keeps most of "
                "the image and mainly removes the clutter fragments and the empty border."
            ),
            png=grid_png(images, ncol=k, titles=titles),
        )
    )
    section.metrics["canvas_pointing_game"] = float(hits.mean())
    section.metrics["canvas_mask_mean_size"] = float(masks.mean())
    section.metrics["canvas_seconds_per_image"] = per_image
    section.notes.append(
        f"Pointing game over {n} held-out canvas images: {float(hits.mean()):.3f}; mean mask "
        f"size {float(masks.mean()):.3f}; {per_image * 1e3:.2f} ms per image to explain "
        f"(model accuracy on them {float((pred == y).double().mean()):.3f})."
    )


def _sentiment(section: Section, fast: bool) -> None:
    from whynet.data.text import rotten_tomatoes
    from whynet.viz import highlight_text
    from whynet.zoo.masks_pretrained import load_pretrained

    me, model, info = load_pretrained("sentiment-gru")
    ds = rotten_tomatoes("test", vocab=info["vocab"])
    ids = ds.x[:200]
    lengths = (ids != 0).sum(1)
    ok = (lengths > 3) & (lengths <= min(me.max_length_, 30))
    rows = ok.nonzero()[:, 0][:6]
    masks = me.explain(ids[rows]).values
    from whynet.core import predict_logits

    pred = predict_logits(model, ids[rows]).argmax(1)
    names = info.get("class_names") or ["rotten", "fresh"]
    parts = []
    for j, i in enumerate(rows.tolist()):
        toks = ds.tokens[i][: int(lengths[i])]
        parts.append(
            f"<p><b>{names[int(pred[j])]}</b>: {highlight_text(toks, masks[j, : len(toks)])}</p>"
        )
    section.figures.append(
        Figure(
            caption=(
                "sentiment-gru on held-out reviews: the predicted class and the token mask "
                "(orange = kept; the model still predicts the same class from the kept "
                "tokens' embeddings)."
            ),
            html="\n".join(parts),
        )
    )


def _molecules(section: Section, fast: bool) -> None:
    from whynet.data.molecules import atom_token_mask, nci_molecules, solubility
    from whynet.viz import molecule_svg
    from whynet.zoo.masks_pretrained import load_pretrained

    me, model, _ = load_pretrained("solubility-smiles")
    ds = solubility("test")
    lengths = (ds.x != 0).sum(1)
    shown = 0
    for i in range(len(ds)):
        if shown == 3:
            break
        smi = ds.smiles[i]
        # molecules with heteroatoms make the more telling pictures
        if not 15 <= len(smi) <= min(me.max_length_, 45) or not any(c in smi for c in "NOno"):
            continue
        m = me.explain(ds.x[i : i + 1, : int(lengths[i])]).values[0]
        mt = atom_token_mask(smi).numpy().astype(np.float64)
        atoms = (mt / mt.sum(1, keepdims=True)) @ m[: len(smi)].double().numpy()
        try:
            svg = molecule_svg(smi, atoms.tolist())
        except ValueError:
            continue
        with torch.no_grad():
            logs = float(model(ds.x[i : i + 1]).reshape(-1)[0])
        section.figures.append(
            Figure(
                caption=(
                    f"solubility-smiles: {smi} (predicted logS {logs:.2f}, measured "
                    f"{float(ds.y[i]):.2f}); character mask averaged per atom, red = kept."
                ),
                svg=svg,
            )
        )
        shown += 1

    # ground truth: TPSA is a sum of per-atom contributions (RDKit); rank atoms by the mask
    me, model, _ = load_pretrained("tpsa-smiles")
    nci = nci_molecules("test")
    n = 150 if fast else len(nci)
    aucs = []
    for i in range(n):
        smi = nci.smiles[i]
        if len(smi) > me.max_length_:
            continue
        contrib = np.asarray(nci.atom_contribs[i])  # type: ignore[attr-defined]
        label = contrib > 0
        if label.all() or not label.any():
            continue
        mv = me.explain(nci.x[i : i + 1, : len(smi)]).values[0].double().numpy()
        mt = atom_token_mask(smi).numpy().astype(np.float64)
        score = (mt / mt.sum(1, keepdims=True)) @ mv[: len(smi)]
        pos, neg = score[label], score[~label]
        aucs.append(
            float(
                ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                / (len(pos) * len(neg))
            )
        )
    auc = float(np.mean(aucs)) if aucs else float("nan")
    section.metrics["tpsa_atom_auc"] = auc
    section.notes.append(
        f"Ground truth on {len(aucs)} held-out NCI molecules: ROC AUC of the tpsa-smiles mask "
        f"(per atom) for the atoms that carry TPSA = {auc:.3f} (0.5 = chance). RDKit's TPSA "
        "counts N and O atoms only, so this checks that the mask finds them, not that it "
        "discovers anything subtle."
    )


def _table(section: Section) -> None:
    rows = []
    sweeps = []
    for name in ("canvas-cnn", "fashion-cnn", "sentiment-gru", "solubility-smiles", "tpsa-smiles"):
        try:
            rec = _record(name)
        except FileNotFoundError:
            continue
        rows.append(
            [
                name,
                rec["sparsity"],
                rec["val_mask_size"],
                rec["val_fidelity"],
                rec["n_train"],
                rec["epochs_run"],
                rec["training_time_s"],
            ]
        )
        for r in rec.get("sweep", []):
            sweeps.append([name, r["sparsity"], r["val_mask_size"], r["val_fidelity"]])
    section.tables.append(
        Table(
            caption=(
                "Shipped explainers: validation mask size and fidelity (classification: "
                "agreement with the unmasked prediction; regression: 1 - MSE/variance against "
                "the unmasked output), measured when they were trained."
            ),
            columns=["model", "sparsity", "mask size", "fidelity", "train n", "epochs", "train s"],
            rows=rows,
        )
    )
    if sweeps:
        section.tables.append(
            Table(
                caption="Sparsity sweep (validation): mask size falls, fidelity follows.",
                columns=["model", "sparsity", "mask size", "fidelity"],
                rows=sweeps,
            )
        )


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    """Build the masks section of the report from shipped explainers and bundled data."""
    section = Section(title=TITLE, intro=INTRO)
    _table(section)
    for part in (_canvas, _sentiment, _molecules):
        try:
            part(section, fast)
        except FileNotFoundError as e:  # a model or explainer is not shipped
            section.notes.append(f"skipped {part.__name__.strip('_')}: {e}")
    return section
