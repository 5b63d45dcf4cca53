"""Pure per-group gradient statistics and a JSONL writer.

Groups default to the params' top-level entries with each action head on its own
(``trunk``, ``heads.op``, ``heads.slot``, ``value``); any path prefix can be a group. Statistics
are tensors computed inside the compiled step; they reach the host only when rendered or logged.
``torch.func.grad`` returns zeros (never ``None``) for params off the graph, so a head that no
gradient reached shows up as an all-zero group instead of silently vanishing.
"""
from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path
from typing import NamedTuple

import torch

from kernel.eager import on_host
from kernel.jsonsafe import dumps, finite_or_none
from kernel.tree import flatten_with_paths, norm_of

STATS = ("norm", "max_abs", "nan", "inf", "zero_frac", "update_ratio")  # plus "relevant" for factored heads
# How per-minibatch values combine into one per update.
REDUCE = {"nan": "sum", "inf": "sum", "max_abs": "max"}


def default_groups(params: dict) -> tuple:
    groups = []
    for key, sub in params.items():
        if key == "heads" and isinstance(sub, dict):
            groups.extend(f"heads.{h}" for h in sub)
        else:
            groups.append(key)
    return tuple(groups)


def group_of(path: str, groups) -> str | None:
    """Longest group that is ``path`` or a dotted prefix of it."""
    best = None
    for g in groups:
        if (path == g or path.startswith(g + ".")) and (best is None or len(g) > len(best)):
            best = g
    return best


def grad_stats(grads: dict, params: dict, updates: dict, groups) -> dict:
    """``{"grad/<group>/<stat>": 0-d tensor}`` for every group (flat keys: easy to reduce and log)."""
    g_flat, p_flat, u_flat = flatten_with_paths(grads), flatten_with_paths(params), flatten_with_paths(updates)
    # (traced: the plain function; dynamo would warn that it ignores the cache)
    layout = grouped_paths.__wrapped__ if torch.compiler.is_compiling() else grouped_paths
    members = layout(tuple(g_flat), tuple(groups))
    eagerly = finite_stats_from_leaf_norms(g_flat, p_flat, u_flat, members)
    if eagerly is not None:
        return eagerly
    out = {}
    for group, paths in members.items():
        g = torch.cat([g_flat[p].reshape(-1).float() for p in paths])
        prefix = f"grad/{group}/"
        out[prefix + "norm"] = torch.linalg.vector_norm(g)
        out[prefix + "max_abs"] = g.abs().max()
        out[prefix + "nan"] = torch.isnan(g).sum().float()
        out[prefix + "inf"] = torch.isinf(g).sum().float()
        out[prefix + "zero_frac"] = (g == 0).float().mean()
        update_norm, param_norm = norm_of([u_flat[q] for q in paths]), norm_of([p_flat[q] for q in paths])
        out[prefix + "update_ratio"] = update_norm / (param_norm + 1e-12)
    return out


@functools.lru_cache(maxsize=64)
def grouped_paths(paths: tuple, groups: tuple) -> dict:
    """``{group: its leaf paths}`` for the groups any path falls in (cached: the same layout comes
    back every step)."""
    members: dict = {g: [] for g in groups}
    for path in paths:
        group = group_of(path, groups)
        if group is not None:
            members[group].append(path)
    return {group: tuple(found) for group, found in members.items() if found}


def finite_stats_from_leaf_norms(g_flat: dict, p_flat: dict, u_flat: dict, members: dict) -> dict | None:
    """The same statistics from per-leaf norms, eagerly on the CPU, when all of them are finite
    (``None`` otherwise, and when traced, off the CPU or not all float32).

    A group's L2 norm is the norm of its leaves' norms, its largest ``|x|`` the largest of theirs,
    and its zeros its size less its nonzeros (the L0 norm): one foreach norm per kind and leaf
    list, and one product with the leaf-to-group matrix, cost a handful of ops where the
    concatenated form costs some twenty per group. Finite gradients hold no NaN or Inf to count;
    anything non-finite (a NaN, or a square past float32's range) is left to the concatenated
    form, which counts it."""
    paths = [q for group in members.values() for q in group]
    g, u, p = ([flat[q] for q in paths] for flat in (g_flat, u_flat, p_flat))
    if not g or not on_host(g[0]) or any(x.dtype != torch.float32 for x in (*g, *u, *p)):
        return None
    layout = leaf_layout(tuple(members.items()), tuple(x.numel() for x in g))
    each = torch.stack([*torch._foreach_norm(g), *torch._foreach_norm(u), *torch._foreach_norm(p),
                        *torch._foreach_norm(g, 0), *torch._foreach_norm(g, math.inf)]).view(5, len(paths))
    summed = torch.cat([each[:3] * each[:3], each[3:4]]) @ layout.member_t  # squares of g, u, p; nonzeros
    norm, update_norm, param_norm = summed[:3].sqrt()
    table = torch.stack([norm, (each[4] * layout.member).amax(1), layout.none, layout.none,
                         1.0 - summed[3] / layout.sizes, update_norm / (param_norm + 1e-12)], dim=1)
    if not bool(torch.isfinite(table).all()):
        return None
    return dict(zip(layout.names, table.reshape(-1).unbind(0)))


class LeafLayout(NamedTuple):
    member: torch.Tensor  # [groups, leaves], 1.0 where the leaf is in the group
    member_t: torch.Tensor
    sizes: torch.Tensor  # [groups] elements per group
    none: torch.Tensor  # [groups] zeros: the NaN and Inf counts of finite gradients
    names: tuple  # the output keys, group by group, in STATS order


