"""PPO: advantages, the clipped loss, and the update step. Reads top to bottom like CleanRL.

The gradient + optimizer step is one pure function ``(params, opt_state, batch, idx, hyper) ->
(params, opt_state, metrics)`` compiled with ``torch.compile(fullgraph=True)``. Minibatch indices,
learning rate, clip range and entropy coefficient enter as tensors, so nothing in the hot loop recompiles; metrics
stay on device as tensors until someone logs them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad_and_value

from kernel import loss_scale, telemetry
from kernel.optim import GradientTransformation, apply_updates
from kernel.policy import Policy, joint_entropy, joint_log_prob
from kernel.tree import tree_map


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------

def gae(rewards, values, next_values, terminated, truncated, gamma: float, lam: float):
    """Generalised advantage estimates and returns over ``[T, N]`` trajectories.

    ``next_values[t]`` is the value of the observation that followed step t *before* any
    auto-reset. Termination cuts the bootstrap (the episode's future is worth 0); truncation keeps
    it (the episode was only stopped by the clock), and either one ends the advantage recursion.
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = []
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        advantages.append(last)
    advantages = torch.stack(advantages[::-1])
    return advantages, advantages + values


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns]; NaN when the returns do not vary."""
    var = returns.var()
    return torch.where(var == 0, torch.full_like(var, float("nan")), 1 - (returns - values).var() / var)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-8)


def ppo_loss(params, batch: dict, hyper: dict, policy: Policy, clip_vloss: bool = True, norm_adv: bool = True):
    """Clipped-surrogate PPO loss on one minibatch; returns ``(loss, metrics)`` as tensors.

    ``batch``: obs, actions (dict per head), logp, values, advantages, returns; optional masks
    (dict per head of bool validity masks).
    ``hyper``: 0-d tensors clip_coef, ent_coef, vf_coef (and lr, read by the optimizer).
    """
    logits, value = policy.apply(params, batch["obs"])
    masks = batch.get("masks")
    logp = joint_log_prob(logits, batch["actions"], masks)
    entropy = joint_entropy(logits, masks).mean()

    log_ratio = logp - batch["logp"]
    ratio = log_ratio.exp()
    adv = normalize(batch["advantages"]) if norm_adv else batch["advantages"]
    clip = hyper["clip_coef"]
    pg_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()

    v_loss_unclipped = (value - batch["returns"]) ** 2
    if clip_vloss:
        v_clipped = batch["values"] + (value - batch["values"]).clamp(-clip, clip)
        v_loss = 0.5 * torch.maximum(v_loss_unclipped, (v_clipped - batch["returns"]) ** 2).mean()
    else:
        v_loss = 0.5 * v_loss_unclipped.mean()

    loss = pg_loss - hyper["ent_coef"] * entropy + hyper["vf_coef"] * v_loss
    metrics = {
        "loss": loss.detach(),
        "pg_loss": pg_loss.detach(),
        "v_loss": v_loss.detach(),
        "entropy": entropy.detach(),
        # (r - 1) - log r: the low-variance KL estimator (Schulman), always >= 0.
        "approx_kl": ((ratio - 1) - log_ratio).mean().detach(),
        "clip_frac": ((ratio - 1.0).abs() > clip).float().mean().detach(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Update
# ---------------------------------------------------------------------------------------------

def make_grad_step(policy: Policy, optimizer: GradientTransformation, clip_vloss: bool, norm_adv: bool,
                   dynamic_scale: bool = False, groups=None) -> Callable:
    """One minibatch step: gather rows ``idx`` of the batch, take the (loss-scaled) gradient, and
    apply the optimizer unless a loss or gradient is non-finite, in which case params and
    optimizer state stay as they were and the step is counted as skipped."""

    def scaled_loss(params, minibatch, hyper, scale):
        loss, metrics = ppo_loss(params, minibatch, hyper, policy, clip_vloss, norm_adv)
        return loss * scale, (loss, metrics)

    def grad_step(params, opt_state, scale_state, batch, idx, hyper):
        minibatch = tree_map(lambda x: x[idx], batch)
        grads, (_, (loss, metrics)) = grad_and_value(scaled_loss, has_aux=True)(
            params, minibatch, hyper, scale_state["scale"])
        grads = loss_scale.unscale(grads, scale_state)
        finite = loss_scale.all_finite(grads) & torch.isfinite(loss)
        updates, new_opt_state = optimizer.update(grads, opt_state, params, lr=hyper["lr"])
        new_params = apply_updates(params, updates)
        metrics.update(telemetry.grad_stats(grads, params, updates, groups or telemetry.default_groups(params)))
        metrics["skipped"] = (~finite).float()
        metrics["loss_scale"] = scale_state["scale"]
        params = loss_scale.select(finite, new_params, params)
        opt_state = loss_scale.select(finite, new_opt_state, opt_state)
        return params, opt_state, loss_scale.update(scale_state, finite, dynamic_scale), metrics

    return grad_step


def make_update(config, policy: Policy, optimizer: GradientTransformation, groups=None) -> Callable:
    """``update(params, opt_state, scale_state, batch, generator, hyper) -> (params, opt_state,
    scale_state, metrics)``: ``update_epochs`` passes over the batch in shuffled minibatches of
    fixed size. The permutation comes from the explicit ``generator``; metrics are reduced over
    minibatches (means; counts summed; maxima maxed)."""
    from kernel.precision import parse

    dynamic = parse(config.precision).needs_loss_scale
    grad_step = make_grad_step(policy, optimizer, config.clip_vloss, config.norm_adv, dynamic, groups)
    if config.compile:
        grad_step = torch.compile(grad_step, fullgraph=True)
    batch_size, mb_size = config.batch_size, config.minibatch_size

    def update(params, opt_state, scale_state, batch, generator, hyper):
        device = batch["returns"].device
        history = []
        for _ in range(config.update_epochs):
            perm = torch.randperm(batch_size, generator=generator, device=generator.device).to(device)
            for idx in perm.view(config.num_minibatches, mb_size):
                params, opt_state, scale_state, metrics = grad_step(params, opt_state, scale_state, batch, idx, hyper)
                history.append(metrics)
        return params, opt_state, scale_state, telemetry.reduce_metrics(history)

    update.grad_step = grad_step
    return update


def learning_rate(config, update: int) -> float:
    """CleanRL / PureJaxRL annealing: linear from ``lr`` to 0, stepped once per update."""
    return config.lr * (1.0 - update / config.num_updates) if config.anneal_lr else config.lr


def hyper_tensors(config, update: int, device) -> dict:
    """Values a schedule may change, as 0-d tensors so a new value never recompiles."""
    values = {k: float(getattr(config, k)) for k in ("clip_coef", "ent_coef", "vf_coef")}
    values["lr"] = learning_rate(config, update)
    return {k: torch.tensor(v, device=device) for k, v in values.items()}
