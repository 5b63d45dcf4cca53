"""Gradient diagnostics: one rollout, then one batch of gradients under each precision.

Every precision sees the same batch (collected once, in the run's own precision), so differences
between the tables come from the precision alone.
"""
from __future__ import annotations

import torch

from kernel import loss_scale, rng, telemetry
from kernel.build import build, init_state, make_optimizer, policy_for
from kernel.config import Config
from kernel.hot import own_code
from kernel.policy import group_dtypes
from kernel.ppo import hyper_tensors, make_grad_step, shuffle_units
from kernel.precision import Precision
from kernel.train import collect

MAX_HALVINGS = 24


def one_batch(config: Config, params: dict | None = None):
    """Params (fresh from the seed unless given) and one PPO batch from one rollout, made by the
    same collection step as training (eager)."""
    run = build(config.replace(compile=False))
    state = init_state(run)
    params = params if params is not None else state.params
    _, _, batch = collect(run, params, state.carry, rng.generator(state.rng))
    return run, params, batch


def grads_by_precision(config: Config, precisions: list[Precision], params: dict | None = None,
                       compile: bool = False) -> dict:
    """``{precision name: {"dtypes": {group: dtype}, "groups": {group: {stat: float, "status": str}},
    "skipped": bool}}`` for one full-batch gradient step per precision."""
    run, params, batch = one_batch(config, params)
    units = shuffle_units(config, run.policy.recurrent)
    idx = torch.arange(units, device=batch["returns"].device)
    hyper = hyper_tensors(config, torch.zeros((), dtype=torch.int64, device=idx.device))
    report = {}
    # fp32 first: the other precisions' magnitude classes are relative to it.
    for precision in sorted(precisions, key=lambda p: p.name != "fp32"):
        policy = policy_for(config, run.env, precision)
        optimizer = make_optimizer(config)
        step = make_grad_step(policy, optimizer, config.clip_vloss, config.norm_adv, norm_entropy=config.norm_entropy,
                              head_average=config.head_average)
        if compile:
            step = torch.compile(own_code(step), fullgraph=True)  # a graph cache of its own per precision
        scale = loss_scale.for_precision(precision.needs_loss_scale, device=idx.device)
        for _ in range(MAX_HALVINGS if precision.needs_loss_scale else 1):
            # Halve the scale until the step is finite, as the first steps of an fp16 run do.
            _, _, new_scale, metrics = step(params, optimizer.init(params), scale, batch, idx, hyper)
            if not bool(metrics["skipped"] > 0):
                break
            scale = new_scale
        groups = telemetry.group_table(metrics)
        # Magnitude classes compare with the fp32 gradient of the same batch, when it was asked for
        # first; the fp32 column itself has no reference.
        reference = report.get("fp32", {}).get("groups", {})
        for group, stats in groups.items():
            stats["status"] = telemetry.classify(stats, reference.get(group, {}).get("norm"))
        report[precision.name] = {
            "dtypes": group_dtypes(groups, precision),
            "groups": groups,
            "skipped": bool(metrics["skipped"] > 0),
            "loss_scale": float(metrics["loss_scale"]),
        }
    return {p.name: report[p.name] for p in precisions}
