"""``whynet run`` with ``[engine]`` (issue 19, "one switch"): the local key changes nothing, bad
settings are one clear line each, and the same representer config on Ray gives the local
run's numbers (on the one local Ray cluster of the test run, ``ray_cluster`` in
tests/conftest.py)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.cli.test_run import image_project
from whynet.cli import main

BASE = """
[model]
factory = "img_model.py:make_model"
weights = "weights.safetensors"
[data]
train = "train"
explain = "explain"
{methods}
[output]
dir = "{out}"
metric_steps = 4
{engine}
"""


REPRESENTER = """
[methods.representer]
head = "fc"
max_iter = 200
"""


def _config(tmp: Path, name: str, out: str, engine: str = "", methods: str = REPRESENTER) -> Path:
    if not (tmp / "img_model.py").exists():
        image_project(tmp)
    path = tmp / f"{name}.toml"
    path.write_text(textwrap.dedent(BASE.format(out=out, engine=engine, methods=methods)))
    return path


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def _run(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["run", str(config)])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_local_engine_key_gives_the_same_artefacts_as_no_key(tmp_path, capsys):
    _run(_config(tmp_path, "plain", "out_plain"), capsys)
    engine = '[engine]\nname = "local"\nworkers = 3\nstore = "ignored"\n'
    _run(_config(tmp_path, "local", "out_local", engine), capsys)
    a, b = tmp_path / "out_plain", tmp_path / "out_local"
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors")) and files
    for rel in files:  # explanations and fitted explainers: every tensor and all metadata
        # (not the raw bytes: safetensors writes its header's metadata map in a random order,
        # so two saves of the same object differ byte-wise already without an engine key)
        (ta, ma), (tb, mb) = _tensors(a / rel), _tensors(b / rel)
        assert ma == mb and ta.keys() == tb.keys(), rel
        assert all(torch.equal(ta[k], tb[k]) for k in ta), rel
    assert (a / "fitted" / "index.json").read_bytes() == (b / "fitted" / "index.json").read_bytes()
    doc = json.loads((b / "run.json").read_text())
    assert "engine" not in doc and "engines" not in doc["methods"]["representer"]
    assert not (b / "scale").exists() and not (tmp_path / "ignored").exists()


@pytest.mark.parametrize(
    "engine, message",
    [
        ('name = "spark"', "[engine] name must be one of 'local', 'ray', got 'spark'"),
        ("name = 1", "[engine] name must be one of 'local', 'ray', got 1"),
        ('name = "ray"\nworkers = "2"', "[engine] workers must be an integer >= 1, got '2'"),
        ('name = "ray"\nworkers = 0', "[engine] workers must be an integer >= 1, got 0"),
        ("workers = 1.5", "[engine] workers must be an integer >= 1, got 1.5"),
        ("workers = true", "[engine] workers must be an integer >= 1, got True"),
        ('name = "ray"\naddress = 6379', "[engine] address must be a Ray address string"),
        ("store = 3", "[engine] store must be a folder path, got 3"),
        ('gpus = 2\nname = "ray"', "[engine]: unknown key(s) gpus; known: address, name, store"),
    ],
)
def test_bad_engine_settings_are_one_line(tmp_path, capsys, engine, message):
    config = _config(tmp_path, "bad", "out", f"[engine]\n{engine}\n")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_engine_must_be_a_table(tmp_path, capsys):
    config = _config(tmp_path, "bad", "out")
    config.write_text('engine = "ray"\n' + config.read_text())
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[engine] must be a table" in err[0], err


def test_ray_engine_without_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    config = _config(tmp_path, "noray", "out", '[engine]\nname = "ray"\n')
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'whynet[scale]'" in err[0], err
    assert not (tmp_path / "out").exists()


def test_unreachable_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    engine = '[engine]\nname = "ray"\naddress = "127.0.0.1:1"\n'
    config = _config(tmp_path, "far", "out", engine)
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err[0], err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- on Ray


@pytest.mark.slow
def test_ray_representer_run_equals_the_local_run(ray_cluster, tmp_path, capsys):
    from whynet import Explanation

    _run(_config(tmp_path, "local", "out_local"), capsys)
    store = tmp_path / "stores"
    engine = f'[engine]\nname = "ray"\nworkers = 1\nstore = "{store.name}"\n'
    _run(_config(tmp_path, "ray", "out_ray", engine), capsys)
    a, b = tmp_path / "out_local", tmp_path / "out_ray"
    (fit_a,) = (a / "fitted").glob("representer-*.safetensors")
    (fit_b,) = (b / "fitted").glob("representer-*.safetensors")
    assert fit_a.name == fit_b.name  # the fit key does not depend on the engine
    (ta, ma), (tb, mb) = _tensors(fit_a), _tensors(fit_b)
    assert ma == mb and ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # alpha, weight, features: bitwise
    ea, eb = (Explanation.load(d / "representer.safetensors") for d in (a, b))
    assert torch.equal(ea.values, eb.values) and torch.equal(ea.target, eb.target)
    assert ea.extras.keys() == eb.extras.keys()
    assert all(torch.equal(ea.extras[k], eb.extras[k]) for k in ea.extras)
    assert eb.meta["files"] == ea.meta["files"] and eb.meta["classes"] == ea.meta["classes"]
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ra["methods"]["representer"]["metrics"] == rb["methods"]["representer"]["metrics"]
    assert rb["methods"]["representer"]["engines"] == {"fit": "ray", "explain": "ray"}
    assert rb["engine"]["name"] == "ray" and rb["engine"]["store"] == str(store)
    kinds = sorted(p.name.split("-")[0] for p in store.iterdir())
    assert kinds == ["explain", "fit"] and all(
        (p / "manifest.json").is_file() for p in store.iterdir()
    )


CLUSTERS = """
    [methods.clusters]
    layers = ["conv", "fc"]
    n_clusters = 2
    algorithm = "{algorithm}"
    embed_dim = 2
    n_init = 2
    batch_size = 4
    {extra}
