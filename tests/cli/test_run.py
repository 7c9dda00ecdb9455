"""``whynet run CONFIG.toml`` end to end on a tiny image and a tiny text classifier built in a
temporary folder (issue 18), ``whynet fit`` / ``whynet explain --explainer``, and bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from whynet.cli import main

IMAGE_MODEL = textwrap.dedent("""
    from collections import OrderedDict
    import torch
    from torch import nn

    def make_model():
        torch.manual_seed(0)
        net = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(), fc=nn.Linear(16, 2)))
        return net, {"classes": ["cat", "dog"]}

    def broken():
        raise RuntimeError("no GPU here")
""")

TEXT_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    WORDS = "<pad> <unk> good great fun bad awful dull movie plot the a was".split()

    class MeanPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(len(WORDS), 8, padding_idx=0)
            self.fc = nn.Linear(8, 2)

        def forward(self, ids):
            mask = (ids != 0).float()[..., None]
            h = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
            return self.fc(h)

    def tokenize(text):
        return [WORDS.index(w) if w in WORDS else 1 for w in text.lower().split()]

    def make_model():
        torch.manual_seed(0)
        return MeanPool(), {"tokenizer": tokenize, "classes": ["neg", "pos"], "vocab": WORDS}
""")

REVIEWS = [
    ("good fun movie", "pos"),
    ("great plot", "pos"),
    ("the movie was great", "pos"),
    ("bad movie", "neg"),
    ("awful dull plot", "neg"),
    ("the plot was dull", "neg"),
]


def _png(path: Path, rng: np.random.Generator) -> None:
    import matplotlib.image as mpimg

    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(path, rng.random((12, 12, 3)))


def image_project(tmp: Path) -> Path:
    """model file, random safetensors weights, train/ and explain/ ImageFolders, a config."""
    from safetensors.torch import save_file

    (tmp / "img_model.py").write_text(IMAGE_MODEL)
    ns: dict = {}
    exec(IMAGE_MODEL, ns)
    model, _ = ns["make_model"]()
    torch.manual_seed(1)
    save_file(
        {k: torch.randn_like(v) * 0.5 for k, v in model.state_dict().items()},
        str(tmp / "weights.safetensors"),
    )
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("explain", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp / split / c / f"{c}{i}.png", rng)
    config = tmp / "images.toml"
    config.write_text(
        textwrap.dedent("""
        [model]
        factory = "img_model.py:make_model"
        weights = "weights.safetensors"
        [data]
        train = "train"
        explain = "explain"
        [methods.gradcam]
        layer = "conv"
        [methods.influence]
        layer = "conv"
        [methods.representer]
        head = "fc"
        max_iter = 200
        [methods.clusters]
        layers = ["conv", "fc"]
        n_clusters = 2
        algorithm = "kmeans"
        embed_dim = 2
        n_init = 2
        batch_size = 4
        [output]
        dir = "out"
        metric_steps = 4
    """)
    )
    return config


def text_project(tmp: Path, data: str = "reviews.csv") -> Path:
    (tmp / "txt_model.py").write_text(TEXT_MODEL)
    rows = ["text,label"] + [f"{t},{lab}" for t, lab in REVIEWS]
    (tmp / "reviews.csv").write_text("\n".join(rows) + "\n")
    (tmp / "reviews.txt").write_text("\n".join(t for t, _ in REVIEWS[:4]) + "\n")
    config = tmp / "text.toml"
    config.write_text(
        textwrap.dedent(f"""
        [model]
        factory = "txt_model.py:make_model"
        [data]
        train = "reviews.csv"
        explain = "{data}"
        [methods.influence]
        layer = "embedding"
        [methods.representer]
        head = "fc"
        max_iter = 200
        [methods.clusters]
        layers = ["embedding"]
        n_clusters = 2
        algorithm = "kmeans"
        embed_dim = 2
        n_init = 2
        batch_size = 4
        [output]
        dir = "out"
    """)
    )
    return config


def _fitted(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "fitted").glob("*.safetensors")}


