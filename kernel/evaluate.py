"""Evaluate a policy: run a fresh batch of envs, one episode each, and return the episode returns."""
from __future__ import annotations

import torch

import envs
from kernel.config import Config, from_dict
from kernel.policy import greedy_actions, make_policy, sample_actions
from kernel.precision import parse


@torch.no_grad()
def evaluate(config: Config, params: dict, episodes: int, greedy: bool = True, seed: int = 0) -> torch.Tensor:
    """Returns ``[episodes]`` float returns; each sub-environment plays exactly one episode."""
    env = envs.make(config.env, episodes, device=config.device)
    policy = make_policy(env.obs_dim, env.action_spec.sizes, config.hidden, config.activation,
                         parse(config.precision))
    generator = torch.Generator().manual_seed(seed)
    state, obs = env.reset(torch.rand(env.noise_shape(), generator=generator))
    total = torch.zeros(episodes)
    final = torch.zeros(episodes)
    finished = torch.zeros(episodes, dtype=torch.bool)
    while not bool(finished.all()):
        logits, _ = policy.apply(params, obs)
        if greedy:
            actions = greedy_actions(logits)
        else:
            actions = sample_actions(logits, {h: torch.rand(l.shape, generator=generator) for h, l in logits.items()})
        step = env.step(state, actions, torch.rand(env.noise_shape(), generator=generator))
        total += step.reward.float()
        done = step.terminated | step.truncated
        final = torch.where(done & ~finished, total, final)
        finished |= done
        total = torch.where(done, torch.zeros_like(total), total)
        state, obs = step.state, step.obs
    return final


def load_policy(path) -> tuple[Config, dict, dict]:
    """Config, params and metadata of a saved run (raises ``CheckpointError`` on a bad file)."""
    from kernel.checkpoint import CheckpointError, load

    sections, meta = load(path)
    if "params" not in sections or "config" not in meta:
        raise CheckpointError(f"{path} holds no policy params or config")
    try:
        config = from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has an unusable config: {e}") from None
    return config, sections["params"], meta
