"""Explanatory masks: faithfulness, localisation and speed against GFI and Captum; ground truth.

Run from the repository root (shipped explainers in ``src/whynet/zoo/weights/masks`` needed)::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296 \\
        .venv/bin/python benchmarks/bench_masks.py [--quick] [--only canvas,tpsa,sentiment]

Parts (``--only``):

- ``canvas``: canvas-cnn on held-out canvas test images (indices 1000.., never used to train or
  validate the explainer): pointing game (exact item boxes), deletion and insertion AUC (blur
  baseline, 32 steps, softmax of the predicted class) and seconds per image for the trained
  mask explainer, guided feature inversion (``whynet.inversion``, paper settings 10 + 70 steps),
  Captum Occlusion (8x8 window, stride 4), Saliency, IntegratedGradients (32 steps) and
  LayerGradCam (last conv block). Timings: median over repeats, all methods in this process;
  each method's first call explains all images (timed), fast methods get further timed
  repeats; peak memory = growth of VmHWM over the RSS before the call (reset through
  ``/proc/self/clear_refs``).
- ``tpsa``: tpsa-smiles on NCI test molecules: per-atom mask (mean over an atom's characters)
  against RDKit's per-atom TPSA contributions: ROC AUC of mask vs "atom carries TPSA" (per
  molecule, averaged), Spearman correlation of mask and contribution, and the same for a random
  score, for |gradient x embedding| (Captum-free, one backward pass) and for the rule "atom is
  N or O" (what RDKit's TPSA counts: the ceiling a mask can reach).
- ``sentiment``: sentiment-gru on rotten_tomatoes test: mask size and fidelity (agreement of the
  prediction on the masked input), and the prediction when only the top-3 masked tokens are
  kept vs 3 random tokens.

Prints JSON and writes ``benchmarks/results/masks.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whynet.core import frozen_eval, predict_logits
from whynet.zoo.masks_pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "masks.json"
DIRS: dict[str, Any] = {}  # --weights-dir / --zoo-dir overrides for load_pretrained
N_IMAGES: dict[str, int] = {}  # --n override for the canvas part
METHODS: list[str] = []  # --methods: only canvas methods whose name starts with one of these


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    fn: Callable[[], torch.Tensor],
    repeats: int,
) -> tuple[torch.Tensor, list[float], float]:
    """(result, wall times, peak RSS growth in MB of the first call)."""
    base = rss_kb("VmRSS")
    ok = reset_peak()
    times = []
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    peak = (rss_kb("VmHWM") - base) / 1024 if ok else float("nan")
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, times, peak


# ------------------------------------------------------------------------------- canvas
def canvas_methods(
    model: torch.nn.Module,
    me: Any,
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Occlusion,
        Saliency,
    )

    from whynet.inversion import GuidedFeatureInversion

    gfi = GuidedFeatureInversion(model, "pool", "features.block4", batch_size=16, progress=False)

    def predicted(x: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, x).argmax(1)

    def masks(x: torch.Tensor) -> torch.Tensor:
        return me.explain(x).values

    def inversion(x: torch.Tensor) -> torch.Tensor:
        return gfi.explain(x).values

    def captum(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
        def f(x: torch.Tensor) -> torch.Tensor:
            with frozen_eval(model):
                t = predicted(x)
                return run(x, t).detach()

        return f

    occ = Occlusion(model)
    sal = Saliency(model)
    ig = IntegratedGradients(model)
    gc = LayerGradCam(model, model.features.block4)
    return {
        "masks (trained explainer)": masks,
        "guided feature inversion": inversion,
        "captum Occlusion 8x8/4": captum(
            lambda x, t: occ.attribute(
                x,
                target=t,
                sliding_window_shapes=(1, 8, 8),
                strides=(1, 4, 4),
                baselines=0.0,
                perturbations_per_eval=64,
            ).sum(1)
        ),
        "captum Saliency": captum(lambda x, t: sal.attribute(x, target=t).abs().sum(1)),
        "captum IntegratedGradients": captum(
            lambda x, t: ig.attribute(x, target=t, n_steps=32, internal_batch_size=256).sum(1)
        ),
        "captum LayerGradCam": captum(
            lambda x, t: LayerAttribution.interpolate(
                gc.attribute(x, target=t, relu_attributions=True), x.shape[-2:], "bilinear"
            )[:, 0]
        ),
    }


def canvas_heldout(n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(x, y, boxes)`` of canvas test images 1000..1000+n (never used to train or validate
    the shipped explainers)."""
    from whynet.data.canvas import canvas

    ds = canvas("test", n=1000 + n)
    x, y = ds.tensors()
    return x[1000:], y[1000:], ds.boxes[1000:]


