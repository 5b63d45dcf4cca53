"""Explicit precision: the head path stays float32, gradients reach every head under fp32, bf16
and fp16 (eager and compiled), and the seed ticket's two failure modes cannot happen."""
import pytest
import torch
from torch.func import grad

from envs.base import ActionSpec, Head
from kernel import distributions as D
from kernel import loss_scale, nn, optim, telemetry
from kernel.policy import make_policy
from kernel.ppo import make_grad_step, ppo_loss
from kernel.precision import PRESETS, Precision, cast, parse, with_precision
from kernel.tree import leaves

HEADS = {"op": 4, "slot": 3}
SPEC = ActionSpec((Head("op", 4), Head("slot", 3)))
HYPER = {"clip_coef": torch.tensor(0.2), "ent_coef": torch.tensor(0.01), "vf_coef": torch.tensor(0.5),
         "lr": torch.tensor(1e-3)}


def masked_batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    masks = {}
    actions = {}
    for h, k in HEADS.items():
        m = torch.rand(n, k, generator=g) < 0.6
        m[torch.arange(n), torch.randint(k, (n,), generator=g)] = True
        masks[h] = m
        actions[h] = torch.multinomial(m.float(), 1, generator=g).squeeze(-1)
    return {
        "obs": {"x": torch.randn(n, 5, generator=g), "masks": masks},
        "actions": actions,
        "head_logp": {h: -torch.rand(n, generator=g) - 0.5 for h in HEADS},
        "values": torch.randn(n, generator=g),
        "advantages": torch.randn(n, generator=g),
        "returns": torch.randn(n, generator=g),
    }


def policy_for(name):
    return make_policy(5, SPEC, hidden=(8, 8), precision=PRESETS[name])


def fresh_params():
    return policy_for("fp32").init(torch.Generator().manual_seed(1))


def test_parse_presets_and_jmp_strings():
    assert parse("bf16").compute_dtype == torch.bfloat16
    assert parse("params=float32,compute=float16").compute_dtype == torch.float16
    assert parse("params=float32,compute=bfloat16,output=float32") == PRESETS["bf16"]
    for bad in ("fp8", "compute=int8", "params=float32,heads=float16", "compute"):
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError, match="float32"):
        Precision(head_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="master"):
        parse("params=bfloat16,compute=bfloat16")


def test_cast_touches_floating_leaves_only():
    tree = {"x": torch.zeros(2), "a": torch.zeros(2, dtype=torch.long), "m": torch.ones(2, dtype=torch.bool)}
    out = cast(tree, torch.bfloat16)
    assert out["x"].dtype == torch.bfloat16 and out["a"].dtype == torch.long and out["m"].dtype == torch.bool


