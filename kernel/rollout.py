"""Collect a ``[T, N]`` trajectory segment from a batched env with a policy.

One acting step (policy forward, factored Gumbel-max sampling, env step, episode bookkeeping) is a
pure function of ``(params, carry, noise)``; a segment is T of them through :func:`kernel.loop.loop`.
Compiled, the whole segment is one call: a ``scan`` over the acting step (a Python loop of T
compiled calls spends most of its time in per-call overhead at RL sizes; an unrolled loop takes
minutes to compile). Eager mode runs the same step in a Python loop. All noise for the segment is
drawn up front from the explicit generator, because random numbers drawn inside a compiled CPU
graph are slow and would hide RNG state from checkpoints.

Recurrent policies carry their hidden state in ``carry["hidden"]``; ``carry["start"]`` marks
sub-environments whose next step begins an episode (the state is zeroed before that step). Each
segment stores its initial hidden state so the update can replay it exactly.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from kernel import heads
from kernel import normalize as N
from kernel.eager import constants
from kernel.loop import loop, rows, stacked, unaliased
from kernel.policy import Policy, masks
from kernel.tree import tree_map

COUNTS = {"one": 1}


class Rollout(NamedTuple):
    init: Callable  # (generator, or one per run) -> carry
    act: Callable  # the single acting step (pure)
    noise: Callable  # (generator, or one per run) -> (action_noise, env_noise) of one segment
    segment: Callable  # (params, carry, action_noise, env_noise, scanned, bootstrapped=True) -> (carry, traj)
    bootstrap: Callable  # (params, traj) -> traj with "next_values"


def draw(shape, generator, device, dtype=torch.float32):
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def normal(shape, generator, device, dtype=torch.float32):
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def make_rollout(env, policy: Policy, num_steps: int, greedy: bool = False, runs: int = 1, norm_obs: bool = False,
                 norm_reward: bool = False, gamma: float = 0.99, obs_stats: dict | None = None,
                 hot: Callable | None = None) -> Rollout:
    """``greedy``: act with each head's most likely valid action instead of sampling (evaluation).

    ``norm_obs`` / ``norm_reward`` (:mod:`kernel.normalize`): the policy sees observations
    standardized by running statistics updated with every step's batch (each run's own), and the
    update sees rewards scaled by the running std of a ``gamma``-discounted return; both live in
    the carry (``carry["norm"]``, ``carry["ret_acc"]``). Episode returns stay raw. ``obs_stats``:
    fixed observation statistics to normalize with, never updated (evaluation).

    ``hot``: for an env stepped on the host (whose steps no graph can hold), a transform such as
    :func:`kernel.hot.compile_hot` applied, in an unscanned segment, to the policy's first decision
    and to each step's bookkeeping joined with the next step's decision: one call per env step
    (``act``, the single step, stays as it is).

    ``runs`` > 1: the env's sub-environments are ``runs`` equal blocks, one per run of a group
    (``policy`` acts each block with its own params, see :func:`kernel.group.policy_over_runs`),
    and ``init``/``noise`` take one generator per run. Each block's noise is drawn from its own
    run's generator exactly as a one-run rollout would draw it, then the blocks are concatenated.
    """
    spec = env.action_spec
    n = env.num_envs
    per_run = n // runs
    env_noise_row = tuple(env.noise_shape()[1:])  # noise_shape()[0] is the sub-environment axis
    axis = 1 if runs > 1 else 0  # a group's statistics have a leading run axis
    by_run = (lambda x: x.reshape(runs, per_run, *x.shape[1:])) if runs > 1 else (lambda x: x)
    all_envs = (lambda x: x.reshape(-1, *x.shape[2:])) if runs > 1 else (lambda x: x)
    over_envs = lambda stats: {k: v.unsqueeze(axis) for k, v in stats.items() if k != "count"}

    def observed(norm: dict, *observations):
        """The statistics after this step's batch, and the observations standardized by them (a
        final observation with the same statistics as the batch it ended in)."""
        if not norm_obs:
            return norm, *observations
        stats = norm["obs"] if obs_stats is not None else N.running_update(norm["obs"], by_run(observations[0]), axis)
        return dict(norm, obs=stats), *(all_envs(N.normalized(by_run(o), over_envs(stats))) for o in observations)

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
        if norm_obs or norm_reward:
            lead = (runs,) if runs > 1 else ()
            norm = {"ret": N.running_init((), env.device, lead)} if norm_reward else {}
            if norm_obs:
                fresh = N.running_init(tuple(obs.shape[1:]), env.device, lead)
                norm["obs"] = obs_stats if obs_stats is not None else fresh
            carry["norm"], carry["obs"] = observed(norm, obs)
            if norm_reward:
                carry["ret_acc"] = torch.zeros(n, dtype=torch.float32, device=env.device)  # as gymnasium keeps it
        # Distinct tensors throughout (an env may return its state as its obs): the compiled
        # segment then sees the same aliasing on every call and never recompiles.
        return unaliased(carry)

    def decide(params, carry, action_noise):
        """What the policy does at ``carry``'s observation: actions (sampled, or greedy), their
        log-probs, the value, the next hidden state, and the actions as the env takes them."""
        logits, value, hidden = policy.step(params, carry["obs"], carry["hidden"], carry["start"])
        obs_masks = masks(carry["obs"])
        if greedy:
            actions = heads.greedy(spec, logits, obs_masks)
        else:
            actions = heads.sample(spec, logits, action_noise, obs_masks)
        return {"actions": actions, "head_logp": heads.log_probs(spec, logits, actions, obs_masks), "value": value,
                "hidden": hidden, "into_env": heads.into_env(spec, actions)}

    def advance(carry, decided, step):
        """The carry after the env took ``decided``'s actions and answered ``step``, and the
        step's record."""
        done = step.terminated | step.truncated
        ep_return = carry["ep_return"] + step.reward.float()
        reward, norm = step.reward.float(), carry.get("norm")
        norm, obs, final_obs = observed(norm, step.obs, step.final_obs)
        if norm_reward:
            acc = N.accumulated_return(carry["ret_acc"], step.reward, step.terminated, gamma)
            norm = dict(norm, ret=N.running_update(norm["ret"], by_run(acc), axis))
            reward = all_envs(N.scaled_reward(by_run(step.reward.float()), over_envs(norm["ret"])))
        ep_length = carry["ep_length"] + constants(COUNTS, carry["ep_length"])["one"]
        head_logp = decided["head_logp"]
        record = {
            "obs": carry["obs"],
            "starts": carry["start"],
            "actions": decided["actions"],
            "head_logp": head_logp,
            "logp": functools.reduce(torch.add, head_logp.values()),
            "values": decided["value"],
            "rewards": reward,
            "terminated": step.terminated,
            "truncated": step.truncated,
            "final_obs": final_obs,
            "hidden_after": decided["hidden"],
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        carry = {
            "env": step.state,
            "obs": obs,
            "ep_return": ep_return.masked_fill(done, 0),
            "ep_length": ep_length.masked_fill(done, 0),
            "hidden": decided["hidden"],
            "start": done,
        }
        if norm is not None:
            carry["norm"] = norm
        if norm_reward:
            carry["ret_acc"] = acc.masked_fill(done, 0)
        return carry, record

    def advance_then_decide(params, carry, decided, step, action_noise):
        """:func:`advance`, then :func:`decide` at the carry it leaves: the two policy-side halves
        around one host env step and the next, as one graph."""
        carry, record = advance(carry, decided, step)
        return carry, record, decide(params, carry, action_noise)

    # An env stepped on the host leaves two graphs per acting step (the decision, then the
    # bookkeeping); ``hot`` compiles the first decision alone and each step's bookkeeping with the
    # next step's decision, so a segment makes one compiled call per env step, not two.
    first_decide, next_decide = (hot(decide), hot(advance_then_decide)) if hot is not None else (None, None)

    def act(params, carry, action_noise, env_noise):
        decided = decide(params, carry, action_noise)
        return advance(carry, decided, env.step(carry["env"], decided["into_env"], env_noise))

    def host_loop(params, carry, action_noise, env_noise):
        """The segment's acting steps as a Python loop of one compiled call per step around the host
        env (the last step's decision for a step never taken is dropped)."""
        steps = rows((action_noise, env_noise))
        decided, records = first_decide(params, carry, steps[0][0]), []
        for t, (noise, e) in enumerate(steps):
            after = steps[t + 1][0] if t + 1 < len(steps) else noise
            carry, record, decided = next_decide(params, carry, decided,
                                                 env.step(carry["env"], decided["into_env"], e), after)
            records.append(record)
        return carry, stacked(records)

    def bootstrap(params, traj):
        """Value of the observation each step really led to (pre-reset), with the state after that
        step, in one batched forward: what a time-limit truncation bootstraps from."""
        traj = dict(traj)
        final_obs, after = traj.pop("final_obs"), traj.pop("hidden_after")
        flat = lambda x: x.reshape(num_steps * n, *x.shape[2:])
        no_start = torch.zeros(num_steps * n, dtype=torch.bool, device=env.device)
        _, next_values, _ = policy.step(params, tree_map(flat, final_obs), tree_map(flat, after), no_start)
        traj["next_values"] = next_values.reshape(num_steps, n)
        return traj

    def segment(params, carry, action_noise, env_noise, scanned: bool, bootstrapped: bool = True):
        """``num_steps`` acting steps from ``carry`` with the given noise, then (``bootstrapped``)
        the values to bootstrap from; the trajectory keeps the segment's initial hidden state for
        the update to replay from."""
        hidden0 = carry["hidden"]
        # The initial carry may hold one tensor twice (CartPole's state is its obs): copy it.
        carry = tree_map(torch.clone, carry) if scanned else carry
        if hot is not None and not scanned:
            carry, traj = host_loop(params, carry, action_noise, env_noise)
        else:
            carry, traj = loop(lambda c, x: act(params, c, x[0], x[1]), carry, (action_noise, env_noise), scanned)
        traj = bootstrap(params, traj) if bootstrapped else traj
        return carry, dict(traj, hidden0=hidden0)

    def segment_noise(generator):
        action_noise = {h.name: (normal if h.kind == "gaussian" else draw)((num_steps, per_run, h.size), generator,
                                                                           env.device) for h in spec.heads}
        return action_noise, draw((num_steps, per_run, *env_noise_row), generator, env.device, env.dtype)

    def noise(generators):
        drawn = [segment_noise(g) for g in per_run_generators(generators)]
        # a group's run blocks side by side along the sub-environment axis
        return drawn[0] if runs == 1 else tree_map(lambda *xs: torch.cat(xs, dim=1), *drawn)

    return Rollout(init, act, noise, segment, bootstrap)

