"""A group of runs: what differs between them, and the run axis that trains them as one program.

PureJaxRL's ``vmap(make_train(config))(keys)`` in torch: the training state gets a leading run
axis, the one PPO iteration (:mod:`kernel.iteration`) maps its per-run maths over it with ``vmap``,
and the env steps every run's sub-environments side by side (run r owns the r-th block). Each run
draws its noise from its own key, so run r follows the run its seed and :data:`SWEEPABLE` values
give alone, up to the rounding of batched matmuls.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.func import vmap

from kernel.config import Config
from kernel.policy import Policy
from kernel.state import TrainState
from kernel.tree import tree_map

SWEEPABLE = ("lr", "clip_coef", "ent_coef", "vf_coef", "gae_lambda", "gamma", "max_grad_norm")
# Keys whose value sets a tensor's shape; every other key outside SWEEPABLE is a constant of the
# compiled graphs (or of the env and run), the same for every run of a group.
SHAPE_KEYS = ("num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden", "lstm_size", "policy", "env",
              "env_options", "total_steps")


class Group(NamedTuple):
    """The runs of a group: each one's seed, and each swept key's value per run."""

    seeds: tuple
    values: dict  # swept key -> tuple of one value per run

    @property
    def count(self) -> int:
        return len(self.seeds)

    def setting(self, r: int) -> dict:
        return {k: v[r] for k, v in self.values.items()}

    def config(self, config: Config, r: int) -> Config:
        """Run ``r``'s config: its seed and swept values on top of ``config``."""
        return config.replace(seed=self.seeds[r], **self.setting(r))

    def share(self, rank: int, ranks: int) -> Group:
        """Rank ``rank``'s equal, contiguous share of the runs."""
        if self.count % ranks:
            raise ValueError(f"{self.count} runs cannot be split evenly over {ranks} processes")
        n = self.count // ranks
        part = slice(rank * n, (rank + 1) * n)
        return Group(self.seeds[part], {k: v[part] for k, v in self.values.items()})

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "values": {k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Group:
        return cls(tuple(d["seeds"]), {k: tuple(v) for k, v in d["values"].items()})


def unsweepable(key: str) -> str | None:
    """Why ``key`` cannot differ between the runs of a group (None: it can)."""
    if key in SWEEPABLE:
        return None
    if key not in Config.__dataclass_fields__:
        return "it is not a config key"
    if key in SHAPE_KEYS:
        return "it sets tensor shapes or the length of the run, shared by every run of a group"
    return "it is a constant of the compiled graph, shared by every run of a group"


def grid(seeds: Sequence[int], sweep: dict | None = None) -> Group:
    """Every combination of the swept values (keys in the given order), each with every seed."""
    sweep = dict(sweep or {})
    for key in sweep:
        why = unsweepable(key)
        if why:
            raise ValueError(f"cannot sweep {key!r}: {why}; values that may differ per run: {', '.join(SWEEPABLE)}")
        if not sweep[key]:
            raise ValueError(f"sweep of {key!r} has no values")
        repeated = sorted({v for v in sweep[key] if list(sweep[key]).count(v) > 1})
        if repeated:
            raise ValueError(f"sweep of {key!r} repeats {', '.join(map(str, repeated))}: each value once")
    if not seeds:
        raise ValueError("need at least one seed")
    combos = [dict(zip(sweep, c)) for c in itertools.product(*sweep.values())]
    rows = [(s, c) for c in combos for s in seeds]
    return Group(tuple(int(s) for s, _ in rows), {k: tuple(float(c[k]) for _, c in rows) for k in sweep})


def validated(config: Config, group: Group) -> Group:
    """``group``, or ``ValueError`` naming the first run whose config is invalid."""
    if config.norm_reward and "gamma" in group.values:
        raise ValueError("cannot sweep 'gamma' with norm_reward: the reward scale accumulates returns with one gamma")
    for r in range(group.count):
        try:
            group.config(config, r)
        except ValueError as e:
            raise ValueError(f"run {r} ({group.setting(r)}): {e}") from None
    return group


def to_runs(x: torch.Tensor, runs: int, axis: int = 1) -> torch.Tensor:
    """``axis`` of ``runs`` equal blocks (one per run) -> a leading run axis."""
    return x.unflatten(axis, (runs, -1)).movedim(axis, 0)


def split_runs(x: torch.Tensor, runs: int, num_envs: int) -> torch.Tensor:
    """``[M * num_envs, ...]`` (M blocks of all runs' sub-environments) -> ``[runs, M * n, ...]``."""
    m = x.shape[0] // num_envs
    return x.reshape(m, runs, num_envs // runs, *x.shape[1:]).movedim(1, 0).reshape(runs, -1, *x.shape[1:])


def merge_runs(x: torch.Tensor, num_envs: int) -> torch.Tensor:
    """Inverse of :func:`split_runs`."""
    runs = x.shape[0]
    return x.reshape(runs, -1, num_envs // runs, *x.shape[2:]).movedim(0, 1).reshape(-1, *x.shape[2:])


def policy_over_runs(policy: Policy, runs: int, num_envs: int) -> Policy:
    """``policy`` whose ``step`` takes params with a leading run axis and acts each run's block of
    the ``num_envs`` sub-environments with that run's params (``vmap`` over runs)."""
    per_run = vmap(policy.step)

    def step(params, obs, hidden, start):
        split = lambda t: tree_map(lambda x: split_runs(x, runs, num_envs), t)
        merge = lambda t: tree_map(lambda x: merge_runs(x, num_envs), t)
        logits, value, hidden = per_run(params, split(obs), split(hidden), split(start))
        return merge(logits), merge(value), merge(hidden)

    return policy._replace(step=step)


def run_slice(state: TrainState, r: int, num_envs: int) -> TrainState:
    """Run ``r``'s state as a one-run :class:`TrainState` (loadable and resumable alone)."""
    take = lambda t: tree_map(lambda x: x[r], t)
    envs = lambda t: tree_map(lambda x: x[r * num_envs:(r + 1) * num_envs], t)
    # the normalization statistics carry the run axis; everything else in the carry, the env axis
    carry = {k: take(v) if k == "norm" else envs(v) for k, v in state.carry.items()}
    return TrainState(take(state.params), take(state.opt_state), take(state.loss_scale), carry, state.rng[r],
                      state.step)


def ranked_settings(summary: dict) -> list[dict]:
    """One row per swept setting: mean and spread (population std) over its seeds of the final
    mean return, best first (settings with no finished episodes last)."""
    by: dict = {}
    for row in summary["runs"]:
        key = tuple((k, row[k]) for k in summary["swept"])
        by.setdefault(key, []).append(row["mean_return"])
    rows = []
    for key, values in by.items():
        finite = [v for v in values if v == v]
        mean = sum(finite) / len(finite) if finite else float("nan")
        std = (sum((v - mean) ** 2 for v in finite) / len(finite)) ** 0.5 if finite else float("nan")
        rows.append({"setting": dict(key), "mean_return": mean, "std_return": std, "seeds": len(values)})
    return sorted(rows, key=lambda r: (r["mean_return"] != r["mean_return"], -(r["mean_return"] or 0)))
