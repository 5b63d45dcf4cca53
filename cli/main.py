"""``fkernel`` command line: parses, calls the kernel, renders. No training logic lives here."""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live

import envs
from cli import render
from kernel import config as config_mod


def console() -> Console:
    con = Console(stderr=False)
    # Piped to a file or a CI log: no terminal width to respect, so keep table rows whole.
    return con if con.is_terminal else Console(stderr=False, width=150)


def usage_error(e: Exception) -> click.UsageError:
    return click.UsageError(str(e).splitlines()[0])


def resolve_config(config_json, overrides: dict) -> config_mod.Config:
    """The env's defaults, then the JSON file, then explicit flags (last wins)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        file_values = config_mod.read_json_object(config_json) if config_json else {}
        env_name = given.get("env", file_values.get("env", "cartpole"))
        if env_name not in envs.REGISTRY:
            raise click.UsageError(f"unknown env {env_name!r}; choose from {', '.join(envs.names())}")
        base = config_mod.from_dict(file_values, config_mod.Config.for_env(env_name))
        cfg = config_mod.from_dict(given, base)
    except ValueError as e:
        raise usage_error(e)
    check_device(cfg.device)
    return cfg


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise click.UsageError(f"unknown device {device!r}; use cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.UsageError(f"device {device!r} asked for but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise click.UsageError(f"device {device!r} is not supported; use cpu or cuda[:N]")


def set_threads(threads) -> None:
    if threads is None:
        return
    if threads < 1:
        raise click.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
    import torch

    torch.set_num_threads(threads)


def default_out(cfg) -> Path:
    return Path("runs") / f"{cfg.env}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """fkernel: functional, compiled PPO on PyTorch."""


OVERRIDABLE_ON_RESUME = ("total_steps", "compile", "device")


@cli.command()
@click.option("--env", "env_name", default=None, help="Environment name (see `fkernel envs`). [default: cartpole]")
@click.option("--num-envs", type=int, default=None, help="Parallel environments. [default: 4]")
@click.option("--num-steps", type=int, default=None, help="Steps per env per rollout. [default: 128]")
@click.option("--total-steps", type=int, default=None, help="Total env steps. [default: 500000]")
@click.option("--seed", type=int, default=None, help="Seed of the run's one generator. [default: 0]")
@click.option("--device", default=None, help="cpu or cuda[:N]. [default: cpu]")
@click.option("--compile/--no-compile", "compile_", default=None, help="Compile the hot path. [default: compile]")
@click.option("--precision", default=None,
              help="fp32, bf16, fp16 or 'params=float32,compute=bfloat16' (trunk compute dtype; heads stay fp32). "
                   "[default: fp32]")
@click.option("--policy", "policy_kind", type=click.Choice(["mlp", "lstm"]), default=None,
              help="Feed-forward or recurrent trunk. [default: the env's, mlp for cartpole, lstm for seedbed]")
@click.option("--config-json", type=click.Path(dir_okay=False), default=None,
              help="JSON object of config keys; explicit flags override it.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder. [default: runs/<env>-seed<seed>-<time>; on resume, the checkpoint's run folder]")
@click.option("--checkpoint-every", type=int, default=100, show_default=True,
              help="Save a resumable checkpoint every N updates into <out>/checkpoints (0: only at the end).")
@click.option("--keep", type=int, default=3, show_default=True, help="Periodic checkpoints to keep (newest).")
@click.option("--resume", default=None, metavar="PATH|latest",
              help="Continue a run from a checkpoint file, or from the newest one in --out.")
@click.option("--max-bad-steps", type=int, default=100, show_default=True,
              help="Stop after this many consecutive non-finite (skipped) steps.")
@click.option("--grad-table-every", type=int, default=0, show_default=True,
              help="Print the per-group gradient table every N updates (0: never).")
@click.option("--telemetry-dir", type=click.Path(file_okay=False), default=None,
              help="Where telemetry.jsonl goes: one JSON line per update (losses, KL, loss scale, skipped "
                   "steps, grad stats; what `fkernel plot` draws). [default: the run folder]")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), default=None,
              help="Also write TensorBoard event files here (needs the [tensorboard] extra).")
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads (results are bit-reproducible for a fixed thread count). "
                   "[default: torch's choice]")
def train(env_name, num_envs, num_steps, total_steps, seed, device, compile_, precision, policy_kind, config_json,
          out, checkpoint_every, keep, resume, max_bad_steps, grad_table_every, telemetry_dir, tensorboard_dir,
          threads):
    """Train a PPO agent; defaults are PureJaxRL's CartPole configuration."""
    from kernel import curves, telemetry
    from kernel import train as T
    from kernel.checkpoint import CheckpointError
    from kernel.policy import group_dtypes
    from kernel.ppo import learning_rate
    from kernel.precision import parse
    from kernel.resume import Checkpointer, checkpoint_path, restore_state, save_state

    set_threads(threads)
    for name, value, low in (("--checkpoint-every", checkpoint_every, 0), ("--keep", keep, 1),
                             ("--max-bad-steps", max_bad_steps, 1), ("--grad-table-every", grad_table_every, 0)):
        if value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}", param_hint=name)
    flags = dict(env=env_name, num_envs=num_envs, num_steps=num_steps, total_steps=total_steps, seed=seed,
                 device=device, compile=compile_, precision=precision, policy=policy_kind)
    if resume:
        ckpt_path, cfg, saved_cfg, loaded, out = resume_point(resume, out, config_json, flags)
    else:
        cfg = resolve_config(config_json, flags)
        out = Path(out) if out else default_out(cfg)
        if out.exists() and any(out.iterdir()):
            raise click.UsageError(f"output folder {out} already holds files; choose another --out or --resume")
    telemetry_path = Path(telemetry_dir or out) / curves.TELEMETRY
    if telemetry_path.exists() and not resume:
        raise click.UsageError(f"{telemetry_path} already exists; choose another --telemetry-dir")

    if tensorboard_dir:
        try:
            curves.require("tensorboard", "tensorboard")
        except curves.MissingExtra as e:
            raise click.UsageError(str(e))
    run = T.build(cfg)
    state = T.init_state(run)
    if resume:
        try:
            state = restore_state(ckpt_path, run, state, loaded)
        except CheckpointError as e:
            raise click.BadParameter(str(e), param_hint="--resume")
        if state["update"] >= cfg.num_updates:
            raise click.UsageError(f"{ckpt_path} is already at update {state['update']} of {cfg.num_updates}; "
                                   "raise --total-steps to train further")

    con = console()
    con.print(f"[bold]fkernel train[/] env={cfg.env} envs={cfg.num_envs}x{cfg.num_steps} "
              f"updates={cfg.num_updates} seed={cfg.seed} device={cfg.device} compile={cfg.compile} "
              f"precision={cfg.precision}" + (f" resuming at update {state['update']}" if resume else ""))
    if resume and (note := schedule_change(saved_cfg, cfg, state["update"])):
        con.print(note)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    checkpointer = Checkpointer(out, checkpoint_every, keep) if checkpoint_every else None
    writer = telemetry.JsonlWriter(telemetry_path)
    board = curves.TensorboardLog(tensorboard_dir) if tensorboard_dir else None
    returns_seen: deque = deque(maxlen=60)  # for the live view's sparkline
    progress = render.make_progress()
    task = progress.add_task("train", total=cfg.num_updates, completed=state["update"])
    if cfg.compile:
        con.print("compiling the rollout and update steps (first call; cached afterwards)...")
    dtypes = None
    history = telemetry.NormHistory()  # each group's recent norms: the reference for its magnitude class
    with Live(render.live_view(progress), console=con, refresh_per_second=4, transient=False) as live:

        def on_update(log):
            nonlocal dtypes
            progress.update(task, completed=log.update)
            returns_seen.append(log.mean_return)
            live.update(render.live_view(progress, log, list(returns_seen)))
            groups = telemetry.group_table(log.metrics)
            for group, status in history.statuses(groups).items():
                groups[group]["status"] = status
            scalars = {k: v for k, v in log.metrics.items() if not k.startswith("grad/")}
            writer.write({"update": log.update, "env_steps": log.env_steps, "time_s": log.elapsed_s,
                          "mean_return": log.mean_return, **scalars, "grads": groups})
            if board is not None:
                board.write(log, learning_rate(cfg, log.update - 1))
            if grad_table_every and log.update % grad_table_every == 0:
                dtypes = dtypes or group_dtypes(groups, parse(cfg.precision))
                live.console.print(render.grad_table(groups, f"gradients, update {log.update}", dtypes))

        try:
            state, summary = T.train(cfg, on_update=on_update, state=state, run=run, checkpointer=checkpointer,
                                     max_bad_steps=max_bad_steps)
        except T.NonFiniteRun as e:
            groups = telemetry.group_table(e.metrics)
            for group, status in history.statuses(groups).items():
                groups[group]["status"] = status
            live.console.print(render.grad_table(groups, "gradients at the stop",
                                                 group_dtypes(groups, parse(cfg.precision))))
            kept = (f"last good checkpoint: {e.last_checkpoint}" if e.last_checkpoint
                    else "no checkpoint was written yet")
            raise click.ClickException(f"{e}; {kept}")
        finally:
            writer.close()
            if board is not None:
                board.close()
    if checkpointer is not None and checkpointer.last != checkpoint_path(out, state["update"]):
        checkpointer.save(cfg, state)  # so `--resume latest` continues from the true end
    path = save_state(out / "params.safetensors", cfg, state)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print()
    con.print(render.summary_table(summary))
    click.echo(f"trained params: {path}")  # plain echo: never wrapped or cut, so scripts can grep it