def part_canvas(quick: bool) -> dict[str, Any]:
    from whynet.metrics import deletion_auc, insertion_auc, mask_fidelity, pointing_game

    me, model, _ = load_pretrained("canvas-cnn", **DIRS)
    n = N_IMAGES.get("canvas") or (16 if quick else 64)
    x, y, boxes = canvas_heldout(n)
    pred = predict_logits(model, x).argmax(1)
    repeats = 2 if quick else 5
    rows = {}
    for name, fn in canvas_methods(model, me).items():
        if METHODS and not any(name.startswith(m) for m in METHODS):
            continue
        # every method explains all n images once (timed); methods under 10 s get extra
        # timed repeats (the slow ones are timed once: minutes per run on 2 shared cores)
        sal, times, peak = measure(lambda fn=fn: fn(x), 1)
        while len(times) < repeats and times[0] < 10.0:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        sal = sal.detach().double()
        kw = {"baseline": "blur", "blur_sigma": 4.0, "steps": 32, "batch_size": 128}
        rows[name] = {
            "seconds_per_image": statistics.median(times) / n,
            "times_s": [round(t, 4) for t in times],
            "peak_rss_growth_mb": round(peak, 1),
            "pointing_game": float(pointing_game(sal, boxes).mean()),
            "deletion_auc": float(deletion_auc(model, x, sal, **kw).mean()),
            "insertion_auc": float(insertion_auc(model, x, sal, **kw).mean()),
        }
        print(name, json.dumps(rows[name]), flush=True)
    fid = mask_fidelity(model, x, me.explain(x).values, baseline="blur", blur_sigma=4.0)
    t_mask = rows["masks (trained explainer)"]["seconds_per_image"]
    slow = {
        k: rows[k]["seconds_per_image"] / t_mask if k in rows else None
        for k in ("guided feature inversion", "captum Occlusion 8x8/4")
    }
    return {
        "images": n,
        "model_accuracy_on_them": float((pred == y).double().mean()),
        "methods": rows,
        "mask_mean_size": float(me.explain(x).values.mean()),
        "mask_kept_agreement": float(fid.agreement.mean()),
        "speedup_vs_gfi": slow["guided feature inversion"],
        "speedup_vs_occlusion": slow["captum Occlusion 8x8/4"],
    }


# ------------------------------------------------------------------------------- tpsa
def _auc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    # Mann-Whitney U with ties counted half
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def part_tpsa(quick: bool) -> dict[str, Any]:
    me, model, _ = load_pretrained("tpsa-smiles", **DIRS)
    return tpsa_ground_truth(me, model, stop=100 if quick else None)


