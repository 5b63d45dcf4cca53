"""Masked categorical and diagonal Gaussian distributions as pure functions over float32 logits.

Masked entries are replaced by a large *finite* negative, not ``-inf``: ``-inf`` turns
``0 * log 0`` in the entropy into NaN and poisons gradients, while ``exp(-1e9)`` underflows to an
exact 0 in float32, so masked actions still have probability exactly 0.

Every function refuses non-float32 logits: the head path is float32 by contract (see
``kernel/precision.py``), and a regression that lets low-precision logits through must fail loudly
rather than train on NaN gradients.
"""
from __future__ import annotations

import math

import torch

from kernel.eager import plain

MASKED_LOGIT = -1e9
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check_float32(logits: torch.Tensor) -> None:
    if logits.dtype != torch.float32:
        raise TypeError(
            f"distribution functions need float32 logits, got {logits.dtype}; "
            "cast trunk features to float32 before the heads (kernel.precision)"
        )


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    check_float32(logits)
    if mask is None:
        return logits
    # Only checked eagerly and outside torch.func transforms: a data-dependent check would force a
    # host sync in a compiled step, and vmap cannot branch on data. Acting checks every mask first.
    if plain(mask) and not bool(mask.any(-1).all()):
        raise ValueError("action mask has a row with no valid action")
    return torch.where(mask, logits, torch.full_like(logits, MASKED_LOGIT))


def log_probs(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised log-probabilities of every action, ``[..., n]``."""
    return torch.log_softmax(masked_logits(logits, mask), dim=-1)


def log_prob(logits: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of ``action`` (integer, shape ``logits.shape[:-1]``)."""
    return log_probs(logits, mask).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    logp = log_probs(logits, mask)
    return -(logp.exp() * logp).sum(-1)


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniforms in [0, 1); clamped so log(0) never appears."""
    u = uniform.clamp(torch.finfo(uniform.dtype).tiny, 1.0 - torch.finfo(uniform.dtype).eps)
    return -torch.log(-torch.log(u))


def sample(logits: torch.Tensor, uniform: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel-max sample from explicit uniform noise of the same shape as ``logits``.

    A masked action's score is ~-1e9 while a valid one's is at most a few tens below its logit,
    so a masked action can never win.
    """
    return torch.argmax(masked_logits(logits, mask) + gumbel(uniform.to(logits.dtype)), dim=-1)


def mode(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return torch.argmax(masked_logits(logits, mask), dim=-1)


# A diagonal Gaussian head's "logits" are ``[..., dim, 2]``: the mean and the log standard deviation.

def gaussian_log_prob(params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Log-density of ``action`` (``[..., dim]``), summed over its dimensions."""
    check_float32(params)
    mean, log_std = params.unbind(-1)
    z = (action.to(params.dtype) - mean) / log_std.exp()
    return (-0.5 * z * z - log_std - HALF_LOG_2PI).sum(-1)


def gaussian_entropy(params: torch.Tensor) -> torch.Tensor:
    check_float32(params)
    return (0.5 + HALF_LOG_2PI + params[..., 1]).sum(-1)


def gaussian_sample(params: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """``mean + std * normal`` from explicit standard-normal noise of the action's shape."""
    check_float32(params)
    return params[..., 0] + params[..., 1].exp() * normal.to(params.dtype)


def gaussian_mode(params: torch.Tensor) -> torch.Tensor:
    check_float32(params)
    return params[..., 0]
