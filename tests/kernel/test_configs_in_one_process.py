"""Several configurations built in one process each run their own compiled graphs.

The configurations below are built one after another, in this order, in this (pytest) process,
which has compiled other graphs before them. For each, the compiled rollout segment and grad step
must equal the same functions run eagerly, and must be closer to their own eager result than to
any other configuration's: a graph traced for another configuration cannot pass.

Tolerances: fp32 rel 1e-5. Low precision: compiled and eager round the trunk's intermediate results
at different points (inductor keeps fused elementwise chains in float32 and rounds once at the
store; eager rounds after every op), so they may differ by a few units in the last place of the
compute dtype: rel 4 * 2^-8 = 1.6e-2 for bf16, 4 * 2^-11 = 2e-3 for fp16. The head path is float32
in both, so these bounds cover the whole step.
"""
import os
import subprocess
import sys

import pytest
import torch

from kernel import train as T
from kernel.config import Config
from kernel.ppo import hyper_tensors
from kernel.tree import flatten_with_paths, leaves

BASE = Config(num_envs=4, num_steps=8, total_steps=4 * 8 * 2, update_epochs=1, num_minibatches=2,
              hidden=(16, 16), seed=5)
CONFIGS = [
    ("tanh, fp32", {}),
    ("relu", {"activation": "relu"}),
    ("bf16", {"precision": "bf16"}),
    ("fp16", {"precision": "fp16"}),
    ("max_grad_norm 100", {"max_grad_norm": 100.0}),
    ("no value clipping, raw advantages", {"clip_vloss": False, "norm_adv": False}),
    ("per-head entropy coefficient", {"ent_coef_heads": {"action": 0.5}}),
]
RTOL = {"fp32": 1e-5, "bf16": 1.6e-2, "fp16": 2e-3}


def one_step(run, state, batch):
    """Rollout segment from the initial carry, then one grad step on ``batch``'s first minibatch."""
    g = torch.Generator().manual_seed(11)
    _, traj = run.rollout.collect(state["params"], state["carry"], g)
    idx = torch.arange(run.config.batch_size // run.config.num_minibatches)
    hyper = hyper_tensors(run.config, 0, idx.device)
    params, opt_state, _, metrics = run.update.grad_step(state["params"], state["opt_state"], state["loss_scale"],
                                                         batch, idx, hyper)
    return traj, params, opt_state, metrics


def signature(result) -> torch.Tensor:
    """Everything compared, as one float64 vector."""
    traj, params, opt_state, metrics = result
    floats = [traj["values"], traj["head_logp"]["action"], traj["next_values"], metrics["loss"],
              metrics["pg_loss"], metrics["v_loss"], *leaves(params), *leaves(opt_state)]
    return torch.cat([x.detach().double().reshape(-1) for x in floats])


@pytest.fixture(scope="module")
def results():
    out = {}
    for name, changes in CONFIGS:
        config = BASE.replace(**changes)
        compiled_run, eager_run = T.build(config), T.build(config.replace(compile=False))
        state = T.init_state(eager_run)
        _, traj = eager_run.rollout.collect(state["params"], state["carry"], torch.Generator().manual_seed(3))
        adv, ret = eager_run.advantages(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                        traj["truncated"])
        batch = T.make_batch(traj, adv, ret)
        compiled, eager = one_step(compiled_run, state, batch), one_step(eager_run, state, batch)
        out[name] = (config, compiled, eager)
    return out


@pytest.mark.parametrize("name", [name for name, _ in CONFIGS])
def test_compiled_equals_its_own_eager_result(results, name):
    config, compiled, eager = results[name]
    rtol = RTOL[config.precision]
    traj_c, traj_e = compiled[0], eager[0]
    assert torch.equal(traj_c["actions"]["action"], traj_e["actions"]["action"])
    got, want = signature(compiled), signature(eager)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())
    own = (got - want).abs().max()
    for other, (_, _, other_eager) in results.items():
        if other != name:
            assert own < (got - signature(other_eager)).abs().max(), f"{name} ran like {other}"


B_ALONE = """
import sys, torch
from safetensors.torch import save_file
from kernel import train as T
from kernel.config import Config, from_dict
from kernel.tree import flatten_with_paths
torch.set_num_threads(1)
state, _ = T.train(from_dict({config!r}))
save_file(flatten_with_paths(state["params"]), sys.argv[1])
"""


def test_training_b_after_a_equals_b_alone(tmp_path):
    from safetensors.torch import load_file

    a = BASE.replace(total_steps=BASE.batch_size * 2)
    b = a.replace(activation="relu", max_grad_norm=100.0, ent_coef_heads={"action": 0.5}, seed=6)
    path = tmp_path / "b_alone.safetensors"
    subprocess.run([sys.executable, "-c", B_ALONE.format(config=b.to_dict()), str(path)], check=True,
                   cwd=os.getcwd())
    T.train(a)
    state_b, _ = T.train(b)
    alone = load_file(str(path))
    after_a = flatten_with_paths(state_b["params"])
    assert alone.keys() == after_a.keys()
    for key, value in after_a.items():
        assert torch.equal(value, alone[key]), key
