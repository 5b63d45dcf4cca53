"""PPO training, PureJaxRL's ``make_train(config)`` shape.

``make_train(config)`` builds the pure pieces once and returns them: ``init(seed) -> state``,
``iteration(state) -> (state, metrics)`` and ``train(...)``, the host loop around them.
:func:`iteration` is one PPO update and reads top to bottom: random key -> rollout -> advantages
-> batch -> hyperparameters -> epochs of minibatch steps -> metrics. It never changes its input:
all randomness comes from the state's key, which it splits into the next key and this update's.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

import envs
from kernel import fused, heads, loss_scale, optim, rng
from kernel.config import Config, validated
from kernel.distributed import SINGLE, World
from kernel.hot import compile_hot, fused_options
from kernel.policy import Policy, make_policy, masks
from kernel.ppo import explained_variance, hyper_tensors, make_gae, make_update
from kernel.precision import Precision
from kernel.rollout import Rollout, finished_episodes, make_rollout
from kernel.state import Progress, TrainState
from kernel.tree import tree_map


class Run(NamedTuple):
    """The pure pieces one config builds (compiled functions included); no changing data.

    ``config`` is what this process runs; ``job`` the config of the whole training, which differs
    only for data-parallel ranks (each runs ``num_envs / ranks`` of the job's envs)."""

    config: Config
    env: object
    policy: Policy
    optimizer: optim.GradientTransformation
    rollout: Rollout
    advantages: Callable  # (rewards, values, next_values, terminated, truncated) -> (advantages, returns)
    update: Callable
    world: World = SINGLE  # the data-parallel ranks this process is one of (kernel.distributed)
    job: Config | None = None
    fused: Callable | None = None  # the whole iteration as one call (kernel.fused), or None: unfused
    fuse_reason: str = ""  # why it runs fused or not

    @property
    def precision(self) -> Precision:
        return self.config.precision

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)


def make_optimizer(config: Config, foreach: bool = True) -> optim.GradientTransformation:
    """Adam with global-norm clipping that skips non-finite steps. ``foreach=False``: leaf by leaf
    (the same maths; what ``vmap`` and a ``scan`` body need)."""
    # lr=None: the learning rate arrives as a tensor each step (kernel.ppo.hyper_tensors).
    return optim.apply_if_finite(optim.adam(None, eps=config.adam_eps, max_grad_norm=config.max_grad_norm,
                                            foreach=foreach))


def policy_for(config: Config, env, precision: Precision | None = None) -> Policy:
    names = set(env.action_spec.names)
    unknown = sorted(set(config.ent_coef_heads) - names)
    if unknown:
        raise ValueError(f"ent_coef_heads names unknown head(s) {', '.join(unknown)}; "
                         f"{config.env} has {', '.join(sorted(names))}")
    return make_policy(env.obs_dim, env.action_spec, config.hidden, config.activation,
                       precision or config.precision, config.policy, config.lstm_size)


