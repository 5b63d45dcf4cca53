"""Pytree helpers for params, optimizer state and batches (nested dicts of tensors).

Paths join dict keys with "." (``"heads.action.w"``); telemetry and checkpoints use these names.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

Tree = Any


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf-wise over one or more trees of the same structure."""
    return pytree.tree_map(fn, tree, *rest)


def leaves(tree: Tree) -> list:
    return pytree.tree_leaves(tree)


def flatten_with_paths(tree: Tree, prefix: str = "") -> dict[str, Any]:
    """Flat ``{"a.b.c": leaf}`` view of a nested dict; key order follows insertion order."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, sub in tree.items():
            if not isinstance(key, str) or "." in key or not key:
                raise ValueError(f"pytree keys must be non-empty strings without '.', got {key!r}")
            flat.update(flatten_with_paths(sub, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def unflatten_paths(flat: dict[str, Any]) -> dict:
    """Inverse of :func:`flatten_with_paths`."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree



def global_norm(tree: Tree) -> torch.Tensor:
    """L2 norm over every leaf, in float32, as a 0-d tensor (no host sync)."""
    # Per-leaf norms, not torch._foreach_norm: inductor's C++ wrapper has no native shim for
    # _foreach_norm and calls back into Python for it (~150 us per compiled grad step).
    norms = [torch.linalg.vector_norm(x.float()) for x in leaves(tree)]
    return torch.linalg.vector_norm(torch.stack(norms))


def is_floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def cast_floating(tree: Tree, dtype: torch.dtype) -> Tree:
    """Cast floating-point leaves to ``dtype``; ints, bools and non-tensors pass through untouched."""
    return tree_map(lambda x: x.to(dtype) if is_floating(x) and x.dtype != dtype else x, tree)
