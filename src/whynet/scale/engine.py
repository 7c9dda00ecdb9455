"""The one switch: the same calls run in this process (``engine="local"``) or on Ray.

Two kinds of distributed work, two Ray patterns:

- **model work** (extraction, explanation): Ray Data ``map_batches`` over shard indices with an
  actor pool, each actor holding the model (built once per worker; the standard pattern for
  batch inference). Actors are restarted and their tasks retried when a worker process dies
  (Ray Data's actor-pool defaults ``max_restarts=-1``, ``max_task_retries=-1``).
- **reductions** (gradient sums, Lloyd steps, influence sums): one Ray task per shard that
  reads the shard from the store and returns a small partial; the driver sums the partials in
  shard order, so the result does not depend on which worker finished first. Tasks are retried
  on worker death (``max_retries``). Inside :meth:`Engine.sticky` they go to long-lived actors
  instead, shard ``k`` always to the same one, so a process that keeps what it read between
  passes (the map/reduce fit's shard cache) is asked for the same shards every pass.

Ray is imported only here and only when ``engine="ray"``; without it the local engine works
and the Ray engine says how to install it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from whynet.core.progress import progress as progress_bar

INSTALL = "the Ray engine needs Ray: pip install 'whynet[scale]'"


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL} ({e})") from None
    return ray


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an address nobody listens on (``ray.init`` would retry for a minute)."""
    if address in ("auto", "local") or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({e}); start it with "
            "`ray start --head` or pass address=None for a local cluster"
        ) from None


@dataclass
class Engine:
    """Where shard work runs: ``"local"`` (this process) or ``"ray"`` (a Ray cluster)."""

    name: str = "local"
    address: str | None = None
    #: concurrent workers for model work (Ray); None = every CPU of the cluster
    workers: int | None = None
    progress: bool | None = False
    #: the actors of an open :meth:`sticky` block (Ray)
    _actors: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.name!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.name == "ray":
            self._ray()

    def _ray(self) -> Any:
        ray = require_ray()
        if self.address is not None:
            _check_reachable(self.address)  # also when joined: a wrong setting is an error
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
            except ConnectionError as e:
                raise ConnectionError(
                    f"cannot reach the Ray cluster at {self.address!r} ({e})"
                ) from None
        return ray

    def n_workers(self) -> int:
        if self.name == "local":
            return 1
        if self.workers is not None:
            return self.workers
        return max(1, int(self._ray().cluster_resources().get("CPU", 1)))

    # ------------------------------------------------------------------ model work
    def map_actors(
        self,
        worker: type,
        kwargs: dict[str, Any],
        indices: Sequence[int],
        on_result: Callable[[dict[str, Any]], None],
        desc: str = "shards",
    ) -> None:
        """``on_result(worker(**kwargs)(i))`` for each shard index, results as they finish.

        ``worker(i)`` must return a JSON-able dict (a shard record). Locally one worker object
        runs the indices in order; on Ray an actor pool of :meth:`n_workers` actors does.
        """
        if not indices:
            return
        if self.name == "local":
            w = worker(**kwargs)
            for i in progress_bar(indices, total=len(indices), desc=desc, enabled=self.progress):
                on_result(w(i))
            return
        ray = self._ray()
        n = min(self.n_workers(), len(indices))
        ds = ray.data.from_items(
            [{"index": int(i)} for i in indices], override_num_blocks=len(indices)
        )
        out = ds.map_batches(
            _RayActor,
            fn_constructor_kwargs={"worker": worker, "kwargs_ref": ray.put(kwargs)},
            batch_size=1,
            concurrency=n,
            num_cpus=1,
            # Ray Data's actor pools default to max_restarts=-1, max_task_retries=-1: a dead
            # worker process is replaced and its shard retried (the shard write is idempotent)
        )
        rows = out.iter_rows()
        for row in progress_bar(rows, total=len(indices), desc=desc, enabled=self.progress):
            on_result(json.loads(row["record"]))

    # ------------------------------------------------------------------ reductions
    def map_tasks(
        self, fn: Callable[..., Any], shared: Any, items: Iterable[Any], desc: str = "shards"
    ) -> list[Any]:
        """``[fn(shared, item) for item in items]`` in item order (Ray: one task per item)."""
        items = list(items)
        if self.name == "local":
            return [fn(shared, it) for it in items]
        ray = self._ray()
        ref = ray.put(shared)
        if self._actors:  # item k to actor k mod n, every call (sticky)
            n = len(self._actors)
            got = ray.get([a.run.remote(fn, ref, items[j::n]) for j, a in enumerate(self._actors)])
            out: list[Any] = [None] * len(items)
            for j, part in enumerate(got):
                out[j::n] = part
            return out
        remote = ray.remote(num_cpus=1, max_retries=3)(fn)
        refs = [remote.remote(ref, it) for it in items]
        return list(ray.get(refs))

    @contextmanager
    def sticky(self) -> Iterator[None]:
        """Within the block, Ray's :meth:`map_tasks` run on one actor per worker (at most the
        cluster's CPUs), item ``k`` of every call on actor ``k mod n``; the actors are killed
        at the end. An actor whose process dies is restarted and its call retried (it loses
        only what it kept). Locally, and nested, this changes nothing."""
        if self.name != "ray" or self._actors:
            yield
            return
        ray = self._ray()
        n = min(self.n_workers(), max(1, int(ray.cluster_resources().get("CPU", 1))))
        actor = ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)(_TaskActor)
        self._actors = [actor.remote() for _ in range(n)]
        try:
            yield
        finally:
            for a in self._actors:
                ray.kill(a)
            self._actors = []


class _TaskActor:
    """A Ray actor that runs :meth:`Engine.map_tasks` items in its own, long-lived process."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor (num_cpus=1)

    def run(self, fn: Callable[..., Any], shared: Any, items: list[Any]) -> list[Any]:
        return [fn(shared, it) for it in items]


class _RayActor:
    """Ray Data callable class: builds the worker once per actor, computes one shard per row."""

    def __init__(self, worker: type, kwargs_ref: Any) -> None:
        import ray
        import torch

        torch.set_num_threads(1)  # one CPU per actor (num_cpus=1)
        kwargs = ray.get(kwargs_ref) if isinstance(kwargs_ref, ray.ObjectRef) else kwargs_ref
        self.worker = worker(**kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        records = [json.dumps(self.worker(int(i))) for i in batch["index"]]
        return {"record": records}


def as_engine(
    engine: str | Engine = "local",
    address: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> Engine:
    """An :class:`Engine` from the one switch's settings (``engine`` may already be one)."""
    if isinstance(engine, Engine):
        return engine
    return Engine(engine, address=address, workers=workers, progress=progress)