def resume_point(resume: str, out, config_json, flags: dict):
    """Checkpoint path, config, loaded file and run folder for ``--resume``; refuses conflicting flags."""
    from kernel import checkpoint
    from kernel.checkpoint import CheckpointError
    from kernel.resume import CHECKPOINT_DIR, latest_checkpoint, read_config

    if resume == "latest":
        if not out:
            raise click.UsageError("--resume latest needs --out RUN_FOLDER to look in")
        path = latest_checkpoint(out)
        if path is None:
            raise click.UsageError(f"no checkpoints in {Path(out) / CHECKPOINT_DIR} to resume from")
    else:
        path = Path(resume)
    try:
        loaded = checkpoint.load(path)
        saved = read_config(loaded[1], path)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--resume")
    try:
        asked = config_mod.read_json_object(config_json) if config_json else {}
        asked.update({k: v for k, v in flags.items() if v is not None})
        wanted = config_mod.from_dict(asked, saved)
    except ValueError as e:
        raise usage_error(e)
    conflicts = [f"{k}={getattr(wanted, k)!r} (checkpoint has {getattr(saved, k)!r})"
                 for k in asked if k not in OVERRIDABLE_ON_RESUME and getattr(wanted, k) != getattr(saved, k)]
    if conflicts:
        raise click.UsageError(f"cannot resume with a different config: {', '.join(conflicts)}; only "
                               f"{', '.join('--' + k.replace('_', '-') for k in OVERRIDABLE_ON_RESUME)} may change")
    check_device(wanted.device)
    if out is None:
        out = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    return path, wanted, saved, loaded, Path(out)


