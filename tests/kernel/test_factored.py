"""Factored, masked, recurrent policies: replay consistency, masked sampling, relevance, gradients."""
import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad

from envs.seedbed import GERMINATE, WAIT, Seedbed
from kernel import heads, loss_scale, optim, telemetry
from kernel.config import Config
from kernel.iteration import make_batch
from kernel.policy import make_policy
from kernel.ppo import evaluate, gae, make_grad_step, minibatch, ppo_loss
from kernel.precision import PRESETS
from kernel.rollout import make_rollout
from kernel.tree import leaves as tree_leaves

HYPER = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.01), "vf_coef": torch.tensor(0.5),
         "lr": torch.tensor(1e-3)}


def seedbed_batch(kind: str, precision: str, num_envs=4, num_steps=6, episode_steps=4, segments=2):
    """A real batch from a short-episode seedbed, the last of several segments so that hidden0 is
    non-zero and episode starts fall inside the segment."""
    env = Seedbed(num_envs, episode_steps=episode_steps)
    policy = make_policy(env.obs_dim, env.action_spec, hidden=(16,), precision=PRESETS[precision], kind=kind,
                         lstm_size=8)
    g = torch.Generator().manual_seed(5)
    params = policy.init(g)
    rollout = make_rollout(env, policy, num_steps)
    carry = rollout.init(g)
    for _ in range(segments):
        carry, traj = rollout.segment(params, carry, *rollout.noise(g), scanned=False)
    adv, ret = gae(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"], traj["truncated"],
                   0.99, 0.95)
    return env, policy, params, traj, make_batch(traj, adv, ret, policy.recurrent)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["lstm", "mlp"])
def test_replay_reproduces_rollout_ratios_and_values(kind, precision):
    env, policy, params, traj, batch = seedbed_batch(kind, precision)
    if kind == "lstm":
        assert traj["starts"][1:].any() and traj["hidden0"]["h"].abs().sum() > 0
        idx = torch.tensor([2, 0])  # a minibatch of env columns, as the update draws them
    else:
        idx = torch.randperm(batch["returns"].shape[0], generator=torch.Generator().manual_seed(0))[:10]
    mb = minibatch(batch, idx, policy.recurrent)
    logits, value, rows = evaluate(policy, params, mb)
    new = heads.log_probs(env.action_spec, logits, rows["actions"], rows["obs"]["masks"])
    for h in env.action_spec.names:
        ratio = (new[h] - rows["head_logp"][h]).exp()
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(value, rows["values"], atol=1e-5, rtol=0)


def random_masks(g, n, ops, slots):
    op = torch.rand(n, ops, generator=g) < 0.5
    op[torch.arange(n), torch.randint(ops, (n,), generator=g)] = True
    slot = torch.rand(n, ops, slots, generator=g) < 0.4
    slot[torch.arange(n).unsqueeze(-1), torch.arange(ops), torch.randint(slots, (n, ops), generator=g)] = True
    return op, slot


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), slots=st.integers(1, 6))
def test_factored_sampling_never_picks_a_masked_action(seed, slots):
    g = torch.Generator().manual_seed(seed)
    env = Seedbed(64, slots=slots)
    spec, n = env.action_spec, 64
    op_mask, slot_mask = random_masks(g, n, 5, slots)
    masks = {"op": op_mask, "slot": slot_mask, "blueprint": torch.rand(n, 8, generator=g) < 2}
    logits = {h.name: torch.randn(n, h.size, generator=g) * 5 for h in spec.heads}
    noise = {h.name: torch.rand(n, h.size, generator=g) for h in spec.heads}
    a = heads.sample(spec, logits, noise, masks)
    rows = torch.arange(n)
    assert op_mask[rows, a["op"]].all()
    assert slot_mask[rows, a["op"], a["slot"]].all()  # the row of the op actually sampled
    lp = heads.log_probs(spec, logits, a, masks)
    assert all(torch.isfinite(v).all() for v in lp.values())


