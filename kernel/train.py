"""The driver: rollout -> advantages -> update -> log, PureJaxRL's ``make_train(config)`` shape.

``build(config)`` wires the pure pieces (env, policy, optimizer, rollout, update);
``init_state`` makes the explicit training state; ``iteration`` advances it by one PPO update;
``train`` loops and reports through a callback. Nothing here reads global RNG: one
``torch.Generator`` seeded from ``config.seed`` drives init, action noise, env noise and shuffles.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch

import envs
from kernel import heads, loss_scale, optim
from kernel.config import Config, validated
from kernel.policy import Policy, make_policy, masks
from kernel.ppo import explained_variance, hyper_tensors, make_gae, make_update
from kernel.precision import parse as parse_precision
from kernel.rollout import Rollout, finished_episodes, make_rollout
from kernel.tree import tree_map

RETURN_WINDOW = 100


class Run(NamedTuple):
    config: Config
    env: object
    policy: Policy
    optimizer: optim.GradientTransformation
    rollout: Rollout
    advantages: Callable  # (rewards, values, next_values, terminated, truncated) -> (advantages, returns)
    update: Callable


def make_optimizer(config: Config) -> optim.GradientTransformation:
    # lr=None: the learning rate arrives as a tensor each step (kernel.ppo.hyper_tensors).
    return optim.adam(None, eps=config.adam_eps, max_grad_norm=config.max_grad_norm)


def policy_for(config: Config, env, precision=None) -> Policy:
    names = set(env.action_spec.names)
    unknown = sorted(set(config.ent_coef_heads) - names)
    if unknown:
        raise ValueError(f"ent_coef_heads names unknown head(s) {', '.join(unknown)}; "
                         f"{config.env} has {', '.join(sorted(names))}")
    return make_policy(env.obs_dim, env.action_spec, config.hidden, config.activation,
                       parse_precision(precision or config.precision), config.policy, config.lstm_size)


def build(config: Config) -> Run:
    config = validated(config)
    env = envs.make(config.env, config.num_envs, device=config.device)
    policy = policy_for(config, env)
    optimizer = make_optimizer(config)
    rollout = make_rollout(env, policy, config.num_steps, compile=config.compile)
    advantages = make_gae(config.gamma, config.gae_lambda, config.compile, config.device)
    update = make_update(config, policy, optimizer)
    return Run(config, env, policy, optimizer, rollout, advantages, update)


def init_state(run: Run) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(run.config.seed)
    device = torch.device(run.config.device)
    params = tree_map(lambda x: x.to(device), run.policy.init(generator))
    return {
        "params": params,
        "opt_state": tree_map(lambda x: x.to(device), run.optimizer.init(params)),
        "loss_scale": loss_scale.init(parse_precision(run.config.precision).needs_loss_scale, device=device),
        "carry": run.rollout.init(generator),
        "generator": generator,
        "update": 0,
        "env_steps": 0,
        "returns_window": [],  # last RETURN_WINDOW finished-episode returns
        "first_solved": None,
    }


def make_batch(traj: dict, advantages, returns, recurrent: bool = False) -> dict:
    """The fields the loss reads. Feed-forward: flattened to ``[T*N, ...]`` rows. Recurrent: kept
    ``[T, N, ...]`` with each env's segment-start hidden state and episode starts, for replay."""
    batch = {k: traj[k] for k in ("obs", "actions", "head_logp", "values")}
    batch["advantages"], batch["returns"] = advantages, returns
    if recurrent:
        return dict(batch, starts=traj["starts"], hidden0=traj["hidden0"])
    return tree_map(lambda x: x.reshape(-1, *x.shape[2:]), batch)


def iteration(run: Run, state: dict):
    """One PPO update: collect a segment, compute advantages, run the epochs. Returns the new state
    and ``(metrics, trajectory)``; metrics are device tensors (no host sync here)."""
    cfg = run.config
    carry, traj = run.rollout.collect(state["params"], state["carry"], state["generator"])
    advantages, returns = run.advantages(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                         traj["truncated"])
    batch = make_batch(traj, advantages, returns, run.policy.recurrent)
    hyper = hyper_tensors(cfg, state["update"], batch["returns"].device)
    params, opt_state, scale_state, metrics = run.update(state["params"], state["opt_state"], state["loss_scale"],
                                                         batch, state["generator"], hyper)
    metrics["explained_var"] = explained_variance(traj["values"].reshape(-1), returns.reshape(-1))
    if len(run.env.action_spec.heads) > 1:
        spec, obs_masks = run.env.action_spec, masks(traj["obs"])
        for name, r in heads.relevance(spec, traj["actions"]).items():
            metrics[f"head/{name}/relevant_steps"] = r.sum()  # in the whole batch
        for name, d in heads.decisions(spec, traj["actions"], obs_masks).items():
            metrics[f"head/{name}/decision_steps"] = d.sum()
    metrics["skipped_total"] = scale_state["skipped"]
    new_state = dict(state, params=params, opt_state=opt_state, loss_scale=scale_state, carry=carry,
                     update=state["update"] + 1, env_steps=state["env_steps"] + cfg.batch_size)
    return new_state, (metrics, traj)


