"""Shared by the compiled-vs-eager tests: one rollout segment and one grad step of a built run,
and everything they produce as one float64 vector.

Tolerances: fp32 rel 1e-5. Low precision: compiled and eager round the trunk's intermediate results
at different points (inductor keeps fused elementwise chains in float32 and rounds once at the
store; eager rounds after every op), so they may differ by a few units in the last place of the
compute dtype: rel 4 * 2^-8 = 1.6e-2 for bf16, 4 * 2^-11 = 2e-3 for fp16. The head path is float32
in both, so these bounds cover the whole step.
"""
import torch

from kernel import train as T
from kernel.ppo import hyper_tensors
from kernel.tree import leaves

RTOL = {"fp32": 1e-5, "bf16": 1.6e-2, "fp16": 2e-3}


def shared_batch(eager_run, state) -> dict:
    """One PPO batch from an eager rollout, for both sides to take a grad step on."""
    _, _, batch = T.collect(eager_run, state.params, state.carry, torch.Generator().manual_seed(3))
    return batch


def one_step(run, state, batch) -> tuple:
    """Rollout segment from the initial carry, then one grad step on ``batch``'s first minibatch."""
    _, traj = run.rollout.collect(state.params, state.carry, torch.Generator().manual_seed(11))
    units = run.config.num_envs if run.policy.recurrent else run.config.batch_size
    idx = torch.arange(units // run.config.num_minibatches, device=batch["returns"].device)
    hyper = hyper_tensors(run.config, torch.zeros((), dtype=torch.int64, device=idx.device))
    params, opt_state, _, metrics = run.update.grad_step(state.params, state.opt_state, state.loss_scale, batch, idx,
                                                         hyper)
    return traj, params, opt_state, metrics


def signature(result) -> torch.Tensor:
    """Everything compared, as one float64 vector on the CPU."""
    traj, params, opt_state, metrics = result
    floats = [traj["values"], *leaves(traj["head_logp"]), traj["next_values"], metrics["loss"],
              metrics["pg_loss"], metrics["v_loss"], *leaves(params), *leaves(opt_state)]
    return torch.cat([x.detach().double().reshape(-1).cpu() for x in floats])


def assert_same_actions(compiled, eager) -> None:
    for c, e in zip(leaves(compiled[0]["actions"]), leaves(eager[0]["actions"])):
        assert torch.equal(c, e)