def test_run_images_end_to_end_reuses_fits_and_force_refits(tmp_path, capsys):
    from whynet import Explanation
    from whynet.registry import get_explainer

    config = image_project(tmp_path)
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    out = tmp_path / "out"
    assert captured.out.strip() == str((out / "report.html").resolve())
    assert "report:" in captured.err and "gradcam" in captured.err
    for label in ("gradcam", "influence", "representer", "clusters"):
        e = Explanation.load(out / f"{label}.safetensors")
        assert len(e) == 4 and e.meta["files"][0] == "cat/cat0.png"
        assert e.meta["classes"] == ["cat", "dog"] and e.extras["inputs"].shape == (4, 3, 12, 12)
    fits = _fitted(out)
    assert sorted(n.split("-")[0] for n in fits) == ["clusters", "representer"]
    model = __import__("whynet.run", fromlist=["x"]).load_model(
        f"{tmp_path / 'img_model.py'}:make_model", tmp_path / "weights.safetensors"
    )[0]
    for name in fits:
        get_explainer(name.split("-")[0]).load(out / "fitted" / name, model)
    html = (out / "report.html").read_text()
    for name in (
        "cat0.png",
        "dog1.png",
        "deletion AUC",
        "decomposition error",
        "surrogate fidelity",
        "sha256",
    ):
        assert name in html, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    assert main(["run", str(config)]) == 0
    assert _fitted(out) == fits  # reused: same files, same mtimes
    assert "reused" in (out / "report.html").read_text()
    assert main(["run", str(config), "--force"]) == 0
    again = _fitted(out)
    assert again.keys() == fits.keys() and all(again[k] != fits[k] for k in fits)
    # new inputs to explain: the fits still hold; new training data: they are redone
    _png(tmp_path / "explain" / "dog" / "dog9.png", np.random.default_rng(5))
    assert main(["run", str(config)]) == 0
    assert _fitted(out) == again
    assert "dog9.png" in (out / "report.html").read_text()
    _png(tmp_path / "train" / "dog" / "dog9.png", np.random.default_rng(6))
    assert main(["run", str(config)]) == 0
    assert not set(_fitted(out)) & set(again)


