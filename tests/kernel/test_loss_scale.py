import torch

from envs.base import ActionSpec, Head
from kernel import checkpoint, loss_scale, optim
from kernel.policy import make_policy
from kernel.ppo import make_grad_step
from kernel.tree import leaves

T, F = torch.tensor(True), torch.tensor(False)


def test_grows_after_interval_and_shrinks_on_non_finite():
    s = loss_scale.init(True, initial_scale=8.0)
    for _ in range(3):
        s = loss_scale.update(s, T, dynamic=True, growth_interval=3)
    assert s["scale"].item() == 16.0 and s["good_steps"].item() == 0
    s = loss_scale.update(s, T, dynamic=True, growth_interval=3)
    s = loss_scale.update(s, F, dynamic=True, growth_interval=3)
    assert s["scale"].item() == 8.0 and s["good_steps"].item() == 0
    assert s["skipped"].item() == 1 and s["bad_streak"].item() == 1
    s = loss_scale.update(s, F, dynamic=True, growth_interval=3)
    assert s["bad_streak"].item() == 2 and s["skipped"].item() == 2
    s = loss_scale.update(s, T, dynamic=True, growth_interval=3)
    assert s["bad_streak"].item() == 0 and s["skipped"].item() == 2


def test_static_scale_stays_one_but_still_counts_skips():
    s = loss_scale.init(False)
    s = loss_scale.update(s, F, dynamic=False)
    assert s["scale"].item() == 1.0 and s["skipped"].item() == 1


def test_non_finite_step_leaves_params_and_optimizer_state_untouched():
    policy = make_policy(3, ActionSpec((Head("action", 2),)), hidden=(4,))
    params = policy.init(torch.Generator().manual_seed(0))
    tx = optim.adam(None, max_grad_norm=0.5)
    opt_state = tx.init(params)
    batch = {"obs": torch.randn(8, 3), "actions": {"action": torch.zeros(8, dtype=torch.long)},
             "head_logp": {"action": torch.full((8,), -0.7)}, "values": torch.zeros(8), "returns": torch.zeros(8),
             "advantages": torch.tensor([float("nan")] + [1.0] * 7)}
    hyper = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.0), "vf_coef": torch.tensor(0.5),
             "lr": torch.tensor(1e-2)}
    step = make_grad_step(policy, tx, True, False)
    new_params, new_opt, scale, metrics = step(params, opt_state, loss_scale.init(False), batch, torch.arange(8), hyper)
    assert metrics["skipped"].item() == 1 and scale["skipped"].item() == 1
    for a, b in zip(leaves((params, opt_state)), leaves((new_params, new_opt))):
        assert torch.equal(a, b)
    assert torch.isnan(metrics["grad/heads.action/norm"])


def test_round_trip_of_every_field(tmp_path):
    s = loss_scale.init(True, initial_scale=1024.0)
    s = loss_scale.update(s, F, dynamic=True)
    s = loss_scale.update(s, T, dynamic=True)
    path = checkpoint.save(tmp_path / "ls.safetensors", {"loss_scale": s}, {})
    loaded = checkpoint.load(path)[0]["loss_scale"]
    assert loaded.keys() == s.keys()
    for k in s:
        assert loaded[k].dtype == s[k].dtype and torch.equal(loaded[k], s[k]), k
