"""``whynet run CONFIG.toml``: a user's own model on their own data with every configured
method, into one folder of artefacts and one offline report (see docs/run.md).

:func:`run_config` runs a config; :func:`load_config` checks one; :func:`read_data` and
:func:`load_model` are the readers shared with ``whynet fit`` / ``whynet explain``.
"""

from whynet.run.config import RunConfig, RunError, load_config
from whynet.run.readers import Data, load_model, read_data
from whynet.run.runner import RunResult, run_config, summary

__all__ = [
    "Data",
    "RunConfig",
    "RunError",
    "RunResult",
    "load_config",
    "load_model",
    "read_data",
    "run_config",
    "summary",
]
