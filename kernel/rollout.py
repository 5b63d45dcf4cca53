"""Collect a ``[T, N]`` trajectory batch from a batched env with a policy.

One acting step (policy forward, Gumbel-max sampling, env step, episode bookkeeping) is a pure
function of ``(params, carry, noise)``; it is compiled once and called T times. All noise for the
segment is drawn up front from the explicit generator, because random numbers drawn inside a
compiled CPU graph are slow and would hide RNG state from checkpoints.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from kernel.policy import Policy, joint_log_prob, sample_actions


class Rollout(NamedTuple):
    init: Callable  # (generator) -> carry
    collect: Callable  # (params, carry, generator) -> (carry, trajectory)
    act: Callable  # the (possibly compiled) single acting step


def _draw(shape, generator, device, dtype=torch.float32):
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def make_rollout(env, policy: Policy, num_steps: int, compile: bool = True) -> Rollout:
    heads = env.action_spec.sizes
    n = env.num_envs

    def init(generator):
        env_state, obs = env.reset(_draw(env.noise_shape(), generator, env.device, env.dtype))
        zeros = torch.zeros(n, dtype=torch.float32, device=env.device)
        return {"env": env_state, "obs": obs, "ep_return": zeros, "ep_length": zeros.long()}

    def act(params, carry, action_noise, env_noise):
        logits, value = policy.apply(params, carry["obs"])
        actions = sample_actions(logits, action_noise)
        logp = joint_log_prob(logits, actions)
        step = env.step(carry["env"], actions, env_noise)
        done = step.terminated | step.truncated
        ep_return = carry["ep_return"] + step.reward.float()
        ep_length = carry["ep_length"] + 1
        record = {
            "obs": carry["obs"],
            "actions": actions,
            "logp": logp,
            "values": value,
            "rewards": step.reward.float(),
            "terminated": step.terminated,
            "truncated": step.truncated,
            "final_obs": step.final_obs,
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        carry = {
            "env": step.state,
            "obs": step.obs,
            "ep_return": torch.where(done, torch.zeros_like(ep_return), ep_return),
            "ep_length": torch.where(done, torch.zeros_like(ep_length), ep_length),
        }
        return carry, record

    step_fn = torch.compile(act, fullgraph=True) if compile else act

    @torch.no_grad()
    def collect(params, carry, generator):
        action_noise = {h: _draw((num_steps, n, k), generator, env.device) for h, k in heads.items()}
        env_noise = _draw((num_steps, *env.noise_shape()), generator, env.device, env.dtype)
        records = []
        for t in range(num_steps):
            carry, record = step_fn(params, carry, {h: u[t] for h, u in action_noise.items()}, env_noise[t])
            records.append(record)
        traj = {k: _stack([r[k] for r in records]) for k in records[0]}
        # Value of the observation each step really led to (pre-reset), in one batched forward:
        # what a time-limit truncation bootstraps from.
        final_obs = traj.pop("final_obs")
        _, next_values = policy.apply(params, final_obs.reshape(num_steps * n, *final_obs.shape[2:]))
        traj["next_values"] = next_values.reshape(num_steps, n)
        return carry, traj

    return Rollout(init, collect, step_fn)


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([x[k] for x in items]) for k in items[0]}
    return torch.stack(items)


def finished_episodes(traj: dict):
    """Returns and lengths of the episodes that ended in this trajectory (one host sync)."""
    done = traj["terminated"] | traj["truncated"]
    return traj["episode_return"][done], traj["episode_length"][done]
