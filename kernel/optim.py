"""Optax-style optimizer pieces: each is an ``init(params) -> state`` / ``update(updates, state,
params) -> (updates, state)`` pair over pytrees, composed with :func:`chain`.

State is plain data (dicts of tensors), so it is checkpointed by path like params. Step counts are
0-d tensors and schedules are tensor functions of them: a learning-rate schedule changes values,
never the compiled graph. Leaf-wise maths uses ``torch._foreach_*`` (one fused kernel per op in
eager mode, one graph under ``torch.compile``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Union

import torch

from kernel.eager import on_host
from kernel.tree import Tree, flatten, global_norm, leaves, leaves_like, tree_map, unflatten

Schedule = Callable[[torch.Tensor], torch.Tensor]
ScalarOrSchedule = Union[float, Schedule]  # noqa: UP007 (a runtime alias: py3.10 needs Union)


class GradientTransformation(NamedTuple):
    """``update(updates, state, params=None, **hyper)``: ``hyper`` carries per-call tensors (e.g.
    ``lr``) through :func:`chain`; a transform ignores the names it does not use."""

    init: Callable[[Tree], Tree]
    update: Callable[..., tuple]
    name: str


def clip_by_global_norm(max_norm: float | None, foreach: bool = True) -> GradientTransformation:
    """Scale updates so their global L2 norm is at most ``max_norm`` (``clip_grad_norm_`` maths);
    ``None`` reads a tensor ``max_grad_norm`` passed to ``update`` (a value that differs per run).
    ``foreach=False``: leaf by leaf (see :func:`scale_by_adam`)."""

    def init(params):
        return {}

    def update(updates, state, params=None, **hyper):
        max_norm_now = hyper["max_grad_norm"] if max_norm is None else max_norm
        norm = global_norm(updates)
        # Same formula as torch.nn.utils.clip_grad_norm_, so runs compare one to one.
        scale = torch.clamp(max_norm_now / (norm + 1e-6), max=1.0)
        return scaled(updates, scale, foreach), state

    return GradientTransformation(init, update, "clip")


def scaled(tree: Tree, factor: torch.Tensor, foreach: bool = True) -> Tree:
    """Every leaf times the 0-d ``factor`` (cast to the leaf's dtype): one foreach op when the leaves
    share a dtype (eagerly a per-leaf multiply costs more in dispatch than in maths)."""
    g, spec = flatten(tree)
    if foreach and g and all(x.dtype == g[0].dtype for x in g):
        return unflatten(spec, torch._foreach_mul(g, factor.to(g[0].dtype)))
    return unflatten(spec, [x * factor.to(x.dtype) for x in g])


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  foreach: bool = True) -> GradientTransformation:
    """Adam's moment estimates and bias correction, arranged exactly as ``torch.optim.Adam``.

    ``foreach=False`` does the same maths leaf by leaf: ``torch.func.vmap`` has no batching rules
    for ``torch._foreach_*`` (many runs at once need it); compiled, both become the same kernels."""

    def init(params):
        return {
            "count": torch.zeros((), dtype=torch.int64),
            "mu": tree_map(torch.zeros_like, params),
            "nu": tree_map(torch.zeros_like, params),
        }

    def update(updates, state, params=None, **hyper):
        count = state["count"] + 1
        # Moments pair with gradients by path (leaves_like raises on other keys), never by dict order.
        g, spec = flatten(updates)
        mu, nu = leaves_like(state["mu"], spec), leaves_like(state["nu"], spec)
        step = count.to(torch.float32)
        bias1 = 1.0 - torch.pow(torch.tensor(b1), step)
        bias2_sqrt = torch.sqrt(1.0 - torch.pow(torch.tensor(b2), step))
        if foreach:
            mu = torch._foreach_lerp(mu, g, 1.0 - b1)
            nu = torch._foreach_mul(nu, b2)
            torch._foreach_addcmul_(nu, g, g, value=1.0 - b2)
            denom = torch._foreach_sqrt(nu)
            torch._foreach_div_(denom, bias2_sqrt)
            torch._foreach_add_(denom, eps)
            out = torch._foreach_div(mu, denom)
            torch._foreach_div_(out, bias1)
        else:
            mu = [torch.lerp(m, x, 1.0 - b1) for m, x in zip(mu, g)]
            nu = [torch.addcmul(v * b2, x, x, value=1.0 - b2) for v, x in zip(nu, g)]
            out = [m / (torch.sqrt(v) / bias2_sqrt + eps) / bias1 for m, v in zip(mu, nu)]
        new_state = {
            "count": count,
            "mu": unflatten(spec, mu),
            "nu": unflatten(spec, nu),
        }
        return unflatten(spec, out), new_state

    return GradientTransformation(init, update, "adam")


def scale_by_learning_rate(learning_rate: ScalarOrSchedule | None, foreach: bool = True) -> GradientTransformation:
    """Multiply by ``-learning_rate``: a float, a schedule evaluated on this transform's step
    count, or ``None`` to read a tensor ``lr`` passed to ``update`` (the driver computes it, so a
    compiled step does not bake the schedule's constants into its graph). ``foreach=False``: leaf
    by leaf (see :func:`scale_by_adam`)."""

    def init(params):
        return {"count": torch.zeros((), dtype=torch.int64)} if callable(learning_rate) else {}

    def update(updates, state, params=None, **hyper):
        if learning_rate is None:
            lr = hyper["lr"]
        elif callable(learning_rate):
            lr = learning_rate(state["count"])
            state = {"count": state["count"] + 1}
        else:
            lr = torch.tensor(learning_rate)
        return scaled(updates, -lr, foreach), state

    return GradientTransformation(init, update, "lr")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    names = [t.name for t in transforms]
    if len(set(names)) != len(names):
        raise ValueError(f"chain needs distinct transform names, got {names}")

    def init(params):
        return {t.name: t.init(params) for t in transforms}

    def update(updates, state, params=None, **hyper):
        new_state = {}
        for t in transforms:
            updates, new_state[t.name] = t.update(updates, state[t.name], params, **hyper)
        return updates, new_state

    return GradientTransformation(init, update, "chain")


def adam(learning_rate: ScalarOrSchedule | None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         max_grad_norm: float | None = None, foreach: bool = True) -> GradientTransformation:
    """Adam with optional global-norm clipping first, as CleanRL and PureJaxRL configure PPO."""
    parts = [clip_by_global_norm(max_grad_norm, foreach)] if max_grad_norm is not None else []
    return chain(*parts, scale_by_adam(b1, b2, eps, foreach), scale_by_learning_rate(learning_rate, foreach))


def apply_if_finite(inner: GradientTransformation) -> GradientTransformation:
    """Skip a step whose gradients are not finite, as optax's ``apply_if_finite`` does: the updates
    become zeros and ``inner``'s state stays as it was, so params and optimizer state come out of
    the step unchanged. The state counts skipped steps (``total_notfinite``) and the current run of
    them (``notfinite_count``); the training loop decides when a run of skips means stop.

    ``update(..., finite=flag)`` takes the caller's verdict instead (e.g. gradients *and* the loss
    finite); without it the gradients are checked here.
    """

    def init(params):
        zero = torch.zeros((), dtype=torch.int64)
        return {"inner": inner.init(params), "notfinite_count": zero, "total_notfinite": zero.clone(),
                "last_finite": torch.ones((), dtype=torch.bool)}

    def update(updates, state, params=None, finite=None, **hyper):
        if finite is None:
            finite = torch.stack([torch.isfinite(x).all() for x in leaves(updates)]).all()
        new_updates, new_inner = inner.update(updates, state["inner"], params, **hyper)
        kept = where_flag(finite, new_inner, state["inner"])
        zeros = where_flag(finite, new_updates, None)
        bad = (~finite).long()
        return zeros, {
            "inner": kept,
            "notfinite_count": (state["notfinite_count"] + 1) * bad,
            "total_notfinite": state["total_notfinite"] + bad,
            "last_finite": finite,
        }

    return GradientTransformation(init, update, "apply_if_finite")


def where_flag(flag: torch.Tensor, new: Tree, old: Tree | None) -> Tree:
    """``new`` where the 0-d bool ``flag`` holds, else ``old`` (zeros like ``new`` for ``None``),
    leaf by leaf. An eager CPU flag outside any ``torch.func`` transform is read on the host (free
    there) and picks a whole tree: eagerly two ``torch.where`` per leaf would cost more than the
    step's maths. Compiled, batched by ``vmap``, or on an accelerator, it is a ``torch.where``
    per leaf, with no host sync."""
    if on_host(flag):
        if bool(flag):
            return new
        return tree_map(torch.zeros_like, new) if old is None else old
    if old is None:
        return tree_map(lambda n: torch.where(flag, n, torch.zeros_like(n)), new)
    return tree_map(lambda n, o: torch.where(flag, n, o), new, old)


def skipped_steps(opt_state: Tree) -> torch.Tensor:
    """Steps :func:`apply_if_finite` skipped so far (0-d tensor)."""
    return opt_state["total_notfinite"]


def consecutive_skips(opt_state: Tree) -> torch.Tensor:
    """Steps :func:`apply_if_finite` skipped since the last finite one (0-d tensor)."""
    return opt_state["notfinite_count"]


def apply_updates(params: Tree, updates: Tree, foreach: bool = True) -> Tree:
    p, spec = flatten(params)
    u = [x.to(y.dtype) for x, y in zip(leaves_like(updates, spec), p)]
    return unflatten(spec, torch._foreach_add(p, u) if foreach else [a + b for a, b in zip(p, u)])


def linear_schedule(init_value: float, end_value: float, transition_steps: int, every: int = 1) -> Schedule:
    """Linear from ``init_value`` to ``end_value`` over ``transition_steps`` periods of ``every``
    optimizer steps; ``every`` = steps per PPO update anneals once per update as CleanRL does."""

    def schedule(count: torch.Tensor) -> torch.Tensor:
        period = torch.div(count, every, rounding_mode="floor").to(torch.float32)
        frac = torch.clamp(period / transition_steps, 0.0, 1.0)
        return init_value + frac * (end_value - init_value)

    return schedule
