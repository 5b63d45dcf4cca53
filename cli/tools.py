"""``fkernel`` tools beside training: gradient diagnostics, checkpoint inspection, benchmarks, plots."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.live import Live

import envs
from cli import common, render
from kernel.config import Config


def register(cli: click.Group) -> None:
    for command in (grads, inspect, bench, plot):
        cli.add_command(command)


@click.command()
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
    from kernel.telemetry import jsonable

    specs = common.precisions(precisions, "--precision")
    params = None
    if checkpoint:
        try:
            cfg, params, _ = load_policy(checkpoint)
        except CheckpointError as e:
            raise click.BadParameter(str(e), param_hint="CHECKPOINT")
        cfg = cfg.replace(device="cpu", seed=seed)
    else:
        cfg = Config.for_env(common.known_env(env_name), seed=seed)
    try:
        cfg = cfg.replace(num_envs=num_envs, num_steps=num_steps, total_steps=num_envs * num_steps,
                          num_minibatches=1)
    except ValueError as e:
        raise common.usage_error(e)
    report = grads_by_precision(cfg, specs, params, compile=compile_)
    if as_json:
        click.echo(json.dumps(jsonable({name: r["groups"] for name, r in report.items()})))
        return
    tables = [render.grad_table(r["groups"], f"{name}" + (" (step skipped)" if r["skipped"] else ""), r["dtypes"])
              for name, r in report.items()]
    common.console().print(Columns(tables))


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
def inspect(checkpoint):
    """Show a checkpoint's metadata and tensors (path, shape, dtype, norm)."""
    from kernel import checkpoint as ck

    try:
        sections, meta = ck.load(checkpoint)
    except ck.CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="CHECKPOINT")
    con = common.console()
    click.echo(checkpoint)
    con.print(render.meta_table(meta))
    con.print(render.tensor_table(ck.flatten_sections(sections)))


@click.command()
@click.option("--env", "env_name", default="cartpole", show_default=True)
@click.option("--modes", default="eager,default,max-autotune-no-cudagraphs,reduce-overhead", show_default=True,
              help="Comma-separated torch.compile modes ('eager' = not compiled).")
@click.option("--precisions", default="fp32,bf16,fp16", show_default=True)
@click.option("--minibatch", "sizes", default="128,2048", show_default=True,
              help="Comma-separated minibatch sizes (update) / env counts (rollout).")
@click.option("--targets", default="update,rollout", show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Timed calls per cell.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed calls after the first.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads. [default: torch's choice]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the full record (cells, torch version, device, threads, config) here.")
def bench(env_name, modes, precisions, sizes, targets, iters, warmup, threads, device, json_path):
    """Time the PPO update step and the acting step across compile modes, precisions and sizes."""
    from kernel.bench import MODES, TARGETS, run_bench

    common.set_threads(threads)
    modes = common.csv_list(modes, "--modes", allowed=MODES)
    targets = common.csv_list(targets, "--targets", allowed=TARGETS)
    sizes = common.csv_list(sizes, "--minibatch", int)
    if any(n < 1 for n in sizes):
        raise click.BadParameter("sizes must be >= 1", param_hint="--minibatch")
    precisions = common.precisions(precisions, "--precisions")
    common.check_device(device)
    if json_path and Path(json_path).exists():
        raise click.UsageError(f"{json_path} already exists; choose another --json path")
    cfg = Config.for_env(common.known_env(env_name), device=device)
    con = common.console()
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


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="PNG to write. [default: <first run folder>/curves.png]")
def plot(run_dirs, out_path):
    """Draw a run's curves into one PNG: mean return against env steps, loss terms, and per-group
    gradient norms with non-finite, dead and forced updates marked. Several run folders share the
    figure (e.g. fp32 vs bf16); a group's folder (--seeds/--sweep) is drawn as the mean of its
    runs with the band from lowest to highest return. Needs the [plot] extra."""
    from kernel import curves
    from kernel.config import read_json_object

    out_path = Path(out_path) if out_path else Path(run_dirs[0]) / "curves.png"
    if out_path.suffix.lower() != ".png":
        raise click.BadParameter(f"must end in .png, got {out_path.name}", param_hint="--out")
    solved = set()
    for run_dir in run_dirs:
        try:
            curves.read_runs(run_dir)
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
