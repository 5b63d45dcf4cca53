"""Whether two computations of the same PPO steps agree: leaf by leaf, each on its own scale.

One absolute tolerance for everything lets the largest number (a value loss, a big weight) set the
bar for all the rest, so a doubled learning rate or a dropped entropy term hides under it. Here
every quantity is measured against its own magnitude:

- params through their update: ``|(p1 - p0) - (q1 - p0)| / |p1 - p0|`` per leaf (L2 norms), so a
  step twice as long, or pointing elsewhere, counts in full however large the weights are;
- optimizer moments, the rollout carry and outputs (losses, log-probs, values), each leaf or
  output against its own norm;
- what must not differ at all, exactly: integer and boolean leaves (step counts, skip counts,
  random keys, episode counters) and the loss scale.

What a low precision's tolerance would hide (a dropped term, a trunk in the wrong dtype) the tests
check structurally (``tests/kernel/structural.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from kernel.tree import as_dicts, flatten_with_paths


class Tolerance(NamedTuple):
    """Relative tolerances: ``update`` for a parameter leaf's change, ``state`` for optimizer
    moments and the rollout carry, ``output`` for losses, log-probs and values."""

    update: float
    state: float
    output: float


# Compiled against eager, per compute dtype: a few times the largest gap measured on CartPole's MLP
# and seedbed's LSTM after a rollout segment and eight grad steps with both clips engaged
# (tests/kernel/compiled_vs_eager.py; CPU, torch 2.14.1), largest of the two envs:
#   fp32: update 2.7e-6, state 2.5e-6, output 1.1e-6
#   bf16: update 1.1e-2, state 3.8e-2, output 4.5e-3
#   fp16: update 5.5e-3, state 1.5e-3, output 6.8e-4
# Low precision's gaps come from rounding the trunk at other points (inductor keeps a fused chain in
# float32 and rounds once; eager rounds after every op). At bf16's size a dropped entropy term or an
# fp32 trunk can hide: the structural checks below catch those.
TOLERANCE = {
    "fp32": Tolerance(update=1e-5, state=1e-5, output=1e-5),
    "bf16": Tolerance(update=3e-2, state=1e-1, output=1e-2),
    "fp16": Tolerance(update=2e-2, state=1e-2, output=3e-3),
}
# Compiled against eager after several whole iterations (each rollout from params that already
# differ by rounding, a dozen grad steps): float32's gaps grow past its one-segment bound; the low
# precisions' bounds hold. Measured after 3 fused iterations (tests/kernel/test_fused.py): fp32
# update 7.3e-6, state 1.3e-5 (an Adam moment of CartPole's 2-element head bias), output 2.1e-7;
# fp16 1.1e-3, 1.6e-3, 1.4e-5; bf16 (seedbed) 2.1e-2, 5.0e-2, 4.1e-3; a compiled group of two runs
# after 2 iterations: fp32 update 1.05e-5.
AFTER_ITERATIONS = dict(TOLERANCE, fp32=Tolerance(update=3e-5, state=5e-5, output=3e-5))
# The run-time check at a switch (kernel.train.checked_update: each compiled stage call on the eager
# call's very inputs, a single Adam step measured as agree.leaf_gap's step_lr says, the rollout at
# its first acting step). Over default CartPole's whole run (every 20th update, float32;
# benchmarks/switch_check.py, results/switch_check.json) the largest gaps were update 8.7e-7 of a
# step, the rollout's 4.5e-7 (log-probs in nats, the rest against their own size), and state 2.9e-5:
# the value head's first moment, whose gradient sums value errors against returns near 100 that
# cancel. The wrong variants there fail by 3.3e-4 (value coefficient halved, late, seen only in the
# value head's moments) and more. Low precisions keep the one-segment bounds.
AT_SWITCH = dict(TOLERANCE, fp32=Tolerance(update=1e-5, state=1e-4, output=1e-5))
# How far a loss may sit from the sum of its terms: each is float32 whatever the compute dtype.


def relative_gap(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor | None = None,
                 forgiven: torch.Tensor | None = None, floor: float = 0.0) -> float:
    """``|got - want| / |scale|`` in float64 L2 norms (``scale`` defaults to ``want``); 0 when both
    sides are equal, inf when they differ and the scale is 0; inf for mismatched non-finite values.
    ``forgiven``: an elementwise difference that does not count (rounding of stored values);
    ``floor``: the least scale."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = want if scale is None else scale.detach().double().cpu()
    if not torch.equal(torch.isnan(got), torch.isnan(want)) or not torch.equal(torch.isinf(got), torch.isinf(want)):
        return math.inf
    finite = torch.isfinite(want)
    if not torch.equal(got[~finite], want[~finite]):
        return math.inf
    gaps = (got[finite] - want[finite]).abs()
    if forgiven is not None:
        gaps = (gaps - forgiven.detach().double().cpu()[finite]).clamp(min=0)
    diff = torch.linalg.vector_norm(gaps).item()
    if diff == 0.0:
        return 0.0
    norm = max(torch.linalg.vector_norm(scale[torch.isfinite(scale)]).item(), floor)
    return diff / norm if norm > 0 else math.inf


def exact(x: torch.Tensor) -> bool:
    """Leaves that must match bit for bit: integers and booleans."""
    return not x.is_floating_point()


