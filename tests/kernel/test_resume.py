"""A resumed run equals an uninterrupted one, bit for bit; bad checkpoints are refused clearly."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import envs
from envs.base import ActionSpec, Head
from envs.cartpole import CartPole
from kernel import checkpoint
from kernel import train as T
from kernel.checkpoint import CheckpointError
from kernel.config import Config
from kernel.resume import Checkpointer, latest_checkpoint, restore_state, save_state, state_sections
from kernel.state import Progress, TrainState
from kernel.tree import leaves

SMALL = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 4, update_epochs=2, num_minibatches=2,
               hidden=(16, 16), seed=11)


def assert_states_equal(a, b):
    (state_a, progress_a), (state_b, progress_b) = a, b
    assert type(state_a) is type(state_b) and type(state_a.loss_scale) is type(state_b.loss_scale)
    flat_a = checkpoint.flatten_sections(state_sections(state_a, progress_a))
    flat_b = checkpoint.flatten_sections(state_sections(state_b, progress_b))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert flat_a[k].dtype == flat_b[k].dtype and flat_a[k].device == flat_b[k].device, k
        assert torch.equal(flat_a[k], flat_b[k]), k
    assert progress_a == progress_b


def logged(train, **kw):
    logs = []
    result = train.train(on_update=logs.append, **kw)
    return (result.state, result.progress), {log.update: log.metrics for log in logs}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_resume_equals_uninterrupted_run(tmp_path, compiled):
    cfg = SMALL.replace(compile=compiled)
    straight, straight_metrics = logged(T.make_train(cfg))

    first = Checkpointer(tmp_path, every=2, keep=2)
    T.make_train(cfg).train(checkpointer=first, until_update=2)
    train = T.make_train(cfg)
    state, progress = restore_state(latest_checkpoint(tmp_path), train.built, train.init())
    assert progress.update == 2 and int(state.step) == 2
    resumed, resumed_metrics = logged(train, state=state, progress=progress)

    assert_states_equal(straight, resumed)
    assert sorted(resumed_metrics) == [3, 4]
    for u in (3, 4):
        assert resumed_metrics[u] == straight_metrics[u]


def test_round_trip_of_every_state_field(tmp_path):
    cfg = SMALL.replace(compile=False, precision="fp16", num_steps=8, total_steps=4 * 8 * 4)
    train = T.make_train(cfg)
    result = train.train(until_update=2)
    state = result.state
    assert state.loss_scale.loss_scale.item() < 2.0 ** 16  # fp16's first steps shrank the scale
    assert len(result.progress.returns) > 0
    path = save_state(tmp_path / "s.safetensors", cfg, state, result.progress)
    back, progress = restore_state(path, train.built, train.init(seed=99))
    assert_states_equal((state, result.progress), (back, progress))
    for field in TrainState._fields:  # field by field, named tuples kept
        assert type(getattr(back, field)) is type(getattr(state, field)), field
        for a, b in zip(leaves(getattr(back, field)), leaves(getattr(state, field))):
            assert a.dtype == b.dtype and torch.equal(a, b), field
    # The restored run continues exactly as the original would.
    next_back, next_state = train.iteration(back)[0], train.iteration(state)[0]
    assert all(torch.equal(a, b) for a, b in zip(leaves(next_back), leaves(next_state)))


def test_iteration_leaves_its_input_state_untouched():
    for cfg in (SMALL.replace(compile=False),
                Config.for_env("seedbed", num_envs=4, num_steps=5, total_steps=4 * 5 * 2, num_minibatches=2,
                               update_epochs=1, hidden=(16,), lstm_size=8, compile=False, precision="fp16")):
        train = T.make_train(cfg)
        state = train.init()
        before = [x.clone() for x in leaves(state)]
        after, _ = train.iteration(state)
        assert all(torch.equal(a, b) for a, b in zip(before, leaves(state)))
        assert int(after.step) == 1 and int(after.rng) != int(state.rng)
        # Pure: the same state gives the same next state.
        again, _ = train.iteration(state)
        assert all(torch.equal(a, b) for a, b in zip(leaves(after), leaves(again)))


def test_seeds_give_different_runs_and_a_seed_the_same_run():
    train = T.make_train(SMALL.replace(compile=False))
    a, b, a_again = train.init(seed=1), train.init(seed=2), train.init(seed=1)
    assert not torch.equal(a.params["heads"]["action"]["w"], b.params["heads"]["action"]["w"])
    assert all(torch.equal(x, y) for x, y in zip(leaves(a), leaves(a_again)))


class WidePole(CartPole):
    """CartPole with a third (do-nothing-different) action: a different network shape."""
    name = "widepole"
    action_spec = ActionSpec((Head("action", 3),))


def test_checkpoint_of_another_env_or_size_is_refused_with_every_difference(tmp_path, monkeypatch):
    monkeypatch.setitem(envs.REGISTRY, "widepole", WidePole)
    cfg = SMALL.replace(compile=False)
    wide = cfg.replace(env="widepole")
    wide_train = T.make_train(wide)
    path = save_state(tmp_path / "wide.safetensors", wide, wide_train.init(), Progress())
    train = T.make_train(cfg)
    with pytest.raises(CheckpointError) as err:
        restore_state(path, train.built, train.init())
    msg = str(err.value)
    assert "does not match" in msg and "params/heads.action.w" in msg
    assert "opt_state/inner.adam.mu.heads.action.w" in msg
    assert "\n" not in msg

    bigger = cfg.replace(hidden=(32, 16))
    path = save_state(tmp_path / "big.safetensors", bigger, T.make_train(bigger).init(), Progress())
    with pytest.raises(CheckpointError, match=r"shape of params/trunk.actor.l0.w is \[32, 4\], expected \[16, 4\]"):
        restore_state(path, train.built, train.init())


def test_sigkill_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    """A real writer process is killed after writing the temp file, before the rename."""
    target = tmp_path / "ck.safetensors"
    checkpoint.save(target, {"params": {"w": torch.ones(3)}}, {"update": 1})
    script = textwrap.dedent(f"""
        import os, signal, torch
        from kernel import checkpoint
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save({str(target)!r}, {{"params": {{"w": torch.zeros(1000)}}}}, {{"update": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in os.listdir(tmp_path) if p != "ck.safetensors"]
    assert leftovers and all(p.endswith(".tmp") for p in leftovers)  # the dead writer's temp file
    sections, meta = checkpoint.load(target)
    assert meta["update"] == 1 and torch.equal(sections["params"]["w"], torch.ones(3))
    # A truncated temp file next to it changes nothing either.
    (tmp_path / leftovers[0]).write_bytes((tmp_path / leftovers[0]).read_bytes()[:100])
    assert checkpoint.load(target)[1]["update"] == 1
