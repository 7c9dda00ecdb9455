"""Progress bars: tqdm on a terminal, silent otherwise or when asked (``WHYNET_PROGRESS=0``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether to show bars: explicit flag, else the env switch, else "stderr is a terminal"."""
    if enabled is not None:
        return enabled
    env = os.environ.get("WHYNET_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when progress is enabled."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def progress_bar(
    *, desc: str, enabled: bool | None = None, unit: str = "it", total: int | None = None
) -> Any:
    """A bar updated by hand (loops that show running statistics), or None when progress is
    off: ``bar.update(1)``, ``bar.set_postfix(...)``, ``bar.close()``."""
    if not progress_enabled(enabled):
        return None
    return tqdm(desc=desc, total=total, leave=False, dynamic_ncols=True, unit=unit)
