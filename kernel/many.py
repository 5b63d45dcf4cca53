"""Many independent training runs as one program: PureJaxRL's ``vmap(make_train(config))(keys)``.

Every piece of the training state gets a leading run axis (params, optimizer state, loss scale,
random keys); the env runs all runs' sub-environments side by side (run r owns the r-th block of
``num_envs``), so one compiled rollout call acts every run with its own params
(:func:`policy_over_runs`) and one compiled, ``torch.func.vmap``-ed grad step updates every run.
Values that enter the compiled step as tensors may differ per run (a sweep): learning rate, clip
range, entropy and value coefficients, GAE lambda, gamma and max grad norm. Each run draws its
random numbers from its own key exactly as a one-run training would, so run r of a group follows
the run its seed and values give alone, up to the rounding of batched matmuls.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.func import vmap

from kernel import heads, loss_scale, optim, rng
from kernel.config import Config, validated
from kernel.distributed import SINGLE, World
from kernel.hot import compile_hot
from kernel.policy import Policy, masks
from kernel.ppo import explained_variance, gae, gae_functional, make_grad_step, shuffle_units
from kernel.rollout import Rollout, make_rollout
from kernel.state import Progress, TrainState
from kernel.telemetry import reduce_metrics
from kernel.train import NonFiniteRun, make_env, policy_for
from kernel.tree import tree_map

SWEEPABLE = ("lr", "clip_coef", "ent_coef", "vf_coef", "gae_lambda", "gamma", "max_grad_norm")
HYPER = ("clip_coef", "ent_coef", "vf_coef", "max_grad_norm")


class Runs(NamedTuple):
    """What differs between the runs of a group: the seed, and each swept key's value, per run."""

    seeds: tuple
    values: dict  # swept key -> tuple of one value per run

    @property
    def count(self) -> int:
        return len(self.seeds)

    def setting(self, r: int) -> dict:
        return {k: v[r] for k, v in self.values.items()}

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "values": {k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Runs:
        return cls(tuple(d["seeds"]), {k: tuple(v) for k, v in d["values"].items()})


# Keys whose value sets a tensor's shape; every other key outside SWEEPABLE is a constant of the
# compiled graphs (or of the env and run), the same for every run of a group.
SHAPE_KEYS = ("num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden", "lstm_size", "policy", "env",
              "env_options", "total_steps")


def unsweepable(key: str) -> str | None:
    """Why ``key`` cannot differ between the runs of a group (None: it can)."""
    if key in SWEEPABLE:
        return None
    if key not in Config.__dataclass_fields__:
        return "it is not a config key"
    if key in SHAPE_KEYS:
        return "it sets tensor shapes or the length of the run, shared by every run of a group"
    return "it is a constant of the compiled graph, shared by every run of a group"


def grid(seeds: Sequence[int], sweep: dict | None = None) -> Runs:
    """Every combination of the swept values (keys in the given order), each with every seed."""
    sweep = dict(sweep or {})
    for key in sweep:
        why = unsweepable(key)
        if why:
            raise ValueError(f"cannot sweep {key!r}: {why}; values that may differ per run: {', '.join(SWEEPABLE)}")
        if not sweep[key]:
            raise ValueError(f"sweep of {key!r} has no values")
        repeated = sorted({v for v in sweep[key] if list(sweep[key]).count(v) > 1})
        if repeated:
            raise ValueError(f"sweep of {key!r} repeats {', '.join(map(str, repeated))}: each value once")
    if not seeds:
        raise ValueError("need at least one seed")
    combos = [dict(zip(sweep, c)) for c in itertools.product(*sweep.values())]
    rows = [(s, c) for c in combos for s in seeds]
    return Runs(tuple(int(s) for s, _ in rows), {k: tuple(float(c[k]) for _, c in rows) for k in sweep})


def run_config(config: Config, runs: Runs, r: int) -> Config:
    """The one-run config of run ``r``: its seed and swept values on top of ``config``."""
    return config.replace(seed=runs.seeds[r], **runs.setting(r))


def split_runs(x: torch.Tensor, runs: int, num_envs: int) -> torch.Tensor:
    """``[M * runs * n, ...]`` (M blocks of all runs' sub-environments) -> ``[runs, M * n, ...]``."""
    m = x.shape[0] // num_envs
    return x.reshape(m, runs, num_envs // runs, *x.shape[1:]).movedim(1, 0).reshape(runs, -1, *x.shape[1:])


def merge_runs(x: torch.Tensor, num_envs: int) -> torch.Tensor:
    """Inverse of :func:`split_runs`."""
    runs = x.shape[0]
    n = num_envs // runs
    return x.reshape(runs, -1, n, *x.shape[2:]).movedim(0, 1).reshape(-1, *x.shape[2:])


def policy_over_runs(policy: Policy, runs: int, num_envs: int) -> Policy:
    """``policy`` whose ``step`` takes params with a leading run axis and acts each run's block of
    the ``num_envs`` sub-environments with that run's params (``vmap`` over runs)."""
    per_run = vmap(policy.step)

    def step(params, obs, hidden, start):
        split = lambda t: tree_map(lambda x: split_runs(x, runs, num_envs), t)
        merge = lambda t: tree_map(lambda x: merge_runs(x, num_envs), t)
        logits, value, hidden = per_run(params, split(obs), split(hidden), split(start))
        return merge(logits), merge(value), merge(hidden)

    return policy._replace(step=step)


def stack(trees: list):
    return tree_map(lambda *xs: torch.stack(xs), *trees)


class ManyRun(NamedTuple):
    config: Config  # the shared config (its own seed unused)
    runs: Runs
    env: object  # runs * num_envs sub-environments
    policy: Policy  # one run's policy
    optimizer: optim.GradientTransformation
    rollout: Rollout
    advantages: Callable
    update: Callable
    hyper: dict  # per-run values as [runs] tensors (lr is the base of its schedule)
    world: World = SINGLE  # data-parallel ranks: each trains an equal share of the runs
    whole: Runs | None = None  # every rank's runs together (``runs`` is this rank's share)

    @property
    def all_runs(self) -> Runs:
        return self.whole or self.runs

    @property
    def precision(self):
        return self.config.precision

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)


def make_optimizer(config: Config) -> optim.GradientTransformation:
    """The one-run optimizer (same state layout), leaf by leaf and with max_grad_norm as a tensor."""
    return optim.apply_if_finite(optim.chain(optim.clip_by_global_norm(None),
                                             optim.scale_by_adam(eps=config.adam_eps, foreach=False),
                                             optim.scale_by_learning_rate(None)))


def make_update(config: Config, policy: Policy, optimizer) -> Callable:
    """The epochs of vmapped minibatch steps: each run shuffles its own batch with its own
    generator, as one run would."""
    step = make_grad_step(policy, optimizer, config.clip_vloss, config.norm_adv, None, config.norm_entropy,
                          config.head_average, foreach=False)

    def grad_steps(params, opt_state, scale, batch, idx, hyper):
        return vmap(step)(params, opt_state, scale, batch, idx, hyper)

    grad_steps = compile_hot(grad_steps, config.device) if config.compile else grad_steps
    units = shuffle_units(config, policy.recurrent)
    size = units // config.num_minibatches

    def update(params, opt_state, scale, batch, generators, hyper):
        keys = torch.stack([torch.rand(config.update_epochs, units, generator=g) for g in generators])
        perms = keys.argsort(dim=2).to(config.device)
        history = []
        for epoch in range(config.update_epochs):
            for m in range(config.num_minibatches):
                idx = perms[:, epoch, m * size:(m + 1) * size]
                params, opt_state, scale, metrics = grad_steps(params, opt_state, scale, batch, idx, hyper)
                history.append(metrics)
        return params, opt_state, scale, reduce_metrics(history)

    update.grad_step = grad_steps
    return update


def validated_runs(config: Config, runs: Runs) -> Runs:
    for r in range(runs.count):
        try:
            run_config(config, runs, r)
        except ValueError as e:
            raise ValueError(f"run {r} ({runs.setting(r)}): {e}") from None
    return runs


def share(runs: Runs, world: World) -> Runs:
    """This rank's equal, contiguous share of ``runs``."""
    if runs.count % world.size:
        raise ValueError(f"{runs.count} runs cannot be split evenly over {world.size} processes")
    n = runs.count // world.size
    part = slice(world.rank * n, (world.rank + 1) * n)
    return Runs(runs.seeds[part], {k: v[part] for k, v in runs.values.items()})


def build(config: Config, runs: Runs, world: World = SINGLE) -> ManyRun:
    """A group of runs; with several data-parallel ranks, this rank builds and trains its share
    (runs are independent, so ranks exchange only metrics and checkpoints, never gradients)."""
    config = validated(config)
    whole = validated_runs(config, runs)
    runs = share(whole, world)
    count = runs.count
    env = make_env(config, count * config.num_envs)
    policy = policy_for(config, env)
    optimizer = make_optimizer(config)
    rollout = make_rollout(env, policy_over_runs(policy, count, env.num_envs), config.num_steps,
                           compile=config.compile, runs=count)
    column = lambda key: torch.tensor(runs.values.get(key, (getattr(config, key),) * count),
                                      dtype=torch.float32, device=config.device).repeat_interleave(config.num_envs)
    gamma, lam = column("gamma"), column("gae_lambda")  # one value per sub-environment column

    def advantages_fn(rewards, values, next_values, terminated, truncated):
        return gae_functional(rewards, values, next_values, terminated, truncated, gamma, lam)

    if config.compile:
        advantages = compile_hot(advantages_fn, config.device)
    else:
        def advantages(*traj):
            return gae(*traj, gamma, lam)
    hyper = {k: torch.tensor(runs.values.get(k, (float(getattr(config, k)),) * count), dtype=torch.float32,
                             device=config.device) for k in (*HYPER, "lr")}
    for h, c in config.ent_coef_heads.items():
        hyper[f"ent_coef/{h}"] = torch.full((count,), float(c), device=config.device)
    update = make_update(config, policy, optimizer)
    return ManyRun(config, runs, env, policy, optimizer, rollout, advantages, update, hyper, world, whole)


def init_state(m: ManyRun, seeds: Sequence[int] | torch.Tensor | None = None) -> TrainState:
    """Every run's initial state, stacked: run r equals a one-run ``init`` with seed ``seeds[r]``."""
    seeds = [int(s) for s in (m.runs.seeds if seeds is None else seeds)]
    if len(seeds) != m.runs.count:
        raise ValueError(f"need {m.runs.count} seeds, got {len(seeds)}")
    keys = [rng.split(rng.key(s), 3) for s in seeds]
    device = m.device
    params = [tree_map(lambda x: x.to(device), m.policy.init(rng.generator(k[0]))) for k in keys]
    return TrainState(
        params=stack(params),
        opt_state=stack([tree_map(lambda x: x.to(device), m.optimizer.init(p)) for p in params]),
        loss_scale=stack([loss_scale.for_precision(m.precision.needs_loss_scale, device=device) for _ in seeds]),
        carry=m.rollout.init([rng.generator(k[1]) for k in keys]),
        rng=torch.stack([k[2] for k in keys]),
        step=torch.zeros((), dtype=torch.int64, device=device),
    )


def per_run_batch(m: ManyRun, traj: dict, advantages, returns) -> dict:
    """The loss's fields with a leading run axis: ``[runs, T*N, ...]`` rows (feed-forward) or
    ``[runs, T, N, ...]`` with ``[runs, N, ...]`` initial hidden states (recurrent)."""
    runs, n, steps = m.runs.count, m.env.num_envs, m.config.num_steps
    batch = {k: traj[k] for k in ("obs", "actions", "head_logp", "values")}
    batch["advantages"], batch["returns"] = advantages, returns
    if m.policy.recurrent:
        batch["starts"] = traj["starts"]
    # [T, runs * N, ...] -> [runs, T, N, ...]
    batch = tree_map(lambda x: x.reshape(steps, runs, n // runs, *x.shape[2:]).movedim(1, 0), batch)
    if m.policy.recurrent:
        batch["hidden0"] = tree_map(lambda x: x.reshape(runs, n // runs, *x.shape[1:]), traj["hidden0"])
        return batch
    return tree_map(lambda x: x.reshape(runs, -1, *x.shape[3:]), batch)


def hyper_tensors(m: ManyRun, step: torch.Tensor) -> dict:
    """Per-run ``[runs]`` values; the learning rate follows each run's linear schedule."""
    hyper = dict(m.hyper)
    if m.config.anneal_lr:
        frac = torch.clamp(step.to(torch.float32) / m.config.num_updates, 0.0, 1.0)
        hyper["lr"] = hyper["lr"] + frac * (0.0 - hyper["lr"])
    return hyper


def trajectory_metrics(m: ManyRun, traj: dict, batch: dict) -> dict:
    runs = m.runs.count
    flat = lambda x: x.reshape(runs, -1)
    metrics = {"explained_var": vmap(explained_variance)(flat(batch["values"]), flat(batch["returns"]))}
    if len(m.env.action_spec.heads) > 1:
        spec, obs_masks = m.env.action_spec, masks(traj["obs"])
        per_run = lambda x: x.reshape(x.shape[0], runs, -1).sum(dim=(0, 2))
        for name, r in heads.relevance(spec, traj["actions"]).items():
            metrics[f"head/{name}/relevant_steps"] = per_run(r)
        for name, d in heads.decisions(spec, traj["actions"], obs_masks).items():
            metrics[f"head/{name}/decision_steps"] = per_run(d.float())
    metrics["episodes"] = {"return": traj["episode_return"], "length": traj["episode_length"],
                           "done": traj["terminated"] | traj["truncated"]}
    return metrics


def iteration(m: ManyRun, state: TrainState) -> tuple[TrainState, dict]:
    """One PPO update of every run. Metrics are ``[runs]`` device tensors, plus ``episodes``
    (``[T, runs * N]``: run r's sub-environments are columns ``r*N .. (r+1)*N - 1``)."""
    split = [rng.split(k) for k in state.rng]
    next_keys = torch.stack([s[0] for s in split])
    generators = [rng.generator(s[1]) for s in split]
    carry, traj = m.rollout.collect(state.params, state.carry, generators)
    advantages, returns = m.advantages(traj["rewards"], traj["values"], traj["next_values"], traj["terminated"],
                                       traj["truncated"])
    batch = per_run_batch(m, traj, advantages, returns)
    hyper = hyper_tensors(m, state.step)
    params, opt_state, scale, metrics = m.update(state.params, state.opt_state, state.loss_scale, batch, generators,
                                                 hyper)
    metrics.update(trajectory_metrics(m, traj, batch))
    metrics["lr"] = hyper["lr"]
    metrics["skipped_total"] = optim.skipped_steps(opt_state)
    return TrainState(params, opt_state, scale, carry, next_keys, state.step + 1), metrics


def run_slice(m: ManyRun, state: TrainState, r: int) -> TrainState:
    """Run ``r``'s state as a one-run :class:`TrainState` (loadable and resumable alone)."""
    n = m.config.num_envs
    take = lambda t: tree_map(lambda x: x[r], t)
    return TrainState(take(state.params), take(state.opt_state), take(state.loss_scale),
                      tree_map(lambda x: x[r * n:(r + 1) * n], state.carry), state.rng[r], state.step)


def to_host(metrics: dict) -> list[dict]:
    """``[runs]`` device metrics -> one dict of floats per run, in one transfer."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.dim() == 1]
    table = torch.stack([metrics[k].float() for k in keys], dim=1).tolist()
    return [dict(zip(keys, row)) for row in table]


def finished_by_run(m: ManyRun, episodes: dict) -> list[tuple[list, list]]:
    """Returns and lengths of the episodes each run finished in a segment (one host sync)."""
    runs, n = m.runs.count, m.config.num_envs
    done, ret, length = (episodes[k].cpu() for k in ("done", "return", "length"))
    out = []
    for r in range(runs):
        cols = slice(r * n, (r + 1) * n)
        out.append((ret[:, cols][done[:, cols]].tolist(), length[:, cols][done[:, cols]].tolist()))
    return out


class ManyLog(NamedTuple):
    update: int
    num_updates: int
    env_steps: int  # all runs together
    elapsed_s: float
    sps: float  # all runs together
    mean_return: float  # mean over runs of each run's rolling mean (nan until every run has one)
    return_spread: tuple  # (min, max) over runs of the rolling means
    episodes: int  # episodes in the runs' windows, all runs together
    metrics: list  # host floats, one dict per run (with its mean_return and episode_length)
    groups: list | None = None  # gradient tables per run, filled by kernel.runs


class TrainedMany(NamedTuple):
    state: TrainState
    progress: list  # one Progress per run
    summary: dict


def summarize(m: ManyRun, progress: list, skipped: list, compile_s: float, run_s: float, start_steps: int) -> dict:
    """``progress`` and ``skipped``: every run of the group (all ranks' shares)."""
    runs = m.all_runs
    total = sum(p.env_steps for p in progress)
    rows = [{"run": r, "seed": runs.seeds[r], **runs.setting(r), "mean_return": p.mean_return,
             "first_solved": p.first_solved, "skipped_steps": int(skipped[r])} for r, p in enumerate(progress)]
    return {"compile_s": compile_s, "run_s": run_s, "env_steps": total, "runs_count": runs.count,
            "sps": (total - start_steps) / max(run_s, 1e-9), "mean_return": mean_over_runs(progress),
            "solved_return": getattr(m.env, "solved_return", None), "swept": list(runs.values),
            "runs": rows}


def mean_over_runs(progress: list) -> float:
    means = [p.mean_return for p in progress]
    return sum(means) / len(means) if all(p.returns for p in progress) else float("nan")


def train(m: ManyRun, state: TrainState | None = None, progress: list | None = None,
          on_update: Callable[[ManyLog], None] | None = None, checkpointer=None, max_bad_steps: int | None = None,
          until_update: int | None = None) -> TrainedMany:
    """Iterate every run to ``config.total_steps`` (or ``until_update``). A run whose steps keep
    coming out non-finite is skipped step by step while the others go on; the whole job stops
    with :class:`NonFiniteRun` only when every run has had ``max_bad_steps`` skips in a row."""
    cfg = m.config
    state = state if state is not None else init_state(m)
    progress = list(progress or [Progress() for _ in range(m.runs.count)])
    compile_s = 0.0
    if cfg.compile:
        start = time.perf_counter()
        iteration(m, state)  # compile every function; the iteration is pure, so state is untouched
        compile_s = time.perf_counter() - start
    world = m.world  # ranks each train their share of the runs; logs and summaries cover all of them
    start_steps = sum(p.env_steps for p in world.concat_lists(progress))
    last = min(cfg.num_updates, until_update or cfg.num_updates)
    solved = getattr(m.env, "solved_return", None)
    start = time.perf_counter()
    while progress[0].update < last:
        state, metrics = iteration(m, state)
        finished = finished_by_run(m, metrics["episodes"])
        elapsed = time.perf_counter() - start
        progress = [p.advanced(cfg.batch_size, ret, solved, elapsed) for p, (ret, _) in zip(progress, finished)]
        # (every rank gathers, or a rank without a callback would leave the others waiting)
        wanted = world.distributed or on_update is not None or max_bad_steps
        host = to_host(metrics) if wanted else []
        for h, p, (_, lengths) in zip(host, progress, finished):
            h["mean_return"] = p.mean_return
            h["episode_length"] = sum(lengths) / len(lengths) if lengths else float("nan")
        host, everyone = world.concat_lists(host), world.concat_lists(progress)
        streaks = world.concat_tree(optim.consecutive_skips(state.opt_state)).tolist()
        if max_bad_steps and min(streaks) >= max_bad_steps:
            last_good = checkpointer.last if checkpointer is not None else None
            raise NonFiniteRun(f"stopped at update {progress[0].update}: every run had {max_bad_steps} or more "
                               f"consecutive non-finite steps (all skipped; params are still finite)", host, last_good)
        if checkpointer is not None:
            checkpointer.maybe_save(cfg, state, progress, m.all_runs)
        if on_update is not None:
            means = [p.mean_return for p in everyone if p.returns]
            steps = sum(p.env_steps for p in everyone)
            on_update(ManyLog(progress[0].update, cfg.num_updates, steps, elapsed,
                              (steps - start_steps) / max(elapsed, 1e-9), mean_over_runs(everyone),
                              (min(means), max(means)) if means else (float("nan"), float("nan")),
                              sum(len(p.returns) for p in everyone), host))
    skipped = world.concat_tree(optim.skipped_steps(state.opt_state)).tolist()
    summary = summarize(m, world.concat_lists(progress), skipped, compile_s, time.perf_counter() - start,
                        start_steps)
    return TrainedMany(state, progress, summary)


def trainer(config: Config, runs: Runs, world: World = SINGLE):
    """:class:`kernel.train.Trainer` over a group of runs (this rank's share of them)."""
    from functools import partial

    from kernel.train import Trainer

    group = build(config, runs, world)
    return Trainer(group, partial(init_state, group), partial(iteration, group), partial(train, group))


def ranked_settings(summary: dict) -> list[dict]:
    """One row per swept setting: mean and spread (population std) over its seeds of the final
    mean return, best first (settings with no finished episodes last)."""
    by: dict = {}
    for row in summary["runs"]:
        key = tuple((k, row[k]) for k in summary["swept"])
        by.setdefault(key, []).append(row["mean_return"])
    rows = []
    for key, values in by.items():
        finite = [v for v in values if v == v]
        mean = sum(finite) / len(finite) if finite else float("nan")
        std = (sum((v - mean) ** 2 for v in finite) / len(finite)) ** 0.5 if finite else float("nan")
        rows.append({"setting": dict(key), "mean_return": mean, "std_return": std, "seeds": len(values)})
    return sorted(rows, key=lambda r: (r["mean_return"] != r["mean_return"], -(r["mean_return"] or 0)))
