"""What every batched environment provides (gymnax style: the env object holds configuration only,
all changing data lives in the ``state`` it returns)."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch


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
    name: str
    size: int


class ActionSpec(NamedTuple):
    """Factored action: an ordered tuple of categorical heads.

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
