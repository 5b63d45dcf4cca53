"""The CleanRL-style continuous PPO baseline of benchmarks/mujoco.py runs on any Box-action
gymnasium env (Pendulum here, so CI needs no MuJoCo): one iteration of 2048 steps, its episodes'
raw returns counted."""
import math

from benchmarks.cleanrl_continuous import run


def test_one_iteration_on_pendulum_counts_every_episode():
    result = run("Pendulum-v1", 2048, seed=1, threads=1)
    assert result["env_steps"] == 2048 and result["sps"] > 0
    returns = result["episode_returns"]
    assert len(returns) == 2048 // 200  # Pendulum's 200-step episodes that ended
    assert all(math.isfinite(r) and -16.3 * 200 <= r <= 0 for r in returns)  # raw, not normalized, rewards
