"""The architecture, checked on the source: core at the bottom, methods on core only, hooks in
one module, report below tour, no oversized files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from whynet.registry import registered

SRC = Path(__file__).resolve().parents[1] / "src" / "whynet"
METHOD_PACKAGES = ("influence", "inversion", "masks", "representer", "clusters", "gradcam")


def _files(part: str) -> list[Path]:
    path = SRC / part
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


def _whynet_imports(path: Path) -> set[str]:
    """Every ``whynet.X`` module a file imports (``X`` = the first component below whynet)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "whynet":
                out.add(parts[1] if len(parts) > 1 else "")
    return out


@pytest.mark.parametrize("package", METHOD_PACKAGES)
def test_methods_depend_on_core_only(package):
    for path in _files(package):
        bad = _whynet_imports(path) - {"core", package}
        assert not bad, f"{path.relative_to(SRC)} imports whynet.{sorted(bad)}"


def test_every_registered_method_is_checked_here():
    packages = {info.target.split(":")[0].split(".")[1] for info in registered()}
    assert packages <= set(METHOD_PACKAGES)


def test_core_imports_nothing_above_it():
    for path in _files("core"):
        bad = _whynet_imports(path) - {"core"}
        assert not bad, f"{path.relative_to(SRC)} imports whynet.{sorted(bad)}"


def test_report_and_metrics_do_not_import_the_tour_or_methods():
    for part in ("report", "metrics", "viz"):
        for path in _files(part):
            bad = _whynet_imports(path) & {"tour", "cli", *METHOD_PACKAGES}
            assert not bad, f"{path.relative_to(SRC)} imports whynet.{sorted(bad)}"


def test_hooks_are_registered_in_one_module():
    calls = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward")
    for path in SRC.rglob("*.py"):
        if path == SRC / "core" / "hooks.py":
            continue
        text = path.read_text()
        assert not any(c in text for c in calls), f"{path.relative_to(SRC)} registers hooks"


def test_no_source_file_is_oversized():
    for path in SRC.rglob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 510, f"{path.relative_to(SRC)} has {n} lines"
