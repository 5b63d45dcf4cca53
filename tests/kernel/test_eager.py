"""The eager forms (kernel.eager) give what the traced forms give: 0-d tensor constants round as the
numbers do, a host-read flag picks what ``torch.where`` picks, foreach norms and finiteness checks
equal the per-leaf ones. Each is compared against the form a traced graph or ``vmap`` runs, and a
deliberately wrong variant shows the comparison can fail."""
import pytest
import torch

import envs.cartpole as cartpole
from kernel import eager, optim
from kernel.loss_scale import all_finite
from kernel.tree import cast_floating, global_norm, leaves, norm_of

NAN, INF = float("nan"), float("inf")


def test_constants_are_cached_tensors_eagerly_and_numbers_in_a_transform():
    values = {"a": 0.1, "n": 3}
    x = torch.zeros(2, dtype=torch.float64)
    k = eager.constants(values, x)
    assert k["a"].dtype == torch.float64 and k["a"].dim() == 0 and k["a"].item() == 0.1
    assert eager.constants(values, x) is k  # made once
    assert eager.constants(values, x.float())["a"].dtype == torch.float32
    seen = []
    torch.func.vmap(lambda row: seen.append(eager.constants(values, row)) or row)(torch.zeros(3, 2))
    assert seen == [values]


def cartpole_steps(env, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    state, _ = env.reset(torch.rand(env.num_envs, 4, generator=gen, dtype=env.dtype))
    out = []
    for _ in range(steps):
        action = torch.randint(2, (env.num_envs,), generator=gen)
        step = env.step(state, action, torch.rand(env.num_envs, 4, generator=gen, dtype=env.dtype))
        out.append((step.final_obs, step.obs, step.state["t"], step.terminated, step.truncated))
        state = step.state
    return out


def bitwise_equal(a, b) -> bool:
    return all(torch.equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cartpole_with_tensor_constants_is_bitwise_the_traced_form(dtype, monkeypatch):
    env = cartpole.CartPole(64, dtype=dtype, max_steps=40)  # truncations as well as terminations
    ours = cartpole_steps(env, 300, seed=3)
    assert any(s[3].any() for s in ours) and any(s[4].any() for s in ours)
    monkeypatch.setattr(cartpole, "constants", lambda values, like: values)  # what a trace reads
    assert bitwise_equal(ours, cartpole_steps(env, 300, seed=3))
    # The check has teeth: one constant a few float32 ulps off is seen.
    nudged = dict(cartpole.PHYSICS, tau=cartpole.TAU * (1 + 1e-6))
    monkeypatch.setattr(cartpole, "constants", lambda values, like: nudged if values is cartpole.PHYSICS else values)
    assert not bitwise_equal(ours, cartpole_steps(env, 300, seed=3))


LEAF_SETS = {
    "finite": [torch.randn(5, 3), torch.randn(4)],
    "nan": [torch.randn(5, 3), torch.tensor([1.0, NAN, 2.0])],
    "inf": [torch.tensor([[INF, 1.0]]), torch.randn(4)],
    "-inf": [torch.randn(2), torch.tensor([0.0, -INF])],
    "nan and inf": [torch.tensor([INF, NAN, 1e30]), torch.randn(3)],
}


@pytest.mark.parametrize("case", LEAF_SETS)
def test_all_finite_eagerly_is_the_per_leaf_check(case):
    xs = LEAF_SETS[case]
    reference = all(bool(torch.isfinite(x).all()) for x in xs)
    assert bool(all_finite(xs)) == reference == (case == "finite")
    # the traced form, as vmap runs it (one run of a batch of one)
    assert torch.func.vmap(lambda *b: all_finite(list(b)))(*(x[None] for x in xs)).tolist() == [reference]


def test_norm_of_eagerly_is_bitwise_the_per_leaf_form():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 4, generator=gen) * 10, torch.randn(64, generator=gen),
          torch.randn(3, 64, generator=gen) * 1e-3]
    traced = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in xs]))
    assert torch.equal(norm_of(xs), traced) and torch.equal(global_norm({"a": xs[0], "b": xs[1:]}), traced)
    assert torch.equal(torch.func.vmap(lambda *b: norm_of(list(b)))(*(x[None] for x in xs))[0], traced)
    assert not torch.equal(norm_of([xs[0], xs[2]]), traced)  # a leaf left out is seen


@pytest.mark.parametrize("flag", [True, False])
def test_where_flag_read_on_the_host_picks_what_torch_where_picks(flag):
    new, old = {"a": torch.randn(3), "b": [torch.randn(2, 2)]}, {"a": torch.randn(3), "b": [torch.randn(2, 2)]}
    f = torch.tensor(flag)
    for other in (old, None):
        eager_out = optim.where_flag(f, new, other)
        traced = torch.func.vmap(lambda g, other=other: optim.where_flag(g, new, other))(f[None])
        expected = new if flag else other or {"a": torch.zeros(3), "b": [torch.zeros(2, 2)]}
        for got, want, batched in zip(leaves(eager_out), leaves(expected), leaves(traced)):
            assert torch.equal(got, want) and torch.equal(batched[0], want)


def test_cast_floating_returns_the_tree_itself_only_when_nothing_changes():
    tree = {"w": torch.zeros(2), "n": torch.zeros(2, dtype=torch.int64), "s": [torch.zeros(1, dtype=torch.float64)]}
    cast = cast_floating(tree, torch.float32)
    assert cast is not tree and cast["s"][0].dtype == torch.float32 and cast["n"].dtype == torch.int64
    assert cast_floating(cast, torch.float32) is cast


def test_an_eager_segment_runs_in_inference_mode_and_hands_back_ordinary_tensors():
    from kernel.build import build, init_state
    from kernel.config import Config

    run = build(Config(num_envs=4, num_steps=8, hidden=(16, 16), seed=3, compile=False))
    state = init_state(run)
    noise = run.rollout.noise(torch.Generator().manual_seed(0))
    seen, step = [], run.env.step
    run.env.step = lambda *args: seen.append(torch.is_inference_mode_enabled()) or step(*args)
    carry, traj = run.stages.segment(state.params, state.carry, *noise)
    assert seen == [True] * 8
    run.env.step = step
    with torch.no_grad():
        plain_carry, plain_traj = run.rollout.segment(state.params, state.carry, *noise, scanned=False)
    assert all(torch.equal(a, b) for a, b in zip(leaves((carry, traj)), leaves((plain_carry, plain_traj))))
    assert not any(x.is_inference() for x in leaves((carry, traj)))
    obs = traj["obs"].requires_grad_(True)  # the update differentiates through what the segment made
    (obs * 2).sum().backward()
    traj["rewards"].add_(1.0)  # and may change it in place
