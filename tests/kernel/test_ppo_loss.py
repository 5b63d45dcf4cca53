import math

import torch

from envs.base import ActionSpec, Head
from kernel.policy import Policy
from kernel.ppo import explained_variance, ppo_loss


def fixed_policy():
    """A 'network' whose outputs are its params, so the loss can be worked out by hand."""
    return Policy(init=None, step=None, sequence=lambda p, obs, h, s: ({"action": p["logits"]}, p["v"]),
                  initial_hidden=None, spec=ActionSpec((Head("action", 2),)), recurrent=False)


def test_ppo_loss_matches_hand_computed_example():
    params = {"logits": torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), "v": torch.tensor([1.0, 2.0])}
    batch = {
        "obs": torch.zeros(2, 1),
        "actions": {"action": torch.tensor([0, 1])},
        "head_logp": {"action": torch.tensor([math.log(0.25), math.log(0.25)])},  # ratios 2 and 1
        "advantages": torch.tensor([1.0, -1.0]),
        "values": torch.tensor([0.5, 2.5]),
        "returns": torch.tensor([2.0, 2.0]),
    }
    hyper = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.01), "vf_coef": torch.tensor(0.5)}
    loss, m = ppo_loss(params, batch, hyper, fixed_policy(), clip_vloss=True, norm_adv=False)

    pg = (max(-1 * 2.0, -1 * 1.2) + max(1.0, 1.0)) / 2  # -0.1
    v = 0.5 * (max(1.0, (0.7 - 2) ** 2) + max(0.0, (2.3 - 2) ** 2)) / 2  # 0.445
    ent = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    kl = ((2 - 1) - math.log(2) + 0.0) / 2
    assert abs(m["pg_loss"].item() - pg) < 1e-6
    assert abs(m["v_loss"].item() - v) < 1e-6
    assert abs(m["entropy"].item() - ent) < 1e-6
    assert abs(m["approx_kl"].item() - kl) < 1e-6
    assert m["clip_frac"].item() == 0.5
    assert abs(loss.item() - (pg - 0.01 * ent + 0.5 * v)) < 1e-6

    _, m_unclipped = ppo_loss(params, batch, hyper, fixed_policy(), clip_vloss=False, norm_adv=False)
    assert abs(m_unclipped["v_loss"].item() - 0.5 * (1.0 + 0.0) / 2) < 1e-6


def test_advantage_normalisation_is_per_minibatch():
    params = {"logits": torch.zeros(4, 2), "v": torch.zeros(4)}
    batch = {"obs": torch.zeros(4, 1), "actions": {"action": torch.zeros(4, dtype=torch.long)},
             "head_logp": {"action": torch.full((4,), math.log(0.5))}, "values": torch.zeros(4),
             "returns": torch.zeros(4)}
    hyper = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.0), "vf_coef": torch.tensor(0.0)}
    a = ppo_loss(params, dict(batch, advantages=torch.tensor([1.0, 2.0, 3.0, 4.0])), hyper, fixed_policy())[0]
    b = ppo_loss(params, dict(batch, advantages=torch.tensor([10.0, 20.0, 30.0, 40.0])), hyper, fixed_policy())[0]
    torch.testing.assert_close(a, b)  # scale-free once normalised; ratio 1 -> loss = -mean(norm adv) = 0
    assert abs(a.item()) < 1e-6


def test_explained_variance():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(r, r).item() == 1.0
    assert abs(explained_variance(torch.zeros(4), r).item()) < 1e-6
    assert math.isnan(explained_variance(r, torch.ones(4)).item())