def rank_config(job: Config, world: World) -> Config:
    """One rank's share of ``job``: ``num_envs / ranks`` envs and as many updates as the job, so
    the ranks together collect the job's batches and every minibatch is the union of theirs."""
    if not world.distributed:
        return job
    if job.num_envs % world.size:
        raise ValueError(f"num_envs={job.num_envs} cannot be split evenly over {world.size} processes")
    try:
        return job.replace(num_envs=job.num_envs // world.size, total_steps=job.total_steps // world.size)
    except ValueError as e:
        raise ValueError(f"with {world.size} processes, {e}") from None


def make_env(config: Config, num_envs: int | None = None):
    """The config's env (its ``env_options`` applied) with ``num_envs`` sub-environments
    (default: the config's)."""
    return envs.make(config.env, config.num_envs if num_envs is None else num_envs, device=config.device,
                     **config.env_options)


def build(config: Config, world: World = SINGLE) -> Run:
    job = validated(config)
    config = rank_config(job, world)
    env = make_env(config)
    policy = policy_for(config, env)
    optimizer = make_optimizer(config)
    rollout = make_rollout(env, policy, config.num_steps, compile=config.compile)
    advantages = make_gae(config.gamma, config.gae_lambda, config.compile, config.device)
    update = make_update(config, policy, optimizer, world=world)
    run = Run(config, env, policy, optimizer, rollout, advantages, update, world, job)
    fuse, why = fused.fuse_reason(config, world.distributed, env)
    if not fuse:
        return run._replace(fuse_reason=why)
    whole = fused.make_fused(run, scanned=config.compile)
    if config.compile:
        whole = compile_hot(whole, config.device, fused_options(config.device))
    return run._replace(fused=whole, fuse_reason=why)


def rank_key(run: Run, key: torch.Tensor) -> torch.Tensor:
    """This rank's key from a key all ranks share (the key itself in a one-process run)."""
    return rng.split(key, run.world.size)[run.world.rank] if run.world.distributed else key


def init_state(run: Run, seed: int | None = None) -> TrainState:
    """The state before the first update; ``seed`` defaults to the config's."""
    params_key, env_key, run_key = rng.split(rng.key(run.config.seed if seed is None else seed), 3)
    to_device = partial(tree_map, lambda x: x.to(run.device))
    params = to_device(run.policy.init(rng.generator(params_key)))
    return TrainState(
        params=params,
        opt_state=to_device(run.optimizer.init(params)),
        loss_scale=loss_scale.for_precision(run.precision.needs_loss_scale, device=run.device),
        carry=run.rollout.init(rng.generator(rank_key(run, env_key))),
        rng=run_key,
        step=torch.zeros((), dtype=torch.int64, device=run.device),
    )


def make_batch(traj: dict, advantages, returns, recurrent: bool = False) -> dict:
    """The fields the loss reads. Feed-forward: flattened to ``[T*N, ...]`` rows. Recurrent: kept
    ``[T, N, ...]`` with each env's segment-start hidden state and episode starts, for replay."""
    batch = {k: traj[k] for k in ("obs", "actions", "head_logp", "values")}
    batch["advantages"], batch["returns"] = advantages, returns
    if recurrent:
        return dict(batch, starts=traj["starts"], hidden0=traj["hidden0"])
    return tree_map(lambda x: x.reshape(-1, *x.shape[2:]), batch)


def collect(run: Run, params, carry, generator: torch.Generator):
    """One rollout segment and the PPO batch made from it: ``(carry, trajectory, batch)``."""
    carry, traj = run.rollout.collect(params, carry, generator)
    advantages, returns = run.advantages(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                         traj["truncated"])
    return carry, traj, make_batch(traj, advantages, returns, run.policy.recurrent)


def trajectory_metrics(run: Run, traj: dict, batch: dict) -> dict:
    """What the segment itself says: value fit, per-head relevance, and its episodes (``[T, N]``)."""
    metrics = {"explained_var": explained_variance(traj["values"].reshape(-1), batch["returns"].reshape(-1))}
    if len(run.env.action_spec.heads) > 1:
        spec, obs_masks = run.env.action_spec, masks(traj["obs"])
        for name, r in heads.relevance(spec, traj["actions"]).items():
            metrics[f"head/{name}/relevant_steps"] = r.sum()  # in the whole batch
        for name, d in heads.decisions(spec, traj["actions"], obs_masks).items():
            metrics[f"head/{name}/decision_steps"] = d.sum()
    metrics["episodes"] = {"return": traj["episode_return"], "length": traj["episode_length"],
                           "done": traj["terminated"] | traj["truncated"]}
    return metrics


def iteration(run: Run, state: TrainState) -> tuple[TrainState, dict]:
    """One PPO update. Metrics are device tensors (no host sync here): 0-d scalars, plus
    ``metrics["episodes"]`` with the segment's ``[T, N]`` episode returns, lengths and ends."""
    if run.fused is not None:
        return fused_iteration(run, state)
    next_key, key = rng.split(state.rng)
    generator = rng.generator(rank_key(run, key))  # ranks share the key; each draws its own envs' noise
    carry, traj, batch = collect(run, state.params, state.carry, generator)
    hyper = hyper_tensors(run.config, state.step)
    params, opt_state, scale, metrics = run.update(state.params, state.opt_state, state.loss_scale, batch,
                                                   generator, hyper)
    metrics.update(trajectory_metrics(run, traj, batch))
    metrics["lr"] = hyper["lr"]
    metrics["skipped_total"] = optim.skipped_steps(opt_state)
    return TrainState(params, opt_state, scale, carry, next_key, state.step + 1), metrics


def fused_iteration(run: Run, state: TrainState) -> tuple[TrainState, dict]:
    """:func:`iteration` as one call of ``run.fused``; its noise drawn from the same key, in the
    same order, as the unfused path draws it."""
    next_key, key = rng.split(state.rng)
    action_noise, env_noise, perm_keys = fused.draws(run, key)
    if run.device.type == "cuda":  # a new CUDA-graph replay: the last one's outputs are this one's inputs
        torch.compiler.cudagraph_mark_step_begin()
    hyper = hyper_tensors(run.config, state.step)  # inputs of the graph, not constants in it
    params, opt_state, scale, carry, metrics = run.fused(state.params, state.opt_state, state.loss_scale, state.carry,
                                                         action_noise, env_noise, perm_keys, hyper)
    return TrainState(params, opt_state, scale, carry, next_key, state.step + 1), metrics


def warmup(run: Run, state: TrainState) -> float:
    """Compile every compiled function by running one iteration and dropping its result (the
    iteration is pure, so ``state`` is untouched); returns seconds."""
    if not run.config.compile:
        return 0.0
    start = time.perf_counter()
    iteration(run, state)
    return time.perf_counter() - start


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.dim() == 0}


def to_host(metrics: dict) -> dict:
    """The 0-d device metrics -> Python floats in one transfer (one sync on CUDA, not one per key)."""
    scalars = scalar_metrics(metrics)
    return dict(zip(scalars, torch.stack([v.float() for v in scalars.values()]).tolist()))


