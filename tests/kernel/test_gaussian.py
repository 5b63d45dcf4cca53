"""Diagonal Gaussian heads against torch.distributions in float64, and their place in a factored
action: sampling from the state's noise, unclipped storage, clipping only into the env."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from envs.base import ActionSpec, Head
from kernel import distributions as D
from kernel import heads
from kernel.policy import make_policy


def head_params(gen, rows=5, dim=3):
    mean = torch.randn(rows, dim, generator=gen)
    log_std = torch.randn(dim, generator=gen) * 0.5
    return torch.stack([mean, log_std.expand_as(mean)], dim=-1), mean, log_std


def test_log_prob_and_entropy_equal_torch_distributions_in_float64(gen):
    params, mean, log_std = head_params(gen)
    action = mean + torch.randn(mean.shape, generator=gen) * 2
    reference = Independent(Normal(mean.double(), log_std.double().exp()), 1)
    # float32 against float64; measured over 20 draws: log-prob 6.2e-6 absolute (1.9e-7 relative),
    # entropy 4.9e-7 absolute
    torch.testing.assert_close(D.gaussian_log_prob(params, action).double(), reference.log_prob(action.double()),
                               rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(D.gaussian_entropy(params).double(), reference.entropy(), rtol=1e-6, atol=1e-6)
    # a wrong variant (the standard deviation taken as the log-std) is far off the same reference
    wrong = D.gaussian_log_prob(torch.stack([mean, log_std.exp().expand_as(mean)], -1), action).double()
    assert (wrong - reference.log_prob(action.double())).abs().max() > 1e-2


def test_gaussian_functions_refuse_low_precision(gen):
    params, _, _ = head_params(gen)
    for fn in (lambda p: D.gaussian_log_prob(p, p[..., 0]), D.gaussian_entropy, D.gaussian_mode):
        with pytest.raises(TypeError, match="float32"):
            fn(params.to(torch.bfloat16))


def test_sampling_is_mean_plus_std_times_the_normal_noise(gen):
    params, mean, log_std = head_params(gen)
    z = torch.randn(mean.shape, generator=gen)
    torch.testing.assert_close(D.gaussian_sample(params, z), mean + log_std.exp() * z)
    torch.testing.assert_close(D.gaussian_mode(params), mean)


MIXED = ActionSpec((Head("op", 3), Head("amount", 2, "gaussian", (-1.0, 0.0), (1.0, math.inf))),
                   relevant={"amount": (2,)})


def test_a_mixed_spec_samples_scores_and_weighs_each_head(gen):
    rows = 6
    logits = {"op": torch.randn(rows, 3, generator=gen), "amount": head_params(gen, rows, 2)[0]}
    noise = {"op": torch.rand(rows, 3, generator=gen), "amount": torch.randn(rows, 2, generator=gen) * 3}
    actions = heads.sample(MIXED, logits, noise)
    assert actions["op"].dtype == torch.int64 and actions["amount"].shape == (rows, 2)
    logp = heads.log_probs(MIXED, logits, actions)
    torch.testing.assert_close(logp["amount"], D.gaussian_log_prob(logits["amount"], actions["amount"]))
    relevant = heads.relevance(MIXED, actions)
    assert torch.equal(relevant["amount"], (actions["op"] == 2).float())
    # a continuous head is a decision wherever it is relevant (no mask can force it)
    assert torch.equal(heads.decisions(MIXED, actions)["amount"], relevant["amount"])
    ent = heads.normalized_entropies(MIXED, logits, actions)["amount"]
    torch.testing.assert_close(ent, D.gaussian_entropy(logits["amount"]) / 2)


def test_actions_are_clipped_only_into_the_env():
    actions = {"op": torch.tensor([0, 2]), "amount": torch.tensor([[-3.0, -5.0], [0.5, 7.0]])}
    into_env = heads.into_env(MIXED, actions)
    assert torch.equal(into_env["amount"], torch.tensor([[-1.0, 0.0], [0.5, 7.0]]))  # an infinite bound clips nothing
    assert torch.equal(into_env["op"], actions["op"]) and actions["amount"][0, 0] == -3.0  # stored unclipped


def test_the_policy_gives_a_state_independent_log_std(gen):
    spec = ActionSpec((Head("torque", 2, "gaussian", (-2.0, -2.0), (2.0, 2.0)),))
    policy = make_policy(3, spec, hidden=(8,))
    params = policy.init(gen)
    assert torch.equal(params["heads"]["torque"]["log_std"], torch.zeros(2))
    out, _, _ = policy.step(params, torch.randn(4, 3, generator=gen), {}, None)
    assert out["torque"].shape == (4, 2, 2) and out["torque"].dtype == torch.float32
    assert torch.equal(out["torque"][..., 1], torch.zeros(4, 2))
    shifted = make_policy(3, spec, hidden=(8,), log_std_init=-0.5).init(torch.Generator().manual_seed(0))
    assert torch.equal(shifted["heads"]["torque"]["log_std"], torch.full((2,), -0.5))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gaussian_head_gradients_are_finite_and_nonzero_under_a_low_precision_trunk(precision):
    from kernel.config import Config
    from kernel.diagnose import grads_by_precision
    from kernel.precision import parse

    config = Config.for_env("pendulum", num_envs=4, num_steps=32, total_steps=128, num_minibatches=1,
                            hidden=(16, 16))
    report = grads_by_precision(config, [parse("fp32"), parse(precision)])
    for name in ("fp32", precision):
        torque = report[name]["groups"]["heads.torque"]
        assert torque["nan"] == 0 and torque["inf"] == 0 and torque["norm"] > 0, (name, torque)
        assert report[name]["dtypes"]["heads.torque"] == "fp32"


class Mixed:
    """A categorical op and a continuous amount that matters only for op 1: reward -(amount - 0.5)^2
    there, 0 for op 0 (so op 1 with amount 0.5 is best)."""

    name, description, obs_dim, solved_return = "mixed-test", "test env", 2, None
    action_spec = ActionSpec((Head("op", 2), Head("amount", 1, "gaussian", (-1.0,), (1.0,))), relevant={"amount": (1,)})

    def __init__(self, num_envs, device="cpu", dtype=torch.float32):
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype

    def noise_shape(self):
        return (self.num_envs, 2)

    def reset(self, noise):
        return torch.zeros(self.num_envs, dtype=torch.int64), noise.to(self.dtype)

    def step(self, state, action, noise):
        amount = action["amount"][:, 0]
        reward = torch.where(action["op"] == 1, 0.25 - (amount - 0.5) ** 2, torch.zeros_like(amount))
        t = state + 1
        truncated = t >= 8
        from envs.base import Step

        return Step(torch.where(truncated, 0, t), noise.to(self.dtype), reward, torch.zeros_like(truncated), truncated,
                    noise.to(self.dtype))


def test_a_mixed_spec_trains_through_the_loss_and_the_gradient_table(monkeypatch):
    import envs
    from kernel import Config, make_train
    from kernel.telemetry import group_table

    monkeypatch.setitem(envs.REGISTRY, "mixed-test", Mixed)
    config = Config.for_env("mixed-test", num_envs=8, num_steps=8, total_steps=8 * 8 * 6, num_minibatches=2,
                            hidden=(16,), compile=False)
    state, metrics = None, None
    train = make_train(config)
    state = train.init()
    start = state.params["heads"]["amount"]["log_std"].clone()
    for _ in range(6):
        state, metrics = train.iteration(state)
    table = group_table(metrics)
    for head in ("heads.op", "heads.amount"):
        assert table[head]["nan"] == 0 and table[head]["norm"] > 0, (head, table[head])
    assert metrics["head/amount/relevant_steps"] > 0 and "head/amount/clip_frac" in metrics
    assert not torch.equal(state.params["heads"]["amount"]["log_std"], start)  # the std learns too
