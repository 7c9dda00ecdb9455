"""The sections of a run's report: a reproducibility header, then one section per method whose
figures and tables name the inputs by file name and the classes by name."""

from __future__ import annotations

import platform
from typing import Any

import torch

from whynet.report import Section, Table
from whynet.run.config import RunConfig
from whynet.run.readers import Data
from whynet.viz.explanation import explanation_figures

MAX_FIGURES = 32


def class_name(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


def header(cfg: RunConfig, ctx: Any, results: list[Any], total: float) -> Section:
    import whynet

    versions = Table(
        caption="versions",
        columns=["package", "version"],
        rows=[
            ["whynet", whynet.__version__],
            ["torch", torch.__version__],
            ["python", platform.python_version()],
        ],
    )
    sums = Table(
        caption="sha256 of the model and data files",
        columns=["file", "sha256"],
        rows=[[k, v] for k, v in ctx.checksums.items()],
    )
    rows = [[k, round(v, 2)] for k, v in ctx.timings.items()]
    for r in results:
        rows += [[f"{r.spec.label}: {k}", round(v, 2)] for k, v in r.seconds.items()]
    rows.append(["total", round(total, 2)])
    timings = Table(caption="timings (s)", columns=["step", "seconds"], rows=rows)
    reused = [r.spec.label for r in results if r.reused]
    return Section(
        title="About this run",
        intro=f"config: {cfg.path}",
        tables=[versions, sums, timings],
        notes=[f"config file {cfg.path.name}:\n{cfg.text}"]
        + ([f"fitted explainers reused from the cache: {', '.join(reused)}"] if reused else []),
        metrics={"total_s": total},
    )


def _train_name(train: Data | None, i: int) -> str:
    if train is None:
        return f"#{i}"
    name = train.names[i]
    if train.texts is not None:
        name += f" {train.texts[i][:60]!r}"
    if train.labels is not None:
        name += f" [{class_name(int(train.labels[i]), train.classes)}]"
    return name


def _representer_table(e: Any, data: Data, train: Data | None, k: int = 3) -> Table:
    rows = []
    v = e.values.double()
    for i in range(min(len(data), MAX_FIGURES)):
        kk = min(k, v.shape[1])
        pos = v[i].topk(kk).indices.tolist()
        neg = (-v[i]).topk(kk).indices.tolist()
        rows.append(
            [
                data.names[i],
                class_name(int(e.target[i]), data.classes),
                "; ".join(f"{_train_name(train, j)} {float(v[i, j]):+.3g}" for j in pos),
                "; ".join(f"{_train_name(train, j)} {float(v[i, j]):+.3g}" for j in neg),
            ]
        )
    return Table(
        caption="representer values: the most excitatory and inhibitory training examples",
        columns=["input", "explained class", "excitatory", "inhibitory"],
        rows=rows,
    )


def _clusters_table(e: Any, data: Data, train: Data | None) -> Table:
    rows = []
    sim = e.extras.get("similar")
    for i in range(min(len(data), MAX_FIGURES)):
        p = e.values[i]
        c = int(p.argmax())
        near = "" if sim is None else "; ".join(_train_name(train, int(j)) for j in sim[i, :3])
        clusters = "" if "clusters" not in e.extras else str(e.extras["clusters"][i].tolist())
        rows.append(
            [data.names[i], class_name(c, data.classes), round(float(p[c]), 3), clusters, near]
        )
    return Table(
        caption="surrogate prediction, clusters per layer and the nearest training examples",
        columns=["input", "surrogate class", "p", "clusters", "nearest training examples"],
        rows=rows,
    )


def _metrics_table(r: Any, data: Data) -> Table | None:
    if not r.metrics:
        return None
    names = list(r.metrics)
    rows = [
        [data.names[i]] + [round(float(r.metrics[m][i]), 4) for m in names]
        for i in range(len(data))
    ]
    rows.append(["mean"] + [round(sum(r.metrics[m]) / len(r.metrics[m]), 4) for m in names])
    return Table(caption=f"{r.spec.label}: metrics per input", columns=["input", *names], rows=rows)


def method_section(r: Any, ctx: Any) -> Section:
    from whynet.registry import method_info

    e, data = r.explanation, ctx.explain
    info = method_info(r.spec.method)
    settings = Table(
        caption="settings",
        columns=["parameter", "value"],
        rows=[[k, str(v)] for k, v in sorted(e.params.items())],
    )
    s = Section(title=f"{r.spec.label} ({info.description})", intro=f"layer: {e.layer or '-'}")
    if data.kind in ("image", "tokens"):
        s.figures += explanation_figures(e, r.spec.label, inputs=data.raw, limit=MAX_FIGURES)
    if r.spec.method == "representer":
        s.tables.append(_representer_table(e, data, ctx.train))
    if r.spec.method == "clusters":
        s.tables.append(_clusters_table(e, data, ctx.train))
    m = _metrics_table(r, data)
    if m is not None:
        s.tables.append(m)
    s.tables.append(settings)
    files = [r.explanation_file.name] + ([r.fitted_file.name] if r.fitted_file else [])
    s.notes.append(
        f"files: {', '.join(files)}" + (" (fitted explainer reused)" if r.reused else "")
    )
    if r.spec.fitted is not None:
        s.notes.append(f"fitted explainer loaded from {r.spec.fitted}")
    s.notes += r.notes
    s.metrics = {k: sum(v) / len(v) for k, v in r.metrics.items() if isinstance(v, list) and v} | {
        "seconds": r.seconds
    }
    return s


def inputs_section(ctx: Any) -> Section:
    data = ctx.explain
    rows = []
    for i in range(len(data)):
        row = [data.names[i]]
        if data.texts is not None:
            row.append(data.texts[i])
        if data.labels is not None:
            row.append(class_name(int(data.labels[i]), data.classes))
        rows.append(row)
    cols = ["input"] + (["text"] if data.texts is not None else [])
    cols += ["label"] if data.labels is not None else []
    return Section(
        title="Inputs explained",
        tables=[Table(caption=f"{len(data)} inputs", columns=cols, rows=rows)],
    )


def metrics_section(results: list[Any]) -> Section | None:
    """One table per metric: every method that has it, with its mean over the inputs (the
    methods side by side; per-input values are in each method's section)."""
    names: dict[str, None] = {}
    for r in results:
        names |= dict.fromkeys(r.metrics)
    if not names:
        return None
    tables = []
    for m in names:
        rows = [
            [r.spec.label, r.spec.method, len(r.metrics[m]), round(_mean(r.metrics[m]), 4)]
            for r in results
            if r.metrics.get(m)
        ]
        tables.append(Table(caption=m, columns=["run", "method", "inputs", f"mean {m}"], rows=rows))
    return Section(
        title="Metrics by method",
        intro=METRICS_INTRO,
        tables=tables,
    )


METRICS_INTRO = (
    "Deletion AUC (lower is better) and insertion AUC (higher is better): the class "
    "probability as the most salient pixels are removed from / revealed on the image (Petsiuk "
    "et al. 2018). Pointing game: the share of maps whose maximum lies in the given box (Zhang "
    "et al. 2016). Surrogate fidelity: the surrogate predicts the model's class. Decomposition "
    "error: |sum of representer values - logit| (Yeh et al. 2018, Thm. 3.1)."
)


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def run_sections(cfg: RunConfig, ctx: Any, results: list[Any], total: float) -> list[Section]:
    metrics = metrics_section(results)
    return (
        [header(cfg, ctx, results, total), inputs_section(ctx)]
        + ([metrics] if metrics is not None else [])
        + [method_section(r, ctx) for r in results]
    )