@functools.lru_cache(maxsize=64)
def leaf_layout(members: tuple, numels: tuple) -> LeafLayout:
    paths = [q for _, group in members for q in group]
    member = torch.tensor([[float(q in group) for q in paths] for _, group in members])
    sizes = member @ torch.tensor(numels, dtype=torch.float32)
    names = tuple(f"grad/{group}/{stat}" for group, _ in members for stat in STATS)
    return LeafLayout(member, member.T.contiguous(), sizes, torch.zeros(len(members)), names)


def reduce_metrics(history: list | dict) -> dict:
    """Combine per-minibatch metrics, a list of dicts or one dict of ``[steps, ...]`` stacks:
    counts add up, maxima take the max, the rest average."""
    keys = list(history if isinstance(history, dict) else history[0])
    if isinstance(history, dict):
        table = torch.stack([history[k] for k in keys], dim=1).float()
    else:
        shape = history[0][keys[0]].shape  # () for one run, (runs,) for a group
        # One [steps, keys, ...] table (a single stack) and three reductions, instead of a stack and
        # a reduction per key: at 16 minibatches x ~25 metrics the per-op cost is what counts.
        table = torch.stack([m[k] for m in history for k in keys]).float().view(len(history), len(keys), *shape)
    how = [REDUCE.get(k.rsplit("/", 1)[-1], "sum" if k == "skipped" else "mean") for k in keys]
    per_key = (len(keys),) + (1,) * (table.dim() - 2)
    is_sum = torch.tensor([h == "sum" for h in how], device=table.device).view(per_key)
    is_max = torch.tensor([h == "max" for h in how], device=table.device).view(per_key)
    reduced = torch.where(is_sum, table.sum(0), torch.where(is_max, table.amax(0), table.mean(0)))
    return dict(zip(keys, reduced.unbind(0)))


def group_table(metrics: dict) -> dict:
    """Host view: ``{group: {stat: float}}`` from flat ``grad/...`` metrics (one host sync)."""
    keys = [k for k in metrics if k.startswith("grad/")]
    values = torch.stack([torch.as_tensor(metrics[k]).float() for k in keys]).tolist() if keys else []
    table: dict = {}
    for key, value in zip(keys, values):
        _, group, stat = key.split("/")
        table.setdefault(group, {})[stat] = value
    return table


def jsonable(x):
    """Tensors as Python numbers and non-finite floats as None (null: :mod:`kernel.jsonsafe`)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        x = x.item()
    return finite_or_none(x)


class JsonlWriter:
    """Appends one JSON object per line; flushed each line so a crash loses at most one record."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._f.write(dumps(jsonable(record), sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# Magnitude classes compare a group's gradient norm (before clipping) with a reference norm of the
# same group: its running median over recent updates while training, the fp32 gradient of the same
# batch in `fkernel grads`. Absolute bands would mean little: a value head's gradient scales with
# the returns, a trunk's with its width. Ratio to the reference, low to high: below VANISHING is
# vanishing, below SMALL small, up to LARGE healthy, up to VERY_LARGE large, beyond that very large.
VANISHING, SMALL, LARGE, VERY_LARGE = 0.01, 0.2, 5.0, 20.0
STATUSES = ("non-finite", "not relevant", "forced", "dead", "vanishing", "small", "healthy", "large", "very large",
            "finite")


def classify(stats: dict, reference: float | None = None) -> str:
    """One word per group, first match wins:

    - ``non-finite``: a NaN or Inf in the gradient;
    - ``not relevant``: a head with no step where it mattered (``relevant == 0``): no gradient expected;
    - ``forced``: a head that mattered, but every such step had one valid action
      (``decisions == 0``): its log-prob is 0, so no gradient is expected either;
    - ``dead``: real decisions (or a group that is not a head) and still an all-zero gradient: an alarm;
    - ``vanishing`` / ``small`` / ``healthy`` / ``large`` / ``very large``: the norm against
      ``reference`` (see the bands above);
    - ``finite``: no reference norm yet (the first updates of a run).
    """
    norm = stats.get("norm", float("nan"))
    if stats.get("nan", 0) > 0 or stats.get("inf", 0) > 0 or not math.isfinite(norm):
        return "non-finite"
    if stats.get("relevant", 1.0) == 0:
        return "not relevant"
    if stats.get("decisions", 1.0) == 0:
        return "forced"
    if stats.get("zero_frac", 0.0) >= 1.0:
        return "dead"
    if reference is None or not math.isfinite(reference) or reference <= 0:
        return "finite"
    ratio = norm / reference
    if ratio < VANISHING:
        return "vanishing"
    if ratio < SMALL:
        return "small"
    if ratio <= LARGE:
        return "healthy"
    return "large" if ratio <= VERY_LARGE else "very large"


class NormHistory:
    """Each group's recent gradient norms; :meth:`statuses` classifies an update's groups against
    the running median of the updates before it (after ``min_updates`` of them), then records it."""

    def __init__(self, window: int = 50, min_updates: int = 5):
        self.window, self.min_updates = window, min_updates
        self.norms: dict = {}

    def reference(self, group: str) -> float | None:
        seen = self.norms.get(group, [])
        return statistics.median(seen) if len(seen) >= self.min_updates else None

    def statuses(self, groups: dict) -> dict:
        out = {g: classify(stats, self.reference(g)) for g, stats in groups.items()}
        for g, stats in groups.items():
            norm = stats.get("norm", float("nan"))
            if out[g] not in ("non-finite", "not relevant", "forced", "dead") and math.isfinite(norm):
                self.norms[g] = (self.norms.get(g, []) + [norm])[-self.window:]
        return out
