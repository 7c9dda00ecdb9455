"""The bad-input probe of issue 16, re-run: every registered explainer fed a table of bad (and
some legitimate but unusual) inputs, targets, settings, training data and files.

Each call is classified:

- ``clear``: an exception raised by whynet's own code with a message (the last traceback frame
  is inside ``whynet/``, and it is not a Python internal error such as ``KeyError`` /
  ``AttributeError`` / ``AssertionError``);
- ``raw``: any other exception (raised inside torch / numpy / safetensors, or an internal error);
- ``silent``: a call that must be refused returned a result, or an accepted call returned
  non-finite values or values that differ from the reference (the same inputs in their plain
  form: float32, contiguous, no grad);
- ``accepted``: an unusual but legitimate call gave the reference result.

After every call the model must be untouched (no hook left, modes, ``requires_grad``, parameters
and buffers as before, no ``.grad``); breaches are counted too. Recipes (how to build and fit each
method on a tiny CNN) are the contract suite's (``tests/test_contract.py``), so a new method is
probed as soon as it has a recipe.

Run: ``.venv/bin/python benchmarks/bench_probe.py [--flips N]`` (about a minute; one thread).
Writes ``benchmarks/results/probe.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import hook_count  # noqa: E402
from tests.test_contract import NAMES, RECIPES, data, fresh_model, snapshot  # noqa: E402

from whynet.core import Explanation  # noqa: E402
from whynet.registry import method_info  # noqa: E402

INTERNAL = (KeyError, AttributeError, AssertionError, NameError, UnboundLocalError, RecursionError)
NAN, INF = float("nan"), float("inf")
X = data()[:4]


def classify(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = bool(frames) and "/whynet/" in frames[-1].filename
    ours = ours and "site-packages" not in frames[-1].filename
    own_class = type(exc).__module__.startswith("whynet")  # e.g. NotFittedError
    internal = isinstance(exc, INTERNAL) and not own_class
    clear = ours and bool(str(exc).strip()) and not internal
    return "clear" if clear else "raw"


def touched(model: torch.nn.Module, before: Any) -> bool:
    modes, grads, tensors = before
    return (
        hook_count(model) > 0
        or {n: m.training for n, m in model.named_modules()} != modes
        or {n: p.requires_grad for n, p in model.named_parameters()} != grads
        or any(not torch.equal(t, tensors[n]) for n, t in model.state_dict().items())
        or any(p.grad is not None for p in model.parameters())
    )


def _values(e: Any) -> torch.Tensor:
    return e.values if isinstance(e, Explanation) else torch.as_tensor(e)


# ---- the table: (name, call(explainer) -> result, must_refuse, reference or None) ----------
def explain_cases(t0: int | None) -> list[tuple[str, Callable[[Any], Any], bool, bool]]:
    """(case, call, must_refuse, compare_with_reference); ``t0`` is a valid target."""
    bad_x = {
        "nan input": X.clone().index_put_((torch.tensor([0]),), torch.tensor(NAN)),
        "+inf input": X.clone().index_put_((torch.tensor([1]),), torch.tensor(INF)),
        "-inf input": X.clone().index_put_((torch.tensor([2]),), torch.tensor(-INF)),
        "3 channels for a 1-channel model": X.repeat(1, 3, 1, 1),
        "no batch dimension": X[0],
        "5-d input": X[:, None],
        "empty batch": X[:0],
        "int64 input": (X * 10).long(),
        "bool input": X > 0.5,
        "complex input": X.to(torch.complex64),
    }
    cases: list[tuple[str, Callable[[Any], Any], bool, bool]] = [
        (k, lambda e, v=v: e.explain(v), True, False) for k, v in bad_x.items()
    ]
    cases += [
        ("a string as inputs", lambda e: e.explain("images/"), True, False),
        ("None as inputs", lambda e: e.explain(None), True, False),
        ("a dict with an unknown key", lambda e: e.explain({"pixel_mask": X}), True, False),
    ]
    bad_t: dict[str, Any] = {
        "target 99": 99,
        "target -1": -1,
        "target 1.5": 1.5,
        "target True": True,
        "float target tensor": torch.zeros(4),
        "target list of wrong length": [0, 1],
        "2-d target": torch.zeros(4, 1, dtype=torch.long),
        "target 'banana'": "banana",
        "target out of range in a list": [0, 1, 2, 7],
        "target nan": NAN,
    }
    cases += [(k, lambda e, t=t: e.explain(X, target=t), True, False) for k, t in bad_t.items()]
    # legitimate but unusual: must equal the plain call
    cases += [
        ("float64 input (cast)", lambda e: e.explain(X.double(), target=t0), False, True),
        (
            "input requiring grad",
            lambda e: e.explain(X.clone().requires_grad_(), target=t0),
            False,
            True,
        ),
        (
            "non-contiguous input",
            lambda e: e.explain(X.transpose(2, 3).contiguous().transpose(2, 3), target=t0),
            False,
            True,
        ),
        ("batch of one", lambda e: e.explain(X[:1], target=t0), False, False),
    ]
    if t0 is not None:  # class targets in other spellings: the same as the int
        cases += [
            ("numpy int64 target", lambda e: e.explain(X, target=np.int64(0)), False, True),
            (
                "long tensor target",
                lambda e: e.explain(X, target=torch.zeros(4, dtype=torch.long)),
                False,
                True,
            ),
        ]
    return cases


def setting_cases(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Constructor settings that must be refused (at construction or at first use)."""
    cases: list[tuple[str, dict[str, Any]]] = [
        ("batch_size 0", {"batch_size": 0}),
        ("batch_size -1", {"batch_size": -1}),
        ("batch_size 2.5", {"batch_size": 2.5}),
        ("batch_size '8'", {"batch_size": "8"}),
        ("output 'nope'", {"output": "nope"}),
        ("output 7", {"output": 7}),
    ]
    layer_key = {"influence": "layer", "gradcam": "layer", "representer": "head"}.get(name)
    if layer_key:
        cases.append((f"{layer_key} that does not exist", {layer_key: "features.99"}))
    if name == "clusters":
        cases += [("n_clusters 0", {"n_clusters": 0}), ("layers []", {"layers": []})]
    if name == "inversion":
        cases += [("lr nan", {"lr": NAN}), ("stage1_steps -1", {"stage1_steps": -1})]
    if name == "representer":
        cases += [("l2 nan", {"l2": NAN}), ("l2 0", {"l2": 0.0}), ("max_iter -5", {"max_iter": -5})]
    return cases


