"""whynet.scale at size: a simulated training set generated shard by shard, on the local engine
and on a local Ray cluster with 1 and 2 workers; optionally Fashion-MNIST through the sharded path.

Simulated set: ``n`` points, D = 128 float32 features (a 10-class Gaussian mixture), float64
model outputs ``F W + b`` and labels, written shard by shard into a :class:`ShardedStore`
(never in memory at once). Measured per engine:

- ``objective_step``: one map/reduce evaluation of ``J(W)`` and ``grad J(W)`` (Eq. 2) over all
  shards -- the per-step cost of a sharded representer solve;
- ``kmeans``: full-batch Lloyd steps (k = 16) over the shards, seconds per step;
- ``nearest`` / ``representer_top``: 100 queries, top-10, shard by shard with a global merge;
- peak RSS of the driver and of each Ray worker process (``ru_maxrss``; includes ~0.3-0.5 GB
  of torch import per process).

The representer fit gathers the features on the driver (see docs/scale.md): timed once, single
process. ``--mapreduce-fit`` times the map/reduce L-BFGS fit instead/as well
(``fit_representer(mapreduce=True)``: every objective and gradient a pass over the shards) on
the local engine and on Ray with each ``--workers`` count; peak RSS is per process, so run the
gathered and the map/reduce fit in separate runs (``--no-fit``) to compare their memory.
Equality with the local engine is asserted for every Ray result. ``--skip-steps`` leaves out
the per-step measurements (objective, k-means, queries).

    python benchmarks/bench_scale.py --n 1000000 [--fashion] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from whynet import scale
from whynet.representer import RepresenterPoints

ROOT = Path(__file__).resolve().parents[1]
D, C, K = 128, 10, 16


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_rss(_shared: Any, _i: int) -> tuple[int, float]:
    time.sleep(0.2)  # spread the probes over the worker processes
    return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, C)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)


def generate(folder: Path, n: int, shard_rows: int) -> tuple[scale.ShardedStore, Head, float]:
    """The simulated store, shard by shard (shard ``s`` from seed ``s``)."""
    torch.manual_seed(0)
    model = Head().double().eval()
    means = torch.randn(C, D, generator=torch.Generator().manual_seed(123)) * 0.5
    if folder.exists():
        shutil.rmtree(folder)
    st = scale.ShardedStore.create(folder, fingerprint=f"sim-{n}", n_rows=n, shard_rows=shard_rows)
    t = time.perf_counter()
    for i in range(st.n_shards):
        a, b = st.range(i)
        g = torch.Generator().manual_seed(i)
        y = torch.randint(0, C, (b - a,), generator=g)
        f = means[y] + torch.randn(b - a, D, generator=g)
        with torch.no_grad():
            out = model(f.double())
        st.put(i, {"features": f, "outputs": out, "labels": y})
    return st, model, time.perf_counter() - t


def timed(fn: Any, repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_engine(
    eng: scale.Engine,
    st: scale.ShardedStore,
    expl: RepresenterPoints | None,
    ref: dict[str, Any],
    steps: int = 5,
    repeats: int = 2,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    f0 = st.read_shard(0)["features"]
    w = torch.randn(C, D + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    res["objective_step_s"], (j, g) = timed(
        lambda: scale.representer_objective(st, w, 0.003, engine=eng), repeats
    )
    init = f0[:K].double()
    t, km = timed(lambda: scale.fit_kmeans(st, "features", init, max_iter=steps, engine=eng), 1)
    res["kmeans_step_s"] = t / max(km.n_iter, 1)
    queries = f0[:100].double()
    res["nearest_100_s"], (ni, nd) = timed(
        lambda: scale.nearest_points(st, "features", queries, k=10, engine=eng), 1
    )
    top: Any = None
    if expl is not None:
        res["representer_top_100_s"], top = timed(
            lambda: scale.top_points(expl, queries, k=10, store=st, engine=eng), 1
        )
    if not ref:
        ref.update(j=j, g=g, centres=km.centres, ni=ni, top=top)
    else:  # the same answers as the local engine
        res["objective_abs_diff"] = abs(j - ref["j"])
        res["grad_max_diff"] = float((g - ref["g"]).abs().max())
        res["kmeans_centres_equal"] = bool(torch.equal(km.centres, ref["centres"]))
        res["nearest_equal"] = bool(torch.equal(ni, ref["ni"]))
        if top is not None:
            res["top_equal"] = all(torch.equal(a, b) for a, b in zip(top, ref["top"], strict=True))
    res["driver_peak_rss_mb"] = rss_mb()
    if eng.name == "ray":
        probes = eng.map_tasks(_worker_rss, None, range(8))
        per = {pid: mb for pid, mb in probes}
        res["worker_peak_rss_mb"] = sorted(per.values(), reverse=True)
    return res


def simulated(
    n: int,
    shard_rows: int,
    workers: list[int],
    folder: Path,
    fit: bool,
    steps: int,
    repeats: int,
    mapreduce: bool = False,
    skip_steps: bool = False,
    cache_mb: int | None = None,
) -> dict[str, Any]:
    import ray

    log(f"generating {n} x {D} in shards of {shard_rows}")
    st, model, gen_s = generate(folder / f"sim-{n}", n, shard_rows)
    size = sum(p.stat().st_size for p in (folder / f"sim-{n}").glob("shard-*"))
    out: dict[str, Any] = {
        "n": n,
        "d": D,
        "classes": C,
        "shard_rows": shard_rows,
        "shards": st.n_shards,
        "store_bytes": size,
        "generate_s": gen_s,
    }
    expl: RepresenterPoints | None = None
    if fit:
        log("representer fit (gathered, single process)")
        expl = RepresenterPoints(model, "head", max_iter=300, progress=False)
        t = time.perf_counter()
        scale.fit_representer(expl, st)
        out["representer_fit"] = {
            "seconds": time.perf_counter() - t,
            "n_iter": expl.n_iter_,
            "converged": expl.converged_,
            "driver_peak_rss_mb": rss_mb(),
        }
    ref: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    if cache_mb is not None:
        os.environ["WHYNET_SCALE_CACHE_MB"] = str(cache_mb)
        out["cache_mb_per_process"] = {
            "local": cache_mb,
            **{f"ray_{w}": cache_mb // w for w in workers},
        }
    if mapreduce:
        out["mapreduce_fit_local"] = mapreduce_fit(scale.Engine("local"), st, model, expl, fits)
    if not skip_steps:
        log("local engine")
        out["local"] = run_engine(scale.Engine("local"), st, expl, ref, steps, repeats)
    for w in workers:
        log(f"ray, {w} worker(s)")
        if cache_mb is not None:  # the workers inherit it: one fit's shards split over w
            os.environ["WHYNET_SCALE_CACHE_MB"] = str(cache_mb // w)
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
        try:
            eng = scale.Engine("ray", workers=w)
            # warm the worker processes (torch and whynet imports) with one pass
            w0 = torch.zeros(C, D + 1, dtype=torch.float64)
            scale.representer_objective(st, w0, 0.003, engine=eng)
            if mapreduce:
                out[f"mapreduce_fit_ray_{w}"] = mapreduce_fit(eng, st, model, expl, fits)
            if not skip_steps:
                out[f"ray_{w}"] = run_engine(eng, st, expl, ref, steps, repeats)
        finally:
            ray.shutdown()
    return out


def mapreduce_fit(
    eng: scale.Engine,
    st: scale.ShardedStore,
    model: nn.Module,
    gathered: RepresenterPoints | None,
    fits: dict[str, Any],
) -> dict[str, Any]:
    """The map/reduce L-BFGS representer fit on ``eng``: time, steps, driver (and worker) peak
    RSS, and alpha against the gathered fit (when run) and the first map/reduce fit."""
    log(f"representer fit (map/reduce L-BFGS, {eng.name} engine)")
    mr = RepresenterPoints(model, "head", max_iter=300, progress=False)
    # the fit's own sticky block nests in this one, so the probe below reaches its actors
    with eng.sticky():
        t = time.perf_counter()
        scale.fit_representer(mr, st, mapreduce=True, engine=eng)
        res: dict[str, Any] = {
            "seconds": time.perf_counter() - t,
            "n_iter": mr.n_iter_,
            "converged": mr.converged_,
            "driver_peak_rss_mb": rss_mb(),
        }
        if eng.name == "ray":
            probes = eng.map_tasks(_worker_rss, None, range(8))
            res["worker_peak_rss_mb"] = sorted(dict(probes).values(), reverse=True)
    if gathered is not None:
        res["alpha_max_diff_vs_gathered"] = float((mr.alpha_ - gathered.alpha_).abs().max())
    # the fitted explainer's queries: 100 test points, top-10, each shard task reading its own
    # alpha shard (written once here) instead of the whole alpha broadcast
    t = time.perf_counter()
    alpha = scale.write_alpha(mr, st, st.folder.parent / f"alpha-{eng.name}-{eng.workers}")
    res["write_alpha_s"] = time.perf_counter() - t
    queries = st.read_shard(0)["features"][:100].double()
    res["representer_top_100_s"], top = timed(
        lambda: scale.top_points(mr, queries, k=10, store=st, alpha=alpha, engine=eng), 1
    )
    if "alpha" in fits:
        res["alpha_max_diff_vs_local"] = float((mr.alpha_ - fits["alpha"]).abs().max())
        res["top_equal_vs_local"] = all(
            torch.equal(a, b) for a, b in zip(top, fits["top"], strict=True)
        )
    else:
        fits["alpha"], fits["top"] = mr.alpha_, top
    return res


def fashion(workers: int, folder: Path) -> dict[str, Any]:
    """Fashion-MNIST 60k through the sharded path vs one process (zoo fashion-cnn)."""
    import numpy as np
    import ray

    from whynet.data import fashion_mnist
    from whynet.zoo import load_model

    model, _ = load_model("fashion-cnn")
    model = model.eval()
    ds = fashion_mnist("train")
    x = torch.from_numpy(np.asarray(ds.images)).float().div(255.0).unsqueeze(1)
    y = torch.as_tensor(np.asarray(ds.labels)).long()
    out: dict[str, Any] = {"n": len(y)}
    head = "head"
    t = time.perf_counter()
    local = RepresenterPoints(model, head, progress=False).fit(x, labels=y)
    out["one_process_fit_s"] = time.perf_counter() - t
    for name in ("local", "ray"):
        store = folder / f"fashion-{name}"
        shutil.rmtree(store, ignore_errors=True)
        if name == "ray":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            eng = scale.Engine(name, workers=workers if name == "ray" else None)
            t = time.perf_counter()
            sh = scale.fit(
                RepresenterPoints(model, head, progress=False), x, y, store=store, engine=eng
            )
            out[f"{name}_sharded_fit_s"] = time.perf_counter() - t
            out[f"{name}_alpha_equal"] = bool(torch.equal(sh.alpha_, local.alpha_))
            st = scale.ShardedStore.open(store)
            t = time.perf_counter()
            top = scale.top_points(sh, x[:100], k=10, store=st, engine=eng)
            out[f"{name}_top_100_s"] = time.perf_counter() - t
            ref = local.top(x[:100], k=10)
            out[f"{name}_top_equal"] = bool(torch.equal(top.excitatory, ref.excitatory))
        finally:
            if name == "ray":
                ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--fashion", action="store_true")
    ap.add_argument("--no-fit", action="store_true", help="skip the gathered representer fit")
    ap.add_argument("--mapreduce-fit", action="store_true", help="time the map/reduce fit")
    ap.add_argument("--skip-steps", action="store_true", help="no per-step measurements")
    ap.add_argument("--kmeans-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--cache-mb",
        type=int,
        help="WHYNET_SCALE_CACHE_MB for the local fit; split evenly over the Ray workers",
    )
    ap.add_argument("--folder", default="/tmp/whynet-scale-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per worker; the driver likewise (a shared machine)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} cores, torch threads 1",
    }
    result["simulated"] = simulated(
        args.n,
        args.shard_rows,
        args.workers,
        folder,
        not args.no_fit,
        args.kmeans_steps,
        args.repeats,
        args.mapreduce_fit,
        args.skip_steps,
        args.cache_mb,
    )
    if args.fashion:
        log("fashion-mnist")
        result["fashion"] = fashion(max(args.workers), folder)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
