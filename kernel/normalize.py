"""Observation normalization and reward scaling as pure transforms over running statistics.

The statistics are gymnasium's (``RunningMeanStd``: float64 mean, variance and count, merged batch
by batch with the parallel algorithm, starting from mean 0, variance 1 and count 1e-4), so a run
normalizes exactly as ``NormalizeObservation`` / ``NormalizeReward`` wrappers would, then clips
at :data:`CLIP` as CleanRL's continuous PPO does. Rewards are scaled by the standard deviation of
a discounted return accumulated per sub-environment (reset when an episode ends), not shifted.
"""
from __future__ import annotations

import torch

CLIP = 10.0
EPSILON = 1e-8


def running_init(shape: tuple = (), device="cpu", lead: tuple = ()) -> dict:
    """Statistics before any sample: ``{"mean", "var", "count"}`` in float64; ``lead``: leading
    axes (a group's runs), which the count has too."""
    return {"mean": torch.zeros((*lead, *shape), dtype=torch.float64, device=device),
            "var": torch.ones((*lead, *shape), dtype=torch.float64, device=device),
            "count": torch.full(lead, 1e-4, dtype=torch.float64, device=device)}


def running_update(stats: dict, batch: torch.Tensor, axis: int = 0) -> dict:
    """``stats`` after a batch of samples along ``axis`` (1 for a group's ``[runs, n, ...]``),
    gymnasium's parallel update."""
    batch = batch.to(torch.float64)
    batch_mean, batch_var, batch_count = batch.mean(axis), batch.var(axis, unbiased=False), batch.shape[axis]
    count = stats["count"].reshape(stats["count"].shape + (1,) * (stats["mean"].dim() - stats["count"].dim()))
    delta = batch_mean - stats["mean"]
    total = count + batch_count
    m2 = stats["var"] * count + batch_var * batch_count + delta.square() * count * batch_count / total
    return {"mean": stats["mean"] + delta * batch_count / total, "var": m2 / total,
            "count": stats["count"] + batch_count}


def normalized(x: torch.Tensor, stats: dict) -> torch.Tensor:
    """``x`` standardized by ``stats`` and clipped to [-CLIP, CLIP], in ``x``'s dtype."""
    z = (x.to(torch.float64) - stats["mean"]) / torch.sqrt(stats["var"] + EPSILON)
    return z.clamp(-CLIP, CLIP).to(x.dtype)


def scaled_reward(reward: torch.Tensor, stats: dict) -> torch.Tensor:
    """``reward`` divided by the return statistics' standard deviation, clipped to [-CLIP, CLIP]."""
    return (reward.to(torch.float64) / torch.sqrt(stats["var"] + EPSILON)).clamp(-CLIP, CLIP).to(reward.dtype)


def combined(before: dict, after: dict, world) -> dict:
    """Every data-parallel rank's statistics merged: each rank moved ``before`` to its own
    ``after`` with its own sub-environments' samples; the result holds all of them once."""
    wide = lambda c: c.reshape(c.shape + (1,) * (before["mean"].dim() - c.dim()))
    first = lambda s: s["mean"] * wide(s["count"])
    second = lambda s: (s["var"] + s["mean"].square()) * wide(s["count"])
    count = before["count"] + world.sum(after["count"] - before["count"])
    total = first(before) + world.sum(first(after) - first(before))
    squares = second(before) + world.sum(second(after) - second(before))
    mean = total / wide(count)
    return {"mean": mean, "var": squares / wide(count) - mean.square(), "count": count}


def accumulated_return(acc: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor, gamma) -> torch.Tensor:
    """The discounted return each sub-environment accumulates for reward scaling (before resets)."""
    return acc * gamma * (1.0 - terminated.to(acc.dtype)) + reward.to(acc.dtype)
