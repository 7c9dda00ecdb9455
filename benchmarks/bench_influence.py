"""Influence-directed explanations: experiments and speed/memory against Captum 0.9.

Run from the repository root::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296 \\
        .venv/bin/python benchmarks/bench_influence.py [--quick] [--only speed,memory,...]

Parts (``--only``):

- ``classes``: fashion-cnn on the Fashion-MNIST test set: top channels per class (class-wide
  influence), class-wide vs instance top-k overlap.
- ``essence``: essence table for every class at k in {1, 3, 5, 10}: reduced vs full vs random-k.
- ``comparative``: shirt(6) vs T-shirt/top(0), pullover(2) vs coat(4): separating channels.
- ``speed``: time of whynet vs Captum ``InternalInfluence`` / ``LayerConductance`` on the same
  model, layer, inputs and steps (fashion-cnn 1,000 inputs x 50 steps; efficientnet-lite0
  8 photos x 32 steps), medians over repeats, interleaved, same process; max |difference|.
- ``figures``: the tour's figures/tables (comparative channels, EfficientNet-Lite0 channels)
  as PNG files under ``benchmarks/results/influence_figures/``.
- ``memory``: peak RSS growth (VmHWM from /proc, each configuration in a fresh subprocess,
  above the RSS after setup) as steps go 16 -> 256.
- ``point``: a ``Point`` DoI vs its hand-written floor (issue 17).
- ``linear_at``: ``LinearPath(at=features.block3)`` (integrated gradients in the layer's
  space; the core's cut runs only the layers above it per step) vs Captum
  ``LayerIntegratedGradients`` on the same quantity, 40 inputs x 32 steps (issue 17).
- ``memory_at``: peak RSS growth of the two as steps go 16 -> 256 (as ``memory``).

Prints JSON and writes ``benchmarks/results/influence.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from whynet.core import Comparative, LinearPath, capture, frozen_eval, predict_logits
from whynet.influence import InternalInfluence, essence, top_neurons

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "influence.json"
FASHION_LAYER = "features.block3"
EFFNET_LAYER = "_blocks.15"


# ------------------------------------------------------------------------------- setup
ALLOW_UNTRAINED = os.environ.get("WHYNET_BENCH_UNTRAINED") == "1"
STANDIN = os.environ.get("WHYNET_BENCH_FASHION_WEIGHTS")  # a state_dict, zoo architecture
ZOO_WIDTHS = (24, 48, 96, 128)
ABLATION = os.environ.get("WHYNET_BENCH_ABLATION", "mean")  # essence: "mean" (default) or "zero"


def fashion() -> tuple[torch.nn.Module, dict[str, Any]]:
    """The zoo's fashion-cnn. While its weights are missing: a stand-in state_dict of the same
    architecture (WHYNET_BENCH_FASHION_WEIGHTS), or untrained (WHYNET_BENCH_UNTRAINED=1, timings
    and equality only); either is recorded in the output as ``weights``."""
    from whynet.zoo import load_model
    from whynet.zoo.architectures import FashionCNN

    try:
        model, info = load_model("fashion-cnn")
    except FileNotFoundError:
        if STANDIN:
            model = FashionCNN(ZOO_WIDTHS)
            model.load_state_dict(torch.load(STANDIN, weights_only=True))
            meta = Path(STANDIN).with_name("meta.json")
            extra = json.loads(meta.read_text()) if meta.exists() else {}
            return model.eval(), {"weights": f"STAND-IN {STANDIN} {extra}"}
        if not ALLOW_UNTRAINED:
            raise
        torch.manual_seed(0)
        return FashionCNN(ZOO_WIDTHS).eval(), {"weights": "UNTRAINED (zoo weights missing)"}
    return model.eval(), info


def _weights_tag() -> str:
    return str(fashion()[1].get("weights", "zoo"))


def fashion_data(split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from whynet.data import fashion_mnist

    ds = fashion_mnist(split)
    x, y = ds.tensors()
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y, list(ds.class_names)


def effnet() -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    from whynet.data import photos
    from whynet.zoo import imagenet_preprocess, load_model

    model, info = load_model("efficientnet-lite0")
    ph = photos()
    return model.eval(), imagenet_preprocess([p.image for p in ph]), [p.name for p in ph]


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------- runners
def run_ours(model, layer, x, target, steps, batch_size, multiply=False):  # type: ignore[no-untyped-def]
    return (
        InternalInfluence(
            model,
            layer,
            doi=LinearPath(0.0, steps=steps),
            multiply_activation=multiply,
            batch_size=batch_size,
        )
        .explain(x, target=target)
        .values
    )


def layer_baseline(model, layer, x):  # type: ignore[no-untyped-def]
    """``h(0)``: the layer's activation for all-zero inputs, Captum LIG's baseline there. One
    zero input per input, as Captum computes it: a 1-row batch rounds the convolutions
    differently (1 ulp), which on this ReLU network moved one input by 1.2e-5."""
    with torch.no_grad(), capture(model, layer) as cap:
        model(torch.zeros_like(x))
    return cap[layer]


def run_ours_at(model, layer, x, target, steps, batch_size, cut=True):  # type: ignore[no-untyped-def]
    """Integrated gradients in ``layer``'s space from ``h(0)`` (Captum LIG's quantity)."""
    e = InternalInfluence(
        model,
        layer,
        doi=LinearPath(layer_baseline(model, layer, x), steps=steps, at=layer),
        multiply_activation=True,
        batch_size=batch_size,
        progress=False,
    )
    e._use_cut = cut
    out = e.explain(x, target=target)
    return out.values, out.meta["path"]


def run_captum_lig(model, layer, x, target, steps, internal_batch_size):  # type: ignore[no-untyped-def]
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(model, model.get_submodule(layer))
    with frozen_eval(model):
        return lig.attribute(
            x,
            baselines=torch.zeros_like(x),
            target=target,
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=internal_batch_size,
        ).detach()


def run_captum(kind, model, layer, x, target, steps, internal_batch_size, chunk):  # type: ignore[no-untyped-def]
    """Captum attribute over input chunks of ``chunk`` (so a default call fits in memory)."""
    from captum.attr import InternalInfluence as CII
    from captum.attr import LayerConductance

    cls = CII if kind == "internal_influence" else LayerConductance
    algo = cls(model, model.get_submodule(layer))
    outs = []
    with frozen_eval(model):
        for i in range(0, len(x), chunk):
            outs.append(
                algo.attribute(
                    x[i : i + chunk],
                    baselines=0.0,
                    target=target[i : i + chunk],
                    n_steps=steps,
                    internal_batch_size=internal_batch_size,
                ).detach()
            )
    return torch.cat(outs)


def speed_case(
    name: str,
    model,
    layer,
    x,
    steps,
    batch_size,
    captum_chunk,
    repeats,  # type: ignore[no-untyped-def]
    captum_ibs=None,
    extra=(),
):
    """Interleaved timings; Captum runs on input chunks of ``captum_chunk`` with
    ``internal_batch_size=captum_ibs`` (None = its default: all steps of a chunk at once)."""
    target = predict_logits(model, x).argmax(1)
    rows_per_pass = captum_chunk * steps if captum_ibs is None else captum_ibs
    tag = f"internal_batch_size={captum_ibs}, {rows_per_pass} rows/pass"
    rows = {
        f"whynet InternalInfluence (batch_size={batch_size})": lambda: run_ours(
            model, layer, x, target, steps, batch_size
        ),
        f"captum InternalInfluence ({tag})": lambda: run_captum(
            "internal_influence", model, layer, x, target, steps, captum_ibs, captum_chunk
        ),
        f"captum LayerConductance ({tag})": lambda: run_captum(
            "conductance", model, layer, x, target, steps, captum_ibs, captum_chunk
        ),
    }
    for bs in extra:
        rows[f"whynet InternalInfluence (batch_size={bs})"] = lambda bs=bs: run_ours(
            model, layer, x, target, steps, bs
        )
    # warm-up at full pass size (oneDNN primitives, allocator pools grown): otherwise the
    # first method timed pays the page faults of the largest buffers
    xs, ts = x[:captum_chunk], target[:captum_chunk]
    run_ours(model, layer, xs, ts, steps, max(batch_size, *extra, len(xs) * steps))
    for kind in ("internal_influence", "conductance"):
        run_captum(kind, model, layer, xs, ts, steps, captum_ibs, captum_chunk)
    times: dict[str, list[float]] = {k: [] for k in rows}
    results: dict[str, torch.Tensor] = {}
    names = list(rows)
    for rep in range(repeats):  # interleaved, order rotated: load and warm-up hit all alike
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            fn = rows[k]
            t, out = timed(fn)
            times[k].append(t)
            results[k] = out
            print(json.dumps({"case": name, "method": k, "s": round(t, 2)}), file=sys.stderr)
    first = next(iter(rows))
    ours = results[first]
    base = statistics.median(times[first])
    table = []
    for k in rows:
        med = statistics.median(times[k])
        entry: dict[str, Any] = {
            "method": k,
            "median_s": round(med, 3),
            "runs_s": [round(t, 3) for t in times[k]],
            "time_vs_whynet": round(med / base, 2),
        }
        if "InternalInfluence" in k:
            entry["max_abs_diff_vs_whynet"] = float((results[k] - ours).abs().max())
            entry["max_abs_value"] = float(ours.abs().max())
        table.append(entry)
    return {
        "case": name,
        "layer": layer,
        "inputs": len(x),
        "steps": steps,
        "rule": "gausslegendre",
        "captum_input_chunk": captum_chunk,
        "repeats": repeats,
        "rows": table,
        "note": "LayerConductance is attribution space along the input path; its numbers "
        "differ from InternalInfluence by design (timing only)",
    }


def part_speed(quick: bool) -> list[dict[str, Any]]:
    out = []
    model, info = fashion()
    x, _, _ = fashion_data("test", 100 if quick else 1000)
    case = speed_case(
        "fashion-cnn", model, FASHION_LAYER, x, 50, 500, 10, 1 if quick else 2, extra=(64,)
    )
    case["weights"] = info.get("weights", "zoo")
    out.append(case)
    _partial("speed", out)
    try:
        em, ex, _ = effnet()
    except (ImportError, FileNotFoundError) as e:  # weights/package missing
        out.append({"case": "efficientnet-lite0", "skipped": str(e)})
    else:
        # Captum's default (all 8 x 32 rows in one pass) needs > 20 GB here: give it 64 rows
        # per pass like ours
        out.append(
            speed_case(
                "efficientnet-lite0",
                em,
                EFFNET_LAYER,
                ex[: 2 if quick else 8],
                32,
                64,
                2,
                1 if quick else 2,
            )
        )
    return out


_CURRENT: dict[str, Any] = {}


def _partial(part: str, value: Any) -> None:
    """Write what a long part has so far (a crash or timeout keeps it)."""
    if _CURRENT:
        _CURRENT[part] = value
        Path(_CURRENT["_out"]).write_text(
            json.dumps({k: v for k, v in _CURRENT.items() if k != "_out"}, indent=1)
        )


# ------------------------------------------------------------------------------- memory
def _mem_child(args: argparse.Namespace) -> None:
    """Run one configuration and print its peak RSS growth (kB) above the post-setup RSS."""
    if args.model == "fashion-cnn":
        model, _ = fashion()
        x, _, _ = fashion_data("test", args.n)
    else:
        model, x, _ = effnet()
        x = x[: args.n]
    target = predict_logits(model, x).argmax(1)
    layer = FASHION_LAYER if args.model == "fashion-cnn" else EFFNET_LAYER
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_kb()
    t0 = time.perf_counter()
    if args.method == "whynet":
        run_ours(model, layer, x, target, args.steps, args.batch_size)
    elif args.method == "whynet_at":
        run_ours_at(model, layer, x, target, args.steps, args.batch_size)
    elif args.method == "captum_lig":
        run_captum_lig(model, layer, x, target, args.steps, None)
    else:
        kind = "internal_influence" if args.method == "captum_ii" else "conductance"
        run_captum(kind, model, layer, x, target, args.steps, None, len(x))
    dt = time.perf_counter() - t0
    print(json.dumps({"peak_mb": (rss_kb("VmHWM") - before) / 1024, "time_s": dt}))


def part_memory(
    quick: bool, methods: tuple[str, ...] = ("whynet", "captum_ii", "captum_lc")
) -> list[dict[str, Any]]:
    steps_list = [16, 64] if quick else [16, 64, 256]
    n = 16
    rows = []
    for method in methods:
        for steps in steps_list:
            cmd = [
                sys.executable,
                __file__,
                "--_mem-child",
                "--model",
                "fashion-cnn",
                "--threads",
                str(torch.get_num_threads()),
                "--method",
                method,
                "--steps",
                str(steps),
                "--n",
                str(n),
                "--batch-size",
                "64",
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if res.returncode != 0:
                rows.append({"method": method, "steps": steps, "error": res.stderr[-400:]})
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "method": method,
                    "steps": steps,
                    "inputs": n,
                    "peak_rss_growth_mb": round(r["peak_mb"], 1),
                    "time_s": round(r["time_s"], 3),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    _, info = fashion()
    return [
        {
            "case": "fashion-cnn",
            "weights": info.get("weights", "zoo"),
            "layer": FASHION_LAYER,
            "whynet_batch_size": 64,
            "methods": list(methods),
            "captum": "defaults (internal_batch_size=None)",
            "measure": "VmHWM - VmRSS after setup, KiB->MiB, fresh subprocess per row",
            "rows": rows,
        }
    ]


# ------------------------------------------------------------------------------- experiments
def part_classes(quick: bool) -> dict[str, Any]:
    model, _ = fashion()
    xtr, ytr, names = fashion_data("train", 6000 if quick else 20000)
    xte, yte, _ = fashion_data("test", 1000 if quick else 10000)
    k = 5
    res: dict[str, Any] = {
        "layer": FASHION_LAYER,
        "reduce": "sum",
        "k": k,
        "classes": [],
        "weights": _weights_tag(),
    }
    expl = InternalInfluence(model, FASHION_LAYER, batch_size=256)
    for c in range(10):
        cw = InternalInfluence(model, FASHION_LAYER, qoi=c, batch_size=256).explain_dataset(
            xtr, ytr, cls=c
        )
        top_c, sc = top_neurons(cw, k)
        sel = (yte == c).nonzero().flatten()[: (50 if quick else 200)]
        inst = expl.explain(xte[sel], target=c)
        per, _ = top_neurons(inst, k, per_input=True)
        overlap = [len(set(p.tolist()) & set(top_c.tolist())) / k for p in per]
        # how often the instance's top-1 channel is among the class-wide top-k
        top1_in = [int(p[0]) in set(top_c.tolist()) for p in per]
        res["classes"].append(
            {
                "class": c,
                "name": names[c],
                "n_train": cw.meta["n_examples"],
                "top_channels": top_c.tolist(),
                "scores": [round(float(s), 4) for s in sc],
                "instances": len(sel),
                "mean_topk_overlap": round(statistics.mean(overlap), 3),
                "instance_top1_in_class_topk": round(statistics.mean(top1_in), 3),
            }
        )
        print(json.dumps(res["classes"][-1]), file=sys.stderr)
    # chance overlap of two random k-subsets of C channels: k / C
    res["chance_overlap"] = k / int(cw.values.shape[1])
    return res


def part_essence(quick: bool) -> dict[str, Any]:
    model, _ = fashion()
    xtr, ytr, names = fashion_data("train", 6000 if quick else 20000)
    xte, yte, _ = fashion_data("test", 1000 if quick else 2000)
    rows = []
    for c in range(10):
        r = essence(
            model,
            FASHION_LAYER,
            c,
            [1, 3, 5, 10],
            xte,
            yte,
            influence_data=xtr,
            influence_labels=ytr,
            ablation=ABLATION,
            random_draws=3,
            seed=0,
            batch_size=500,
        )
        for row in r.rows:
            rows.append(
                {
                    "class": c,
                    "name": names[c],
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
        _partial("essence", {"rows": rows})
    return {
        "layer": FASHION_LAYER,
        "ablation": ABLATION,
        "influence_data": f"train ({len(xtr)})",
        "weights": _weights_tag(),
        "eval": f"test ({len(xte)})",
        "rows": rows,
    }


def part_comparative(quick: bool) -> dict[str, Any]:
    model, _ = fashion()
    xtr, ytr, names = fashion_data("train", 6000 if quick else 20000)
    out = []
    for a, b in ((6, 0), (2, 4)):
        e = InternalInfluence(
            model, FASHION_LAYER, qoi=Comparative(a, b), batch_size=256
        ).explain_dataset(xtr, ytr, cls=[a, b])
        pos, sp = top_neurons(e, 5)
        neg, sn = top_neurons(-e.values, 5)
        out.append(
            {
                "pair": f"{names[a]} vs {names[b]}",
                "classes": [a, b],
                "channels_for_first": pos.tolist(),
                "scores_first": [round(float(s), 4) for s in sp],
                "channels_for_second": neg.tolist(),
                "scores_second": [round(-float(s), 4) for s in sn],
            }
        )
    return {
        "layer": FASHION_LAYER,
        "qoi": "y[a] - y[b]",
        "doi": "train examples of a and b",
        "weights": _weights_tag(),
        "pairs": out,
    }


def part_figures(quick: bool) -> dict[str, Any]:
    """Neuron visualisations for the comparative pairs and EfficientNet (PNG files)."""
    import whynet.zoo as zoo
    from whynet.tour import influence as tour

    folder = OUT.parent / "influence_figures"
    folder.mkdir(parents=True, exist_ok=True)
    original = zoo.load_model
    model, info = fashion()
    if "weights" in info:  # zoo weights missing: the tour gets the same stand-in
        zoo.load_model = lambda name, *a, **k: (  # type: ignore[assignment]
            (model, info) if name == "fashion-cnn" else original(name, *a, **k)
        )
    try:
        sec = tour.run(folder, fast=True, progress=False)  # the tour's sizes; figures only
    finally:
        zoo.load_model = original
    files = []
    for i, fig in enumerate(sec.figures):
        if fig.png is not None:
            path = folder / f"figure{i + 1}.png"
            path.write_bytes(fig.png)
            files.append({"file": str(path.relative_to(ROOT)), "caption": fig.caption})
    tables = [{"caption": t.caption, "columns": t.columns, "rows": t.rows} for t in sec.tables]
    return {
        "figures": files,
        "tables": tables,
        "notes": sec.notes,
        "metrics": sec.metrics,
        "weights": str(info.get("weights", "zoo")),
    }


def part_point(quick: bool) -> dict[str, Any]:
    """Issue 17: a ``Point`` DoI at ``features.block3`` vs its hand-written floor (a forward
    hook that makes the layer's output a leaf + one ``autograd.grad`` of the predicted logits),
    same inputs, alternated repeats, one process; values must be equal."""
    model, info = fashion()
    x = fashion_data("test", 50 if quick else 200)[0]
    layer = dict(model.named_modules())[FASHION_LAYER]
    ours = InternalInfluence(model, FASHION_LAYER, batch_size=len(x), progress=False)

    def floor() -> torch.Tensor:
        slot: list[torch.Tensor] = []

        def hook(m: Any, a: Any, out: torch.Tensor) -> torch.Tensor:
            leaf = out.detach().requires_grad_(True)
            slot.append(leaf)
            return leaf

        h = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = model(x)
                q = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (g,) = torch.autograd.grad(q, slot[0])
        finally:
            h.remove()
        return g

    with frozen_eval(model):
        ref = floor()
        got = ours.explain(x).values
        times: dict[str, list[float]] = {"floor": [], "whynet": []}
        for _ in range(3 if quick else 7):
            for name, fn in (("floor", floor), ("whynet", lambda: ours.explain(x))):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "weights": str(info.get("weights", "zoo")),
        "layer": FASHION_LAYER,
        "n_inputs": len(x),
        "floor_s": round(med["floor"], 4),
        "whynet_s": round(med["whynet"], 4),
        "ratio_whynet_over_floor": round(med["whynet"] / med["floor"], 3),
        "max_abs_diff": float((got - ref).abs().max()),
        "runs": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }


def linear_at_floor(model, x, target, steps):  # type: ignore[no-untyped-def]
    """The least work for the linear_at quantity on fashion-cnn, written by hand: blocks 1-3
    once for the inputs and the zero baselines, all points in one batch through block4 + head,
    one ``autograd.grad``, the Gauss-Legendre weights, times ``z - h(0)``."""
    from whynet.core import path_rule

    below, above = model.features[:3], model.features[3]
    alphas, weights = path_rule("gausslegendre", steps)
    with torch.no_grad():
        z, z0 = below(x), below(torch.zeros_like(x))
        pts = torch.cat([z0 + float(a) * (z - z0) for a in alphas]).requires_grad_(True)
    with torch.enable_grad():
        out = model.head(model.flatten(model.pool(above(pts))))
        q = out.gather(1, target.repeat(steps)[:, None]).sum()
        (g,) = torch.autograd.grad(q, pts)
    g = g.view(steps, *z.shape).double() * weights.view(-1, 1, 1, 1, 1)
    return (g.sum(0) * (z - z0).double()).float()


def part_linear_at(quick: bool) -> dict[str, Any]:
    """Issue 17: ``LinearPath(at=L)`` with multiply_activation (integrated gradients in L's
    space from ``h(0)``) vs Captum ``LayerIntegratedGradients`` (baseline input 0), the same
    quantity, 40 fashion-cnn test images x 32 Gauss-Legendre steps at ``features.block3``;
    whynet with the cut (only the layers above L per step) and without it (full forward per
    step, L's output replaced), all rows in one pass and 320 rows per pass; interleaved
    repeats with the order rotated, one process."""
    model, info = fashion()
    x = fashion_data("test", 40)[0]
    steps, layer, n_rows = 32, FASHION_LAYER, 40 * 32
    target = predict_logits(model, x).argmax(1)
    rows: dict[str, Any] = {
        f"whynet cut (batch_size={n_rows})": lambda: run_ours_at(
            model, layer, x, target, steps, n_rows
        ),
        f"captum LayerIntegratedGradients (internal_batch_size=None, {n_rows} rows/pass)": (
            lambda: (run_captum_lig(model, layer, x, target, steps, None), "")
        ),
        f"whynet full forward (batch_size={n_rows}, cut disabled)": lambda: run_ours_at(
            model, layer, x, target, steps, n_rows, cut=False
        ),
        "whynet cut (batch_size=320)": lambda: run_ours_at(model, layer, x, target, steps, 320),
        "captum LayerIntegratedGradients (internal_batch_size=320)": lambda: (
            run_captum_lig(model, layer, x, target, steps, 320),
            "",
        ),
    }
    rows["floor (hand-written: blocks 1-3 once, block4 + head per point, one grad)"] = lambda: (
        linear_at_floor(model, x, target, steps),
        "",
    )
    for fn in rows.values():  # warm-up: allocator pools and oneDNN primitives for each
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    results: dict[str, Any] = {}
    names = list(rows)
    for rep in range(3 if quick else 7):
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            t, results[k] = timed(rows[k])
            times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = results[names[1]][0]  # Captum, all rows in one pass
    table = [
        {
            "method": k,
            "median_s": round(med[k], 4),
            "runs_s": [round(t, 4) for t in times[k]],
            "max_abs_diff_vs_captum": float((results[k][0] - ref).abs().max()),
            **({"path": results[k][1]} if results[k][1] else {}),
        }
        for k in names
    ]
    return {
        "weights": str(info.get("weights", "zoo")),
        "layer": layer,
        "inputs": len(x),
        "steps": steps,
        "rule": "gausslegendre",
        "quantity": "IG in the layer's space from h(0): (z - h(0)) * sum_s w_s grad(z_s)",
        "max_abs_value": float(ref.abs().max()),
        "rows": table,
        "captum_over_whynet_cut_same_rows_per_pass": {
            str(n_rows): round(med[names[1]] / med[names[0]], 3),
            "320": round(med[names[4]] / med[names[3]], 3),
        },
        "full_forward_over_cut": round(med[names[2]] / med[names[0]], 3),
        "whynet_cut_over_floor": round(med[names[0]] / med[names[5]], 3),
    }


PARTS = {
    "classes": part_classes,
    "essence": part_essence,
    "comparative": part_comparative,
    "figures": part_figures,
    "speed": part_speed,
    "memory": part_memory,
    "point": part_point,
    "linear_at": part_linear_at,
    "memory_at": lambda quick: part_memory(quick, ("whynet_at", "captum_lig")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 = steadiest on a shared, loaded machine)",
    )
    ap.add_argument("--_mem-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="fashion-cnn", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="whynet", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._mem_child:
        _mem_child(args)
        return
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {
            "load_avg_at_start": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        },
        "quick": args.quick,
    }
    try:
        import captum

        result["machine"]["captum"] = captum.__version__
    except ImportError:
        result["machine"]["captum"] = None
    out = Path(args.out)
    if out.exists():  # keep parts from earlier runs unless re-run now
        try:
            result = {**json.loads(out.read_text()), **result}
        except json.JSONDecodeError:
            pass
    _CURRENT.update(result)
    _CURRENT["_out"] = str(out)
    for part in args.only.split(","):
        t, res = timed(lambda p=part: PARTS[p](args.quick))
        result[part] = res
        result.setdefault("part_seconds", {})[part] = round(t, 1)
        _CURRENT.update(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
