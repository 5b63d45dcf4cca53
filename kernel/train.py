"""PPO training, PureJaxRL's ``make_train(config)`` shape: ``init() -> state``, ``iteration(state)
-> (state, metrics)`` (this update's noise from the state's key, then :func:`kernel.iteration.iterate`;
the input is never changed) and ``train(...)``, the host loop around them."""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

from kernel import agree, heads, optim, rng
from kernel.build import Built, build, init_state, rank_key, with_plan
from kernel.config import Config
from kernel.distributed import SINGLE, World
from kernel.group import grid, to_runs
from kernel.iteration import iterate, make_batch, with_advantages
from kernel.loop import unaliased
from kernel.normalize import combined
from kernel.plan import Plan
from kernel.ppo import hyper_tensors, shuffle_units
from kernel.precision import SHORT_NAMES
from kernel.state import Progress, TrainState
from kernel.tiers import Tiers, drop_early
from kernel.tree import flatten, tree_map


def draws(built: Built, key: torch.Tensor) -> tuple:
    """This iteration's noise from its key (one per run for a group), in one order: the segment's
    action and env noise, then a row of uniforms per epoch for the minibatch permutations."""
    generators = [rng.generator(rank_key(built, k)) for k in key.reshape(-1)]
    action_noise, env_noise = built.rollout.noise(generators)
    shape = (built.config.update_epochs, shuffle_units(built.config, built.policy.recurrent))
    perm_keys = torch.stack([torch.rand(shape, generator=g, device=g.device) for g in generators])
    return action_noise, env_noise, perm_keys.reshape(*key.shape, *shape).to(built.device)


def iteration(built: Built, state: TrainState) -> tuple[TrainState, dict]:
    """One PPO update (of every run of a group): noise from the state's key, hyperparameters from
    its update count, then :func:`kernel.iteration.iterate`, compiled whole or stage by stage."""
    keys = torch.stack([rng.split(k) for k in state.rng.reshape(-1)]).reshape(*state.rng.shape, 2)
    next_key, noise = keys[..., 0], draws(built, keys[..., 1])
    hyper = hyper_tensors(built.config, state.step, built.group)  # inputs of the graphs, not constants in them
    if built.device.type == "cuda" and built.whole is not None:
        torch.compiler.cudagraph_mark_step_begin()  # a new CUDA-graph replay: the last outputs are inputs now
    run = built.whole or partial(iterate, built.stages)
    params, opt_state, scale, carry, metrics = run(state.params, state.opt_state, state.loss_scale, state.carry,
                                                   *noise, hyper)
    if "norm" in carry and built.world.distributed and built.group is None:  # every rank's samples, once an update
        before = state.carry["norm"]
        carry = dict(carry, norm={k: combined(before[k], v, built.world) for k, v in carry["norm"].items()})
    return TrainState(params, opt_state, scale, carry, next_key, state.step + 1), metrics


def collect(built: Built, params, carry, generator: torch.Generator):
    """One run's rollout segment and the PPO batch made from it, ``(carry, trajectory, batch)``:
    what diagnostics and tests inspect between the stages."""
    action_noise, env_noise = built.rollout.noise(generator)
    with torch.no_grad():
        carry, traj = built.stages.segment(params, carry, action_noise, env_noise)
    hyper = hyper_tensors(built.config, torch.zeros((), dtype=torch.int64, device=built.device))
    traj = with_advantages(built.stages, traj, hyper)
    return carry, traj, make_batch(traj, traj["advantages"], traj["returns"], built.policy.recurrent)


