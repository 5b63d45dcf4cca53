"""Explicit mixed precision, in the spirit of DeepMind's jmp: a small immutable policy plus pure
cast transforms; no autocast region anywhere.

Why explicit casts: autocast keeps a hidden cache of low-precision weight copies for the length of
its region. In a training loop where a ``no_grad`` telemetry forward ran first, that forward
filled the cache, the training forward reused the copies (which have no autograd link), and every Linear
in the action heads got ``grad=None``. A cast here is an ordinary differentiable op on the tensor it
is given: no cache, no region, gradients always flow back into the float32 master weights.

The head path is float32 by construction: trunk features are cast up before the heads, so logits,
masking, log-softmax, log-prob, entropy, value and loss never see a low-precision tensor.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernel.tree import Tree, cast_floating

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16, "half": torch.float16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Precision:
    """``param_dtype``: master weights and optimizer state; ``compute_dtype``: trunk matmuls;
    ``head_dtype``: always float32 (logits, log-probs, value, loss)."""

    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    head_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.head_dtype != torch.float32:
            raise ValueError(f"the head path is float32 by contract; got head dtype {self.head_dtype}")
        if self.param_dtype != torch.float32:
            raise ValueError(f"master weights must be float32 (optimizer maths needs it); got {self.param_dtype}")
        if self.compute_dtype not in SHORT_NAMES:
            raise ValueError(f"compute dtype must be float32, bfloat16 or float16; got {self.compute_dtype}")

    def cast_to_compute(self, tree: Tree) -> Tree:
        return cast_floating(tree, self.compute_dtype)

    def cast_to_param(self, tree: Tree) -> Tree:
        return cast_floating(tree, self.param_dtype)

    def cast_to_output(self, tree: Tree) -> Tree:
        return cast_floating(tree, self.head_dtype)

    @property
    def needs_loss_scale(self) -> bool:
        """float16's narrow exponent range underflows small gradients; bfloat16 has float32's."""
        return self.compute_dtype == torch.float16

    @property
    def name(self) -> str:
        short = SHORT_NAMES[self.compute_dtype]
        if short in PRESETS and self == PRESETS[short]:
            return short
        dtype_name = lambda d: str(d).removeprefix("torch.")
        return f"params={dtype_name(self.param_dtype)},compute={dtype_name(self.compute_dtype)}"

    def __str__(self) -> str:
        return self.name


PRESETS = {
    "fp32": Precision(),
    "bf16": Precision(compute_dtype=torch.bfloat16),
    "fp16": Precision(compute_dtype=torch.float16),
}


def parse(spec: str | Precision) -> Precision:
    """``"fp32" | "bf16" | "fp16"`` or jmp-style ``"params=float32,compute=bfloat16[,output=float32]"``."""
    if isinstance(spec, Precision):
        return spec
    text = spec.strip().lower()
    if text in PRESETS:
        return PRESETS[text]
    fields = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("params", "compute", "output"):
            raise ValueError(f"bad precision {spec!r}: use fp32, bf16, fp16 or 'params=float32,compute=bfloat16'")
        if value not in DTYPES:
            raise ValueError(f"bad precision {spec!r}: unknown dtype {value!r}")
        fields[key] = DTYPES[value]
    return Precision(param_dtype=fields.get("params", torch.float32),
                     compute_dtype=fields.get("compute", torch.float32),
                     head_dtype=fields.get("output", torch.float32))


def cast(tree: Tree, dtype: torch.dtype) -> Tree:
    """Cast floating leaves of ``tree``; integer and bool leaves (actions, masks) pass through."""
    return cast_floating(tree, dtype)


def with_precision(apply_fn: Callable, precision: Precision) -> Callable:
    """Wrap ``apply_fn(params, *inputs)`` to run in the compute dtype and return float32 outputs.

    Floating params and inputs are cast; integer and bool inputs pass through. The casts are
    ordinary differentiable ops, so gradients reach the float32 params.
    """

    def apply(params, *inputs):
        out = apply_fn(*precision.cast_to_compute((params, *inputs)))
        return precision.cast_to_output(out)

    return apply
