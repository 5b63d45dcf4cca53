"""Actor-critic as a params pytree plus pure ``init`` / ``apply``.

Params layout (paths are what telemetry and checkpoints name)::

    trunk.actor.l0.w ...   actor feature MLP
    trunk.critic.l0.w ...  critic feature MLP (separate, as PureJaxRL's CartPole network)
    heads.<head>.w/b       one linear action head per factored-action head
    value.w/b              value head

``apply`` returns float32 logits per head and a float32 value, whatever the trunk computes in:
the trunk runs under :func:`kernel.precision.with_precision`, its features come back float32, and
the heads and value are float32 layers on float32 master weights.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from kernel import distributions as D
from kernel import nn
from kernel.precision import PRESETS, Precision, with_precision


class Policy(NamedTuple):
    init: Callable[[torch.Generator], dict]
    apply: Callable  # (params, obs) -> (logits: dict[str, Tensor], value: Tensor)
    head_names: tuple


def make_policy(obs_dim: int, head_sizes: dict, hidden=(64, 64), activation: str = "tanh",
                precision: Precision = PRESETS["fp32"]) -> Policy:
    sizes = (obs_dim, *hidden)
    trunk = with_precision(lambda p, x: nn.mlp_apply(p, x, activation), precision)

    def init(generator: torch.Generator) -> dict:
        return {
            "trunk": {"actor": nn.mlp_init(generator, sizes), "critic": nn.mlp_init(generator, sizes)},
            "heads": {name: nn.linear_init(generator, hidden[-1], n, nn.POLICY_GAIN) for name, n in head_sizes.items()},
            "value": nn.linear_init(generator, hidden[-1], 1, nn.VALUE_GAIN),
        }

    def apply(params: dict, obs: torch.Tensor):
        actor = trunk(params["trunk"]["actor"], obs)
        critic = trunk(params["trunk"]["critic"], obs)
        logits = {name: nn.linear_apply(params["heads"][name], actor) for name in head_sizes}
        value = nn.linear_apply(params["value"], critic).squeeze(-1)
        return logits, value

    return Policy(init, apply, tuple(head_sizes))


def sample_actions(logits: dict, noise: dict, masks: dict | None = None) -> dict:
    masks = masks or {}
    return {name: D.sample(l, noise[name], masks.get(name)) for name, l in logits.items()}


def greedy_actions(logits: dict, masks: dict | None = None) -> dict:
    masks = masks or {}
    return {name: D.mode(l, masks.get(name)) for name, l in logits.items()}


def joint_log_prob(logits: dict, actions: dict, masks: dict | None = None) -> torch.Tensor:
    """Log-probability of a factored action: the sum of its heads' log-probabilities."""
    masks = masks or {}
    return sum(D.log_prob(l, actions[name], masks.get(name)) for name, l in logits.items())


def joint_entropy(logits: dict, masks: dict | None = None) -> torch.Tensor:
    masks = masks or {}
    return sum(D.entropy(l, masks.get(name)) for name, l in logits.items())


def group_dtypes(groups, precision: Precision) -> dict:
    """Which dtype each telemetry group computes in: the trunk in the compute dtype, the rest
    (heads, value) in float32."""
    from kernel.precision import SHORT_NAMES

    return {g: SHORT_NAMES[precision.compute_dtype] if g == "trunk" or g.startswith("trunk.") else "fp32"
            for g in groups}
