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
