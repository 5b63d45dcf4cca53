"""Compiled vs eager update, and no recompilation. Compiling costs seconds, so the runs are shared
by every test in this module."""
import pytest
import torch
import torch._dynamo

from kernel import agree
from kernel import train as T
from kernel.config import Config
from kernel.tree import leaves

SMALL = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 3, update_epochs=2, num_minibatches=2,
               hidden=(16, 16), seed=3)


def three_updates(compile_: bool):
    train = T.make_train(SMALL.replace(compile=compile_))
    state = train.init()
    metrics = []
    for _ in range(3):
        state, m = train.iteration(state)
        metrics.append({k: v for k, v in m.items() if k != "episodes"})
    return train.built, state, metrics


@pytest.fixture(scope="module")
def eager():
    return three_updates(False)


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # Any recompilation of the rollout step or the update step during these three updates raises.
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = three_updates(True)
    return out, dict(torch._dynamo.utils.counters["stats"])


def test_compiled_update_equals_eager(eager, compiled):
    """Leaf by leaf (kernel.agree), within float32's bound for several iterations."""
    (_, state_c, metrics_c), _ = compiled
    _, state_e, metrics_e = eager
    start = T.make_train(SMALL.replace(compile=False)).init()
    tol = agree.AFTER_ITERATIONS["fp32"]
    assert agree.state_disagreements(state_e, state_c, start, tol) == []
    for mc, me in zip(metrics_c, metrics_e):
        wanted = {k: me[k] for k in ("loss", "v_loss", "entropy", "lr", "skipped_total")}
        assert agree.output_disagreements(wanted, mc, tol) == []
    # Params moved: the comparison is not between two untouched initialisations.
    assert any(not torch.equal(a, b) for a, b in zip(leaves(start.params), leaves(state_e.params)))


def test_no_recompilation_across_updates(compiled):
    _, stats = compiled
    # Two compiled functions (rollout segment, grad step), each compiled exactly once.
    assert stats.get("unique_graphs", 0) == 2


def test_eager_run_is_reproducible_from_the_seed(eager):
    _, again, _ = three_updates(False)
    for a, b in zip(leaves(again.params), leaves(eager[1].params)):
        assert torch.equal(a, b)
