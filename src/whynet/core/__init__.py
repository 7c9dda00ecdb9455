"""whynet.core: the one place where hooks and autograd meet, and the one framework under
every method.

Layers (:mod:`.layers`), hooks and capture/intervention (:mod:`.hooks`), the gradient utility
(:mod:`.gradients`), quantities and distributions of interest (:mod:`.qoi`, :mod:`.doi`), data
iteration (:mod:`.data`), the model pipeline (:mod:`.pipeline`), model hygiene
(:mod:`.model`), input checks (:mod:`.validation`), declared parameters (:mod:`.params`),
progress bars (:mod:`.progress`), image references and blending (:mod:`.image`), the result
type (:mod:`.explanation`), the explain template (:mod:`.explainer`), declared fitted state
and its persistence (:mod:`.state`), the activation store (:mod:`.store`) and the training
loop (:mod:`.training`).
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
    NotFittedError,
    Target,
    parse_target,
    resolve_targets,
)
from whynet.core.explanation import Explanation, atomic_write, load_tensors, save_tensors
from whynet.core.gradients import Gradients, qoi_gradients
from whynet.core.hooks import Capture, capture, hooked, intervene, unpack
from whynet.core.image import blend, gaussian_blur, reference
from whynet.core.inputs import (
    ModelInputs,
    as_inputs,
    attention_mask,
    batch_len,
    concat,
    forward,
    is_mapping,
    main_key,
    main_tensor,
    take,
    to_device,
    valid_tokens,
    with_main,
)
from whynet.core.layers import layer_name_of, layer_names, resolve_layer
from whynet.core.model import (
    OutputSpec,
    as_logits,
    frozen_eval,
    model_device,
    model_dtype,
    select_output,
)
from whynet.core.params import CALLABLE, DTYPE, Constraint, Interval, Options, constraint
from whynet.core.pipeline import Accumulator, Batch, predict_logits, run_model
from whynet.core.progress import progress, progress_enabled
from whynet.core.qoi import Channel, Class, Comparative, Function, Linear, MaxClass, QoI, as_qoi
from whynet.core.state import FittedMixin, FittedState, State, data_fingerprint, model_fingerprint
from whynet.core.store import ActivationStore, StoreCache
from whynet.core.training import TrainResult, train
from whynet.core.validation import check_batch_size, check_classes, check_inputs

__all__ = [
    "ModelInputs",
    "OutputSpec",
    "as_inputs",
    "attention_mask",
    "batch_len",
    "concat",
    "forward",
    "is_mapping",
    "main_key",
    "main_tensor",
    "select_output",
    "take",
    "to_device",
    "valid_tokens",
    "with_main",
    "Accumulator",
    "CALLABLE",
    "DTYPE",
    "ActivationStore",
    "Batch",
    "Capture",
    "Constraint",
    "Interval",
    "Options",
    "State",
    "StoreCache",
    "Target",
    "TrainResult",
    "blend",
    "constraint",
    "gaussian_blur",
    "data_fingerprint",
    "model_fingerprint",
    "parse_target",
    "reference",
    "run_model",
    "train",
    "unpack",
    "Channel",
    "Class",
    "Comparative",
    "DatasetDoI",
    "DoI",
    "Explainer",
    "Explanation",
    "FittedMixin",
    "FittedState",
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
