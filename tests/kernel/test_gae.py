import pytest
import torch

from kernel import ppo
from kernel.hot import compile_hot
from kernel.ppo import gae


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Plain Python loop over floats, written independently from the kernel."""
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t][n] else next_values[t][n]
            delta = rewards[t][n] + gamma * bootstrap - values[t][n]
            if terminated[t][n] or truncated[t][n]:
                running = 0.0
            running = delta + gamma * lam * running
            adv[t][n] = running
    return adv


def test_gae_matches_python_loop_with_terminations_and_truncations(gen):
    T, N = 37, 5
    rewards = torch.randn(T, N, generator=gen, dtype=torch.float64)
    values = torch.randn(T, N, generator=gen, dtype=torch.float64)
    next_values = torch.randn(T, N, generator=gen, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=gen) < 0.1
    truncated = (torch.rand(T, N, generator=gen) < 0.1) & ~terminated
    truncated[5, 0] = True
    terminated[9, 1] = True
    adv, ret = gae(rewards, values, next_values, terminated, truncated, 0.99, 0.95)
    expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                          terminated.tolist(), truncated.tolist(), 0.99, 0.95), dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, expected + values, rtol=0, atol=1e-12)


def test_truncation_bootstraps_and_termination_does_not():
    ones = torch.ones(1, 1)
    zeros = torch.zeros(1, 1, dtype=torch.bool)
    # Single step, reward 1, value 0, next value 10.
    a_trunc, _ = gae(ones, 0 * ones, 10 * ones, zeros, ~zeros, 0.5, 1.0)
    a_term, _ = gae(ones, 0 * ones, 10 * ones, ~zeros, zeros, 0.5, 1.0)
    assert a_trunc.item() == 1 + 0.5 * 10
    assert a_term.item() == 1.0


def test_episode_end_stops_the_recursion():
    r = torch.tensor([[1.0], [1.0]])
    v = torch.zeros(2, 1)
    nv = torch.zeros(2, 1)
    term = torch.tensor([[True], [False]])
    trunc = torch.zeros(2, 1, dtype=torch.bool)
    adv, _ = gae(r, v, nv, term, trunc, 1.0, 1.0)
    assert adv[0].item() == 1.0  # would be 2.0 if the second step leaked across the boundary


@pytest.mark.parametrize("unroll_max", [256, 8])  # the unrolled recursion, then the reverse scan
def test_compiled_gae_matches_python_loop(gen, monkeypatch, unroll_max):
    monkeypatch.setattr(ppo, "UNROLL_MAX_STEPS", unroll_max)
    T, N = 37, 3
    rewards, values, next_values = (torch.randn(T, N, generator=gen) for _ in range(3))
    terminated = torch.rand(T, N, generator=gen) < 0.1
    truncated = (torch.rand(T, N, generator=gen) < 0.1) & ~terminated
    advantages = compile_hot(lambda *traj: ppo.gae(*traj, scanned=T > ppo.UNROLL_MAX_STEPS))
    adv, ret = advantages(rewards, values, next_values, terminated, truncated, torch.tensor(0.99), torch.tensor(0.95))
    expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                          terminated.tolist(), truncated.tolist(), 0.99, 0.95))
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, expected + values, rtol=1e-5, atol=1e-5)
