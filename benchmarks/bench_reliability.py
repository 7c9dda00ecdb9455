"""Reliability stress and soak (issue 16): numbers, not timing assertions.

1. Concurrent save/load: a writer process alternating two versions of one path, a reader
   loading it in a loop (``--loads``, default 2,000): mixed results and errors counted.
2. ``kill -9`` during saves (``--kills``, default 50 per artefact: Explanation, a fitted
   explainer's state, a StoreCache, save_sections, write_report): after each kill the artefact
   must read as the old or the new version, never a mixture; after the next save no temp files
   of ours may remain.
3. Memory soak: every registered explainer called ``--calls`` times (default 2,000); RSS after
   warm-up and at the end.

Run: ``.venv/bin/python benchmarks/bench_reliability.py [--loads N] [--kills N] [--calls N]``.
Writes ``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whynet.core import Explainer, Explanation, FittedMixin, State, StoreCache, Target  # noqa: E402
from whynet.report import load_sections, save_sections, write_report  # noqa: E402
from whynet.report.sections import Figure, Section, Table  # noqa: E402


# ---- two distinguishable versions of every artefact ------------------------------------------
def explanation(k: int) -> Explanation:
    n = 64 if k == 0 else 96
    return Explanation(
        values=torch.full((n, 256), float(k)), method=f"v{k}", layer=f"l{k}", params={"k": k}
    )


def explanation_version(e: Explanation) -> int:
    k = int(e.method[1:])
    ok = (
        e.values.shape == ((64 if k == 0 else 96), 256)
        and bool((e.values == k).all())
        and e.layer == f"l{k}"
        and e.params == {"k": k}
    )
    return k if ok else -1


def _cfg(m: nn.Module) -> dict[str, Any]:
    return {"d": m.in_features}


def _build(c: dict[str, Any]) -> nn.Module:
    return nn.Linear(c["d"], c["d"])


class Probe(FittedMixin, Explainer):
    method = "probe"
    _format = "whynet.bench.probe"
    _fitted_state = {"net_": State("module", config=_cfg, build=_build), "k_": State("json")}

    def fit(self, k: int) -> Probe:
        self._reset_fitted()
        net = nn.Linear(64 + 32 * k, 64 + 32 * k)
        with torch.no_grad():
            net.weight.fill_(k)
            net.bias.fill_(k)
        self._set_fitted(net_=net, k_=k)
        return self

    def _explain_batch(self, x: torch.Tensor, target: Target) -> dict[str, Any]:
        return {"values": x}


def probe_version(p: Probe) -> int:
    k = p.k_
    w = p.net_.weight
    ok = w.shape == (64 + 32 * k, 64 + 32 * k) and bool((w == k).all())
    return k if ok and bool((p.net_.bias == k).all()) else -1


def sections(k: int) -> list[Section]:
    g = torch.Generator().manual_seed(k)
    from whynet.viz import png_bytes

    figs = [
        Figure(f"v{k}", png=png_bytes(torch.rand(1, 16 + k, 16 + j, generator=g))) for j in range(4)
    ]
    return [Section(f"v{k}", figures=figs, tables=[Table("t", ["k"], [[k]])])]


def sections_version(s: list[Section]) -> int:
    k = int(s[0].title[1:])
    return k if [f.png for f in s[0].figures] == [f.png for f in sections(k)[0].figures] else -1


def _artefacts(folder: Path) -> dict[str, tuple[Callable[[int], None], Callable[[], int]]]:
    """name -> (save version k, read -> version or -1 for a mixture)."""
    model = nn.Linear(2, 2)
    cache = StoreCache(folder / "cache", "k" * 24)

    def cache_save(k: int) -> None:
        cache.write({"a": torch.full((2000 + 500 * k,), float(k))}, {"k": k})

    def cache_read() -> int:
        arrays, meta = cache.read()
        k = meta["k"]
        a = arrays["a"]
        return k if len(a) == 2000 + 500 * k and bool((a == k).all()) else -1

    def report_read() -> int:
        text = (folder / "report" / "report.html").read_text()
        k = 0 if "<title>v0</title>" in text else 1
        return k if text.rstrip().endswith("</html>") else -1

    return {
        "explanation": (
            lambda k: explanation(k).save(folder / "e.safetensors"),
            lambda: explanation_version(Explanation.load(folder / "e.safetensors")),
        ),
        "fitted_state": (
            lambda k: Probe(model).fit(k).save(folder / "p.safetensors"),
            lambda: probe_version(Probe.load(folder / "p.safetensors", model)),
        ),
        "store_cache": (cache_save, cache_read),
        "sections": (
            lambda k: save_sections(sections(k), folder / "sections"),
            lambda: sections_version(load_sections(folder / "sections")),
        ),
        "report": (
            lambda k: write_report(sections(k), folder / "report" / "report.html", title=f"v{k}"),
            report_read,
        ),
    }


def _save_forever(folder: str, name: str, ready: Any = None) -> None:
    save, _ = _artefacts(Path(folder))[name]
    i = 0
    while True:
        save(i % 2)
        if ready is not None and i == 0:
            ready.set()
        i += 1


def _temps(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---- 1. concurrent save / load -----------------------------------------------------------------
def concurrent(loads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        explanation(0).save(folder / "e.safetensors")
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        w = ctx.Process(target=_save_forever, args=(d, "explanation", ready), daemon=True)
        w.start()
        ready.wait(120)  # the writer is in its loop of saves
        mixed = errors = 0
        seen = {0: 0, 1: 0}
        t0 = time.perf_counter()
        for _ in range(loads):
            try:
                k = explanation_version(Explanation.load(folder / "e.safetensors"))
            except Exception:
                errors += 1
                continue
            if k < 0:
                mixed += 1
            else:
                seen[k] += 1
        w.kill()
        w.join()
        return {
            "loads": loads,
            "mixed": mixed,
            "errors": errors,
            "versions_seen": seen,
            "seconds": round(time.perf_counter() - t0, 2),
        }


# ---- 2. kill -9 during saves -------------------------------------------------------------------
def kills(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = random.Random(0)
    ctx = mp.get_context("fork")  # fast starts; the child only saves
    for name in _artefacts(Path(tempfile.gettempdir())):
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            save, read = _artefacts(folder)[name]
            save(0)
            mixed = errors = temps_after_kill = temps_after_save = 0
            for _ in range(n):
                ready = ctx.Event()
                p = ctx.Process(target=_save_forever, args=(d, name, ready), daemon=True)
                p.start()
                ready.wait(30)  # one save done: the child is in its loop of saves
                time.sleep(rng.random() * 0.03)  # a random point in a later save
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join()
                temps_after_kill += bool(_temps(folder))
                try:
                    mixed += read() < 0
                except Exception:
                    errors += 1
                save(1)
                temps_after_save += len(_temps(folder))
            out[name] = {
                "kills": n,
                "mixed": mixed,
                "read_errors": errors,
                "kills_that_left_a_temp": temps_after_kill,
                "temps_left_after_next_save": temps_after_save,
            }
            print(name, out[name], flush=True)
    return out


# ---- 3. memory soak ----------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def soak(calls: int) -> dict[str, Any]:
    from tests.test_contract import NAMES, fresh_model, inputs, ready

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for name in NAMES:
        ex = ready(name, fresh_model())
        x = inputs(2)
        warm = max(50, calls // 10)
        for _ in range(warm):
            ex.explain(x)
        after_warm = rss_mb()
        t0 = time.perf_counter()
        for _ in range(calls):
            ex.explain(x)
        out[name] = {
            "calls": calls,
            "rss_after_warmup_mb": round(after_warm, 1),
            "rss_end_mb": round(rss_mb(), 1),
            "growth_mb": round(rss_mb() - after_warm, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["concurrent", "kills", "soak"])
    args = ap.parse_args()
    path = ROOT / "benchmarks" / "results" / "reliability.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if "concurrent" not in args.skip:
        res["concurrent"] = concurrent(args.loads)
        print("concurrent", res["concurrent"], flush=True)
    if "kills" not in args.skip:
        res["kills"] = kills(args.kills)
    if "soak" not in args.skip:
        res["soak"] = soak(args.calls)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
