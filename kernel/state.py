"""The training state as data: a typed pytree on the device, plus a small host-side record.

:class:`TrainState` holds everything an iteration reads and writes: params, optimizer state, the
loss scale, the rollout carry (env state, last observation, running episode statistics, recurrent
state), the random key of the next iteration and the number of PPO updates done. An iteration
is a pure function of it, so saving a run is a flatten of this tree and restoring is an unflatten.

:class:`Progress` is what only the host loop needs: counters it can read without a device sync,
the rolling window of finished-episode returns and when the run first counted as solved.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernel.loss_scale import LossScale

RETURN_WINDOW = 100


class TrainState(NamedTuple):
    params: dict
    opt_state: dict
    loss_scale: LossScale
    carry: dict
    rng: torch.Tensor  # 0-d int64 key (kernel.rng), on the CPU
    step: torch.Tensor  # 0-d int64: PPO updates done, on the run's device


class Progress(NamedTuple):
    update: int = 0
    env_steps: int = 0
    returns: tuple = ()  # the last RETURN_WINDOW finished-episode returns, oldest first
    first_solved: dict | None = None  # {"update", "env_steps", "run_s"} when the rolling mean first reached solved

    @property
    def mean_return(self) -> float:
        return sum(self.returns) / len(self.returns) if self.returns else float("nan")

    def advanced(self, batch_size: int, new_returns: list, solved_return: float | None, run_s: float) -> Progress:
        """The record after one more update that collected ``batch_size`` env steps."""
        returns = (self.returns + tuple(new_returns))[-RETURN_WINDOW:]
        done = Progress(self.update + 1, self.env_steps + batch_size, returns, self.first_solved)
        if solved_return is not None and done.first_solved is None and len(returns) == RETURN_WINDOW \
                and done.mean_return >= solved_return:
            done = done._replace(first_solved={"update": done.update, "env_steps": done.env_steps, "run_s": run_s})
        return done
