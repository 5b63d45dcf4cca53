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

SMALL = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 4, update_epochs=2, num_minibatches=2,
               hidden=(16, 16), seed=11)


def assert_states_equal(a, b):
    flat_a = checkpoint.flatten_sections(state_sections(a))
    flat_b = checkpoint.flatten_sections(state_sections(b))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert flat_a[k].dtype == flat_b[k].dtype and torch.equal(flat_a[k], flat_b[k]), k
    assert (a["update"], a["env_steps"]) == (b["update"], b["env_steps"])


def logged(cfg, **kw):
    logs = []
    state, _ = T.train(cfg, on_update=logs.append, **kw)
    return state, {log.update: log.metrics for log in logs}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_resume_equals_uninterrupted_run(tmp_path, compiled):
    cfg = SMALL.replace(compile=compiled)
    straight, straight_metrics = logged(cfg)

    first = Checkpointer(tmp_path, every=2, keep=2)
    T.train(cfg, checkpointer=first, until_update=2)
    run = T.build(cfg)
    restored = restore_state(latest_checkpoint(tmp_path), run, T.init_state(run))
    assert restored["update"] == 2
    resumed, resumed_metrics = logged(cfg, state=restored, run=run)

    assert_states_equal(straight, resumed)
    assert sorted(resumed_metrics) == [3, 4]
    for u in (3, 4):
        assert resumed_metrics[u] == straight_metrics[u]


def test_round_trip_of_every_state_field(tmp_path):
    cfg = SMALL.replace(compile=False, precision="fp16", num_steps=8, total_steps=4 * 8 * 4)
    run = T.build(cfg)
    state, _ = T.train(cfg, run=run, until_update=1)
    assert state["loss_scale"]["scale"].item() < 2.0 ** 16  # fp16's first steps shrank the scale
    path = save_state(tmp_path / "s.safetensors", cfg, state)
    back = restore_state(path, run, T.init_state(run))
    assert_states_equal(state, back)
    assert back["returns_window"] == state["returns_window"]
    assert torch.equal(back["generator"].get_state(), state["generator"].get_state())


class WidePole(CartPole):
    """CartPole with a third (do-nothing-different) action: a different network shape."""
    name = "widepole"
    action_spec = ActionSpec((Head("action", 3),))


def test_checkpoint_of_another_env_or_size_is_refused_with_every_difference(tmp_path, monkeypatch):
    monkeypatch.setitem(envs.REGISTRY, "widepole", WidePole)
    cfg = SMALL.replace(compile=False)
    wide = cfg.replace(env="widepole")
    wide_run = T.build(wide)
    path = save_state(tmp_path / "wide.safetensors", wide, T.init_state(wide_run))
    run = T.build(cfg)
    with pytest.raises(CheckpointError) as err:
        restore_state(path, run, T.init_state(run))
    msg = str(err.value)
    assert "does not match" in msg and "params/heads.action.w" in msg and "opt_state/adam.mu.heads.action.w" in msg
    assert "\n" not in msg

    bigger = cfg.replace(hidden=(32, 16))
    path = save_state(tmp_path / "big.safetensors", bigger, T.init_state(T.build(bigger)))
    with pytest.raises(CheckpointError, match=r"shape of params/trunk.actor.l0.w is \[32, 4\], expected \[16, 4\]"):
        restore_state(path, run, T.init_state(run))


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
