import torch

import envs
from envs.baselines import heuristic_actions, random_valid_actions
from envs.seedbed import (
    ADVANCE,
    BLENDING,
    EMPTY,
    FOSSILIZE,
    FOSSILIZED,
    GERMINATE,
    GERMINATED,
    HOLDING,
    PRUNE,
    PRUNE_COOLDOWN,
    PRUNED,
    TEMPO_STEPS,
    TRAINING,
    WAIT,
    Seedbed,
)


def act(op, slot=0, blueprint=1, tempo=0, n=1):
    full = lambda v: torch.full((n,), v, dtype=torch.long)
    return {"op": full(op), "slot": full(slot), "blueprint": full(blueprint), "tempo": full(tempo)}


def noise(env, seed=0):
    return torch.rand(env.noise_shape(), generator=torch.Generator().manual_seed(seed))


def test_seed_lifecycle_germinate_train_blend_hold_fossilize():
    env = Seedbed(1)
    state, obs = env.reset(noise(env))
    assert obs["masks"]["op"].tolist() == [[True, True, False, False, False]]
    assert not obs["masks"]["blueprint"][0, 0] and obs["masks"]["slot"][0, WAIT].all()
    seq = [(GERMINATE, GERMINATED), (ADVANCE, TRAINING), (WAIT, TRAINING), (ADVANCE, BLENDING)]
    for op, stage in seq:
        s = env.step(state, act(op, slot=1, blueprint=3, tempo=2), noise(env, 1))
        state = s.state
        assert state["stage"][0, 1].item() == stage
    # Blending ramps over TEMPO_STEPS[2] steps in all (the ADVANCE step included), then holds.
    for _ in range(TEMPO_STEPS[2] - 1):
        state = env.step(state, act(WAIT), noise(env, 2)).state
    assert state["stage"][0, 1].item() == HOLDING and state["alpha"][0, 1].item() == 1.0
    q = state["quality"][0, 1, 3]
    assert torch.isclose(state["accuracy"][0], 60.0 + q)
    masks = env.masks(state)
    assert masks["op"][0, FOSSILIZE] and masks["slot"][0, FOSSILIZE].tolist() == [False, True, False]
    state = env.step(state, act(FOSSILIZE, slot=1), noise(env, 3)).state
    assert state["stage"][0, 1].item() == FOSSILIZED
    assert not env.masks(state)["slot"][0, PRUNE, 1]  # fossilized seeds are permanent


def test_prune_frees_the_slot_after_the_cooldown_and_needs_an_old_enough_seed():
    env = Seedbed(1)
    state, _ = env.reset(noise(env))
    state = env.step(state, act(GERMINATE, slot=0), noise(env)).state
    assert env.masks(state)["slot"][0, PRUNE, 0]  # one step old now
    state = env.step(state, act(PRUNE, slot=0), noise(env)).state
    assert state["stage"][0, 0].item() == PRUNED
    for _ in range(PRUNE_COOLDOWN - 1):
        state = env.step(state, act(WAIT), noise(env)).state
    assert state["stage"][0, 0].item() == EMPTY


def test_invalid_action_acts_as_wait_and_episode_terminates_at_50_with_reset():
    env = Seedbed(2, desync=False)  # both start at step 0
    state, _ = env.reset(noise(env))
    s = env.step(state, act(FOSSILIZE, n=2), noise(env))  # nothing is holding: invalid
    assert (s.state["stage"] == EMPTY).all() and torch.allclose(s.reward, torch.zeros(2))
    state = s.state
    for t in range(2, 51):
        s = env.step(state, act(WAIT, n=2), noise(env, t))
        state = s.state
    assert s.terminated.all() and not s.truncated.any()  # the horizon is part of the task
    assert (state["t"] == 0).all() and (s.final_obs["x"][:, -1] == 1.0).all()


def test_masks_agree_with_state_for_random_play():
    env = Seedbed(64)
    g = torch.Generator().manual_seed(0)
    state, obs = env.reset(noise(env))
    for t in range(60):
        a = random_valid_actions(env, obs, g)
        rows = torch.arange(64)
        assert obs["masks"]["op"][rows, a["op"]].all() and obs["masks"]["slot"][rows, a["op"], a["slot"]].all()
        s = env.step(state, a, noise(env, t))
        seeds = ((s.state["stage"] >= GERMINATED) & (s.state["stage"] <= FOSSILIZED)).sum(-1)
        assert (seeds <= env.max_seeds).all()
        state, obs = s.state, s.obs


def test_baselines_rank_as_designed():
    """Random valid play is far below the scripted heuristic (the learnable structure is real)."""
    def play(policy, n=256):
        env = envs.make("seedbed", n)
        g = torch.Generator().manual_seed(1)
        state, obs = env.reset(noise(env))
        total = torch.zeros(n)
        for t in range(50):
            s = env.step(state, policy(env, state, obs, g), noise(env, 100 + t))
            total += s.reward
            state, obs = s.state, s.obs
        return total.mean().item()

    random = play(lambda env, st, obs, g: random_valid_actions(env, obs, g))
    heuristic = play(lambda env, st, obs, g: heuristic_actions(env, st, g))
    assert heuristic > random + 5


def op_decision_fractions(desync: bool, batches: int = 10, num_envs: int = 32, num_steps: int = 25) -> list:
    """Per 25-step batch of a scripted-controller run, the fraction of steps where the op head had
    more than one valid action."""
    env = Seedbed(num_envs, desync=desync)
    g = torch.Generator().manual_seed(0)
    state, obs = env.reset(torch.rand(env.noise_shape(), generator=g))
    fractions = []
    for _ in range(batches):
        decisions = 0
        for _ in range(num_steps):
            decisions += int((obs["masks"]["op"].sum(-1) > 1).sum())
            step = env.step(state, heuristic_actions(env, state, g), torch.rand(env.noise_shape(), generator=g))
            state, obs = step.state, step.obs
        fractions.append(decisions / (num_steps * num_envs))
    return fractions


def test_desynchronised_starts_keep_every_batch_mixed():
    # The first two batches still hold the first, fresh-start episodes (empty slots: many choices).
    mixed = op_decision_fractions(desync=True)[2:]
    assert all(0.2 <= f <= 0.8 for f in mixed), mixed
    # In lockstep, episode starts and ends alternate between batches: the same check fails.
    lockstep = op_decision_fractions(desync=False)[2:]
    assert not all(0.2 <= f <= 0.8 for f in lockstep), lockstep


def test_desync_spreads_first_episode_starts_and_later_episodes_are_full():
    env = Seedbed(64, episode_steps=10)
    g = torch.Generator().manual_seed(1)
    state, _ = env.reset(torch.rand(env.noise_shape(), generator=g))
    assert len(set(state["t"].tolist())) > 5 and int(state["t"].max()) < 10
    lengths = torch.zeros(64, dtype=torch.long)
    ends = []
    for _ in range(30):
        step = env.step(state, {h.name: torch.zeros(64, dtype=torch.long) for h in env.action_spec.heads},
                        torch.rand(env.noise_shape(), generator=g))
        lengths += 1
        ends.append(lengths[step.terminated].clone())
        lengths[step.terminated] = 0
        state = step.state
    later = torch.cat(ends[10:])
    assert len(later) > 0 and (later == 10).all()
    assert int(Seedbed(8, desync=False).reset(torch.rand(8, env.noise_shape()[1]))[0]["t"].max()) == 0
