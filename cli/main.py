"""``fkernel`` command line: parses options, calls the kernel, renders. The run itself (folder,
checkpoints, telemetry, summary) is :mod:`kernel.runs`, so Python users get the same runs."""
from __future__ import annotations

import sys

if __name__ == "__main__":  # (python -m cli.main) a tiered run's compile helper starts before the imports below
    from cli.early import start_helper

    EARLY = start_helper(sys.argv[1:])

import json  # noqa: E402 (and the imports below: after the early helper's start)
import logging  # noqa: E402
import os  # noqa: E402
from collections import deque  # noqa: E402
from functools import partial  # noqa: E402

import click  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.markup import escape  # noqa: E402

import envs  # noqa: E402
from cli import common, launch, render, tools  # noqa: E402
from kernel.config import PRESETS  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """fkernel: functional, compiled PPO on PyTorch."""


@cli.command()
@click.option("--env", "env_name", default=None,
              help="Environment name (see `fkernel envs`), or gym:ID for any gymnasium env (the [gym] extra). "
                   "[default: cartpole]")
@click.option("--num-envs", type=int, default=None, help="Parallel environments. [default: 4]")
@click.option("--num-steps", type=int, default=None, help="Steps per env per rollout. [default: 128]")
@click.option("--total-steps", type=int, default=None, help="Total env steps. [default: 500000]")
@click.option("--seed", type=int, default=None, help="Seed of the run's one generator. [default: 0]")
@click.option("--device", default=None, help="cpu or cuda[:N]. [default: cpu]")
@click.option("--compile", "compile_", type=click.Choice(["auto", "on", "off"]), is_flag=False, flag_value="on",
              default=None, help="Compile the hot path: 'auto' compiles where the estimated saving over the run "
                                 "beats the compile time (and says why); a bare --compile forces it. [default: auto]")
@click.option("--no-compile", "no_compile", is_flag=True, help="Run eagerly (same as --compile off).")
@click.option("--compile-from-update", type=click.IntRange(min=0), default=None, metavar="N",
              help="Run updates before N eagerly, then compile (implies --compile on); update N checks the "
                   "compiled update against the eager one. Recorded in the run's config: the same seed and N "
                   "replay a run bit for bit, and a resumed run keeps its N. [default: 0]")
@click.option("--fuse/--no-fuse", default=None,
              help="Run each iteration (rollout, advantages, all minibatch steps) as one compiled call. "
                   "[default: where it pays: always on CUDA; on CPU for runs long enough to repay the longer "
                   "compile]")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="A named set of config values, applied like flags (explicit flags override them; "
                   "cartpole-gpu: 2048 CartPole envs on CUDA; pendulum: Pendulum-v1 on the CPU; mujoco: CleanRL's "
                   "continuous PPO settings, gym:HalfCheetah-v5 unless --env says).")
@click.option("--norm-obs/--no-norm-obs", default=None,
              help="Standardize observations by running statistics kept in the run's state (clipped at 10). "
                   "[default: off]")
@click.option("--norm-reward/--no-norm-reward", default=None,
              help="Scale rewards by the running std of a discounted return (clipped at 10). [default: off]")
@click.option("--precision", default=None,
              help="fp32, bf16, fp16 or 'params=float32,compute=bfloat16' (trunk compute dtype; heads stay fp32). "
                   "[default: fp32]")
@click.option("--policy", "policy_kind", type=click.Choice(["mlp", "lstm"]), default=None,
              help="Feed-forward or recurrent trunk. [default: the env's, mlp for cartpole, lstm for seedbed]")
@click.option("--env-option", "env_option", multiple=True, metavar="KEY=VALUE",
              help="An option of the env, repeatable (values read as JSON where they parse, else text); for "
                   "gym:ID, a keyword of gymnasium's make. `fkernel envs ENV` lists an env's options.")
@click.option("--log-std-init", type=float, default=None,
              help="Gaussian action heads: initial log standard deviation. [default: 0]")
@click.option("--config-json", type=click.Path(dir_okay=False), default=None,
              help="JSON object of config keys; explicit flags override it.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder. [default: runs/<env>-seed<seed>-<time>; on resume, the checkpoint's run folder]")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Save a resumable checkpoint every N updates into <out>/checkpoints (0: only at the end).")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Periodic checkpoints to keep (newest).")
@click.option("--resume", default=None, metavar="PATH|latest",
              help="Continue a run from a checkpoint file, or from the newest one in --out.")
@click.option("--max-bad-steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="Stop after this many consecutive non-finite (skipped) steps.")
@click.option("--grad-table-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Print the per-group gradient table every N updates (0: never).")
@click.option("--telemetry-dir", type=click.Path(file_okay=False), default=None,
              help="Where telemetry.jsonl goes: one JSON line per update (losses, KL, loss scale, skipped "
                   "steps, grad stats; what `fkernel plot` draws). [default: the run folder]")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), default=None,
              help="Also write TensorBoard event files here (needs the [tensorboard] extra).")
