"""Messages that native libraries write straight to the process's stderr (file descriptor 2,
below Python's ``sys.stderr``): faiss's k-means prints ``WARNING clustering N points to K
centroids: please provide at least ...`` for small training sets. A run captures them around
a fit and turns the known ones into notes of the report; anything else is passed on."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

#: faiss's warnings on small or duplicated training sets (clustering.cpp)
FAISS_WARNING = re.compile(r"^WARNING clustering \d+ points to \d+ centroids: .*$")


@contextmanager
def native_stderr(notes: list[str]) -> Iterator[None]:
    """Capture fd 2 in the block; faiss warnings go to ``notes``, other lines back to stderr."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (an embedded interpreter): nothing to capture
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
    rest = []
    for line in text.splitlines():
        if FAISS_WARNING.match(line.strip()):
            notes.append(f"faiss: {line.strip()}")
        elif line:
            rest.append(line)
    if rest:
        print("\n".join(rest), file=sys.stderr, flush=True)
