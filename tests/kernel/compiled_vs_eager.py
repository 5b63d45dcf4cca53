"""Shared by the compiled-vs-eager tests: a rollout segment and several grad steps of a built run,
and the assertion that two such results agree (``kernel.agree``: leaf by leaf, each on its own
scale, plus the structural checks).

The grad steps run on a batch collected with the starting params, so from the second step on the
params have moved and the policy ratio is not 1; :data:`SETTINGS` (a large learning rate, a small
clip coefficient) make the ratio clip and the value clip engage (``test_the_tests`` checks that
they do), and the hyperparameters are those of an update halfway through the run, so a schedule
that is not followed shows. Any config built with ``steps_config`` gets these settings.
"""
from __future__ import annotations

from typing import NamedTuple

import structural
import torch

from kernel import agree, heads
from kernel import train as T
from kernel.policy import masks
from kernel.ppo import evaluate, hyper_tensors, minibatch
from kernel.tree import leaves

# Large steps and a narrow clip: ratios leave [1 - clip, 1 + clip] within the first epochs.
SETTINGS = dict(lr=1e-2, clip_coef=0.03, update_epochs=4, num_minibatches=2)
UPDATES = 8  # the run's length in updates; the steps take the hyperparameters of update UPDATES // 2


def steps_config(config):
    """``config`` with :data:`SETTINGS` and a run of :data:`UPDATES` updates, each stage compiled on
    its own (never fused: the steps are called one by one)."""
    config = config.replace(**SETTINGS, fuse="off")
    return config.replace(total_steps=config.batch_size * UPDATES)


class Result(NamedTuple):
    state: object  # the TrainState after the grad steps (carry: after the rollout segment)
    outputs: dict  # name -> tensor: the segment's values, log-probs, next values; each step's losses
    actions: list  # the segment's sampled actions
    params_seen: list  # the params each grad step started from


def hyper(config) -> dict:
    return hyper_tensors(config, torch.tensor(UPDATES // 2, device=config.device))


def permutations(config, recurrent: bool) -> torch.Tensor:
    units = config.num_envs if recurrent else config.batch_size
    keys = torch.rand(config.update_epochs, units, generator=torch.Generator().manual_seed(7))
    return keys.argsort(1).reshape(-1, units // config.num_minibatches).to(config.device)


def shared_batch(eager_run, state) -> dict:
    """One PPO batch from an eager rollout, for both sides to take their grad steps on."""
    _, _, batch = T.collect(eager_run, state.params, state.carry, torch.Generator().manual_seed(3))
    return batch


def run_steps(run, state, batch, step_hyper: dict | None = None) -> Result:
    """The rollout segment from ``state``'s carry, then every (epoch, minibatch) grad step on
    ``batch`` from ``state``'s params, with the hyperparameters of the middle update."""
    noise = run.rollout.noise(torch.Generator().manual_seed(11))
    with torch.no_grad():
        carry, traj = run.stages.segment(state.params, state.carry, *noise)
    outputs = {"rollout.values": traj["values"], "rollout.next_values": traj["next_values"]}
    outputs.update({f"rollout.logp.{h}": v for h, v in traj["head_logp"].items()})
    step_hyper = step_hyper if step_hyper is not None else hyper(run.config)
    params, opt_state, scale, seen = state.params, state.opt_state, state.loss_scale, []
    for k, idx in enumerate(permutations(run.config, run.policy.recurrent)):
        seen.append(params)
        params, opt_state, scale, metrics = run.stages.grad_step(params, opt_state, scale, batch, idx, step_hyper)
        for name in ("loss", "pg_loss", "v_loss", "entropy", "skipped", "loss_scale"):
            outputs[f"step{k}.{name}"] = metrics[name]
        for name in [n for n in metrics if n.startswith("head/") and n.endswith("/entropy")]:
            outputs[f"step{k}.{name}"] = metrics[name]
    return Result(state._replace(params=params, opt_state=opt_state, loss_scale=scale, carry=carry), outputs,
                  leaves(traj["actions"]), seen)


def tolerance(config) -> agree.Tolerance:
    return agree.TOLERANCE[config.precision.name]


def disagreements(want: Result, got: Result, start, got_run, config, batch) -> list:
    """Everything in which ``got`` (from ``got_run``) differs from the reference ``want`` for a run
    of ``config``, one line each: leaves and outputs beyond ``config``'s tolerance, other actions,
    a loss not made of ``config``'s terms, a trunk not computed in ``config``'s dtype."""
    tol = tolerance(config)
    problems = [f"rollout actions differ ({i})" for i, (a, b) in enumerate(zip(want.actions, got.actions))
                if not torch.equal(a, b)]
    problems += agree.state_disagreements(want.state, got.state, start, tol)
    # The policy loss's terms are normalized advantages times ratios near 1: its own scale is 1,
    # whatever its mean (about 0 at the first step).
    scales = {name: torch.ones(()) for name in want.outputs if name.endswith(".pg_loss")}
    problems += agree.output_disagreements(want.outputs, got.outputs, tol, scales)
    head_names = tuple(h.name for h in got_run.policy.spec.heads)
    problems += structural.loss_problems(got.outputs, hyper(config), head_names)
    trunk = structural.trunk_dtype_problem(got_run.policy, config.precision, start.params, batch)
    return problems + ([trunk] if trunk else [])


def clip_engagement(run, batch, result: Result) -> dict:
    """How the reference's steps met the clips: the fraction of (step, row) pairs whose ratio was
    clipped, of those whose value was clipped, and the closest any ratio came to a clip edge."""
    clip = run.config.clip_coef
    ratio_clipped = value_clipped = total = 0
    margin = float("inf")
    for params, idx in zip(result.params_seen, permutations(run.config, run.policy.recurrent)):
        with torch.no_grad():
            logits, value, b = evaluate(run.policy, params, minibatch(batch, idx, run.policy.recurrent))
            logp = heads.log_probs(run.policy.spec, logits, b["actions"], masks(b["obs"]))
        for h, new in logp.items():
            distance = ((new - b["head_logp"][h]).exp() - 1).abs() - clip
            ratio_clipped += int((distance > 0).sum())
            margin = min(margin, float(distance.abs().min()))
        value_clipped += int(((value - b["values"]).abs() > clip).sum())
        total += value.numel()
    return {"ratio_clipped": ratio_clipped / total, "value_clipped": value_clipped / total, "edge_margin": margin}
