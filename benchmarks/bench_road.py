"""ROAD and deletion/insertion for every image method, checked against Quantus 0.6.

Run from the repository root (shipped canvas-cnn weights and the canvas mask explainer)::

    .venv/bin/python benchmarks/bench_road.py [--n 32] [--quick] [--table-only]

One explanation per registered image method on ``--n`` held-out canvas test images (indices
1000..; target = the label), then, on exactly those maps:

- whynet: :func:`whynet.metrics.road_curve` (MoRF and LeRF, accuracy and softmax, noise 0.01
  and 0), :func:`~whynet.metrics.deletion_curve` (zero baseline) and
  :func:`~whynet.metrics.insertion_curve` (blur baseline, sigma 3), 16 steps.
- Quantus 0.6: ``quantus.ROAD`` (MoRF only; LeRF is Quantus' MoRF on the reversed map) and
  ``quantus.PixelFlipping`` (deletion with a 0.0 baseline, 256 pixels per step = 16 steps).
  Quantus has no insertion metric. To give both the same pixel order, both receive the *rank
  map* of each attribution (H*W - rank, ties broken by row-major index as in whynet), so the
  orders coincide exactly; the percentages are multiples of 1/8 so that Quantus' floor and
  whynet's round give the same pixel counts.

Quantus is not a whynet dependency; install it into the venv for this script only::

    .venv/bin/pip install --no-deps quantus==0.6.0 && .venv/bin/pip install \\
        opencv-python-headless cachetools

(it needs ``np.trapz``, gone in numpy 2: the script sets ``np.trapz = np.trapezoid`` before
importing it). Without Quantus the whynet columns are still computed and the Quantus ones are
marked missing. Writes ``benchmarks/results/road.json`` and the generated section of
``docs/metrics.md`` (``--table-only``: regenerate the section from the JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whynet.core import predict_logits
from whynet.metrics import (
    as_saliency,
    deletion_curve,
    insertion_curve,
    road_curve,
    saliency_ranks,
    spearman,
    trapezoid,
)
from whynet.registry import registered

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "road.json"
DOC = ROOT / "docs" / "metrics.md"
BEGIN, END = "<!-- bench_road:begin -->", "<!-- bench_road:end -->"
PCT = [k / 8 for k in range(8)]  # 0, 12.5%, ..., 87.5%: integer pixel counts on 64 x 64
STEPS = 16
NOISE = 0.01


def load_quantus() -> Any:
    """Quantus 0.6 with the numpy-2 shim, or None when it is not installed."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # Quantus' AUC calls np.trapz
    try:
        import quantus  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        print(
            f"quantus not importable ({exc}); Quantus columns skipped. Install with: "
            ".venv/bin/pip install --no-deps quantus==0.6.0 && .venv/bin/pip install "
            "opencv-python-headless cachetools"
        )
        return None
    return quantus


