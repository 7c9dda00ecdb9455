import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from whynet import Explanation
from whynet.report import (
    load_sections,
    render_html,
    save_sections,
    sections_from_explanations,
    write_report,
)
from whynet.tour import Figure, Section, Table
from whynet.viz import highlight_text, molecule_svg, png_bytes

EVIL = '<script>alert("x")</script>'


def sample_sections() -> list[Section]:
    figs = [
        Figure(caption=f"map {EVIL}", png=png_bytes(torch.rand(1, 12, 12))),
        Figure(caption="tokens", html=highlight_text(["great", EVIL, "film"], [0.9, 0.1, 0.4])),
    ]
    try:
        figs.append(Figure(caption="molecule", svg=molecule_svg("c1ccccc1O", [0.1] * 6 + [1.0])))
    except ImportError:
        pass
    return [
        Section(
            title=f"Section {EVIL}",
            intro="first & second",
            figures=figs,
            tables=[Table(f"t {EVIL}", ["label", "value"], [[EVIL, 0.5]])],
            notes=[EVIL],
        )
    ]


def test_data_text_is_escaped():
    page = render_html(sample_sections(), title=EVIL)
    # the only <script> element is the report's own image check
    assert page.count("<script>") == 1
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network


def test_sections_round_trip(tmp_path):
    sections = sample_sections()
    save_sections(sections, tmp_path)
    back = load_sections(tmp_path)
    assert [s.title for s in back] == [s.title for s in sections]
    assert back[0].figures[0].png == sections[0].figures[0].png
    assert back[0].tables[0].rows == [[EVIL, 0.5]]
    (tmp_path / "sections.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a whynet sections file"):
        load_sections(tmp_path)


def test_sections_from_explanations(tmp_path):
    e = Explanation(
        values=torch.rand(3, 8, 8),
        target=torch.tensor([1, 0, 2]),
        method="influence",
        layer="features.2",
        params={"steps": 4},
        extras={"inputs": torch.rand(3, 1, 8, 8)},
    )
    e.save(tmp_path / "e.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    sections = sections_from_explanations(tmp_path)
    assert len(sections) == 1 and sections[0].figures and sections[0].figures[0].png


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (the Makefile's setup installs Debian's chromium)")
    return exe


def open_in_browser(path: Path) -> tuple[str, str]:
    """Load ``path`` in headless Chromium; return (DOM after load, browser log)."""
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
                "--dump-dom",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return run.stdout, run.stderr


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(sample_sections(), tmp_path / "report.html", title="browser check")
    dom, log = open_in_browser(path)
    assert 'data-broken-images="0"' in dom, log[-2000:]
    n_images = int(dom.split('data-images="')[1].split('"')[0])
    assert n_images >= 2
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == [], console
    # the sentence holding <script> is shown as text, never run
    assert "alert" not in log
    assert "&lt;script&gt;" in dom


def test_report_owns_its_data_model_and_does_not_import_the_tour():
    import sys

    import whynet.report
    import whynet.tour

    assert whynet.tour.Section is whynet.report.Section and whynet.tour.Figure is Figure
    code = (
        "import sys, whynet.report; "
        "bad = sorted(m for m in sys.modules if m.startswith('whynet.tour')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tour_list_comes_from_the_registry():
    from whynet.registry import registered
    from whynet.tour import tour_modules

    tours = tour_modules()
    names = [info.name for info in registered()]
    assert list(tours) == [n for n in names if n in tours]
    assert {"influence", "inversion", "masks", "representer", "clusters"} <= set(tours)
    assert all(module == f"whynet.tour.{name}" for name, module in tours.items())
