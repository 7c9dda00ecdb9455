"""The ``whynet`` command line: run, fit, explain, demo, report, bench, zoo list, methods.

Errors are one clear line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- demo
def run_demo(out: Path, only: Sequence[str] | None = None, force: bool = False) -> Path:
    """``whynet demo``: ``whynet run`` on the bundled configs (see :mod:`whynet.run.demo`)."""
    from whynet.run.demo import run_demo as run

    return run(out, only, force)


def run_tour(
    out: Path, fast: bool, only: Sequence[str] | None = None, progress: bool | None = None
) -> Path:
    """``whynet demo --tour``: the tour of every registered method that has one
    (``whynet.tour.<name>``: studies beyond one run, e.g. essence, mislabel ranking); write
    sections + the report, return the report path."""
    from whynet.registry import registered
    from whynet.report import Section, save_sections, write_report
    from whynet.tour import tour_modules

    names = [info.name for info in registered()]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise CLIError(
            f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}"
        )
    tours = tour_modules()
    sections: list[Section] = []
    timings: dict[str, float] = {}
    for name in names:
        if only and name not in only:
            continue
        if name not in tours:
            _say(f"[demo] {name}: no tour module, skipped")
            continue
        _say(f"[demo] {name} ...")
        t0 = time.perf_counter()
        try:
            section = importlib.import_module(tours[name]).run(
                out / name, fast=fast, progress=progress
            )
        except ImportError as e:  # an optional extra is missing: say so in the report
            section = Section(title=name, notes=[f"skipped: {e}"])
        timings[name] = time.perf_counter() - t0
        _say(f"[demo] {name} done in {timings[name]:.1f} s")
        sections.append(section)
    summary = Section(
        title="About this run",
        intro="whynet explains pre-trained networks from the inside. Each section below is one "
        "method family run on the bundled data and models (no downloads).",
        tables=[_timing_table(timings)],
    )
    sections.insert(0, summary)
    save_sections(sections, out)
    return write_report(
        sections,
        out / "report.html",
        title="whynet demo",
        subtitle=f"{', '.join(timings) or 'no methods'} on bundled models",
    )


def _timing_table(timings: dict[str, float]) -> Any:
    from whynet.report import Table

    return Table(
        caption="time per section (s)",
        columns=["section", "seconds"],
        rows=[[k, round(v, 1)] for k, v in timings.items()],
    )


# ---------------------------------------------------------------------------- explain
def load_factory(spec: str) -> Any:
    """``path/to/file.py:factory`` or ``package.module:factory`` -> the callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise CLIError(f"--model must look like MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise CLIError(f"model file not found: {path}")
        mod_spec = importlib.util.spec_from_file_location(f"whynet_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise CLIError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            mod_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise CLIError(f"cannot import module {target!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CLIError(f"{spec}: no callable named {attr!r}")
    return fn


def load_images(paths: Sequence[Path], size: int | None) -> tuple[Any, list[str]]:
    """Read image files into a float tensor (B, C, H, W) in [0, 1]."""
    import matplotlib.image as mpimg
    import numpy as np
    import torch

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"input not found: {p}")
    if not files:
        raise CLIError("no image files found in --inputs")
    arrays = []
    for f in files:
        a = np.asarray(mpimg.imread(f))
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., :3]
        t = torch.as_tensor(a, dtype=torch.float32)
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        if size is not None:
            t = torch.nn.functional.interpolate(
                t[None], size=(size, size), mode="bilinear", align_corners=False
            )[0]
        arrays.append(t)
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise CLIError(f"images differ in shape {sorted(shapes)}; pass --size N to resize")
    return torch.stack(arrays), [f.name for f in files]


def run_explain(args: argparse.Namespace) -> Path:
    import torch

    from whynet.registry import method_info

    if args.explainer is not None:
        return run_explain_fitted(args)
    if args.method is None:
        raise CLIError("--method is required (or --explainer FILE from `whynet fit`)")
    info = method_info(args.method)
    if info.fitted:
        raise CLIError(
            f"method {args.method!r} must be fitted on training data first: run `whynet fit "
            f"--method {args.method} ...` and pass --explainer FILE (or use `whynet run`)"
        )
    if "image" not in info.inputs:
        raise CLIError(
            f"method {args.method!r} explains {', '.join(info.inputs)} inputs; "
            "`whynet explain` reads images"
        )
    factory = load_factory(args.model)
    kwargs = explainer_kwargs(info, args)
    cls = info.load()
    kwargs.update(param_kwargs(info.name, args.param, kwargs))
    made = factory()
    model, extra = made if isinstance(made, tuple) else (made, {})
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"{args.model} returned {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        from safetensors.torch import load_file

        w = Path(args.weights)
        if w.suffix != ".safetensors":
            raise CLIError("--weights must be a .safetensors file (whynet never unpickles)")
        model.load_state_dict(load_file(str(w)))
    x, names = load_images([Path(p) for p in args.inputs], args.size)
    preprocess = extra.get("preprocess") if isinstance(extra, dict) else None
    x_model = preprocess(x) if callable(preprocess) else x
    if "batch_size" in inspect.signature(cls).parameters:
        kwargs["batch_size"] = args.batch_size
    explainer = cls(model, **kwargs)
    target: Any = None if args.target is None else int(args.target)
    e = explainer.explain(x_model, target=target)
    e.extras.setdefault("inputs", x)
    e.meta.setdefault("files", names)
    return save_and_report(e, Path(args.out), args.method, args.model)


def save_and_report(e: Any, out: Path, name: str, subtitle: str) -> Path:
    """Write ``e`` as ``out/NAME.safetensors`` and rebuild ``out/report.html`` from the folder's
    explanations (``whynet explain``, with or without a fitted ``--explainer``)."""
    from whynet.report import sections_from_explanations, write_report

    e.save(out / f"{name}.safetensors")
    return write_report(
        sections_from_explanations(out),
        out / "report.html",
        title=f"whynet explain: {name}",
        subtitle=subtitle,
    )


def run_fit(args: argparse.Namespace) -> Path:
    """``whynet fit`` (see :mod:`whynet.run.commands`)."""
    from whynet.run.commands import fit_command

    return fit_command(args)


def run_explain_fitted(args: argparse.Namespace) -> Path:
    """``whynet explain --explainer FILE`` (see :mod:`whynet.run.commands`)."""
    from whynet.run.commands import explain_fitted_command

    return explain_fitted_command(args)


def run_run(args: argparse.Namespace) -> Path:
    """``whynet run CONFIG.toml``: every configured method, one report, a summary."""
    from whynet.run import run_config, summary

    result = run_config(args.config, out=args.out, force=args.force)
    _say("\n".join(summary(result)))
    return result.report


def param_kwargs(
    method: str, pairs: Sequence[str] | None, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``--param key=value`` pairs (see :func:`whynet.run.commands.param_kwargs`)."""
    from whynet.run.commands import param_kwargs as parse

    return parse(method, pairs, given)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def explainer_kwargs(info: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments of a registered method from its command-line arguments
    (``MethodInfo.args``). ``--layer`` also fills a method's first ``*_layer`` argument when
    the method has no ``layer`` one (``--layer`` is guided feature inversion's inversion
    layer, as before)."""
    names = [a.name for a in info.args]
    given = {n: getattr(args, n, None) for n in _all_args()}
    if "layer" not in names and given.get("layer") is not None:
        alias = next((n for n in names if n.endswith("_layer") and given.get(n) is None), None)
        if alias is not None:
            given[alias], given["layer"] = given["layer"], None
    extra = sorted(n for n, v in given.items() if v is not None and n not in names)
    if extra:
        takes = ", ".join(_flag(n) for n in names) or "no method arguments"
        raise CLIError(
            f"{info.name} does not take {', '.join(_flag(n) for n in extra)} (it takes {takes})"
        )
    missing = [a for a in info.args if a.required and given.get(a.name) is None]
    if missing:
        need = " and ".join(f"{_flag(a.name)} ({a.help})" for a in missing)
        raise CLIError(f"{info.name} needs {need}")
    return {n: given[n] for n in names if given.get(n) is not None}


def _all_args() -> dict[str, Any]:
    """Every registered method's command-line arguments by name (the first help wins)."""
    from whynet.registry import registered

    out: dict[str, Any] = {}
    for info in registered():
        for a in info.args:
            out.setdefault(a.name, a)
    return out


def describe_methods() -> list[str]:
    """``whynet methods``: each registered method with its capabilities."""
    from whynet.registry import registered

    lines = []
    for info in registered():
        if info.fitted:
            how = f"needs fit on training data: whynet fit --method {info.name} ... or whynet run"
        else:
            flags = " ".join(
                f"{_flag(a.name)} {a.name.upper()}" if a.required else f"[{_flag(a.name)}]"
                for a in info.args
            )
            how = f"whynet explain --method {info.name} {flags}".rstrip()
        init, fit = info.param_names()
        lines.append(f"{info.name:<12} {info.description}")
        lines.append(f"{'':<12} inputs: {', '.join(info.inputs)}; targets: {info.targets}; {how}")
        lines.append(
            f"{'':<12} parameters: {', '.join(init)}" + (f"; fit: {', '.join(fit)}" if fit else "")
        )
    return lines


# ---------------------------------------------------------------------------- bench, zoo
def run_bench(quick: bool, only: Sequence[str] | None) -> Path:
    root = Path.cwd() / "benchmarks"
    scripts = sorted(root.glob("bench_*.py"))
    if not scripts:
        raise CLIError("no benchmarks/bench_*.py here: run `whynet bench` from a source checkout")
    results = root / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        _say(f"[bench] {name} ...")
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    table = results_table(results)
    path = results / "README.md"
    path.write_text(table)
    print(table)
    if failed:
        raise CLIError(f"benchmarks failed: {', '.join(failed)}")
    return path


def results_table(results: Path) -> str:
    """The human-readable table of every ratio in ``results/*.json``
    (:func:`whynet.run.bench.results_table`)."""
    from whynet.run.bench import results_table as table

    return table(results)


def run_zoo_list() -> None:
    from whynet.zoo import list_models

    for m in list_models():
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (m.get("metrics") or {}).items()
        )
        print(f"{m['name']:<20} {m.get('task', ''):<28} {metrics}")


# ---------------------------------------------------------------------------- parser
def build_parser(method_flags: bool = True) -> argparse.ArgumentParser:
    """The parser; ``method_flags`` adds the registered methods' own arguments to ``explain``
    (reading them imports every method, so only ``explain`` needs it)."""
    p = argparse.ArgumentParser(prog="whynet", description="Explain pre-trained networks.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="whynet run on the bundled configs; one HTML report")
    d.add_argument("--out", default="whynet-out", help="output folder (default: whynet-out)")
    d.add_argument("--only", nargs="*", help="run only these configs or methods")
    d.add_argument("--force", action="store_true", help="refit even if a fit is cached")
    d.add_argument("--tour", action="store_true", help="the method tours instead (studies)")
    d.add_argument("--fast", action="store_true", help="--tour: smaller settings (default)")
    d.add_argument("--full", action="store_true", help="--tour: larger settings (slower)")

    rr = sub.add_parser("run", help="run every method of a config on your model and data")
    rr.add_argument("config", help="a TOML config (see docs/run.md)")
    rr.add_argument("--out", help="output folder (default: [output] dir of the config)")
    rr.add_argument("--force", action="store_true", help="refit even if a fit is cached")

    f = sub.add_parser("fit", help="fit a method that needs training data; save it")
    f.add_argument("--method", required=True, help="a fitted method (see `whynet methods`)")
    f.add_argument("--model", required=True, help="MODULE:FACTORY or FILE.py:FACTORY")
    f.add_argument("--weights", help="a .safetensors state dict to load into the model")
    f.add_argument("--data", required=True, help="training data (a folder, file or factory)")
    f.add_argument("--labels", help="a file of labels, one per line")
    f.add_argument("--size", type=int, help="resize images to SIZE x SIZE")
    f.add_argument("--param", action="append", help="KEY=VALUE, a parameter of the method")
    f.add_argument("--out", required=True, help="the fitted explainer file (.safetensors)")

    e = sub.add_parser("explain", help="explain your own model on your inputs")
    e.add_argument("--model", required=True, help="MODULE:FACTORY or FILE.py:FACTORY")
    e.add_argument("--weights", help="a .safetensors state dict to load into the model")
    e.add_argument("--method", help="registered method (see `whynet methods`)")
    e.add_argument("--explainer", help="a fitted explainer file written by `whynet fit`")
    e.add_argument("--param", action="append", help="KEY=VALUE, a parameter of the method")
    e.add_argument("--inputs", nargs="+", required=True, help="image files or folders")
    for arg in _all_args().values() if method_flags else ():  # the methods' own arguments
        e.add_argument(_flag(arg.name), dest=arg.name, type=arg.type, help=arg.help)
    e.add_argument("--target", help="class index (default: the predicted class)")
    e.add_argument("--size", type=int, help="resize images to SIZE x SIZE")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", default="whynet-explain", help="output folder")

    r = sub.add_parser("report", help="(re)build the report from a folder of results")
    r.add_argument("dir")

    b = sub.add_parser("bench", help="run the side-by-side benchmarks (needs the bench extra)")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--only", nargs="*")

    z = sub.add_parser("zoo", help="bundled models and data sets")
    z.add_argument("action", choices=["list"])

    sub.add_parser("methods", help="list the registered methods and what they can do")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(method_flags="explain" in argv).parse_args(argv)
    try:
        if args.command == "demo" and (args.tour or args.full):
            print(run_tour(Path(args.out), fast=not args.full, only=args.only).resolve())
        elif args.command == "demo":
            print(run_demo(Path(args.out), only=args.only, force=args.force).resolve())
        elif args.command == "run":
            print(run_run(args).resolve())
        elif args.command == "fit":
            print(run_fit(args).resolve())
        elif args.command == "explain":
            print(run_explain(args).resolve())
        elif args.command == "report":
            print(rebuild_report(Path(args.dir)).resolve())
        elif args.command == "bench":
            run_bench(args.quick, args.only)
        elif args.command == "zoo":
            run_zoo_list()
        elif args.command == "methods":
            print("\n".join(describe_methods()))
        return 0
    except KeyboardInterrupt:
        _say("whynet: interrupted")
        return 130
    except Exception as e:  # one clear line unless --debug
        if args.debug:
            traceback.print_exc()
        _say(f"whynet: error: {e}")
        return 1


def rebuild_report(folder: Path) -> Path:
    """Rebuild ``folder/report.html`` from saved sections and explanation files."""
    from whynet.report import load_sections, sections_from_explanations, write_report
    from whynet.report.store import SECTIONS_FILE

    if not folder.is_dir():
        raise CLIError(f"not a folder: {folder}")
    sections = load_sections(folder) if (folder / SECTIONS_FILE).exists() else []
    sections += sections_from_explanations(folder)
    if not sections:
        raise CLIError(f"{folder} holds no sections.json and no explanation files")
    return write_report(
        sections, folder / "report.html", title="whynet report", subtitle=str(folder)
    )
