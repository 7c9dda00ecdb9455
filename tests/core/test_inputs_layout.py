"""core/inputs.py and core/layout.py directly: round trips and the errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whynet.core import (
    as_inputs,
    batch_len,
    concat,
    main_key,
    take,
    to_device,
    valid_tokens,
    with_main,
)
from whynet.core.layout import check_channel_dim, grid_side, neuron_dim, tokens_to_grid


def test_mapping_round_trips():
    b = {"input_ids": torch.arange(12).reshape(3, 4), "attention_mask": torch.ones(3, 4)}
    assert batch_len(b) == 3
    parts = [take(b, slice(0, 1)), take(b, slice(1, 3))]
    joined = concat(parts)
    assert all(torch.equal(joined[k], b[k]) for k in b)
    assert main_key(b) == "input_ids"
    moved = to_device(b, "cpu", torch.float64)
    assert moved["input_ids"].dtype == torch.long and moved["attention_mask"].dtype == torch.float64
    new = with_main(b, torch.zeros(3, 4, dtype=torch.long))
    assert int(new["input_ids"].sum()) == 0 and new["attention_mask"] is b["attention_mask"]
    assert valid_tokens(b).all()
    ids = torch.tensor([[5, 6, 1, 1]])
    assert valid_tokens(ids, pad_id=1).tolist() == [[True, True, False, False]]
    assert valid_tokens(ids) is None  # neither a mask nor a pad id: no padding assumed


def test_bad_batches_are_named():
    with pytest.raises(TypeError, match="must be a torch.Tensor or a mapping"):
        as_inputs([1, 2])
    with pytest.raises(ValueError, match="empty mapping"):
        as_inputs({})
    with pytest.raises(ValueError, match=r"inputs\['x'\] is a scalar"):
        as_inputs({"x": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="cannot tell which input to explain"):
        main_key({"a": torch.ones(2), "b": torch.ones(2)})
    with pytest.raises(KeyError, match="input key 'c' is not in the inputs"):
        main_key({"a": torch.ones(2)}, "c")


def test_layouts():
    assert neuron_dim(None, None, 4) == 1
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 1))
    lin = nn.Sequential(nn.Linear(2, 3))
    assert neuron_dim(conv1d, "0", 3) == 1  # (B, C, L) stays channel-first
    assert neuron_dim(lin, "0", 3) == 2  # (B, T, D): hidden units
    assert check_channel_dim(-1, 3) == 2
    with pytest.raises(ValueError, match="channel_dim=0 is out of range"):
        check_channel_dim(0, 3)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        check_channel_dim(1.0, 3)  # type: ignore[arg-type]
    assert grid_side(17) == (1, 4) and grid_side(16) == (0, 4)
    with pytest.raises(ValueError, match="do not form a square patch grid"):
        grid_side(7)
    t = torch.arange(2 * 5 * 3, dtype=torch.float64).reshape(2, 5, 3)  # CLS + 2x2 patches
    g = tokens_to_grid(t)
    assert g.shape == (2, 3, 2, 2) and torch.equal(g[:, :, 0, 1], t[:, 2])
