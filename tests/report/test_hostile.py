"""The report as a sink for untrusted data (issue 16, defect class 3): hostile strings in every
field of ``sections.json``, figure paths escaping the folder, colours, a Content-Security-Policy,
and ``save_sections`` atomic as a whole."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import pytest
import torch

from tests.report.test_report import open_in_browser
from whynet.report import load_sections, render_html, save_sections, write_report
from whynet.report.sections import Figure, Section, Table
from whynet.viz import highlight_text, png_bytes

RAN = "console.log('RAN' + 'X')"  # the string RANX only appears if the script ran
HOSTILE = [
    f"<script>{RAN}</script>",
    f'<img src=x onerror="{RAN}">',
    f'<svg onload="{RAN}"></svg>',
    f'"><script>{RAN}</script>',
    f'<a href="javascript:{RAN}">x</a>',
    '<style>body{background:url(http://example.com/x)}</style><iframe src="http://e.com">',
    f'<span style="background:url(http://example.com/t)" onclick="{RAN}">t</span>',
]


def _hostile_doc() -> dict:
    h = " ".join(HOSTILE)
    return {
        "format": "whynet.sections",
        "version": 1,
        "sections": [
            {
                "title": h,
                "intro": h,
                "figures": [
                    {"caption": h, "html": h, "svg": None, "png": None},
                    {"caption": h, "html": f"<p><b>{h}</b>: {h}</p>", "svg": h, "png": None},
                ],
                "tables": [{"caption": h, "columns": [h, h], "rows": [[h, h]]}],
                "notes": [h],
                "metrics": {h: h},
            }
        ],
    }


class _Markup(HTMLParser):
    """Every element and attribute a browser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]


def _markup(page: str) -> _Markup:
    p = _Markup()
    p.feed(page)
    return p


def _assert_inert(page: str) -> None:
    m = _markup(page)
    assert m.tags.count("script") == 1 and m.tags.count("style") == 1  # the report's own
    assert not {"iframe", "svg", "object", "embed", "form", "base"} & set(m.tags), m.tags
    assert not [k for k, _ in m.attrs if k.startswith("on")]
    for k, v in m.attrs:
        if k in ("src", "href", "style", "action", "formaction", "background", "poster"):
            assert "javascript:" not in v.lower() and "http:" not in v.lower(), (k, v)
        if k == "style":
            assert "url(" not in v
        if k == "src":
            assert v.startswith("data:image/"), v
        if k == "href":
            assert v.startswith("#"), v  # the report's own table of contents


def test_html_fragments_from_disk_cannot_carry_markup_that_acts(tmp_path):
    (tmp_path / "sections.json").write_text(json.dumps(_hostile_doc()))
    page = render_html(load_sections(tmp_path), title=HOSTILE[0], subtitle=HOSTILE[1])
    _assert_inert(page)


def test_render_html_sanitises_fragments_given_in_memory():
    _assert_inert(render_html([Section("s", figures=[Figure("c", html=" ".join(HOSTILE))])]))
    ok = highlight_text(["a", "<b>"], [0.5, -0.25])
    assert ok in render_html([Section("s", figures=[Figure("c", html=ok)])])  # viz output kept


def test_the_report_has_a_strict_content_security_policy():
    page = render_html([Section("s")])
    m = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert m is not None
    csp = m.group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", csp)
    assert "unsafe-eval" not in csp and "script-src 'unsafe-inline'" not in csp


