"""Issue 15 experiments: whynet's methods on models nobody here wrote.

    .venv/bin/python benchmarks/bench_any_model.py [--only minilm,vit,onet] [--n N]

- ``minilm``: the zoo's ``minilm-sentiment`` (all-MiniLM-L6-v2 + a head trained here) on the
  bundled reviews, called with the tokenizer's ``BatchEncoding``: influence at the last encoder
  block (top hidden units; per-token highlights = |influence| summed over hidden units, padding
  excluded), explanatory masks on the word embeddings (fidelity, mask size, mask on padding),
  representer points (decomposition residual, the top excitatory training reviews), the
  cluster surrogate (fidelity on held-out reviews) and GFI (not applicable: it masks images).
- ``vit``: ``canvas-vit`` (an HF ViT trained here) side by side with ``canvas-cnn`` on the same
  canvas test images with exact item boxes: pointing game and box error (threshold 0.5) of
  Grad-CAM (ViT: patch tokens on their 8x8 grid), GFI (ViT basis: a block's patch tokens) and
  input-gradient influence, each explaining the true class.
- ``onet``: ``facenet-onet`` (a 3-output model), explained for its face probability with
  ``output=2``: influence at ``prelu4`` and GFI masks on the lfw_subset faces (scikit-image),
  GFI with ``output=log(prob)`` (its softmax then gives back the face probability).

Writes ``benchmarks/results/any_model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from whynet.clusters import ClusterSurrogate  # noqa: E402
from whynet.gradcam import GradCAM  # noqa: E402
from whynet.influence import InternalInfluence  # noqa: E402
from whynet.inversion import GuidedFeatureInversion  # noqa: E402
from whynet.masks import MaskExplainer  # noqa: E402
from whynet.metrics import localisation_error, pointing_game  # noqa: E402
from whynet.representer import RepresenterPoints  # noqa: E402
from whynet.zoo import load_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "any_model.json"


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def part_minilm(n_train: int, n_test: int) -> dict[str, Any]:
    from whynet.data import rotten_tomatoes

    model, info = load_model("minilm-sentiment")
    tok = info["tokenizer"]
    tr, te = rotten_tomatoes("train"), rotten_tomatoes("test")
    train_texts = tr.texts[:n_train]
    test_texts, test_y = te.texts[:n_test], te.labels[:n_test]

    def enc(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))

    train, test = enc(train_texts), enc(test_texts)
    res: dict[str, Any] = {"n_train": n_train, "n_test": n_test}
    with torch.no_grad():
        pred = model(**test).logits.argmax(1)
    res["model_test_accuracy_here"] = float((pred == test_y).double().mean())

    inf = InternalInfluence(model, "bert.encoder.layer.5", batch_size=16)
    e, t_inf = timed(lambda: inf.explain(test))
    units, scores = inf.top_neurons(e, 5)
    tokw = (e.values.abs().sum(-1) * e.extras["valid_tokens"]).float()
    highlights = []
    for i in range(3):
        ids = test["input_ids"][i][test["attention_mask"][i].bool()]
        toks = tok.convert_ids_to_tokens(ids.tolist())
        w = tokw[i][: len(toks)]
        top = w.argsort(descending=True)[:3].tolist()
        highlights.append({"text": test_texts[i], "top_tokens": [toks[j] for j in top]})
    res["influence"] = {
        "time_s": t_inf,
        "top_hidden_units": units.tolist(),
        "scores": scores.tolist(),
        "token_highlights": highlights,
        "influence_on_padding": float(tokw[~e.extras["valid_tokens"]].abs().max())
        if bool((~e.extras["valid_tokens"]).any())
        else 0.0,
    }

    masks = MaskExplainer(
        model, "sequence", embedding="bert.embeddings.word_embeddings", batch_size=16, sparsity=0.5
    )
    _, t_fit = timed(lambda: masks.fit(train, epochs=1))
    m = masks.explain(test).values
    pad = test["attention_mask"] == 0
    res["masks"] = {
        "fit_s": t_fit,
        "train_history_last": masks.history_[-1],
        "mask_on_padding_max": float(m[pad].abs().max()) if bool(pad.any()) else 0.0,
        "mean_mask_size_real_tokens": float(m[~pad].mean()),
    }

    rp = RepresenterPoints(model, head="head", batch_size=32)
    _, t_rp = timed(lambda: rp.fit(train))
    r = rp.explain(test)
    resid = float((r.values.sum(1) - r.extras["logits"]).abs().max())
    top = rp.top({k: v[:2] for k, v in test.items()}, k=3)
    top_reviews = [
        {
            "test": test_texts[i],
            "excitatory": [train_texts[int(j)] for j in top.excitatory[i].tolist()],
            "inhibitory": [train_texts[int(j)] for j in top.inhibitory[i].tolist()],
        }
        for i in range(2)
    ]
    res["representer"] = {"fit_s": t_rp, "decomposition_residual": resid, "top": top_reviews}

    cs = ClusterSurrogate(
        model,
        ["bert.encoder.layer.5"],
        n_clusters=10,
        algorithm="kmeans",
        layer_weights=None,
        batch_size=32,
        n_init=5,
    )
    _, t_cs = timed(lambda: cs.fit(train))
    res["clusters"] = {"fit_s": t_cs, "fidelity_test": float(cs.fidelity(test))}
    res["inversion"] = "not applicable (GFI masks images through a convolutional basis)"
    return res


def canvas_part(n: int) -> dict[str, Any]:
    from whynet.data.canvas import canvas

    ds = canvas("test", n=n)
    x, y = ds.tensors()
    boxes = ds.boxes
    out: dict[str, Any] = {"n_images": n}
    for name, block, inv in (
        ("canvas-cnn", "features.block4", "pool"),
        ("canvas-vit", "vit.layers.2", "vit.layernorm"),
    ):
        model, _ = load_model(name)
        with torch.no_grad():
            logits = model(x)
            logits = getattr(logits, "logits", logits)
        row: dict[str, Any] = {"accuracy": float((logits.argmax(1) == y).double().mean())}
        methods = {
            "gradcam": lambda m=model, b=block: GradCAM(m, b, batch_size=32).explain(x, target=y),
            "gfi": lambda m=model, b=block, i=inv: GuidedFeatureInversion(
                m, i, b, background="zero", batch_size=32
            ).explain(x, target=y),
            "input_gradient": lambda m=model: InternalInfluence(
                m, None, qoi=y, batch_size=32
            ).explain(x),
        }
        for meth, fn in methods.items():
            e, t = timed(fn)
            sal = e.values.abs().sum(1) if e.values.dim() == 4 else e.values
            row[meth] = {
                "pointing_game": float(pointing_game(sal, boxes, size=(64, 64)).mean()),
                "box_error": float(localisation_error(sal, boxes, size=(64, 64)).mean()),
                "time_s": t,
            }
        out[name] = row
    return out


def part_onet() -> dict[str, Any]:
    from skimage.data import lfw_subset

    from whynet.zoo import hf

    model, _ = load_model("facenet-onet")
    faces = torch.from_numpy(lfw_subset()[:32]).float()[:, None].repeat(1, 3, 1, 1) * 255
    x = hf.onet_preprocess(faces)
    res: dict[str, Any] = {"n_faces": len(x)}
    try:
        InternalInfluence(model, "prelu4").explain(x)
        res["without_output"] = "no error (unexpected)"
    except TypeError as err:
        res["without_output"] = str(err)
    e, t = timed(lambda: InternalInfluence(model, "prelu4", qoi=1, output=2).explain(x))
    res["influence"] = {
        "time_s": t,
        "shape": list(e.values.shape),
        "qoi": "face probability (output=2, class 1)",
        "mean_face_probability": float(e.extras["qoi"].mean()),
    }
    # ONet's third output is already a softmax; GFI applies a softmax to the class scores, and
    # softmax(log p) = p, so output=log(prob) makes GFI's P_c exactly the face probability
    gfi = GuidedFeatureInversion(
        model, "prelu4", "prelu3", output=lambda out: out[2].log(), batch_size=32
    )
    g, t = timed(lambda: gfi.explain(x, target=1))
    res["gfi"] = {
        "time_s": t,
        "mean_mask": float(g.values.mean()),
        "prob_kept": float(g.extras["prob_kept"].mean()),
        "prob_removed": float(g.extras["prob_removed"].mean()),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="minilm,vit,onet")
    ap.add_argument("--n", type=int, default=200, help="canvas images")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    res: dict[str, Any] = {**old, "machine": platform.processor() or platform.machine()}
    parts = args.only.split(",")
    if "minilm" in parts:
        res["minilm-sentiment"] = part_minilm(args.n_train, args.n_test)
    if "vit" in parts:
        res["canvas"] = canvas_part(args.n)
    if "onet" in parts:
        res["facenet-onet"] = part_onet()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
