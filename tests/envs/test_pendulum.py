"""Pendulum-v1 against gymnasium's reference, step for step from states the test draws."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.pendulum import Pendulum, dynamics


def run_parity(dtype, steps: int, gen, n: int = 8):
    """Step gymnasium's Pendulum-v1 and ours from the same states with the same torques (some
    beyond the bounds, which both clip); the largest state, observation and reward gaps."""
    env = Pendulum(n, dtype=dtype)
    state, obs = env.reset(torch.rand(n, 2, generator=gen, dtype=torch.float64).to(dtype))
    refs = []
    for i in range(n):
        ref = gym.make("Pendulum-v1").unwrapped
        ref.reset(seed=i)
        ref.state = state["physics"][i].double().numpy().copy()
        refs.append(ref)
    gaps = {"state": 0.0, "obs": 0.0, "reward": 0.0}
    for _ in range(steps):
        torque = (torch.rand(n, 1, generator=gen) * 6.0 - 3.0).float()  # float32, as a Box action is
        step = env.step(state, torque.to(dtype), torch.rand(n, 2, generator=gen, dtype=torch.float64).to(dtype))
        for i, ref in enumerate(refs):
            ref_obs, ref_reward, term, trunc, _ = ref.step(torque[i].numpy())
            assert not term and not trunc
            gaps["state"] = max(gaps["state"], float(np.abs(step.final_obs[i].double().numpy()[2] - ref.state[1])))
            gaps["obs"] = max(gaps["obs"], float(np.abs(step.final_obs[i].double().numpy() - ref_obs).max()))
            gaps["reward"] = max(gaps["reward"], abs(float(step.reward[i]) - float(ref_reward)))
        state = step.state
    return gaps


def test_float64_matches_gymnasium_step_for_step(gen):
    gaps = run_parity(torch.float64, 199, gen)
    # gymnasium hands back float32 observations; its state and reward are float64. Measured: state
    # 0, reward 2.3e-10, observations 2.4e-7 (their float32 rounding)
    assert gaps["state"] <= 1e-12 and gaps["reward"] <= 1e-9 and gaps["obs"] <= 1e-6, gaps


def test_float32_matches_gymnasium_over_an_episode(gen):
    gaps = run_parity(torch.float32, 199, gen)
    assert max(gaps.values()) <= 2e-6, gaps  # measured 4.9e-7 (reward); the bar asked for is 1e-5


def test_truncation_at_200_steps_resets_and_keeps_the_final_observation():
    env = Pendulum(2)
    state, _ = env.reset(torch.full((2, 2), 0.5))
    state = {"physics": torch.tensor([[0.3, 0.1], [0.0, 0.0]], dtype=torch.float64), "t": torch.tensor([199, 10])}
    step = env.step(state, torch.zeros(2, 1), torch.tensor([[1.0, 1.0], [0.5, 0.5]]))
    assert step.truncated.tolist() == [True, False] and not step.terminated.any()
    assert step.state["t"].tolist() == [0, 11]
    # the final observation is the state the torque led to; the next one a fresh reset
    after, _ = dynamics(state["physics"], torch.zeros(2))
    assert torch.equal(step.final_obs, Pendulum.observe(after))
    assert torch.allclose(step.obs[0], Pendulum.observe(torch.tensor([[np.pi, 1.0]], dtype=torch.float64))[0])


@pytest.mark.parametrize("bad", [float("inf"), -float("inf")])
def test_infinite_torque_is_clipped_to_the_bound(bad):
    env = Pendulum(1, dtype=torch.float64)
    state = {"physics": torch.zeros(1, 2, dtype=torch.float64), "t": torch.zeros(1, dtype=torch.int64)}
    clipped = env.step(state, torch.tensor([[bad]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    bound = env.step(state, torch.tensor([[np.sign(bad) * 2.0]], dtype=torch.float64),
                     torch.zeros(1, 2, dtype=torch.float64))
    assert torch.equal(clipped.final_obs, bound.final_obs) and torch.equal(clipped.reward, bound.reward)
