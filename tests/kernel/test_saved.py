"""Saved compiled functions (:mod:`kernel.saved`): a function the helper saves loads in another
:class:`kernel.hot.Hot` and gives the traced function's results bit for bit; a call its guards
reject, or a file that does not load, is traced instead; a file's name changes with what shapes
its graph and with the code; and a wrong function saved where a tiered run loads is caught by
the check at the switch, which keeps the run eager."""
import time

import pytest
import torch

from kernel import plan, saved
from kernel import train as T
from kernel.build import build, init_state
from kernel.config import Config
from kernel.hot import Hot
from kernel.plan import Plan
from kernel.tree import leaves

SMALL = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 12, update_epochs=2, num_minibatches=2,
               hidden=(16, 16), seed=3, fuse="off", compile_from_update=None)


def layer(params, x):
    return torch.tanh(x @ params["w"] + params["b"]).sum(0)


PARAMS = {"w": torch.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": torch.tensor([0.1, -0.2, 0.3])}
X = torch.linspace(-2.0, 2.0, 20).reshape(5, 4)


@pytest.fixture(scope="module")
def saved_layer(tmp_path_factory):
    """The file a saving Hot wrote at its first call, and what that call returned."""
    path = tmp_path_factory.mktemp("saved") / "layer.bin"
    saver = Hot(layer)
    saver.save_to = path
    return path, saver(PARAMS, X)


def loading(path) -> Hot:
    hot = Hot(layer)
    hot.load_from = path
    return hot


def test_a_saved_function_loads_and_gives_the_traced_functions_results_bit_for_bit(saved_layer):
    path, first = saved_layer
    assert path.is_file()
    hot = loading(path)
    got = hot(PARAMS, X)
    assert hot.loaded
    assert torch.equal(got, first) and torch.equal(got, Hot(layer)(PARAMS, X))
    torch.testing.assert_close(got, layer(PARAMS, X))


def test_a_call_its_guards_reject_is_traced_instead(saved_layer):
    path, _ = saved_layer
    wider = torch.linspace(-1.0, 1.0, 28).reshape(7, 4)
    first_call_rejected = loading(path)
    torch.testing.assert_close(first_call_rejected(PARAMS, wider), layer(PARAMS, wider))
    assert not first_call_rejected.loaded
    hot = loading(path)
    hot(PARAMS, X)
    assert hot.loaded  # then a call of another shape, and one of another dtype
    torch.testing.assert_close(hot(PARAMS, wider), layer(PARAMS, wider))
    doubled = {k: v.double() for k, v in PARAMS.items()}
    torch.testing.assert_close(hot(doubled, X.double()), layer(doubled, X.double()))


@pytest.mark.parametrize("content", [b"", b"not a saved function", None])
def test_a_file_that_does_not_load_is_traced_instead(saved_layer, tmp_path, content):
    path = tmp_path / "layer.bin"
    if content is not None:
        path.write_bytes(content)
    else:  # cut short
        path.write_bytes(saved_layer[0].read_bytes()[:1000])
    hot = loading(path)
    torch.testing.assert_close(hot(PARAMS, X), layer(PARAMS, X))
    assert not hot.loaded


def test_a_files_name_changes_with_what_shapes_the_graph_and_with_the_code(monkeypatch):
    named = lambda cfg, name="grad_step": saved.saved_path(build(cfg, plan=Plan(True, False, "x")), name)  # noqa: E731
    base = named(SMALL)
    assert named(SMALL.replace(seed=9, total_steps=4 * 16 * 50)) == base  # no graph holds them
    assert named(SMALL, "segment") != base
    for other in (SMALL.replace(hidden=(16, 8)), SMALL.replace(norm_adv=False), SMALL.replace(activation="relu"),
                  SMALL.replace(clip_coef=0.1)):
        assert named(other) != base, other
    monkeypatch.setattr(saved, "source_digest", lambda: "other code")
    assert named(SMALL) != base


def test_a_wrong_function_saved_where_a_tiered_run_loads_is_caught_and_the_run_stays_eager(tmp_path, monkeypatch):
    """The grad step of a build without advantage normalization (a constant of its graph, same
    shapes) saved under the name the run's own grad step loads from, as a stale file would be: the
    run loads it (its guards see the same arguments), the check at the switch names the leaves,
    and the run is the eager run to the end."""
    records = tmp_path / "records"  # (inductor's cache stays the shared one; the saved files are the test's own)
    monkeypatch.setattr(plan, "records_dir", lambda: records)
    monkeypatch.setattr(saved, "records_dir", lambda: records)
    right = build(SMALL)
    wrong = build(SMALL.replace(norm_adv=False), plan=Plan(True, False, "x"))
    wrong.hot["grad_step"].save_to = saved.saved_path(right, "grad_step")
    T.iteration(wrong, init_state(wrong))
    plan.mark_helped(SMALL, False, None, 1, 0.0)  # (the run starts no helper: it loads at once)
    # (each update waits while the run traces its segment, so that the short run reaches its switch)
    slow = lambda log: time.sleep(0.5) if log.tier and log.tier.startswith("eager; compiling") else None  # noqa: E731
    out = T.make_train(SMALL).train(on_update=slow)
    assert out.summary["tiers"]["loaded"] == ["grad_step"]
    check = out.summary["switch_check"]
    assert check["agreed"] is False and any(": params." in p for p in check["problems"]), check
    assert not any(p.startswith("rollout") for p in check["problems"])
    assert out.summary["switch_update"] is None
    eager = T.make_train(SMALL.replace(compile=False)).train()
    assert all(torch.equal(a, b) for a, b in zip(leaves(out.state), leaves(eager.state), strict=True))


def test_only_unfused_cpu_builds_of_the_configs_own_env_save_and_load():
    """A fused iteration is one graph the switch cannot check stage by stage, and a caller's own
    env is not what the config (the file's name) says: both trace with every guard."""
    assert saved.supported(build(SMALL, plan=Plan(True, False, "x")))
    assert not saved.supported(build(SMALL, plan=Plan(True, True, "x")))
    assert not saved.supported(build(SMALL, plan=Plan(True, False, "x"))._replace(own_env=True))
