"""Representer points: fidelity, dataset debugging and speed, beside dattri and Captum.

Usage::

    python benchmarks/bench_representer.py [fidelity|debug|speed|floor|all] [--quick]

``floor`` (issue 17) times each operation next to its hand-written floor in one run: the fit vs
one no-grad forward over the training set, one query vs forward + mat-vec + top-k, 1,000 queries,
dattri's RPSAttributor for one query after its fit, the simulated 1M memory-mapped store.

fidelity and speed use the zoo's ``fashion-cnn`` (``--model smallcnn``: the SmallCNN stand-in
of the results taken before its weights shipped); debug trains its own MLP on noisy labels.
Prints JSON and writes ``benchmarks/results/representer.json`` (one key per experiment; a run
of one experiment keeps the others' last results). Peak memory is the growth of the process's
maximum RSS (``resource.getrusage``) over the step, so it is only an upper bound once an
earlier step went higher; timings are medians over repeats, whynet and its peers timed in the
same process on the same model and data. The machine is shared: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from whynet.representer import RepresenterPoints, augment

RESULTS = Path(__file__).resolve().parent / "results" / "representer.json"


# ---- data and models -------------------------------------------------------------------------


def fashion(split: str, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from whynet.data import fashion_mnist

    ds = fashion_mnist(split)
    x = torch.from_numpy(np.asarray(ds.images)).float().div(255.0).unsqueeze(1)
    y = torch.as_tensor(np.asarray(ds.labels)).long()
    if n is not None and n < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x, y


class SmallCNN(nn.Module):
    """Two conv blocks, a 64-unit embedding and a linear ``head`` (~55k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallMLP(nn.Module):
    """784-128-32 MLP and a linear ``head``: cheap enough to retrain many times."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU()
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int = 0,
    snapshots: bool = False,
    arch: type[nn.Module] = SmallCNN,
) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Adam 1e-3, batch 128; optionally the state after each epoch (TracIn checkpoints)."""
    torch.manual_seed(seed)
    model = arch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if snapshots:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    model.eval()
    return model, states


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


MODEL = "fashion-cnn"  # --model; "smallcnn" = the stand-in used before the zoo weights shipped


def reference_model(quick: bool) -> tuple[nn.Module, str]:
    """The zoo's ``fashion-cnn`` (default; an error if its weights are missing), or with
    ``--model smallcnn`` the stand-in SmallCNN trained here (the earlier results' model)."""
    if MODEL == "fashion-cnn":
        from whynet.zoo import load_model

        model, _ = load_model("fashion-cnn")
        return model.eval(), "fashion-cnn (zoo)"
    cache = Path(tempfile.gettempdir()) / f"whynet_bench_smallcnn_{int(quick)}.pt"
    model = SmallCNN()
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        x, y = fashion("train", 10000 if quick else 20000)
        model, _ = train(x, y, epochs=1)
        log("trained SmallCNN for the benchmark")
        torch.save(model.state_dict(), cache)
    return model.eval(), "SmallCNN stand-in trained in the benchmark"


class Peak:
    """Growth of the max RSS (MB) over a block: an upper bound, see the module docstring."""

    def __enter__(self) -> Peak:
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start) / 1024


