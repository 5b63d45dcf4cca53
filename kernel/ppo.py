"""PPO: advantages, the clipped loss, and the gradient step. Reads top to bottom like CleanRL.

The gradient + optimizer step is one pure function ``(params, opt_state, scale, batch, idx, hyper)
-> (params, opt_state, scale, metrics)``. Minibatch indices and every hyperparameter (learning
rate, clip range, coefficients, gamma and lambda) enter as tensors (:func:`hyper_tensors`), so a
new value never recompiles; metrics stay on device as tensors until someone logs them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad_and_value

from kernel import heads, telemetry
from kernel.loop import loop
from kernel.loss_scale import all_finite
from kernel.optim import GradientTransformation, apply_updates, linear_schedule
from kernel.policy import Policy, masks
from kernel.tree import flatten, tree_map, unflatten

# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------

def deltas_and_decay(rewards, values, next_values, terminated, truncated, gamma: float, lam: float):
    """TD errors and per-step decay of the advantage recursion ``A[t] = delta[t] + decay[t] * A[t+1]``.

    ``next_values[t]`` is the value of the observation that followed step t *before* any
    auto-reset. Termination cuts the bootstrap (the episode's future is worth 0); truncation keeps
    it (the episode was only stopped by the clock), and either one ends the advantage recursion.
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    return deltas, (gamma * lam) * not_done


# Up to this many steps the compiled recursion is unrolled (inductor fuses the whole chain into one
# loop over envs); longer segments use a reverse scan, whose compile time does not grow with the
# length. benchmarks/README.md has the measured costs.
UNROLL_MAX_STEPS = 256

# Segments up to this many elements in their [N, T, T] recursion matrix solve it as one triangular
# system instead of a T-step loop (16 MiB in float32).
SOLVE_MAX_ELEMENTS = 1 << 22


def gae(rewards, values, next_values, terminated, truncated, gamma, lam, scanned: bool = False):
    """Generalised advantage estimates and returns over ``[T, N]`` trajectories: the recursion
    backwards in time. Solved as one upper-bidiagonal triangular system per sub-environment where
    its ``[N, T, T]`` matrix is small (:data:`SOLVE_MAX_ELEMENTS`), otherwise a Python loop (eager,
    or unrolled in a graph) or (``scanned``) a scan. ``gamma`` and ``lam`` are floats or 0-d
    tensors."""
    deltas, decay = deltas_and_decay(rewards, values, next_values, terminated, truncated, gamma, lam)
    steps, envs = deltas.shape[0], deltas[0].numel()
    if steps * steps * envs <= SOLVE_MAX_ELEMENTS:
        advantages = solved_recursion(deltas, decay)
        return advantages, advantages + values

    def body(next_adv, x):
        adv = torch.addcmul(x[0], x[1], next_adv)
        return adv, adv

    _, advantages = loop(body, torch.zeros_like(deltas[0]), (deltas.flip(0), decay.flip(0)), scanned)
    advantages = advantages.flip(0)
    return advantages, advantages + values


def solved_recursion(deltas: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """``A`` with ``A[t] = deltas[t] + decay[t] * A[t+1]`` (``A[T] = 0``) for ``[T, ...]`` inputs: the
    recursion is the system ``(I - diag(decay[:-1], +1)) A = deltas``, whose back substitution is
    the recursion itself. One library call, where a loop is T small ops (eager) or a long unrolled
    graph (compiled: most of a cold compile's seconds)."""
    shape = deltas.shape
    d = decay.reshape(shape[0], -1).T  # [N, T]
    system = torch.diag_embed(torch.ones_like(d)) - torch.diag_embed(d[:, :-1], offset=1)
    solved = torch.linalg.solve_triangular(system, deltas.reshape(shape[0], -1).T.unsqueeze(-1), upper=True)
    return solved.squeeze(-1).T.reshape(shape)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over the last axis; NaN when the returns do not vary."""
    var = returns.var(-1)
    return torch.where(var == 0, torch.full_like(var, float("nan")), 1 - (returns - values).var(-1) / var)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-8)


TIME_MAJOR = ("obs", "starts", "actions", "head_logp", "values", "advantages", "returns")


def evaluate(policy: Policy, params, batch: dict):
    """New logits and values for a minibatch, plus the minibatch fields flattened to match.

    Feed-forward minibatches are flat rows. Recurrent ones are ``[T, n]`` (whole env columns, time
    contiguous) replayed from their stored initial state ``hidden0``, then flattened.
    """
    if not policy.recurrent:
        logits, value = policy.sequence(params, batch["obs"], {}, None)
        return logits, value, batch
    logits, value = policy.sequence(params, batch["obs"], batch["hidden0"], batch["starts"])
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    rows = tree_map(flat, {k: batch[k] for k in TIME_MAJOR if k in batch})
    return tree_map(flat, logits), flat(value), rows


def ppo_loss(params, batch: dict, hyper: dict, policy: Policy, clip_vloss: bool = True, norm_adv: bool = True,
             norm_entropy: bool = False, head_average: str = "decisions"):
    """Clipped-surrogate PPO loss over factored actions; returns ``(loss, metrics)`` as tensors.

    ``batch``: obs (tensor, or dict with "x" and "masks"), actions and head_logp (dicts per head),
    values, advantages, returns; recurrent minibatches add starts and hidden0.
    ``hyper``: 0-d tensors clip_coef, ent_coef, vf_coef, ``ent_coef/<head>`` (added to the global
    coefficient), and lr (read by the optimizer).

    Each head has its own ratio and clipped surrogate, averaged over its decision steps (relevant,
    with more than one valid action; ``head_average="relevant"`` averages over every relevant step,
    forced ones included, which only dilutes the mean); the policy loss is their sum. With one
    always-relevant head this is textbook PPO.
    """
    spec = policy.spec
    logits, value, b = evaluate(policy, params, batch)
    obs_masks = masks(b["obs"])
    new_logp = heads.log_probs(spec, logits, b["actions"], obs_masks)
    entropy_fn = heads.normalized_entropies if norm_entropy else heads.entropies
    head_entropy = entropy_fn(spec, logits, b["actions"], obs_masks)
    relevant = heads.relevance(spec, b["actions"])
    decided = heads.decisions(spec, b["actions"], obs_masks)
    weights = decided if head_average == "decisions" else relevant
    if not norm_adv:
        adv = b["advantages"]
    elif "adv_mean" in hyper:  # statistics of the minibatch across data-parallel ranks
        adv = (b["advantages"] - hyper["adv_mean"]) / (hyper["adv_std"] + 1e-8)
    else:
        adv = normalize(b["advantages"])
    clip = hyper["clip_coef"]

    metrics = {}
    pg_loss = entropy = entropy_bonus = joint_log_ratio = 0.0
    for h in spec.heads:
        r = weights[h.name]
        log_ratio = new_logp[h.name] - b["head_logp"][h.name]
        ratio = log_ratio.exp()
        surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip))
        head_ent = heads.masked_mean(head_entropy[h.name], r)
        pg_loss = pg_loss + heads.masked_mean(surrogate, r)
        entropy = entropy + head_ent
        entropy_bonus = entropy_bonus + (hyper["ent_coef"] + hyper.get(f"ent_coef/{h.name}", 0.0)) * head_ent
        joint_log_ratio = joint_log_ratio + log_ratio * r
        if len(spec.heads) > 1:
            metrics[f"head/{h.name}/approx_kl"] = heads.masked_mean((ratio - 1) - log_ratio, r).detach()
            metrics[f"head/{h.name}/clip_frac"] = heads.masked_mean(((ratio - 1.0).abs() > clip).float(), r).detach()
            metrics[f"head/{h.name}/entropy"] = head_ent.detach()
        metrics[f"head/{h.name}/relevant"] = relevant[h.name].sum().detach()  # in this minibatch
        metrics[f"head/{h.name}/decisions"] = decided[h.name].sum().detach()

    v_loss_unclipped = (value - b["returns"]) ** 2
    if clip_vloss:
        v_clipped = b["values"] + (value - b["values"]).clamp(-clip, clip)
        v_loss = 0.5 * torch.maximum(v_loss_unclipped, (v_clipped - b["returns"]) ** 2).mean()
    else:
        v_loss = 0.5 * v_loss_unclipped.mean()

    loss = pg_loss - entropy_bonus + hyper["vf_coef"] * v_loss
    joint_ratio = joint_log_ratio.exp()
    metrics.update({
        "loss": loss.detach(),
        "pg_loss": pg_loss.detach(),
        "v_loss": v_loss.detach(),
        "entropy": entropy.detach(),
        # (r - 1) - log r: the low-variance KL estimator (Schulman), always >= 0.
        "approx_kl": ((joint_ratio - 1) - joint_log_ratio).mean().detach(),
        "clip_frac": ((joint_ratio - 1.0).abs() > clip).float().mean().detach(),
    })
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Update
# ---------------------------------------------------------------------------------------------

def minibatch(batch: dict, idx: torch.Tensor, recurrent: bool) -> dict:
    """Rows ``idx`` of a flat batch, or env columns ``idx`` of a ``[T, N]`` recurrent batch."""
    if not recurrent:
        return tree_map(lambda x: x[idx], batch)
    mb = {k: tree_map(lambda x: x[:, idx], v) for k, v in batch.items() if k != "hidden0"}
    mb["hidden0"] = tree_map(lambda x: x[idx], batch["hidden0"])
    return mb


def shuffle_units(config, recurrent: bool) -> int:
    """How many units an epoch shuffles into minibatches: batch rows, or (recurrent) whole env
    columns, so that time stays contiguous for replay."""
    return config.num_envs if recurrent else config.batch_size


OPTIMIZER_HYPER = ("lr", "max_grad_norm")


def make_grad_step(policy: Policy, optimizer: GradientTransformation, clip_vloss: bool, norm_adv: bool,
                   groups=None, norm_entropy: bool = False, head_average: str = "decisions",
                   foreach: bool = True, tape: bool = False) -> Callable:
    """``grad_step(params, opt_state, scale, batch, idx, hyper) -> (params, opt_state, scale,
    metrics)``: gather rows ``idx`` of the batch, take the gradient of the loss scaled by ``scale``
    (a :mod:`kernel.loss_scale` value), unscale it and hand it to ``optimizer``. Wrapped in
    :func:`kernel.optim.apply_if_finite`, the optimizer skips a step whose loss or gradient is
    not finite; the loss scale adjusts to the same verdict. ``foreach=False`` (needed under
    ``torch.func.vmap``) applies the updates leaf by leaf. ``tape=True`` (eager, outside any
    ``torch.func`` transform) takes the same gradients with ``torch.autograd.grad`` on leaf copies of
    the params: ``grad_and_value`` wraps every tensor of every op, which at RL sizes costs about as
    much as the maths; compiled, the transform is traced away and costs nothing."""

    head_names = tuple(h.name for h in policy.spec.heads)  # read here: older dynamo cannot trace the property

    def scaled_loss(params, mb, hyper, scale):
        loss, metrics = ppo_loss(params, mb, hyper, policy, clip_vloss, norm_adv, norm_entropy, head_average)
        return scale.scale(loss), (loss, metrics)

    def gradients(params, scale, batch, idx, hyper):
        """``(grads, loss, metrics)`` of minibatch ``idx``, grads unscaled."""
        mb = minibatch(batch, idx, policy.recurrent)
        take = taped_grad_and_value if tape else grad_and_value
        grads, (_, (loss, metrics)) = take(scaled_loss, has_aux=True)(params, mb, hyper, scale)
        return scale.unscale(grads), loss, metrics

    def apply(params, opt_state, scale, grads, loss, metrics, hyper):
        """The optimizer step for ``grads`` (skipped when they or ``loss`` are not finite)."""
        finite = all_finite(grads) & torch.isfinite(loss)
        # The optimizer reads the learning rate (and, when it differs per run, max_grad_norm) from hyper.
        opt_hyper = {k: hyper[k] for k in OPTIMIZER_HYPER if k in hyper}
        updates, opt_state = optimizer.update(grads, opt_state, params, finite=finite, **opt_hyper)
        metrics.update(telemetry.grad_stats(grads, params, updates, groups or telemetry.default_groups(params)))
        for h in head_names:  # so the gradient table can tell "not relevant" and "forced" from "dead"
            for count in ("relevant", "decisions"):
                metrics[f"grad/heads.{h}/{count}"] = metrics.pop(f"head/{h}/{count}")
        metrics["skipped"] = (~finite).float()
        metrics["loss_scale"] = scale.value(loss.device)
        return apply_updates(params, updates, foreach), opt_state, scale.adjust(finite), metrics

    def grad_step(params, opt_state, scale, batch, idx, hyper):
        grads, loss, metrics = gradients(params, scale, batch, idx, hyper)
        return apply(params, opt_state, scale, grads, loss, metrics, hyper)

    # Separately, for data parallelism: gradients on each rank, all-reduce, then the same apply.
    grad_step.gradients, grad_step.apply = gradients, apply
    grad_step.taped = tape
    return grad_step


def global_advantage_stats(advantages: torch.Tensor, perms: torch.Tensor, recurrent: bool, world) -> dict:
    """Mean and (unbiased) std over all ranks of every minibatch's advantages (``perms``: ``[steps,
    size]``), ``[steps]`` each, from one all-reduce of sums, sums of squares and counts: what the
    loss normalizes with instead of this rank's minibatch alone."""
    # Feed-forward rows are flat; recurrent minibatches are env columns of [T, N].
    picked = advantages[perms] if not recurrent else advantages[:, perms].movedim(0, -1)
    dims = tuple(range(1, picked.dim()))
    count = torch.full(perms.shape[:1], picked[0].numel(), dtype=picked.dtype, device=picked.device)
    total, total_sq, n = world.sum(torch.stack([picked.sum(dims), (picked * picked).sum(dims), count])).unbind(0)
    mean = total / n
    var = (total_sq - n * mean * mean) / (n - 1)
    return {"adv_mean": mean, "adv_std": var.clamp(min=0).sqrt()}


