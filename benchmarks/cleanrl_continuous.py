"""A port of the algorithm of CleanRL's ppo_continuous_action.py to gymnasium 1.4 (plain torch, CPU).

Reference: vwxyzjn/cleanrl, cleanrl/ppo_continuous_action.py. Same hyper-parameters, wrapper stack,
network, losses and update schedule; only the gymnasium API differences are adapted:

* Wrappers are applied per sub-env inside the thunk (as CleanRL does); TransformObservation takes the
  observation_space argument gymnasium 1.x requires.
* Autoreset: the vector env is built with autoreset_mode=SAME_STEP. That is the semantics CleanRL was
  written against (gymnasium <=0.29): the step whose terminated/truncated is set returns the *reset*
  observation, done = terminated | truncated is stored as the next step's done flag, and GAE cuts the
  trace there (truncation is not bootstrapped). gymnasium 1.x's default NEXT_STEP mode would instead
  insert one extra "reset" step per episode whose action is ignored and whose reward is 0; CleanRL's
  unmodified script would record that step as a real transition, so SAME_STEP is the faithful choice.
* Episode returns come from RecordEpisodeStatistics (inside ClipAction/Normalize*, so raw rewards),
  read from infos["final_info"]["episode"] (the gymnasium 1.x dict-of-arrays layout).

Usage: python cleanrl_port.py --env-id HalfCheetah-v5 --total-steps 1000000 --seed 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn, optim
from torch.distributions.normal import Normal

# Hyper-parameters (CleanRL defaults for ppo_continuous_action.py).
NUM_ENVS = 1
NUM_STEPS = 2048
LEARNING_RATE = 3e-4
ANNEAL_LR = True
GAMMA = 0.99
GAE_LAMBDA = 0.95
NUM_MINIBATCHES = 32
UPDATE_EPOCHS = 10
NORM_ADV = True
CLIP_COEF = 0.2
CLIP_VLOSS = True
ENT_COEF = 0.0
VF_COEF = 0.5
MAX_GRAD_NORM = 0.5
TARGET_KL = None
TORCH_DETERMINISTIC = True


def make_env(env_id: str, gamma: float):
    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(
            env, lambda o: np.clip(o, -10, 10), observation_space=env.observation_space
        )
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        env = gym.wrappers.TransformReward(env, lambda r: np.clip(r, -10, 10))
        return env

    return thunk


def _init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.critic = nn.Sequential(
            _init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            _init(nn.Linear(64, 64)),
            nn.Tanh(),
            _init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            _init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            _init(nn.Linear(64, 64)),
            nn.Tanh(),
            _init(nn.Linear(64, act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        mean = self.actor_mean(x)
        std = torch.exp(self.actor_logstd.expand_as(mean))
        dist = Normal(mean, std)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(x)


def _finished_returns(infos: dict) -> list[float]:
    """Raw episode returns of sub-envs that finished this step (SAME_STEP autoreset layout)."""
    if "final_info" not in infos:
        return []
    final = infos["final_info"]
    if "episode" not in final:
        return []
    mask = final.get("_episode", infos.get("_final_info"))
    rets = np.asarray(final["episode"]["r"]).reshape(-1)
    mask = np.ones_like(rets, dtype=bool) if mask is None else np.asarray(mask).reshape(-1)
    return [float(r) for r, m in zip(rets, mask) if m]


def run(env_id: str, total_steps: int, seed: int, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = TORCH_DETERMINISTIC
    device = torch.device("cpu")

    batch_size = NUM_ENVS * NUM_STEPS
    minibatch_size = batch_size // NUM_MINIBATCHES
    num_iterations = total_steps // batch_size

    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, GAMMA) for _ in range(NUM_ENVS)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.single_action_space, gym.spaces.Box)
    obs_shape = envs.single_observation_space.shape
    act_shape = envs.single_action_space.shape

    agent = Agent(int(np.prod(obs_shape)), int(np.prod(act_shape))).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=LEARNING_RATE, eps=1e-5)

    obs = torch.zeros((NUM_STEPS, NUM_ENVS) + obs_shape, device=device)
    actions = torch.zeros((NUM_STEPS, NUM_ENVS) + act_shape, device=device)
    logprobs = torch.zeros((NUM_STEPS, NUM_ENVS), device=device)
    rewards = torch.zeros((NUM_STEPS, NUM_ENVS), device=device)
    dones = torch.zeros((NUM_STEPS, NUM_ENVS), device=device)
    values = torch.zeros((NUM_STEPS, NUM_ENVS), device=device)

    episode_returns: list[float] = []
    global_step = 0
    start = time.perf_counter()  # as in CleanRL: the clock starts just before the first reset
    next_obs, _ = envs.reset(seed=seed)
    next_obs = torch.Tensor(next_obs).to(device)
    next_done = torch.zeros(NUM_ENVS, device=device)

    for iteration in range(1, num_iterations + 1):
        if ANNEAL_LR:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"] = frac * LEARNING_RATE

        for step in range(NUM_STEPS):
            global_step += NUM_ENVS
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            done_np = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs = torch.Tensor(next_obs_np).to(device)
            next_done = torch.Tensor(done_np).to(device)
            if done_np.any():
                episode_returns.extend(_finished_returns(infos))

        # GAE; done flags cut the trace (no bootstrapping through terminated or truncated episodes).
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(NUM_STEPS)):
                if t == NUM_STEPS - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + GAMMA * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + GAMMA * GAE_LAMBDA * nextnonterminal * lastgaelam
            returns = advantages + values

        b_obs = obs.reshape((-1,) + obs_shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + act_shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        b_inds = np.arange(batch_size)
        for _epoch in range(UPDATE_EPOCHS):
            np.random.shuffle(b_inds)
            for mb_start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[mb_start : mb_start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()

                mb_adv = b_advantages[mb_inds]
                if NORM_ADV:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)

                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - CLIP_COEF, 1 + CLIP_COEF)
                ).mean()

                newvalue = newvalue.view(-1)
                if CLIP_VLOSS:
                    v_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -CLIP_COEF, CLIP_COEF)
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb_inds]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                loss = pg_loss - ENT_COEF * entropy.mean() + VF_COEF * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), MAX_GRAD_NORM)
                optimizer.step()

            if TARGET_KL is not None and approx_kl > TARGET_KL:
                break

    wall = time.perf_counter() - start
    envs.close()
    return {
        "env_steps": int(global_step),
        "wall_s": float(wall),
        "sps": float(global_step / wall) if wall > 0 else 0.0,
        "episode_returns": episode_returns,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="HalfCheetah-v5")
    p.add_argument("--total-steps", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    res = run(a.env_id, a.total_steps, a.seed, a.threads)
    rets = res.pop("episode_returns")
    last = rets[-100:]
    res["num_episodes"] = len(rets)
    res["episode_returns_last100"] = last
    res["mean_return_last100"] = float(np.mean(last)) if last else None
    print(json.dumps(res))


if __name__ == "__main__":
    main()