def warmup(run: Run, state: dict) -> float:
    """Compile every compiled function by running one throwaway iteration; returns seconds.

    The functions are pure, so running them on the real state with a throwaway generator leaves
    that state untouched.
    """
    if not run.config.compile:
        return 0.0
    start = time.perf_counter()
    iteration(run, dict(state, generator=torch.Generator().manual_seed(0)))
    return time.perf_counter() - start


def to_host(metrics: dict) -> dict:
    """Device metrics -> Python floats in one transfer (one sync on CUDA, not one per key)."""
    keys = list(metrics)
    return dict(zip(keys, torch.stack([metrics[k].float() for k in keys]).tolist()))


class UpdateLog(NamedTuple):
    update: int
    num_updates: int
    env_steps: int
    elapsed_s: float
    sps: float
    mean_return: float  # over the last RETURN_WINDOW finished episodes (nan before the first)
    episodes: int
    metrics: dict  # host floats


class NonFiniteRun(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive skipped (non-finite) steps."""

    def __init__(self, message: str, metrics: dict, last_checkpoint):
        super().__init__(message)
        self.metrics, self.last_checkpoint = metrics, last_checkpoint


def train(config: Config, on_update: Callable[[UpdateLog], None] | None = None, state: dict | None = None,
          run: Run | None = None, checkpointer=None, max_bad_steps: int | None = None,
          until_update: int | None = None):
    """Train to ``config.total_steps`` (or to ``until_update``); returns ``(state, summary)``.

    ``state`` may be a restored checkpoint: the loop continues from its counters, generator and
    return window exactly as if it had never stopped. ``checkpointer`` (kernel.resume.Checkpointer)
    saves the state periodically. After ``max_bad_steps`` consecutive non-finite minibatch steps
    (all skipped, so the params are still finite) the run stops with :class:`NonFiniteRun`.
    ``summary`` holds compile and run seconds, SPS, the final mean return and, for envs with a
    ``solved_return`` (CartPole: 475), the first point at which the rolling mean reached it.
    """
    run = run or build(config)
    cfg = run.config
    state = state or init_state(run)
    compile_s = warmup(run, state)
    window: deque = deque(state["returns_window"], maxlen=RETURN_WINDOW)
    start_steps = state["env_steps"]
    last = min(cfg.num_updates, until_update or cfg.num_updates)
    solved = getattr(run.env, "solved_return", None)
    start = time.perf_counter()
    while state["update"] < last:
        state, (metrics, traj) = iteration(run, state)
        returns, lengths = finished_episodes(traj)
        window.extend(returns.tolist())
        state["returns_window"] = list(window)
        elapsed = time.perf_counter() - start
        mean_return = sum(window) / len(window) if window else float("nan")
        if solved is not None and state["first_solved"] is None and len(window) == RETURN_WINDOW \
                and mean_return >= solved:
            state["first_solved"] = {"update": state["update"], "env_steps": state["env_steps"], "run_s": elapsed}
        host = to_host(metrics) if (on_update is not None or max_bad_steps) else {}
        if on_update is not None:  # mean length of the episodes that ended in this update
            host["episode_length"] = float(lengths.float().mean()) if len(lengths) else float("nan")
        if max_bad_steps and int(state["loss_scale"]["bad_streak"]) >= max_bad_steps:
            last_good = checkpointer.last if checkpointer is not None else None
            raise NonFiniteRun(
                f"stopped at update {state['update']}: {int(state['loss_scale']['bad_streak'])} consecutive steps "
                f"had a non-finite loss or gradient (all skipped; params are still finite)", host, last_good)
        if checkpointer is not None:
            checkpointer.maybe_save(cfg, state)
        if on_update is not None:
            steps = state["env_steps"] - start_steps
            on_update(UpdateLog(state["update"], cfg.num_updates, state["env_steps"], elapsed,
                                steps / max(elapsed, 1e-9), mean_return, len(window), host))
    run_s = time.perf_counter() - start
    summary = {
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps": state["env_steps"],
        "sps": (state["env_steps"] - start_steps) / max(run_s, 1e-9),
        "mean_return": sum(window) / len(window) if window else float("nan"),
        "episodes_in_window": len(window),
        "first_solved": state["first_solved"],
        "solved_return": solved,
        "skipped_steps": int(state["loss_scale"]["skipped"]),
    }
    return state, summary