class UpdateLog(NamedTuple):
    update: int
    num_updates: int
    env_steps: int
    elapsed_s: float
    sps: float
    mean_return: float  # over the last RETURN_WINDOW finished episodes (nan before the first)
    episodes: int
    metrics: dict  # host floats
    groups: dict | None = None  # the gradient table with statuses, filled by kernel.runs


class NonFiniteRun(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive skipped (non-finite) steps."""

    def __init__(self, message: str, metrics: dict, last_checkpoint):
        super().__init__(message)
        self.metrics, self.last_checkpoint = metrics, last_checkpoint


class Trained(NamedTuple):
    state: TrainState
    progress: Progress
    summary: dict


def train(run: Run, state: TrainState | None = None, progress: Progress | None = None,
          on_update: Callable[[UpdateLog], None] | None = None, checkpointer=None, max_bad_steps: int | None = None,
          until_update: int | None = None) -> Trained:
    """Iterate to ``config.total_steps`` (or to ``until_update``).

    ``state`` and ``progress`` may come from a checkpoint (kernel.resume): the loop continues
    exactly as if it had never stopped. ``checkpointer`` (kernel.resume.Checkpointer) saves
    periodically. After ``max_bad_steps`` consecutive non-finite minibatch steps (all skipped, so
    the params are still finite) the run stops with :class:`NonFiniteRun`. The summary holds
    compile and run seconds, SPS, the final mean return and, for envs with a ``solved_return``
    (CartPole: 475), the first point at which the rolling mean reached it.
    """
    cfg = run.config
    state = state if state is not None else init_state(run)
    progress = progress or Progress()
    compile_s = warmup(run, state)
    start_steps = progress.env_steps
    last = min(cfg.num_updates, until_update or cfg.num_updates)
    solved = getattr(run.env, "solved_return", None)
    start = time.perf_counter()
    world = run.world
    while progress.update < last:
        state, metrics = iteration(run, state)
        # Every rank sees every rank's episodes and the mean of their metrics, so all keep the same progress.
        returns, lengths = finished_episodes(world.gather_tree(metrics["episodes"]))
        elapsed = time.perf_counter() - start
        progress = progress.advanced(cfg.batch_size * world.size, returns.tolist(), solved, elapsed)
        # (every rank reduces, or a rank without a callback would leave the others waiting)
        wanted = world.distributed or on_update is not None or max_bad_steps
        host = to_host(world.mean_tree(scalar_metrics(metrics))) if wanted else {}
        if on_update is not None:  # mean length of the episodes that ended in this update
            host["episode_length"] = float(lengths.float().mean()) if len(lengths) else float("nan")
        if max_bad_steps and (streak := int(optim.consecutive_skips(state.opt_state))) >= max_bad_steps:
            last_good = checkpointer.last if checkpointer is not None else None
            raise NonFiniteRun(f"stopped at update {progress.update}: {streak} consecutive steps had a non-finite "
                               f"loss or gradient (all skipped; params are still finite)", host, last_good)
        if checkpointer is not None:
            checkpointer.maybe_save(run.job or cfg, state, progress)
        if on_update is not None:
            on_update(UpdateLog(progress.update, cfg.num_updates, progress.env_steps, elapsed,
                                (progress.env_steps - start_steps) / max(elapsed, 1e-9), progress.mean_return,
                                len(progress.returns), host))
    run_s = time.perf_counter() - start
    summary = {
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps": progress.env_steps,
        "sps": (progress.env_steps - start_steps) / max(run_s, 1e-9),
        "mean_return": progress.mean_return,
        "episodes_in_window": len(progress.returns),
        "first_solved": progress.first_solved,
        "solved_return": solved,
        "skipped_steps": int(optim.skipped_steps(state.opt_state)),
        "peak_memory_mb": peak_memory_mb(run.device),
        "device": str(run.device),
    }
    return Trained(state, progress, summary)


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak resident set on CPU (Linux), the peak CUDA memory allocated on CUDA;
    NaN where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return float("nan")


class Trainer(NamedTuple):
    """What :func:`make_train` returns: the built run and its pure functions."""

    run: Run
    init: Callable[..., TrainState]  # (seed=None) -> state
    iteration: Callable[[TrainState], tuple[TrainState, dict]]
    train: Callable[..., Trained]  # (state=None, progress=None, on_update=None, ...) -> Trained


def make_train(config: Config, seeds=None, sweep: dict | None = None, world: World = SINGLE) -> Trainer:
    """Build ``config`` once (env, policy, optimizer, compiled steps) and return its functions.

    With ``seeds`` (a list or range) and/or ``sweep`` (``{"lr": [1e-4, 3e-4], ...}``), the trainer
    runs every combination of swept values with every seed as one vmapped program
    (:mod:`kernel.many`): ``init(seeds=None)`` stacks one state per run, ``iteration`` advances
    them all, and ``train`` reports each run's results. ``world``: the data-parallel ranks this
    process is one of (:func:`kernel.distributed.join`).
    """
    if seeds is None and not sweep:
        run = build(config, world)
        return Trainer(run, partial(init_state, run), partial(iteration, run), partial(train, run))
    from kernel import many

    return many.trainer(config, many.grid(list(seeds) if seeds is not None else [config.seed], sweep), world)
