"""The training loop's compile options keep the guards that matter: a new shape or dtype recompiles
instead of running a graph built for other inputs."""
import torch
import torch._dynamo

from kernel.hot import compile_hot, hot_options


def scaled_sum(params, x):
    return (params["w"] * x).sum(-1) + params["b"]


def test_compile_hot_recompiles_on_new_shapes_and_dtypes():
    torch._dynamo.reset()
    f = compile_hot(scaled_sum)
    params = {"w": torch.arange(3.0), "b": torch.tensor(1.0)}
    for x in (torch.ones(2, 3), torch.full((2, 3), 2.0), torch.ones(5, 3), torch.ones(5, 3, dtype=torch.float64)):
        torch.testing.assert_close(f(params, x), scaled_sum(params, x))
    params = {"w": torch.arange(4.0), "b": torch.tensor(0.5)}
    x = torch.ones(2, 4)
    torch.testing.assert_close(f(params, x), scaled_sum(params, x))


def test_cpu_only_options_stay_off_cuda():
    assert hot_options("cpu")["cpp_wrapper"] and hot_options("cpu")["cpp.use_decompose_tanh"]
    assert "cpp_wrapper" not in hot_options("cuda") and "cpp.use_decompose_tanh" not in hot_options("cuda")
