"""``whynet demo``: ``whynet run`` on the bundled configs (``whynet/run/configs/*.toml``: the
zoo's models on bundled data), gathered into one report. The demo takes the path a user's own
run takes; each config is also a starting point to copy (``whynet run`` on it directly)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from whynet.run.config import RunConfig, RunError, load_config

#: the bundled runs, in report order
ORDER = ("fashion", "canvas", "reviews", "molecules")


def bundled_configs() -> dict[str, Path]:
    """Name -> path of every bundled config (the ``configs`` folder of this package)."""
    folder = Path(str(resources.files("whynet.run").joinpath("configs")))
    found = {p.stem: p for p in sorted(folder.glob("*.toml"))}
    return {n: found[n] for n in ORDER if n in found} | found


def demo_configs(out: Path, only: Sequence[str] | None = None) -> list[RunConfig]:
    """The bundled configs with their output in ``out/NAME``; ``only`` keeps the named configs
    and, in the others, the named methods (``--only canvas masks``)."""
    configs = {name: load_config(path, out / name) for name, path in bundled_configs().items()}
    methods = {m.label for c in configs.values() for m in c.methods}
    unknown = sorted(set(only or ()) - set(configs) - methods)
    if unknown:
        raise RunError(
            f"--only: unknown section(s) {', '.join(unknown)}; bundled runs: "
            f"{', '.join(configs)}; methods: {', '.join(sorted(methods))}"
        )
    picked = []
    for name, cfg in configs.items():
        if only and name not in only:
            cfg.methods = [m for m in cfg.methods if m.label in only]
        if cfg.methods:
            picked.append(cfg)
    return picked


def run_demo(out: Path, only: Sequence[str] | None = None, force: bool = False) -> Path:
    """Run the bundled configs into ``out/NAME`` (each with its own report and cached fits)
    and write every run's sections into ``out/report.html``; return its path."""
    from whynet.report import Section, Table, save_sections, write_report
    from whynet.run.runner import run_config, summary

    sections: list[Section] = []
    rows = []
    for cfg in demo_configs(out, only):
        name = cfg.path.stem
        t0 = time.perf_counter()
        result = run_config(cfg, force=force)
        print("\n".join(summary(result)), file=sys.stderr, flush=True)
        took = round(time.perf_counter() - t0, 1)
        rows.append([name, cfg.title, ", ".join(m.label for m in cfg.methods), took])
        for s in result.sections:
            s.title = f"{cfg.title}: {s.title}"
        sections += result.sections
    about = Section(
        title="About this demo",
        intro=(
            "whynet explains pre-trained networks from the inside. Each part below is `whynet "
            "run` on one bundled config (the zoo's models on bundled data, no downloads); the "
            "configs are in whynet/run/configs, and each run's own folder holds its artefacts "
            "and report."
        ),
        tables=[
            Table(
                caption="bundled runs",
                columns=["config", "model and data", "methods", "seconds"],
                rows=rows,
            )
        ],
    )
    sections.insert(0, about)
    save_sections(sections, out)
    return write_report(
        sections,
        out / "report.html",
        title="whynet demo",
        subtitle=f"whynet run on {len(rows)} bundled configs",
    )
