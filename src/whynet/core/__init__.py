"""whynet.core: the one place where hooks and autograd meet.

Layers (:mod:`.layers`), hooks and capture/intervention (:mod:`.hooks`), the gradient utility
(:mod:`.gradients`), quantities and distributions of interest (:mod:`.qoi`, :mod:`.doi`), data
iteration (:mod:`.data`), model hygiene (:mod:`.model`), input checks (:mod:`.validation`),
progress bars (:mod:`.progress`), the result type (:mod:`.explanation`) and the explainer base
classes (:mod:`.explainer`).
"""

from whynet.core.data import data_length, iter_batches
from whynet.core.doi import (
    DatasetDoI,
    DoI,
    Gaussian,
    LinearPath,
    Mixture,
    Point,
    expand,
    path_rule,
)
from whynet.core.explainer import (
    Explainer,
    FittedMixin,
    NotFittedError,
    predict_logits,
    resolve_targets,
)
from whynet.core.explanation import Explanation, atomic_write, load_tensors, save_tensors
from whynet.core.gradients import Gradients, qoi_gradients
from whynet.core.hooks import Capture, capture, hooked, intervene
from whynet.core.layers import layer_name_of, layer_names, resolve_layer
from whynet.core.model import as_logits, frozen_eval, model_device, model_dtype
from whynet.core.progress import progress, progress_enabled
from whynet.core.qoi import Channel, Class, Comparative, Function, Linear, MaxClass, QoI, as_qoi
from whynet.core.validation import check_batch_size, check_classes, check_inputs

__all__ = [
    "Capture",
    "Channel",
    "Class",
    "Comparative",
    "DatasetDoI",
    "DoI",
    "Explainer",
    "Explanation",
    "FittedMixin",
    "Function",
    "Gaussian",
    "Gradients",
    "Linear",
    "LinearPath",
    "MaxClass",
    "Mixture",
    "NotFittedError",
    "Point",
    "QoI",
    "as_logits",
    "as_qoi",
    "atomic_write",
    "capture",
    "check_batch_size",
    "check_classes",
    "check_inputs",
    "data_length",
    "expand",
    "frozen_eval",
    "hooked",
    "intervene",
    "iter_batches",
    "layer_name_of",
    "layer_names",
    "load_tensors",
    "model_device",
    "model_dtype",
    "path_rule",
    "predict_logits",
    "progress",
    "progress_enabled",
    "qoi_gradients",
    "resolve_layer",
    "resolve_targets",
    "save_tensors",
]