def tpsa_ground_truth(
    me: Any, model: torch.nn.Module, start: int = 0, stop: int | None = None
) -> dict[str, Any]:
    """Per-atom scores of explainer ``me`` (and the baselines) against RDKit's per-atom TPSA
    on NCI test molecules ``start:stop`` (see the module docstring)."""
    from whynet.data.molecules import atom_token_mask, nci_molecules

    ds = nci_molecules("test")
    stop = len(ds) if stop is None else min(stop, len(ds))
    ids = ds.x[start:stop]
    n = len(ids)
    keep = (ids != 0).sum(1) <= me.max_length_
    t0 = time.perf_counter()
    masks = me.explain(ids[keep]).values.double()
    t_mask = time.perf_counter() - t0
    # |gradient x embedding| per token, one backward pass (a standard baseline)
    emb_layer = model.embedding
    with frozen_eval(model):
        sub = ids[keep]
        emb = emb_layer(sub).detach().requires_grad_(True)
        lengths = (sub != 0).sum(1)
        out = model.forward_embedded(emb, lengths)
        (g,) = torch.autograd.grad(out.sum(), emb)
        gxe = (g * emb).sum(-1).abs().detach().double()
    rng = np.random.default_rng(0)
    from whynet.data.molecules import parse_smiles

    res: dict[str, list[float]] = {
        f"{k}_{m}": []
        for k in ("auc", "spearman")
        for m in ("mask", "gradxemb", "random", "is_N_or_O")
    }
    rows = [i for i in range(n) if bool(keep[i])]
    for j, i in enumerate(rows):
        smi = ds.smiles[start + i]
        contrib = np.asarray(ds.atom_contribs[start + i])
        mt = atom_token_mask(smi).numpy().astype(np.float64)
        per = mt / mt.sum(1, keepdims=True)  # mean over an atom's characters
        label = contrib > 0
        for m, tok in (("mask", masks[j]), ("gradxemb", gxe[j])):
            a = per @ tok[: len(smi)].numpy()
            res[f"auc_{m}"].append(_auc(a, label))
            res[f"spearman_{m}"].append(_spearman(a, contrib))
        r = rng.random(len(contrib))
        res["auc_random"].append(_auc(r, label))
        res["spearman_random"].append(_spearman(r, contrib))
        # a chemist's rule: TPSA (RDKit default) counts N and O atoms only
        rule = np.array([float(a.GetSymbol() in ("N", "O")) for a in parse_smiles(smi).GetAtoms()])
        res["auc_is_N_or_O"].append(_auc(rule, label))
        res["spearman_is_N_or_O"].append(_spearman(rule, contrib))
    summary = {k: float(np.nanmean(v)) for k, v in res.items()}
    summary["molecules"] = len(rows)
    summary["molecules_with_auc"] = int(np.sum(~np.isnan(res["auc_mask"])))
    summary["mask_mean_size"] = float((masks.sum(1) / (ids[keep] != 0).sum(1)).mean())
    summary["explain_seconds_per_molecule"] = t_mask / len(rows)
    with frozen_eval(model):
        ref = model(ids[keep]).double()[:, 0]
        kept = me.masked_output(ids[keep], me.explain(ids[keep]).values).double()[:, 0]
    summary["masked_output_mae_A2"] = float((ref - kept).abs().mean())
    summary["output_std_A2"] = float(ref.std())
    # the fidelity the explainer is trained and validated on: 1 - MSE(masked, unmasked) / var
    summary["fidelity"] = float(1 - ((ref - kept) ** 2).mean() / ref.var())
    summary["molecule_range"] = [start, stop]
    return summary


# ------------------------------------------------------------------------------- sentiment
def part_sentiment(quick: bool) -> dict[str, Any]:
    from whynet.data.text import rotten_tomatoes

    me, model, info = load_pretrained("sentiment-gru", **DIRS)
    ds = rotten_tomatoes("test", vocab=info["vocab"])
    n = 200 if quick else len(ds)
    ids = ds.x[:n]
    ids = ids[((ids != 0).sum(1) > 0) & ((ids != 0).sum(1) <= me.max_length_)]
    t0 = time.perf_counter()
    m = me.explain(ids).values
    t_mask = time.perf_counter() - t0
    valid = ids != 0
    with frozen_eval(model):
        pred = predict_logits(model, ids).argmax(1)
        masked = me.masked_output(ids, m).argmax(1)
        g = torch.Generator().manual_seed(0)
        out: dict[str, float] = {}
        for k in (1, 3, 5):
            top = m.masked_fill(~valid, -1).topk(k, dim=1).indices
            rnd = (torch.rand(ids.shape, generator=g) * valid).topk(k, dim=1).indices
            for name, idx in (("top", top), ("random", rnd)):
                keep = torch.zeros_like(m).scatter_(1, idx, 1.0) * valid
                agree = (me.masked_output(ids, keep).argmax(1) == pred).double().mean()
                out[f"agreement_keep_{name}{k}"] = float(agree)
    return {
        "texts": len(ids),
        "mask_mean_size": float((m.sum(1) / valid.sum(1)).mean()),
        "masked_agreement": float((masked == pred).double().mean()),
        "explain_seconds_per_text": t_mask / len(ids),
        **out,
    }


PARTS = {"canvas": part_canvas, "tpsa": part_tpsa, "sentiment": part_sentiment}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="canvas images (default 64)")
    parser.add_argument("--methods", default="", help="comma-separated canvas method prefixes")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--weights-dir", default=None, help="explainers (default: shipped)")
    parser.add_argument("--zoo-dir", default=None, help="zoo models (default: shipped)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    DIRS.update(weights_dir=args.weights_dir, zoo_dir=args.zoo_dir)
    if args.n:
        N_IMAGES["canvas"] = args.n
    METHODS.extend(m for m in args.methods.split(",") if m)
    result: dict[str, Any] = {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for part in args.only.split(","):
        t0 = time.perf_counter()
        result[part] = PARTS[part](args.quick)
        result[part]["part_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({part: result[part]}, indent=1), flush=True)
    out = Path(args.out)
    if args.quick and out == OUT:
        out = OUT.with_name("masks_quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not args.quick:  # keep parts from earlier runs
        old = json.loads(out.read_text())
        old.update(result)
        result = old
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
