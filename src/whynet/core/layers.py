"""Layer resolution by dotted module path (``"features.3"``, ``"layer4.1.conv2"``)."""

from __future__ import annotations

import difflib

from torch import nn


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable submodule name of ``model`` (dotted paths, root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """Return the submodule at dotted path ``name``.

    Raises
    ------
    ValueError
        If no submodule has that name; the message lists the closest existing names.
    """
    if isinstance(name, nn.Module):
        if not any(m is name for m in model.modules()):
            raise ValueError("the given layer module is not part of this model")
        return name
    if not isinstance(name, str):
        raise TypeError(f"layer must be a dotted module path (str), got {type(name).__name__}")
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"some layers: {', '.join(names[:8])}"
    raise ValueError(f"unknown layer {name!r} in {type(model).__name__}; {hint}")


def layer_name_of(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of ``module`` inside ``model`` (inverse of :func:`resolve_layer`)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module is not part of this model")
