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


@pytest.mark.parametrize("solve_max", [ppo.SOLVE_MAX_ELEMENTS, 0])  # the triangular solve, then the loop
def test_gae_matches_python_loop_with_terminations_and_truncations(gen, monkeypatch, solve_max):
    monkeypatch.setattr(ppo, "SOLVE_MAX_ELEMENTS", solve_max)
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


# the unrolled recursion, the reverse scan, the triangular solve
@pytest.mark.parametrize("unroll_max, solve_max", [(256, 0), (8, 0), (256, ppo.SOLVE_MAX_ELEMENTS)])
def test_compiled_gae_matches_python_loop(gen, monkeypatch, unroll_max, solve_max):
    monkeypatch.setattr(ppo, "UNROLL_MAX_STEPS", unroll_max)
    monkeypatch.setattr(ppo, "SOLVE_MAX_ELEMENTS", solve_max)
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


def test_a_solve_with_the_decay_one_step_off_fails_the_reference(gen, monkeypatch):
    """The float64 comparison above has teeth: pairing each step with the next step's decay (the
    superdiagonal shifted by one) is caught at its tolerance."""
    def shifted(deltas, decay):
        d = decay.T
        system = torch.diag_embed(torch.ones_like(d)) - torch.diag_embed(d[:, 1:], offset=1)
        return torch.linalg.solve_triangular(system, deltas.T.unsqueeze(-1), upper=True).squeeze(-1).T

    monkeypatch.setattr(ppo, "solved_recursion", shifted)
    with pytest.raises(AssertionError):
        test_gae_matches_python_loop_with_terminations_and_truncations(gen, monkeypatch, ppo.SOLVE_MAX_ELEMENTS)


def test_the_solve_is_used_up_to_its_size_limit(monkeypatch):
    calls = []
    monkeypatch.setattr(ppo, "solved_recursion", lambda d, k: calls.append(d.shape) or torch.zeros_like(d))
    monkeypatch.setattr(ppo, "SOLVE_MAX_ELEMENTS", 128 * 128 * 4)
    for steps, envs in ((128, 4), (128, 5)):
        x = torch.zeros(steps, envs)
        gae(x, x, x, x.bool(), x.bool(), 0.99, 0.95)
    assert calls == [torch.Size([128, 4])]  # the larger segment ran the loop
