"""On CUDA, the compiled rollout segment and grad step equal their eager runs, for every precision,
for CartPole's feed-forward policy and seedbed's LSTM. Skipped where CUDA is absent; run on a GPU
machine by ``benchmarks/cuda_verify.sh``. Tolerances are those of ``compiled_vs_eager``."""
import pytest
import torch
from compiled_vs_eager import RTOL, assert_same_actions, one_step, shared_batch, signature

from kernel import train as T
from kernel.config import Config
from kernel.tree import leaves

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")

CASES = {
    "cartpole": Config(num_envs=8, num_steps=16, total_steps=8 * 16, num_minibatches=2, update_epochs=1),
    "seedbed": Config.for_env("seedbed", num_envs=8, num_steps=10, total_steps=8 * 10, num_minibatches=2,
                              update_epochs=1, hidden=(32,), lstm_size=16),
}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("env", list(CASES))
def test_compiled_equals_eager(env, precision):
    config = CASES[env].replace(precision=precision, device=DEVICE)
    compiled_run, eager_run = T.build(config), T.build(config.replace(compile=False))
    state = T.init_state(eager_run)
    assert all(x.device.type == DEVICE for x in leaves(state.params))
    batch = shared_batch(eager_run, state)
    compiled, eager = one_step(compiled_run, state, batch), one_step(eager_run, state, batch)
    assert_same_actions(compiled, eager)
    got, want = signature(compiled), signature(eager)
    assert torch.isfinite(want).all()
    rtol = RTOL[precision]
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())


def test_fused_cuda_graph_equals_unfused_and_never_syncs():
    config = CASES["cartpole"].replace(device=DEVICE, update_epochs=2)
    fused_run, eager_run = T.build(config.replace(fuse="on")), T.build(config.replace(compile=False, fuse="off"))
    a = b = T.init_state(eager_run)
    for _ in range(3):  # the first calls compile, warm up and record the CUDA graph; later ones replay it
        a, _ = T.iteration(eager_run, a)
        b, _ = T.iteration(fused_run, b)
    for x, y in zip(leaves(a.params), leaves(b.params)):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)
    action_noise, env_noise, perm_keys = T.fused.draws(fused_run, b.rng)
    torch.compiler.cudagraph_mark_step_begin()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync inside the call raises
    try:
        out = fused_run.fused(b.params, b.opt_state, b.loss_scale, b.carry, action_noise, env_noise, perm_keys, b.step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out[-1]["loss"]).item()
