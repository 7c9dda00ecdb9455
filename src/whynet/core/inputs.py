"""Model inputs: a tensor, or a ``Mapping`` of tensors passed as ``model(**inputs)``.

HuggingFace models take keyword inputs (``input_ids``, ``attention_mask``, ``pixel_values``,
...) and tokenizers return a ``BatchEncoding`` (a mapping). Everywhere whynet accepts a batch it
goes through this module: the batch size is the first dimension of every tensor in it, a chunk
slices every tensor, and the model is called with keywords. The *explained* part of a mapping
is its main tensor (:func:`main_key`: ``input_ids``, ``pixel_values``, ...); the attention mask
travels with it unchanged so that the model never attends to padding.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: a batch: one tensor, or named tensors for ``model(**batch)``
ModelInputs = torch.Tensor | Mapping[str, torch.Tensor]

#: keys tried, in order, for the explained tensor of a mapping
MAIN_KEYS = (
    "input_ids",
    "pixel_values",
    "inputs_embeds",
    "input_values",
    "input_features",
    "inputs",
    "x",
)
#: keys that carry which positions are real (1) and which are padding (0)
MASK_KEYS = ("attention_mask",)


def is_mapping(x: object) -> bool:
    """Whether ``x`` is a mapping batch (dict, ``BatchEncoding``, any ``Mapping``)."""
    return isinstance(x, Mapping)


def as_inputs(x: object, name: str = "inputs") -> ModelInputs:
    """Validate a batch: a tensor, or a non-empty mapping of tensors with one batch size.

    A mapping comes back as a plain ``dict`` (a ``BatchEncoding``'s tensors, same order).
    """
    if isinstance(x, torch.Tensor):
        return x
    if not is_mapping(x):
        raise TypeError(
            f"{name} must be a torch.Tensor or a mapping of tensors (a dict or an HF "
            f"BatchEncoding passed as model(**{name})), got {type(x).__name__}"
        )
    assert isinstance(x, Mapping)
    if not x:
        raise ValueError(f"{name} is an empty mapping; pass the model's keyword inputs")
    out: dict[str, torch.Tensor] = {}
    for key, value in x.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name}[{key!r}] is a {type(value).__name__}, not a tensor "
                "(tokenize with return_tensors='pt')"
            )
        if value.dim() == 0:
            raise ValueError(f"{name}[{key!r}] is a scalar; every entry needs a batch dimension")
        out[key] = value
    sizes = {k: int(v.shape[0]) for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise ValueError(
            f"{name} holds tensors with different batch sizes ({listed}); every tensor in a "
            "mapping needs the same first dimension"
        )
    return out


def batch_len(x: ModelInputs) -> int:
    """Number of inputs in a batch (first dimension)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0])


def take(x: ModelInputs, rows: slice | torch.Tensor) -> ModelInputs:
    """Rows of a batch (every tensor of a mapping sliced the same way)."""
    if isinstance(x, torch.Tensor):
        return x[rows]
    return {k: v[rows] for k, v in x.items()}


def concat(parts: Sequence[ModelInputs]) -> ModelInputs:
    """Concatenate batches along the first dimension (mappings key by key)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    return {k: torch.cat([p[k] for p in parts]) for k in first}  # type: ignore[index]


def to_device(
    x: ModelInputs, device: torch.device | str, dtype: torch.dtype | None = None
) -> ModelInputs:
    """Move a batch; floating tensors are cast to ``dtype`` (the model's) when given."""

    def move(t: torch.Tensor) -> torch.Tensor:
        cast = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        return t.to(device, dtype=cast)

    if isinstance(x, torch.Tensor):
        return move(x)
    return {k: move(v) for k, v in x.items()}


def forward(model: nn.Module, x: ModelInputs, **kwargs: Any) -> Any:
    """Call ``model`` on a batch: ``model(x)`` for a tensor, ``model(**x)`` for a mapping."""
    if isinstance(x, torch.Tensor):
        return model(x, **kwargs)
    return model(**x, **kwargs)


def check_keys(model: nn.Module, x: ModelInputs, name: str = "inputs") -> None:
    """Refuse mapping keys that ``model.forward`` does not take (before any work is done)."""
    if isinstance(x, torch.Tensor):
        return
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # builtins / C extensions: let the model decide
        return
    accepted = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for p in params.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            # HF models take ``**kwargs: Unpack[TransformersKwargs]`` and silently ignore
            # unknown keys; a typed ``**kwargs`` names what it takes, a plain one takes anything
            typed = [a for a in typing.get_args(p.annotation) if typing.is_typeddict(a)]
            if not typed:
                return
            accepted += [k for t in typed for k in (*t.__required_keys__, *t.__optional_keys__)]
    unknown = [k for k in x if k not in accepted]
    if unknown:
        raise TypeError(
            f"{name} has key(s) {unknown} that {type(model).__name__}.forward does not take "
            f"(it takes {accepted}); drop them or pass the model's own input names"
        )


def main_key(x: Mapping[str, torch.Tensor], key: str | None = None) -> str:
    """The key of the explained tensor of a mapping: ``key`` if given, else the first of
    :data:`MAIN_KEYS` present, else the only non-mask entry."""
    if key is not None:
        if key not in x:
            raise KeyError(f"input key {key!r} is not in the inputs (keys: {list(x)})")
        return key
    for k in MAIN_KEYS:
        if k in x:
            return k
    rest = [k for k in x if k not in MASK_KEYS]
    if len(rest) == 1:
        return rest[0]
    raise ValueError(
        f"cannot tell which input to explain among {list(x)}; pass input_key= one of them"
    )


def main_tensor(x: ModelInputs, key: str | None = None) -> torch.Tensor:
    """The explained tensor of a batch (the tensor itself, or the mapping's main entry)."""
    if isinstance(x, torch.Tensor):
        return x
    return x[main_key(x, key)]


def with_main(x: ModelInputs, value: torch.Tensor, key: str | None = None) -> ModelInputs:
    """The batch with its explained tensor replaced by ``value`` (other entries kept)."""
    if isinstance(x, torch.Tensor):
        return value
    out = dict(x)
    out[main_key(x, key)] = value
    return out


def attention_mask(x: ModelInputs) -> torch.Tensor | None:
    """The batch's attention mask ((B, T), 1 = real token), if it carries one."""
    if isinstance(x, torch.Tensor):
        return None
    for k in MASK_KEYS:
        if k in x:
            return x[k]
    return None


def valid_tokens(
    x: ModelInputs, *, pad_id: int | None = None, key: str | None = None
) -> torch.Tensor | None:
    """Boolean (B, T) map of real (non-padding) positions of a token batch, or None.

    From the attention mask when the batch carries one, else from ``pad_id`` on integer ids;
    None when neither says (then every position counts). Never a hard-coded pad id.
    """
    mask = attention_mask(x)
    ids = main_tensor(x, key)
    if mask is not None:
        if mask.shape != ids.shape[:2]:
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but the inputs have "
                f"{tuple(ids.shape[:2])} (batch, tokens); they must match"
            )
        return mask.to(ids.device) != 0
    if pad_id is not None and not ids.is_floating_point():
        return ids != pad_id
    return None
