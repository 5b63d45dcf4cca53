"""What eager code may do that a traced graph may not, to make small eager ops cheap.

At RL sizes an eager op costs its dispatch, not its maths, so the eager tier (what runs while the
compiled functions are built, and what users debug with) counts ops. What helps is only sound on
plain eager tensors: reading a 0-d flag on the host to pick a whole result instead of a
``torch.where`` per leaf; multiplying by a ready-made 0-d tensor instead of a Python float (torch
wraps one into a fresh tensor on every call, which can cost more than the op); foreach ops that
a traced graph has no native kernel for; acting under ``torch.inference_mode``. A traced graph,
or a ``torch.func`` transform, gets the plain forms: the same values.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree


def in_transform(x: torch.Tensor) -> bool:
    """``x`` is wrapped by a ``torch.func`` transform (vmap, grad)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def plain(x: torch.Tensor) -> bool:
    """``x`` is an eager tensor outside any ``torch.func`` transform (not being traced)."""
    return not torch.compiler.is_compiling() and not in_transform(x)


def on_host(x: torch.Tensor) -> bool:
    """``x``'s value can steer Python for free: a plain eager CPU tensor (no device sync)."""
    return x.device.type == "cpu" and plain(x)


_CONSTANTS: dict = {}


def constants(values: dict, like: torch.Tensor) -> dict:
    """``values`` (name -> Python number) as 0-d tensors of ``like``'s dtype and device, made once
    per dict (which must not change afterwards), dtype and device; while tracing, the numbers
    themselves (constants in the graph).
    An op with a 0-d tensor of the operand's dtype rounds exactly as it does with the number."""
    if not plain(like):
        return values
    key = (id(values), like.dtype, like.device)
    found = _CONSTANTS.get(key)
    if found is None:  # the cache holds ``values`` too, so its id is never reused for another dict
        made = {k: torch.tensor(v, dtype=like.dtype, device=like.device) for k, v in values.items()}
        found = _CONSTANTS[key] = (values, made)
    return found[1]


def inference(fn):
    """``fn`` run under ``torch.inference_mode`` (no version counters or autograd bookkeeping on
    each op of an eager acting step), its tensor outputs copied out as ordinary tensors, so later
    code may differentiate through them or change them in place. For eager code only: a compiled
    function guards on the mode it was traced in."""

    def run(*args):
        with torch.inference_mode():
            out = fn(*args)
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) and x.is_inference() else x, out)

    return run
