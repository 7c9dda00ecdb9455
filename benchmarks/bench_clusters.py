"""Benchmarks and experiments of whynet.clusters (Liu & Arik 2020 activation-clustering surrogate).

Experiments (issue 8):
  fashion    fashion-cnn, 4 blocks x 15 clusters: fidelity/accuracy on the test set per layer and
             combined, IDEC vs k-means (restarts by inertia, and by held-out likelihood:
             kmeans_select); fit time and peak RSS for 60k training points. Layer weights are
             learned on held-out training points (--weights fit, default) or equal.
  similar    label agreement of the top-10 similar training samples, low-level [2,1,0,0] vs
             high-level [0,0,1,2] emphasis (and equal weights).
  sentiment  sentiment-gru (token sequences, mean-pooled over valid tokens): fidelity/accuracy and
             concept snippets.
  scale      a simulated 1M-point activation set through the k-means path (fit time, peak RSS),
             similar-sample query latency at 1M; peers side by side: scikit-learn MiniBatchKMeans
             on the same embedding, and brute-force weighted distances in torch.

Memory: peak resident set size (RSS) sampled every 20 ms from /proc/self/statm during each phase,
reported as the increase over the RSS at the start of the phase (tracemalloc does not see
PyTorch's allocations). RSS counts the pages of the memory-mapped activation cache once read
(reclaimable page cache); newer runs also record the anonymous part (RssAnon) separately.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_clusters.py [--quick] [--only NAME ...]
(one intra-op thread: on the shared 2-core machine two threads made autoencoder training steps
~5x slower through oversubscription).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from whynet.clusters import ClusterSurrogate

RESULTS = Path(__file__).resolve().parent / "results" / "clusters.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size in bytes. It includes file-backed pages of memory-mapped files (the
    activation cache once read), which the kernel can drop; see :func:`rss_anon`."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def rss_anon() -> int:
    """Anonymous resident memory (heap, tensors) in bytes, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Context manager: peak RSS increase (bytes) over the block, sampled in a thread."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss()
        self.base_anon = self.peak_anon = rss_anon()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())
            self.peak_anon = max(self.peak_anon, rss_anon())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())
        self.delta_mb = (self.peak - self.base) / 2**20
        self.delta_anon_mb = (self.peak_anon - self.base_anon) / 2**20


