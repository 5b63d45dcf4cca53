"""Collect a ``[T, N]`` trajectory segment from a batched env with a policy.

One acting step (policy forward, factored Gumbel-max sampling, env step, episode bookkeeping) is a
pure function of ``(params, carry, noise)``; it is compiled once and called T times. All noise for
the segment is drawn up front from the explicit generator, because random numbers drawn inside a
compiled CPU graph are slow and would hide RNG state from checkpoints.

Recurrent policies carry their hidden state in ``carry["hidden"]``; ``carry["start"]`` marks
sub-environments whose next step begins an episode (the state is zeroed before that step). Each
segment stores its initial hidden state so the update can replay it exactly.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from kernel import heads
from kernel.policy import Policy, masks
from kernel.tree import tree_map


class Rollout(NamedTuple):
    init: Callable  # (generator) -> carry
    collect: Callable  # (params, carry, generator) -> (carry, trajectory)
    act: Callable  # the (possibly compiled) single acting step


def _draw(shape, generator, device, dtype=torch.float32):
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def make_rollout(env, policy: Policy, num_steps: int, compile: bool = True) -> Rollout:
    spec = env.action_spec
    n = env.num_envs

    def init(generator):
        env_state, obs = env.reset(_draw(env.noise_shape(), generator, env.device, env.dtype))
        zeros = torch.zeros(n, dtype=torch.float32, device=env.device)
        return {"env": env_state, "obs": obs, "ep_return": zeros, "ep_length": zeros.long(),
                "hidden": policy.initial_hidden(n, env.device),
                "start": torch.ones(n, dtype=torch.bool, device=env.device)}

    def act(params, carry, action_noise, env_noise):
        logits, value, hidden = policy.step(params, carry["obs"], carry["hidden"], carry["start"])
        obs_masks = masks(carry["obs"])
        actions = heads.sample(spec, logits, action_noise, obs_masks)
        head_logp = heads.log_probs(spec, logits, actions, obs_masks)
        step = env.step(carry["env"], actions, env_noise)
        done = step.terminated | step.truncated
        ep_return = carry["ep_return"] + step.reward.float()
        ep_length = carry["ep_length"] + 1
        record = {
            "obs": carry["obs"],
            "starts": carry["start"],
            "actions": actions,
            "head_logp": head_logp,
            "logp": sum(head_logp.values()),
            "values": value,
            "rewards": step.reward.float(),
            "terminated": step.terminated,
            "truncated": step.truncated,
            "final_obs": step.final_obs,
            "hidden_after": hidden,
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        carry = {
            "env": step.state,
            "obs": step.obs,
            "ep_return": torch.where(done, torch.zeros_like(ep_return), ep_return),
            "ep_length": torch.where(done, torch.zeros_like(ep_length), ep_length),
            "hidden": hidden,
            "start": done,
        }
        return carry, record

    step_fn = torch.compile(act, fullgraph=True) if compile else act

    @torch.no_grad()
    def collect(params, carry, generator):
        action_noise = {h: _draw((num_steps, n, k), generator, env.device) for h, k in spec.sizes.items()}
        env_noise = _draw((num_steps, *env.noise_shape()), generator, env.device, env.dtype)
        hidden0 = carry["hidden"]
        records = []
        for t in range(num_steps):
            carry, record = step_fn(params, carry, {h: u[t] for h, u in action_noise.items()}, env_noise[t])
            records.append(record)
        traj = {k: _stack([r[k] for r in records]) for k in records[0]}
        traj["hidden0"] = hidden0
        # Value of the observation each step really led to (pre-reset), with the state after that
        # step, in one batched forward: what a time-limit truncation bootstraps from.
        final_obs, after = traj.pop("final_obs"), traj.pop("hidden_after")
        flat = lambda x: x.reshape(num_steps * n, *x.shape[2:])
        no_start = torch.zeros(num_steps * n, dtype=torch.bool, device=env.device)
        _, next_values, _ = policy.step(params, tree_map(flat, final_obs), tree_map(flat, after), no_start)
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