def test_with_precision_computes_low_and_returns_float32_with_gradients_into_master_weights():
    seen = []

    def apply(p, x):
        seen.append((p["w"].dtype, x.dtype))
        return nn.linear_apply(p, x)

    params = nn.linear_init(torch.Generator().manual_seed(0), 3, 2, 1.0)
    f = with_precision(apply, PRESETS["bf16"])
    out = f(params, torch.randn(4, 3))
    assert seen == [(torch.bfloat16, torch.bfloat16)] and out.dtype == torch.float32
    g = grad(lambda p: f(p, torch.randn(4, 3)).sum())(params)
    assert g["w"].dtype == torch.float32 and bool(g["w"].abs().sum() > 0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_every_head_gets_finite_nonzero_gradients(name, compiled, monkeypatch):
    seen_dtypes = []
    original = D.log_probs

    def recording_log_probs(logits, mask=None):
        seen_dtypes.append(logits.dtype)
        return original(logits, mask)

    if not compiled:
        monkeypatch.setattr(D, "log_probs", recording_log_probs)
    precision = PRESETS[name]
    tx = optim.apply_if_finite(optim.adam(None, eps=1e-5, max_grad_norm=0.5))
    step = make_grad_step(policy_for(name), tx, clip_vloss=True, norm_adv=True)
    if compiled:
        step = torch.compile(step, fullgraph=True)
    params = fresh_params()
    batch = masked_batch()
    scale = loss_scale.for_precision(precision.needs_loss_scale, initial_scale=2.0 ** 8)
    new_params, _, new_scale, metrics = step(params, tx.init(params), scale, batch, torch.arange(32), HYPER)
    assert metrics["skipped"].item() == 0
    groups = telemetry.group_table(metrics)
    assert set(groups) == {"trunk", "heads.op", "heads.slot", "value"}
    for group, stats in groups.items():
        assert stats["nan"] == 0 and stats["inf"] == 0, group
        assert 0 < stats["norm"] < float("inf") and stats["zero_frac"] < 1.0, group
    for key in ("loss", "pg_loss", "v_loss", "entropy"):
        assert metrics[key].dtype == torch.float32
    # Master weights stay float32 and moved.
    for a in leaves(new_params):
        assert a.dtype == torch.float32
    assert not torch.equal(new_params["heads"]["op"]["w"], params["heads"]["op"]["w"])
    if not compiled:
        assert seen_dtypes and all(d == torch.float32 for d in seen_dtypes)


def test_low_precision_logits_are_refused_inside_a_compiled_function_too():
    f = torch.compile(lambda logits, a: D.log_prob(logits, a), fullgraph=True)
    with pytest.raises(Exception, match="float32"):
        f(torch.zeros(4, 3, dtype=torch.float16), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_inference_forward_first_changes_nothing(name):
    """The seed bug's deeper cause: under autocast a no_grad forward cached weight casts that the
    training forward then reused without an autograd link. Explicit casts have no cache."""
    policy = policy_for(name)
    params = fresh_params()
    batch = masked_batch()

    def loss_fn(p):
        return ppo_loss(p, batch, HYPER, policy)[0]

    clean = grad(loss_fn)(params)
    with torch.no_grad():
        policy.step(params, batch["obs"], {}, None)  # telemetry-style inference forward, same precision
    after = grad(loss_fn)(params)
    for a, b in zip(leaves(clean), leaves(after)):
        assert torch.equal(a, b)
    for h in HEADS:
        assert after["heads"][h]["w"].abs().sum() > 0


def test_naive_float16_head_path_gives_non_finite_head_gradients_and_fkernel_does_not():
    """Reproduce the ticket: logits left in float16 and masked with the usual large negative
    (-1e9, which float16 cannot hold: it becomes -inf), then log-softmax and entropy in float16."""
    params = fresh_params()
    batch = masked_batch()
    half = torch.float16

    def naive_loss(p):
        feats = nn.mlp_apply(cast(p["trunk"]["actor"], half), batch["obs"]["x"].to(half))
        total = 0.0
        for h in HEADS:
            logits = nn.linear_apply(cast(p["heads"][h], half), feats)  # left in float16
            masked = torch.where(batch["obs"]["masks"][h], logits, torch.tensor(-1e9).to(half))
            logp = torch.log_softmax(masked, -1)
            entropy = -(logp.exp() * logp).sum(-1)
            chosen = logp.gather(-1, batch["actions"][h].unsqueeze(-1)).float().mean()
            total = total - chosen - 0.01 * entropy.float().mean()
        return total

    naive = grad(naive_loss)(params)
    groups = telemetry.group_table(telemetry.grad_stats(naive, params, naive, telemetry.default_groups(params)))
    for h in HEADS:
        assert telemetry.classify(groups[f"heads.{h}"]) == "non-finite"

    ours = grad(lambda p: ppo_loss(p, batch, HYPER, policy_for("fp16"))[0])(params)
    ours_groups = telemetry.group_table(telemetry.grad_stats(ours, params, ours, telemetry.default_groups(params)))
    for group, stats in ours_groups.items():
        assert telemetry.classify(stats) not in ("non-finite", "dead"), group
