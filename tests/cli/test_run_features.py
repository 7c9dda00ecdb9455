"""``whynet run`` features of issue 18's second part: evidence boxes and the pointing game,
fitted explainer files named in the config, SMILES drawn as molecules, data factories that
return columns or yield dict batches, metric tables per method, and the bundled configs of
``whynet demo``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch

from tests.cli.test_run import image_project, text_project
from whynet.cli import main

SMILES_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    CHARS = ["<pad>", "<unk>"] + list("CNOcnol()=123[]H")

    class CharNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(len(CHARS), 4, padding_idx=0)
            self.fc = nn.Linear(4, 2)

        def forward(self, ids):
            return self.fc(self.embedding(ids).sum(1))

    def make_model():
        torch.manual_seed(0)
        tok = lambda s: [CHARS.index(c) if c in CHARS else 1 for c in s]
        return CharNet(), {"tokenizer": tok, "tokens": list, "vocab": CHARS}
""")


def _metrics(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["methods"]


def test_boxes_give_the_pointing_game_of_each_map(tmp_path, capsys):
    from whynet import Explanation
    from whynet.metrics import pointing_game

    config = image_project(tmp_path)
    lines = ["file,x0,y0,x1,y1"]
    names = [f"{c}/{c}{i}.png" for c in ("cat", "dog") for i in range(2)]
    boxes = [[0, 0, 6, 6], [6, 6, 12, 12], [0, 6, 6, 12], [3, 3, 9, 9]]
    lines += [f"{n},{','.join(map(str, b))}" for n, b in zip(reversed(names), reversed(boxes))]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    text = config.read_text().replace(
        'explain = "explain"', 'explain = "explain"\nboxes = "boxes.csv"'
    )
    config.write_text(text)
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    got = _metrics(out)
    e = Explanation.load(out / "gradcam.safetensors")
    # rows matched by file name, whatever the order in the file
    want = pointing_game(e.values, torch.tensor(boxes), size=(12, 12)).tolist()
    assert got["gradcam"]["metrics"]["pointing game"] == want
    assert set(want) <= {0.0, 1.0}
    # influence (B, C, h, w) is summed over channels into one map per image
    assert len(got["influence"]["metrics"]["pointing game"]) == 4
    assert "pointing game" not in got["representer"]["metrics"]
    html = (out / "report.html").read_text()
    assert "Metrics by method" in html and "mean pointing game" in html
    if importlib.util.find_spec("faiss") is not None:  # 8 points for 2 centroids: faiss warns
        assert re.search(r"faiss: WARNING clustering \d+ points to 2 centroids", html)
        assert "WARNING clustering" not in capsys.readouterr().err

    (tmp_path / "boxes.csv").write_text("file,x0,y0,x1,y1\ncat/cat0.png,0,0,1,1\n")
    assert main(["run", str(config)]) == 1
    assert "boxes.csv: no box for cat/cat1.png" in capsys.readouterr().err
    (tmp_path / "boxes.csv").write_text("x0,y0\n1,2\n")
    assert main(["run", str(config)]) == 1
    assert "needs columns x0, y0, x1, y1" in capsys.readouterr().err


def test_a_fitted_file_in_the_config_is_loaded_not_refitted(tmp_path, capsys):
    from whynet import Explanation
    from whynet.registry import get_explainer
    from whynet.run import load_model, read_data

    config = text_project(tmp_path, data="reviews.txt")
    model_spec = f"{tmp_path / 'txt_model.py'}:make_model"
    fitted = tmp_path / "rp.safetensors"
    assert (
        main(
            [
                "fit",
                "--method",
                "representer",
                "--model",
                model_spec,
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
        == 0
    ), capsys.readouterr().err
    text = config.read_text()
    start = text.index("[methods.representer]")
    end = text.index("[methods.clusters]")
    table = '[methods.mine]\nmethod = "representer"\nfitted = "rp.safetensors"\n'
    config.write_text(text[:start] + table + text[end:])
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    e = Explanation.load(out / "mine.safetensors")
    model, info = load_model(model_spec, None)
    x = read_data(str(tmp_path / "reviews.txt"), info).x
    expected = get_explainer("representer").load(fitted, model).explain(x)
    assert torch.equal(e.values, expected.values)
    assert "load" in _metrics(out)["mine"]["seconds"]
    assert not list((out / "fitted").glob("mine-*"))  # nothing fitted, nothing cached
    assert "fitted explainer loaded from" in (out / "report.html").read_text()

    config.write_text(text[:start] + table + "head = 'fc'\n" + text[end:])
    assert main(["run", str(config)]) == 1
    assert "sets head and fitted" in capsys.readouterr().err
    config.write_text(
        text.replace("[methods.influence]", '[methods.influence]\nfitted = "rp.safetensors"')
    )
    assert main(["run", str(config)]) == 1
    assert "influence needs no fitting" in capsys.readouterr().err


def test_smiles_are_drawn_as_molecules_with_atom_weights(tmp_path, capsys):
    from whynet import Explanation

    (tmp_path / "chem.py").write_text(SMILES_MODEL)
    (tmp_path / "mols.smi").write_text("CCO ethanol\nc1ccccc1O phenol\n")
    (tmp_path / "chem.toml").write_text(
        textwrap.dedent("""
        [model]
        factory = "chem.py:make_model"
        [data]
        explain = "mols.smi"
        [methods.influence]
        layer = "embedding"
        [output]
        dir = "out"
    """)
    )
    assert main(["run", str(tmp_path / "chem.toml")]) == 0, capsys.readouterr().err
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/svg+xml;base64,") == 2
    assert "atoms: red = positive" in html and "c1ccccc1O" in html
    e = Explanation.load(tmp_path / "out" / "influence.safetensors")
    assert e.meta["tokens"][1] == list("c1ccccc1O")


DICT_DATA = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader

    def columns():
        return {"text": ["good fun movie", "awful plot"], "label": ["pos", "neg"],
                "name": ["first", "second"]}

    def batches():
        ids = torch.tensor([[2, 4, 8], [5, 0, 0], [3, 9, 0]])
        rows = [{"ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(3)]
        return DataLoader(rows, batch_size=2)
""")


def test_data_factories_may_return_columns_or_yield_dict_batches(tmp_path, capsys):
    from whynet.run import load_model, read_data

    text_project(tmp_path)
    (tmp_path / "data.py").write_text(DICT_DATA)
    _, info = load_model(f"{tmp_path / 'txt_model.py'}:make_model", None)
    cols = read_data(f"{tmp_path / 'data.py'}:columns", info)
    assert cols.names == ["first", "second"] and cols.texts == ["good fun movie", "awful plot"]
    assert cols.labels.tolist() == [1, 0] and cols.tokens[0] == ["good", "fun", "movie"]
    d = read_data(f"{tmp_path / 'data.py'}:batches", info)
    assert isinstance(d.x, dict) and d.x["ids"].shape == (3, 3)
    assert d.labels.tolist() == [0, 1, 0] and d.kind == "tokens"
    assert d.tokens[0] == ["good", "fun", "movie"] and d.tokens[1] == ["bad"]  # no padding
    # and a whole run on them: the batch reaches the model as model(ids=...)
    config = tmp_path / "text.toml"
    text = config.read_text().replace('explain = "reviews.csv"', 'explain = "data.py:batches"')
    config.write_text(text)
    assert main(["run", str(config)]) == 0, capsys.readouterr().err
    html = (tmp_path / "out" / "report.html").read_text()
    assert "batches[2]" in html and "good fun movie" in html


def test_the_bundled_configs_are_valid_and_only_picks_runs_and_methods(tmp_path):
    from whynet.run.config import RunError
    from whynet.run.demo import bundled_configs, demo_configs

    configs = bundled_configs()
    assert list(configs) == ["fashion", "canvas", "reviews", "molecules"]
    picked = demo_configs(tmp_path)
    methods = {m.method for c in picked for m in c.methods}
    from whynet.registry import registered

    assert methods == {i.name for i in registered()}  # every method runs in the demo
    assert all(c.out == tmp_path / c.path.stem for c in picked)
    for c in picked:  # shipped mask explainers are loaded, never trained in the demo
        assert all(
            m.fitted is not None and m.fitted.is_file() for m in c.methods if m.method == "masks"
        )
    only = demo_configs(tmp_path, ["canvas", "representer"])
    assert [c.path.stem for c in only] == ["fashion", "canvas", "reviews"]
    assert [m.label for m in only[0].methods] == ["representer"]
    with pytest.raises(RunError, match="unknown section.*nosuch; bundled runs: fashion"):
        demo_configs(tmp_path, ["nosuch"])


def test_native_stderr_turns_faiss_warnings_into_notes(capfd):
    from whynet.run.native import native_stderr

    notes: list[str] = []
    with native_stderr(notes):
        os.write(2, b"WARNING clustering 8 points to 2 centroids: please provide at least 78\n")
        os.write(2, b"something else\n")
    assert notes == [
        "faiss: WARNING clustering 8 points to 2 centroids: please provide at least 78"
    ]
    err = capfd.readouterr().err
    assert "something else" in err and "WARNING" not in err


def test_explain_finds_the_method_in_the_fitted_files_header(tmp_path, capsys):
    from whynet.run.commands import method_of_file

    text_project(tmp_path)
    model = f"{tmp_path / 'txt_model.py'}:make_model"
    fitted = tmp_path / "cl.safetensors"
    fit = ["fit", "--method", "clusters", "--model", model, "--data", str(tmp_path / "reviews.csv")]
    params = ["layers=embedding", "n_clusters=2", "algorithm=kmeans", "embed_dim=2", "n_init=2"]
    params.append("batch_size=4")
    for p in params:
        fit += ["--param", p]
    assert main([*fit, "--out", str(fitted)]) == 0, capsys.readouterr().err
    assert method_of_file(fitted) == "clusters"
    base = ["explain", "--model", model, "--inputs", str(tmp_path / "reviews.txt")]
    out = tmp_path / "ex"
    assert main([*base, "--explainer", str(fitted), "--out", str(out)]) == 0
    assert (out / "clusters.safetensors").is_file()
    capsys.readouterr()
    assert main([*base, "--explainer", str(fitted), "--method", "representer"]) == 1
    assert "holds a fitted clusters explainer, not representer" in capsys.readouterr().err
    explanation = out / "clusters.safetensors"  # an Explanation, not a fitted explainer
    assert main([*base, "--explainer", str(explanation)]) == 1
    assert "not a fitted explainer file" in capsys.readouterr().err


def test_registry_arguments_and_parameters_come_from_the_signatures():
    import inspect

    from whynet.registry import method_info

    assert [a.name for a in method_info("inversion").args] == ["inversion_layer", "basis_layer"]
    assert method_info("influence").args[0].help.startswith("dotted path of the layer")
    init, fit = method_info("masks").param_names()
    cls = method_info("masks").load()
    assert "epochs" in fit and "epochs" in inspect.signature(cls.fit).parameters
    assert not set(fit) & set(init) and "train_data" not in fit


@pytest.mark.slow
def test_demo_runs_bundled_configs_into_one_report(tmp_path, capsys):
    pytest.importorskip("rdkit")
    assert main(["demo", "--out", str(tmp_path), "--only", "molecules"]) == 0, (
        capsys.readouterr().err
    )
    html = (tmp_path / "report.html").read_text()
    assert "About this demo" in html and "tpsa-smiles on NCI molecules: influence" in html
    assert html.count("data:image/svg+xml;base64,") == 12  # 6 molecules x 2 methods
    assert (tmp_path / "molecules" / "report.html").is_file()
    assert (tmp_path / "molecules" / "masks.safetensors").is_file()
    sums = json.loads((tmp_path / "molecules" / "run.json").read_text())["checksums"]
    assert any(k.endswith("run/bundled.py") for k in sums)  # the factories' module
    assert any(k.endswith("masks/tpsa-smiles.safetensors") for k in sums)  # the fitted file