def schedule_change(saved: config_mod.Config, cfg: config_mod.Config, update: int) -> str | None:
    """What a new ``--total-steps`` does to an annealed learning rate on resume, or None.

    The schedule is a function of the config (linear from ``lr`` at update 0 to 0 at the last
    update), so a new total re-plans it from the resume point on: the rate jumps to the value the
    new schedule has there.
    """
    from kernel.ppo import learning_rate

    if not cfg.anneal_lr or saved.num_updates == cfg.num_updates:
        return None
    return (f"total steps changed from {saved.total_steps} to {cfg.total_steps}: the learning rate now anneals to 0 "
            f"at update {cfg.num_updates} instead of {saved.num_updates}, so at update {update} it is "
            f"{learning_rate(cfg, update):.3g} (the saved schedule had {learning_rate(saved, update):.3g})")


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--episodes", type=int, default=100, show_default=True, help="Episodes to play (one per env).")
@click.option("--stochastic", is_flag=True, help="Sample actions instead of taking the most likely one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (mean_return, std_return, episodes).")
def eval_(checkpoint, episodes, stochastic, seed, as_json):
    """Play episodes with a saved policy and report the mean and std of the episode return."""
    from kernel.checkpoint import CheckpointError
    from kernel.evaluate import evaluate, load_policy

    if episodes < 1:
        raise click.BadParameter(f"must be >= 1, got {episodes}", param_hint="--episodes")
    try:
        cfg, params, _ = load_policy(checkpoint)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="CHECKPOINT")
    cfg = cfg.replace(device="cpu")
    returns = evaluate(cfg, params, episodes, greedy=not stochastic, seed=seed)
    mean = float(returns.mean())
    std = float(returns.std(unbiased=False))
    if as_json:
        click.echo(json.dumps({"mean_return": mean, "std_return": std, "episodes": episodes}))
    else:
        console().print(f"{cfg.env}: mean return {mean:.2f} +- {std:.2f} over {episodes} episodes "
                        f"({'stochastic' if stochastic else 'greedy'})")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option("--env", "env_name", default="cartpole", show_default=True,
              help="Environment (ignored with a checkpoint: its own env is used).")
