"""Pure layers: ``init(generator, ...) -> params`` and ``apply(params, x) -> y``.

Weights are stored ``[out, in]`` as in ``torch.nn.Linear`` so ``F.linear`` applies them directly.
Initialisation follows CleanRL: orthogonal weights with a per-layer gain, zero biases.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

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


def lstm_init(generator: torch.Generator, in_dim: int, hidden: int) -> dict:
    """Gates stacked [input, forget, cell, output]; forget-gate bias 1 so early training remembers."""
    w_ih = torch.empty(4 * hidden, in_dim)
    w_hh = torch.empty(4 * hidden, hidden)
    torch.nn.init.orthogonal_(w_ih, generator=generator)
    torch.nn.init.orthogonal_(w_hh, generator=generator)
    b = torch.zeros(4 * hidden)
    b[hidden:2 * hidden] = 1.0
    return {"w_ih": w_ih, "w_hh": w_hh, "b": b}


def lstm_cell(params: dict, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    gates = F.linear(x, params["w_ih"], params["b"]) + F.linear(h, params["w_hh"])
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def lstm_sequence(params: dict, xs: torch.Tensor, h: torch.Tensor, c: torch.Tensor, starts: torch.Tensor):
    """Run ``[T, N, F]`` inputs from state ``(h, c)``. ``starts[t]`` marks an episode's first step:
    the state is zeroed *before* that step (the one convention, used by rollout and replay alike)."""
    outputs = []
    for t in range(xs.shape[0]):
        keep = (~starts[t]).unsqueeze(-1).to(h.dtype)
        h, c = lstm_cell(params, xs[t], h * keep, c * keep)
        outputs.append(h)
    return torch.stack(outputs), (h, c)
