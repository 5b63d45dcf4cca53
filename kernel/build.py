"""Building a config: the env, the policy, the optimizer, and the stages the iteration calls.

:func:`build` makes the pure pieces once; :func:`stages` turns them into what
:func:`kernel.iteration.iterate` calls, as the plan (:mod:`kernel.plan`) says: eager functions,
each stage compiled on its own, or the whole iteration compiled as one graph (fused). The same
functions run in all three; a group of runs maps them over its run axis (``vmap``), and a
data-parallel rank all-reduces inside its gradient step.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch.func import vmap

import envs
from kernel import loss_scale, optim, rng
from kernel.config import Config, validated
from kernel.distributed import SINGLE, World
from kernel.eager import inference
from kernel.group import Group, policy_over_runs
from kernel.group import validated as validated_group
from kernel.hot import compile_hot, fused_options
from kernel.iteration import Stages, iterate
from kernel.loop import stacked
from kernel.normalize import combined, running_init
from kernel.plan import Plan, decide
from kernel.policy import Policy, make_policy
from kernel.ppo import UNROLL_MAX_STEPS, gae, global_advantage_stats, make_grad_step, shuffle_units
from kernel.rollout import Rollout, make_rollout
from kernel.state import TrainState
from kernel.tree import tree_map


class Built(NamedTuple):
    """The pure pieces one config builds (compiled functions included); no changing data. ``job``:
    the whole training's config (a data-parallel rank runs ``num_envs / ranks`` of its envs);
    ``group``: the runs this process trains (None: one run); ``all_runs``: every rank's runs."""

    config: Config
    job: Config
    env: object  # ``num_envs`` sub-environments per run
    policy: Policy  # one run's policy
    optimizer: optim.GradientTransformation
    rollout: Rollout  # over every run's sub-environments
    stages: Stages
    whole: Callable | None  # the whole iteration compiled as one graph (fused), or None
    plan: Plan
    world: World = SINGLE
    group: Group | None = None
    all_runs: Group | None = None
    own_env: bool = False  # the caller's env object, not one made from config.env
    hot: dict = {}  # the compiled functions by name (kernel.hot.Hot; what kernel.saved saves and loads)

    @property
    def precision(self):
        return self.config.precision

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)


def make_optimizer(config: Config, foreach: bool = True) -> optim.GradientTransformation:
    """Adam with global-norm clipping that skips non-finite steps. The learning rate and the norm
    limit arrive as tensors each step (:func:`kernel.ppo.hyper_tensors`). ``foreach=False``: leaf by
    leaf (the same maths; what ``vmap`` and a ``scan`` body need)."""
    return optim.apply_if_finite(optim.chain(optim.clip_by_global_norm(None, foreach),
                                             optim.scale_by_adam(eps=config.adam_eps, foreach=foreach),
                                             optim.scale_by_learning_rate(None, foreach)))


def policy_for(config: Config, env, precision=None) -> Policy:
    names = set(env.action_spec.names)
    unknown = sorted(set(config.ent_coef_heads) - names)
    if unknown:
        raise ValueError(f"ent_coef_heads names unknown head(s) {', '.join(unknown)}; "
                         f"{config.env} has {', '.join(sorted(names))}")
    if config.log_std_init is not None and not any(h.kind == "gaussian" for h in env.action_spec.heads):
        raise ValueError(f"log_std_init applies to Gaussian action heads; {config.env} has only categorical "
                         f"ones ({', '.join(sorted(names))})")
    log_std = 0.0 if config.log_std_init is None else config.log_std_init
    return make_policy(env.obs_dim, env.action_spec, config.hidden, config.activation,
                       precision or config.precision, config.policy, config.lstm_size, log_std)


def make_env(config: Config, num_envs: int | None = None):
    """The config's env (its ``env_options`` applied) with ``num_envs`` sub-environments
    (default: the config's)."""
    return envs.make(config.env, config.num_envs if num_envs is None else num_envs, device=config.device,
                     **config.env_options)


