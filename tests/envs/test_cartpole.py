import gymnasium as gym
import numpy as np
import pytest
import torch

import envs
from envs.cartpole import CartPole


def run_parity(dtype, steps, gen):
    """Step gymnasium's CartPole-v1 and ours from the same states with the same actions."""
    n = 8
    env = CartPole(n, dtype=dtype)
    state, obs = env.reset(torch.rand(n, 4, generator=gen, dtype=dtype))
    refs = []
    for i in range(n):
        ref = gym.make("CartPole-v1").unwrapped
        ref.reset(seed=i)
        ref.state = state["physics"][i].double().numpy().copy()
        refs.append(ref)
    alive = np.ones(n, dtype=bool)
    max_err = 0.0
    term_steps = {}
    for t in range(steps):
        action = torch.randint(2, (n,), generator=gen)
        step = env.step(state, action, torch.rand(n, 4, generator=gen, dtype=dtype))
        for i, ref in enumerate(refs):
            if not alive[i]:
                continue
            _, _, term, trunc, _ = ref.step(int(action[i]))
            ours = step.final_obs[i].double().numpy()
            max_err = max(max_err, float(np.abs(ours - ref.state).max()))
            assert bool(step.terminated[i]) == term, f"env {i} termination differs at step {t}"
            assert not bool(step.truncated[i])
            if term:
                alive[i] = False
                term_steps[i] = t
        state = step.state
    return max_err, term_steps


def test_float64_matches_gymnasium_step_for_step(gen):
    max_err, term_steps = run_parity(torch.float64, 200, gen)
    assert max_err <= 1e-9
    assert term_steps  # random actions end episodes well inside 200 steps


def test_float32_matches_gymnasium_over_50_steps(gen):
    max_err, _ = run_parity(torch.float32, 50, gen)
    assert max_err <= 1e-4


def test_truncation_at_500_steps_and_auto_reset():
    env = CartPole(2, max_steps=500)
    noise = torch.full((2, 4), 0.5)  # centred start: the pole stays up a while under alternating pushes
    state, obs = env.reset(noise)
    # Put env 0 one step from the time limit and keep it balanced at the origin.
    state = {"physics": torch.zeros(2, 4), "t": torch.tensor([499, 10])}
    step = env.step(state, torch.tensor([0, 1]), torch.zeros(2, 4))
    assert step.truncated.tolist() == [True, False]
    assert step.terminated.tolist() == [False, False]
    # Finished env restarts from the reset noise (zeros -> -0.05) with its clock at 0.
    torch.testing.assert_close(step.obs[0], torch.full((4,), -0.05))
    assert step.state["t"].tolist() == [0, 11]
    assert step.final_obs[0].abs().max() > 0  # the pre-reset observation is kept for bootstrapping


def test_registry_and_bad_input():
    env = envs.make("cartpole", 3)
    assert env.num_envs == 3 and "cartpole" in envs.names()
    with pytest.raises(ValueError, match="unknown env"):
        envs.make("nope", 3)
    with pytest.raises(ValueError, match="num_envs"):
        envs.make("cartpole", 0)
