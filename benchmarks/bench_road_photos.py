"""ROAD and deletion/insertion on EfficientNet-Lite0 photos (the RGB part of bench_road).

Run from the repository root after ``benchmarks/bench_road.py`` (same Quantus install)::

    .venv/bin/python benchmarks/bench_road_photos.py [--photos coffee,chelsea,motorcycle,flower]

Four bundled photos (the inversion tour's), target = the predicted class, one explanation per
registered image method that has a pixel map for this model (no shipped mask explainer for
EfficientNet-Lite0; GFI with the tour's fast 5 + 25 steps, integrated gradients 16 steps to fit
2 cores). whynet: ROAD MoRF/LeRF (softmax, noise 0.01, 0/25/50/75%: a 224 x 224 imputation at
75% is a ~38k-unknown sparse solve), deletion (zero baseline in the normalised space, i.e. the
ImageNet mean colour) and insertion (blur sigma 5), 16 steps. Quantus 0.6: ``PixelFlipping``
with H*W / 16 entries per step (it insists that the step divide H*W, but flips C*H*W entries:
48 steps, every third ends on whole pixels and is compared with whynet), and an attempt at
``ROAD``, which cannot run on RGB (its error is recorded). Writes
``benchmarks/results/road_photos.json``; ``bench_road.py --table-only`` puts it in the docs.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from bench_road import OUT, _f, load_quantus, rank_map, write_table
from whynet.metrics import (
    as_saliency,
    deletion_curve,
    insertion_curve,
    road_curve,
    spearman,
    trapezoid,
)
from whynet.registry import registered

OUT_PHOTOS = OUT.with_name("road_photos.json")
PCT = [0.0, 0.25, 0.5, 0.75]
STEPS = 16


def explainers(model: Any) -> dict[str, tuple[str, Any]]:
    import torch.nn.functional as F

    from whynet.core import LinearPath
    from whynet.gradcam import GradCAM
    from whynet.influence import InternalInfluence
    from whynet.inversion import GuidedFeatureInversion

    def gfi(x: torch.Tensor) -> torch.Tensor:
        return (
            GuidedFeatureInversion(
                model,
                "_avg_pooling",
                "_bn1",
                basis_transform=F.relu6,
                stage1_steps=5,
                stage2_steps=25,
                batch_size=4,
                progress=False,
            )
            .explain(x)
            .values
        )

    def gxi(x: torch.Tensor) -> torch.Tensor:
        return (
            InternalInfluence(model, None, multiply_activation=True, batch_size=4, progress=False)
            .explain(x)
            .values
        )

    def ig(x: torch.Tensor) -> torch.Tensor:
        return (
            InternalInfluence(
                model,
                None,
                doi=LinearPath(0.0, steps=16),
                multiply_activation=True,
                batch_size=16,
                progress=False,
            )
            .explain(x)
            .values
        )

    def cam(x: torch.Tensor) -> torch.Tensor:
        return GradCAM(model, "_bn1", progress=False).explain(x).values

    return {
        "influence": ("influence: gradient x input", gxi),
        "influence_ig": ("influence: integrated gradients (16 steps)", ig),
        "inversion": ("inversion: GFI stage 2 (5 + 25 steps)", gfi),
        "gradcam": ("gradcam: _bn1", cam),
    }


def photo_table(r: dict) -> list[str]:
    """The EfficientNet-Lite0 rows (``bench_road_photos.py``)."""
    lines = [
        "",
        f"EfficientNet-Lite0 on {len(r['photos'])} bundled photos ({', '.join(r['photos'])}), "
        "target = predicted class, ROAD softmax at 0/25/50/75% (noise 0.01), deletion (zero "
        "= ImageNet mean colour) and insertion (blur sigma 5), 16 steps. Quantus "
        f"`PixelFlipping` checks deletion (48 entry steps; every third = whynet's 16 "
        f"whole-pixel steps); Quantus' ROAD on RGB: `{r['quantus_road_on_rgb']}`.",
        "",
        "| method | ROAD MoRF softmax | ROAD LeRF softmax | deletion AUC whynet / Quantus "
        "(max abs diff) | insertion AUC |",
        "|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
        if "skipped" in m:
            lines.append(f"| {name} | {m['skipped']} |  |  |  |")
            continue
        d = m["deletion"]
        dq = (
            f"{_f(d['whynet_auc'])} / {_f(d['quantus_auc'])} ({_f(d['max_abs_diff_auc'])})"
            if "quantus_auc" in d
            else f"{_f(d['whynet_auc'])} / -"
        )
        lines.append(
            f"| {name} | {_f(m['road_morf_softmax']['whynet_auc'])} | "
            f"{_f(m['road_lerf_softmax']['whynet_auc'])} | {dq} | "
            f"{_f(m['insertion']['whynet_auc'])} |"
        )
    lines += ["", f"Command: `{r['command']}` ({r['seconds_total']:.0f} s)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="coffee,chelsea,motorcycle,flower")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    from whynet.core import predict_logits
    from whynet.data.photos import photos
    from whynet.zoo import load_model

    q = load_quantus()
    model, info = load_model("efficientnet-lite0")
    model.eval()
    ph = photos(args.photos.split(","))
    x = info["preprocess"]([p.image for p in ph])
    y = predict_logits(model, x).argmax(-1)
    size = (x.shape[-2], x.shape[-1])
    ex = explainers(model)
    maps: dict[str, torch.Tensor] = {}
    methods: dict[str, Any] = {}
    for m in registered():
        keys = [k for k in ex if k == m.name or k.startswith(m.name + "_")]
        if "image" not in m.inputs:
            continue
        if not keys:
            why = "no shipped explainer for this model" if m.name == "masks" else "no pixel map"
            methods[m.name] = {"skipped": why}
        for key in keys:
            name, fn = ex[key]
            t0 = time.perf_counter()
            maps[name] = as_saliency(fn(x), size)
            print(f"{name}: explained in {time.perf_counter() - t0:.1f} s", flush=True)
    maps["random map (reference)"] = torch.rand(
        len(x), *size, generator=torch.Generator().manual_seed(0)
    )
    xp = torch.tensor(PCT, dtype=torch.float64)
    road_error = None
    for name, s in maps.items():
        a = rank_map(s)
        t0 = time.perf_counter()
        row: dict[str, Any] = {}
        for order in ("morf", "lerf"):
            c = road_curve(
                model, x, a, y, order=order, percentages=PCT, score="softmax", batch_size=8
            )
            row[f"road_{order}_softmax"] = {
                "whynet_auc": round(float((trapezoid(c, xp) / PCT[-1]).mean()), 4),
                "whynet_curve": [round(float(v), 4) for v in c.mean(0)],
            }
        dc = deletion_curve(model, x, a, y, baseline="zero", steps=STEPS, batch_size=16)
        ic = insertion_curve(model, x, a, y, baseline="blur", steps=STEPS, batch_size=16)
        row["deletion"] = {"whynet_auc": round(float(trapezoid(dc).mean()), 4)}
        row["insertion"] = {"whynet_auc": round(float(trapezoid(ic).mean()), 4)}
        row["whynet_seconds"] = round(time.perf_counter() - t0, 1)
        if q is not None:
            an = a[:, None].numpy()
            # PixelFlipping counts entries of the attribution: give it all channels (whole
            # pixels per step, as whynet)
            an3 = np.repeat(an, x.shape[1], axis=1)
            pf = q.PixelFlipping(
                # Quantus requires features_in_step | H*W but flips C*H*W entries: with
                # H*W/16 entries per step, every third step ends on whole pixels
                features_in_step=size[0] * size[1] // STEPS,
                perturb_baseline=0.0,
                abs=False,
                normalise=False,
                disable_warnings=True,
            )
            curve = torch.tensor(
                pf(
                    model=model,
                    x_batch=x.numpy(),
                    y_batch=y.numpy(),
                    a_batch=an3,
                    channel_first=True,
                    device="cpu",
                    softmax=True,
                    batch_size=len(x),
                ),
                dtype=torch.float64,
            )
            row["deletion"]["quantus_auc_raw_units_48_steps"] = round(
                float(np.trapezoid(curve.numpy(), dx=1, axis=1).mean()), 4
            )
            curve = curve[:, x.shape[1] - 1 :: x.shape[1]]  # the whole-pixel points
            auc_q = (
                torch.from_numpy(np.trapezoid(curve.numpy(), dx=1, axis=1))
                + (dc[:, 0] + curve[:, 0]) / 2
            ) / STEPS
            rho = float(spearman(auc_q, trapezoid(dc)))
            row["deletion"].update(
                quantus_auc=round(float(auc_q.mean()), 4),
                max_abs_diff_curve=float((curve - dc[:, 1:]).abs().max()),
                max_abs_diff_auc=float((auc_q - trapezoid(dc)).abs().max()),
                spearman_per_image_auc=None if np.isnan(rho) else round(rho, 4),
            )
            if road_error is None:
                try:
                    q.ROAD(percentages=[25.0], normalise=False, disable_warnings=True)(
                        model=model,
                        x_batch=x[:1].numpy(),
                        y_batch=y[:1].numpy(),
                        a_batch=an[:1],
                        channel_first=True,
                        device="cpu",
                        batch_size=1,
                    )
                    road_error = "ran"
                except Exception as exc:  # noqa: BLE001  # record why Quantus' ROAD fails
                    road_error = f"{type(exc).__name__}: {exc}"[:200]
        methods[name] = row
        print(name, json.dumps(row), flush=True)
    result = {
        "command": "python benchmarks/bench_road_photos.py --photos " + args.photos,
        "photos": [p.name for p in ph],
        "predicted": y.tolist(),
        "quantus": getattr(q, "__version__", None),
        "quantus_road_on_rgb": road_error,
        "settings": {
            "percentages": PCT,
            "noise": 0.01,
            "steps": STEPS,
            "gfi_steps": [5, 25],
            "ig_steps": 16,
            "deletion_baseline": 0.0,
            "insertion_baseline": "blur 5",
        },
        "methods": methods,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    OUT_PHOTOS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT_PHOTOS}")
    if OUT.exists():
        print(write_table(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