@pytest.mark.parametrize("png", ["../../../../etc/hostname", "/etc/hostname", "figures/../../x"])
def test_figures_only_from_inside_the_report_folder(tmp_path, png):
    (tmp_path / "x").write_bytes(b"secret")
    inner = tmp_path / "report"
    inner.mkdir()
    doc = {"format": "whynet.sections", "version": 1, "sections": [{"title": "t"}]}
    doc["sections"][0]["figures"] = [{"caption": "c", "png": png}]
    (inner / "sections.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="outside the report folder"):
        load_sections(inner)


def test_a_symlinked_figure_pointing_outside_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    inner = tmp_path / "report"
    (inner / "figures").mkdir(parents=True)
    os.symlink(tmp_path / "secret", inner / "figures" / "a.png")
    doc = {"format": "whynet.sections", "version": 1, "sections": [{"title": "t"}]}
    doc["sections"][0]["figures"] = [{"caption": "c", "png": "figures/a.png"}]
    (inner / "sections.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="outside the report folder"):
        load_sections(inner)


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "whynet.sections", "version": 1},
        {"format": "whynet.sections", "version": 1, "sections": {"a": 1}},
        {"format": "whynet.sections", "version": 1, "sections": [{"intro": "no title"}]},
        {"format": "whynet.sections", "version": 1, "sections": [{"title": 3}]},
        {"format": "whynet.sections", "version": 1, "sections": [{"title": "t", "figures": 3}]},
        {"format": "whynet.sections", "version": 1, "sections": [{"title": "t", "tables": [{}]}]},
        {"format": "whynet.sections", "version": 1, "sections": [{"title": "t", "notes": [{}]}]},
        {"format": "whynet.sections", "version": 99, "sections": []},
        [],
    ],
)
def test_edited_sections_files_give_a_clear_error(tmp_path, doc):
    (tmp_path / "sections.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="sections.json"):
        load_sections(tmp_path)


@pytest.mark.parametrize(
    "color",
    ["0,0,0);background:url(http://e.com/x", '"><script>x</script>', "300,0,0", "red", "1,2"],
)
def test_highlight_colour_is_validated(color):
    with pytest.raises(ValueError, match="color"):
        highlight_text(["a"], [0.5], color=color)
    assert "rgba(1,2,3," in highlight_text(["a"], [0.5], color="1,2,3")
    assert "rgba(1,2,3," in highlight_text(["a"], [0.5], color=" 1, 2, 3")


def test_highlight_refuses_non_finite_weights():
    with pytest.raises(ValueError, match="finite"):
        highlight_text(["a", "b"], [0.5, float("nan")])


def _sections(k: int) -> list[Section]:
    torch.manual_seed(k)
    figs = [Figure(f"v{k} f{j}", png=png_bytes(torch.rand(1, 4 + k, 4 + j))) for j in range(3)]
    return [Section(f"v{k}", figures=figs, tables=[Table("t", ["k"], [[k]])])]


def test_save_sections_is_atomic_as_a_whole(tmp_path):
    save_sections(_sections(0), tmp_path)
    code = textwrap.dedent(
        f"""
        import os, torch
        from tests.report.test_hostile import _sections
        from whynet.report import save_sections
        real, n = os.replace, [0]
        def replace(a, b):
            n[0] += 1
            if n[0] == 2:  # killed after the first figure of the new version
                os._exit(9)
            real(a, b)
        os.replace = replace
        save_sections(_sections(1), {str(tmp_path)!r})
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 9, run.stderr[-2000:]
    back = load_sections(tmp_path)  # old version, whole: title and every figure
    assert back[0].title == "v0"
    assert [f.png for f in back[0].figures] == [f.png for f in _sections(0)[0].figures]
    save_sections(_sections(1), tmp_path)
    back = load_sections(tmp_path)
    assert back[0].title == "v1"
    assert [f.png for f in back[0].figures] == [f.png for f in _sections(1)[0].figures]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in left if n.endswith(".tmp")], left
    assert len([n for n in left if n.startswith("figures")]) == 1, left


@pytest.mark.browser
def test_hostile_sections_run_no_script_in_headless_chromium(tmp_path):
    (tmp_path / "sections.json").write_text(json.dumps(_hostile_doc()))
    path = write_report(load_sections(tmp_path), tmp_path / "report.html", title=HOSTILE[0])
    dom, log = open_in_browser(path)
    assert 'data-broken-images="' in dom, log[-2000:]  # our own (hashed) script did run
    assert "RANX" not in log and "RANX" not in dom.replace("'RAN' + 'X'", "")
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == [], console


@pytest.mark.browser
def test_the_csp_blocks_a_script_that_got_past_the_escaping(tmp_path):
    page = render_html([Section("s")]).replace("<main>", f"<main><script>{RAN}</script>")
    path = tmp_path / "r.html"
    path.write_text(page)
    dom, log = open_in_browser(path)
    assert "RANX" not in log
    assert 'data-images="0"' in dom, log[-2000:]  # the report's own hashed script still runs
