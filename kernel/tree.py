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

from kernel.eager import plain

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


def _mapped_one(fn: Callable, tree: Tree) -> Tree:
    """:func:`_mapped` of a single tree (nothing to pair or check): the leaf case first, as most
    nodes are leaves and eager code walks params several times a step."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _mapped_one(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [_mapped_one(fn, v) for v in tree])
    return None if tree is None else fn(tree)


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf-wise over one or more trees, pairing leaves by path (not by dict order)."""
    if not rest:
        return _mapped_one(fn, tree)
    try:
        return _mapped(fn, tree, rest)
    except _Mismatch:
        map_with_path(lambda *_: None, tree, *rest)  # raises the StructureError that names the path
        raise


def _items(tree: Tree) -> list[tuple]:
    """``(path, leaf)`` in canonical order: dict keys sorted, sequences in index order."""
    out: list = []
    skeleton = _skeleton(tree, out)
    return list(zip(_paths(skeleton), out))


def _skeleton(tree: Tree, out: list) -> Tree:
    """``tree`` with each leaf replaced by its index in the canonical order (dicts keep their own
    key order), appending the leaf to ``out`` in that order. No paths are built: this walk runs
    several times per eager optimizer step, and paths are read off the skeleton when needed."""
    if isinstance(tree, torch.Tensor):
        out.append(tree)
        return len(out) - 1
    if isinstance(tree, dict):
        own, canonical = list(tree), sorted(tree)
        indexed = {k: _skeleton(tree[k], out) for k in canonical}
        return indexed if own == canonical else {k: indexed[k] for k in own}
    if isinstance(tree, (list, tuple)):
        return _rebuild(tree, [_skeleton(v, out) for v in tree])
    if tree is None:
        return None
    out.append(tree)
    return len(out) - 1


def _paths(skeleton: Tree) -> tuple:
    """The leaf paths of a skeleton, in its canonical (index) order."""
    found = map_with_path(lambda path, index: (index, path), skeleton)
    return tuple(path for _, path in sorted(_collected(found, [], pairs=True)))


def _collected(tree: Tree, out: list, pairs: bool = False) -> list:
    """Leaves appended to ``out`` in canonical order (``pairs``: the ``(index, path)`` tuples that
    :func:`_paths` maps a skeleton to count as leaves)."""
    if isinstance(tree, torch.Tensor) or (pairs and isinstance(tree, tuple)):
        out.append(tree)
    elif isinstance(tree, dict):
        for k in sorted(tree):
            _collected(tree[k], out, pairs)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _collected(v, out, pairs)
    elif tree is not None:
        out.append(tree)
    return out


def leaves(tree: Tree) -> list:
    """Leaves in canonical (sorted-key) order: the same list whatever the dicts' insertion order."""
    return _collected(tree, [])


class Treedef(NamedTuple):
    """What :func:`unflatten` needs: the tree's skeleton (leaves replaced by their index in the
    canonical order, dicts in their own key order)."""

    skeleton: Tree

    @property
    def paths(self) -> tuple:
        """The canonical list of leaf paths."""
        return _paths(self.skeleton)


def flatten(tree: Tree) -> tuple[list, Treedef]:
    """``(leaves, treedef)`` with leaves in canonical order; :func:`unflatten` inverts it."""
    out: list = []
    skeleton = _skeleton(tree, out)
    return out, Treedef(skeleton)


def leaves_like(tree: Tree, treedef: Treedef) -> list:
    """Leaves of ``tree`` in ``treedef``'s canonical order, so they pair by path with the leaves
    ``treedef`` came from; :class:`StructureError` if the two trees have different leaf paths."""
    out: list = []
    skeleton = _skeleton(tree, out)
    # Equal skeletons (dicts compare by key set) mean equal paths; unequal ones may still have
    # them (a list where the other has a tuple), so only the paths decide a mismatch.
    if skeleton != treedef.skeleton:
        paths, wanted = _paths(skeleton), treedef.paths
        if paths != wanted:
            missing = sorted(map(_path_name, set(wanted) - set(paths)))
            extra = sorted(map(_path_name, set(paths) - set(wanted)))
            raise StructureError(f"tree structures differ: missing {missing or 'nothing'}, "
                                 f"unexpected {extra or 'nothing'}")
    return out


def unflatten(treedef: Treedef, leaves: list) -> Tree:
    return _filled(treedef.skeleton, leaves)


def _filled(skeleton: Tree, leaves: list) -> Tree:
    if isinstance(skeleton, dict):
        return {k: _filled(v, leaves) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return _rebuild(skeleton, [_filled(v, leaves) for v in skeleton])
    return None if skeleton is None else leaves[skeleton]


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
    return norm_of(leaves(tree))


def norm_of(xs: list) -> torch.Tensor:
    """L2 norm over the tensors ``xs`` together, in float32: the norm of their per-tensor norms."""
    xs = [x.float() for x in xs]
    if xs and plain(xs[0]):
        # Eagerly one foreach op (on CPU it computes each norm as vector_norm does). Traced,
        # per-tensor norms: inductor's C++ wrapper has no native shim for _foreach_norm and calls
        # back into Python for it (a cost per compiled grad step).
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(xs)))
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in xs]))


def is_floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def cast_floating(tree: Tree, dtype: torch.dtype) -> Tree:
    """Cast floating-point leaves to ``dtype``; ints, bools and non-tensors pass through untouched.
    ``tree`` itself when no leaf needs it (a float32 policy casts nothing on every eager step)."""
    if not _needs_cast(tree, dtype):
        return tree
    return tree_map(lambda x: x.to(dtype) if is_floating(x) and x.dtype != dtype else x, tree)


def _needs_cast(tree: Tree, dtype: torch.dtype) -> bool:
    if isinstance(tree, torch.Tensor):
        return tree.dtype != dtype and tree.is_floating_point()
    nodes = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    for node in nodes:
        if _needs_cast(node, dtype):
            return True
    return False