def timed(fn: Any, repeats: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def cpu_timed(fn: Any) -> tuple[float, float, Any]:
    """``(wall s, process CPU s, result)`` of one call: on a shared, oversubscribed machine the
    wall time counts other jobs' slices, the CPU time (one thread) does not."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def stages(fn: Any) -> dict[str, int]:
    """Which stage of the exact top points settled each query of one call of ``fn``, and the
    rows the pruned scan read (``whynet.representer._certify.STATS``)."""
    from whynet.representer import _certify

    _certify.STATS.clear()
    fn()
    return dict(_certify.STATS)


def float32_stage(fn: Any) -> Any:
    """``fn()`` with the pruned scan off: every query through the certified float32 scan."""
    from whynet.representer import _prune

    keep, _prune.MAX_K = _prune.MAX_K, 0
    try:
        return fn()
    finally:
        _prune.MAX_K = keep


# ---- 1. fidelity -----------------------------------------------------------------------------


def fidelity(quick: bool, solvers: tuple[str, ...] = ("gd", "lbfgs")) -> dict[str, Any]:
    """Pearson r between the model's softmax and the decomposition's softmax (paper Sec. 4.1).

    Features and outputs are extracted once (``extract_s``) and every solver fits on them
    (``fit_features``; ``fit_s`` = the solver alone).
    """
    model, name = reference_model(quick)
    xtr, ytr = fashion("train", 10000 if quick else None)
    xte, yte = fashion("test", 2000 if quick else None)
    t = time.perf_counter()
    ex = RepresenterPoints(model, head="head", batch_size=500)
    feats = {"train": ex._forward(xtr), "test": ex._forward(xte)}
    out: dict[str, Any] = {
        "model": name,
        "n_train": len(ytr),
        "n_test": len(yte),
        "extract_s": round(time.perf_counter() - t, 2),
    }
    for split, (_, outputs) in feats.items():
        y = ytr if split == "train" else yte
        out[f"model_accuracy_{split}"] = round(float((outputs.argmax(1) == y).float().mean()), 5)
    log(f"features extracted in {out['extract_s']}s")
    for solver in solvers:
        t = time.perf_counter()
        rp = RepresenterPoints(model, head="head", batch_size=500, solver=solver)
        rp.fit_features(feats["train"][0], feats["train"][1].double(), ytr)
        fit_s = time.perf_counter() - t
        fa = augment(rp.features_, torch.float64)
        w_repr = rp.alpha_.T @ fa  # sum_i alpha_i [f_i, 1]: the decomposition, all test points
        res: dict[str, Any] = {
            "fit_s": round(fit_s, 2),
            "n_iter": rp.n_iter_,
            "converged": rp.converged_,
            "grad_mean": rp.grad_norm_,
            "grad_mean0": rp.grad_norm0_,
        }
        for split, (f, outputs) in feats.items():
            model_p = torch.softmax(outputs.double(), 1)
            dec_p = torch.softmax(augment(f, torch.float64) @ w_repr.T, 1)
            r = float(np.corrcoef(model_p.flatten().numpy(), dec_p.flatten().numpy())[0, 1])
            res[f"pearson_{split}"] = round(r, 5)
            res[f"argmax_agreement_{split}"] = round(
                float((model_p.argmax(1) == dec_p.argmax(1)).float().mean()), 5
            )
        # the blocked sum over training points equals the matrix form on a few test points
        e = rp.explain(xte[:20])
        direct = (augment(feats["test"][0][:20], torch.float64) @ w_repr.T).gather(
            1, e.target[:, None]
        )[:, 0]
        res["max_abs_sum_vs_matrix_form"] = float((e.values.sum(1) - direct).abs().max())
        res["max_abs_sum_vs_finetuned_logit"] = float(
            (e.values.sum(1) - e.extras["logits"]).abs().max()
        )
        out[solver] = res
        log(f"fidelity {solver}: {res}")
    return out


# ---- 2. dataset debugging --------------------------------------------------------------------


def _self_influence_tracin(
    model: nn.Module, states: list[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    from captum.influence import TracInCPFast

    def load(m: nn.Module, key: str) -> float:
        m.load_state_dict(states[int(key)])
        return 1.0

    tracin = TracInCPFast(
        model,
        "head",
        TensorDataset(x, y),
        [str(i) for i in range(len(states))],
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=500,
    )
    scores = tracin.self_influence(DataLoader(TensorDataset(x, y), batch_size=500))
    model.load_state_dict(states[-1])
    return scores


def _self_influence_dattri(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000
) -> torch.Tensor:
    """dattri RPS self-attribution (its diagonal), computed chunk by chunk of test columns."""
    from dattri.algorithm import RPSAttributor
    from dattri.task import AttributionTask

    def loss(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pre, target)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    att = RPSAttributor(task, final_linear_layer_name="head", l2_strength=0.003, epoch=3000)
    train_dl = DataLoader(TensorDataset(x, y), batch_size=500)
    att.cache(train_dl)
    diag = []
    for a in range(0, len(y), chunk):
        test_dl = DataLoader(TensorDataset(x[a : a + chunk], y[a : a + chunk]), batch_size=500)
        scores = att.attribute(train_dl, test_dl)  # (n_train, chunk)
        diag.append(scores[torch.arange(a, a + scores.shape[1]), torch.arange(scores.shape[1])])
    return torch.cat(diag).abs()


def debug(quick: bool, noises: list[float] | None = None, n: int | None = None) -> dict[str, Any]:
    """Flip labels, train on the noisy set, rank, check the top fraction, fix, retrain."""
    from whynet.data.noise import with_noisy_labels

    n = n or (5000 if quick else 10000)
    epochs = 5
    arch = SmallMLP
    xtr, ytr = fashion("train", n, seed=1)
    xte, yte = fashion("test", 2000 if quick else None)
    fractions = [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
    fix_at = 0.2
    out: dict[str, Any] = {
        "n_train": n,
        "epochs": epochs,
        "fix_at": fix_at,
        "model": "SmallMLP 784-128-32-10",
        "noise": {},
    }
    for noise in noises or ([0.2] if quick else [0.1, 0.2, 0.4]):
        noisy = with_noisy_labels(ytr, noise, seed=7, num_classes=10)
        yn, flipped = noisy.labels, noisy.flipped.bool()
        model, states = train(xtr, yn, epochs, snapshots=True, arch=arch)
        log(f"noise {noise}: trained")
        res: dict[str, Any] = {"test_acc_noisy": round(accuracy(model, xte, yte), 4)}
        scores: dict[str, torch.Tensor] = {}
        secs: dict[str, float] = {}
        t = time.perf_counter()
        rp = RepresenterPoints(model, head="head", targets="labels", batch_size=500).fit(xtr, yn)
        scores["representer"] = rp.global_importance()
        secs["representer"] = time.perf_counter() - t
        t = time.perf_counter()
        rp_m = RepresenterPoints(model, head="head", targets="model", batch_size=500).fit(xtr, yn)
        scores["representer_model_targets"] = rp_m.global_importance()
        secs["representer_model_targets"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            scores["loss"] = nn.functional.cross_entropy(
                torch.cat([model(xtr[i : i + 1000]) for i in range(0, n, 1000)]),
                yn,
                reduction="none",
            )
        secs["loss"] = time.perf_counter() - t
        scores["random"] = torch.rand(n, generator=torch.Generator().manual_seed(3))
        peers = {
            "captum_tracincpfast": (_self_influence_tracin, (model, states, xtr, yn)),
            "dattri_rps": (_self_influence_dattri, (model, xtr, yn)),
        }
        for name, (fn, fn_args) in peers.items():
            t = time.perf_counter()
            try:
                scores[name] = fn(*fn_args)
            except Exception as e:  # report, keep going
                res[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
            secs[name] = time.perf_counter() - t
            log(f"noise {noise}: {name} {secs[name]:.1f}s")
        res["seconds"] = {k: round(v, 2) for k, v in secs.items()}
        res["representer_fit"] = {
            "n_iter": rp.n_iter_,
            "converged": rp.converged_,
            "n_iter_model_targets": rp_m.n_iter_,
            "converged_model_targets": rp_m.converged_,
        }
        found, acc = {}, {}
        for name, s in scores.items():
            order = torch.argsort(s.double(), descending=True, stable=True)
            found[name] = [
                round(float(flipped[order[: int(f * n)]].sum() / flipped.sum()), 4)
                for f in fractions
            ]
            fixed = yn.clone()
            checked = order[: int(fix_at * n)]
            fixed[checked] = ytr[checked]  # checking a label reveals the true one
            acc[name] = round(accuracy(train(xtr, fixed, epochs, arch=arch)[0], xte, yte), 4)
        res["fraction_flipped_found"] = {"checked": fractions, **found}
        res["test_acc_after_fixing"] = acc
        res["test_acc_all_fixed"] = round(
            accuracy(train(xtr, ytr, epochs, arch=arch)[0], xte, yte), 4
        )
        out["noise"][str(noise)] = res
        print(json.dumps({str(noise): res}), file=sys.stderr)
    return out


# ---- 3. speed --------------------------------------------------------------------------------


def speed(quick: bool, n: int | None = None, extras: bool = True) -> dict[str, Any]:
    """fit + explain 1,000 test points over the training set, whynet vs dattri vs Captum."""
    model, name = reference_model(quick)
    xtr, ytr = fashion("train", n or (5000 if quick else None))
    xte, yte = fashion("test", 200 if quick else 1000)
    repeats = 1
    out: dict[str, Any] = {
        "model": name,
        "n_train": len(ytr),
        "n_test": len(yte),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "memory": "growth of max RSS (upper bound)",
    }

    def ours() -> torch.Tensor:
        rp = RepresenterPoints(model, head="head", batch_size=500, solver="gd").fit(xtr, ytr)
        return rp.explain(xte).values

    with Peak() as pk:
        med, times, values = timed(ours, repeats)
    out["whynet"] = {
        "fit_explain_s": round(med, 2),
        "runs": [round(t, 2) for t in times],
        "peak_rss_mb": round(pk.mb),
    }
    log(f"whynet gd {med:.1f}s")

    def ours_lbfgs() -> RepresenterPoints:
        r = RepresenterPoints(model, head="head", batch_size=500, solver="lbfgs").fit(xtr, ytr)
        r.explain(xte)
        return r

    med, times, rp = timed(ours_lbfgs, repeats)
    out["whynet_lbfgs"] = {
        "fit_explain_s": round(med, 2),
        "runs": [round(t, 2) for t in times],
        "n_iter": rp.n_iter_,
        "converged": rp.converged_,
    }
    log(f"whynet lbfgs {med:.1f}s")
    f_te, out_te = rp._forward(xte)
    cls = out_te[:1].argmax(1)  # the predicted class (the explain default)
    one = f_te[:1]
    med1, _, _ = timed(lambda: rp.values_features(one, cls), 20)
    out["whynet"]["per_test_point_ms_given_features"] = round(med1 * 1000, 3)
    del values

    # dattri RPSAttributor: cache (fit) + attribute (explain)
    def dattri_run() -> torch.Tensor:
        from dattri.algorithm import RPSAttributor
        from dattri.task import AttributionTask

        task = AttributionTask(
            loss_func=lambda p, t: nn.functional.cross_entropy(p, t),
            model=model,
            checkpoints=model.state_dict(),
        )
        att = RPSAttributor(task, final_linear_layer_name="head", l2_strength=0.003, epoch=3000)
        train_dl = DataLoader(TensorDataset(xtr, ytr), batch_size=500)
        att.cache(train_dl)
        return att.attribute(train_dl, DataLoader(TensorDataset(xte, yte), batch_size=500))

    log("whynet done")
    try:
        with Peak() as pk:
            med, times, _ = timed(dattri_run, repeats)
        out["dattri_rps"] = {
            "fit_explain_s": round(med, 2),
            "runs": [round(t, 2) for t in times],
            "peak_rss_mb": round(pk.mb),
        }
        out["ratio_dattri_over_whynet"] = round(med / out["whynet"]["fit_explain_s"], 2)
        out["ratio_dattri_over_whynet_lbfgs"] = round(med / out["whynet_lbfgs"]["fit_explain_s"], 2)
    except Exception as e:
        out["dattri_rps"] = {"error": f"{type(e).__name__}: {e}"[:300]}

    # Captum TracInCPFast, one checkpoint (the final model), influence scores for every pair
    def captum_run() -> torch.Tensor:
        from captum.influence import TracInCPFast

        state = {k: v.clone() for k, v in model.state_dict().items()}

        def load(m: nn.Module, key: str) -> float:
            m.load_state_dict(state)
            return 1.0

        tr = TracInCPFast(
            model,
            "head",
            TensorDataset(xtr, ytr),
            ["final"],
            checkpoints_load_func=load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=500,
        )
        return tr.influence((xte, yte))

    log("dattri done")
    try:
        with Peak() as pk:
            med, times, _ = timed(captum_run, 1)
        out["captum_tracincpfast_1ckpt"] = {
            "fit_explain_s": round(med, 2),
            "peak_rss_mb": round(pk.mb),
        }
        out["ratio_captum_over_whynet"] = round(med / out["whynet"]["fit_explain_s"], 2)
        out["ratio_captum_over_whynet_lbfgs"] = round(med / out["whynet_lbfgs"]["fit_explain_s"], 2)
    except Exception as e:
        out["captum_tracincpfast_1ckpt"] = {"error": f"{type(e).__name__}: {e}"[:300]}

    log("captum done")
    if len(ytr) < 60000 and not quick and extras:  # whynet alone at the full training set
        xtr, ytr = fashion("train")

        def ours60() -> RepresenterPoints:  # L-BFGS: same minimiser, GD is too slow here
            r = RepresenterPoints(model, head="head", batch_size=500, solver="lbfgs").fit(xtr, ytr)
            r.explain(xte)
            return r

        with Peak() as pk:
            med, _, rp = timed(ours60, 1)
        med1, _, _ = timed(lambda: rp.values_features(one, cls), 20)
        out["whynet_60k"] = {
            "solver": "lbfgs",
            "fit_explain_s": round(med, 2),
            "peak_rss_mb": round(pk.mb),
            "n_iter": rp.n_iter_,
            "converged": rp.converged_,
            "per_test_point_ms_given_features": round(med1 * 1000, 3),
        }
        log("whynet 60k done")
    if extras:
        out["simulated_1m"] = simulated_million(rp, f_te, quick)
    return out


def simulated_million(rp: RepresenterPoints, f_te: torch.Tensor, quick: bool) -> dict[str, Any]:
    """n = 1M memory-mapped float32 features (the real ones tiled, jittered), blocked values."""
    n = 200_000 if quick else 1_000_000
    d = rp.features_.shape[1]
    path = Path(tempfile.gettempdir()) / f"whynet_bench_rp_{n}_d{d}.npy"
    if not path.is_file():
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        rng = np.random.default_rng(0)
        base = rp.features_.numpy()
        for a in range(0, n, len(base)):
            b = min(n, a + len(base))
            mm[a:b] = base[: b - a] + rng.normal(0, 0.01, (b - a, d)).astype(np.float32)
        mm.flush()
        del mm
    big = RepresenterPoints(rp.model, head="head", block_size=131072)
    reps = n // len(rp.alpha_) + 1
    big._set_fitted(
        features_=torch.from_numpy(np.load(path, mmap_mode="c")),
        alpha_=rp.alpha_.repeat(reps, 1)[:n] / reps,
        weight_=rp.weight_,
        labels_=None,
        converged_=rp.converged_,
        grad_norm_=rp.grad_norm_,
        grad_norm0_=rp.grad_norm0_,
        n_iter_=rp.n_iter_,
        objective_=rp.objective_,
    )
    cls = torch.zeros(len(f_te), dtype=torch.long)
    res: dict[str, Any] = {"n": n, "storage": "np.load(mmap_mode='c') float32, page cache warm"}
    mm = big.features_
    one = f_te[:1, :].float()
    (mm @ one[0]).topk(5)  # warm the page cache
    med, _, _ = timed(lambda: (mm @ one[0]).topk(5), 5)
    res["floor_float32_matvec_topk_ms"] = round(med * 1000, 1)
    from whynet.representer import _certify

    # the default (exact float64 kernel): first query makes the norms and the class's order
    cold, _, _ = timed(lambda: _certify.top(big, f_te[:1], cls[:1], 5), 1)
    st1 = stages(lambda: _certify.top(big, f_te[:1], cls[:1], 5))
    st64 = stages(lambda: _certify.top(big, f_te[:64], cls[:64], 5))
    res["exact_top5"] = {
        "first_query_with_precompute_s": round(cold, 2),
        "one_query_stages": st1,
        "one_query_rows_read_fraction": round(st1.get("pruned_rows", 0) / n, 5),
        "batch64_stages": st64,
        "batch64_rows_read_fraction": round(st64.get("pruned_rows", 0) / (64 * n), 5),
    }
    for kdt in (torch.float64, torch.float32):
        big.kernel_dtype = kdt
        big.values_features(f_te[:1], cls[:1])  # warm the page cache
        with Peak() as pk:
            med1, _, _ = timed(lambda: big.values_features(f_te[:1], cls[:1]), 5)
            med64, _, _ = timed(lambda: big.values_features(f_te[:64], cls[:64]), 2)
        _certify.top(big, f_te[:1], cls[:1], 5)
        with Peak() as pk2:
            top1, _, _ = timed(lambda: _certify.top(big, f_te[:1], cls[:1], 5), 5)
            top64, _, _ = timed(lambda: _certify.top(big, f_te[:64], cls[:64], 5), 2)
        res[f"kernel_{str(kdt)[6:]}"] = {
            "top5_one_point_ms": round(top1 * 1000, 1),
            "ratio_top5_one_point_over_floor": round(
                top1 * 1000 / res["floor_float32_matvec_topk_ms"], 2
            ),
            "top5_batch64_ms_per_point": round(top64 * 1000 / 64, 2),
            "top5_rss_growth_mb": round(pk2.mb),
            "one_point_ms": round(med1 * 1000, 1),
            "ratio_one_point_over_floor": round(
                med1 * 1000 / res["floor_float32_matvec_topk_ms"], 2
            ),
            "batch64_ms_per_point": round(med64 * 1000 / 64, 2),
            "rss_growth_mb": round(pk.mb),
        }
        if kdt == torch.float64:  # the certified float32 scan alone (what unprunable data get)
            one32, _, _ = timed(
                lambda: float32_stage(lambda: _certify.top(big, f_te[:1], cls[:1], 5)), 3
            )
    res["kernel_float64"]["top5_one_point_float32_stage_ms"] = round(one32 * 1000, 1)
    big.kernel_dtype = None
    # exactness of the default against the float64 formula over all 1M rows (one query)
    got = _certify.top(big, f_te[:1], cls[:1], 5)
    v = big.values_features(f_te[:1], cls[:1])[0]
    hi = v.sort(descending=True, stable=True)
    lo = v.sort(stable=True)
    res["exact_top5"]["same_indices_as_float64_formula"] = bool(
        torch.equal(got[0][0], hi.indices[:5]) and torch.equal(got[2][0], lo.indices[:5])
    )
    res["exact_top5"]["max_abs_value_diff"] = float(
        max((got[1][0] - hi.values[:5]).abs().max(), (got[3][0] - lo.values[:5]).abs().max())
    )
    return res


# ---- 4. at the floor (issue 17) ---------------------------------------------------------------


def feat_head(model: nn.Module) -> torch.Tensor:
    """The model's head as ``[W, b]`` (C, D+1) float64: the solver's starting point."""
    from whynet.representer._features import head_weight

    return head_weight(model.head).double()


def _head_input(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written floor of the feature step: one no-grad forward, the head's input grabbed."""
    got: list[torch.Tensor] = []
    h = model.head.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        h.remove()
    return got[0], out


def floor(quick: bool) -> dict[str, Any]:
    """Each representer operation next to the least work it needs, in one process (ratios).

    Floors are hand-written here: a no-grad forward over the training set (fit), one forward of
    the query + the (n, D) mat-vec + top-k (one query), the (B, D) x (D, n) product (batched).
    """
    model, name = reference_model(quick)
    xtr, ytr = fashion("train", 10000 if quick else None)
    xte, _ = fashion("test", 1000)
    out: dict[str, Any] = {"model": name, "n_train": len(ytr), "threads": torch.get_num_threads()}
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]

    def forward_all() -> None:
        with torch.no_grad():
            for a in range(0, len(xtr), 500):
                model(xtr[a : a + 500])

    fwd, fwd_cpu, _ = cpu_timed(forward_all)
    fit_s, fit_cpu, rp = cpu_timed(
        lambda: RepresenterPoints(model, head="head", batch_size=500, progress=False).fit(xtr, ytr)
    )
    f_tr = rp.features_
    with torch.no_grad():
        outs = torch.cat([model(xtr[a : a + 500]) for a in range(0, len(xtr), 500)]).double()
    solver_s, solver_cpu, rp2 = cpu_timed(
        lambda: RepresenterPoints(model, head="head", progress=False).fit_features(f_tr, outs, ytr)
    )
    e = rp.explain(xte[:200])
    dec = float((e.values.sum(1) - e.extras["logits"]).abs().max())
    # the solver's O(n D C) work next to bare float64 products of the same shapes, same run
    from whynet.representer._solver import augment_t, oracle_t, solve_lbfgs_t

    ft = augment_t(f_tr, torch.float64)
    tt = torch.softmax(outs, 1)
    w0 = rp2.weight_.clone()
    oracle = oracle_t(ft, tt.T.contiguous(), rp.l2)
    g = torch.randn(w0.shape[0], ft.shape[1], dtype=torch.float64)

    def bare() -> None:  # Phi^T = W [F,1]^T and G [F,1]: the two products of one evaluation
        w0 @ ft
        g @ ft.T

    reps = 10
    _, bare_cpu, _ = cpu_timed(lambda: [bare() for _ in range(reps)])
    _, oracle_cpu, _ = cpu_timed(lambda: [oracle(w0) for _ in range(reps)])
    res = solve_lbfgs_t(ft, feat_head(model), tt, rp.l2, tol=None, atol=1e-9)
    out["fit"] = {
        "forward_pass_s": round(fwd, 2),
        "forward_pass_cpu_s": round(fwd_cpu, 2),
        "whole_fit_s": round(fit_s, 2),
        "whole_fit_cpu_s": round(fit_cpu, 2),
        "ratio_fit_over_forward": round(fit_s / fwd, 3),
        "ratio_fit_over_forward_cpu": round(fit_cpu / fwd_cpu, 3),
        "solver_s": round(solver_s, 2),
        "solver_cpu_s": round(solver_cpu, 2),
        "solver": rp.solver,
        "n_iter": rp.n_iter_,
        "n_eval": res.n_eval,
        "converged": rp.converged_,
        "bare_two_products_cpu_ms": round(bare_cpu / reps * 1000, 2),
        "one_evaluation_cpu_ms": round(oracle_cpu / reps * 1000, 2),
        "ratio_evaluation_over_bare_products": round(oracle_cpu / bare_cpu, 3),
        "ratio_solver_over_n_eval_bare_products": round(
            solver_cpu / (res.n_eval * bare_cpu / reps), 3
        ),
        "same_alpha_as_fit_features": float((rp.alpha_ - rp2.alpha_).abs().max()),
        "decomposition_max_abs_err_200_test": dec,
    }
    log(f"fit {out['fit']}")

    # one query: whynet top-5 (forward + values + top-k) vs the hand-written floor
    x1 = xte[:1]
    f32 = f_tr.contiguous()
    f64 = f32.double()

    def floor_one(fm: torch.Tensor) -> Any:
        f, o = _head_input(model, x1)
        k = fm @ f[0].to(fm.dtype)
        return k.topk(5), k.topk(5, largest=False), o

    res: dict[str, Any] = {}
    for label, fn in (
        ("floor_float32_ms", lambda: floor_one(f32)),
        ("floor_float64_ms", lambda: floor_one(f64)),
        ("whynet_top5_ms", lambda: rp.top(x1, k=5)),
        ("whynet_explain_ms", lambda: rp.explain(x1)),
    ):
        fn()
        med, _, _ = timed(fn, 30)
        res[label] = round(med * 1000, 2)
    rp32 = RepresenterPoints(model, head="head", kernel_dtype=torch.float32, progress=False)
    for k_, v in vars(rp).items():
        if k_.endswith("_"):
            setattr(rp32, k_, v)
    rp32.top(x1, k=5)
    med, _, _ = timed(lambda: rp32.top(x1, k=5), 30)
    res["whynet_top5_kernel_float32_ms"] = round(med * 1000, 2)
    # the exact default's stages: the pruned scan, and the certified float32 scan alone
    med, _, _ = timed(lambda: float32_stage(lambda: rp.top(x1, k=5)), 30)
    res["whynet_top5_float32_stage_ms"] = round(med * 1000, 2)
    st = stages(lambda: rp.top(x1, k=5))
    res["whynet_top5_stages"] = st
    res["whynet_top5_rows_read_fraction"] = round(st.get("pruned_rows", 0) / len(f32), 5)
    res["ratio_top5_float32_stage_over_floor_float32"] = round(
        res["whynet_top5_float32_stage_ms"] / res["floor_float32_ms"], 3
    )
    res["ratio_top5_over_floor_float64"] = round(res["whynet_top5_ms"] / res["floor_float64_ms"], 3)
    res["ratio_top5_over_floor_float32"] = round(res["whynet_top5_ms"] / res["floor_float32_ms"], 3)
    res["ratio_top5_kernel32_over_floor_float32"] = round(
        res["whynet_top5_kernel_float32_ms"] / res["floor_float32_ms"], 3
    )
    out["one_query"] = res
    log(f"one query {res}")

    # 1,000 queries: end to end (forward included) and given the features
    from whynet.representer import _certify

    xq = xte[:1000]
    fq, oq = rp._forward(xq)
    cls = oq.argmax(1)
    batch: dict[str, Any] = {}
    for label, r_ in (("kernel_float64", rp), ("kernel_float32", rp32)):
        med, _, _ = timed(lambda r_=r_: _certify.top(r_, fq, cls, 5), 3)
        batch[f"{label}_top5_given_features_s"] = round(med, 3)
    # the default (kernel_float64) is exact: check it against the whole float64 matrix
    got = _certify.top(rp, fq, cls, 5)
    full = rp.values_features(fq, cls)
    hi, lo = full.sort(dim=1, descending=True, stable=True), full.sort(dim=1, stable=True)
    batch["kernel_float64_top5_same_indices_as_float64_formula"] = bool(
        torch.equal(got[0], hi.indices[:, :5]) and torch.equal(got[2], lo.indices[:, :5])
    )
    batch["kernel_float64_top5_max_abs_value_diff"] = float(
        max((got[1] - hi.values[:, :5]).abs().max(), (got[3] - lo.values[:, :5]).abs().max())
    )
    del full, hi, lo
    st = stages(lambda: _certify.top(rp, fq, cls, 5))
    batch["kernel_float64_top5_stages"] = st
    batch["kernel_float64_top5_rows_read_fraction"] = round(
        st.get("pruned_rows", 0) / (len(fq) * len(f32)), 5
    )
    med, _, _ = timed(lambda: float32_stage(lambda: _certify.top(rp, fq, cls, 5)), 2)
    batch["float32_stage_top5_given_features_s"] = round(med, 3)
    for label, r_ in (("kernel_float64", rp), ("kernel_float32", rp32)):
        med, _, _ = timed(lambda r_=r_: r_.top(xq, k=5), 2)
        batch[f"{label}_top5_end_to_end_s"] = round(med, 3)
        med, _, _ = timed(lambda r_=r_: r_.values_features(fq, cls), 2)
        batch[f"{label}_values_given_features_s"] = round(med, 3)
    med, _, _ = timed(lambda: fq.double() @ f64.T, 2)
    batch["floor_product_float64_s"] = round(med, 3)
    med, _, _ = timed(lambda: fq @ f32.T, 2)
    batch["floor_product_float32_s"] = round(med, 3)
    med, _, _ = timed(lambda: rp._forward(xq), 1)
    batch["forward_1000_s"] = round(med, 3)
    batch["ratio_float32_stage_top5_given_features_over_floor_product"] = round(
        batch["float32_stage_top5_given_features_s"] / batch["floor_product_float32_s"], 3
    )
    for label in ("kernel_float64", "kernel_float32"):
        floor_key = "floor_product_" + label[7:] + "_s"
        batch[f"ratio_{label}_top5_given_features_over_floor_product"] = round(
            batch[f"{label}_top5_given_features_s"] / batch[floor_key], 3
        )
    out["queries_1000"] = batch
    log(f"1000 queries {batch}")

    # dattri RPSAttributor: one query after its fit (its cache; epochs cut, only the query timed)
    try:
        from dattri.algorithm import RPSAttributor
        from dattri.task import AttributionTask

        task = AttributionTask(
            loss_func=lambda p, t: nn.functional.cross_entropy(p, t),
            model=model,
            checkpoints=model.state_dict(),
        )
        att = RPSAttributor(task, final_linear_layer_name="head", l2_strength=0.003, epoch=10)
        train_dl = DataLoader(TensorDataset(xtr, ytr), batch_size=500)
        att.cache(train_dl)
        test_dl = DataLoader(TensorDataset(x1, torch.zeros(1, dtype=torch.long)), batch_size=1)
        med, _, _ = timed(lambda: att.attribute(train_dl, test_dl), 1)
        out["dattri_one_query"] = {
            "s": round(med, 3),
            "epoch_for_cache": 10,
            "speedup_whynet_top5": round(med * 1000 / res["whynet_top5_ms"], 1),
            "speedup_whynet_explain": round(med * 1000 / res["whynet_explain_ms"], 1),
        }
    except Exception as exc:  # report, keep going
        out["dattri_one_query"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    log(f"dattri {out['dattri_one_query']}")
    f_te = fq[:64]
    out["simulated_1m"] = simulated_million(rp, f_te, quick)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "what", nargs="?", default="all", choices=["fidelity", "debug", "speed", "floor", "all"]
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="training points (debug, speed)")
    ap.add_argument("--noise", type=float, nargs="*", default=None, help="debug noise levels")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared, oversubscribed 2-core machine "
        "OpenMP threads spin against each other; 0 keeps torch's default)",
    )
    ap.add_argument(
        "--model",
        default="fashion-cnn",
        choices=["fashion-cnn", "smallcnn"],
        help="fidelity/speed model: the zoo's fashion-cnn (default) or the SmallCNN "
        "stand-in of the earlier results (debug always trains its own MLP)",
    )
    ap.add_argument(
        "--solver",
        nargs="+",
        default=["gd", "lbfgs"],
        choices=["gd", "lbfgs"],
        help="fidelity solvers (default both: gd = the authors' procedure, lbfgs)",
    )
    ap.add_argument(
        "--no-extras",
        action="store_true",
        help="speed: skip whynet alone at 60k and the simulated 1M",
    )
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    runs = {
        "fidelity": lambda: fidelity(args.quick, tuple(args.solver)),
        "debug": lambda: debug(args.quick, args.noise, args.n),
        "speed": lambda: speed(args.quick, args.n, not args.no_extras),
        "floor": lambda: floor(args.quick),
    }
    for name, fn in runs.items():
        if args.what in (name, "all"):
            t = time.perf_counter()
            key = (
                name
                if args.n is None and args.noise is None
                else f"{name}_n{args.n or 'default'}"
                + ("" if args.noise is None else "_noise" + "-".join(map(str, args.noise)))
            )
            if name != "debug" and args.model != "fashion-cnn":
                key += f"_{args.model}"
            results[key] = fn()
            name = key
            results[name]["quick"] = args.quick
            results[name]["wall_s"] = round(time.perf_counter() - t, 1)
            results[name]["torch_threads"] = torch.get_num_threads()
            print(json.dumps({name: results[name]}, indent=1))
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            latest = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            latest[name] = results[name]  # another run may have written meanwhile
            RESULTS.write_text(json.dumps(latest, indent=1))


if __name__ == "__main__":
    main()
