"""Pure layers: ``init(generator, ...) -> params`` and ``apply(params, x) -> y``.

Weights are stored ``[out, in]`` as in ``torch.nn.Linear`` so ``F.linear`` applies them directly.
Initialisation follows CleanRL: orthogonal weights with a per-layer gain, zero biases.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def linear_init(generator: torch.Generator, in_dim: int, out_dim: int, gain: float) -> dict:
    w = torch.empty(out_dim, in_dim)
    torch.nn.init.orthogonal_(w, gain=gain, generator=generator)
    return {"w": w, "b": torch.zeros(out_dim)}


def linear_apply(params: dict, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, params["w"], params["b"])


def mlp_init(generator: torch.Generator, sizes: Sequence[int], gain: float = HIDDEN_GAIN) -> dict:
    """Hidden layers of an MLP: ``sizes = (in, h1, h2, ...)``; every layer activated by apply."""
    return {f"l{i}": linear_init(generator, a, b, gain) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def mlp_apply(params: dict, x: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    act = ACTIVATIONS[activation]
    for i in range(len(params)):
        x = act(linear_apply(params[f"l{i}"], x))
    return x
