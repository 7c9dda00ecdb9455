"""Fixtures of the scale tests: the Ray engine on the one session-wide local Ray cluster."""

from __future__ import annotations

import pytest

from whynet import scale


@pytest.fixture
def cluster(ray_cluster: None) -> scale.Engine:
    """The Ray engine (2 workers) on the session's local cluster (``tests/conftest.py``)."""
    return scale.Engine("ray", workers=2)
