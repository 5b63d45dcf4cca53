"""The PPO iteration, written once: :func:`iterate` (rollout, advantages, batch, epochs of
minibatch steps, metrics) is the only place that order is written. It runs eagerly, with each
stage compiled on its own, or compiled whole as one graph (fused; its loops become scans), as
:mod:`kernel.build` makes its stages; :func:`kernel.train.iteration` draws its noise and calls it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.utils._pytree as pytree

from kernel import heads, optim, telemetry
from kernel.group import to_runs
from kernel.loop import loop
from kernel.policy import masks
from kernel.ppo import explained_variance
from kernel.tree import tree_map


class Stages(NamedTuple):
    """What one iteration calls, built by :func:`kernel.build.stages`."""

    segment: Callable  # (params, carry, action_noise, env_noise) -> (carry, trajectory)
    advantages: Callable  # (rewards, values, next_values, terminated, truncated, gamma, lam) -> (adv, returns)
    grad_step: Callable  # (params, opt_state, scale, batch, idx, hyper) -> (params, opt_state, scale, metrics)
    advantage_stats: Callable | None  # data-parallel: (advantages, perms) -> every rank's minibatch statistics
    spec: object  # the env's action spec
    recurrent: bool
    minibatch: int  # units (rows, or env columns when recurrent) per minibatch
    runs: int | None  # the run axis's length; None: one run, no axis
    scanned: bool  # the minibatch steps as a scan (inside a compiled whole iteration) or a Python loop


def iterate(s: Stages, params, opt_state, scale, carry, action_noise, env_noise, perm_keys, hyper):
    """One PPO update: ``(params, opt_state, scale, carry, metrics)``. Metrics are device tensors
    (0-d, or ``[runs]`` for a group), plus ``metrics["episodes"]``: the segment's ``[T, N]``
    episode returns, lengths and ends (a group's run r owns columns ``r*N .. (r+1)*N - 1``)."""
    with torch.no_grad():
        carry, traj = s.segment(params, carry, action_noise, env_noise)
    episodes = {"return": traj["episode_return"], "length": traj["episode_length"],
                "done": traj["terminated"] | traj["truncated"]}
    traj = per_run(with_advantages(s, traj, hyper), s.runs)
    batch = make_batch(traj, traj["advantages"], traj["returns"], s.recurrent, lead=1 if s.runs else 0)
    params, opt_state, scale, metrics = minibatch_steps(s, params, opt_state, scale, batch,
                                                        permutations(perm_keys, s.minibatch), hyper)
    metrics.update(trajectory_metrics(s.spec, traj, batch, lead=1 if s.runs else 0))
    metrics["episodes"] = episodes
    metrics["lr"] = hyper["lr"]
    metrics["skipped_total"] = optim.skipped_steps(opt_state)
    return params, opt_state, scale, carry, metrics


def with_advantages(s: Stages, traj: dict, hyper: dict) -> dict:
    """``traj`` with its advantages and returns. The recursion is elementwise over sub-environments,
    so a group's runs share one call: each run's gamma and lambda spread over its envs' columns."""
    per_env = (lambda x: x.repeat_interleave(traj["rewards"].shape[1] // s.runs)) if s.runs else (lambda x: x)
    advantages, returns = s.advantages(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                       traj["truncated"], per_env(hyper["gamma"]), per_env(hyper["gae_lambda"]))
    return dict(traj, advantages=advantages, returns=returns)


def per_run(traj: dict, runs: int | None) -> dict:
    """A group's trajectory with a leading run axis (``[runs, T, N, ...]``, initial hidden states
    ``[runs, N, ...]``); one run's as it is."""
    if not runs:
        return traj
    hidden0 = tree_map(lambda x: to_runs(x, runs, 0), traj["hidden0"])
    rest = tree_map(lambda x: to_runs(x, runs, 1), {k: v for k, v in traj.items() if k != "hidden0"})
    return dict(rest, hidden0=hidden0)


def permutations(perm_keys: torch.Tensor, size: int) -> torch.Tensor:
    """Every (epoch, minibatch)'s indices, ``[epochs * minibatches, (runs,) size]``: each epoch's row
    of uniforms argsorted into a permutation, then cut into minibatches."""
    perms = perm_keys.argsort(dim=-1)
    return perms.reshape(*perms.shape[:-2], -1, size).movedim(-2, 0)


def minibatch_steps(s: Stages, params, opt_state, scale, batch: dict, perms: torch.Tensor, hyper: dict):
    """Every (epoch, minibatch) gradient step in order; metrics reduced over the steps."""
    xs = {"idx": perms}
    if s.advantage_stats is not None:  # data-parallel: normalize with every rank's minibatch
        xs.update(s.advantage_stats(batch["advantages"], perms))
    # A scan carries tensors only: the loss scale travels as its leaves (none for float32), and the
    # batch and hyperparameters ride in the carry (inductor's C++ wrapper frees a closed-over view
    # after a loop's first iteration).
    scale_leaves, scale_spec = pytree.tree_flatten(scale)

    def body(carry, x):
        p, o, leaves, b, h = carry
        step_hyper = dict(h, **{k: v for k, v in x.items() if k != "idx"})
        p, o, sc, metrics = s.grad_step(p, o, pytree.tree_unflatten(leaves, scale_spec), b, x["idx"], step_hyper)
        return (p, o, pytree.tree_leaves(sc), b, h), metrics

    (params, opt_state, scale_leaves, _, _), history = loop(body, (params, opt_state, scale_leaves, batch, hyper), xs,
                                                            s.scanned, stack=False)
    return params, opt_state, pytree.tree_unflatten(scale_leaves, scale_spec), telemetry.reduce_metrics(history)


def make_batch(traj: dict, advantages, returns, recurrent: bool = False, lead: int = 0) -> dict:
    """The fields the loss reads. Feed-forward: flattened to ``[T*N, ...]`` rows. Recurrent: kept
    ``[T, N, ...]`` with each env's segment-start hidden state and episode starts, for replay.
    ``lead``: leading axes to keep (a group's run axis)."""
    batch = {k: traj[k] for k in ("obs", "actions", "head_logp", "values")}
    batch["advantages"], batch["returns"] = advantages, returns
    if recurrent:
        return dict(batch, starts=traj["starts"], hidden0=traj["hidden0"])
    return tree_map(lambda x: x.flatten(lead, lead + 1), batch)


def trajectory_metrics(spec, traj: dict, batch: dict, lead: int = 0) -> dict:
    """What the segment itself says: value fit and, with several heads, per-head relevance (per
    run: ``lead`` leading axes kept)."""
    total = lambda x: x.reshape(*x.shape[:lead], -1)
    metrics = {"explained_var": explained_variance(total(traj["values"]), total(batch["returns"]))}
    if len(spec.heads) > 1:
        obs_masks = masks(traj["obs"])
        for name, r in heads.relevance(spec, traj["actions"]).items():
            metrics[f"head/{name}/relevant_steps"] = total(r).sum(-1)  # in the whole batch
        for name, d in heads.decisions(spec, traj["actions"], obs_masks).items():
            metrics[f"head/{name}/decision_steps"] = total(d).sum(-1)
    return metrics
