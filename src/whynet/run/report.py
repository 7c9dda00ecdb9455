"""The sections of a run's report: a reproducibility header, then one section per method whose
figures and tables name the inputs by file name and the classes by name."""

from __future__ import annotations

import platform
from typing import Any

import torch

from whynet.report import Figure, Section, Table
from whynet.run.config import RunConfig
from whynet.run.readers import Data

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


def image_maps(e: Any) -> torch.Tensor | None:
    """(B, h, w) maps to draw over the images: channels summed; a token layer's values (a
    ViT's (B, 1 + h*w, D) patch tokens) summed over hidden units and laid on the patch grid."""
    from whynet.core.layout import grid_side

    v = e.values.detach().float()
    if v.dim() == 3 and e.meta.get("neuron_dim") == 2:
        try:
            extra, side = grid_side(v.shape[1])
        except ValueError:
            return None  # tokens that are not patches: nothing to draw on an image
        return v[:, extra:].abs().sum(-1).reshape(v.shape[0], side, side)
    if v.dim() == 4:
        return v.abs().sum(1)
    return v if v.dim() == 3 else None


def _image_figures(e: Any, data: Data, label: str) -> list[Figure]:
    from whynet.viz import grid_png, overlay

    maps = image_maps(e)
    if maps is None or data.raw is None or len(maps) != len(data):
        return []
    n = min(len(maps), MAX_FIGURES)
    imgs = [overlay(data.raw[i], maps[i]) for i in range(n)]
    titles = []
    for i in range(n):
        t = "" if e.target is None else f"\nexplained: {class_name(int(e.target[i]), data.classes)}"
        titles.append(f"{data.names[i]}{t}")
    return [
        Figure(
            caption=f"{label}: {e.method} on {e.layer or 'the input'}; title = file, explained "
            "class",
            png=grid_png(imgs, ncol=6, titles=titles, size=1.8),
        )
    ]


def _token_weights(e: Any, i: int, n_tokens: int) -> torch.Tensor | None:
    v = e.values[i].detach().float()
    if v.dim() == 0 or v.shape[0] < n_tokens:
        return None
    w = v[:n_tokens]
    w = w.abs().flatten(1).sum(1) if w.dim() > 1 else w
    m = float(w.abs().max())
    return w / m if m > 0 else w


def char_weights(text: str, tokens: list[str], weights: Any) -> list[float] | None:
    """One weight per character of ``text`` from one per token: each token, found in order in
    the text (a WordPiece ``##`` prefix dropped), gives its weight to the characters it
    covers; tokens not in the text (``[CLS]``, ``<unk>``) and characters of no token get 0.
    None when no token is found."""
    out = [0.0] * len(text)
    pos, found = 0, False
    for tok, w in zip(tokens, [float(v) for v in weights]):
        piece = tok.removeprefix("##")
        at = text.find(piece, pos) if piece else -1
        if at < 0:
            continue
        out[at : at + len(piece)] = [w] * len(piece)
        pos, found = at + len(piece), True
    return out if found else None


def _smiles_figure(text: str, tokens: list[str], w: Any, caption: str) -> Figure | None:
    """The molecule with atoms coloured by the tokens' weights (characters mapped to atoms by
    :func:`whynet.viz.smiles_atom_weights`); None when RDKit cannot draw it."""
    from whynet.viz import smiles_svg

    cw = char_weights(text, tokens, w)
    if cw is None:
        return None
    try:
        svg = smiles_svg(text, cw)
    except (ValueError, ImportError):
        return None
    return Figure(caption=f"{caption} (atoms: red = positive, blue = negative weight)", svg=svg)


def _text_figures(e: Any, data: Data, label: str) -> list[Figure]:
    from whynet.viz import highlight_text

    figs: list[Figure] = []
    if data.tokens is None or data.texts is None:
        return figs
    for i in range(min(len(data), MAX_FIGURES)):
        toks = data.tokens[i]
        w = _token_weights(e, i, len(toks))
        if w is None:
            return []
        t = "" if e.target is None else f" (class {class_name(int(e.target[i]), data.classes)})"
        caption = f"{label}: {data.names[i]}{t}: {data.texts[i]}"
        mol = _smiles_figure(data.texts[i], toks, w, caption) if data.smiles else None
        figs.append(mol or Figure(caption=caption, html=highlight_text(toks, w)))
    return figs


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
    if data.kind == "image":
        s.figures += _image_figures(e, data, r.spec.label)
    elif data.kind == "tokens":
        s.figures += _text_figures(e, data, r.spec.label)
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
