"""Many runs as one vmapped program: each run follows the run its seed and values give alone.

Tolerance: run r inside a group and the same run alone agree leaf by leaf after K updates within
float32's compiled-vs-eager tolerance (``kernel.agree``: params by their update, the rest by each
leaf's own size, counters and keys exactly). They do not agree bit for bit because the group's
policy and grad step are vmapped: batched matmuls may sum in another order than the one-run
matmuls. A run whose swept value is another run's must fail the same assertion.
"""
import pytest
import torch

from kernel import Config, agree, make_train
from kernel.group import grid, run_slice
from kernel.iteration import make_batch, per_run, with_advantages
from kernel.ppo import hyper_tensors
from kernel.resume import Checkpointer, latest_checkpoint, restore_state
from kernel.tree import leaves, tree_map

CARTPOLE = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 4, update_epochs=2, num_minibatches=2,
                  hidden=(16, 16), compile=False)
SEEDBED = Config.for_env("seedbed", num_envs=4, num_steps=5, total_steps=4 * 5 * 4, num_minibatches=2,
                         update_epochs=1, hidden=(16,), lstm_size=8, compile=False)
K = 3
TOL = agree.TOLERANCE["fp32"]


@pytest.mark.parametrize("config", [CARTPOLE, SEEDBED], ids=["cartpole-mlp", "seedbed-lstm"])
def test_each_run_of_a_group_equals_that_run_alone(config):
    sweep = {"lr": [1e-3, 3e-4], "gamma": [0.9], "max_grad_norm": [0.3]}
    group = make_train(config, seeds=[3, 5], sweep=sweep)
    assert group.built.group.count == 4
    state = group.init()
    for _ in range(K):
        state, metrics = group.iteration(state)
    assert metrics["loss"].shape == (4,)
    if config.env == "seedbed":  # per-head metrics per run
        assert metrics["head/op/relevant_steps"].shape == (4,) and metrics["grad/heads.slot/decisions"].shape == (4,)
    for r in (0, 3):
        alone = make_train(group.built.group.config(config, r))
        start = one = alone.init()
        for _ in range(K):
            one, one_metrics = alone.iteration(one)
        assert agree.state_disagreements(one, run_slice(state, r, config.num_envs), start, TOL) == []
        assert agree.output_disagreements({"loss": one_metrics["loss"]}, {"loss": metrics["loss"][r]}, TOL) == []
        # runs r and r + 2 share a seed and differ in their lr only
        other = run_slice(state, (r + 2) % 4, config.num_envs)
        assert agree.state_disagreements(one, other, start, TOL), f"run {r} matched the run with the other lr"
    # The swept values really differ between the runs: runs with other values ended elsewhere.
    assert not torch.equal(state.params["value"]["w"][0], state.params["value"]["w"][2])


def test_a_non_finite_run_is_skipped_alone():
    group = make_train(CARTPOLE, seeds=[0, 1])
    built, state = group.built, group.init()
    noise = built.rollout.noise([torch.Generator().manual_seed(s) for s in (0, 1)])
    with torch.no_grad():
        _, traj = built.stages.segment(state.params, state.carry, *noise)
    hyper = hyper_tensors(built.config, state.step, built.group)
    traj = per_run(with_advantages(built.stages, traj, hyper), 2)
    batch = make_batch(traj, traj["advantages"], traj["returns"], lead=1)
    batch["advantages"][1, 0] = float("nan")  # run 1's first row
    idx = torch.arange(32).expand(2, 32)
    params, opt_state, _, metrics = built.stages.grad_step(state.params, state.opt_state, state.loss_scale, batch,
                                                           idx, hyper)
    assert metrics["skipped"].tolist() == [0.0, 1.0]
    assert [int(x) for x in opt_state["total_notfinite"]] == [0, 1]
    take = lambda t, r: tree_map(lambda x: x[r], t)
    assert all(torch.equal(a, b) for a, b in zip(leaves(take(params, 1)), leaves(take(state.params, 1))))
    assert all(torch.equal(a, b) for a, b in zip(leaves(take(opt_state["inner"], 1)),
                                                 leaves(take(state.opt_state["inner"], 1))))
    assert not torch.equal(params["value"]["w"][0], state.params["value"]["w"][0])  # run 0 stepped


def test_a_group_resumes_bit_exactly(tmp_path):
    group = make_train(CARTPOLE, seeds=[0, 1, 2])
    straight = group.train()
    group.train(checkpointer=Checkpointer(tmp_path, every=2, keep=1), until_update=2)
    fresh = make_train(CARTPOLE, seeds=[0, 1, 2])
    state, progress = restore_state(latest_checkpoint(tmp_path), fresh.built, fresh.init())
    assert [p.update for p in progress] == [2, 2, 2]
    resumed = fresh.train(state=state, progress=progress)
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        assert torch.equal(a, b)
    assert straight.progress == resumed.progress


def test_grid_and_its_errors():
    runs = grid([0, 1], {"lr": [1e-3, 2e-3], "ent_coef": [0.0, 0.01]})
    assert runs.count == 8 and runs.seeds == (0, 1) * 4
    assert runs.setting(3) == {"lr": 1e-3, "ent_coef": 0.01}
    with pytest.raises(ValueError, match="cannot sweep 'hidden'"):
        grid([0], {"hidden": [1, 2]})
    with pytest.raises(ValueError, match="not a config key"):
        grid([0], {"learning_rate": [1.0]})
    with pytest.raises(ValueError, match="gamma must be in"):
        make_train(CARTPOLE, seeds=[0], sweep={"gamma": [1.5]})
    with pytest.raises(ValueError, match="need 2 seeds"):
        make_train(CARTPOLE, seeds=[0, 1]).init([5])


def test_compiled_group_equals_eager_group():
    config = CARTPOLE.replace(total_steps=4 * 16 * 2)
    states = []
    for compiled in (False, True):
        group = make_train(config.replace(compile=compiled), seeds=[0, 1])
        start = group.init()
        states.append(group.train(state=start).state)
    assert agree.state_disagreements(states[0], states[1], start, agree.AFTER_ITERATIONS["fp32"]) == []
