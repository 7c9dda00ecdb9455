"""Tour: representer points (Yeh, Kim, Yen & Ravikumar, NeurIPS 2018) on the zoo's fashion-cnn.

Fits the representer decomposition over Fashion-MNIST training images, checks that it
reproduces the model (Pearson r of softmax outputs), shows the most excitatory and inhibitory
training images for test images, and ranks deliberately flipped labels by global importance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from whynet.tour import Figure, Section, Table

TITLE = "Representer points (Yeh et al. 2018)"
INTRO = (
    "Which training images does a prediction rest on? After fine-tuning the last linear layer "
    "with an L2 penalty, each logit is exactly a sum over training points, alpha_i times the "
    "similarity of their penultimate features to the test image's. Positive terms are "
    "excitatory training images (they push towards the class), negative ones inhibitory. "
    "|alpha_i| for a point's own label flags suspicious labels."
)


def _images(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from whynet.data import fashion_mnist

    ds = fashion_mnist(split)
    idx = np.random.default_rng(seed).permutation(len(ds.labels))[:n]
    x = torch.from_numpy(np.asarray(ds.images)[idx]).float().div(255.0).unsqueeze(1)
    return x, torch.as_tensor(np.asarray(ds.labels)[idx]).long(), list(ds.class_names or [])


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    """Build the section; ``fast`` fits on 5,000 training images with L-BFGS.

    Measured with the zoo fashion-cnn on the shared 2-core machine: 9.3 s near idle (load ~1),
    194 s at load ~13.
    """
    from whynet.representer import RepresenterPoints, augment
    from whynet.viz import grid_png

    section = Section(TITLE, INTRO)
    try:
        from whynet.zoo import load_model

        model, _ = load_model("fashion-cnn")
    except Exception as e:  # the tour only uses shipped weights
        section.notes.append(
            f"fashion-cnn weights are not available ({type(e).__name__}); section skipped."
        )
        return section
    n_train = 5000 if fast else 60000
    # fast: L-BFGS on the same objective (same minimiser, far fewer steps); full: authors' GD
    solver = "lbfgs" if fast else "gd"
    xtr, ytr, names = _images("train", n_train, seed=0)
    xte, yte, _ = _images("test", 1000, seed=1)

    t = time.perf_counter()
    rp = RepresenterPoints(
        model, head="head", batch_size=500, solver=solver, progress=progress
    ).fit(xtr, ytr)
    fit_s = time.perf_counter() - t
    # fidelity: the decomposition for every test point at once, sum_i alpha_i [f_i, 1]
    w_repr = rp.alpha_.T @ augment(rp.features_, torch.float64)
    f_te, out_te = rp._forward(xte)
    p_model = torch.softmax(out_te.double(), 1)
    p_dec = torch.softmax(augment(f_te, torch.float64) @ w_repr.T, 1)
    r = float(np.corrcoef(p_model.flatten().numpy(), p_dec.flatten().numpy())[0, 1])
    section.metrics.update(
        {
            "n_train": n_train,
            "solver": solver,
            "fit_s": round(fit_s, 2),
            "n_iter": rp.n_iter_,
            "converged": rp.converged_,
            "pearson_test_softmax": round(r, 5),
        }
    )

    # top excitatory / inhibitory training images for a few test images
    k, picks = 4, [0, 1, 2, 3, 5, 8]
    top = rp.top(xte[picks], k=k)
    preds = p_model.argmax(1)
    images, titles = [], []
    for row, i in enumerate(picks):
        images.append(xte[i, 0])
        titles.append(f"test: {names[int(preds[i])]}")
        for idx, val in zip(
            top.excitatory[row].tolist(), top.excitatory_values[row].tolist(), strict=True
        ):
            images.append(xtr[idx, 0])
            titles.append(f"+{val:.3f} {names[int(ytr[idx])]}")
        for idx, val in zip(
            top.inhibitory[row].tolist(), top.inhibitory_values[row].tolist(), strict=True
        ):
            images.append(xtr[idx, 0])
            titles.append(f"{val:.3f} {names[int(ytr[idx])]}")
    section.figures.append(
        Figure(
            caption=(
                f"Each row: a test image (predicted class), its {k} most excitatory training "
                f"images (positive representer values, with their labels), then its {k} most "
                "inhibitory ones (negative values)."
            ),
            png=grid_png(images, ncol=1 + 2 * k, titles=titles),
        )
    )

    # dataset debugging: flip 10% of the labels, rank by |alpha_{i, y_i}|
    from whynet.data.noise import with_noisy_labels

    noisy = with_noisy_labels(ytr, 0.1, seed=3, num_classes=10)
    # same images, so reuse the extracted head inputs instead of a second forward pass
    rl = RepresenterPoints(
        model, head="head", targets="labels", batch_size=500, solver=solver, progress=progress
    ).fit_features(rp.features_, labels=noisy.labels)
    order = rl.mislabel_ranking()
    flipped = noisy.flipped.bool()
    rows = []
    for frac in (0.05, 0.1, 0.2, 0.3):
        found = float(flipped[order[: int(frac * n_train)]].sum() / flipped.sum())
        rows.append([f"{frac:.0%}", f"{found:.3f}", f"{frac:.3f}"])
    section.tables.append(
        Table(
            caption=(
                "10% of the training labels flipped (the model itself was trained on clean "
                "labels); fraction of flipped labels found after checking the training points "
                "with the largest |alpha_{i, y_i}| first, versus random checking."
            ),
            columns=["checked", "flipped found (representer)", "expected at random"],
            rows=rows,
        )
    )
    section.metrics["flipped_found_at_10pct"] = float(rows[1][1])
    section.notes.append(
        f"Fit on {n_train} training images ({solver}): {fit_s:.1f} s, {rp.n_iter_} steps "
        f"(converged: {rp.converged_}); Pearson r between the model's softmax and the "
        f"decomposition's on 1,000 test images: {r:.4f} (paper: 0.9964 on CIFAR-10 test)."
    )
    return section
