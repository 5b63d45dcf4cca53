"""A run that switches from eager to compiled code at a recorded update (``compile_from_update``):
the eager run exactly up to the switch (whose update runs eagerly and checks the compiled one on
the same rollout), within float32's bound after it, bit for bit itself when replayed or resumed,
and eager to the end when the compiled update is wrong. The runs are shared by every test in this
module (compiling costs seconds)."""
import time

import pytest
import torch
import torch._dynamo

from envs.base import ActionSpec, Head
from kernel import agree, checkpoint, heads
from kernel import train as T
from kernel.config import Config
from kernel.resume import Checkpointer, checkpoint_path, read_config
from kernel.tree import leaves

SMALL = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 5, update_epochs=2, num_minibatches=2,
               hidden=(16, 16), seed=3, fuse="off")
SWITCH = 2
TOL = agree.AFTER_ITERATIONS["fp32"]


def trained(cfg: Config, until: int | None = None, start: T.Trained | None = None, built=None,
            checkpointer=None) -> tuple:
    """``(Trained, each update's tier)``: 1.0 for a compiled update, 0.0 for an eager one."""
    tiers = []
    train = T.trainer(built) if built is not None else T.make_train(cfg)
    out = train.train(start.state if start else None, start.progress if start else None,
                      on_update=lambda log: tiers.append(log.metrics["compiled"]), until_update=until,
                      checkpointer=checkpointer)
    return out, tiers


