"""The one loop helper, :func:`loop`, for the rollout segment, the minibatch steps and the advantage
recursion: a ``scan`` (``scanned``: what a compiled whole iteration runs, its compile time does not
grow with the length) or a Python loop (eager code, and what a compiled graph unrolls).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils._pytree as pytree
from torch._higher_order_ops import scan

from kernel.tree import leaves, tree_map


def stacked(items: list):
    """A list of like pytrees -> one pytree of stacked leaves, in the first item's layout. Dicts
    with one key set are transposed key by key (a host-stepped segment stacks thousands of records,
    and pairing them node by node through :func:`kernel.tree.tree_map` would cost a few percent of
    its time); anything else, or keys that differ, goes through ``tree_map``, which pairs by path
    and names a mismatch."""
    try:
        return _transposed(items)
    except _NotPlain:
        return tree_map(lambda *xs: torch.stack(xs), *items)


class _NotPlain(Exception):
    pass


def _transposed(items: list):
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if not isinstance(first, dict) or not all(isinstance(x, dict) and x.keys() == first.keys() for x in items):
        raise _NotPlain
    return {k: _transposed([x[k] for x in items]) for k in first}


def loop(body: Callable, carry, xs, scanned: bool, stack: bool = True):
    """``(carry, ys)``: ``body`` over the leading axis of ``xs``, ``ys`` stacked (a scan's always
    are; ``stack=False`` leaves a Python loop's as a list, for a caller that reduces them)."""
    if scanned:
        # A scan body may not return an alias of its inputs (a step that passes an observation
        # through, an optimizer leaf a skipped step leaves as it is).
        return scan(lambda c, x: unaliased(body(c, x), (c, x)), carry, xs)
    ys = []
    for x in rows(xs):
        carry, y = body(carry, x)
        ys.append(y)
    return carry, stacked(ys) if stack else ys


def rows(xs) -> list:
    """``xs`` sliced along its leading axis, one op per leaf. Plain tuples and dicts of tensors are
    sliced without pytree calls: inside a compiled function each one would be traced per step."""
    if isinstance(xs, tuple) and all(isinstance(x, torch.Tensor) for x in xs):
        return list(zip(*(x.unbind(0) for x in xs)))
    if isinstance(xs, dict) and all(isinstance(x, torch.Tensor) for x in xs.values()):
        return [dict(zip(xs, r)) for r in zip(*(x.unbind(0) for x in xs.values()))]
    flat, spec = pytree.tree_flatten(xs)
    return [pytree.tree_unflatten(list(r), spec) for r in zip(*(x.unbind(0) for x in flat))]


def unaliased(outputs, inputs=()):
    """``outputs`` with every tensor leaf that is also an input, or repeats an earlier output,
    copied: a scan body may not return an alias (the acting step passes the observation through
    into its record, and an env may hand back one tensor as both state and obs).

    Aliases are found with ``is``, not ``id()``: dynamo cannot take the ``id()`` of a tensor made
    inside a scan body in every torch release. A repeat copies the previous copy rather than the
    original, so no two copy nodes are identical (the graph optimiser would merge those back into
    one tensor).
    """
    latest = [[x, x] for x in leaves(inputs) if isinstance(x, torch.Tensor)]  # [original, newest copy]

    def fresh(x):
        if not isinstance(x, torch.Tensor):
            return x
        for pair in latest:
            if x is pair[0]:
                pair[1] = pair[1].clone()
                return pair[1]
        latest.append([x, x])
        return x

    return tree_map(fresh, outputs)
