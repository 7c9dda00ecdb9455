"""``whynet fit`` and ``whynet explain --explainer``: one fitted method from the command line,
with the run's readers; parameters from the method's signature (``--param KEY=VALUE``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from whynet.cli import CLIError, save_and_report


def param_kwargs(
    method: str, pairs: Sequence[str] | None, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``--param key=value`` pairs as constructor (and ``fit``) arguments of ``method``, parsed
    with the types of the signature's defaults; the known names come from the signature."""
    from whynet.run.config import method_spec

    table: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--param must look like KEY=VALUE, got {pair!r}")
        table[key.strip().replace("-", "_")] = value
    spec = method_spec(method, {**(given or {}), **table, "method": method}, "--param")
    out = {**spec.params, **spec.fit_params}
    return {k: (given[k] if given and k in given and k not in table else v) for k, v in out.items()}


def _split_fit(method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from whynet.registry import get_explainer
    from whynet.run.config import method_parameters

    init, _ = method_parameters(get_explainer(method))
    return (
        {k: v for k, v in kwargs.items() if k in init},
        {k: v for k, v in kwargs.items() if k not in init},
    )


def fit_command(args: argparse.Namespace) -> Path:
    """``whynet fit``: fit one registered fitted method and save it to ``--out``."""
    from whynet.registry import method_info
    from whynet.run.config import MethodSpec
    from whynet.run.runner import check_layers, fit_explainer, prepare

    info = method_info(args.method)
    if not info.fitted:
        raise CLIError(
            f"method {args.method!r} needs no fitting; run `whynet explain --method "
            f"{args.method}` directly"
        )
    kwargs = param_kwargs(info.name, args.param)
    params, fit = _split_fit(info.name, kwargs)
    spec = MethodSpec(info.name, info.name, params, fit)
    ctx = prepare(
        args.model,
        Path(args.weights) if args.weights else None,
        None,
        args.data,
        size=_size(args.size),
        train_labels=Path(args.labels) if args.labels else None,
    )
    check_layers(ctx.model, spec, "--param")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {out}")
    explainer = fit_explainer(spec, ctx, "--param")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(explainer.save(out))


def _size(size: int | None) -> tuple[int, int] | None:
    return None if size is None else (size, size)


def method_of_file(path: Path) -> str:
    """The registered fitted method that wrote ``path``: the ``format`` entry of the file's
    safetensors header against each fitted class's ``_format`` (nothing else is read)."""
    from safetensors import safe_open

    from whynet.registry import registered

    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
    except Exception as e:  # safetensors raises its own error types for foreign files
        raise CLIError(f"{path}: not a safetensors file ({e})") from None
    known = {i.load()._format: i.name for i in registered() if i.fitted}
    if fmt not in known:
        raise CLIError(
            f"{path}: not a fitted explainer file (format {fmt!r}; fitted methods write "
            f"{', '.join(sorted(known))})"
        )
    return known[fmt]


def explain_fitted_command(args: argparse.Namespace) -> Path:
    """``whynet explain --explainer FILE``: a fitted explainer (from ``whynet fit``) on the
    inputs, read by the run's readers (images, text, SMILES, a factory)."""
    from whynet.registry import method_info
    from whynet.run.config import MethodSpec
    from whynet.run.runner import explain_data, prepare

    path = Path(args.explainer)
    if not path.is_file():
        raise CLIError(f"explainer file not found: {path}")
    if len(args.inputs) != 1:
        raise CLIError("--explainer takes one --inputs path (a folder or a file)")
    name = method_of_file(path)  # before any model or data is loaded
    if args.method and method_info(args.method).name != name:
        raise CLIError(f"{path} holds a fitted {name} explainer, not {args.method}")
    ctx = prepare(
        args.model,
        Path(args.weights) if args.weights else None,
        args.inputs[0],
        None,
        size=_size(args.size),
    )
    try:
        explainer = method_info(name).load().load(path, ctx.model)
    except ValueError as err:
        raise CLIError(str(err)) from None
    target: Any = None if args.target is None else int(args.target)
    spec = MethodSpec(name, name, {}, target=target)
    assert ctx.explain is not None
    e = explain_data(explainer, spec, ctx.explain, str(path))
    return save_and_report(e, Path(args.out), name, f"{args.model} with {path.name}")
