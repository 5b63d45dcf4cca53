"""One rank of the two-process tests in test_distributed.py (started by torchrun): trains a few
updates, then the same with one rank's advantages turned NaN, and saves what it ended with."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kernel import distributed, optim
from kernel import train as T
from kernel.tree import flatten_with_paths

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import CONFIG, POISONED_UPDATE, K  # noqa: E402

out = Path(sys.argv[1])
world = distributed.join("cpu")
torch.set_num_threads(1)

train = T.make_train(CONFIG, world=world)
state = train.init()
for _ in range(K):
    state, _ = train.iteration(state)
save_file(flatten_with_paths({"params": state.params, "opt": state.opt_state}), out / f"clean-{world.rank}.st")

# Rank 1's advantages are NaN in one update: every rank must skip that update's steps.
poison = {"on": False}
real = train.built.stages.advantages


def advantages(*traj):
    adv, ret = real(*traj)
    return (adv * float("nan"), ret) if poison["on"] and world.rank == 1 else (adv, ret)


run = train.built._replace(stages=train.built.stages._replace(advantages=advantages))
state = train.init()
for update in range(K):
    poison["on"] = update == POISONED_UPDATE
    before = state.params
    state, _ = T.iteration(run, state)
    if poison["on"]:
        unchanged = all(torch.equal(a, b) for a, b in zip(flatten_with_paths(before).values(),
                                                           flatten_with_paths(state.params).values()))
        assert unchanged, f"rank {world.rank} changed params on a step another rank found non-finite"
skipped = optim.skipped_steps(state.opt_state).reshape(1)
save_file(flatten_with_paths({"params": state.params, "skipped": skipped}), out / f"poisoned-{world.rank}.st")

# Normalized observations and rewards: each rank records the raw observations, rewards and
# terminations its own envs produced, and saves the statistics it ended with.
train = T.make_train(CONFIG.replace(norm_obs=True, norm_reward=True), world=world)
env, seen = train.built.env, {"obs": [], "reward": [], "terminated": [], "truncated": []}


def reset(noise, real=env.reset):
    state, obs = real(noise)
    seen["obs"].append(obs.clone())
    return state, obs


def step(state, action, noise, real=env.step):
    result = real(state, action, noise)
    for k in seen:
        seen[k].append(getattr(result, k).clone())
    return result


env.reset, env.step = reset, step
state = train.init()
for _ in range(K):
    state, _ = train.iteration(state)
saved = {k: torch.stack(v) if k != "obs" else torch.cat(v) for k, v in seen.items()}
save_file(flatten_with_paths({"norm": state.carry["norm"], "seen": saved}), out / f"norm-{world.rank}.st")
distributed.leave()