@click.option("--precision", "precisions", default="fp32,bf16,fp16", show_default=True,
              help="Comma-separated precisions to compare.")
@click.option("--num-envs", type=int, default=4, show_default=True)
@click.option("--num-steps", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="Take the gradients with the compiled step (one compile per precision).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def grads(checkpoint, env_name, precisions, num_envs, num_steps, seed, compile_, as_json):
    """Gradient statistics per parameter group for one batch, under each precision side by side.

    \b
    Status of a group (first match wins):
      non-finite    a NaN or Inf in its gradient
      not relevant  a head that mattered on no step of the batch
      forced        a head that mattered, but with one valid action each time (log-prob 0)
      dead          real decisions (or not a head) and an all-zero gradient: an alarm
      vanishing, small, healthy, large, very large
                    the norm against the fp32 norm of the same group: below 0.01x, below
                    0.2x, up to 5x, up to 20x, beyond (during training: against the group's
                    running median over recent updates)
      finite        no reference norm (the fp32 column, or the first updates of a run)
    """
    from rich.columns import Columns

    from kernel.checkpoint import CheckpointError
    from kernel.diagnose import grads_by_precision
    from kernel.evaluate import load_policy
    from kernel.precision import parse
    from kernel.telemetry import jsonable

    specs = [p.strip() for p in precisions.split(",") if p.strip()]
    if not specs:
        raise click.BadParameter("give at least one precision", param_hint="--precision")
    for spec in specs:
        try:
            parse(spec)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--precision")
    params = None
    if checkpoint:
        try:
            cfg, params, _ = load_policy(checkpoint)
        except CheckpointError as e:
            raise click.BadParameter(str(e), param_hint="CHECKPOINT")
        cfg = cfg.replace(device="cpu", seed=seed)
    else:
        if env_name not in envs.REGISTRY:
            raise click.UsageError(f"unknown env {env_name!r}; choose from {', '.join(envs.names())}")
        cfg = config_mod.Config.for_env(env_name, seed=seed)
    try:
        cfg = cfg.replace(num_envs=num_envs, num_steps=num_steps, total_steps=num_envs * num_steps,
                          num_minibatches=1)
    except ValueError as e:
        raise usage_error(e)
    report = grads_by_precision(cfg, specs, params, compile=compile_)
    if as_json:
        click.echo(json.dumps(jsonable({name: r["groups"] for name, r in report.items()})))
        return
    tables = [render.grad_table(r["groups"], f"{name}" + (" (step skipped)" if r["skipped"] else ""), r["dtypes"])
              for name, r in report.items()]
    console().print(Columns(tables))


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
def inspect(checkpoint):
    """Show a checkpoint's metadata and tensors (path, shape, dtype, norm)."""
    from kernel import checkpoint as ck

    try:
        sections, meta = ck.load(checkpoint)
    except ck.CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="CHECKPOINT")
    con = console()
    click.echo(checkpoint)
    con.print(render.meta_table(meta))
    con.print(render.tensor_table(ck.flatten_sections(sections)))


def csv_list(text: str, name: str, cast=str, allowed=None) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise click.BadParameter("give at least one value", param_hint=name)
    try:
        values = [cast(x) for x in items]
    except ValueError:
        raise click.BadParameter(f"cannot read {text!r} as a comma-separated list", param_hint=name)
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed)}",
                                 param_hint=name)
    return values