# ---------------------------------------------------------------- one explanation per method
def canvas_explainers(model: Any, quick: bool) -> dict[str, tuple[str, Callable[..., Any]]]:
    """Registered image method -> (row name, explain(x, y) -> maps); the tours' settings."""
    from whynet.core import LinearPath
    from whynet.gradcam import GradCAM
    from whynet.influence import InternalInfluence
    from whynet.inversion import GuidedFeatureInversion
    from whynet.zoo.masks_pretrained import load_pretrained

    def gfi(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s1, s2 = (3, 20) if quick else (10, 70)  # the paper's 10 + 70 Adam steps
        e = GuidedFeatureInversion(
            model,
            "pool",
            "features.block4",
            background="zero",
            lam=3.0,
            stage1_steps=s1,
            stage2_steps=s2,
            batch_size=16,
            progress=False,
        ).explain(x, y)
        return e.values

    def masks(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        me, _, _ = load_pretrained("canvas-cnn", model=model)
        return me.explain(x).values  # a trained explainer: the predicted class only

    def grad_x_input(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ii = InternalInfluence(model, None, multiply_activation=True, progress=False)
        return ii.explain(x, y).values

    def ig(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        doi = LinearPath(0.0, steps=16 if quick else 32)
        ii = InternalInfluence(model, None, doi=doi, multiply_activation=True, progress=False)
        return ii.explain(x, y).values

    def gradcam(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return GradCAM(model, "features.block4", progress=False).explain(x, y).values

    return {
        "influence": ("influence: gradient x input", grad_x_input),
        "influence_ig": ("influence: integrated gradients", ig),
        "inversion": ("inversion: GFI stage 2", gfi),
        "masks": ("masks: pretrained explainer", masks),
        "gradcam": ("gradcam: features.block4", gradcam),
    }


def rank_map(sal: torch.Tensor) -> torch.Tensor:
    """H*W - rank: the same pixel order in every implementation (no ties left)."""
    r = saliency_ranks(sal)
    return (sal[0].numel() - r).float()


# ---------------------------------------------------------------- the two implementations
def whynet_metrics(model: Any, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dict:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for order in ("morf", "lerf"):
        for noise in (NOISE, 0.0):
            tag = f"road_{order}_acc" + ("" if noise else "_noise0")
            out[tag] = road_curve(
                model,
                x,
                a,
                y,
                order=order,
                percentages=PCT,
                noise=noise,
                score="accuracy",
            )
        out[f"road_{order}_softmax"] = road_curve(
            model, x, a, y, order=order, percentages=PCT, noise=NOISE, score="softmax"
        )
    out["deletion"] = deletion_curve(model, x, a, y, baseline="zero", steps=STEPS)
    out["insertion"] = insertion_curve(model, x, a, y, baseline="blur", blur_sigma=3.0, steps=STEPS)
    out["seconds"] = time.perf_counter() - t0
    return out


def quantus_metrics(q: Any, model: Any, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dict:
    xs, ys = x.numpy(), y.numpy()
    an = a[:, None].numpy()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    pct = [100 * p for p in PCT[1:]]  # Quantus cannot impute 0% (empty system)
    # LeRF = Quantus' MoRF on the reversed rank map (kept positive: Quantus refuses maps that
    # are all negative)
    for order, amap in (("morf", an), ("lerf", an.shape[-1] * an.shape[-2] + 1 - an)):
        for noise in (NOISE, 0.0):
            metric = q.ROAD(
                percentages=pct, noise=noise, abs=False, normalise=False, disable_warnings=True
            )
            rows = []
            # one image per call: ROAD.custom_postprocess averages only the first batch
            for i in range(len(xs)):
                res = metric(
                    model=model,
                    x_batch=xs[i : i + 1],
                    y_batch=ys[i : i + 1],
                    a_batch=amap[i : i + 1],
                    channel_first=True,
                    device="cpu",
                    batch_size=1,
                )
                rows.append([float(res[p]) for p in pct])
            acc0 = (predict_logits(model, x).argmax(-1) == y).double()[
                :, None
            ]  # 0%: the model's own accuracy
            tag = f"road_{order}_acc" + ("" if noise else "_noise0")
            out[tag] = torch.cat([acc0, torch.tensor(rows, dtype=torch.float64)], 1)
    pf = q.PixelFlipping(
        features_in_step=x[0, 0].numel() // STEPS,
        perturb_baseline=0.0,
        abs=False,
        normalise=False,
        disable_warnings=True,
    )
    curve = np.array(
        pf(
            model=model,
            x_batch=xs,
            y_batch=ys,
            a_batch=an,
            channel_first=True,
            device="cpu",
            softmax=True,
            batch_size=len(xs),
        ),
        dtype=np.float64,
    )
    # Quantus' curve starts after the first step; its AUC is np.trapz(curve, dx=1)
    out["deletion_steps"] = torch.from_numpy(curve)
    out["deletion_auc_quantus_units"] = torch.from_numpy(np.trapezoid(curve, dx=1, axis=1))
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- agreement
def _rho(a: torch.Tensor, b: torch.Tensor) -> float | None:
    v = float(spearman(a.double(), b.double()))
    return None if np.isnan(v) else round(v, 4)


def summarise(w: dict, qm: dict | None) -> dict:
    x = torch.tensor(PCT, dtype=torch.float64)
    span = PCT[-1] - PCT[0]
    row: dict[str, Any] = {"whynet_seconds": round(w["seconds"], 2)}
    per_image: dict[str, torch.Tensor] = {}
    for order in ("morf", "lerf"):
        for key in (f"road_{order}_acc", f"road_{order}_acc_noise0", f"road_{order}_softmax"):
            auc = trapezoid(w[key], x) / span
            per_image[key] = auc
            row[key] = {
                "whynet_auc": round(float(auc.mean()), 4),
                "whynet_curve": [round(float(v), 4) for v in w[key].mean(0)],
            }
    per_image["deletion"] = trapezoid(w["deletion"])
    per_image["insertion"] = trapezoid(w["insertion"])
    row["deletion"] = {"whynet_auc": round(float(per_image["deletion"].mean()), 4)}
    row["insertion"] = {
        "whynet_auc": round(float(per_image["insertion"].mean()), 4),
        "quantus": "no insertion metric in Quantus 0.6",
    }
    if qm is None:
        return row
    row["quantus_seconds"] = round(qm["seconds"], 2)
    for order in ("morf", "lerf"):
        for key in (f"road_{order}_acc", f"road_{order}_acc_noise0"):
            auc = trapezoid(qm[key], x) / span
            row[key].update(
                quantus_auc=round(float(auc.mean()), 4),
                quantus_curve=[round(float(v), 4) for v in qm[key].mean(0)],
                # fraction of (image, percentage) cells where both say the same (0/1)
                cell_agreement=round(float((qm[key] == w[key]).double().mean()), 4),
                max_abs_diff_mean_curve=round(
                    float((qm[key].mean(0) - w[key].mean(0)).abs().max()), 4
                ),
                spearman_per_image_auc=_rho(auc, per_image[key]),
            )
            per_image[key + "_quantus"] = auc
    # deletion: Quantus' curve = whynet's points 1..steps; AUC converted to whynet's [0, 1]
    dq = qm["deletion_steps"]
    c0 = w["deletion"][:, 0]
    auc_q = (qm["deletion_auc_quantus_units"] + (c0 + dq[:, 0]) / 2) / STEPS
    row["deletion"].update(
        quantus_auc=round(float(auc_q.mean()), 4),
        quantus_auc_raw_units=round(float(qm["deletion_auc_quantus_units"].mean()), 4),
        max_abs_diff_curve=float((dq - w["deletion"][:, 1:]).abs().max()),
        max_abs_diff_auc=float((auc_q - per_image["deletion"]).abs().max()),
        spearman_per_image_auc=_rho(auc_q, per_image["deletion"]),
    )
    per_image["deletion_quantus"] = auc_q
    return row


def method_rankings(methods: dict) -> dict:
    """Spearman of the methods' mean scores, whynet vs Quantus, per metric."""
    out: dict[str, Any] = {}
    names = list(methods)
    if len(names) < 3 or "quantus_auc" not in methods[names[0]]["deletion"]:
        return out
    for key in (
        "road_morf_acc",
        "road_morf_acc_noise0",
        "road_lerf_acc",
        "road_lerf_acc_noise0",
        "deletion",
    ):
        a = torch.tensor([methods[n][key]["whynet_auc"] for n in names])
        b = torch.tensor([methods[n][key]["quantus_auc"] for n in names])
        out[key] = _rho(a, b)
    return out


# ---------------------------------------------------------------- docs table
def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def write_table(result: dict) -> str:
    m = result["canvas"]["methods"]
    lines = [
        BEGIN,
        "## ROAD and deletion against Quantus (generated by `benchmarks/bench_road.py`)",
        "",
        f"canvas-cnn, {result['canvas']['n_images']} held-out canvas test images (indices "
        "1000..), target = label, one explanation per registered image method; both "
        "implementations get the same rank maps. ROAD: accuracy after imputing the top "
        "(MoRF, lower = more faithful) or bottom (LeRF, higher) fraction of pixels, "
        "area over 0..87.5% in steps of 12.5% (normalised to [0, 1]); noise 0.01 (both "
        "implementations draw their own noise) and noise 0 (deterministic). Deletion: zero "
        f"baseline, {STEPS} steps, softmax; Quantus = `PixelFlipping` (its AUC converted to the "
        "fraction axis). Insertion (blur sigma 3): whynet only, Quantus 0.6 has none. "
        "`agree` = fraction of (image, percentage) cells with the same 0/1 outcome; "
        "`rho` = Spearman of the per-image AUCs.",
        "",
        "| method | ROAD MoRF whynet / Quantus (agree, rho) | MoRF noise 0 whynet / Quantus "
        "(agree) | ROAD LeRF whynet / Quantus (agree, rho) | LeRF noise 0 whynet / Quantus "
        "(agree) | ROAD MoRF softmax (whynet) | deletion AUC whynet / Quantus (max abs diff) "
        "| insertion AUC (whynet) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in m.items():
        if "skipped" in r:
            lines.append(f"| {name} | {r['skipped']} |  |  |  |  |  |  |")
            continue
        cells = [name]
        for key in (
            "road_morf_acc",
            "road_morf_acc_noise0",
            "road_lerf_acc",
            "road_lerf_acc_noise0",
        ):
            v = r[key]
            if "quantus_auc" not in v:
                cells.append(f"{_f(v['whynet_auc'])} / -")
                continue
            extra = _f(v["cell_agreement"])
            if "noise0" not in key:
                extra += f", {_f(v['spearman_per_image_auc'])}"
            cells.append(f"{_f(v['whynet_auc'])} / {_f(v['quantus_auc'])} ({extra})")
        cells.append(_f(r["road_morf_softmax"]["whynet_auc"]))
        d = r["deletion"]
        if "quantus_auc" in d:
            cells.append(
                f"{_f(d['whynet_auc'])} / {_f(d['quantus_auc'])} ({_f(d['max_abs_diff_auc'])})"
            )
        else:
            cells.append(f"{_f(d['whynet_auc'])} / -")
        cells.append(_f(r["insertion"]["whynet_auc"]))
        lines.append("| " + " | ".join(cells) + " |")
    rk = result["canvas"].get("method_ranking_spearman", {})
    if rk:
        lines += [
            "",
            "Spearman of the method rankings (whynet vs Quantus mean AUC): "
            + ", ".join(f"{k} {_f(v)}" for k, v in rk.items())
            + ".",
        ]
    for note in result.get("notes", []):
        lines += ["", note]
    lines += [
        "",
        f"Command: `{result['command']}` ({result['seconds_total']:.0f} s, {result['machine']}).",
    ]
    photos = OUT.with_name("road_photos.json")
    if photos.exists():
        from bench_road_photos import photo_table  # the RGB part's rows

        lines += photo_table(json.loads(photos.read_text()))
    lines.append(END)
    section = "\n".join(lines) + "\n"
    text = DOC.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)
    return section


NOTES = [
    "Where the definitions differ: Quantus' ROAD is MoRF-only and scores accuracy only (LeRF "
    "here = Quantus' MoRF on the reversed rank map; whynet also scores the softmax or logit); "
    "it counts `int(H*W*p/100)` pixels (floor) where whynet rounds (equal on this grid); it "
    "cannot evaluate 0% (the 0% point is the model's own accuracy for both); its "
    "`custom_postprocess` averages only the first batch (so it is called one image at a "
    "time); with C > 1 channels it ranks the C*H*W broadcast entries but imputes H*W pixels "
    "(index error), so it cannot run on RGB photos. The imputation itself (weights 1/6 and "
    "1/12, renormalised at the border, one sparse solve) agrees with Quantus' "
    "`noisy_linear_imputation` to 1e-7 (float32) at noise 0; with noise each library draws "
    "its own. Quantus' `PixelFlipping` is whynet's deletion curve without its first point, "
    "with AUC `np.trapz(dx=1)` over steps: converted here to whynet's [0, 1] fraction axis.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="8 images, fewer GFI/IG steps")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        print(write_table(json.loads(OUT.read_text())))
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    from whynet.data.canvas import canvas
    from whynet.zoo import load_model

    n = 8 if args.quick else args.n
    q = load_quantus()
    model, _ = load_model("canvas-cnn")
    model.eval()
    ds = canvas("test", n=1000 + n)
    x, y = ds.tensors()
    x, y = x[1000:], y[1000:]
    size = (x.shape[-2], x.shape[-1])
    explainers = canvas_explainers(model, args.quick)
    methods: dict[str, Any] = {}
    maps: dict[str, torch.Tensor] = {}
    for info in registered():
        if "image" not in info.inputs:
            continue
        keys = [k for k in explainers if k == info.name or k.startswith(info.name + "_")]
        if not keys:
            methods[info.name] = {
                "skipped": "no pixel map (explains with training data or a surrogate)"
            }
            continue
        for key in keys:
            name, fn = explainers[key]
            t0 = time.perf_counter()
            maps[name] = as_saliency(fn(x, y), size)
            print(f"{name}: explained in {time.perf_counter() - t0:.1f} s", flush=True)
    g = torch.Generator().manual_seed(0)
    maps["random map (reference)"] = torch.rand(len(x), *size, generator=g)
    for name, s in maps.items():
        a = rank_map(s)
        w = whynet_metrics(model, x, y, a)
        qm = quantus_metrics(q, model, x, y, a) if q is not None else None
        methods[name] = summarise(w, qm)
        print(name, json.dumps(methods[name]), flush=True)
    scored = {k: v for k, v in methods.items() if "skipped" not in v}
    result = {
        "command": "python benchmarks/bench_road.py" + (" --quick" if args.quick else f" --n {n}"),
        "machine": f"{platform.machine()}, torch threads 1, Python {platform.python_version()}",
        "quantus": getattr(q, "__version__", None),
        "settings": {
            "percentages": PCT,
            "noise": NOISE,
            "deletion_steps": STEPS,
            "deletion_baseline": 0.0,
            "insertion_baseline": "blur sigma 3",
            "seed": 0,
            "gfi_steps": [3, 20] if args.quick else [10, 70],
            "ig_steps": 16 if args.quick else 32,
        },
        "canvas": {
            "n_images": n,
            "methods": methods,
            "method_ranking_spearman": method_rankings(scored),
        },
        "notes": NOTES,
        "seconds_total": time.perf_counter() - t_start,
    }
    out = OUT.with_name("road_quick.json") if args.quick else OUT
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    if not args.quick:  # the docs table comes from the full run only
        print(write_table(result))


if __name__ == "__main__":
    main()
