"""The fused iteration (kernel.fused) against the unfused eager one, the plain reference: same
noise, same numbers, after several iterations, for CartPole's MLP and seedbed's LSTM policy in
float32 and bfloat16. Eagerly (its loops as Python loops: the batch, advantages, hyperparameters,
draws and metrics of the fused function) for every case, and compiled (the ``scan``s, one graph)
for two: a compile of the whole iteration takes about a minute on a cold cache."""
from __future__ import annotations

import pytest
import torch

from kernel.config import Config
from kernel.fused import fuse_reason, permutations
from kernel.hot import fused_pays
from kernel.train import build, init_state, iteration
from kernel.tree import flatten_with_paths

ITERATIONS = 3
CASES = {
    "cartpole": dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2),
    "seedbed": dict(num_envs=4, num_steps=5, num_minibatches=2, update_epochs=2, hidden=(32,), lstm_size=16),
}


def run_both(env: str, precision: str, compile_fused: bool):
    config = Config.for_env(env, precision=precision, total_steps=10_000, **CASES[env])
    unfused = build(config.replace(fuse="off", compile=False))
    fused = build(config.replace(fuse="on", compile=compile_fused))
    assert unfused.fused is None and fused.fused is not None
    a = b = init_state(unfused)
    for _ in range(ITERATIONS):
        a, metrics_a = iteration(unfused, a)
        b, metrics_b = iteration(fused, b)
    return a, b, metrics_a, metrics_b


def assert_same(a, b, metrics_a, metrics_b, atol, carry_atol=None):
    """``carry_atol``: the tolerance of the rollout carry (a bfloat16 trunk's LSTM state is
    rounded to bfloat16, so compiled and eager may differ by an ulp there)."""
    for part in ("params", "opt_state", "carry"):
        tol = carry_atol if part == "carry" and carry_atol else atol
        left, right = flatten_with_paths(getattr(a, part)), flatten_with_paths(getattr(b, part))
        assert left.keys() == right.keys()
        for path in left:
            torch.testing.assert_close(right[path], left[path], atol=tol, rtol=tol, msg=f"{part}.{path}")
    assert torch.equal(a.rng, b.rng) and torch.equal(a.step, b.step)
    scalars = [k for k, v in metrics_a.items() if isinstance(v, torch.Tensor) and v.dim() == 0]
    assert set(scalars) <= set(metrics_b)
    for k in scalars:
        torch.testing.assert_close(metrics_b[k].float(), metrics_a[k].float(), atol=10 * atol, rtol=10 * atol,
                                   equal_nan=True, msg=k)
    for k in ("return", "length", "done"):
        torch.testing.assert_close(metrics_b["episodes"][k], metrics_a["episodes"][k])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("env", ["cartpole", "seedbed"])
def test_fused_eager_equals_unfused(env, precision):
    assert_same(*run_both(env, precision, compile_fused=False), atol=1e-6)


@pytest.mark.parametrize("env,precision", [("cartpole", "fp32"), ("seedbed", "bf16")])
def test_compiled_fused_equals_unfused(env, precision):
    # Compiled kernels round differently from eager ones; after a few updates that stays small
    # (two bfloat16 ulps where a bfloat16 trunk computed the value).
    if precision == "fp32":
        assert_same(*run_both(env, precision, compile_fused=True), atol=1e-4)
    else:
        assert_same(*run_both(env, precision, compile_fused=True), atol=2e-3, carry_atol=1.6e-2)


def test_permutations_are_the_unfused_minibatches():
    keys = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    perms = permutations(keys, 4)
    assert perms.shape == (6, 4)
    for e in range(3):
        assert torch.equal(torch.cat([perms[2 * e], perms[2 * e + 1]]).sort().values, torch.arange(8))
        assert torch.equal(torch.cat([perms[2 * e], perms[2 * e + 1]]), keys[e].argsort())


def test_fuse_choice():
    config = Config(total_steps=512 * 5000)  # long enough for fusing to pay on CPU
    assert fuse_reason(config, False, object())[0] == fused_pays("cpu")
    assert fuse_reason(config.replace(compile=False), False, object())[0] is False
    assert fuse_reason(config.replace(fuse="off"), False, object())[0] is False
    assert fuse_reason(config, True, object()) == (False, "data-parallel ranks all-reduce between minibatch steps")

    class Eager:
        compilable = False

    with pytest.raises(ValueError, match="fuse='on' is not possible here: cartpole steps in Python"):
        fuse_reason(config.replace(fuse="on"), False, Eager())
    with pytest.raises(ValueError, match="fuse must be"):
        config.replace(fuse="yes")