def own_env(env, config: Config, runs: int | None):
    """The caller's env, a gymnasium vector env wrapped, with as many sub-environments as asked."""
    if not hasattr(env, "action_spec") and hasattr(env, "single_action_space"):
        env = envs.gym.GymEnv.wrap(env, config.device)
    if not isinstance(env, envs.Env):
        raise ValueError(f"env must meet envs.base.Env or be a gymnasium vector env, got {type(env).__name__}")
    wanted = config.num_envs * (runs or 1)
    if env.num_envs != wanted:
        raise ValueError(f"the env has {env.num_envs} sub-environments; the config asks for {wanted}")
    return env


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


def stages(config: Config, policy: Policy, rollout: Rollout, world: World, runs: int | None, compiled: bool,
           fused: bool, python_env: bool = False, hot: dict | None = None) -> Stages:
    """The iteration's stages: compiled one by one, or plain functions for eager runs and for the
    one graph a fused build compiles around them. ``python_env``: the rollout stays eager. Each
    compiled stage goes into ``hot`` under its name."""
    scanned = compiled and fused  # loops inside a compiled whole iteration
    over_runs = vmap if runs else (lambda fn: fn)
    # Leaf by leaf under vmap and in a scan body (torch's alias check rejects the foreach ops'
    # list arguments there); compiled, both forms give the same kernels.
    foreach = runs is None and not fused
    step = make_grad_step(policy, make_optimizer(config, foreach), config.clip_vloss, config.norm_adv, None,
                          config.norm_entropy, config.head_average, foreach=foreach, tape=not compiled and runs is None)
    on_its_own = compiled and not fused

    def staged(fn: Callable, name: str) -> Callable:
        if not on_its_own:
            return fn

        def stage(*args):  # a code object per stage and build: compile_hot gives each its own cache
            return fn(*args)

        made = compile_hot(stage, config.device, name=name)
        if hot is not None:
            hot[name] = made
        return made

    # Not a compiled stage of its own: one triangular solve (kernel.ppo.gae) runs about as fast
    # eagerly as compiled, and its graph cost seconds of every cold compile. A fused graph holds it.
    advantages = partial(gae, scanned=scanned and config.num_steps > UNROLL_MAX_STEPS)
    if on_its_own and policy.recurrent and not python_env:
        # The recurrent bootstrap runs eagerly after the compiled segment: inductor's C++ wrapper
        # emits a duplicate declaration for a scan and an LSTM step in one graph with the default
        # options (the fused graph's options avoid it).
        acting = staged(lambda params, carry, a, e: rollout.segment(params, carry, a, e, True, False), "segment")

        def segment(params, carry, action_noise, env_noise):
            carry, traj = acting(params, carry, action_noise, env_noise)
            return carry, rollout.bootstrap(params, traj)
    elif on_its_own and not python_env:
        segment = staged(lambda params, carry, a, e: rollout.segment(params, carry, a, e, True), "segment")
    else:
        segment = partial(rollout.segment, scanned=scanned)
        if not compiled and not python_env:  # (an env that trains networks as it steps needs autograd)
            segment = inference(segment)
    if world.distributed and runs is None:
        # The data-parallel hook: this rank's gradients, their mean over every rank, then the step.
        gradients, apply = staged(step.gradients, "gradients"), staged(step.apply, "apply")

        def grad_step(params, opt_state, scale, batch, idx, hyper):
            grads, loss, metrics = gradients(params, scale, batch, idx, hyper)
            grads, loss = world.mean_tree((grads, loss))  # a NaN on any rank reaches every rank
            return apply(params, opt_state, scale, grads, loss, metrics, hyper)

        advantage_stats = partial(global_advantage_stats, recurrent=policy.recurrent, world=world) \
            if config.norm_adv else None
    else:
        grad_step, advantage_stats = staged(over_runs(step), "grad_step"), None
    minibatch = shuffle_units(config, policy.recurrent) // config.num_minibatches
    return Stages(segment, advantages, grad_step, advantage_stats, policy.spec, policy.recurrent, minibatch, runs,
                  scanned)


