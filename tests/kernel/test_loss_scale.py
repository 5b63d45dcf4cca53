import torch

from envs.base import ActionSpec, Head
from kernel import checkpoint, loss_scale, optim
from kernel.loss_scale import DynamicLossScale, NoOpLossScale
from kernel.policy import make_policy
from kernel.ppo import make_grad_step
from kernel.tree import as_dicts, fill, flatten_with_paths, leaves

T, F = torch.tensor(True), torch.tensor(False)


def test_dynamic_scale_grows_after_a_period_of_finite_steps_and_halves_on_a_bad_one():
    s = loss_scale.dynamic(8.0)
    for _ in range(DynamicLossScale.PERIOD - 1):
        s = s.adjust(T)
    assert s.loss_scale.item() == 8.0 and s.counter.item() == DynamicLossScale.PERIOD - 1
    s = s.adjust(T)
    assert s.loss_scale.item() == 16.0 and s.counter.item() == 0
    s = s.adjust(T).adjust(F)
    assert s.loss_scale.item() == 8.0 and s.counter.item() == 0
    for _ in range(10):
        s = s.adjust(F)
    assert s.loss_scale.item() == DynamicLossScale.MIN_SCALE


def test_scale_and_unscale_are_inverse_and_no_op_is_identity():
    s = loss_scale.dynamic(2.0 ** 10)
    g = {"w": torch.tensor([1.5, -3.0]), "h": torch.tensor([0.25], dtype=torch.bfloat16)}
    scaled = s.scale(g)
    assert scaled["w"].tolist() == [1536.0, -3072.0] and scaled["h"].dtype == torch.bfloat16
    back = s.unscale(scaled)
    assert all(torch.equal(a, b) for a, b in zip(leaves(back), leaves(g)))
    noop = NoOpLossScale()
    assert noop.scale(g) is g and noop.unscale(g) is g and noop.adjust(F) is noop and noop.value().item() == 1.0


def test_non_finite_step_leaves_params_and_optimizer_state_untouched_and_is_counted():
    policy = make_policy(3, ActionSpec((Head("action", 2),)), hidden=(4,))
    params = policy.init(torch.Generator().manual_seed(0))
    tx = optim.apply_if_finite(optim.adam(None, max_grad_norm=0.5))
    opt_state = tx.init(params)
    batch = {"obs": torch.randn(8, 3), "actions": {"action": torch.zeros(8, dtype=torch.long)},
             "head_logp": {"action": torch.full((8,), -0.7)}, "values": torch.zeros(8), "returns": torch.zeros(8),
             "advantages": torch.tensor([float("nan")] + [1.0] * 7)}
    hyper = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.0), "vf_coef": torch.tensor(0.5),
             "lr": torch.tensor(1e-2)}
    step = make_grad_step(policy, tx, True, False)
    scale = loss_scale.dynamic(2.0 ** 8)
    new_params, new_opt, new_scale, metrics = step(params, opt_state, scale, batch, torch.arange(8), hyper)
    assert metrics["skipped"].item() == 1 and optim.skipped_steps(new_opt).item() == 1
    assert optim.consecutive_skips(new_opt).item() == 1 and new_scale.loss_scale.item() == 2.0 ** 7
    for a, b in zip(leaves((params, opt_state["inner"])), leaves((new_params, new_opt["inner"]))):
        assert torch.equal(a, b)
    assert torch.isnan(metrics["grad/heads.action/norm"])


def test_round_trip_of_every_field(tmp_path):
    s = loss_scale.dynamic(1024.0).adjust(F).adjust(T)
    path = checkpoint.save(tmp_path / "ls.safetensors", {"loss_scale": as_dicts(s)}, {})
    loaded = checkpoint.load(path)[0]["loss_scale"]
    back = fill(loss_scale.dynamic(), flatten_with_paths(loaded))
    assert isinstance(back, DynamicLossScale) and back._fields == s._fields
    for a, b in zip(back, s):
        assert a.dtype == b.dtype and torch.equal(a, b)
