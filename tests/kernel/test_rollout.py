"""The compiled rollout segment (one scan call) equals the eager step-by-step loop."""
import pytest
import torch

import envs
from kernel import agree
from kernel.policy import make_policy
from kernel.rollout import make_rollout, unaliased


@pytest.mark.parametrize("env_name, kind", [("cartpole", "mlp"), ("seedbed", "lstm")])
def test_compiled_segment_matches_eager_loop(env_name, kind):
    env = envs.make(env_name, 3)
    policy = make_policy(env.obs_dim, env.action_spec, hidden=(8,), kind=kind, lstm_size=8)
    params = policy.init(torch.Generator().manual_seed(0))
    results = []
    for compile_ in (False, True):
        rollout = make_rollout(env, policy, 7, compile=compile_)
        g = torch.Generator().manual_seed(1)
        carry = rollout.init(g)
        for _ in range(2):  # the second segment starts from a carried (non-initial) state
            carry, traj = rollout.collect(params, carry, g)
        results.append((carry, traj))
    (carry_e, traj_e), (carry_c, traj_c) = results
    # Each float leaf against its own size (kernel.agree, float32's bound); integers exactly.
    assert agree.state_disagreements({"carry": carry_e, "traj": traj_e}, {"carry": carry_c, "traj": traj_c}, None,
                                     agree.TOLERANCE["fp32"]) == []


def test_unaliased_clones_inputs_and_repeats_only():
    x, y = torch.ones(2), torch.zeros(2)
    out = unaliased({"a": x, "b": x, "c": y, "d": x}, (y,))
    assert out["a"] is x and out["b"] is not x and out["d"] is not out["b"] and out["c"] is not y
    assert all(torch.equal(out[k], v) for k, v in (("b", x), ("c", y), ("d", x)))
