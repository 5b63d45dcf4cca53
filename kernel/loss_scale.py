"""Loss scaling in jmp's shape: a loss scale is a value with ``scale``, ``unscale`` and ``adjust``.

float16 needs :class:`DynamicLossScale`: small gradients underflow its 5-bit exponent unless the
loss is multiplied up before differentiation. bfloat16 and float32 use :class:`NoOpLossScale`.
Both are named tuples of tensors (pytrees), so they live in the training state, are checkpointed
by path and pass through a compiled step as inputs. ``adjust`` is a ``torch.where``: no host sync.

Skipping a step whose gradient is not finite is the optimizer's business
(:func:`kernel.optim.apply_if_finite`); the loss scale only reacts to it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernel.eager import plain
from kernel.tree import Tree, leaves, tree_map

INITIAL_SCALE = 2.0 ** 16


class NoOpLossScale(NamedTuple):
    """A scale of 1 that never changes."""

    def scale(self, tree: Tree) -> Tree:
        return tree

    def unscale(self, tree: Tree) -> Tree:
        return tree

    def adjust(self, grads_finite: torch.Tensor) -> NoOpLossScale:
        return self

    def value(self, device=None) -> torch.Tensor:
        return torch.ones((), dtype=torch.float32, device=device)


class DynamicLossScale(NamedTuple):
    """``loss_scale`` doubles after ``PERIOD`` finite steps in a row and halves on a non-finite one
    (never below ``MIN_SCALE``); ``counter`` holds the finite steps since the last change."""

    loss_scale: torch.Tensor
    counter: torch.Tensor

    PERIOD = 2000
    FACTOR = 2.0
    MIN_SCALE = 1.0

    def scale(self, tree: Tree) -> Tree:
        return tree_map(lambda x: x * self.loss_scale.to(x.dtype), tree)

    def unscale(self, tree: Tree) -> Tree:
        inv = 1.0 / self.loss_scale
        return tree_map(lambda g: g * inv.to(g.dtype), tree)

    def adjust(self, grads_finite: torch.Tensor) -> DynamicLossScale:
        one_more = self.counter + 1
        grow = one_more >= self.PERIOD
        scale = torch.where(grads_finite, torch.where(grow, self.loss_scale * self.FACTOR, self.loss_scale),
                            torch.clamp(self.loss_scale / self.FACTOR, min=self.MIN_SCALE))
        counter = torch.where(grads_finite & ~grow, one_more, torch.zeros_like(one_more))
        return DynamicLossScale(scale, counter)

    def value(self, device=None) -> torch.Tensor:
        return self.loss_scale


LossScale = NoOpLossScale | DynamicLossScale


def dynamic(initial_scale: float = INITIAL_SCALE, device=None) -> DynamicLossScale:
    return DynamicLossScale(torch.tensor(initial_scale, dtype=torch.float32, device=device),
                            torch.zeros((), dtype=torch.int64, device=device))


def for_precision(needs_loss_scale: bool, initial_scale: float = INITIAL_SCALE, device=None) -> LossScale:
    return dynamic(initial_scale, device) if needs_loss_scale else NoOpLossScale()


def all_finite(tree: Tree) -> torch.Tensor:
    """0-d bool: every element of every leaf is finite (no host sync)."""
    xs = leaves(tree)
    if xs and plain(xs[0]) and all(x.numel() and x.dtype == xs[0].dtype for x in xs):
        # Eagerly one foreach op instead of two per leaf: a leaf's largest |x| is finite exactly
        # when all of it is (a NaN anywhere makes it NaN). Traced, there is no native kernel for it.
        return torch.isfinite(torch.stack(torch._foreach_norm(xs, float("inf")))).all()
    return torch.stack([torch.isfinite(x).all() for x in xs]).all()


def select(finite: torch.Tensor, new: Tree, old: Tree) -> Tree:
    """``new`` where ``finite``, else ``old``, leaf by leaf."""
    return tree_map(lambda n, o: torch.where(finite, n, o), new, old)
