"""Actor-critic as a params pytree plus pure functions.

Two trunks, one interface:

* ``mlp``: separate actor and critic MLPs (PureJaxRL's CartPole network)::

      trunk.actor.l0.w ...  trunk.critic.l0.w ...  heads.<head>.w/b  value.w/b

* ``lstm``: a shared feature MLP, then an LSTM, then the heads and value::

      trunk.features.l0.w ...  trunk.lstm.w_ih/w_hh/b  heads.<head>.w/b  value.w/b

``step(params, obs, hidden, start)`` acts one time step (rollout); ``sequence(params, obs,
hidden0, starts)`` replays ``[T, N]`` segments from their stored initial state (update). The trunk
runs under :func:`kernel.precision.with_precision`; its features come back float32, so logits and
value are float32 whatever the compute dtype. Observations are a tensor, or a dict with ``"x"``
(features) and ``"masks"`` (per-head validity masks).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from kernel import nn
from kernel.precision import PRESETS, SHORT_NAMES, Precision, with_precision


class Policy(NamedTuple):
    init: Callable[[torch.Generator], dict]
    step: Callable  # (params, obs, hidden, start) -> (logits, value, hidden)
    sequence: Callable  # (params, obs[T,N], hidden0, starts[T,N]) -> (logits[T,N], value[T,N])
    initial_hidden: Callable  # (num_envs, device) -> {"h", "c"} for lstm, {} for mlp
    spec: object  # envs.base.ActionSpec
    recurrent: bool


def features(obs):
    return obs["x"] if isinstance(obs, dict) else obs


def masks(obs):
    return obs.get("masks") if isinstance(obs, dict) else None


def make_policy(obs_dim: int, spec, hidden=(64, 64), activation: str = "tanh",
                precision: Precision = PRESETS["fp32"], kind: str = "mlp", lstm_size: int = 64,
                log_std_init: float = 0.0) -> Policy:
    if kind not in ("mlp", "lstm"):
        raise ValueError(f"policy must be 'mlp' or 'lstm', got {kind!r}")
    continuous = [h.name for h in spec.heads if h.kind == "gaussian"]
    if len(spec.heads) > 1 and spec.heads[0].kind == "gaussian":
        raise ValueError("the first of several action heads must be categorical: relevance is judged on it")
    if set(continuous) & (set(spec.parent) | set(spec.parent.values())):
        raise ValueError(f"Gaussian heads take no masks or parents: {', '.join(continuous)}")
    sizes = (obs_dim, *hidden)
    mlp = with_precision(lambda p, x: nn.mlp_apply(p, x, activation), precision)
    out_dim = lstm_size if kind == "lstm" else hidden[-1]

    def head(p, h, actor):
        out = nn.linear_apply(p, actor)
        # a Gaussian head: its mean, and a log standard deviation that does not depend on the state
        return torch.stack([out, p["log_std"].expand_as(out)], dim=-1) if h.kind == "gaussian" else out

    def heads_and_value(params, actor, critic):
        logits = {h.name: head(params["heads"][h.name], h, actor) for h in spec.heads}
        return logits, nn.linear_apply(params["value"], critic).squeeze(-1)

    def head_init(generator, h):
        p = nn.linear_init(generator, out_dim, h.size, nn.POLICY_GAIN)
        return dict(p, log_std=torch.full((h.size,), float(log_std_init))) if h.kind == "gaussian" else p

    def init(generator: torch.Generator) -> dict:
        if kind == "mlp":
            trunk = {"actor": nn.mlp_init(generator, sizes), "critic": nn.mlp_init(generator, sizes)}
        else:
            trunk = {"features": nn.mlp_init(generator, sizes), "lstm": nn.lstm_init(generator, hidden[-1], lstm_size)}
        return {
            "trunk": trunk,
            "heads": {h.name: head_init(generator, h) for h in spec.heads},
            "value": nn.linear_init(generator, out_dim, 1, nn.VALUE_GAIN),
        }

    if kind == "mlp":

        def feedforward(params, obs):
            x = features(obs)
            return heads_and_value(params, mlp(params["trunk"]["actor"], x), mlp(params["trunk"]["critic"], x))

        def step(params, obs, hidden, start):
            logits, value = feedforward(params, obs)
            return logits, value, hidden

        def sequence(params, obs, hidden0, starts):
            return feedforward(params, obs)

        def initial_hidden(num_envs, device):
            return {}

        return Policy(init, step, sequence, initial_hidden, spec, False)

    def lstm_step(trunk, x, h, c, start):
        keep = (~start).unsqueeze(-1).to(h.dtype)
        return nn.lstm_cell(trunk["lstm"], nn.mlp_apply(trunk["features"], x, activation), h * keep, c * keep)

    def lstm_replay(trunk, xs, h, c, starts):
        out, _ = nn.lstm_sequence(trunk["lstm"], nn.mlp_apply(trunk["features"], xs, activation), h, c, starts)
        return out

    # The whole trunk, LSTM included, runs in the compute dtype; h and c are carried in float32
    # (a bf16 -> fp32 -> bf16 round trip is exact, so replay sees the same state as the rollout).
    lstm_step = with_precision(lstm_step, precision)
    lstm_replay = with_precision(lstm_replay, precision)

    def step(params, obs, hidden, start):
        h, c = lstm_step(params["trunk"], features(obs), hidden["h"], hidden["c"], start)
        logits, value = heads_and_value(params, h, h)
        return logits, value, {"h": h, "c": c}

    def sequence(params, obs, hidden0, starts):
        out = lstm_replay(params["trunk"], features(obs), hidden0["h"], hidden0["c"], starts)
        return heads_and_value(params, out, out)

    def initial_hidden(num_envs, device):
        zeros = torch.zeros(num_envs, lstm_size, device=device)
        return {"h": zeros, "c": zeros.clone()}

    return Policy(init, step, sequence, initial_hidden, spec, True)


def group_dtypes(groups, precision: Precision) -> dict:
    """Which dtype each telemetry group computes in: the trunk in the compute dtype, the rest
    (heads, value) in float32."""
    return {g: SHORT_NAMES[precision.compute_dtype] if g == "trunk" or g.startswith("trunk.") else "fp32"
            for g in groups}