@cli.command()
@click.option("--env", "env_name", default="cartpole", show_default=True)
@click.option("--modes", default="eager,default,max-autotune-no-cudagraphs,reduce-overhead", show_default=True,
              help="Comma-separated torch.compile modes ('eager' = not compiled).")
@click.option("--precisions", default="fp32,bf16,fp16", show_default=True)
@click.option("--minibatch", "sizes", default="128,2048", show_default=True,
              help="Comma-separated minibatch sizes (update) / env counts (rollout).")
@click.option("--targets", default="update,rollout", show_default=True)
@click.option("--iters", type=int, default=50, show_default=True, help="Timed calls per cell.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls after the first.")
@click.option("--threads", type=int, default=None, help="torch intra-op threads. [default: torch's choice]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full record (cells, torch version, device, threads, config) here.")
def bench(env_name, modes, precisions, sizes, targets, iters, warmup, threads, device, json_path):
    """Time the PPO update step and the acting step across compile modes, precisions and sizes."""
    from kernel.bench import MODES, TARGETS, run_bench
    from kernel.precision import parse

    set_threads(threads)
    modes = csv_list(modes, "--modes", allowed=MODES)
    targets = csv_list(targets, "--targets", allowed=TARGETS)
    sizes = csv_list(sizes, "--minibatch", int)
    if any(n < 1 for n in sizes):
        raise click.BadParameter("sizes must be >= 1", param_hint="--minibatch")
    precisions = csv_list(precisions, "--precisions")
    for p in precisions:
        try:
            parse(p)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--precisions")
    if iters < 1 or warmup < 0:
        raise click.UsageError("--iters must be >= 1 and --warmup >= 0")
    if env_name not in envs.REGISTRY:
        raise click.UsageError(f"unknown env {env_name!r}; choose from {', '.join(envs.names())}")
    check_device(device)
    if json_path and Path(json_path).exists():
        raise click.UsageError(f"{json_path} already exists; choose another --json path")
    cfg = config_mod.Config.for_env(env_name, device=device)
    con = console()
    total = len(modes) * len(targets) * len(sizes) * len(precisions)
    progress = render.make_progress("bench", "cells")
    task = progress.add_task("bench", total=total)

    def write(record):
        if json_path:  # rewritten after every cell: a stopped run keeps what it measured
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(record, indent=2) + "\n")

    def on_cell(cell, partial):
        progress.advance(task)
        write(partial)

    with Live(progress, console=con, refresh_per_second=4):
        record = run_bench(cfg, modes, precisions, sizes, targets, warmup, iters, on_cell=on_cell)
    con.print(render.bench_table(record))
    write(record)
    if json_path:
        click.echo(f"wrote {json_path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="PNG to write. [default: <first run folder>/curves.png]")
def plot(run_dirs, out_path):
    """Draw a run's curves into one PNG: mean return against env steps, loss terms, and per-group
    gradient norms with non-finite, dead and forced updates marked. Several run folders share the
    figure (e.g. fp32 vs bf16). Needs the [plot] extra."""
    from kernel import curves
    from kernel.config import read_json_object

    out_path = Path(out_path) if out_path else Path(run_dirs[0]) / "curves.png"
    if out_path.suffix.lower() != ".png":
        raise click.BadParameter(f"must end in .png, got {out_path.name}", param_hint="--out")
    solved = set()
    for run_dir in run_dirs:
        try:
            curves.read_telemetry(run_dir)
            config_file = Path(run_dir) / "config.json"
            env = read_json_object(config_file).get("env", "") if config_file.exists() else ""
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e).splitlines()[0], param_hint="RUN_DIRS")
        solved.add(getattr(envs.REGISTRY.get(env), "solved_return", None))
    try:
        curves.plot_runs(list(run_dirs), out_path, solved.pop() if len(solved) == 1 else None)
    except curves.MissingExtra as e:
        raise click.UsageError(str(e))
    click.echo(f"wrote {out_path}")


@cli.command("envs")
def list_envs():
    """List the available environments."""
    console().print(render.envs_table(envs.REGISTRY))


def main():
    # torch's C++ build helper warns about a missing CUDA runtime on every CPU compile; that is
    # expected here and only noise for users.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    cli(prog_name="fkernel")


if __name__ == "__main__":
    main()
