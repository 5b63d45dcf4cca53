"""Environments meet the Env protocol and stand alone: nothing under envs/ imports the kernel."""
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


def test_envs_never_import_the_kernel():
    for path in sorted(ENVS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "kernel" or n.startswith("kernel.") for n in names), f"{path.name} imports {names}"
