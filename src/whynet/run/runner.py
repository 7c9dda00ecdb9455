"""``whynet run``: load, read, fit (or reuse), explain, measure, report — into a temporary
folder that is renamed into place only when everything succeeded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from whynet.core.inputs import take
from whynet.core.progress import progress_bar
from whynet.run.config import LAYER_PARAMS, MethodSpec, RunConfig, RunError, load_config
from whynet.run.engines import RAY_FITS, SCALE, engine_doc, make_engine, ray_fits
from whynet.run.metrics import method_metrics
from whynet.run.readers import Data, checksums, factory_file, load_model, read_data


def _shape(x: Any) -> Any:
    """A batch's shape for messages (a mapping: each entry's)."""
    return {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape)


FITTED = "fitted"
INDEX = "index.json"


#: the default folder of the Ray engine's sharded stores, inside the output folder
@dataclass
class MethodResult:
    """What one configured method produced."""

    spec: MethodSpec
    explanation: Any
    explanation_file: Path
    fitted_file: Path | None = None
    reused: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    explainer: Any = None
    #: where each step ran ("fit"/"explain" -> "local" or "ray"); empty for the local engine
    engines: dict[str, str] = field(default_factory=dict)
    #: what the run noticed (native libraries' warnings during the fit)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunContext:
    """Everything a run has loaded (shared by ``whynet run``, ``fit`` and ``explain``)."""

    model: nn.Module
    info: dict[str, Any]
    explain: Data | None
    train: Data | None
    checksums: dict[str, str]
    n_outputs: int
    #: the files a fit depends on (model file, weights, training data): the cache key's part
    fit_files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _layer_values(params: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in params.items():
        if k in LAYER_PARAMS or k.endswith("_layer"):
            for name in [v] if isinstance(v, str) else v if isinstance(v, list) else []:
                if isinstance(name, str):
                    out.append((k, name))
    return out


def check_layers(model: nn.Module, spec: MethodSpec, where: str) -> None:
    """Every layer a method table names exists in the model (core.resolve_layer)."""
    from whynet.core import resolve_layer

    for key, name in _layer_values(spec.params):
        try:
            resolve_layer(model, name)
        except ValueError as e:
            raise RunError(f"{where}: [methods.{spec.label}] {key}: {e}") from None


def prepare(
    factory: str,
    weights: Path | None,
    explain: str | None,
    train: str | None,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    labels: Path | None = None,
    train_labels: Path | None = None,
    boxes: str | None = None,
) -> RunContext:
    """Build the model and read the data; check labels against the model's outputs."""
    t0 = time.perf_counter()
    model, info = load_model(factory, weights)
    files: list[Path] = []
    if weights is not None:
        files.append(weights)
    model_file = factory_file(factory)
    if model_file is not None:
        files.append(model_file)
    timings = {"load model": time.perf_counter() - t0}
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"size": size, "channels": channels}
    ex = read_data(explain, info, labels_file=labels, boxes=boxes, **kw) if explain else None
    tr = read_data(train, info, labels_file=train_labels, **kw) if train else None
    timings["read data"] = time.perf_counter() - t0
    model_files = list(files)
    for d in (ex, tr):
        if d is not None:
            files += d.files
    probe = take((ex or tr).x, slice(0, 1)) if (ex or tr) is not None else None  # type: ignore[union-attr]
    n_out = 0
    if probe is not None:
        from whynet.core import predict_logits

        try:
            n_out = int(predict_logits(model, probe).shape[-1])
        except Exception as e:
            src = (ex or tr).files[0] if (ex or tr).files else explain  # type: ignore[union-attr]
            raise RunError(
                f"{src}: the model cannot run on these inputs of shape "
                f"{_shape(probe)}: {type(e).__name__}: {e}"
            ) from None
        for d, spec in ((ex, explain), (tr, train)):
            if d is not None and d.labels is not None and len(d.labels):
                bad = int(d.labels.max())
                if bad >= n_out or int(d.labels.min()) < 0:
                    raise RunError(
                        f"{spec}: label {bad} does not match the model's {n_out} outputs"
                    )
    sums = checksums(files)
    fit_files = model_files + (tr.files if tr is not None else [])
    fit_sums = {str(f): sums[str(f)] for f in fit_files}
    return RunContext(model, info, ex, tr, sums, n_out, fit_files=fit_sums, timings=timings)