def taped_grad_and_value(fn: Callable, has_aux: bool = True) -> Callable:
    """``torch.func.grad_and_value(fn, has_aux=True)`` by autograd's tape, for eager calls: the
    gradient of ``fn(params, ...)[0]`` with respect to ``params``' floating leaves (zeros where the
    value does not depend on one, as ``torch.func`` gives), and the value and aux, detached. The
    gradients keep ``params``' structure and key order."""
    if not has_aux:
        raise ValueError("taped_grad_and_value takes functions that return (value, aux)")

    def wrapped(params, *args):
        with torch.enable_grad():
            found, spec = flatten(tree_map(lambda x: x.detach().requires_grad_(True), params))
            value, aux = fn(unflatten(spec, found), *args)
            grads = torch.autograd.grad(value, found, allow_unused=True, materialize_grads=True)
        # The loss's metrics come detached already: a second detach per metric is a second op each.
        detached = lambda x: x.detach() if isinstance(x, torch.Tensor) and x.requires_grad else x
        return unflatten(spec, list(grads)), (value.detach(), tree_map(detached, aux))

    return wrapped


HYPER = ("clip_coef", "ent_coef", "vf_coef", "max_grad_norm", "gamma", "gae_lambda")


def hyper_tensors(config, update: torch.Tensor, group=None) -> dict:
    """The values the loss, the optimizer and the advantages read, as tensors on ``update``'s
    device, so a new value never recompiles: the learning rate at PPO update ``update`` (0-d int64)
    and the coefficients. With a ``group`` (:class:`kernel.group.Group`) each is a ``[runs]``
    tensor of the runs' values (swept, or the config's)."""
    device = update.device
    if group is None:
        value = lambda k: torch.tensor(float(getattr(config, k)), device=device)
        per_head = lambda c: torch.tensor(float(c), device=device)
    else:
        value = lambda k: torch.tensor([float(v) for v in group.values.get(k, (getattr(config, k),) * group.count)],
                                       device=device)
        per_head = lambda c: torch.full((group.count,), float(c), device=device)
    hyper = {k: value(k) for k in HYPER}
    hyper.update({f"ent_coef/{h}": per_head(c) for h, c in config.ent_coef_heads.items()})
    base = value("lr")
    hyper["lr"] = linear_schedule(base, 0.0, config.num_updates)(update) if config.anneal_lr else base
    return hyper
