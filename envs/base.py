"""What every batched environment provides (gymnax style: the env object holds configuration only,
all changing data lives in the ``state`` it returns)."""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch


class EnvOptionError(ValueError):
    """An env option (or the data it names) that cannot be used; the message is one line."""


class Step(NamedTuple):
    """Result of ``env.step``. ``obs`` is already the reset observation for sub-environments that
    finished; ``final_obs`` is the observation they finished on, which a time-limit truncation must
    bootstrap from (truncation is not termination)."""

    state: Any
    obs: Any
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: Any


class Head(NamedTuple):
    """One action head: ``size`` choices (categorical), or a ``size``-dimensional real vector
    (``kind="gaussian"``) that the env takes clipped to ``[low, high]`` (bounds may be infinite)."""

    name: str
    size: int
    kind: str = "categorical"
    low: tuple | None = None
    high: tuple | None = None


class ActionSpec(NamedTuple):
    """Factored action: an ordered tuple of heads, categorical or Gaussian. Masks and parents apply
    to categorical heads only; when heads are mixed the first is categorical (relevance is judged
    on it).

    ``parent[h]`` names an earlier head whose sampled value selects the row of ``h``'s mask: the
    env's mask for ``h`` is then ``[num_envs, parent_size, size]`` (e.g. slot masks per op).
    ``relevant[h]`` lists the parent-head values for which ``h`` matters (the blueprint matters only
    when ``op == GERMINATE``); a head missing from ``relevant`` always matters. Relevance is always
    judged on the first head, the one every other head is conditioned on.
    """

    heads: tuple
    parent: dict = {}
    relevant: dict = {}

    @property
    def names(self) -> tuple:
        return tuple(h.name for h in self.heads)

    @property
    def sizes(self) -> dict:
        return {h.name: h.size for h in self.heads}


@runtime_checkable
class Env(Protocol):
    """The contract between an environment and the kernel.

    ``num_envs`` sub-environments step together. All randomness enters as ``noise`` tensors of
    ``noise_shape()`` (uniform in [0, 1), drawn by the caller from its explicit random state), so
    ``reset`` and ``step`` are pure functions of their arguments; the env object itself holds
    only configuration. Actions are ``{head: long [num_envs]}`` for categorical heads and
    ``{head: float [num_envs, size]}`` (already within the head's bounds) for Gaussian ones (one
    head: a bare tensor is accepted too). Observations are a ``[num_envs, obs_dim]`` tensor,
    or a dict with ``"x"`` (that tensor) and ``"masks"`` (``{head: bool mask}``, see
    :class:`ActionSpec`). ``solved_return``: the mean return over 100 episodes at which the task
    counts as solved, or ``None``.

    Optional: ``OPTIONS`` (a class attribute) names the keyword options the constructor takes
    beyond ``num_envs`` and ``device``, checked by a static ``check_options(**options)``; an env
    whose ``step`` runs Python loops (``morpho`` trains networks) sets ``compilable = False`` and
    the rollout then steps it eagerly.
    """

    name: str
    num_envs: int
    device: torch.device
    dtype: torch.dtype
    action_spec: ActionSpec
    obs_dim: int
    solved_return: float | None

    def noise_shape(self) -> tuple: ...

    def reset(self, noise: torch.Tensor) -> tuple[Any, Any]:
        """``(state, obs)`` for fresh sub-environments."""

    def step(self, state: Any, action: Any, noise: torch.Tensor) -> Step:
        """Advance every sub-environment one step; finished ones are reset inside (see :class:`Step`)."""
