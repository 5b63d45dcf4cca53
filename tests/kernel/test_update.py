"""Compiled vs eager update, and no recompilation. Compiling costs seconds, so the runs are shared
by every test in this module."""
import pytest
import torch
import torch._dynamo

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
    return train.run, state, metrics


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
    (_, state_c, metrics_c), _ = compiled
    _, state_e, metrics_e = eager
    flat_c = leaves(state_c.params)
    flat_e = leaves(state_e.params)
    for c, e in zip(flat_c, flat_e):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)
    for mc, me in zip(metrics_c, metrics_e):
        for k in mc:
            torch.testing.assert_close(mc[k], me[k], rtol=1e-3, atol=1e-5, equal_nan=True)
    # Params moved: the comparison is not between two untouched initialisations.
    init = T.make_train(SMALL.replace(compile=False)).init().params
    assert any(not torch.equal(a, b) for a, b in zip(leaves(init), flat_e))


def test_no_recompilation_across_updates(compiled):
    _, stats = compiled
    # Three compiled functions (rollout segment, advantages, grad step), each compiled exactly once.
    assert stats.get("unique_graphs", 0) == 3


def test_eager_run_is_reproducible_from_the_seed(eager):
    _, again, _ = three_updates(False)
    for a, b in zip(leaves(again.params), leaves(eager[1].params)):
        assert torch.equal(a, b)
