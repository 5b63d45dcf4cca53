"""Collect a ``[T, N]`` trajectory segment from a batched env with a policy.

One acting step (policy forward, factored Gumbel-max sampling, env step, episode bookkeeping) is a
pure function of ``(params, carry, noise)``. Compiled, the whole T-step segment is one call: a
``scan`` over the acting step (a Python loop of T compiled calls spends most of its time in
per-call overhead at RL sizes; an unrolled loop takes minutes to compile). Eager mode runs the same
step in a Python loop. All noise for the segment is drawn up front from the explicit generator,
because random numbers drawn inside a compiled CPU graph are slow and would hide RNG state from
checkpoints.

Recurrent policies carry their hidden state in ``carry["hidden"]``; ``carry["start"]`` marks
sub-environments whose next step begins an episode (the state is zeroed before that step). Each
segment stores its initial hidden state so the update can replay it exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch._higher_order_ops import scan

from kernel import heads
from kernel.hot import compile_hot
from kernel.policy import Policy, masks
from kernel.tree import leaves, tree_map


class Rollout(NamedTuple):
    init: Callable  # (generator or list of one per run) -> carry
    collect: Callable  # (params, carry, generator or list of one per run) -> (carry, trajectory)
    act: Callable  # the single acting step (pure, uncompiled)
    noise: Callable  # (generator or list of one per run) -> (action_noise, env_noise) of one segment
    segment: Callable  # (params, carry, action_noise, env_noise, scanned=True) -> (carry, trajectory): pure


def draw(shape, generator, device, dtype=torch.float32):
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def make_rollout(env, policy: Policy, num_steps: int, compile: bool = True, greedy: bool = False,
                 runs: int = 1) -> Rollout:
    """``greedy``: act with each head's most likely valid action instead of sampling (evaluation).

    ``runs`` > 1: the env's sub-environments are ``runs`` equal blocks, one per independent run
    (``policy`` acts each block with its own params, see :func:`kernel.many.policy_over_runs`),
    and ``init``/``collect`` take one generator per run. Each block's noise is drawn from its own
    run's generator exactly as a one-run rollout would draw it, then the blocks are concatenated.
    """
    spec = env.action_spec
    n = env.num_envs
    per_run = n // runs
    env_noise_row = tuple(env.noise_shape()[1:])  # noise_shape()[0] is the sub-environment axis

    def per_run_generators(generators) -> list:
        gens = generators if isinstance(generators, (list, tuple)) else [generators]
        if len(gens) != runs:
            raise ValueError(f"need one generator per run ({runs}), got {len(gens)}")
        return gens

    def init(generators):
        noise = torch.cat([draw((per_run, *env_noise_row), g, env.device, env.dtype)
                           for g in per_run_generators(generators)])
        env_state, obs = env.reset(noise)
        zeros = torch.zeros(n, dtype=torch.float32, device=env.device)
        carry = {"env": env_state, "obs": obs, "ep_return": zeros, "ep_length": zeros.long(),
                 "hidden": policy.initial_hidden(n, env.device),
                 "start": torch.ones(n, dtype=torch.bool, device=env.device)}
        # Distinct tensors throughout (an env may return its state as its obs): the compiled
        # segment then sees the same aliasing on every call and never recompiles.
        return unaliased(carry)

    def act(params, carry, action_noise, env_noise):
        logits, value, hidden = policy.step(params, carry["obs"], carry["hidden"], carry["start"])
        obs_masks = masks(carry["obs"])
        if greedy:
            actions = heads.greedy(spec, logits, obs_masks)
        else:
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

    def bootstrap(params, traj):
        """Value of the observation each step really led to (pre-reset), with the state after that
        step, in one batched forward: what a time-limit truncation bootstraps from."""
        final_obs, after = traj.pop("final_obs"), traj.pop("hidden_after")
        flat = lambda x: x.reshape(num_steps * n, *x.shape[2:])
        no_start = torch.zeros(num_steps * n, dtype=torch.bool, device=env.device)
        _, next_values, _ = policy.step(params, tree_map(flat, final_obs), tree_map(flat, after), no_start)
        traj["next_values"] = next_values.reshape(num_steps, n)
        return traj

    def segment(params, carry, action_noise, env_noise):
        def body(c, x):
            # Only the body's own arguments are compared: testing the segment's real inputs
            # (params, carry) for identity could make dynamo guard on them.
            return unaliased(act(params, c, x[0], x[1]), (c, x))

        # The initial carry may hold one tensor twice (CartPole's state is its obs): copy it.
        carry, traj = scan(body, tree_map(torch.clone, carry), (action_noise, env_noise))
        # Feed-forward: bootstrap in the same compiled call (no eager forward after it). The LSTM
        # bootstrap stays outside: inductor 2.14.1's cpp_wrapper emits a duplicate C++ declaration
        # for scan + LSTM step in one graph.
        return carry, traj if policy.recurrent else bootstrap(params, traj)

    def looped(params, carry, action_noise, env_noise):
        records = []
        for t in range(num_steps):
            carry, record = act(params, carry, {h: u[t] for h, u in action_noise.items()}, env_noise[t])
            records.append(record)
        return carry, bootstrap(params, {k: _stack([r[k] for r in records]) for k in records[0]})

    # compile_hot's cpp_wrapper runs the scan's per-iteration bookkeeping in C++ (halves a CartPole segment).
    # An env that steps in Python loops (``compilable = False``) runs eagerly, policy included.
    run_segment = compile_hot(segment, env.device) if compile and getattr(env, "compilable", True) else looped

    def segment_noise(generator):
        action_noise = {h: draw((num_steps, per_run, k), generator, env.device) for h, k in spec.sizes.items()}
        return action_noise, draw((num_steps, per_run, *env_noise_row), generator, env.device, env.dtype)

    def noise(generators):
        drawn = [segment_noise(g) for g in per_run_generators(generators)]
        if runs == 1:
            return drawn[0]
        # run blocks side by side along the sub-environment axis
        action_noise = {h: torch.cat([a[h] for a, _ in drawn], dim=1) for h in spec.sizes}
        return action_noise, torch.cat([e for _, e in drawn], dim=1)

    def whole_segment(params, carry, action_noise, env_noise, scanned: bool = True):
        """The segment with its bootstrap and initial hidden state, as one pure function (what a
        fused iteration runs): a ``scan`` to compile, or (``scanned=False``) the eager loop."""
        hidden0 = carry["hidden"]
        if scanned:
            carry, traj = segment(params, carry, action_noise, env_noise)
            traj = bootstrap(params, traj) if policy.recurrent else traj
        else:
            carry, traj = looped(params, carry, action_noise, env_noise)
        traj["hidden0"] = hidden0
        return carry, traj

    @torch.no_grad()
    def collect(params, carry, generators):
        action_noise, env_noise = noise(generators)
        hidden0 = carry["hidden"]
        carry, traj = run_segment(params, carry, action_noise, env_noise)
        if run_segment is not looped and policy.recurrent:  # the compiled LSTM segment leaves bootstrapping here
            traj = bootstrap(params, traj)
        traj["hidden0"] = hidden0
        return carry, traj

    return Rollout(init, collect, act, noise, whole_segment)


def unaliased(outputs, inputs=()):
    """``outputs`` with every tensor leaf that is also an input, or repeats an earlier output,
    copied: a scan body may not return an alias (the acting step passes the observation through
    into its record, and an env may hand back one tensor as both state and obs).

    Aliases are found with ``is``, not ``id()``: dynamo before 2.14 cannot take the ``id()`` of a
    tensor made inside a scan body. A repeat copies the previous copy rather than the original, so
    no two copy nodes are identical (the graph optimiser would merge those back into one tensor).
    """
    latest = [[x, x] for x in leaves(inputs) if isinstance(x, torch.Tensor)]  # [original, newest copy]

    def fresh(x):
        if not isinstance(x, torch.Tensor):
            return x
        for pair in latest:
            if x is pair[0]:
                pair[1] = pair[1].clone()
                return pair[1]
        latest.append([x, x])
        return x

    return tree_map(fresh, outputs)


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([x[k] for x in items]) for k in items[0]}
    return torch.stack(items)


def finished_episodes(episodes: dict):
    """Returns and lengths of the episodes that ended in a segment (one host sync); ``episodes``
    holds ``[T, N]`` tensors "return", "length" and "done"."""
    done = episodes["done"]
    return episodes["return"][done], episodes["length"][done]