def state_disagreements(want, got, start, tol: Tolerance, exact_paths: tuple = ("loss_scale", "rng", "step"),
                        step_lr: float | None = None) -> list:
    """Each leaf of two training states (``want`` the reference) that differs beyond ``tol``, as
    one line. ``start`` is the state both began from: parameter leaves compare by their update.
    Paths that begin with one of ``exact_paths`` must be equal. ``step_lr``: the states are one
    Adam step apart, taken at this learning rate (see :func:`leaf_gap`)."""
    flat_want, flat_got = flatten_with_paths(as_dicts(want)), flatten_with_paths(as_dicts(got))
    if flat_want.keys() != flat_got.keys():
        return [f"leaves differ: {sorted(set(flat_want) ^ set(flat_got))}"]
    flat_start = flatten_with_paths(as_dicts(start)) if start is not None else {}
    if step_lr is not None:
        flat_start = dict(flat_start, **moment_scales(flat_want))
    problems = []
    for path, w in flat_want.items():
        g = flat_got[path]
        if g.shape != w.shape or g.dtype != w.dtype:
            problems.append(f"{path}: {tuple(g.shape)} {g.dtype} where {tuple(w.shape)} {w.dtype} was expected")
        elif exact(w) or path.startswith(exact_paths):
            if not torch.equal(g.cpu(), w.cpu()):
                problems.append(f"{path}: must be equal, differs in {int((g.cpu() != w.cpu()).sum())} element(s)")
        else:
            kind, gap = leaf_gap(path, w, g, flat_start, step_lr)
            if kind == "update" and gap > tol.update:
                problems.append(f"{path}: update differs by {gap:.2e} of its size (allowed {tol.update:.0e})")
            elif kind == "state" and gap > tol.state:
                problems.append(f"{path}: differs by {gap:.2e} of its size (allowed {tol.state:.0e})")
    return problems


def leaf_gap(path: str, want: torch.Tensor, got: torch.Tensor, flat_start: dict, step_lr: float | None = None
             ) -> tuple[str, float]:
    """``("update", gap)`` for a parameter leaf (its change from ``flat_start[path]`` against the
    reference's change), ``("state", gap)`` for any other floating-point leaf (on its own scale, or
    on ``flat_start[SCALE + path]``).

    ``step_lr``: the two are one Adam step from ``flat_start``, at this learning rate. One step
    moves a weight by a few thousandths of itself, so a last-bit difference in the stored weight
    is already 1e-4 of the step: one rounding of each stored weight does not count. And where the
    momentum nearly cancels, the step is short and float32 rounding of this step's gradient is a
    large share of it: the update is measured against at least a full Adam step (``step_lr`` per
    element). A wrong gradient still counts: a tenth of it enters the momentum."""
    if path.startswith("params.") and path in flat_start:
        p0 = flat_start[path].double()
        forgiven = torch.finfo(want.dtype).eps * want.detach().double().abs() if step_lr is not None else None
        floor = step_lr * want.numel() ** 0.5 if step_lr is not None else 0.0
        return "update", relative_gap(got.double() - p0, want.double() - p0, forgiven=forgiven, floor=floor)
    return "state", relative_gap(got, want, flat_start.get(SCALE + path))


SCALE = "scale of "  # a key of flat_start: the scale a state leaf is measured against


def moment_scales(flat: dict) -> dict:
    """Adam's first moment (``...adam.mu.X``) against the root of its second (``...adam.nu.X``):
    a moment that swings through zero has no size of its own (a 2-logit bias's gradient sums
    terms that cancel), while the gradient's RMS is what its float32 rounding scales with."""
    return {SCALE + path: flat[nu].sqrt() for path in flat if ".mu." in path
            and (nu := path.replace(".mu.", ".nu.", 1)) in flat and flat[nu].shape == flat[path].shape}


def largest_gaps(want, got, start, step_lr: float | None = None) -> dict:
    """The largest relative gap among the floating-point leaves of two training states, as
    ``{"update": [gap, path], "state": [gap, path]}``, each leaf measured as :func:`leaf_gap` (and
    :func:`state_disagreements`) measures it."""
    flat_want, flat_got = flatten_with_paths(as_dicts(want)), flatten_with_paths(as_dicts(got))
    flat_start = flatten_with_paths(as_dicts(start))
    if step_lr is not None:
        flat_start = dict(flat_start, **moment_scales(flat_want))
    largest = {"update": [0.0, None], "state": [0.0, None]}
    for path, w in flat_want.items():
        g = flat_got.get(path)
        if g is None or exact(w) or g.shape != w.shape:
            continue
        kind, gap = leaf_gap(path, w, g, flat_start, step_lr)
        if gap > largest[kind][0]:
            largest[kind] = [gap, path]
    return largest


def output_disagreements(want: dict, got: dict, tol: Tolerance, scales: dict | None = None) -> list:
    """Each named output (a loss, log-probs, values: tensors) that differs from ``want``'s by more
    than ``tol.output`` of its own size (or of ``scales[name]``, for an output whose value can sit
    near 0 while its terms do not); integer outputs (counts) must be equal."""
    scales = scales or {}
    problems = [f"{name}: missing" for name in want if name not in got]
    for name, w in want.items():
        if name not in got:
            continue
        g = got[name]
        if exact(w):
            if not torch.equal(g.cpu(), w.cpu()):
                problems.append(f"{name}: must be equal")
            continue
        gap = relative_gap(g, w, scales.get(name))
        if gap > tol.output:
            problems.append(f"{name}: differs by {gap:.2e} of its size (allowed {tol.output:.0e})")
    return problems
