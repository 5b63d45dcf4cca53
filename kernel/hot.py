"""How the training loop compiles its hot functions (the rollout segment and the grad step).

Both are called thousands of times per run on small tensors, so per-call overhead matters. The
C++ wrapper and the exp-based tanh apply on CPU only, where they were measured; CUDA keeps
inductor's defaults there.
- ``cpp_wrapper``: the generated glue (allocations, extern matmul calls, scan bookkeeping) runs
  in C++ instead of Python.
- Tensor guards only: dynamo re-checks every input tensor's dtype, shape and strides on each call,
  but skips its other guards (dict keys, closure and global values), about 100 us of a ~0.8 ms
  CartPole grad step. That is sound here because these functions are closures over a frozen
  config and policy, and a run calls them with one fixed pytree structure; a changed tensor shape
  or dtype still recompiles.
- ``scan`` marked cacheable: inductor's FX graph cache skips graphs holding higher-order ops by
  default, so every new process recompiled the rollout segment (~4 s warm). The cache key covers
  the scan body's code (a changed body misses the cache; checked), and the torch version is part
  of the mark.
- ``tanh`` as ``2 / (1 + exp(-2x)) - 1`` inside the generated C++ (inductor's
  ``cpp.use_decompose_tanh``): Sleef's ``tanh`` costs ~4 ns per element on this project's CPU and
  was the largest elementwise kernel of the grad step (~10% of it). Max abs error 1.8e-7 against
  float64 over [-10, 10], vs 6e-8 for float32 ``torch.tanh``: fine for an activation. Eager mode
  keeps ``torch.tanh``.
"""
from __future__ import annotations

import torch


def hot_options(device="cpu") -> dict:
    options = {"unsafe_marked_cacheable_functions": {"torch.ops.higher_order.scan": torch.__version__}}
    if torch.device(device).type == "cpu":
        # Measured on CPU only; on CUDA inductor's defaults stand (no GPU run has checked these).
        options.update({"cpp_wrapper": True, "cpp.use_decompose_tanh": True})
    keep_tensor_guards = getattr(torch.compiler, "keep_tensor_guards_unsafe", None)  # torch >= 2.9
    if keep_tensor_guards is not None:
        options["guard_filter_fn"] = keep_tensor_guards
    return options


def compile_hot(fn, device="cpu"):
    return torch.compile(fn, fullgraph=True, options=hot_options(device))
