"""The metrics of a run's explanations: those that apply to each method and data kind, one
value per explained input (the report shows them per input with the mean)."""

from __future__ import annotations

from typing import Any

from whynet.viz.explanation import image_maps


def method_metrics(r: Any, ctx: Any, steps: int) -> dict[str, Any]:
    """Deletion / insertion AUC (Petsiuk et al. 2018) for image saliency maps (B, H, W); the
    pointing game (Zhang et al. 2016) where ``[data] boxes`` are given and the method draws a
    map on the image; surrogate fidelity for ``clusters`` (Liu & Arik 2020); the representer
    decomposition error |sum_i values_i - logit| (Yeh et al. 2018, Thm. 3.1)."""
    from whynet.core import predict_logits

    e, data = r.explanation, ctx.explain
    assert data is not None
    out: dict[str, Any] = {}
    if data.kind == "image" and e.values.dim() == 3 and e.values.shape[0] == len(data):
        from whynet.metrics import deletion_auc, insertion_auc

        for name, fn in (("deletion AUC", deletion_auc), ("insertion AUC", insertion_auc)):
            v = fn(ctx.model, data.x, e.values, target=e.target, steps=steps)
            out[name] = v.tolist()
    if data.kind == "image" and data.boxes is not None:
        maps = image_maps(e)
        if maps is not None and len(maps) == len(data):
            from whynet.metrics import pointing_game

            size = tuple(data.raw.shape[-2:]) if data.raw is not None else None
            out["pointing game"] = pointing_game(maps, data.boxes, size=size).tolist()
    if r.spec.method == "clusters":
        pred = predict_logits(ctx.model, data.x).argmax(1)
        agree = (e.values.argmax(1) == pred).double()
        out["surrogate fidelity"] = agree.tolist()
    if r.spec.method == "representer" and "logits" in e.extras:
        err = (e.values.double().sum(1) - e.extras["logits"].double()).abs()
        out["decomposition error"] = err.tolist()
    return out
