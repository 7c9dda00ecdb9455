"""Where a run's work goes: the ``[engine]`` of a config (local, or Ray through
:mod:`whynet.scale`) and which fits the Ray engine shards."""

from __future__ import annotations

import inspect
from typing import Any

from whynet.run.config import MethodSpec, RunConfig, RunError

#: the store folder inside a run's output when [engine] names none
SCALE = "scale"


#: the fits the Ray engine shards (``whynet.scale.fit``): representer points, and cluster
#: surrogates with k-means; the others are fitted in this process (same result) and only
#: their explanations go to Ray
RAY_FITS = ("representer", 'clusters with algorithm = "kmeans"')


def ray_fits(spec: MethodSpec) -> bool:
    """Whether the Ray engine shards this method's fit (see :data:`RAY_FITS`)."""
    if spec.method == "clusters":
        from whynet.registry import get_explainer

        default = inspect.signature(get_explainer("clusters")).parameters["algorithm"].default
        return spec.params.get("algorithm", default) == "kmeans"
    return spec.method == "representer"


def make_engine(cfg: RunConfig) -> Any:
    """The ``[engine]`` of a run: ``"local"``, or a started :class:`whynet.scale.Engine` (Ray
    imported, the cluster reached) so that a missing Ray or a wrong address fails before any
    work, as one RunError."""
    if cfg.engine == "local":
        return "local"
    from whynet.scale import Engine

    try:
        return Engine(cfg.engine, address=cfg.address, workers=cfg.workers)
    except ImportError as e:
        raise RunError(f'{cfg.path}: [engine] name = "{cfg.engine}": {e}') from None
    except ConnectionError as e:
        raise RunError(f"{cfg.path}: [engine] address: {e}") from None
    except ValueError as e:
        raise RunError(f"{cfg.path}: [engine]: {e}") from None


def engine_doc(cfg: RunConfig) -> dict[str, Any]:
    store = str(cfg.store) if cfg.store is not None else str(cfg.out / SCALE)
    doc = {"name": cfg.engine, "address": cfg.address, "workers": cfg.workers, "store": store}
    return {"engine": doc}
