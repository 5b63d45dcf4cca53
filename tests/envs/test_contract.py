"""Environments meet the Env protocol and stand alone: nothing under envs/ imports the trainer, only
the kernel's pure building blocks (pytrees and optax-style optimizers, which morpho's hosts train
with, the action heads, which the scripted baselines sample from, and the eager constants that
CartPole's maths reads)."""
import ast
from pathlib import Path

import pytest

import envs
from envs.base import Env

ENVS_DIR = Path(envs.__file__).resolve().parent


@pytest.mark.parametrize("name", envs.names())
def test_registered_envs_meet_the_protocol(name):
    env = envs.make(name, 2)
    assert isinstance(env, Env)
    assert env.num_envs == 2 and env.obs_dim > 0 and env.action_spec.heads
    assert env.solved_return is None or env.solved_return > 0


BUILDING_BLOCKS = {"kernel.optim", "kernel.tree", "kernel.heads", "kernel.eager"}


def test_envs_import_only_the_kernels_building_blocks():
    for path in sorted(ENVS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "kernel":
                names = [f"kernel.{a.name}" for a in node.names]
            kernel = [n for n in names if n == "kernel" or n.startswith("kernel.")]
            assert set(kernel) <= BUILDING_BLOCKS, f"{path.name} imports {kernel}"