def fit_cases() -> list[tuple[str, Callable[[Any], Any]]]:
    d = data()
    lab = torch.zeros(len(d), dtype=torch.long)
    return [
        ("labels of the wrong length", lambda e: e.fit(d, labels=lab[:5])),
        ("labels out of range", lambda e: e.fit(d, labels=lab + 9)),
        ("negative labels", lambda e: e.fit(d, labels=lab - 1)),
        ("float labels", lambda e: e.fit(d, labels=lab.float() + 0.5)),
        ("2-d labels", lambda e: e.fit(d, labels=lab[:, None])),
        (
            "nan training data",
            lambda e: e.fit(d.clone().index_put_((torch.tensor([3]),), torch.tensor(NAN))),
        ),
        ("empty training data", lambda e: e.fit(d[:0])),
        ("a string as training data", lambda e: e.fit("train/")),
        ("explain before fit", lambda e: e.explain(X)),
    ]


def run(call: Callable[[], Any], must_refuse: bool, reference: Any = None) -> str:
    try:
        out = call()
    except Exception as exc:  # noqa: BLE001 - the probe classifies every exception
        return classify(exc)
    if must_refuse:
        return "silent"
    v = _values(out)
    if v.is_floating_point() and not torch.isfinite(v).all():
        return "silent"
    if reference is not None and not torch.allclose(
        v.double(), _values(reference).double(), rtol=1e-4, atol=1e-6
    ):
        return "silent"
    return "accepted"


