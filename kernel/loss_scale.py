"""Functional dynamic loss scale and non-finite-step guard.

State is data: ``scale`` (float32), ``good_steps`` (finite steps since the last change),
``skipped`` (non-finite steps so far) and ``bad_streak`` (consecutive non-finite steps). Every
decision is a ``torch.where`` inside the compiled step, so nothing syncs with the host.

float16 needs the scale: small gradients underflow its 5-bit exponent. bfloat16 and float32 keep
the scale at 1, but the guard still applies: a step with a non-finite loss or gradient leaves
params and optimizer state untouched and is counted.
"""
from __future__ import annotations

import torch

from kernel.tree import Tree, leaves, tree_map

INITIAL_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000
FACTOR = 2.0


def init(dynamic: bool, initial_scale: float = INITIAL_SCALE, device=None) -> dict:
    return {
        "scale": torch.tensor(initial_scale if dynamic else 1.0, dtype=torch.float32, device=device),
        "good_steps": torch.zeros((), dtype=torch.int64, device=device),
        "skipped": torch.zeros((), dtype=torch.int64, device=device),
        "bad_streak": torch.zeros((), dtype=torch.int64, device=device),
    }


def all_finite(tree: Tree) -> torch.Tensor:
    """0-d bool: every element of every leaf is finite (no host sync)."""
    flags = [torch.isfinite(x).all() for x in leaves(tree)]
    return torch.stack(flags).all()


def unscale(grads: Tree, state: dict) -> Tree:
    inv = 1.0 / state["scale"]
    return tree_map(lambda g: g * inv.to(g.dtype), grads)


def update(state: dict, finite: torch.Tensor, dynamic: bool, growth_interval: int = GROWTH_INTERVAL,
           factor: float = FACTOR) -> dict:
    """Grow the scale after ``growth_interval`` finite steps in a row; shrink it on a non-finite one."""
    good = torch.where(finite, state["good_steps"] + 1, torch.zeros_like(state["good_steps"]))
    scale = state["scale"]
    if dynamic:
        grow = good >= growth_interval
        scale = torch.where(finite, torch.where(grow, scale * factor, scale), scale / factor)
        good = torch.where(grow, torch.zeros_like(good), good)
    return {
        "scale": scale,
        "good_steps": good,
        "skipped": state["skipped"] + (~finite).long(),
        "bad_streak": torch.where(finite, torch.zeros_like(state["bad_streak"]), state["bad_streak"] + 1),
    }


def select(finite: torch.Tensor, new: Tree, old: Tree) -> Tree:
    """``new`` where the step was finite, else ``old``: a skipped step changes nothing."""
    return tree_map(lambda n, o: torch.where(finite, n, o), new, old)
