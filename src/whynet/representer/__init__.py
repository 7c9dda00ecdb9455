"""Representer point selection (Yeh, Kim, Yen, Ravikumar, NeurIPS 2018).

Which training examples does a prediction rest on? The fine-tuned last layer's logits decompose
exactly into one term per training point: ``Phi(x_t) = sum_i alpha_i [f_i, 1] . [f_t, 1]``.
"""

from whynet.representer._gd import solve
from whynet.representer._solver import (
    LbfgsInfo,
    SolveResult,
    alpha_from,
    augment,
    gradient,
    lbfgs,
    objective,
    objective_and_gradient,
    solve_lbfgs,
)
from whynet.representer.explainer import RepresenterPoints, TopPoints

__all__ = [
    "LbfgsInfo",
    "RepresenterPoints",
    "SolveResult",
    "TopPoints",
    "alpha_from",
    "augment",
    "gradient",
    "lbfgs",
    "objective",
    "objective_and_gradient",
    "solve",
    "solve_lbfgs",
]