def identical(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


@pytest.fixture(scope="module")
def eager_before():
    """The eager run through the switch update (which runs eagerly)."""
    return trained(SMALL.replace(compile=False), until=SWITCH + 1)[0]


@pytest.fixture(scope="module")
def eager_after(eager_before):
    return trained(SMALL.replace(compile=False), start=eager_before)[0]


@pytest.fixture(scope="module")
def switched():
    """``(Trained, tiers, wall seconds of the whole call)``. Any recompilation raises: the eager
    updates' carry (which may hold one tensor twice) must not specialize the compiled graphs."""
    start = time.perf_counter()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out, tiers = trained(SMALL.replace(compile_from_update=SWITCH))
    return out, tiers, time.perf_counter() - start


def test_the_switch_update_and_its_check_are_recorded_in_the_telemetry_and_the_summary(switched):
    out, tiers, wall = switched
    assert tiers == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert out.summary["switch_update"] == SWITCH and out.summary["compile_s"] > 0
    assert out.summary["compile_s"] + out.summary["run_s"] <= wall  # each second counted once
    check = out.summary["switch_check"]
    assert {k: check[k] for k in ("update", "agreed", "problems")} == {"update": SWITCH, "agreed": True, "problems": []}
    # the gaps it agreed with are reported, non-zero (compiled code rounds differently) and within bounds
    assert 0 < check["largest_gap"]["update"][0] <= check["allowed"]["update"]
    assert check["largest_gap"]["update"][1].startswith("params.")
    eager = T.make_train(SMALL.replace(compile=False)).train(until_update=1).summary
    assert eager["switch_update"] is None and eager["switch_check"] is None


def test_through_the_switch_update_the_run_is_the_eager_run_bit_for_bit(eager_before):
    out, tiers = trained(SMALL.replace(compile_from_update=SWITCH), until=SWITCH + 1)
    assert tiers == [0.0, 0.0, 0.0]
    assert identical(out.state, eager_before.state)


def test_after_the_switch_the_run_equals_the_eager_run_within_float32s_bound(switched, eager_before, eager_after):
    out = switched[0]
    # Two compiled updates after the switch, within the bound of several compiled iterations.
    assert agree.state_disagreements(eager_after.state, out.state, eager_before.state, TOL) == []
    assert not identical(out.state.params, eager_before.state.params)  # the updates after the switch moved them


@pytest.mark.parametrize("wrong", [dict(ent_coef=0.0), dict(gae_lambda=0.9), dict(lr=5e-4)])
def test_the_bound_fails_the_eager_run_with_a_term_dropped_or_lambda_or_the_rate_changed(switched, eager_before, wrong):
    """The same comparison catches the post-switch updates run with a wrong setting."""
    out = switched[0]
    variant = trained(SMALL.replace(compile=False, **wrong), start=eager_before)[0]
    assert agree.state_disagreements(variant.state, out.state, eager_before.state, TOL) != []


def test_a_replay_with_the_same_seed_and_switch_is_bit_identical(switched):
    again, tiers = trained(SMALL.replace(compile_from_update=SWITCH))
    assert tiers == switched[1]
    assert identical(again.state, switched[0].state)


def test_a_run_resumed_before_the_switch_keeps_it(switched):
    first, _ = trained(SMALL.replace(compile_from_update=SWITCH), until=1)
    rest, tiers = trained(SMALL.replace(compile_from_update=SWITCH), start=first)
    assert tiers == [0.0, 0.0, 1.0, 1.0]
    assert identical(rest.state, switched[0].state)


def test_a_wrong_compiled_update_is_caught_at_the_switch_and_the_run_finishes_eagerly(eager_before, eager_after,
                                                                                    tmp_path):
    """The compiled grad step of a build without advantage normalization (a constant of its graph)
    spliced into a switched run: the check names the leaves, the run is the eager run to the end,
    and its checkpoints from the switch on say eager, so a resumed run does not compile."""
    built = T.build(SMALL.replace(compile_from_update=SWITCH))
    wrong = T.build(SMALL.replace(norm_adv=False)).stages.grad_step
    out, tiers = trained(None, built=built._replace(stages=built.stages._replace(grad_step=wrong)),
                         checkpointer=Checkpointer(tmp_path, every=1, keep=5))
    check = out.summary["switch_check"]
    assert check["agreed"] is False and any(": params." in p for p in check["problems"])
    assert out.summary["switch_update"] is None and tiers == [0.0] * 5
    assert identical(out.state, eager_after.state)
    compiles = {u: read_config(checkpoint.load(checkpoint_path(tmp_path, u))[1], u).compile for u in range(1, 6)}
    assert compiles == {1: True, 2: True, 3: False, 4: False, 5: False}


def test_a_wrong_compiled_rollout_is_caught_at_the_switch_and_the_run_finishes_eagerly(eager_after):
    """The compiled segment of a relu policy (the same params) spliced into a switched run: replayed
    on the eager rollout's inputs with its actions forced, its values and log-probs differ."""
    built = T.build(SMALL.replace(compile_from_update=SWITCH))
    wrong = T.build(SMALL.replace(activation="relu")).stages.segment
    out, tiers = trained(None, built=built._replace(stages=built.stages._replace(segment=wrong)))
    check = out.summary["switch_check"]
    assert check["agreed"] is False and any(p.startswith("rollout: traj.values") for p in check["problems"])
    assert not any(p.startswith("minibatch step") for p in check["problems"])  # the update stages were right
    assert out.summary["switch_update"] is None and tiers == [0.0] * 5
    assert identical(out.state, eager_after.state)


def test_the_right_rollout_agrees_on_every_leaf_with_the_actions_equal(switched):
    check = switched[0].summary["switch_check"]
    assert check["agreed"] is True
    gap, leaf = check["largest_gap"]["rollout"]
    assert leaf is not None and gap <= agree.AT_SWITCH["fp32"].output


def test_forcing_noise_makes_sampling_take_the_given_actions(gen):
    spec = ActionSpec((Head("a", 3), Head("u", 2, kind="gaussian")))
    logits = {"a": torch.tensor([[0.0, 15.0, -3.0], [2.0, 0.0, 0.0]]), "u": torch.zeros(2, 2, 2)}
    actions = {"a": torch.tensor([0, 2]), "u": torch.zeros(2, 2)}
    noise = {"a": torch.rand(2, 3, generator=gen), "u": torch.randn(2, 2, generator=gen)}
    forced = heads.forcing_noise(spec, actions, noise)
    assert torch.equal(heads.sample(spec, logits, forced)["a"], actions["a"])  # 15 logits behind, still taken
    assert not torch.equal(heads.sample(spec, logits, noise)["a"], actions["a"])  # the drawn noise would not
    assert forced["u"] is noise["u"]


def test_a_negative_switch_update_is_refused():
    with pytest.raises(ValueError, match="compile_from_update must be a non-negative integer"):
        SMALL.replace(compile_from_update=-1)
