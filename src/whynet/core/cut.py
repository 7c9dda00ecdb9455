"""A layer boundary the core can cut a model at: the rest of the network from a layer's output.

Slice the network at a layer, ``f = g o h`` with ``z = h(x)`` (Leino et al. 2018, Sec. 2). A
distribution of interest whose points live in ``z``'s space (``LinearPath(at=L)``, TruLens'
``LinearDoi(cut=L)``) changes only ``z``: ``h(x)`` is the same for every point of an input, so
only ``g`` needs to run per point. :func:`find_cut` builds ``g`` when the model is a clean
chain down to ``L``: at every level of the path of parents from the model to ``L``, the
parent's forward must compute its output from its child's output alone (checked on the
parent's code, not assumed):

* an ``nn.Sequential`` (its own ``forward``, not a subclass override) is the plain
  composition of its children: the children after the one on the path run in order;
* an ``nn.ModuleList`` / ``nn.ModuleDict`` is never called itself: its parent's forward must
  call the element on the path (``self.blocks[3](x)`` in a loop), read as below;
* any other parent is traced with ``torch.fx`` (its children as opaque calls) and its graph
  read: every operation after the call of the child on the path may use only that call's
  result, its descendants and the parent's constant attributes (parameters, buffers). A value
  computed before the child (a residual / skip connection, a second input, the input's shape)
  refuses the cut, as does a forward that cannot be traced, a child called twice, or hooks on a
  parent (the cut would skip them).

:func:`cut_for` then checks the cut on two inputs against the full forward with ``L``'s output
replaced by the same point (it must agree) and that ``L`` runs once and returns a tensor. Any
refusal is not an error: the caller falls back to the full forward with the output replaced
(always correct) and records which path ran.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from whynet.core.hooks import intervene, record_outputs
from whynet.core.inputs import ModelInputs, forward, take
from whynet.core.layers import resolve_layer


class NoCut(ValueError):
    """The model cannot be cut at the layer; the message says why."""


@dataclass(frozen=True)
class Cut:
    """The network above ``layer``: ``cut(z)`` is the model's raw output when ``layer``
    outputs ``z`` (the rest of each parent's forward, innermost parent first)."""

    layer: str
    #: dotted names of the modules the rest calls, in order (their submodules run too)
    modules: tuple[str, ...]
    stages: tuple[Callable[[Any], Any], ...]

    def __call__(self, z: torch.Tensor) -> Any:
        out: Any = z
        for stage in self.stages:
            out = stage(out)
        return out

    def runs(self, name: str) -> bool:
        """Whether the layer ``name`` runs inside the rest (so a hook on it fires there)."""
        return any(name == m or name.startswith(m + ".") for m in self.modules)

    def describe(self) -> str:
        return f"cut at {self.layer!r}: only {' -> '.join(self.modules) or 'nothing'} run per point"


class _Children(fx.Tracer):
    """Trace one module's own forward: every submodule call is recorded, not entered."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _compose(mods: Sequence[nn.Module]) -> Callable[[Any], Any]:
    def run(z: Any) -> Any:
        for m in mods:
            z = m(z)
        return z

    return run


def _rest_of(parent: nn.Module, where: str, child: str) -> tuple[Callable[[Any], Any], list[str]]:
    """The rest of ``parent``'s forward after its child ``child`` and the modules it calls."""
    prefix = f"{where}." if where else ""
    label = where or type(parent).__name__
    mine = parent.get_submodule(child)
    if type(parent).forward is nn.Sequential.forward and child in parent._modules:
        names = list(parent._modules)
        if sum(m is mine for m in parent._modules.values()) != 1:
            raise NoCut(f"{prefix}{child!r} is registered more than once in {label}")
        tail = names[names.index(child) + 1 :]
        mods = [parent._modules[n] for n in tail]
        return _compose([m for m in mods if m is not None]), [prefix + n for n in tail]
    try:
        with warnings.catch_warnings():  # a probe: the model's own warnings come when it runs
            warnings.simplefilter("ignore")
            graph = _Children().trace(parent)
    except Exception as e:  # dynamic control flow, unsupported calls: not a static chain
        raise NoCut(f"{label}.forward could not be traced ({type(e).__name__}: {e})") from None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == child]
    if len(calls) != 1:
        raise NoCut(f"{label}.forward calls {child!r} {len(calls)} times (once is needed)")
    after = {calls[0]}
    for n in graph.nodes:
        ins = n.all_input_nodes
        if n in after or not any(i in after for i in ins):
            continue
        early = [i for i in ins if i not in after and i.op != "get_attr"]
        if early:  # a skip connection, another input, or the input's shape
            raise NoCut(
                f"in {label}.forward, {n.name!r} reads {early[0].name!r}, computed before "
                f"{child!r}: the layers above do not depend on its output alone"
            )
        after.add(n)
    out = next(n for n in graph.nodes if n.op == "output")
    if out not in after:
        raise NoCut(f"{label}'s output does not depend on {child!r}")
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {calls[0]: new.placeholder("z")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in env:  # a constant attribute (get_attr) read after the cut
            env[a] = new.node_copy(a)
        return env[a]

    called = []
    for n in graph.nodes:
        if n in after and n is not calls[0]:
            env[n] = new.node_copy(n, arg)
            if n.op == "call_module":
                called.append(prefix + str(n.target))
    return fx.GraphModule(parent, new), called


def find_cut(model: nn.Module, layer: str) -> Cut:
    """The rest of ``model`` above ``layer`` (see the module docstring); raises
    :class:`NoCut` with the reason where the model is not a clean chain down to ``layer``."""
    resolve_layer(model, layer)  # the usual error with the closest names
    parts = layer.split(".")
    stages, modules = [], []
    depth, end = len(parts) - 1, len(parts)  # the child on the path is parts[depth:end]
    while depth >= 0:  # innermost parent first
        where = ".".join(parts[:depth])
        parent = model.get_submodule(where)
        if isinstance(parent, (nn.ModuleList, nn.ModuleDict)) and depth > 0:
            depth -= 1  # a container is never called: its parent calls the element itself
            continue
        if parent._forward_hooks or parent._forward_pre_hooks:
            raise NoCut(f"{where or 'the model'} has forward hooks, which the cut would skip")
        stage, called = _rest_of(parent, where, ".".join(parts[depth:end]))
        stages.append(stage)
        modules += called
        depth, end = depth - 1, depth
    return Cut(layer=layer, modules=tuple(modules), stages=tuple(stages))


def _tensors(raw: Any) -> list[torch.Tensor]:
    if isinstance(raw, torch.Tensor):
        return [raw]
    if isinstance(raw, (tuple, list)):
        return [t for r in raw for t in _tensors(r)]
    if isinstance(raw, Mapping):  # dicts, HF ModelOutput
        return [t for r in raw.values() for t in _tensors(r)]
    return []


def check_cut(model: nn.Module, cut: Cut, x: ModelInputs, z: torch.Tensor) -> None:
    """Raise :class:`NoCut` unless ``cut`` reproduces the full forward on (up to) two inputs
    ``x`` with ``layer``'s output ``z`` replaced by another point (``z / 2``), the layer runs
    once and returns a plain tensor. Call under ``frozen_eval`` (eval mode)."""
    rows = slice(0, min(2, len(z)))
    point = z[rows] * 0.5  # not the activation itself: the forward must depend on it alone
    with torch.no_grad():
        with record_outputs(model, cut.layer) as seen, intervene(model, {cut.layer: point}):
            full = forward(model, take(x, rows))
        if len(seen) != 1:
            raise NoCut(f"{cut.layer!r} ran {len(seen)} times in one forward (once is needed)")
        if not isinstance(seen[0], torch.Tensor):
            raise NoCut(f"{cut.layer!r} returns a {type(seen[0]).__name__}, not a tensor")
        try:
            mine = cut(point.clone())
        except Exception as e:  # the traced rest does not run on its own
            raise NoCut(f"the rest above {cut.layer!r} failed ({type(e).__name__}: {e})") from None
    a, b = _tensors(mine), _tensors(full)
    same = len(a) == len(b) and all(
        s.shape == t.shape
        and torch.allclose(s, t, rtol=1e-5, atol=1e-6 * float(t.abs().max().clamp_min(1)))
        for s, t in zip(a, b)
    )
    if not same:
        raise NoCut(f"the rest above {cut.layer!r} disagrees with the full forward")


def cut_for(
    model: nn.Module, layer: str, x: ModelInputs, z: torch.Tensor, reads: Sequence[str] = ()
) -> tuple[Cut | None, str]:
    """A checked cut at ``layer`` (``z``: its output for the inputs ``x``) or None, and a line
    for the explanation's meta saying which path runs and why.

    ``reads``: layers the per-point pass must run (an explained layer above ``layer``, a QoI's
    layer); each must lie inside the rest, else the full forward is used.
    """
    try:
        cut = find_cut(model, layer)
        for name in reads:
            if not cut.runs(name):
                raise NoCut(f"{name!r} does not run above {layer!r}")
        check_cut(model, cut, x, z)
    except NoCut as e:
        return None, f"full forward per point, {layer!r} replaced ({e})"
    return cut, cut.describe()