def checked_update(eager: Built, compiled: Built, state: TrainState, update: int) -> tuple[TrainState, dict, dict]:
    """The switch update, checked: the eager update, then every compiled stage it would run called
    on the very inputs the eager stage had, teacher-forced call by call: the rollout from the eager
    rollout's params and carry with its env noise and action noise that makes it take the eager
    actions (:func:`kernel.heads.forcing_noise`), compared at its first acting step
    (:func:`first_step`), the advantages on the eager rollout, and each
    minibatch step on the eager step's params, optimizer state and minibatch. So float rounding
    in one step cannot carry into the next (nor flip a sampled action, or a sample across PPO's
    clip threshold), and any gap is the compiled function's own. Each output is compared leaf by
    leaf at :data:`kernel.agree.AT_SWITCH` (parameters by their update; integer and boolean leaves
    such as actions and episode ends exactly). A host-stepped env's rollout is not replayed (the
    env steps once). Data-parallel ranks call every stage in step (a minibatch
    step all-reduces) and agree: if any rank's check failed, every rank stays eager. Returns the
    eager result, its metrics and the check: ``agreed`` (None where it cannot be made: a fused
    build compiles rollout and update as one graph), each output that differed beyond the
    tolerance (this rank's), and the largest gaps next to what is allowed."""
    if compiled.whole is not None:
        after, metrics = iteration(compiled, state)
        why = "not checked: the fused iteration is one graph"
        return after, metrics, {"update": update, "agreed": None, "why": why}
    calls = {"segment": [], "advantages": [], "grad_step": []}

    def recording(name: str, fn: Callable) -> Callable:
        def call(*args):
            out = fn(*args)
            calls[name].append((args, out))
            return out
        return call

    stages = eager.stages._replace(**{name: recording(name, getattr(eager.stages, name)) for name in calls})
    after, metrics = iteration(eager._replace(stages=stages), state)
    tol = agree.AT_SWITCH[SHORT_NAMES[compiled.config.precision.compute_dtype]]
    problems, largest = [], {"update": [0.0, None], "state": [0.0, None], "output": [0.0, None]}
    if not getattr(compiled.env, "host_state", False):  # (a host env cannot be stepped again)
        (params, carry, action_noise, env_noise), want = calls["segment"][0]
        forced = heads.forcing_noise(compiled.policy.spec, want[1]["actions"], action_noise)
        with torch.no_grad():  # as the iteration calls it (grad mode is one of its guards)
            got = compiled.stages.segment(params, carry, forced, env_noise)
        want, got = (first_step(out[1], compiled.config.num_steps) for out in (want, got))
        # Log-probs in nats: a confident policy's sit near 0, where a gap of its own size means little.
        nats = {n: torch.ones_like(w) for n, w in want.items() if n.startswith(("traj.logp", "traj.head_logp"))}
        problems += [f"rollout: {p}" for p in agree.output_disagreements(want, got, tol, nats)]
        largest["rollout"] = max(([agree.relative_gap(got[n], want[n], nats.get(n)), n] for n in want
                                  if not agree.exact(want[n])), key=lambda x: x[0], default=[0.0, None])
    named = lambda out: {"advantages": out[0], "returns": out[1]}  # noqa: E731
    for args, want in calls["advantages"]:
        want, got = named(want), named(compiled.stages.advantages(*args))
        problems += [f"advantages: {p}" for p in agree.output_disagreements(want, got, tol)]
        for name in want:
            gap = agree.relative_gap(got[name], want[name])
            largest["output"] = max(largest["output"], [gap, name], key=lambda x: x[0])
    stepped = lambda out: {"params": out[0], "opt_state": out[1], "loss_scale": out[2]}  # noqa: E731
    for i, (args, want) in enumerate(calls["grad_step"]):
        # one step's params (measured by their update from args[0]), optimizer state and loss scale
        start, want_step, got_step = {"params": args[0]}, stepped(want), stepped(compiled.stages.grad_step(*args))
        lr = float(args[5]["lr"].max())
        problems += [f"minibatch step {i}: {p}"
                     for p in agree.state_disagreements(want_step, got_step, start, tol, step_lr=lr)]
        for kind, (gap, path) in agree.largest_gaps(want_step, got_step, start, step_lr=lr).items():
            if gap > largest[kind][0]:
                largest[kind] = [gap, f"{path} (minibatch step {i})"]
    world = compiled.world
    everywhere = not problems if not world.distributed else \
        bool(world.sum(torch.tensor(float(bool(problems)), device=compiled.device)) == 0)
    if everywhere != (not problems):
        problems = ["the check failed on another rank"]
    return after, metrics, {"update": update, "agreed": everywhere, "problems": problems, "largest_gap": largest,
                            "allowed": {"update": tol.update, "state": tol.state, "output": tol.output}}


def first_step(traj: dict, num_steps: int) -> dict:
    """``{"traj.obs": leaf, ...}``: the first acting step of a segment's trajectory, each time-major
    leaf at step 0 under its dotted path. Only that step is teacher-forced in full: the later steps
    start from states that rounding has moved, and a chaotic env (CartPole's pole) grows a
    difference of one rounding into one of 1e-3 within a segment."""
    leaves, spec = flatten({"traj": traj})
    return {".".join(map(str, path)): leaf[0] for path, leaf in zip(spec.paths, leaves)
            if leaf.dim() and leaf.shape[0] == num_steps}