def test_no_valid_slot_for_the_sampled_op_is_a_clear_error():
    env = Seedbed(2)
    spec = env.action_spec
    masks = {"op": torch.tensor([[True, False, False, False, False]] * 2),
             "slot": torch.zeros(2, 5, 3, dtype=torch.bool)}
    logits = {h.name: torch.zeros(2, h.size) for h in spec.heads}
    noise = {h.name: torch.rand(2, h.size) for h in spec.heads}
    with pytest.raises(ValueError, match="no valid action"):
        heads.sample(spec, logits, noise, masks)


def forced_batch(op_value: int):
    """A seedbed batch whose ops are all ``op_value`` (advantages and old log-probs made up)."""
    env, policy, params, traj, batch = seedbed_batch("lstm", "fp32", segments=1)
    batch["actions"]["op"] = torch.full_like(batch["actions"]["op"], op_value)
    masks = batch["obs"]["masks"]
    masks["op"][..., op_value] = True
    masks["slot"][..., op_value, :] = True
    g = torch.Generator().manual_seed(1)
    batch["advantages"] = torch.randn(batch["advantages"].shape, generator=g)
    batch["head_logp"] = {h: v - 0.3 * torch.rand(v.shape, generator=g) for h, v in batch["head_logp"].items()}
    return env, policy, params, batch


def test_irrelevant_head_gets_exactly_zero_gradient_and_is_reported_not_relevant():
    env, policy, params, batch = forced_batch(WAIT)  # slot, blueprint and tempo never matter
    mb = minibatch(batch, torch.arange(4), True)
    loss_grads = grad(lambda p: ppo_loss(p, mb, HYPER, policy, norm_entropy=True)[0])(params)
    for h in ("slot", "blueprint", "tempo"):
        assert all((g == 0).all() for g in tree_leaves(loss_grads["heads"][h])), h
    assert loss_grads["heads"]["op"]["w"].abs().sum() > 0
    tx = optim.apply_if_finite(optim.adam(None, max_grad_norm=0.5))
    step = make_grad_step(policy, tx, True, True, norm_entropy=True)
    _, _, _, metrics = step(params, tx.init(params), loss_scale.NoOpLossScale(), batch, torch.arange(4), HYPER)
    table = telemetry.group_table(metrics)
    for h in ("slot", "blueprint", "tempo"):
        assert table[f"heads.{h}"]["zero_frac"] == 1.0 and telemetry.classify(table[f"heads.{h}"]) == "not relevant"
    assert telemetry.classify(table["heads.op"]) not in ("dead", "not relevant", "non-finite")
    assert telemetry.classify({"norm": 0.0, "nan": 0, "inf": 0, "zero_frac": 1.0}) == "dead"  # no relevance info


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_all_heads_relevant_get_finite_nonzero_gradients(precision, compiled):
    env, _, params, batch = forced_batch(GERMINATE)  # every head matters on every step
    p = PRESETS[precision]
    policy = make_policy(env.obs_dim, env.action_spec, hidden=(16,), precision=p, kind="lstm", lstm_size=8)
    tx = optim.apply_if_finite(optim.adam(None, max_grad_norm=0.5))
    step = make_grad_step(policy, tx, True, True, norm_entropy=True)
    if compiled:
        step = torch.compile(step, fullgraph=True)
    scale = loss_scale.for_precision(p.needs_loss_scale, initial_scale=2.0 ** 8)
    _, _, _, metrics = step(params, tx.init(params), scale, batch, torch.arange(4), HYPER)
    assert metrics["skipped"].item() == 0
    for group, stats in telemetry.group_table(metrics).items():
        assert stats["nan"] == 0 and stats["inf"] == 0 and 0 < stats["norm"] < float("inf"), group
        assert stats["zero_frac"] < 1.0, group


def test_compiled_lstm_update_does_not_recompile():
    from kernel import train as T

    cfg = Config.for_env("seedbed", num_envs=4, num_steps=3, total_steps=4 * 3 * 3, num_minibatches=2,
                         update_epochs=1, hidden=(16,), lstm_size=8, compile=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = T.make_train(cfg).train()
    assert result.progress.update == 3 and int(result.state.step) == 3
    # Rollout segment and grad step, each compiled once.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
