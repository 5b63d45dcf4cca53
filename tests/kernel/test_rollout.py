"""The compiled rollout segment (one scan call) equals the eager step-by-step loop."""
import pytest
import torch

from kernel import agree
from kernel.build import build
from kernel.config import Config
from kernel.loop import unaliased


@pytest.mark.parametrize("env_name, kind", [("cartpole", "mlp"), ("seedbed", "lstm")])
def test_compiled_segment_matches_eager_loop(env_name, kind):
    config = Config.for_env(env_name, num_envs=3, num_steps=7, total_steps=3 * 7 * 2, num_minibatches=1,
                            hidden=(8,), policy=kind, lstm_size=8, fuse="off")
    results = []
    for compile_ in (False, True):
        built = build(config.replace(compile=compile_))
        params = built.policy.init(torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        carry = built.rollout.init(g)
        for _ in range(2):  # the second segment starts from a carried (non-initial) state
            with torch.no_grad():
                carry, traj = built.stages.segment(params, carry, *built.rollout.noise(g))
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
