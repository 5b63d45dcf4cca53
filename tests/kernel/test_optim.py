import pytest
import torch

from kernel import optim
from kernel.tree import global_norm, leaves


def make_problem(gen):
    params = {"a": {"w": torch.randn(8, 5, generator=gen), "b": torch.randn(8, generator=gen)},
              "c": torch.randn(3, generator=gen)}
    data = [(torch.randn(16, 5, generator=gen), torch.randn(16, generator=gen)) for _ in range(20)]
    return params, data


def loss_of(params, x, y):
    h = torch.tanh(x @ params["a"]["w"].T + params["a"]["b"])
    return ((h.sum(-1) * params["c"].sum() - y) ** 2).mean() * 50.0  # big gradients so clipping bites


def gap_to_torch_adam(gen, tx) -> tuple[float, bool, float]:
    """Largest gap between ``tx``'s params and ``torch.optim.Adam`` + ``clip_grad_norm_`` (lr 3e-3,
    eps 1e-5, max norm 0.5) after 20 steps from the same start, whether clipping engaged, and the
    largest relative gap between the two global gradient norms."""
    params, data = make_problem(gen)
    ref = {"w": params["a"]["w"].clone().requires_grad_(), "b": params["a"]["b"].clone().requires_grad_(),
           "c": params["c"].clone().requires_grad_()}
    opt = torch.optim.Adam(ref.values(), lr=3e-3, eps=1e-5, foreach=False)
    state = tx.init(params)
    clipped_somewhere, norm_gap = False, 0.0
    for x, y in data:
        opt.zero_grad()
        loss_of({"a": {"w": ref["w"], "b": ref["b"]}, "c": ref["c"]}, x, y).backward()
        total = torch.nn.utils.clip_grad_norm_(list(ref.values()), 0.5)
        clipped_somewhere |= bool(total > 0.5)
        opt.step()

        grads = torch.func.grad(loss_of)(params, x, y)
        norm_gap = max(norm_gap, float((global_norm(grads) - total).abs() / total))
        updates, state = tx.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    ours = [params["a"]["w"], params["a"]["b"], params["c"]]
    gap = max(float((a - b.detach()).abs().max()) for a, b in zip(ours, ref.values()))
    return gap, clipped_somewhere, norm_gap


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_with_global_norm_clip_matches_torch_optim_over_20_steps(gen, foreach):
    tx = optim.adam(3e-3, eps=1e-5, max_grad_norm=0.5, foreach=foreach)
    gap, clipped, norm_gap = gap_to_torch_adam(gen, tx)
    assert clipped and gap <= 1e-6 and norm_gap <= 1e-4


WRONG_ADAM = {
    "lr x1.01": dict(learning_rate=3.03e-3),
    "max_grad_norm x1.1": dict(max_grad_norm=0.55),
    "no clip": dict(max_grad_norm=None),
    "b1 0.91": dict(b1=0.91),
    "b2 0.99": dict(b2=0.99),
}


@pytest.mark.parametrize("variant", WRONG_ADAM)
def test_a_wrong_optimizer_fails_the_comparison_with_torch_adam(gen, variant):
    kwargs = dict(dict(learning_rate=3e-3, eps=1e-5, max_grad_norm=0.5), **WRONG_ADAM[variant])
    gap, _, _ = gap_to_torch_adam(gen, optim.adam(**kwargs))
    assert gap > 1e-6, variant


def test_linear_schedule_anneals_once_per_update():
    sched = optim.linear_schedule(1.0, 0.0, transition_steps=4, every=3)
    values = [sched(torch.tensor(c)).item() for c in range(15)]
    assert values[:3] == [1.0, 1.0, 1.0]
    assert values[3:6] == [0.75] * 3
    assert values[12:] == [0.0] * 3


def test_scheduled_learning_rate_scales_updates():
    tx = optim.scale_by_learning_rate(optim.linear_schedule(2.0, 0.0, 2))
    g = {"x": torch.ones(2)}
    state = tx.init(g)
    u1, state = tx.update(g, state)
    u2, state = tx.update(g, state)
    u3, state = tx.update(g, state)
    assert u1["x"].tolist() == [-2.0, -2.0] and u2["x"].tolist() == [-1.0, -1.0] and u3["x"].tolist() == [0.0, 0.0]


def test_clip_leaves_small_gradients_alone():
    tx = optim.clip_by_global_norm(10.0)
    g = {"x": torch.tensor([3.0, 4.0])}
    out, _ = tx.update(g, tx.init(g))
    torch.testing.assert_close(out["x"], g["x"])


def test_apply_if_finite_skips_a_non_finite_step_and_counts_it():
    tx = optim.apply_if_finite(optim.adam(0.1))
    params = {"w": torch.tensor([1.0, -2.0])}
    state = tx.init(params)
    updates, state = tx.update({"w": torch.tensor([0.5, 0.5])}, state, params)
    params = optim.apply_updates(params, updates)
    before_params, before_inner = params, state["inner"]
    for n in (1, 2):
        updates, state = tx.update({"w": torch.tensor([float("nan"), 1.0])}, state, params)
        params = optim.apply_updates(params, updates)
        assert torch.equal(params["w"], before_params["w"])
        assert all(torch.equal(a, b) for a, b in zip(leaves(state["inner"]), leaves(before_inner)))
        assert optim.consecutive_skips(state).item() == n and optim.skipped_steps(state).item() == n
        assert not state["last_finite"]
    _, state = tx.update({"w": torch.tensor([0.5, 0.5])}, state, params)
    assert optim.consecutive_skips(state).item() == 0 and optim.skipped_steps(state).item() == 2
    assert state["inner"]["adam"]["count"].item() == 2
    # The caller's verdict wins: finite gradients with a non-finite loss are skipped too.
    _, state = tx.update({"w": torch.tensor([0.5, 0.5])}, state, params, finite=torch.tensor(False))
    assert optim.skipped_steps(state).item() == 3


def test_training_learning_rate_is_the_linear_schedule_of_the_update():
    from kernel.config import Config
    from kernel.ppo import hyper_tensors

    cfg = Config(num_envs=2, num_steps=8, total_steps=2 * 8 * 4, num_minibatches=1, lr=1e-3)
    lrs = [hyper_tensors(cfg, torch.tensor(u))["lr"].item() for u in range(5)]
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0]))
    flat = [hyper_tensors(cfg.replace(anneal_lr=False), torch.tensor(u))["lr"].item() for u in (0, 3)]
    assert flat == [torch.tensor(1e-3).item()] * 2
