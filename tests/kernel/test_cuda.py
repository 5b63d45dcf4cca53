"""On CUDA: the compiled rollout segment and grad steps agree with their eager runs, and the fused
iteration (one CUDA graph) agrees with the unfused eager one, for every precision, for CartPole's
feed-forward policy and seedbed's LSTM, with the leaf-by-leaf assertion of the CPU tests
(``kernel.agree``). Skipped where CUDA is absent; run on a GPU machine by
``benchmarks/cuda_verify.sh``, whose committed log says whether and where they last ran."""
import pytest
import torch
from compiled_vs_eager import disagreements, run_steps, shared_batch, steps_config

from kernel import agree
from kernel import train as T
from kernel.config import Config
from kernel.tree import leaves

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")

CASES = {
    "cartpole": Config(num_envs=4, num_steps=16, hidden=(16, 16), seed=5),
    "seedbed": Config.for_env("seedbed", num_envs=4, num_steps=8, hidden=(32,), lstm_size=16, seed=5),
}
FUSED_ITERATIONS = 3


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 matrix products in float32 (not TF32) on both sides, as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("env", list(CASES))
def test_compiled_equals_eager(env, precision):
    config = steps_config(CASES[env].replace(precision=precision, device=DEVICE))
    compiled_run, eager_run = T.build(config), T.build(config.replace(compile=False))
    state = T.init_state(eager_run)
    assert all(x.device.type == DEVICE for x in leaves(state.params))
    batch = shared_batch(eager_run, state)
    compiled, eager = run_steps(compiled_run, state, batch), run_steps(eager_run, state, batch)
    assert disagreements(eager, compiled, state, compiled_run, config, batch) == []


@pytest.mark.parametrize("env,precision", [("cartpole", "fp32"), ("cartpole", "bf16"), ("cartpole", "fp16"),
                                           ("seedbed", "bf16")])
def test_fused_cuda_graph_equals_unfused_and_never_syncs(env, precision):
    config = CASES[env].replace(device=DEVICE, precision=precision, update_epochs=2, num_minibatches=2,
                                total_steps=CASES[env].batch_size * 50)
    fused_run, eager_run = T.build(config.replace(fuse="on")), T.build(config.replace(compile=False, fuse="off"))
    start = a = b = T.init_state(eager_run)
    for _ in range(FUSED_ITERATIONS):  # the first calls compile, warm up and record the CUDA graph
        a, metrics_a = T.iteration(eager_run, a)
        b, metrics_b = T.iteration(fused_run, b)
    tol = agree.TOLERANCE[precision]
    assert agree.state_disagreements(a, b, start, tol) == []
    names = ("loss", "v_loss", "entropy", "lr", "skipped_total")
    assert agree.output_disagreements({k: metrics_a[k] for k in names}, metrics_b, tol) == []
    action_noise, env_noise, perm_keys = T.draws(fused_run, b.rng)
    hyper = T.hyper_tensors(config, b.step)
    torch.compiler.cudagraph_mark_step_begin()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync inside the call raises
    try:
        out = fused_run.whole(b.params, b.opt_state, b.loss_scale, b.carry, action_noise, env_noise, perm_keys, hyper)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out[-1]["loss"]).item()
