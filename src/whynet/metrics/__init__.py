"""whynet.metrics: how good is an explanation? Functions over a model, inputs and saliency maps.

Every function returns one value per input (float64) so that results stream over batches
(:mod:`.streaming`); aggregate with ``.mean()``.

- Faithfulness (:mod:`.faithfulness`): :func:`deletion_auc`, :func:`insertion_auc` and their
  curves (Petsiuk et al. 2018), :func:`mask_fidelity` (preservation/deletion of a soft mask);
  ROAD (:mod:`.road`, Rong et al. 2022): :func:`road_curve`, :func:`road_auc`,
  :func:`noisy_linear_imputation`.
- Localisation (:mod:`.localisation`): :func:`pointing_game` (Zhang et al. 2016),
  :func:`localisation_error` with :func:`saliency_boxes` and :func:`box_iou`.
- Training-data attribution (:mod:`.attribution`): :func:`lds` (linear datamodeling score),
  :func:`noisy_label_auc`, :func:`random_subsets`, :func:`spearman`, :func:`roc_auc`.
- Helpers: :func:`trapezoid`, :func:`as_saliency`, :func:`gaussian_blur`; baselines and the
  blend of an image with one are :func:`whynet.core.reference` and :func:`whynet.core.blend`.

Saliency maps are (B, H, W) tensors or :class:`~whynet.core.Explanation` objects; see
:func:`as_saliency` for the accepted shapes. Boxes are ``(x0, y0, x1, y1)``, end exclusive.
"""

from whynet.core.image import gaussian_blur, gaussian_kernel
from whynet.metrics._common import as_saliency
from whynet.metrics.attribution import lds, noisy_label_auc, random_subsets, roc_auc, spearman
from whynet.metrics.auc import trapezoid
from whynet.metrics.faithfulness import (
    Fidelity,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    mask_fidelity,
    perturbation_curve,
    saliency_ranks,
)
from whynet.metrics.localisation import (
    box_iou,
    localisation_error,
    max_points,
    pointing_game,
    saliency_boxes,
)
from whynet.metrics.road import noisy_linear_imputation, road_auc, road_curve
from whynet.metrics.streaming import (
    DeletionAUC,
    InsertionAUC,
    LocalisationError,
    PointingGame,
    StreamingMetric,
)

__all__ = [
    "DeletionAUC",
    "Fidelity",
    "InsertionAUC",
    "LocalisationError",
    "PointingGame",
    "StreamingMetric",
    "as_saliency",
    "box_iou",
    "deletion_auc",
    "deletion_curve",
    "gaussian_blur",
    "gaussian_kernel",
    "insertion_auc",
    "insertion_curve",
    "lds",
    "localisation_error",
    "mask_fidelity",
    "noisy_label_auc",
    "noisy_linear_imputation",
    "max_points",
    "perturbation_curve",
    "pointing_game",
    "random_subsets",
    "road_auc",
    "road_curve",
    "roc_auc",
    "saliency_boxes",
    "saliency_ranks",
    "spearman",
    "trapezoid",
]