def fit_key(spec: MethodSpec, ctx: RunContext) -> str:
    """The cache key of a fitted explainer: method, settings, model and data checksums."""
    from whynet import __version__
    from whynet.core.params import json_params

    doc = {
        "whynet": __version__,
        "method": spec.method,
        "params": json_params(spec.params),
        "fit": json_params(spec.fit_params),
        "files": ctx.fit_files,  # explain data changes need no refit
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def build_explainer(spec: MethodSpec, model: nn.Module, where: str) -> Any:
    from whynet.registry import get_explainer

    cls = get_explainer(spec.method)
    try:
        return cls(model, **spec.params)
    except (ValueError, TypeError) as e:
        raise RunError(f"{where}: [methods.{spec.label}]: {e}") from None


def fit_explainer(
    spec: MethodSpec,
    ctx: RunContext,
    where: str,
    *,
    engine: Any = "local",
    store: Path | None = None,
    notes: list[str] | None = None,
) -> Any:
    """Build and fit one method: ``whynet.scale.fit``, i.e. ``explainer.fit`` for the local
    engine, the sharded extraction into ``store`` and the same solver on Ray. Native
    libraries' warnings during the fit (faiss) go to ``notes`` (:mod:`whynet.run.native`)."""
    from whynet import scale
    from whynet.run.native import native_stderr

    if ctx.train is None:
        raise RunError(
            f"{where}: [methods.{spec.label}] {spec.method} must be fitted: set [data] train"
        )
    explainer = build_explainer(spec, ctx.model, where)
    try:
        with native_stderr([] if notes is None else notes):
            scale.fit(
                explainer,
                ctx.train.x,
                ctx.train.labels,
                store=None if engine == "local" else store,
                engine=engine,
                **spec.fit_params,
            )
    except (ValueError, TypeError) as e:
        raise RunError(f"{where}: [methods.{spec.label}] fit failed: {e}") from None
    return explainer


def explain_data(
    explainer: Any,
    spec: MethodSpec,
    data: Data,
    where: str,
    *,
    engine: Any = "local",
    store: Path | None = None,
) -> Any:
    """Explain ``data`` (``whynet.scale.explain_all``: ``explainer.explain`` locally, per shard
    through ``store`` on Ray) and attach what the report needs (file names, classes, images)."""
    from whynet import scale

    try:
        e = scale.explain_all(
            explainer,
            data.x,
            spec.target,
            store=None if engine == "local" else store,
            engine=engine,
        )
    except (ValueError, TypeError) as err:
        raise RunError(f"{where}: [methods.{spec.label}] explain failed: {err}") from None
    e.meta["files"] = data.names
    if data.classes:
        e.meta["classes"] = data.classes
    if data.texts is not None:
        e.meta["texts"] = data.texts
        e.meta["tokens"] = data.tokens
    if data.smiles:
        e.meta["smiles"] = True
    if data.raw is not None:
        e.extras["inputs"] = data.raw
    return e


def _reuse(old_dir: Path, name: str, tmp: Path) -> Path | None:
    """Hard-link (else copy with its time stamps) a cached fitted file into the new folder."""
    src = old_dir / FITTED / name
    if not src.is_file():
        return None
    dst = tmp / FITTED / name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _explain_key(spec: MethodSpec, ctx: RunContext) -> str:
    """The explanation store's folder key: the fit key plus every data file and the target."""
    doc = {"fit": fit_key(spec, ctx), "files": ctx.checksums, "target": repr(spec.target)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def run_method(
    spec: MethodSpec,
    cfg: RunConfig,
    ctx: RunContext,
    tmp: Path,
    force: bool,
    engine: Any = "local",
) -> MethodResult:
    from whynet.registry import get_explainer, method_info

    where = str(cfg.path)
    seconds: dict[str, float] = {}
    engines: dict[str, str] = {}
    fitted_file = None
    reused = False
    notes: list[str] = []
    # the Ray engine's stores, one folder per content key (a rerun with the same model, data
    # and settings resumes it; anything else gets a new folder, never a fingerprint clash)
    stores = cfg.store if cfg.store is not None else tmp / SCALE
    fit_engine = engine
    if engine != "local" and method_info(spec.method).fitted and not ray_fits(spec):
        fit_engine = "local"
        _say(
            f"[run] note: {spec.label} ({spec.method}) is fitted in this process: the Ray "
            f"engine shards the fit of {', '.join(RAY_FITS)} only; its explanations run on Ray"
        )
    if spec.fitted is not None:  # a fitted file named by the config: loaded, never refitted
        t0 = time.perf_counter()
        try:
            explainer = get_explainer(spec.method).load(spec.fitted, ctx.model)
        except (ValueError, OSError) as err:
            raise RunError(f"{where}: [methods.{spec.label}] fitted {spec.fitted}: {err}") from None
        seconds["load"] = time.perf_counter() - t0
    elif method_info(spec.method).fitted:
        key = fit_key(spec, ctx)
        name = f"{spec.label}-{key[:16]}.safetensors"
        cached = None if force else _reuse(cfg.out, name, tmp)
        t0 = time.perf_counter()
        if cached is not None:
            try:
                explainer = get_explainer(spec.method).load(cached, ctx.model)
                reused = True
            except ValueError:  # a damaged cache entry: fit again
                cached.unlink()
                cached = None
        if cached is None:
            explainer = fit_explainer(
                spec,
                ctx,
                where,
                engine=fit_engine,
                store=stores / f"fit-{spec.label}-{key[:16]}",
                notes=notes,
            )
            explainer.save(tmp / FITTED / name)
            if engine != "local":
                engines["fit"] = "local" if fit_engine == "local" else "ray"
        seconds["reuse" if reused else "fit"] = time.perf_counter() - t0
        fitted_file = tmp / FITTED / name
    else:
        explainer = build_explainer(spec, ctx.model, where)
    assert ctx.explain is not None
    t0 = time.perf_counter()
    estore = (
        None
        if engine == "local"
        else stores / f"explain-{spec.label}-{_explain_key(spec, ctx)[:16]}"
    )
    e = explain_data(explainer, spec, ctx.explain, where, engine=engine, store=estore)
    seconds["explain"] = time.perf_counter() - t0
    if engine != "local":
        engines["explain"] = "ray"
    efile = e.save(tmp / f"{spec.label}.safetensors")
    result = MethodResult(
        spec, e, efile, fitted_file, reused, seconds, explainer=explainer, engines=engines
    )
    result.notes = notes
    t0 = time.perf_counter()
    result.metrics = method_metrics(result, ctx, cfg.metric_steps)
    seconds["metrics"] = time.perf_counter() - t0
    return result


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (both in one folder, so the renames are atomic)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class RunResult:
    report: Path
    out: Path
    methods: list[MethodResult]
    seconds: float
    timings: dict[str, float]
    #: the report's sections (``whynet demo`` gathers those of every bundled run)
    sections: list[Any] = field(default_factory=list)


def run_config(
    config: str | Path | RunConfig, *, out: str | Path | None = None, force: bool = False
) -> RunResult:
    """Run every method a config (a file, or one checked by :func:`load_config`) names; write
    artefacts and the report into its output folder."""
    from whynet.run.report import run_sections

    start = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else load_config(config, out)
    engine = make_engine(cfg)
    ctx = prepare(
        cfg.factory,
        cfg.weights,
        cfg.explain,
        cfg.train,
        size=cfg.size,
        channels=cfg.channels,
        labels=cfg.labels,
        train_labels=cfg.train_labels,
        boxes=cfg.boxes,
    )
    for spec in cfg.methods:
        check_layers(ctx.model, spec, str(cfg.path))
        if spec.fitted is not None:  # a fitted file is an input of the run, like the data
            ctx.checksums |= checksums([spec.fitted])
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.parent / f".{cfg.out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / FITTED).mkdir(parents=True)
    try:
        results = []
        # one bar over the run's steps (counts, ETA) on a terminal; the methods' own bars
        # show below it; without a terminal one line per step
        bar = progress_bar(
            desc=f"whynet run {cfg.path.name}", unit="method", total=len(cfg.methods)
        )
        try:
            for spec in cfg.methods:
                if bar is None:
                    _say(f"[run] {spec.label} ({spec.method}) ...")
                else:
                    bar.set_postfix_str(f"{spec.label} ({spec.method})")
                results.append(run_method(spec, cfg, ctx, tmp, force, engine))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        index = {
            r.fitted_file.name: {"method": r.spec.method, "label": r.spec.label}
            for r in results
            if r.fitted_file is not None
        }
        (tmp / FITTED / INDEX).write_text(json.dumps(index, indent=1))
        total = time.perf_counter() - start
        sections = run_sections(cfg, ctx, results, total)
        from whynet.report import save_sections, write_report

        save_sections(sections, tmp)
        (tmp / "run.json").write_text(
            json.dumps(
                {
                    "config": str(cfg.path),
                    "checksums": ctx.checksums,
                    "timings": ctx.timings,
                    "methods": {
                        r.spec.label: {
                            "seconds": r.seconds,
                            "metrics": r.metrics,
                            "reused": r.reused,
                            **({"engines": r.engines} if r.engines else {}),
                        }
                        for r in results
                    },
                    **(engine_doc(cfg) if cfg.engine != "local" else {}),
                },
                indent=1,
            )
        )
        write_report(
            sections,
            tmp / "report.html",
            title=cfg.title or f"whynet run: {cfg.path.name}",
            subtitle=", ".join(r.spec.label for r in results),
        )
        _swap_into_place(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for r in results:  # the paths after the rename
        r.explanation_file = cfg.out / r.explanation_file.name
        if r.fitted_file is not None:
            r.fitted_file = cfg.out / FITTED / r.fitted_file.name
    return RunResult(
        cfg.out / "report.html",
        cfg.out,
        results,
        time.perf_counter() - start,
        ctx.timings,
        sections,
    )


def summary(result: RunResult) -> list[str]:
    """The one-screen summary printed at the end of a run."""
    lines = [f"whynet run: {len(result.methods)} method(s) in {result.seconds:.1f} s"]
    for r in result.methods:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
        means = ", ".join(
            f"{k} {sum(v) / len(v):.3g}" for k, v in r.metrics.items() if isinstance(v, list) and v
        )
        lines.append(f"  {r.spec.label:<14} {parts}" + (f"; {means}" if means else ""))
    lines.append(f"  files:  {result.out}")
    lines.append(f"  report: {result.report}")
    return lines


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
