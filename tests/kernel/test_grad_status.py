"""The gradient table's status per group, from batches built to produce each one."""
import json

import torch
from click.testing import CliRunner
from test_factored import HYPER, forced_batch

from cli.main import cli
from envs.seedbed import GERMINATE, WAIT
from kernel import loss_scale, optim, telemetry
from kernel.ppo import make_grad_step


def table_for(policy, params, batch) -> dict:
    tx = optim.apply_if_finite(optim.adam(None, max_grad_norm=0.5))
    step = make_grad_step(policy, tx, True, True, norm_entropy=True)
    _, _, _, metrics = step(params, tx.init(params), loss_scale.NoOpLossScale(), batch, torch.arange(4), HYPER)
    return telemetry.group_table(metrics)


def test_head_with_one_valid_action_on_every_relevant_step_is_forced():
    env, policy, params, batch = forced_batch(WAIT)
    batch["obs"]["masks"]["op"][...] = False
    batch["obs"]["masks"]["op"][..., WAIT] = True  # WAIT is the only valid op everywhere
    stats = table_for(policy, params, batch)["heads.op"]
    assert stats["relevant"] > 0 and stats["decisions"] == 0 and stats["zero_frac"] == 1.0
    assert telemetry.classify(stats) == "forced"


def test_head_never_relevant_is_not_relevant():
    env, policy, params, batch = forced_batch(WAIT)  # blueprint matters only for GERMINATE
    stats = table_for(policy, params, batch)["heads.blueprint"]
    assert stats["relevant"] == 0 and telemetry.classify(stats) == "not relevant"


def test_zeroed_gradient_with_decisions_is_dead():
    env, policy, params, batch = forced_batch(GERMINATE)  # every head matters, with real choices
    sequence = policy.sequence

    def cut_op(params, *inputs):  # no gradient reaches the op head, on purpose
        logits, value = sequence(params, *inputs)
        return dict(logits, op=logits["op"].detach()), value

    table = table_for(policy._replace(sequence=cut_op), params, batch)
    assert table["heads.op"]["decisions"] > 0 and table["heads.op"]["zero_frac"] == 1.0
    assert telemetry.classify(table["heads.op"]) == "dead"
    assert telemetry.classify(table["heads.slot"]) == "finite"


def test_non_finite_gradient_is_non_finite():
    env, policy, params, batch = forced_batch(GERMINATE)
    batch["head_logp"]["op"][0, 0] = float("nan")
    table = table_for(policy, params, batch)
    assert telemetry.classify(table["heads.op"]) == "non-finite"


def test_magnitude_classes_follow_each_groups_own_history():
    history = telemetry.NormHistory(window=50, min_updates=5)
    for _ in range(5):  # no reference yet
        assert history.statuses({"value": {"norm": 40.0}, "trunk": {"norm": 0.4}}) == \
            {"value": "finite", "trunk": "finite"}
    # A value group whose norm is always ~40 is healthy; a trunk group jumping 100x is not.
    assert history.statuses({"value": {"norm": 45.0}, "trunk": {"norm": 40.0}}) == \
        {"value": "healthy", "trunk": "very large"}
    assert history.statuses({"value": {"norm": 0.3}, "trunk": {"norm": 0.07}}) == \
        {"value": "vanishing", "trunk": "small"}
    assert history.statuses({"value": {"norm": 400.0}, "trunk": {"norm": 0.4}}) == \
        {"value": "large", "trunk": "healthy"}


def test_grads_json_carries_status_and_counts():
    r = CliRunner().invoke(cli, ["grads", "--env", "seedbed", "--num-envs", "4", "--num-steps", "8",
                                 "--precision", "bf16,fp32", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert list(report) == ["bf16", "fp32"]
    for name, groups in report.items():
        op = groups["heads.op"]
        assert op["status"] in telemetry.STATUSES and op["relevant"] > 0 and "decisions" in op
        assert groups["value"]["status"] == ("finite" if name == "fp32" else "healthy")