"""


def _stub_explain_all(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``scale.explain_all`` replaced by the local call, recording the engine it was given
    (the Ray explain path is covered by the representer test above)."""
    from whynet import scale

    calls: list[str] = []

    def explain_all(explainer, inputs, target=None, *, store=None, engine="local", **kw):
        calls.append(getattr(engine, "name", engine))
        return explainer.explain(inputs, target=target)

    monkeypatch.setattr(scale, "explain_all", explain_all)
    return calls


@pytest.mark.slow
def test_ray_shards_kmeans_cluster_fits(ray_cluster, tmp_path, capsys, monkeypatch):
    """clusters with k-means: fitted from the sharded store on Ray, equal to the local fit to
    1e-10 (sums over shards in another order than one pass)."""
    calls = _stub_explain_all(monkeypatch)
    clusters = CLUSTERS.format(algorithm="kmeans", extra="")
    _run(_config(tmp_path, "local", "out_local", methods=clusters), capsys)
    err = _run(
        _config(tmp_path, "ray", "out_ray", '[engine]\nname = "ray"\n', methods=clusters), capsys
    )
    assert calls == ["local", "ray"] and "is fitted in this process" not in err
    doc = json.loads((tmp_path / "out_ray" / "run.json").read_text())
    assert doc["methods"]["clusters"]["engines"] == {"fit": "ray", "explain": "ray"}
    (fa,) = (tmp_path / "out_local" / "fitted").glob("clusters-*.safetensors")
    (fb,) = (tmp_path / "out_ray" / "fitted").glob("clusters-*.safetensors")
    (ta, _), (tb, _) = _tensors(fa), _tensors(fb)
    assert ta.keys() == tb.keys()
    for k in ta:
        if ta[k].is_floating_point():
            torch.testing.assert_close(tb[k].double(), ta[k].double(), rtol=0, atol=1e-10)
        else:
            assert torch.equal(ta[k], tb[k]), k


@pytest.mark.slow
def test_ray_fits_other_methods_here_with_a_note(ray_cluster, tmp_path, capsys, monkeypatch):
    """clusters with IDEC: fitted in this process (the Ray engine shards representer and
    k-means fits only), with a printed note; its explanation goes through
    ``scale.explain_all`` on the Ray engine."""
    calls = _stub_explain_all(monkeypatch)
    clusters = CLUSTERS.format(algorithm="idec", extra="max_iter = 2\n    pretrain_epochs = 1")
    _run(_config(tmp_path, "local", "out_local", methods=clusters), capsys)
    err = _run(
        _config(tmp_path, "ray", "out_ray", '[engine]\nname = "ray"\n', methods=clusters), capsys
    )
    assert calls == ["local", "ray"]
    assert "note: clusters (clusters) is fitted in this process" in err
    doc = json.loads((tmp_path / "out_ray" / "run.json").read_text())
    assert doc["methods"]["clusters"]["engines"] == {"fit": "local", "explain": "ray"}
    (fa,) = (tmp_path / "out_local" / "fitted").glob("clusters-*.safetensors")
    (fb,) = (tmp_path / "out_ray" / "fitted").glob("clusters-*.safetensors")
    (ta, ma), (tb, mb) = _tensors(fa), _tensors(fb)
    assert ma == mb and all(torch.equal(ta[k], tb[k]) for k in ta)