LAST: dict[str, float] = {}  # anonymous-memory peak of the latest timed() call


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak RSS increase in MB); the anonymous-memory peak goes to LAST."""
    with PeakRSS() as m:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    LAST["anon_mb"] = m.delta_anon_mb
    return out, dt, m.delta_mb


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ experiment 1 + 2
def fashion(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, ClusterSurrogate]:
    from whynet.data import fashion_mnist
    from whynet.zoo import load_model

    model, info = load_model("fashion-cnn", weights_dir=args.weights_dir)
    xtr, ytr = fashion_mnist("train").tensors()
    xte, yte = fashion_mnist("test").tensors()
    if args.quick:
        xtr, ytr, xte, yte = xtr[:6000], ytr[:6000], xte[:2000], yte[:2000]
    layers = info["layers"]["blocks"]
    out: dict[str, Any] = {
        "n_train": len(xtr),
        "n_test": len(xte),
        "layers": layers,
        "model_test_accuracy": float((_predict(model, xte) == yte).float().mean()),
    }
    fitted = {}
    settings = {
        "kmeans": {"algorithm": "kmeans", "max_fit_points": 20000},
        "kmeans_select": {
            "algorithm": "kmeans",
            "max_fit_points": 20000,
            "restart_selection": "likelihood",
        },
        "idec": {
            "algorithm": "idec",
            "max_fit_points": args.idec_points,
            "pretrain_epochs": args.pretrain_epochs,
            "max_iter": args.idec_iter,
            "alpha": args.idec_alpha,
        },
    }
    settings["idec_select"] = {**settings["idec"], "restart_selection": "likelihood"}
    for name in args.methods:
        kw = settings[name]
        log(f"fashion: fit {name} {kw}")
        s = ClusterSurrogate(
            model, layers, n_clusters=15, batch_size=256, seed=0, layer_weights=args.weights, **kw
        )
        _, fit_s, fit_mb = timed(lambda s=s: s.fit(xtr, ytr))
        fit_anon = LAST["anon_mb"]
        log(f"fashion: {name} fit {fit_s:.1f} s, peak +{fit_mb:.0f} MB (anon +{fit_anon:.0f})")
        rep, eval_s, _ = timed(lambda s=s: s.layer_report(xte, yte))
        hard = ClusterSurrogate.__new__(ClusterSurrogate)
        hard.__dict__.update(s.__dict__)
        hard.assignment = "hard"
        rep_hard = hard.layer_report(xte, yte)["combined"]
        weighted = {}
        for label, w in (
            ("equal [1,1,1,1]", [1, 1, 1, 1]),
            ("late [0,1,2,4]", [0, 1, 2, 4]),
            ("last only", [0, 0, 0, 1]),
        ):
            p = s.predict(xte, layer_weights=w)
            weighted[label] = {
                "fidelity": float((p == _predict(model, xte)).float().mean()),
                "accuracy": float((p == yte).float().mean()),
            }
        out[name] = {
            "settings": {**kw, "layer_weights": args.weights},
            "layer_weights": s.layer_weights_.tolist(),
            "weight_fit": s.weight_fit_,
            "fit_s": fit_s,
            "fit_peak_rss_mb": fit_mb,
            "fit_peak_anon_mb": fit_anon,
            "spilled_to_disk": s.spilled_to_disk_,
            "report": rep,
            "eval_s": eval_s,
            "combined_hard_assignment": rep_hard,
            "other_weights": weighted,
            "idec_history": {k: {kk: len(v) for kk, v in h.items()} for k, h in s.history_.items()},
        }
        log(f"fashion {name}: weights {s.layer_weights_.tolist()} combined {rep['combined']}")
        fitted[name] = s
        if name.startswith("idec"):
            s.save(Path(args.tmp) / f"fashion_{name}.safetensors")
    res["fashion"] = out
    if "similar" in args.only:
        res["similar"] = similar(args, model, fitted, xte, yte, ytr)
    return fitted


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from whynet.core import predict_logits

    return predict_logits(model, x, 512).argmax(1)


def similar(
    args: argparse.Namespace,
    model: nn.Module,
    fitted: dict[str, ClusterSurrogate],
    xte: torch.Tensor,
    yte: torch.Tensor,
    ytr: torch.Tensor,
) -> dict[str, Any]:
    n_q = 200 if args.quick else 1000
    q = xte[:n_q]
    out: dict[str, Any] = {"n_queries": n_q, "k": 10}
    pred_tr = None
    for name, s in fitted.items():
        if pred_tr is None:
            pred_tr = s.train_targets_
        rows = {}
        for label, w in (
            ("low [2,1,0,0]", [2, 1, 0, 0]),
            ("high [0,0,1,2]", [0, 0, 1, 2]),
            ("equal [1,1,1,1]", [1, 1, 1, 1]),
        ):
            (idx, _), t, _ = timed(lambda s=s, w=w: s.similar(q, k=10, layer_weights=w))
            rows[label] = {
                "label_agreement": float((ytr[idx] == yte[:n_q, None]).float().mean()),
                "model_class_agreement": float(
                    (pred_tr[idx] == _predict(model, q)[:, None]).float().mean()
                ),
                "query_s_per_input": t / n_q,
            }
            log(f"similar {name} {label}: {rows[label]}")
        out[name] = rows
    return out


# ------------------------------------------------------------------ experiment 3
def sentiment(args: argparse.Namespace, res: dict[str, Any]) -> None:
    from whynet.data.text import rotten_tomatoes
    from whynet.zoo import load_model

    model, info = load_model("sentiment-gru", weights_dir=args.weights_dir)
    tr = rotten_tomatoes("train", vocab=info["vocab"])
    te = rotten_tomatoes("test", vocab=info["vocab"])
    out: dict[str, Any] = {
        "n_train": len(tr),
        "n_test": len(te),
        "model_test_accuracy": float((_predict(model, te.x) == te.y).float().mean()),
    }
    layers = ["embedding", "gru"]
    for method, kw in (
        ("kmeans", {}),
        ("kmeans_select", {"restart_selection": "likelihood"}),
        ("idec", {"pretrain_epochs": args.pretrain_epochs, "max_iter": args.idec_iter}),
    ):
        if method not in args.methods:
            continue
        s = ClusterSurrogate(
            model,
            layers,
            n_clusters=15,
            algorithm=method.split("_")[0],
            seed=0,
            layer_weights=args.weights,
            **kw,
        )
        _, fit_s, fit_mb = timed(lambda s=s: s.fit(tr.x, tr.y))
        rep = s.layer_report(te.x, te.y)
        concepts = {}
        for layer in layers:
            idx = s.concepts(layer, k=3)
            post = s.posteriors_[layer]
            concepts[layer] = [
                {
                    "cluster": c,
                    "p_fresh": round(float(post[c, 1]), 3),
                    "size": int((s.train_assignments_[layer] == c).sum()),
                    "snippets": [tr.texts[int(i)][:100] for i in idx[c]],
                }
                for c in range(s.n_clusters)
            ]
        out[method] = {
            "settings": {**kw, "layer_weights": args.weights},
            "layer_weights": s.layer_weights_.tolist(),
            "fit_s": fit_s,
            "fit_peak_rss_mb": fit_mb,
            "report": rep,
            "concepts": concepts,
        }
        log(f"sentiment {method}: fit {fit_s:.1f} s, {rep['combined']}")
    res["sentiment"] = out


# ------------------------------------------------------------------ experiment 4
def scale(args: argparse.Namespace, res: dict[str, Any]) -> None:
    n = 100_000 if args.quick else 1_000_000
    d, classes = 64, 10
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes * 3, d, generator=g) * 3
    which = torch.randint(0, classes * 3, (n,), generator=g)
    x = centres[which] + torch.randn(n, d, generator=g)
    head = nn.Linear(d, classes)
    torch.nn.init.normal_(head.weight, generator=g)
    model = nn.Sequential(nn.Identity(), nn.ReLU(), head).eval()
    out: dict[str, Any] = {"n": n, "dim": d, "layers": ["0", "1"]}
    s = ClusterSurrogate(
        model,
        ["0", "1"],
        n_clusters=15,
        algorithm="kmeans",
        batch_size=4096,
        memory_limit=128 << 20,
        cache_dir=args.tmp,
    )
    log(f"scale: fit k-means path on {n} points")
    _, fit_s, fit_mb = timed(lambda: s.fit(x))
    out["whynet_fit_s"], out["whynet_fit_peak_rss_mb"] = fit_s, fit_mb
    out["whynet_fit_peak_anon_mb"] = LAST["anon_mb"]
    out["spilled_to_disk"] = s.spilled_to_disk_
    log(f"scale: fit {fit_s:.1f} s peak +{fit_mb:.0f} MB (disk cache {s.spilled_to_disk_})")
    # peers on the same embedding (k-means step only): scikit-learn KMeans with the same
    # restarts on the same-size sample, and MiniBatchKMeans over all n points
    emb = s.train_embeddings_["0"].numpy()
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from whynet.clusters.embedding import kmeans as wn_kmeans

    sub = emb[np.random.default_rng(0).choice(len(emb), 20000, replace=False)]
    t_f, _ = median_time(lambda: wn_kmeans(emb, 15, n_init=20, seed=0, max_points=20000), 1)
    t_s, _ = median_time(lambda: KMeans(15, n_init=20, random_state=0).fit(sub), 1)
    t_m, _ = median_time(
        lambda: MiniBatchKMeans(15, n_init=3, random_state=0, batch_size=4096).fit(emb), 1
    )
    out["kmeans_step"] = {
        "whynet_faiss_20k_sample_nredo20_s": t_f,
        "sklearn_kmeans_20k_sample_ninit20_s": t_s,
        "sklearn_minibatch_all_points_ninit3_s": t_m,
        "ratio_sklearn_over_whynet": t_s / t_f,
    }
    # query latency: whynet's index vs brute-force weighted distances in torch
    qx = x[:100]
    w = torch.tensor([2.0, 1.0], dtype=torch.float64)
    emb_q = s.embed(qx)
    blocks = [s.train_embeddings_[n_] for n_ in s.layers]

    def brute(nq: int) -> torch.Tensor:
        d2 = sum(
            float(w[i]) * torch.cdist(emb_q[n_][:nq], blocks[i]).pow(2)
            for i, n_ in enumerate(s.layers)
        )
        return d2.topk(10, dim=1, largest=False).indices  # type: ignore[union-attr]

    reps = 3 if args.quick else 5
    t1, all1 = median_time(lambda: s._index.search([emb_q[n_][:1] for n_ in s.layers], w, 10), reps)
    t100, _ = median_time(lambda: s._index.search([emb_q[n_] for n_ in s.layers], w, 10), reps)
    tb1, _ = median_time(lambda: brute(1), reps)
    tb100, _ = median_time(lambda: brute(100), reps)
    t_full, _ = median_time(lambda: s.similar(qx[:1], k=10, layer_weights=[2, 1]), reps)
    idx_w, _ = s._index.search([emb_q[n_] for n_ in s.layers], w, 10)
    same = float((idx_w == brute(100)).float().mean())
    out["query"] = {
        "index_1_query_s": t1,
        "index_1_query_all_s": all1,
        "index_100_queries_s": t100,
        "brute_torch_1_query_s": tb1,
        "brute_torch_100_queries_s": tb100,
        "similar_end_to_end_1_query_s": t_full,
        "ratio_brute_over_index_1": tb1 / t1,
        "ratio_brute_over_index_100": tb100 / t100,
        "same_neighbours_as_brute_force": same,
    }
    log(f"scale: {out['query']}")
    res["scale"] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=["fashion", "similar", "sentiment", "scale"])
    ap.add_argument(
        "--methods",
        nargs="*",
        default=["kmeans", "kmeans_select", "idec"],
        help="kmeans_select / idec_select: restart_selection='likelihood' (idec_select is not "
        "in the default list: it takes as long as idec)",
    )
    ap.add_argument("--idec-points", type=int, default=20000)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--idec-iter", type=int, default=2000)
    ap.add_argument("--idec-alpha", type=float, default=1.0)
    ap.add_argument(
        "--weights",
        default="fit",
        type=lambda v: None if v == "equal" else v,
        help='surrogate layer weights: "fit" (learned on held-out training points) or "equal"',
    )
    ap.add_argument("--tmp", default="/tmp/whynet-bench-clusters")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--weights-dir", default=None, help="zoo weights folder (default: bundled)")
    args = ap.parse_args()
    if args.quick:
        args.idec_points, args.pretrain_epochs, args.idec_iter = 3000, 2, 140
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_start": os.getloadavg(),
        },
        "quick": args.quick,
        "memory": "peak RSS increase, /proc sampling",
    }
    torch.manual_seed(0)
    if "fashion" in args.only:
        fashion(args, res)
    if "sentiment" in args.only:
        sentiment(args, res)
    if "scale" in args.only:
        scale(args, res)
    res["machine"]["load_avg_end"] = os.getloadavg()
    text = json.dumps(res, indent=1, default=float)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the other experiments' (and methods') results when running a subset
        old = json.loads(out.read_text())
        for key, value in res.items():
            if key in ("fashion", "similar", "sentiment") and isinstance(old.get(key), dict):
                old[key].update(value)  # per method: a --methods subset keeps the others
            else:
                old[key] = value
        text = json.dumps(old, indent=1, default=float)
    out.write_text(text)


if __name__ == "__main__":
    main()
