"""Normalization inside training: the rollout's observations and rewards are the raw env's run
through kernel.normalize in order; the statistics live in the state, per run in a group, and
resume bit for bit."""
import pytest
import torch

from envs.pendulum import Pendulum
from kernel import Config, agree, make_train
from kernel import normalize as N
from kernel.build import build, init_state
from kernel.group import run_slice
from kernel.resume import Checkpointer, latest_checkpoint, restore_state
from kernel.tree import leaves

CONFIG = Config.for_env("pendulum", num_envs=4, num_steps=16, total_steps=4 * 16 * 4, update_epochs=2,
                        num_minibatches=2, hidden=(16, 16), gamma=0.9, compile=False, norm_obs=True,
                        norm_reward=True)


def test_the_segment_sees_what_the_raw_env_gives_normalized_in_order():
    built = build(CONFIG)
    state = init_state(built)
    g = torch.Generator().manual_seed(3)
    action_noise, env_noise = built.rollout.noise(g)
    start = state.carry
    with torch.no_grad():
        carry, traj = built.stages.segment(state.params, start, action_noise, env_noise)
    # replay the raw env with the segment's own actions (clipped into the env) and noise
    env = Pendulum(4)
    env_state, stats, ret = start["env"], start["norm"]["obs"], start["norm"]["ret"]
    acc, raw = start["ret_acc"], []
    for t in range(CONFIG.num_steps):
        step = env.step(env_state, traj["actions"]["torque"][t].clamp(-2, 2), env_noise[t])
        raw.append(step.reward)
        stats = N.running_update(stats, step.obs)
        acc = N.accumulated_return(acc, step.reward, step.terminated, CONFIG.gamma)
        ret = N.running_update(ret, acc)
        torch.testing.assert_close(traj["rewards"][t], N.scaled_reward(step.reward, ret))
        if t + 1 < CONFIG.num_steps:
            torch.testing.assert_close(traj["obs"][t + 1], N.normalized(step.obs, stats))
        acc = torch.where(step.terminated | step.truncated, torch.zeros_like(acc), acc)
        env_state = step.state
    assert torch.equal(carry["norm"]["obs"]["mean"], stats["mean"]) and torch.equal(carry["norm"]["ret"]["var"],
                                                                                      ret["var"])
    # the episode returns stay raw: the first step's return is the env's reward, not the scaled one
    torch.testing.assert_close(traj["episode_return"][0], raw[0])
    assert not torch.allclose(traj["rewards"][0], raw[0])


def test_statistics_are_per_run_in_a_group():
    group = make_train(CONFIG, seeds=[3, 5])
    state = group.init()
    for _ in range(2):
        state, _ = group.iteration(state)
    assert state.carry["norm"]["obs"]["mean"].shape == (2, 3)
    alone = make_train(CONFIG.replace(seed=5))
    one = start = alone.init()
    for _ in range(2):
        one, _ = alone.iteration(one)
    assert agree.state_disagreements(one, run_slice(state, 1, CONFIG.num_envs), start,
                                     agree.TOLERANCE["fp32"]) == []


def test_a_run_with_normalization_resumes_bit_exactly(tmp_path):
    straight = make_train(CONFIG).train()
    make_train(CONFIG).train(checkpointer=Checkpointer(tmp_path, every=2, keep=1), until_update=2)
    fresh = make_train(CONFIG)
    state, progress = restore_state(latest_checkpoint(tmp_path), fresh.built, fresh.init())
    resumed = fresh.train(state=state, progress=progress)
    assert all(torch.equal(a, b) for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True))


def test_sweeping_gamma_with_reward_scaling_is_refused():
    with pytest.raises(ValueError, match="cannot sweep 'gamma' with norm_reward"):
        make_train(CONFIG, seeds=[0], sweep={"gamma": [0.9, 0.99]})


def test_evaluation_needs_and_uses_the_runs_statistics():
    from kernel.evaluate import evaluate

    result = make_train(CONFIG).train()
    stats = result.state.carry["norm"]["obs"]
    with pytest.raises(ValueError, match="obs_stats"):
        evaluate(CONFIG, result.state.params, episodes=2)
    returns = evaluate(CONFIG, result.state.params, episodes=2, obs_stats=stats)
    assert returns.shape == (2,) and torch.isfinite(returns).all()
