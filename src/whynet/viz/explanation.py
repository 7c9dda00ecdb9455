"""An :class:`~whynet.core.Explanation` as pictures, from what it carries: the report's
figures (:func:`explanation_figures`), its notebook view (``Explanation._repr_html_`` ->
:func:`explanation_html`) and a matplotlib drawing (:func:`show`).

What is drawn follows the explanation: maps over the images in ``extras["inputs"]`` (titled
with ``meta["files"]`` and the explained class from ``meta["classes"]``), highlighted tokens
for ``meta["tokens"]``, molecules for SMILES (``meta["smiles"]``), as ``whynet run`` stores
them.
"""

from __future__ import annotations

from typing import Any

import torch

from whynet.report.sections import Figure

#: inputs drawn at most per explanation
LIMIT = 32


def _class(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


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


def _names(e: Any) -> list[str]:
    files = e.meta.get("files")
    return [str(f) for f in files] if files else [f"#{i}" for i in range(len(e))]


def token_weights(e: Any, i: int, n_tokens: int) -> torch.Tensor | None:
    """Input ``i``'s weight per token in [-1, 1] (a (T, D) layer: |values| summed over D)."""
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


def _image_figures(e: Any, label: str, inputs: Any, limit: int) -> list[Figure]:
    from whynet.viz.images import grid_png, heatmap, overlay

    maps = image_maps(e)
    if maps is None:
        return []
    n = min(len(maps), limit)
    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and len(inputs) == len(maps):
        imgs = [overlay(inputs[i], maps[i]) for i in range(n)]
    else:
        imgs = [heatmap(maps[i]) for i in range(n)]
    names, classes = _names(e), e.meta.get("classes")
    titles = [
        names[i] + ("" if e.target is None else f"\nexplained: {_class(int(e.target[i]), classes)}")
        for i in range(n)
    ]
    return [
        Figure(
            caption=f"{label}: {e.method} on {e.layer or 'the input'}; title = input, explained "
            "class",
            png=grid_png(imgs, ncol=6, titles=titles, size=1.8),
        )
    ]


def _smiles_figure(text: str, tokens: list[str], w: Any, caption: str) -> Figure | None:
    """The molecule with atoms coloured by the tokens' weights (characters mapped to atoms by
    :func:`whynet.viz.smiles_atom_weights`); None when RDKit cannot draw it."""
    from whynet.viz.molecules import smiles_svg

    cw = char_weights(text, tokens, w)
    if cw is None:
        return None
    try:
        svg = smiles_svg(text, cw)
    except (ValueError, ImportError):
        return None
    return Figure(caption=f"{caption} (atoms: red = positive, blue = negative weight)", svg=svg)


def _text_figures(e: Any, label: str, limit: int) -> list[Figure]:
    from whynet.viz.text import highlight_text

    tokens, texts = e.meta.get("tokens"), e.meta.get("texts")
    if not tokens or not texts:
        return []
    names, classes = _names(e), e.meta.get("classes")
    figs: list[Figure] = []
    for i in range(min(len(e), len(tokens), limit)):
        w = token_weights(e, i, len(tokens[i]))
        if w is None:
            return []
        t = "" if e.target is None else f" (class {_class(int(e.target[i]), classes)})"
        caption = f"{label}: {names[i]}{t}: {texts[i]}"
        mol = _smiles_figure(texts[i], tokens[i], w, caption) if e.meta.get("smiles") else None
        figs.append(mol or Figure(caption=caption, html=highlight_text(tokens[i], w)))
    return figs


def explanation_figures(
    e: Any, label: str = "", inputs: Any = None, limit: int = LIMIT
) -> list[Figure]:
    """The report's figures of ``e``: maps over the images (``inputs``, default
    ``e.extras["inputs"]``), or highlighted tokens / molecules; none for other values
    (representer values, surrogate probabilities: tables show those)."""
    label = label or e.method
    if e.meta.get("tokens"):
        return _text_figures(e, label, limit)
    return _image_figures(e, label, e.extras.get("inputs") if inputs is None else inputs, limit)


def explanation_html(e: Any, inputs: Any = None, limit: int = 8) -> str:
    """An HTML fragment for notebooks (``Explanation._repr_html_``): a summary line and the
    same figures as the report (escaped and allow-listed as there)."""
    import html

    from whynet.report.html import figure_html

    shape = "x".join(map(str, e.values.shape))
    head = (
        f"<p><b>Explanation</b> {html.escape(e.method or '?')} on "
        f"{html.escape(e.layer or 'the input')}: values {shape}, {len(e)} input(s)</p>"
    )
    figs = explanation_figures(e, inputs=inputs, limit=limit)
    return "<div>" + head + "".join(figure_html(f) for f in figs) + "</div>"


def show(e: Any, inputs: Any = None, limit: int = 8) -> Any:
    """Draw ``e`` with matplotlib and return the figure: maps over ``inputs`` (default
    ``e.extras["inputs"]``; heatmaps without), or each input's tokens on a background whose
    opacity is the token's weight (orange positive, blue negative)."""
    import matplotlib.pyplot as plt

    from whynet.viz.images import heatmap, overlay

    tokens = e.meta.get("tokens")
    names, classes = _names(e), e.meta.get("classes")
    n = min(len(e), limit)
    if tokens:
        fig, axes = plt.subplots(n, 1, figsize=(8, 0.6 * n + 0.4), squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            ax.axis("off")
            w = token_weights(e, i, len(tokens[i]))
            ax.set_title(names[i], fontsize=8, loc="left")
            if w is None:
                continue
            x = 0.0
            for tok, v in zip(tokens[i], w.tolist()):
                rgb = (1.0, 0.55, 0.0) if v >= 0 else (0.12, 0.43, 1.0)
                t = ax.text(x, 0.5, tok, fontsize=9, va="center", transform=ax.transAxes)
                t.set_bbox({"facecolor": (*rgb, min(1.0, abs(v))), "edgecolor": "none"})
                x += 0.012 * (len(tok) + 1)
        return fig
    maps = image_maps(e)
    if maps is None:
        raise ValueError(
            f"cannot draw values of shape {tuple(e.values.shape)} ({e.method}): show draws "
            "maps over images and token weights; see e.values for the numbers"
        )
    inputs = e.extras.get("inputs") if inputs is None else inputs
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.axis("off")
        have = isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and len(inputs) > i
        ax.imshow(overlay(inputs[i], maps[i]) if have else heatmap(maps[i]))
        t = "" if e.target is None else f"\n{_class(int(e.target[i]), classes)}"
        ax.set_title(names[i] + t, fontsize=8)
    return fig
