"""Several configurations built in one process each run their own compiled graphs.

The configurations below are built one after another, in this order, in this (pytest) process,
which has compiled other graphs before them. For each, the compiled rollout segment and grad step
must agree with the same functions run eagerly (``compiled_vs_eager.disagreements``: a rollout
segment and eight grad steps with both clips engaged, leaf by leaf), and must fail that assertion
against every other configuration's eager result: a graph traced for another configuration cannot
pass.
"""
import os
import subprocess
import sys

import pytest
import torch
from compiled_vs_eager import disagreements, run_steps, shared_batch, steps_config

from kernel import train as T
from kernel.config import Config
from kernel.tree import flatten_with_paths

BASE = steps_config(Config(num_envs=4, num_steps=16, hidden=(16, 16), seed=5))
CONFIGS = [
    ("tanh, fp32", {}),
    ("relu", {"activation": "relu"}),
    ("bf16", {"precision": "bf16"}),
    ("fp16", {"precision": "fp16"}),
    ("max_grad_norm 100", {"max_grad_norm": 100.0}),
    ("no value clipping, raw advantages", {"clip_vloss": False, "norm_adv": False}),
    ("per-head entropy coefficient", {"ent_coef_heads": {"action": 0.5}}),
]


@pytest.fixture(scope="module")
def results():
    out = {}
    for name, changes in CONFIGS:
        config = BASE.replace(**changes)
        compiled_run, eager_run = T.build(config), T.build(config.replace(compile=False))
        state = T.init_state(eager_run)
        batch = shared_batch(eager_run, state)
        compiled, eager = run_steps(compiled_run, state, batch), run_steps(eager_run, state, batch)
        out[name] = (config, compiled_run, state, batch, compiled, eager)
    return out


@pytest.mark.parametrize("name", [name for name, _ in CONFIGS])
def test_compiled_equals_its_own_eager_result(results, name):
    config, compiled_run, state, batch, compiled, eager = results[name]
    assert disagreements(eager, compiled, state, compiled_run, config, batch) == []
    for other, (other_config, _, _, _, _, other_eager) in results.items():
        if other != name:
            assert disagreements(other_eager, compiled, state, compiled_run, other_config, batch), \
                f"{name} ran like {other}"


B_ALONE = """
import sys, torch
from safetensors.torch import save_file
from kernel import train as T
from kernel.config import Config, from_dict
from kernel.tree import flatten_with_paths
torch.set_num_threads(1)
state = T.make_train(from_dict({config!r})).train().state
save_file(flatten_with_paths(state.params), sys.argv[1])
"""


def test_training_b_after_a_equals_b_alone(tmp_path):
    from safetensors.torch import load_file

    a = BASE.replace(total_steps=BASE.batch_size * 2, update_epochs=1)
    b = a.replace(activation="relu", max_grad_norm=100.0, ent_coef_heads={"action": 0.5}, seed=6)
    path = tmp_path / "b_alone.safetensors"
    subprocess.run([sys.executable, "-c", B_ALONE.format(config=b.to_dict()), str(path)], check=True,
                   cwd=os.getcwd())
    T.make_train(a).train()
    state_b = T.make_train(b).train().state
    alone = load_file(str(path))
    after_a = flatten_with_paths(state_b.params)
    assert alone.keys() == after_a.keys()
    for key, value in after_a.items():
        assert torch.equal(value, alone[key]), key


def symbolic_inputs(graph) -> list:
    """The inputs of a post-grad graph whose size is symbolic (a dynamic-shape graph)."""
    out = []
    for node in graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.SymInt) or (isinstance(value, torch.Tensor)
                                               and any(isinstance(s, torch.SymInt) for s in value.shape)):
            out.append(node.name)
    return out


def test_a_second_build_with_other_shapes_gets_static_graphs():
    """Dynamo keeps its automatic-dynamic record per function name and line, shared by every build's
    code copy: a second build with another num_envs would get graphs with symbolic sizes (slower,
    ``benchmarks/second_build.py``) unless compile_hot asks for static ones. The inductor pass hook
    sees each graph B compiles (it also keeps B's graphs out of the on-disk cache, so they are
    compiled here, not loaded)."""
    import torch._inductor.config as inductor_config

    a = Config(num_envs=4, num_steps=16, hidden=(16, 16), update_epochs=1, num_minibatches=2, total_steps=64 * 4)
    first = T.make_train(a)
    first.iteration(first.init())
    seen = []
    with inductor_config.patch(post_grad_custom_pre_pass=lambda graph: seen.append(symbolic_inputs(graph))):
        second = T.make_train(a.replace(num_envs=8, total_steps=128 * 4))
        second.iteration(second.init())
    assert len(seen) >= 3  # rollout segment, advantages, grad step (forward graphs)
    assert seen == [[]] * len(seen)
