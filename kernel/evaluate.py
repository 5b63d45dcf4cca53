"""Evaluate a policy: run a fresh batch of envs, one episode each, and return the episode returns."""
from __future__ import annotations

import torch

import envs
from kernel import heads
from kernel.config import Config, from_dict
from kernel.policy import masks


@torch.no_grad()
def evaluate(config: Config, params: dict, episodes: int, greedy: bool = True, seed: int = 0) -> torch.Tensor:
    """Returns ``[episodes]`` float returns; each sub-environment plays exactly one episode."""
    env = envs.make(config.env, episodes, device=config.device)
    if hasattr(env, "desync"):
        env.desync = False  # whole episodes from the first step
    from kernel.train import policy_for

    policy = policy_for(config, env)
    generator = torch.Generator().manual_seed(seed)
    state, obs = env.reset(torch.rand(env.noise_shape(), generator=generator, dtype=env.dtype))
    hidden = policy.initial_hidden(episodes, env.device)
    start = torch.ones(episodes, dtype=torch.bool)
    total = torch.zeros(episodes)
    final = torch.zeros(episodes)
    finished = torch.zeros(episodes, dtype=torch.bool)
    while not bool(finished.all()):
        logits, _, hidden = policy.step(params, obs, hidden, start)
        if greedy:
            actions = heads.greedy(env.action_spec, logits, masks(obs))
        else:
            noise = {h: torch.rand(x.shape, generator=generator) for h, x in logits.items()}
            actions = heads.sample(env.action_spec, logits, noise, masks(obs))
        step = env.step(state, actions, torch.rand(env.noise_shape(), generator=generator, dtype=env.dtype))
        total += step.reward.float()
        done = step.terminated | step.truncated
        final = torch.where(done & ~finished, total, final)
        finished |= done
        total = torch.where(done, torch.zeros_like(total), total)
        state, obs, start = step.state, step.obs, done
    return final


def load_policy(path) -> tuple[Config, dict, dict]:
    """Config, params and metadata of a saved run. Raises ``CheckpointError`` on a bad file, and
    when the params do not fit the policy the saved config builds (a missing or unexpected leaf, a
    wrong shape or dtype, params saved for another env), naming every difference."""
    from kernel.checkpoint import CheckpointError, load
    from kernel.resume import check_matches
    from kernel.train import policy_for

    sections, meta = load(path)
    if "params" not in sections or "config" not in meta:
        raise CheckpointError(f"{path} holds no policy params or config")
    try:
        config = from_dict(meta["config"])
        policy = policy_for(config, envs.make(config.env, 1))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has an unusable config: {e}") from None
    expected = policy.init(torch.Generator().manual_seed(0))
    check_matches({"params": expected}, {"params": sections["params"]}, path,
                  against=f"the {config.env} policy its config builds")
    return config, sections["params"], meta
