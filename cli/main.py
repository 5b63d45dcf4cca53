"""``fkernel`` command line: parses, calls the kernel, renders. No training logic lives here."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live

import envs
from cli import render
from kernel import config as config_mod


def console() -> Console:
    return Console(stderr=False)


def usage_error(e: Exception) -> click.UsageError:
    return click.UsageError(str(e).splitlines()[0])


def resolve_config(config_json, overrides: dict) -> config_mod.Config:
    """Defaults, then the JSON file, then explicit flags (last wins)."""
    try:
        base = config_mod.from_json_file(config_json) if config_json else config_mod.Config()
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = config_mod.from_dict(given, base)
    except ValueError as e:
        raise usage_error(e)
    if cfg.env not in envs.REGISTRY:
        raise click.UsageError(f"unknown env {cfg.env!r}; choose from {', '.join(envs.names())}")
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


def default_out(cfg) -> Path:
    return Path("runs") / f"{cfg.env}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """fkernel: functional, compiled PPO on PyTorch."""


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
@click.option("--config-json", type=click.Path(dir_okay=False), default=None,
              help="JSON object of config keys; explicit flags override it.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder for the trained params. [default: runs/<env>-seed<seed>-<time>]")
@click.option("--grad-table-every", type=int, default=0, show_default=True,
              help="Print the per-group gradient table every N updates (0: never).")
@click.option("--telemetry-dir", type=click.Path(file_okay=False), default=None,
              help="Write one JSON line per update (losses, KL, loss scale, skipped steps, grad stats).")
def train(env_name, num_envs, num_steps, total_steps, seed, device, compile_, precision, config_json, out,
          grad_table_every, telemetry_dir):
    """Train a PPO agent; defaults are PureJaxRL's CartPole configuration."""
    cfg = resolve_config(config_json, dict(env=env_name, num_envs=num_envs, num_steps=num_steps,
                                           total_steps=total_steps, seed=seed, device=device, compile=compile_,
                                           precision=precision))
    if grad_table_every < 0:
        raise click.BadParameter(f"must be >= 0, got {grad_table_every}", param_hint="--grad-table-every")
    out = Path(out) if out else default_out(cfg)
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"output folder {out} already holds files; choose another --out")
    telemetry_path = Path(telemetry_dir) / "telemetry.jsonl" if telemetry_dir else None
    if telemetry_path is not None and telemetry_path.exists():
        raise click.UsageError(f"{telemetry_path} already exists; choose another --telemetry-dir")

    from kernel import telemetry
    from kernel import train as T
    from kernel.policy import group_dtypes
    from kernel.precision import parse

    con = console()
    con.print(f"[bold]fkernel train[/] env={cfg.env} envs={cfg.num_envs}x{cfg.num_steps} "
              f"updates={cfg.num_updates} seed={cfg.seed} device={cfg.device} compile={cfg.compile} "
              f"precision={cfg.precision}")
    writer = telemetry.JsonlWriter(telemetry_path) if telemetry_path else None
    progress = render.make_progress()
    task = progress.add_task("train", total=cfg.num_updates)
    run = T.build(cfg)
    state = T.init_state(run)
    if cfg.compile:
        con.print("compiling the rollout and update steps (first call; cached afterwards)...")
    with Live(render.live_view(progress), console=con, refresh_per_second=4, transient=False) as live:

        def on_update(log):
            progress.update(task, completed=log.update)
            live.update(render.live_view(progress, log))
            groups = telemetry.group_table(log.metrics)
            if writer is not None:
                scalars = {k: v for k, v in log.metrics.items() if not k.startswith("grad/")}
                writer.write({"update": log.update, "env_steps": log.env_steps, "time_s": log.elapsed_s,
                              "mean_return": log.mean_return, **scalars, "grads": groups})
            if grad_table_every and log.update % grad_table_every == 0:
                dtypes = group_dtypes(groups, parse(cfg.precision))
                live.console.print(render.grad_table(groups, f"gradients, update {log.update}", dtypes))

        try:
            state, summary = T.train(cfg, on_update=on_update, state=state, run=run)
        finally:
            if writer is not None:
                writer.close()
    out.mkdir(parents=True, exist_ok=True)
    path = T.save_checkpoint(out / "params.safetensors", cfg, state)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    con.print()
    con.print(render.summary_table(summary))
    click.echo(f"trained params: {path}")  # plain echo: never wrapped or cut, so scripts can grep it


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
    """Gradient statistics per parameter group for one batch, under each precision side by side."""
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
        try:
            cfg = config_mod.from_dict({"env": env_name, "seed": seed})
        except ValueError as e:
            raise usage_error(e)
        if cfg.env not in envs.REGISTRY:
            raise click.UsageError(f"unknown env {cfg.env!r}; choose from {', '.join(envs.names())}")
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
