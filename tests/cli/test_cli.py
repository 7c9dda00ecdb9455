import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from whynet.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whynet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ["influence", "inversion", "masks", "representer", "clusters"]:
        assert name in out


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    r = run("report", str(tmp_path / "missing"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"whynet: error: not a folder: {tmp_path / 'missing'}"]
    r = run("--debug", "report", str(tmp_path / "missing"))
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_bad_model_spec(capsys, tmp_path):
    code = main(
        ["explain", "--model", "nocolon", "--method", "influence", "--inputs", str(tmp_path)]
    )
    assert code == 1
    assert "MODULE:FACTORY" in capsys.readouterr().err


USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))
""")


def write_user_files(tmp_path: Path) -> tuple[Path, Path]:
    import matplotlib.image as mpimg

    (tmp_path / "my_model.py").write_text(USER_MODEL)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        mpimg.imsave(imgs / f"im{i}.png", rng.random((16, 16, 3)))
    return tmp_path / "my_model.py", imgs


def test_explain_a_model_from_a_users_file(tmp_path):
    pytest.importorskip("whynet.influence")
    model_file, imgs = write_user_files(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            "--model",
            f"{model_file}:make",
            "--method",
            "influence",
            "--inputs",
            str(imgs),
            "--layer",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "influence.safetensors").is_file() and (out / "report.html").is_file()
    from whynet import Explanation

    e = Explanation.load(out / "influence.safetensors")
    assert e.values.shape == (3, 4, 16, 16) and e.meta["files"] == ["im0.png", "im1.png", "im2.png"]
    assert main(["report", str(out)]) == 0


def test_explain_rejects_fitted_methods_and_missing_layer(tmp_path, capsys):
    model_file, imgs = write_user_files(tmp_path)
    assert (
        main(
            [
                "explain",
                "--model",
                f"{model_file}:make",
                "--method",
                "representer",
                "--inputs",
                str(imgs),
            ]
        )
        == 1
    )
    assert "fitted" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                "--model",
                f"{model_file}:nothere",
                "--method",
                "influence",
                "--inputs",
                str(imgs),
            ]
        )
        == 1
    )
    assert "no callable named 'nothere'" in capsys.readouterr().err


def test_methods_prints_the_registry_capabilities(capsys):
    from whynet.registry import registered

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for info in registered():
        assert f"{info.name} " in out and info.description in out
        if info.fitted:
            assert "needs fit" in out
    assert "whynet explain --method influence --layer" in out


def explain_args(*argv: str):
    from whynet.cli import build_parser

    return build_parser().parse_args(["explain", "--model", "m:f", "--inputs", "x", *argv])


def test_explainer_arguments_come_from_the_registry():
    from whynet.cli import CLIError, explainer_kwargs
    from whynet.registry import method_info

    args = explain_args("--method", "influence", "--layer", "features.3")
    assert explainer_kwargs(method_info("influence"), args) == {"layer": "features.3"}
    args = explain_args(
        "--method", "inversion", "--inversion-layer", "features.3", "--basis-layer", "features.1"
    )
    assert explainer_kwargs(method_info("inversion"), args) == {
        "inversion_layer": "features.3",
        "basis_layer": "features.1",
    }
    # --layer is still the inversion layer of guided feature inversion
    args = explain_args("--method", "inversion", "--layer", "features.3", "--basis-layer", "b")
    assert explainer_kwargs(method_info("inversion"), args) == {
        "inversion_layer": "features.3",
        "basis_layer": "b",
    }
    with pytest.raises(CLIError, match="influence needs --layer"):
        explainer_kwargs(method_info("influence"), explain_args("--method", "influence"))
    with pytest.raises(CLIError, match="inversion needs --basis-layer"):
        explainer_kwargs(
            method_info("inversion"), explain_args("--method", "inversion", "--layer", "a")
        )
    with pytest.raises(CLIError, match="does not take --head"):
        explainer_kwargs(
            method_info("influence"),
            explain_args("--method", "influence", "--layer", "a", "--head", "fc"),
        )


def test_explain_missing_layer_and_unknown_method(tmp_path, capsys):
    model_file, imgs = write_user_files(tmp_path)
    base = ["explain", "--model", f"{model_file}:make", "--inputs", str(imgs)]
    assert main([*base, "--method", "influence"]) == 1
    assert "influence needs --layer" in capsys.readouterr().err
    assert main([*base, "--method", "nosuch"]) == 1
    assert "unknown explainer 'nosuch'" in capsys.readouterr().err


def test_demo_rejects_unknown_sections(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--only", "nosuch"]) == 1
    assert "unknown section(s) nosuch" in capsys.readouterr().err
