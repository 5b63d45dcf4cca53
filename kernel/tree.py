"""Pytree helpers for params, optimizer state and batches (nested dicts of tensors).

Leaves pair by path, never by position. torch's ``_pytree`` flattens a dict in insertion order, so
two dicts with the same keys built in another order flatten to differently ordered leaves, and a
foreach optimizer fed both would pair a gradient with another leaf's moments. Here every flatten
visits dict keys in sorted order (as JAX does), every function that takes several trees checks
that their keys match (a mismatch raises :class:`StructureError` naming the paths), and outputs
keep the first tree's own key order (so a compiled function sees the same dict layout every call).

Containers are dicts, lists and tuples (named tuples included); ``None`` is an empty node; anything
else is a leaf. Paths join dict keys with "." (``"heads.action.w"``); telemetry and checkpoints
use these names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

Tree = Any


class StructureError(ValueError):
    """Two trees that must pair leaf for leaf have different keys or shapes of nesting."""


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _rebuild(node, items: list):
    return type(node)(*items) if _is_namedtuple(node) else type(node)(items)


def _path_name(path: tuple) -> str:
    return ".".join(map(str, path)) or "<root>"


def _check_same_node(node, other, path: tuple) -> None:
    if isinstance(node, dict):
        if not isinstance(other, dict):
            raise StructureError(f"tree structures differ at {_path_name(path)}: dict vs {type(other).__name__}")
        if node.keys() != other.keys():  # key sets (order-insensitive)
            missing = sorted(map(str, node.keys() - other.keys()))
            extra = sorted(map(str, other.keys() - node.keys()))
            raise StructureError(f"tree structures differ at {_path_name(path)}: "
                                 f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    elif isinstance(node, (list, tuple)):
        if not isinstance(other, (list, tuple)) or len(other) != len(node):
            raise StructureError(f"tree structures differ at {_path_name(path)}: "
                                 f"{type(node).__name__} of {len(node)} vs {type(other).__name__}")
    elif (node is None) != (other is None) or isinstance(other, (dict, list, tuple)):
        raise StructureError(f"tree structures differ at {_path_name(path)}: "
                             f"{type(node).__name__} vs {type(other).__name__}")


def map_with_path(fn: Callable, tree: Tree, *rest: Tree, path: tuple = ()) -> Tree:
    """``fn(path, leaf, *other_leaves)`` leaf-wise; ``rest`` pair with ``tree`` by key, and the
    result keeps ``tree``'s structure and key order. ``path`` is a tuple of keys and indices."""
    for other in rest:
        _check_same_node(tree, other, path)
    if isinstance(tree, dict):
        return {k: map_with_path(fn, v, *(o[k] for o in rest), path=path + (k,)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [map_with_path(fn, v, *(o[i] for o in rest), path=path + (i,))
                               for i, v in enumerate(tree)])
    if tree is None:
        return None
    return fn(path, tree, *rest)


class _Mismatch(Exception):
    """Raised inside :func:`_mapped` on a structure mismatch; the caller then finds its path."""


def _mapped(fn: Callable, tree: Tree, rest: tuple) -> Tree:
    """:func:`tree_map`'s walk without paths (it runs on every eager op's params): the same
    structure checks as :func:`map_with_path`, but a mismatch is only reported, not named."""
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise _Mismatch
        return {k: _mapped(fn, v, tuple(o[k] for o in rest)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise _Mismatch
        return _rebuild(tree, [_mapped(fn, v, tuple(o[i] for o in rest)) for i, v in enumerate(tree)])
    for other in rest:
        if (tree is None) != (other is None) or isinstance(other, (dict, list, tuple)):
            raise _Mismatch
    return None if tree is None else fn(tree, *rest)


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf-wise over one or more trees, pairing leaves by path (not by dict order)."""
    try:
        return _mapped(fn, tree, rest)
    except _Mismatch:
        map_with_path(lambda *_: None, tree, *rest)  # raises the StructureError that names the path
        raise


def _items(tree: Tree, path: tuple = ()) -> list[tuple]:
    """``(path, leaf)`` in canonical order: dict keys sorted, sequences in index order."""
    out: list = []
    _skeleton(tree, path, out)
    return out


def _skeleton(tree: Tree, path: tuple, out: list) -> Tree:
    """``tree`` with each leaf replaced by its index in the canonical order (dicts keep their own
    key order), appending ``(path, leaf)`` to ``out`` in that order."""
    if isinstance(tree, dict):
        indexed = {k: _skeleton(tree[k], path + (k,), out) for k in sorted(tree)}
        return {k: indexed[k] for k in tree}
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [_skeleton(v, path + (i,), out) for i, v in enumerate(tree)])
    if tree is None:
        return None
    out.append((path, tree))
    return len(out) - 1


def leaves(tree: Tree) -> list:
    """Leaves in canonical (sorted-key) order: the same list whatever the dicts' insertion order."""
    return [x for _, x in _items(tree)]


class Treedef(NamedTuple):
    """What :func:`unflatten` needs: the tree's skeleton (leaves replaced by their index in the
    canonical order, dicts in their own key order) and the canonical list of leaf paths."""

    skeleton: Tree
    paths: tuple


def flatten(tree: Tree) -> tuple[list, Treedef]:
    """``(leaves, treedef)`` with leaves in canonical order; :func:`unflatten` inverts it."""
    items: list = []
    skeleton = _skeleton(tree, (), items)
    return [x for _, x in items], Treedef(skeleton, tuple(p for p, _ in items))


def leaves_like(tree: Tree, treedef: Treedef) -> list:
    """Leaves of ``tree`` in ``treedef``'s canonical order, so they pair by path with the leaves
    ``treedef`` came from; :class:`StructureError` if the two trees have different leaf paths."""
    items = _items(tree)
    paths = tuple(p for p, _ in items)
    if paths != treedef.paths:
        missing = sorted(map(_path_name, set(treedef.paths) - set(paths)))
        extra = sorted(map(_path_name, set(paths) - set(treedef.paths)))
        raise StructureError(f"tree structures differ: missing {missing or 'nothing'}, "
                             f"unexpected {extra or 'nothing'}")
    return [x for _, x in items]


def unflatten(treedef: Treedef, leaves: list) -> Tree:
    return _mapped(leaves.__getitem__, treedef.skeleton, ())


def flatten_with_paths(tree: Tree, prefix: str = "") -> dict[str, Any]:
    """Flat ``{"a.b.c": leaf}`` view of a nested dict; consumers look leaves up by path, so the
    dict's order (insertion order) never pairs anything."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, sub in tree.items():
            if not isinstance(key, str) or "." in key or not key:
                raise ValueError(f"pytree keys must be non-empty strings without '.', got {key!r}")
            flat.update(flatten_with_paths(sub, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def as_dicts(tree: Tree) -> Tree:
    """Named tuples turned into dicts of their fields, all the way down (a checkpoint's layout)."""
    if _is_namedtuple(tree):
        return {k: as_dicts(v) for k, v in tree._asdict().items()}
    if isinstance(tree, dict):
        return {k: as_dicts(v) for k, v in tree.items()}
    return tree


def fill(template: Tree, flat: dict[str, Any], prefix: str = "") -> Tree:
    """``template``'s structure (named tuples and empty dicts included) with each leaf taken from
    ``flat`` by its dotted path: the inverse of ``flatten_with_paths(as_dicts(template))``."""
    if _is_namedtuple(template):
        return type(template)(*(fill(v, flat, f"{prefix}{k}.") for k, v in template._asdict().items()))
    if isinstance(template, dict):
        return {k: fill(v, flat, f"{prefix}{k}.") for k, v in template.items()}
    return flat[prefix[:-1]]


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
    # _foreach_norm and calls back into Python for it (a cost per compiled grad step).
    norms = [torch.linalg.vector_norm(x.float()) for x in leaves(tree)]
    return torch.linalg.vector_norm(torch.stack(norms))


def is_floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def cast_floating(tree: Tree, dtype: torch.dtype) -> Tree:
    """Cast floating-point leaves to ``dtype``; ints, bools and non-tensors pass through untouched."""
    return tree_map(lambda x: x.to(dtype) if is_floating(x) and x.dtype != dtype else x, tree)
