import torch

import envs
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
    heuristic_actions,
    random_valid_actions,
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


def test_invalid_action_acts_as_wait_and_episode_truncates_at_50_with_reset():
    env = Seedbed(2)
    state, _ = env.reset(noise(env))
    s = env.step(state, act(FOSSILIZE, n=2), noise(env))  # nothing is holding: invalid
    assert (s.state["stage"] == EMPTY).all() and torch.allclose(s.reward, torch.zeros(2))
    state = s.state
    for t in range(2, 51):
        s = env.step(state, act(WAIT, n=2), noise(env, t))
        state = s.state
    assert s.truncated.all() and not s.terminated.any()
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
