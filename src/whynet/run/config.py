"""The ``whynet run`` configuration: one TOML file, checked before anything runs.

Every method table's keys are that method's own constructor (and ``fit``) parameters, read
from the registered class's signature (:func:`whynet.core.params.param_names`), so the
config, ``whynet fit --param`` and the Python API share one list. Paths are relative to the
config file's folder.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from whynet.cli import CLIError


class RunError(CLIError):
    """A user-facing error of a run: one line naming the file and the problem."""


#: the known sections and keys (an unknown one is an error that lists these)
SCHEMA: dict[str, tuple[str, ...]] = {
    "model": ("factory", "weights"),
    "data": ("train", "explain", "labels", "train_labels", "size", "channels", "boxes"),
    "methods": (),  # one table per method (see MethodSpec)
    "output": ("dir", "title", "metric_steps"),
    "engine": ("name", "address", "workers", "store"),
}
#: the engines of ``whynet.scale`` (``[engine] name``)
ENGINES = ("local", "ray")
#: keys of a method table that are not constructor parameters
RESERVED = ("method", "target", "fitted")
#: parameters naming layers of the model (checked with core.resolve_layer once it is built)
LAYER_PARAMS = ("layer", "head", "layers", "embedding")


@dataclass
class MethodSpec:
    """One ``[methods.LABEL]`` table: the registered ``method`` (default: the label)."""

    label: str
    method: str
    params: dict[str, Any]
    fit_params: dict[str, Any] = field(default_factory=dict)
    target: Any = None
    #: ``fitted = "FILE.safetensors"``: a fitted explainer (``whynet fit``, ``save``) loaded
    #: instead of fitting one
    fitted: Path | None = None


@dataclass
class RunConfig:
    """A checked configuration (paths resolved against the config's folder)."""

    path: Path
    text: str
    factory: str
    weights: Path | None
    explain: str
    train: str | None = None
    labels: Path | None = None
    train_labels: Path | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    #: ``[data] boxes``: evidence boxes of the explained examples (pointing game)
    boxes: str | None = None
    methods: list[MethodSpec] = field(default_factory=list)
    out: Path = Path("whynet-run")
    title: str = ""
    metric_steps: int = 20
    #: ``[engine]``: where fits and explanations run (``whynet.scale``'s one switch)
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    #: the Ray engine's sharded stores (None: ``scale/`` in the output folder)
    store: Path | None = None

    @property
    def root(self) -> Path:
        return self.path.parent


def _unknown(where: str, got: Any, known: Any) -> RunError:
    return RunError(
        f"{where}: unknown key(s) {', '.join(sorted(got))}; known: {', '.join(sorted(known))}"
    )


def _path_spec(root: Path, spec: str) -> str:
    """A data/model path resolved against the config's folder; ``FILE.py:factory`` and
    ``module:factory`` keep their factory part."""
    target, sep, attr = spec.rpartition(":")
    if sep and attr.isidentifier():
        if target.endswith(".py"):
            return f"{_resolve(root, target)}:{attr}"
        return spec  # package.module:factory
    return str(_resolve(root, spec))


def _resolve(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def engine_settings(
    table: dict[str, Any], root: Path, where: str
) -> tuple[str, str | None, int | None, Path | None]:
    """``[engine]``: (name, address, workers, store), each checked with one clear error."""
    name = table.get("name", "local")
    if name not in ENGINES:
        raise RunError(
            f"{where}: [engine] name must be one of {', '.join(map(repr, ENGINES))}, got {name!r}"
        )
    address = table.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise RunError(
            f'{where}: [engine] address must be a Ray address string ("HOST:PORT", "auto"), '
            f"got {address!r}"
        )
    workers = table.get("workers")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise RunError(f"{where}: [engine] workers must be an integer >= 1, got {workers!r}")
    store = table.get("store")
    if store is not None and (not isinstance(store, str) or not store.strip()):
        raise RunError(f"{where}: [engine] store must be a folder path, got {store!r}")
    return name, address, workers, None if store is None else _resolve(root, store)


def method_parameters(cls: type) -> tuple[list[str], list[str]]:
    """(constructor parameters, ``fit`` keyword parameters) a method table may set
    (:meth:`whynet.registry.MethodInfo.param_names` of the registered ``cls``)."""
    from whynet.registry import registered

    info = next(i for i in registered() if i.load() is cls)
    return info.param_names()


def default_of(fn: Any, name: str) -> Any:
    """The parameter's default; ``""`` (parse as a string) for a required ``str`` one."""
    p = inspect.signature(fn).parameters.get(name)
    if p is None:
        return inspect.Parameter.empty
    if p.default is inspect.Parameter.empty and str(p.annotation).startswith("str"):
        return ""
    return p.default


def coerce(value: Any, default: Any, where: str) -> Any:
    """A config or command-line value in the type of the parameter's default: ``"float32"``
    for a dtype parameter; command-line strings parsed as the default's type (else JSON, else
    kept as a string; ``a,b`` as a list)."""
    if isinstance(default, torch.dtype) or (default is None and where.endswith("dtype")):
        if isinstance(value, str):
            dt = getattr(torch, value.removeprefix("torch."), None)
            if not isinstance(dt, torch.dtype):
                raise RunError(f"{where}: {value!r} is not a torch dtype (e.g. 'float32')")
            return dt
        return value
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        low = value.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise RunError(f"{where}: expected true or false, got {value!r}")
        return low in ("true", "1", "yes")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise RunError(f"{where}: expected {type(default).__name__}, got {value!r}") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value.split(",") if "," in value else value


def method_spec(
    label: str, table: dict[str, Any], where: str, root: Path | None = None
) -> MethodSpec:
    """Check one method table against the registered class's signature; ``fitted`` (a path
    relative to ``root``) names a fitted explainer file, whose settings it holds."""
    from whynet.registry import get_explainer, method_info

    name = table.get("method", label)
    try:
        info = method_info(name)
    except ValueError as e:
        raise RunError(f"{where}: [methods.{label}]: {e}") from None
    cls = get_explainer(info.name)
    init, fit_names = method_parameters(cls)
    unknown = set(table) - set(init) - set(fit_names) - set(RESERVED)
    if unknown:
        raise RunError(
            f"{where}: [methods.{label}] unknown parameter(s) {', '.join(sorted(unknown))} "
            f"for {name}; known: {', '.join(init + fit_names)}"
        )
    if "fitted" in table:
        return _fitted_spec(label, table, where, root or Path("."), info)
    params: dict[str, Any] = {}
    fit: dict[str, Any] = {}
    for k, v in table.items():
        if k in RESERVED:
            continue
        if k in init:
            params[k] = coerce(v, default_of(cls, k), f"{where}: [methods.{label}] {k}")
        else:
            fit[k] = coerce(v, default_of(cls.fit, k), f"{where}: [methods.{label}] {k}")
    need = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.name in init and p.default is inspect.Parameter.empty and p.name not in params
    ]
    if need:
        raise RunError(f"{where}: [methods.{label}] {name} needs {', '.join(need)}")
    return MethodSpec(label, info.name, params, fit, table.get("target"))


def _fitted_spec(
    label: str, table: dict[str, Any], where: str, root: Path, info: Any
) -> MethodSpec:
    head = f"{where}: [methods.{label}]"
    if not info.fitted:
        raise RunError(f"{head} fitted: {info.name} needs no fitting; remove the key")
    others = sorted(set(table) - set(RESERVED))
    if others:
        raise RunError(
            f"{head} sets {', '.join(others)} and fitted: the fitted file holds the settings; "
            "keep one of the two"
        )
    if not isinstance(table["fitted"], str):
        raise RunError(f'{head} fitted = "FILE.safetensors" (a path), got {table["fitted"]!r}')
    path = _resolve(root, table["fitted"])
    if not path.is_file():
        raise RunError(f"{head} fitted explainer file not found: {path}")
    return MethodSpec(label, info.name, {}, {}, table.get("target"), fitted=path)


def load_config(path: str | Path, out: str | Path | None = None) -> RunConfig:
    """Read and check ``path`` (TOML); ``out`` overrides ``[output] dir``."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RunError(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    if set(doc) - set(SCHEMA):
        raise _unknown(f"{where}: top level", set(doc) - set(SCHEMA), SCHEMA)
    for sec, keys in SCHEMA.items():
        if sec in doc and not isinstance(doc[sec], dict):
            raise RunError(f"{where}: [{sec}] must be a table")
        if keys and set(doc.get(sec, {})) - set(keys):
            raise _unknown(f"{where}: [{sec}]", set(doc[sec]) - set(keys), keys)
    model, data, output = doc.get("model", {}), doc.get("data", {}), doc.get("output", {})
    for sec, key in (("model", "factory"), ("data", "explain")):
        if not isinstance(doc.get(sec, {}).get(key), str):
            raise RunError(f'{where}: [{sec}] {key} = "..." is required')
    root = path.parent
    methods = []
    for label, table in doc.get("methods", {}).items():
        if not isinstance(table, dict):
            raise RunError(f"{where}: [methods.{label}] must be a table")
        methods.append(method_spec(label, table, where, root))
    if not methods:
        raise RunError(f"{where}: no [methods.NAME] table; see `whynet methods`")
    size = data.get("size")
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise RunError(f"{where}: [data] size must be N or [H, W], got {data['size']!r}")
    if "boxes" in data and not isinstance(data["boxes"], str):
        got = data["boxes"]
        raise RunError(f'{where}: [data] boxes = "boxes.csv" (or FILE.py:factory), got {got!r}')
    opt = {k: _resolve(root, data[k]) for k in ("labels", "train_labels") if k in data}
    dest = Path(out) if out is not None else _resolve(root, output.get("dir", "whynet-run"))
    engine, address, workers, store = engine_settings(doc.get("engine", {}), root, where)
    return RunConfig(
        path=path,
        text=text,
        factory=_path_spec(root, model["factory"]),
        weights=_resolve(root, model["weights"]) if "weights" in model else None,
        explain=_path_spec(root, data["explain"]),
        train=_path_spec(root, data["train"]) if "train" in data else None,
        labels=opt.get("labels"),
        train_labels=opt.get("train_labels"),
        size=size,
        channels=data.get("channels"),
        boxes=_path_spec(root, data["boxes"]) if isinstance(data.get("boxes"), str) else None,
        methods=methods,
        out=dest,
        title=str(output.get("title", "")),
        metric_steps=int(output.get("metric_steps", 20)),
        engine=engine,
        address=address,
        workers=workers,
        store=store,
    )