def build(config: Config, world: World = SINGLE, group: Group | None = None, plan: Plan | None = None,
          env=None) -> Built:
    """Build ``config`` once, for one run or a ``group`` (of which a data-parallel rank trains its
    share); ``plan``: compile and fuse as given instead of as :func:`kernel.plan.decide` says; ``env``:
    the caller's own env (anything meeting ``envs.base.Env``, or a gymnasium vector env) with every
    run's sub-environments, instead of the one ``config.env`` names."""
    job = validated(config)
    all_runs = validated_group(job, group) if group is not None else None
    own = all_runs.share(world.rank, world.size) if all_runs is not None else None
    config = rank_config(job, world) if own is None else job
    runs = own.count if own is not None else None
    callers = env is not None
    env = make_env(config, config.num_envs * (runs or 1)) if env is None else own_env(env, config, runs)
    if config.norm_obs and not getattr(env, "tensor_obs", True):
        raise ValueError(f"norm_obs needs plain observation vectors; {config.env} observes a dict with masks")
    if config.norm_obs and not getattr(env, "float_obs", True):
        raise ValueError(f"norm_obs needs real-valued observations; {config.env}'s are integers or one-hot codes")
    plan = plan or decide(config, env, world.distributed, own is not None)
    built = Built(config, job, env, policy_for(config, env), make_optimizer(config), None, None, None, plan, world,
                  own, all_runs, callers)
    return with_plan(built, plan)


def rollout_for(config: Config, env, policy: Policy, runs: int | None, compiled: bool) -> Rollout:
    acting = policy_over_runs(policy, runs, env.num_envs) if runs else policy
    # an env stepping on the host: what each acting step does before and after it compiles
    hot = partial(compile_hot, device=config.device) if compiled and getattr(env, "host_state", False) else None
    return make_rollout(env, acting, config.num_steps, runs=runs or 1, norm_obs=config.norm_obs,
                        norm_reward=config.norm_reward, gamma=config.gamma, hot=hot)


def with_plan(built: Built, plan: Plan) -> Built:
    """``built`` with its rollout and stages made for ``plan``; the env, policy and optimizer kept."""
    config = built.config.replace(compile=plan.compile)
    runs = built.group.count if built.group is not None else None
    rollout = rollout_for(config, built.env, built.policy, runs, plan.compile)
    hot: dict = {}
    parts = stages(config, built.policy, rollout, built.world, runs, plan.compile, plan.fuse,
                   not getattr(built.env, "compilable", True), hot)
    whole = None
    if plan.fuse:
        whole = partial(iterate, parts)
        if plan.compile:
            def fused(*args):
                return iterate(parts, *args)

            whole = hot["iteration"] = compile_hot(fused, config.device, fused_options(config.device), "iteration")
    return built._replace(config=config, rollout=rollout, stages=parts, whole=whole, plan=plan, hot=hot)


def rank_key(built: Built, key: torch.Tensor) -> torch.Tensor:
    """This rank's key from a key all ranks of one run share (the key itself otherwise)."""
    return rng.split(key, built.world.size)[built.world.rank] if built.world.distributed and built.group is None \
        else key


def init_state(built: Built, seed=None) -> TrainState:
    """The state before the first update, from ``seed`` (one run: a seed; a group: one per run,
    each run's state what a one-run ``init_state`` gives, stacked; default: the config's)."""
    group = built.group
    if group is None:
        seeds = [built.config.seed if seed is None else seed]
    else:
        seeds = [int(s) for s in (group.seeds if seed is None else seed)]
        if len(seeds) != group.count:
            raise ValueError(f"need {group.count} seeds, got {len(seeds)}")
    keys = [rng.split(rng.key(s), 3) for s in seeds]
    device = built.device
    to_device = partial(tree_map, lambda x: x.to(device))
    params = [to_device(built.policy.init(rng.generator(k[0]))) for k in keys]
    per_run = (params, [to_device(built.optimizer.init(p)) for p in params],
               [loss_scale.for_precision(built.precision.needs_loss_scale, device=device) for _ in seeds],
               [k[2] for k in keys])
    params, opt_state, scale, key = (stacked(x) for x in per_run) if group is not None else (x[0] for x in per_run)
    carry = built.rollout.init([rng.generator(rank_key(built, k[1])) for k in keys])
    # Every rank's reset observations in every rank's statistics (the first observations themselves
    # were standardized with the rank's own, before any sample of another rank could be seen).
    if "norm" in carry and built.world.distributed and group is None:
        fresh = lambda stats: running_init(tuple(stats["mean"].shape), device)
        carry = dict(carry, norm={k: combined(fresh(v), v, built.world) for k, v in carry["norm"].items()})
    return TrainState(params, opt_state, scale, carry, key, torch.zeros((), dtype=torch.int64, device=device))