def warmup(built: Built, state: TrainState) -> float:
    """Compile every compiled function by running one iteration and dropping its result (the
    iteration is pure, so ``state`` is untouched); returns seconds."""
    if not built.plan.compile or getattr(built.env, "host_state", False):  # (the host env would move on)
        return 0.0
    start = time.perf_counter()
    iteration(built, state)
    return time.perf_counter() - start


def scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.dim() <= 1}


def to_host(metrics: dict, runs: int | None) -> list[dict]:
    """The device metrics -> one dict of Python floats per run, in one transfer (one sync on
    CUDA, not one per key)."""
    scalars = scalar_metrics(metrics)
    table = torch.stack([v.float().reshape(runs or 1) for v in scalars.values()], dim=1).tolist()
    return [dict(zip(scalars, row)) for row in table]


def finished_by_run(episodes: dict, runs: int) -> list[tuple[list, list]]:
    """Returns and lengths of the episodes each run finished in a segment (one host sync);
    ``episodes`` holds ``[T, runs * N]`` tensors "return", "length" and "done"."""
    done, ret, length = (to_runs(episodes[k].cpu(), runs, 1) for k in ("done", "return", "length"))
    return [(ret[r][done[r]].tolist(), length[r][done[r]].tolist()) for r in range(runs)]


class UpdateLog(NamedTuple):
    update: int
    num_updates: int
    env_steps: int  # every run together
    elapsed_s: float
    sps: float  # every run together
    mean_return: float  # over the last RETURN_WINDOW finished episodes (a group: the mean over runs)
    episodes: int  # episodes in the return window (a group: every run's)
    metrics: dict | list  # host floats: a dict, or one per run for a group (with its mean_return)
    return_spread: tuple | None = None  # a group: (min, max) over runs of the rolling means
    groups: dict | list | None = None  # the gradient table with statuses (one per run), filled by kernel.runs
    tier: str | None = None  # a tiered run before its switch: which code runs and what compiles (live view)
    note: str | None = None  # one line to show once (a tiered run's compile failed)
    unix_time: float = 0.0  # when the update ended (gaps between updates, compiling included)


