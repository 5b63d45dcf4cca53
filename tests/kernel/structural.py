"""Structural checks of a PPO step that float rounding alone cannot pass or fail: whether the
reported loss is made of the terms and coefficients the config asks for, and which dtypes the
trunk's and the heads' matrix products run in. A tolerance of a low precision's size would hide a
dropped entropy term or a trunk in the wrong dtype; these do not."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernel.ppo import evaluate

LOSS_TERMS_RTOL = 1e-5


def loss_recomposition_gap(metrics: dict, hyper: dict, head_names: tuple) -> float:
    """How far the reported loss is from ``pg_loss - sum_h (ent_coef + ent_coef/h) * entropy_h +
    vf_coef * v_loss`` with ``hyper``'s coefficients, relative to the terms' sizes. A step that
    drops a term or uses another coefficient than ``hyper`` says is off by that term."""
    if len(head_names) == 1:
        entropies = {head_names[0]: metrics["entropy"]}
    else:
        entropies = {h: metrics[f"head/{h}/entropy"] for h in head_names}
    terms = [metrics["pg_loss"].double(), hyper["vf_coef"].double() * metrics["v_loss"].double()]
    for h, ent in entropies.items():
        coef = hyper["ent_coef"].double() + hyper.get(f"ent_coef/{h}", torch.zeros(())).double()
        terms.append(-coef.cpu() * ent.double().cpu())
    terms = [t.cpu() for t in terms]
    size = sum(t.abs() for t in terms)
    return float((metrics["loss"].double().cpu() - sum(terms)).abs() / size)


class _MatmulDtypes(TorchDispatchMode):
    """Records the dtype of every matrix product run under it."""

    OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear")

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.OPS:
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        return func(*args, **(kwargs or {}))


def matmul_dtypes(fn) -> set:
    """The dtypes of the matrix products ``fn()`` runs (eagerly)."""
    mode = _MatmulDtypes()
    with mode, torch.no_grad():
        fn()
    return mode.dtypes


def trunk_dtype_problem(policy, precision, params, batch: dict) -> str | None:
    """Whether ``policy`` computes its trunk in ``precision``'s compute dtype and its heads in
    float32 (its matrix products on ``batch`` run in exactly those dtypes); a line if not."""
    want = {precision.compute_dtype, torch.float32}
    got = matmul_dtypes(lambda: evaluate(policy, params, batch))
    if got != want:
        return f"matrix products ran in {sorted(map(str, got))}, expected {sorted(map(str, want))}"
    return None


def loss_problems(outputs: dict, hyper: dict, head_names: tuple) -> list:
    """Steps (outputs named ``step<k>.<metric>``) whose loss is not the sum of ``hyper``'s terms."""
    problems = []
    for prefix in sorted({name.split(".")[0] for name in outputs if name.endswith(".loss")}):
        metrics = {name[len(prefix) + 1:]: v for name, v in outputs.items() if name.startswith(prefix + ".")}
        gap = loss_recomposition_gap(metrics, hyper, head_names)
        if not gap <= LOSS_TERMS_RTOL:
            problems.append(f"{prefix}: the loss is {gap:.1e} of its terms away from pg - ent_coef * entropy "
                            f"+ vf_coef * v_loss (allowed {LOSS_TERMS_RTOL:.0e})")
    return problems