def probe_method(name: str, flips: int, rng: random.Random, folder: Path) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    details: list[dict[str, str]] = []
    breaches = 0

    def record(case: str, outcome: str, model: torch.nn.Module, before: Any) -> None:
        nonlocal breaches
        counts[outcome] += 1
        if touched(model, before):
            breaches += 1
            details.append({"case": case, "outcome": "model touched"})
        if outcome in ("raw", "silent"):
            details.append({"case": case, "outcome": outcome})

    recipe = RECIPES[name]
    model = fresh_model()
    explainer = recipe(model)
    t0 = 0 if method_info(name).targets in ("class", "qoi") else None
    reference = explainer.explain(X, target=t0)
    for case, call, must_refuse, compare in explain_cases(t0):
        before = snapshot(model)
        record(
            case,
            run(lambda call=call: call(explainer), must_refuse, reference if compare else None),
            model,
            before,
        )
    for case, kw in setting_cases(name):
        m = fresh_model()
        before = snapshot(m)

        def build(kw: dict[str, Any] = kw, m: torch.nn.Module = m) -> Any:
            return _remake(recipe, m, kw).explain(X, target=t0)

        record(case, run(build, True), m, before)
    if method_info(name).fitted:
        for case, call in fit_cases():
            m = fresh_model()
            before = snapshot(m)
            e = recipe.make(m)
            record(case, run(lambda call=call, e=e: call(e), True), m, before)
        path = explainer.save(folder / f"{name}.safetensors")
        raw = path.read_bytes()
        for i in range(flips):
            corrupt = bytearray(raw)
            corrupt[rng.randrange(len(corrupt))] ^= rng.randrange(1, 256)
            bad = folder / f"{name}-flip.safetensors"
            bad.write_bytes(bytes(corrupt))
            before = snapshot(model)
            outcome = run(
                lambda bad=bad: type(explainer).load(bad, model).explain(X, target=t0),
                False,
                reference,
            )
            # a flip the checksum does not cover (JSON whitespace) may load: then it must equal
            record(f"byte flip {i}", outcome, model, before)
        for case, content in [
            ("empty file", b""),
            ("JSON file", b"{}"),
            ("truncated", raw[: len(raw) // 2]),
        ]:
            bad = folder / f"{name}-bad.safetensors"
            bad.write_bytes(content)
            before = snapshot(model)
            record(case, run(lambda bad=bad: type(explainer).load(bad, model), True), model, before)
        before = snapshot(model)
        record(
            "a folder as the file",
            run(lambda: type(explainer).load(folder, model), True),
            model,
            before,
        )
    return {
        "calls": sum(counts.values()),
        **dict(counts),
        "model_touched": breaches,
        "problems": details,
    }


def _remake(recipe: Any, model: torch.nn.Module, kw: dict[str, Any]) -> Any:
    """The recipe's explainer with ``kw`` changed: rebuilt through its constructor (validation
    at construction), fitted where the method needs it."""
    base = recipe.make(model)
    params = {**base.get_params(), **kw}
    e = type(base)(model, **{k: v for k, v in params.items() if k != "model"})
    return recipe.fit(e) if recipe.fit is not None else e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=40, help="byte flips per fitted file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            out["methods"][name] = probe_method(name, args.flips, rng, Path(tmp))
            r = out["methods"][name]
            print(
                f"{name:12s} calls {r['calls']:4d} clear {r.get('clear', 0):4d} "
                f"accepted {r.get('accepted', 0):3d} raw {r.get('raw', 0):3d} "
                f"silent {r.get('silent', 0):3d} touched {r['model_touched']}"
            )
    total: Counter[str] = Counter()
    for r in out["methods"].values():
        total.update(
            {
                k: r.get(k, 0)
                for k in ("calls", "clear", "accepted", "raw", "silent", "model_touched")
            }
        )
    out["total"] = dict(total)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("total", dict(total), f"{out['seconds']} s")
    dest = ROOT / "benchmarks" / "results" / "probe.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
