"""Evaluate a policy: run a fresh batch of envs, one episode each, and return the episode returns."""
from __future__ import annotations

import torch

from kernel import rng
from kernel.build import make_env, policy_for
from kernel.checkpoint import CheckpointError, load
from kernel.config import Config, from_dict
from kernel.resume import check_matches
from kernel.rollout import make_rollout


@torch.no_grad()
def evaluate(config: Config, params: dict, episodes: int, greedy: bool = True, seed: int = 0,
             obs_stats: dict | None = None) -> torch.Tensor:
    """Returns ``[episodes]`` float returns; each sub-environment plays exactly one episode, with the
    same acting step as training (:func:`kernel.rollout.make_rollout`). A run trained with
    ``norm_obs`` needs the observation statistics it ended with (``obs_stats``; :func:`load_policy`
    reads them from a checkpoint)."""
    if config.norm_obs and obs_stats is None:
        raise ValueError("this policy was trained on normalized observations: pass the run's obs_stats")
    env = make_env(config, episodes)
    if hasattr(env, "desync"):
        env.desync = False  # whole episodes from the first step
    rollout = make_rollout(env, policy_for(config, env), 1, greedy=greedy, norm_obs=config.norm_obs,
                           obs_stats=obs_stats)
    generator = rng.generator(rng.key(seed))
    carry = rollout.init(generator)
    final = torch.zeros(episodes, device=env.device)
    finished = torch.zeros(episodes, dtype=torch.bool, device=env.device)
    while not bool(finished.all()):
        action_noise, env_noise = rollout.noise(generator)  # one step's, as training draws it
        carry, record = rollout.act(params, carry, {h: x[0] for h, x in action_noise.items()}, env_noise[0])
        done = record["terminated"] | record["truncated"]
        final = torch.where(done & ~finished, record["episode_return"], final)
        finished |= done
    return final


def load_policy(path) -> tuple[Config, dict, dict]:
    """Config, params and metadata of a saved run. Raises ``CheckpointError`` on a bad file, and
    when the params do not fit the policy the saved config builds (a missing or unexpected leaf, a
    wrong shape or dtype, params saved for another env), naming every difference."""
    sections, meta = load(path)
    if "params" not in sections or "config" not in meta:
        raise CheckpointError(f"{path} holds no policy params or config")
    if "runs" in meta:
        raise CheckpointError(f"{path} holds a group of {len(meta['runs']['seeds'])} runs; evaluate one run's file "
                              "(run-<i>/params.safetensors in the group's folder)")
    try:
        config = from_dict(meta["config"])
        policy = policy_for(config, make_env(config, 1))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has an unusable config: {e}") from None
    expected = policy.init(torch.Generator().manual_seed(0))
    check_matches({"params": expected}, {"params": sections["params"]}, path,
                  against=f"the {config.env} policy its config builds")
    norm = sections.get("carry", {}).get("norm", {})
    if config.norm_obs:  # the statistics the run ended with
        ranks = int(meta.get("world_size", 1)) > 1  # a data-parallel file stacks every rank's (equal) copy
        stats = {k: v[0] if ranks else v for k, v in norm["obs"].items()}
        meta = dict(meta, obs_stats={k: v.to(torch.float64) for k, v in stats.items()})
    return config, sections["params"], meta