def test_run_text_end_to_end(tmp_path, capsys):
    from whynet import Explanation

    config = text_project(tmp_path, data="reviews.txt")
    out = tmp_path / "elsewhere"
    assert main(["run", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    for text, _ in REVIEWS[:4]:
        assert text in html, text
    assert "reviews.txt:1" in html and "reviews.csv:2" in html  # inputs and training rows
    e = Explanation.load(out / "influence.safetensors")
    assert e.meta["texts"][0] == REVIEWS[0][0] and e.meta["tokens"][0] == ["good", "fun", "movie"]
    assert not (tmp_path / "out").exists()


def test_fit_then_explain_with_the_fitted_file(tmp_path, capsys):
    text_project(tmp_path)
    fitted = tmp_path / "rp.safetensors"
    model = f"{tmp_path / 'txt_model.py'}:make_model"
    code = main(
        [
            "fit",
            "--method",
            "representer",
            "--model",
            model,
            "--data",
            str(tmp_path / "reviews.csv"),
            "--param",
            "head=fc",
            "--param",
            "max_iter=50",
            "--out",
            str(fitted),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "ex"
    code = main(
        [
            "explain",
            "--explainer",
            str(fitted),
            "--model",
            model,
            "--inputs",
            str(tmp_path / "reviews.txt"),
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    from whynet import Explanation

    e = Explanation.load(out / "representer.safetensors")
    assert e.values.shape == (4, 6) and e.params["max_iter"] == 50
    capsys.readouterr()
    assert (
        main(
            [
                "fit",
                "--method",
                "representer",
                "--model",
                model,
                "--data",
                str(tmp_path / "reviews.csv"),
                "--param",
                "heads=fc",
                "--out",
                str(fitted),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "unknown parameter(s) heads" in err and "known: head, l2" in err


BAD = {
    "missing file": ('explain = "explain"', 'explain = "nothere"', "data not found"),
    "wrong factory": ("img_model.py:make_model", "img_model.py:broken", "no GPU here"),
    "no such factory": ("img_model.py:make_model", "img_model.py:nope", "no callable named"),
    "unknown method": ("[methods.gradcam]", "[methods.gradcamm]", "unknown explainer 'gradcamm'"),
    "unknown parameter": (
        'layer = "conv"\n[methods.influence]',
        'layr = "conv"\n[methods.influence]',
        "unknown parameter(s) layr for gradcam; known: layer",
    ),
    "unknown layer": (
        'layer = "conv"\n[methods.influence]',
        'layer = "convv"\n[methods.influence]',
        "unknown layer 'convv'",
    ),
    "unknown section": ("[output]", "[outputs]", "unknown key(s) outputs; known: data"),
    "bad weights": ("weights.safetensors", "img_model.py", "must be a .safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_give_one_line_and_no_output(tmp_path, capsys, case):
    config = image_project(tmp_path)
    old, new, message = BAD[case]
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not [p for p in tmp_path.iterdir() if "out" in p.name]


def test_bad_data_files_name_the_file(tmp_path, capsys):
    config = text_project(tmp_path, data="reviews.txt")
    (tmp_path / "reviews.txt").write_text("good movie\n\nbad movie\n")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"whynet: error: {tmp_path / 'reviews.txt'}:2: empty line (one example per line)"
    ]
    config = image_project(tmp_path)
    (tmp_path / "explain" / "cat" / "broken.png").write_bytes(b"not a png")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png: cannot decode the image" in err[0]
    (tmp_path / "explain" / "cat" / "broken.png").unlink()
    (tmp_path / "explain" / "bird").mkdir()
    _png(tmp_path / "explain" / "bird" / "b.png", np.random.default_rng(1))
    assert main(["run", str(config)]) == 1
    assert "class folder(s) bird are not among" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if "out" in p.name]


def test_a_failed_rerun_keeps_the_previous_output(tmp_path, capsys):
    config = text_project(tmp_path, data="reviews.txt")
    assert main(["run", str(config)]) == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    (tmp_path / "reviews.txt").write_text("good\n\n")
    assert main(["run", str(config)]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.browser
def test_run_report_in_headless_chromium(tmp_path, capsys):
    from tests.report.test_report import open_in_browser

    config = text_project(tmp_path, data="reviews.txt")
    assert main(["run", str(config)]) == 0
    dom, log = open_in_browser(tmp_path / "out" / "report.html")
    assert 'data-broken-images="0"' in dom, log[-2000:]
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == [], console
    for text, _ in REVIEWS[:4]:
        assert text in dom
    images = tmp_path / "images"
    images.mkdir()
    assert main(["run", str(image_project(images))]) == 0
    dom, log = open_in_browser(images / "out" / "report.html")
    assert 'data-broken-images="0"' in dom and 'data-images="2"' in dom, log[-2000:]
    assert [line for line in log.splitlines() if "CONSOLE" in line] == []
    assert "cat/cat0.png" in dom and "dog/dog1.png" in dom


def test_labels_must_match_the_model_outputs(tmp_path, capsys):
    config = text_project(tmp_path)
    (tmp_path / "reviews.csv").write_text("text,label\ngood movie,pos\nbad movie,3\n")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 3 does not match the model's 2 outputs" in err[0], err
    (tmp_path / "reviews.csv").write_text("text,label\ngood movie,pos\nbad movie,meh\n")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert "reviews.csv:3: label 'meh' is not a class; classes: neg, pos" in err


def test_explain_takes_any_constructor_parameter_by_param(tmp_path, capsys):
    from whynet import Explanation

    image_project(tmp_path)
    base = [
        "explain",
        "--model",
        f"{tmp_path / 'img_model.py'}:make_model",
        "--method",
        "gradcam",
        "--inputs",
        str(tmp_path / "explain" / "cat"),
        "--layer",
        "conv",
    ]
    out = tmp_path / "ex"
    assert main([*base, "--param", "relu=false", "--out", str(out)]) == 0
    assert Explanation.load(out / "gradcam.safetensors").params["relu"] is False
    assert main([*base, "--param", "rlu=false", "--out", str(out)]) == 1
    assert "unknown parameter(s) rlu for gradcam; known: layer, relu" in capsys.readouterr().err


@pytest.mark.parametrize("bar", ["1", "0"])
def test_run_shows_one_bar_over_its_steps_or_one_line_per_step(tmp_path, capsys, monkeypatch, bar):
    monkeypatch.setenv("WHYNET_PROGRESS", bar)
    config = text_project(tmp_path, data="reviews.txt")
    assert main(["run", str(config)]) == 0
    err = capsys.readouterr().err
    if bar == "1":  # tqdm: a count over the 3 methods, each step named in the postfix
        assert "whynet run text.toml" in err and "0/3" in err and "[run] " not in err
        assert "clusters (clusters)" in err
    else:
        assert [line for line in err.splitlines() if line.startswith("[run] ")] == [
            "[run] influence (influence) ...",
            "[run] representer (representer) ...",
            "[run] clusters (clusters) ...",
        ]
    assert "whynet run: 3 method(s)" in err  # the closing summary either way
