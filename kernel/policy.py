"""Actor-critic as a params pytree plus pure ``init`` / ``apply``.

Params layout (paths are what telemetry and checkpoints name)::

    trunk.actor.l0.w ...   actor feature MLP
    trunk.critic.l0.w ...  critic feature MLP (separate, as PureJaxRL's CartPole network)
    heads.<head>.w/b       one linear action head per factored-action head
    value.w/b              value head

``apply`` returns float32 logits per head and a float32 value, whatever the trunk computes in.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from kernel import distributions as D
from kernel import nn


class Policy(NamedTuple):
    init: Callable[[torch.Generator], dict]
    apply: Callable  # (params, obs) -> (logits: dict[str, Tensor], value: Tensor)
    head_names: tuple


def make_policy(obs_dim: int, head_sizes: dict, hidden=(64, 64), activation: str = "tanh") -> Policy:
    sizes = (obs_dim, *hidden)

    def init(generator: torch.Generator) -> dict:
        return {
            "trunk": {"actor": nn.mlp_init(generator, sizes), "critic": nn.mlp_init(generator, sizes)},
            "heads": {name: nn.linear_init(generator, hidden[-1], n, nn.POLICY_GAIN) for name, n in head_sizes.items()},
            "value": nn.linear_init(generator, hidden[-1], 1, nn.VALUE_GAIN),
        }

    def apply(params: dict, obs: torch.Tensor):
        actor = nn.mlp_apply(params["trunk"]["actor"], obs, activation)
        critic = nn.mlp_apply(params["trunk"]["critic"], obs, activation)
        logits = {name: nn.linear_apply(params["heads"][name], actor) for name in head_sizes}
        value = nn.linear_apply(params["value"], critic).squeeze(-1)
        return logits, value

    return Policy(init, apply, tuple(head_sizes))


def sample_actions(logits: dict, noise: dict) -> dict:
    return {name: D.sample(l, noise[name]) for name, l in logits.items()}


def greedy_actions(logits: dict) -> dict:
    return {name: D.mode(l) for name, l in logits.items()}


def joint_log_prob(logits: dict, actions: dict) -> torch.Tensor:
    """Log-probability of a factored action: the sum of its heads' log-probabilities."""
    return sum(D.log_prob(l, actions[name]) for name, l in logits.items())


def joint_entropy(logits: dict) -> torch.Tensor:
    return sum(D.entropy(l) for l in logits.values())