@click.option("--seeds", "seed_list", default=None, metavar="0,1,2|0-15",
              help="Train one run per seed, all in one vmapped program (run folders run-<i>/).")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2",
              help="Also train every value of KEY (lr, clip_coef, ent_coef, vf_coef, gae_lambda, gamma, "
                   "max_grad_norm); several --sweep make a grid, each with every seed.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Data-parallel training in N processes on this machine (CPU, gloo), via torchrun's launcher.")
@click.option("--devices", multiple=True, metavar="cuda:0,cuda:1",
              help="Data-parallel training with one process per device (NCCL on CUDA), via torchrun's launcher.")
@click.option("--env-workers", type=click.IntRange(min=0), default=None,
              help="gym:ID envs: step the sub-environments in N worker processes (0: in this process). [default: 0]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads (results are bit-reproducible for a fixed thread count). "
                   "[default: torch's choice]")
def train(env_name, num_envs, num_steps, total_steps, seed, device, compile_, no_compile, compile_from_update, fuse,
          preset, norm_obs, norm_reward, precision, policy_kind, env_option, log_std_init, config_json, out,
          checkpoint_every, keep, resume, max_bad_steps, grad_table_every, telemetry_dir, tensorboard_dir, seed_list,
          sweeps, nproc, devices, env_workers, threads):
    """Train a PPO agent; defaults are PureJaxRL's CartPole configuration."""
    from kernel import distributed, runs
    from kernel.checkpoint import CheckpointError
    from kernel.policy import group_dtypes
    from kernel.train import NonFiniteRun

    devices = [d.strip() for text in devices for d in text.split(",") if d.strip()]
    if no_compile and compile_ not in (None, "off"):
        raise click.UsageError(f"--no-compile contradicts --compile {compile_}")
    if resume == "latest" and not out:
        raise click.UsageError("--resume latest needs --out RUN_FOLDER to look in")
    compile_ = "off" if no_compile else compile_
    if compile_from_update and compile_ == "off":
        raise click.UsageError("--compile-from-update switches to compiled code; it contradicts running eagerly")
    compile_flag = {"on": True, "off": False}.get(compile_)  # None: auto (unless the config file says)
    if compile_from_update:  # a switch to compiled code asks for compiled code
        compile_flag = True
    flags = dict(env=env_name, num_envs=num_envs, num_steps=num_steps, total_steps=total_steps, seed=seed,
                 device=device, compile=compile_flag, precision=precision, policy=policy_kind, norm_obs=norm_obs,
                 norm_reward=norm_reward,
                 log_std_init=log_std_init, env_options=common.env_options(env_option, env_workers),
                 fuse=None if fuse is None else ("on" if fuse else "off"), compile_from_update=compile_from_update)
    for key, value in PRESETS.get(preset, {}).items():  # a preset's values, unless a flag gives one
        flags[key] = value if flags.get(key) is None else flags[key]
    if devices:  # one process per device: the launcher's check sees the first, each rank its own
        flags["device"] = devices[int(os.environ.get("LOCAL_RANK", 0))]
    if (nproc or devices) and not distributed.launched():
        if nproc and devices and nproc != len(devices):
            raise click.BadParameter(f"{nproc} processes for {len(devices)} devices", param_hint="--nproc")
        if not resume:  # refuse a config the ranks cannot split before starting any of them
            try:
                runs.check_splittable(runs.resolve_config(flags, config_json), nproc or len(devices),
                                      common.seeds(seed_list), common.sweep(sweeps))
            except ValueError as e:
                raise common.usage_error(e)
        return launch.launch(click.get_current_context(), nproc or len(devices))
    common.set_threads(threads)
    options = runs.Options(checkpoint_every, keep, max_bad_steps, telemetry_dir, tensorboard_dir)
    try:
        world = distributed.join(flags["device"] or "cpu")
        prepared = runs.prepare(flags, out, resume=resume, config_json=config_json, options=options,
                                seeds=common.seeds(seed_list), sweep=common.sweep(sweeps), world=world,
                                auto_compile=compile_flag is None)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--resume")
    except ValueError as e:  # RunError, and config values a flag set wrong
        raise common.usage_error(e)
    if not world.is_main:  # the other ranks train and checkpoint with rank 0, silently
        runs.execute(prepared)
        distributed.leave()
        distributed.end_worker_rank()
    cfg, update, group = prepared.config, int(prepared.state.step), prepared.group
    who = f"seed={cfg.seed}" if group is None else f"runs={group.count}"
    who += f" processes={world.size}" if world.distributed else ""
    con = common.console()
    con.print(f"[bold]fkernel train[/] env={cfg.env} envs={cfg.num_envs}x{cfg.num_steps} "
              f"updates={cfg.num_updates} {who} device={cfg.device} compile={cfg.compile} "
              f"precision={cfg.precision}" + (f" resuming at update {update}" if resume else ""))
    for note in prepared.notes:
        con.print(escape(note), soft_wrap=True)  # plain text, one line each ("[...]" is not markup)
    built = prepared.trainer.built
    con.print(f"iteration: {'fused' if built.plan.fuse else 'unfused'} ({built.plan.why})")
    returns_seen: deque = deque(maxlen=60)  # for the live view's sparkline
    progress = render.make_progress()
    task = progress.add_task("train", total=cfg.num_updates, completed=update)
    if cfg.compile and cfg.compile_from_update is None:
        pass  # tiered: the auto note said how, and the live view says where it stands
    elif cfg.compile and cfg.compile_from_update > update:
        con.print(f"eager until update {cfg.compile_from_update}, then compiled (compiling at that update)")
    elif cfg.compile:
        con.print("compiling (first call; cached afterwards)...")
    frozen, compiled_since = [], []
    tier = partial(render.tier, cfg.compile, cfg.compile_from_update)
    first_tier = "eager; compiling in a helper process" if cfg.compile and cfg.compile_from_update is None \
        else tier(update, None)
    with Live(render.live_view(progress, tier_text=first_tier), console=con, refresh_per_second=4,
              transient=False) as live:

        def on_update(log):
            if not frozen:  # after the first update, everything compiled: see long_lived_from_now
                frozen.append(common.long_lived_from_now())
            progress.update(task, completed=log.update)
            returns_seen.append(log.mean_return)
            if not compiled_since and render.mean_metrics(log.metrics).get("compiled"):
                compiled_since.append(log.update - 1)  # (log.update counts the updates done)
                if len(frozen) == 1 and log.update > 1:  # compiled after a switch: its graphs are long-lived too
                    frozen.append(common.long_lived_from_now())
            if log.note:  # a tiered run's compile failed: said once
                live.console.print(escape(log.note), soft_wrap=True)
            text = log.tier or tier(log.update, compiled_since[0] if compiled_since else None)
            live.update(render.live_view(progress, log, list(returns_seen), text))
            if grad_table_every and log.update % grad_table_every == 0:
                tables = log.groups if group is not None else [log.groups]
                for r, groups in enumerate(tables):
                    title = f"gradients, update {log.update}" + (f", run {r}" if group is not None else "")
                    live.console.print(render.grad_table(groups, title, group_dtypes(groups, cfg.precision)))

        try:
            finished = runs.execute(prepared, on_update)
        except NonFiniteRun as e:
            live.console.print(render.grad_table(e.groups, "gradients at the stop",
                                                 group_dtypes(e.groups, cfg.precision)))
            kept = (f"last good checkpoint: {e.last_checkpoint}" if e.last_checkpoint
                    else "no checkpoint was written yet")
            raise click.ClickException(f"{e}; {kept}")
    con.print()
    con.print(render.summary_table(finished.summary))
    if finished.summary.get("switch_check"):
        con.print(escape(render.switch_line(finished.summary["switch_check"])), soft_wrap=True)
    if group is not None:
        con.print(render.settings_table(finished.summary))
    click.echo(f"trained params: {finished.params_path}")  # plain echo: never wrapped or cut, so scripts can grep it
    distributed.leave()


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True,
              help="Episodes to play (one per env).")
