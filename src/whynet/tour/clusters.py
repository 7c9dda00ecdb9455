"""Tour: activation-clustering surrogates (Liu & Arik, 2020).

Fits a surrogate of the shipped ``fashion-cnn`` on bundled Fashion-MNIST (k-means path on a
training subset when ``fast``; IDEC on more points otherwise), reports per-layer and combined
fidelity on held-out images, draws each layer's concepts (training images nearest each cluster
centre) and similar training images under low- vs high-level layer emphasis, and shows the
concepts of ``sentiment-gru`` as review snippets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from whynet.tour import Figure, Section, Table

TITLE = "Clustering surrogates (Liu & Arik 2020)"
INTRO = (
    "Each chosen layer's activations are embedded (a small autoencoder trained with IDEC, or "
    "PCA on the fast path) and split into 15 clusters; every cluster carries the class "
    "distribution of the training images that fall into it. The surrogate predicts by combining "
    "the clusters an input falls into, p(y|x) = sum_l w_l q_l(x)^T H_l / sum_l w_l. Its "
    "agreement with the network (fidelity) says how much of the decision the clusters capture; "
    "the training images nearest each cluster centre show the concept it stands for, and "
    "weighted distances in the same embeddings retrieve similar training images."
)


def _fashion(section: Section, fast: bool, progress: bool | None) -> None:
    from whynet.clusters import ClusterSurrogate
    from whynet.core import predict_logits
    from whynet.data import fashion_mnist
    from whynet.viz import grid_png
    from whynet.zoo import load_model

    model, info = load_model("fashion-cnn")
    names = info.get("class_names") or [str(i) for i in range(10)]
    short = [n.split("/")[0][:10] for n in names]
    xtr, ytr = fashion_mnist("train").tensors()
    xte, yte = fashion_mnist("test").tensors()
    n_tr, n_te = (4000, 1000) if fast else (20000, 10000)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(xtr), generator=g)[:n_tr].sort().values
    xtr, ytr, xte, yte = xtr[pick], ytr[pick], xte[:n_te], yte[:n_te]
    layers = info["layers"]["blocks"]
    kw: dict[str, Any] = (
        {"algorithm": "kmeans", "restart_selection": "likelihood"}
        if fast
        else {"algorithm": "idec", "pretrain_epochs": 4, "max_iter": 420, "max_fit_points": 10000}
    )
    t0 = time.perf_counter()
    s = ClusterSurrogate(
        model, layers, n_clusters=15, batch_size=256, seed=0, progress=progress, **kw
    ).fit(xtr, ytr)
    fit_s = time.perf_counter() - t0
    rep = s.layer_report(xte, yte)
    pred_all = predict_logits(model, xte).argmax(1)
    rows = [
        [
            name,
            round(r["fidelity"], 3),
            round(r.get("accuracy", float("nan")), 3),
            round(r["purity"], 3) if "purity" in r else "",
        ]
        for name, r in rep.items()
    ]
    section.tables.append(
        Table(
            caption=(
                f"fashion-cnn surrogate ({kw['algorithm']}, 15 clusters per layer, fitted on "
                f"{n_tr} training images in {fit_s:.0f} s): agreement with the network "
                f"(fidelity), accuracy and cluster purity on {n_te} test images; 'combined' "
                "mixes the four layers with weights learned on held-out training images ("
                + ", ".join(f"{w:.2f}" for w in s.layer_weights_.tolist())
                + "); with equal weights it is "
                f"{float((s.predict(xte, [1.0] * len(layers)) == pred_all).float().mean()):.3f}"
            ),
            columns=["layer", "fidelity", "accuracy", "purity"],
            rows=rows,
        )
    )
    section.metrics["fashion"] = {
        "algorithm": kw["algorithm"],
        "n_train": n_tr,
        "n_test": n_te,
        "fit_s": fit_s,
        "report": rep,
        "layer_weights": s.layer_weights_.tolist(),
    }

    # concepts: for each layer, the 6 largest clusters x 6 images nearest their centre
    for layer in layers:
        idx = s.concepts(layer, k=6)
        sizes = torch.bincount(s.train_assignments_[layer], minlength=s.n_clusters)
        post = s.posteriors_[layer]
        images, titles = [], []
        for c in sizes.argsort(descending=True)[:6].tolist():
            top = int(post[c].argmax())
            for j, i in enumerate(idx[c].tolist()):
                images.append(xtr[i, 0].numpy())
                titles.append(f"c{c} {short[top]} {float(post[c, top]):.2f}" if j == 0 else "")
        section.figures.append(
            Figure(
                caption=(
                    f"Concepts of {layer}: each row is one of the 6 largest clusters, the six "
                    "training images nearest its centre; title = cluster, its majority class "
                    "(by the network's prediction) and that class's share"
                ),
                png=grid_png(images, ncol=6, titles=titles, size=1.0),
            )
        )

    # similar training images: low- vs high-level emphasis
    queries = [int(i) for i in torch.arange(3)]
    pred_te = predict_logits(model, xte[:200]).argmax(1)
    agreement = []
    images, titles = [], []
    for label, w in (("low [2,1,0,0]", [2, 1, 0, 0]), ("high [0,0,1,2]", [0, 0, 1, 2])):
        idx, _ = s.similar(xte[:200], k=10, layer_weights=w)
        agree = float((ytr[idx] == yte[:200, None]).float().mean())
        agree_model = float((s.train_targets_[idx] == pred_te[:, None]).float().mean())
        agreement.append([label, round(agree, 3), round(agree_model, 3)])
        for q in queries:
            images.append(xte[q, 0].numpy())
            titles.append(f"query ({label.split()[0]})")
            for i in idx[q, :5].tolist():
                images.append(xtr[i, 0].numpy())
                titles.append(short[int(ytr[i])])
    section.figures.append(
        Figure(
            caption=(
                "Similar training images (5 nearest) for three test images, by weighted "
                "per-layer embedding distance: low-level emphasis (first three rows) matches "
                "shape and texture, high-level emphasis (last three) matches the class"
            ),
            png=grid_png(images, ncol=6, titles=titles, size=1.0),
        )
    )
    section.tables.append(
        Table(
            caption=(
                "Top-10 similar training images of 200 test images: share with the query's "
                "label, and with the network's class of the query"
            ),
            columns=["layer weights", "label agreement", "model-class agreement"],
            rows=agreement,
        )
    )
    section.metrics["similar"] = {r[0]: {"label": r[1], "model_class": r[2]} for r in agreement}


def _sentiment(section: Section, fast: bool, progress: bool | None) -> None:
    from whynet.clusters import ClusterSurrogate
    from whynet.data.text import rotten_tomatoes
    from whynet.zoo import load_model

    model, info = load_model("sentiment-gru")
    tr = rotten_tomatoes("train", vocab=info["vocab"])
    te = rotten_tomatoes("test", vocab=info["vocab"])
    n = 3000 if fast else len(tr)
    xtr, ytr = tr.x[:n], tr.y[:n]
    s = ClusterSurrogate(
        model, ["embedding", "gru"], n_clusters=15, algorithm="kmeans", seed=0, progress=progress
    ).fit(xtr, ytr)
    rep = s.layer_report(te.x[:1000], te.y[:1000])
    section.tables.append(
        Table(
            caption=(
                f"sentiment-gru surrogate (k-means path, 15 clusters; token activations "
                f"mean-pooled over the review's words; fitted on {n} reviews): fidelity and "
                "accuracy on 1000 test reviews"
            ),
            columns=["layer", "fidelity", "accuracy"],
            rows=[
                [k, round(r["fidelity"], 3), round(r.get("accuracy", float("nan")), 3)]
                for k, r in rep.items()
            ],
        )
    )
    post = s.posteriors_["gru"]
    idx = s.concepts("gru", k=2)
    order = post[:, 1].argsort().tolist()
    rows = []
    for c in order[:3] + order[-3:]:
        for i in idx[c].tolist():
            rows.append([f"c{c}", round(float(post[c, 1]), 2), tr.texts[i][:110]])
    section.tables.append(
        Table(
            caption=(
                "Concepts of the GRU layer: the two reviews nearest the centre of the three "
                "most 'rotten' and the three most 'fresh' clusters (P(fresh) from the "
                "network's predictions on the cluster's training reviews)"
            ),
            columns=["cluster", "P(fresh)", "review"],
            rows=rows,
        )
    )
    section.metrics["sentiment"] = {"n_train": n, "report": rep}


def run(out: Path, fast: bool = True, progress: bool | None = None) -> Section:
    """Build the clustering-surrogate section of the report (see module docstring)."""
    section = Section(title=TITLE, intro=INTRO)
    t0 = time.perf_counter()
    _fashion(section, fast, progress)
    try:
        _sentiment(section, fast, progress)
    except (FileNotFoundError, ImportError) as e:  # optional data/weights not installed
        section.notes.append(f"sentiment-gru part skipped: {e}")
    section.notes.append(
        "Fast mode fits the k-means path (PCA to 20 dimensions, then k-means; of 20 restarts "
        "the one whose clusters best predict the network on held-out training images) on a "
        "training subset; layer weights are learned on the same held-out images. The paper's "
        "IDEC embedding, measured on the full training set, is in docs/clusters.md and "
        "benchmarks/results/clusters.json."
    )
    section.metrics["seconds"] = time.perf_counter() - t0
    return section
