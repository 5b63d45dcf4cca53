"""The whole PPO iteration as one compiled call.

:func:`make_fused` returns ``fused(params, opt_state, scale, carry, action_noise, env_noise,
perm_keys, hyper) -> (params, opt_state, scale, carry, metrics)``: the rollout scan, its bootstrap,
GAE, the batch, every epoch x minibatch gradient step (one ``scan`` over the minibatches' indices)
and the metrics, all in one function that ``torch.compile`` turns into one graph. Its inputs are
the training state, the noise of this iteration, drawn from the state's key by :func:`iteration`
exactly as the unfused path draws it, and this update's hyperparameters as tensors
(:func:`kernel.ppo.hyper_tensors`: the learning rate from its schedule, the coefficients), so both
paths compute the same numbers and a new learning rate, run length or coefficient reuses the
compiled graph.

The unfused :func:`kernel.train.iteration` stays for debugging (each piece can be called and
inspected on its own); ``tests/kernel/test_fused.py`` checks that the two agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils._pytree as pytree
from torch._higher_order_ops import scan

from kernel import auto, optim, rng, telemetry
from kernel.hot import fused_pays
from kernel.ppo import gae_functional, make_grad_step, shuffle_units
from kernel.rollout import unaliased


def permutations(perm_keys: torch.Tensor, size: int) -> torch.Tensor:
    """Every (epoch, minibatch)'s indices, ``[epochs * minibatches, size]``: each epoch's row of
    uniforms argsorted into a permutation (as the unfused update does), then cut into minibatches."""
    return perm_keys.argsort(dim=1).reshape(-1, size)


def stacked_to_history(stacked: dict) -> list:
    """Per-step metric dicts from a scan's stacked ``[steps]`` metrics."""
    steps = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(steps)]


def make_fused(run, scanned: bool = True) -> Callable:
    """The fused iteration of ``run`` (a :class:`kernel.train.Run`), uncompiled: its loops are
    ``scan``s to compile, or (``scanned=False``) Python loops to run eagerly (older torch cannot
    run a gradient inside an eager ``scan``)."""
    from kernel.train import make_batch, make_optimizer, trajectory_metrics  # (kernel.train builds with this module)

    config, policy = run.config, run.policy
    # Leaf by leaf: a scan body may not hold the in-place foreach ops (torch's alias check rejects
    # their list arguments). Compiled, the two forms give the same kernels.
    step_fn = make_grad_step(policy, make_optimizer(config, foreach=False), config.clip_vloss, config.norm_adv, None,
                             config.norm_entropy, config.head_average, foreach=False)
    units = shuffle_units(config, policy.recurrent)
    size = units // config.num_minibatches

    def looped_steps(params, opt_state, scale, batch, perms, hyper):
        history = []
        for idx in perms:
            params, opt_state, scale, metrics = step_fn(params, opt_state, scale, batch, idx, hyper)
            history.append(metrics)
        return params, opt_state, scale, telemetry.reduce_metrics(history)

    def minibatch_steps(params, opt_state, scale, batch, perms, hyper):
        if not scanned:
            return looped_steps(params, opt_state, scale, batch, perms, hyper)
        # A scan carries tensors only: the loss scale travels as its leaves (none for float32).
        scale_leaves, scale_spec = pytree.tree_flatten(scale)

        def body(carry, idx):
            p, o, s, batch, hyper = carry
            p, o, s, metrics = step_fn(p, o, pytree.tree_unflatten(s, scale_spec), batch, idx, hyper)
            # The scan's carry and outputs may not alias its inputs (an optimizer leaf that a
            # step leaves as it is would be one; the batch and hyperparameters are copied).
            return unaliased(((p, o, pytree.tree_leaves(s), batch, hyper), metrics), (carry, idx))

        # The batch and hyperparameters ride in the carry instead of being closed over: inductor
        # 2.14's C++ wrapper frees a closed-over view after the loop's first iteration.
        (params, opt_state, scale_leaves, _, _), stacked = scan(
            body, (params, opt_state, scale_leaves, batch, hyper), perms)
        scale = pytree.tree_unflatten(scale_leaves, scale_spec)
        return params, opt_state, scale, telemetry.reduce_metrics(stacked_to_history(stacked))

    def fused(params, opt_state, scale, carry, action_noise, env_noise, perm_keys, hyper):
        carry, traj = run.rollout.segment(params, carry, action_noise, env_noise, scanned)
        advantages, returns = gae_functional(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                             traj["truncated"], config.gamma, config.gae_lambda)
        batch = make_batch(traj, advantages, returns, policy.recurrent)
        params, opt_state, scale, metrics = minibatch_steps(params, opt_state, scale, batch,
                                                            permutations(perm_keys, size), hyper)
        metrics.update(trajectory_metrics(run, traj, batch))
        metrics["lr"] = hyper["lr"]
        metrics["skipped_total"] = optim.skipped_steps(opt_state)
        return params, opt_state, scale, carry, metrics

    return fused


def fuse_reason(config, distributed: bool, env) -> tuple[bool, str]:
    """Whether ``config`` runs fused, and why (one phrase). ``fuse="on"`` where fusing is impossible
    raises ``ValueError``."""
    why_not = None
    if distributed:
        why_not = "data-parallel ranks all-reduce between minibatch steps"
    elif not getattr(env, "compilable", True):
        why_not = f"{config.env} steps in Python (not compilable)"
    if config.fuse == "on":
        if why_not:
            raise ValueError(f"fuse='on' is not possible here: {why_not}")
        return True, "asked for"
    if config.fuse == "off":
        return False, "asked for"
    if why_not:
        return False, why_not
    if not config.compile:
        return False, "not compiled: eager runs take the unfused path"
    if not fused_pays(config.device):
        return False, f"torch {torch.__version__} cannot build it with the C++ wrapper, and without it fusing is slower"
    if torch.device(config.device).type == "cpu":
        # On CPU a fused iteration is faster but compiles longer: it pays only for long runs.
        break_even = auto.fuse_break_even(config.env)
        if break_even is None:
            return False, f"fusing {config.env} on CPU was not measured"
        if config.num_updates < break_even:
            return False, (f"{config.num_updates} updates; on CPU fusing pays from ~{break_even} on (its longer "
                           "compile against its faster iterations, measured by benchmarks/fused.py)")
        return True, f"{config.num_updates} updates; on CPU fusing pays from ~{break_even} on"
    return True, "one CUDA graph per iteration"


def draws(run, key: torch.Tensor) -> tuple:
    """This iteration's noise from its key, in the unfused path's order: the segment's action and
    env noise, then one row of uniforms per epoch for the minibatch permutations."""
    from kernel.train import rank_key

    generator = rng.generator(rank_key(run, key))
    action_noise, env_noise = run.rollout.noise(generator)
    units = shuffle_units(run.config, run.policy.recurrent)
    perm_keys = torch.rand(run.config.update_epochs, units, generator=generator, device=generator.device)
    return action_noise, env_noise, perm_keys.to(run.device)