class NonFiniteRun(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive skipped (non-finite) steps (in a group: in every run)."""

    def __init__(self, message: str, metrics: dict, last_checkpoint):
        super().__init__(message)
        self.metrics, self.last_checkpoint = metrics, last_checkpoint


class Trained(NamedTuple):
    state: TrainState
    progress: Progress | list  # one record, or one per run of this process for a group
    summary: dict


def train(built: Built, state: TrainState | None = None, progress: Progress | list | None = None,
          on_update: Callable[[UpdateLog], None] | None = None, checkpointer=None, max_bad_steps: int | None = None,
          until_update: int | None = None) -> Trained:
    """Iterate to ``config.total_steps`` (or ``until_update``), from a checkpoint's ``state`` and
    ``progress`` if given (the loop continues exactly as if it had never stopped); ``checkpointer``
    (kernel.resume) saves periodically. After ``max_bad_steps`` consecutive non-finite (skipped)
    steps, in every run of a group, it stops with :class:`NonFiniteRun`. The summary holds compile
    and run seconds, SPS, the mean return and when it first reached the env's ``solved_return``."""
    cfg, world, group = built.config, built.world, built.group
    state = state if state is not None else init_state(built)
    runs = group.count if group is not None else 1
    records = list(progress) if isinstance(progress, list) else [progress or Progress()] * runs
    # Before the switch update the same build runs eagerly (its env, policy and optimizer shared).
    # The switch update runs eagerly and checks the compiled update against the eager one
    # (:func:`checked_update`); the compiled functions take over after it if they agree. The switch
    # is recorded (compile_from_update), or, with None, the first boundary at which the compiled
    # functions are ready (kernel.tiers; data-parallel ranks agree on it).
    from_update = cfg.compile_from_update
    tiers = Tiers(built, built.own_env) if built.plan.compile and from_update is None else None
    if tiers is None or tiers.helper is None:
        drop_early()  # (a helper the command line started early, not needed here)
    switch = from_update if built.plan.compile else None
    eager = with_plan(built, Plan(False, False, "eager before the switch update")) \
        if built.plan.compile and (tiers is not None or records[0].update < switch) else None
    compile_s, check, job = (warmup(built, state) if eager is None else 0.0), None, built.job
    # Ranks of one run all see every rank's episodes; ranks of a group each train their own runs.
    every = (lambda items: world.concat_lists(items)) if group is not None else list
    steps_per_update = cfg.batch_size * (world.size if group is None else 1)
    start_steps = sum(p.env_steps for p in every(records))
    last = min(cfg.num_updates, until_update or cfg.num_updates)
    solved = getattr(built.env, "solved_return", None)
    start = time.perf_counter()
    try:
        while records[0].update < last:
            began, spent = time.perf_counter(), 0.0  # compiling and checking: not run seconds
            if switch is None and tiers is not None:
                if tiers.ready(state, iteration):
                    switch = records[0].update
                    job = job.replace(compile_from_update=switch)  # a resumed run, or a replay, switches here too
                spent = time.perf_counter() - began if tiers.warm is not None else 0.0  # (polling the helper: not)
            if eager is not None and check is None and switch is not None and records[0].update >= switch:
                # Eager steps may leave one tensor twice in the carry (CartPole's state is its obs);
                # compiled ones never do, and a graph traced on the aliased carry would recompile.
                state = state._replace(carry=unaliased(state.carry))
                if tiers is None:  # (a tiered run has traced its graphs already)
                    warmup(built, state)
                state, metrics, check = checked_update(eager, built, state, records[0].update)
                state = state._replace(carry=unaliased(state.carry))
                tier = 0.0 if check["agreed"] is not None else 1.0  # a checked update keeps the eager result
                eager = eager if check["agreed"] is False else None
                if eager is not None:  # checkpoints from here on say eager: a resumed run must not compile
                    job = job.replace(compile=False)
                spent = time.perf_counter() - began
            else:
                state, metrics = iteration(eager or built, state)
                tier = float(built.plan.compile and eager is None)
            compile_s, start = compile_s + spent, start + spent
            episodes = metrics["episodes"] if group is not None else \
                tree_map(lambda x: x.movedim(0, 1).flatten(1), world.gather_tree(metrics["episodes"]))
            finished = finished_by_run(episodes, runs)
            elapsed = time.perf_counter() - start
            records = [p.advanced(steps_per_update, ret, solved, elapsed) for p, (ret, _) in zip(records, finished)]
            # (every rank reduces, or a rank without a callback would leave the others waiting)
            wanted = world.distributed or on_update is not None or max_bad_steps
            scalars = world.mean_tree(scalar_metrics(metrics)) if group is None else scalar_metrics(metrics)
            host = to_host(scalars, group and runs) if wanted else []
            for h, p, (_, lengths) in zip(host, records, finished):
                h["episode_length"] = sum(lengths) / len(lengths) if lengths else float("nan")
                h["compiled"] = tier  # 1.0: this update ran compiled; 0.0: eagerly
                if group is not None:
                    h["mean_return"] = p.mean_return
            host, everyone = every(host), every(records)
            streaks = optim.consecutive_skips(state.opt_state).reshape(-1)
            if max_bad_steps and min((world.concat_tree(streaks) if group is not None else streaks).tolist()) \
                    >= max_bad_steps:
                last_good = checkpointer.last if checkpointer is not None else None
                every_run = "every run had " if group is not None else ""
                raise NonFiniteRun(f"stopped at update {records[0].update}: {every_run}{max_bad_steps} or more "
                                   "consecutive steps had a non-finite loss or gradient (all skipped; params are "
                                   "still finite)",
                                   host[0] if group is None else host, last_good)
            if checkpointer is not None:
                checkpointer.maybe_save(job, state, records if group is not None else records[0], built.all_runs)
            if on_update is not None:
                log = update_log(cfg, everyone, host, start_steps, elapsed, group is not None)
                if tiers is not None and (check is None or check["agreed"] is False):
                    log = log._replace(tier=tiers.text() if check is None else
                                       f"eager (the compiled update disagreed at update {switch})",
                                       note=tiers.taken_note())
                on_update(log)
    finally:
        if tiers is not None:
            tiers.stop()
    run_s = time.perf_counter() - start
    skipped = optim.skipped_steps(state.opt_state).reshape(-1)
    summary = summarize(built, every(records), (world.concat_tree(skipped) if group is not None else skipped).tolist(),
                        compile_s, run_s, start_steps, check, switch, tiers.summary() if tiers is not None else None)
    return Trained(state, records if group is not None else records[0], summary)


def update_log(cfg: Config, everyone: list, host: list, start_steps: int, elapsed: float, group: bool) -> UpdateLog:
    steps = sum(p.env_steps for p in everyone)
    means = [p.mean_return for p in everyone if p.returns]
    spread = ((min(means), max(means)) if means else (float("nan"), float("nan"))) if group else None
    return UpdateLog(everyone[0].update, cfg.num_updates, steps, elapsed, (steps - start_steps) / max(elapsed, 1e-9),
                     mean_over_runs(everyone), sum(len(p.returns) for p in everyone), host if group else host[0],
                     spread, unix_time=time.time())


def mean_over_runs(progress: list) -> float:
    """The mean of the runs' rolling means (NaN until every run has finished an episode)."""
    means = [p.mean_return for p in progress]
    return sum(means) / len(means) if all(p.returns for p in progress) else float("nan")


def summarize(built: Built, progress: list, skipped: list, compile_s: float, run_s: float, start_steps: int,
              check: dict | None = None, switch: int | None = None, tiers: dict | None = None) -> dict:
    """``progress`` and ``skipped``: every run (all ranks' shares of a group); ``check``: the switch
    update's (:func:`checked_update`); ``switch``: the update it switched at (None: not yet);
    ``tiers``: a tiered run's helper seconds and failure (:meth:`kernel.tiers.Tiers.summary`)."""
    total = sum(p.env_steps for p in progress)
    switch_update = switch if built.plan.compile else None
    if check is not None and check["agreed"] is False:
        switch_update = None  # the compiled update disagreed: the run stayed eager
    summary = {
        "compile_s": compile_s,
        # an env stepped on the host gets no throwaway warm-up: its compile is inside the first compiled update
        "compiled_in_first_update": built.plan.compile and getattr(built.env, "host_state", False),
        # the update at which the run compiled (None: eager throughout)
        "switch_update": switch_update,
        "switch_check": check,  # the compiled update against the eager one at the switch (None: no switch)
        "tiers": tiers,  # a run that switched when compiled: the helper's seconds, or why it stayed eager
        "run_s": run_s,
        "env_steps": total,
        "sps": (total - start_steps) / max(run_s, 1e-9),
        "mean_return": mean_over_runs(progress),
        "solved_return": getattr(built.env, "solved_return", None),
        "peak_memory_mb": peak_memory_mb(built.device),
        "device": str(built.device),
    }
    runs = built.all_runs
    if runs is None:
        return dict(summary, episodes_in_window=len(progress[0].returns), first_solved=progress[0].first_solved,
                    skipped_steps=int(skipped[0]))
    rows = [{"run": r, "seed": runs.seeds[r], **runs.setting(r), "mean_return": p.mean_return,
             "first_solved": p.first_solved, "skipped_steps": int(skipped[r])} for r, p in enumerate(progress)]
    return dict(summary, runs_count=runs.count, swept=list(runs.values), runs=rows)


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
    """What :func:`make_train` returns, for one run or a group (``built.group``: then every state
    leaf but the update count has a leading run axis)."""

    built: Built
    init: Callable[..., TrainState]  # (seed=None) -> state: a seed for one run, one per run for a group
    iteration: Callable[[TrainState], tuple[TrainState, dict]]
    train: Callable[..., Trained]  # (state=None, progress=None, on_update=None, ...) -> Trained


def make_train(config: Config, seeds=None, sweep: dict | None = None, world: World = SINGLE,
               plan: Plan | None = None, env=None) -> Trainer:
    """Build ``config`` once and return its functions. With ``seeds`` and/or ``sweep`` (``{"lr":
    [1e-4, 3e-4]}``) every swept setting with every seed trains as one vmapped group
    (:mod:`kernel.group`). ``world``: this process's data-parallel ranks; ``plan``: compile and fuse
    as given instead of as :mod:`kernel.plan` decides; ``env``: the caller's own env object (see
    :func:`kernel.build.build`)."""
    group = None if seeds is None and not sweep else grid(list(seeds) if seeds is not None else [config.seed], sweep)
    built = build(config, world, group, plan, env)
    return trainer(built)


def trainer(built: Built) -> Trainer:
    return Trainer(built, partial(init_state, built), partial(iteration, built), partial(train, built))