@click.option("--stochastic", is_flag=True, help="Sample actions instead of taking the most likely one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (mean_return, std_return, episodes).")
def eval_(checkpoint, episodes, stochastic, seed, as_json):
    """Play episodes with a saved policy and report the mean and std of the episode return."""
    from kernel.checkpoint import CheckpointError
    from kernel.evaluate import evaluate, load_policy

    try:
        cfg, params, meta = load_policy(checkpoint)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="CHECKPOINT")
    cfg = cfg.replace(device="cpu")
    returns = evaluate(cfg, params, episodes, greedy=not stochastic, seed=seed, obs_stats=meta.get("obs_stats"))
    mean = float(returns.mean())
    std = float(returns.std(unbiased=False))
    if as_json:
        click.echo(json.dumps({"mean_return": mean, "std_return": std, "episodes": episodes}))
    else:
        common.console().print(f"{cfg.env}: mean return {mean:.2f} +- {std:.2f} over {episodes} episodes "
                        f"({'stochastic' if stochastic else 'greedy'})")


@cli.command("envs")
@click.argument("env_name", required=False, metavar="[ENV]")
def list_envs(env_name):
    """List the environments, or ENV's options (`--env-option KEY=VALUE`) with their defaults."""
    if env_name is None:
        return common.console().print(render.envs_table(envs.REGISTRY))
    try:
        options = envs.options(env_name)
    except ValueError as e:  # an unknown name or gymnasium id, gymnasium missing: one line
        raise click.BadParameter(str(e), param_hint="ENV")
    common.console().print(render.options_table(env_name, options))


tools.register(cli)


def main(early: tuple | None = None) -> None:
    """The ``fkernel`` command; ``early``: a compile helper :func:`cli.early.start_helper` started
    for it (handed to the run)."""
    from kernel.tiers import adopt_early

    adopt_early(early)
    # torch's C++ build helper warns about a missing CUDA runtime on every CPU compile; that is
    # expected here and only noise for users.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # a data-parallel rank: report failures to torchrun
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(cli.main)(prog_name="fkernel", standalone_mode=True)
    cli(prog_name="fkernel")


if __name__ == "__main__":
    main(EARLY)
