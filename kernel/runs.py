"""A training run on disk: the run folder, starting or resuming, and everything written into it.

A run folder holds ``config.json``, ``telemetry.jsonl`` (one JSON line per update), periodic
checkpoints under ``checkpoints/``, and at the end ``params.safetensors`` (the whole final state)
and ``summary.json``. :func:`prepare` checks everything that can be checked before any file is
written (a bad request raises :class:`RunError` or ``CheckpointError`` and touches nothing);
:func:`execute` trains and writes. ``fkernel train`` is these two calls plus rendering, so the
Python API and the CLI produce the same folder::

    from kernel.runs import prepare, execute
    finished = execute(prepare(Config(total_steps=100_000), out="runs/cartpole"))
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import envs
from kernel import checkpoint, curves, telemetry
from kernel import config as config_mod
from kernel.config import Config
from kernel.ppo import learning_rate_schedule
from kernel.resume import (
    CHECKPOINT_DIR,
    Checkpointer,
    checkpoint_path,
    latest_checkpoint,
    read_config,
    restore_state,
    save_state,
)
from kernel.state import Progress, TrainState
from kernel.train import NonFiniteRun, Trainer, UpdateLog, make_train

# What may differ from the checkpoint's config when a run is resumed.
OVERRIDABLE_ON_RESUME = ("total_steps", "compile", "device")


class RunError(ValueError):
    """A run cannot start as asked; the message says why in one line."""


class Options(NamedTuple):
    checkpoint_every: int = 100  # updates between checkpoints; 0: only the final one
    keep: int = 3  # periodic checkpoints kept (newest)
    max_bad_steps: int = 100  # consecutive non-finite (skipped) steps that stop the run
    telemetry_dir: str | Path | None = None  # default: the run folder
    tensorboard_dir: str | Path | None = None


class Prepared(NamedTuple):
    config: Config
    out: Path
    trainer: Trainer
    state: TrainState
    progress: Progress
    resumed_from: Path | None
    notes: tuple  # lines worth telling the user before training (e.g. a re-planned schedule)
    options: Options


class Finished(NamedTuple):
    state: TrainState
    progress: Progress
    summary: dict
    params_path: Path


def check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RunError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise RunError(f"device {device!r} is not supported; use cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {device!r} asked for but CUDA is not available here")


def resolve_config(values: dict, config_json=None) -> Config:
    """The env's defaults, then the JSON file's keys, then ``values`` (``None`` entries ignored)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        file_values = config_mod.read_json_object(config_json) if config_json else {}
        env_name = given.get("env", file_values.get("env", "cartpole"))
        if env_name not in envs.REGISTRY:
            raise RunError(f"unknown env {env_name!r}; choose from {', '.join(envs.names())}")
        cfg = config_mod.from_dict(given, config_mod.from_dict(file_values, Config.for_env(env_name)))
    except RunError:
        raise
    except ValueError as e:
        raise RunError(str(e).splitlines()[0]) from None
    check_device(cfg.device)
    return cfg


def default_run_dir(config: Config) -> Path:
    return Path("runs") / f"{config.env}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_source(resume: str | Path, out) -> tuple[Path, Path]:
    """The checkpoint ``resume`` names (a file, or "latest" in ``out``) and the run folder to write."""
    if str(resume) == "latest":
        if not out:
            raise RunError("resuming the latest checkpoint needs the run folder to look in")
        path = latest_checkpoint(out)
        if path is None:
            raise RunError(f"no checkpoints in {Path(out) / CHECKPOINT_DIR} to resume from")
    else:
        path = Path(resume)
    if out is None:
        out = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    return path, Path(out)


def resumed_config(saved: Config, asked: dict) -> Config:
    """``saved`` with the keys in ``asked`` changed; only OVERRIDABLE_ON_RESUME may differ."""
    try:
        wanted = config_mod.from_dict(asked, saved)
    except ValueError as e:
        raise RunError(str(e).splitlines()[0]) from None
    conflicts = [f"{k}={getattr(wanted, k)!r} (checkpoint has {getattr(saved, k)!r})"
                 for k in asked if k not in OVERRIDABLE_ON_RESUME and getattr(wanted, k) != getattr(saved, k)]
    if conflicts:
        raise RunError(f"cannot resume with a different config: {', '.join(conflicts)}; only "
                       f"{', '.join(OVERRIDABLE_ON_RESUME)} may change")
    check_device(wanted.device)
    return wanted


def schedule_change(saved: Config, cfg: Config, update: int) -> str | None:
    """What a new ``total_steps`` does to an annealed learning rate on resume, or None.

    The schedule is a function of the config (linear from ``lr`` at update 0 to 0 at the last
    update), so a new total re-plans it from the resume point on: the rate jumps to the value the
    new schedule has there.
    """
    if not cfg.anneal_lr or saved.num_updates == cfg.num_updates:
        return None
    at = torch.tensor(update)
    now, before = float(learning_rate_schedule(cfg)(at)), float(learning_rate_schedule(saved)(at))
    return (f"total steps changed from {saved.total_steps} to {cfg.total_steps}: the learning rate now anneals to 0 "
            f"at update {cfg.num_updates} instead of {saved.num_updates}, so at update {update} it is "
            f"{now:.3g} (the saved schedule had {before:.3g})")


def as_values(config: Config | dict | None) -> dict:
    if config is None:
        return {}
    return config.to_dict() if isinstance(config, Config) else dict(config)


def prepare(config: Config | dict | None = None, out=None, *, resume: str | Path | None = None, config_json=None,
            options: Options | None = None) -> Prepared:
    """Check a run and build it, writing nothing.

    ``config``: a :class:`Config`, or a dict of config keys applied over the env's defaults and
    ``config_json``. With ``resume`` (a checkpoint file, or "latest" in ``out``), the checkpoint's
    config is the base and ``config``'s keys are changes to it (only OVERRIDABLE_ON_RESUME).
    """
    options = options or Options()
    if options.checkpoint_every < 0 or options.keep < 1 or options.max_bad_steps < 1:
        raise RunError(f"need checkpoint_every >= 0, keep >= 1 and max_bad_steps >= 1, got {options}")
    saved = loaded = None
    if resume:
        ckpt, out = resume_source(resume, out)
        loaded = checkpoint.load(ckpt)
        saved = read_config(loaded[1], ckpt)
        asked = config_mod.read_json_object(config_json) if config_json else {}
        asked.update({k: v for k, v in as_values(config).items() if v is not None})
        if isinstance(config, Config):  # a whole config: only its differences are requests
            asked = {k: v for k, v in asked.items() if v != as_values(saved).get(k)}
        cfg = resumed_config(saved, asked)
    else:
        ckpt = None
        cfg = config if isinstance(config, Config) else resolve_config(as_values(config), config_json)
        check_device(cfg.device)
        out = Path(out) if out else default_run_dir(cfg)
        if out.exists() and any(out.iterdir()):
            raise RunError(f"output folder {out} already holds files; choose another one or resume")
    telemetry_path = Path(options.telemetry_dir or out) / curves.TELEMETRY
    if telemetry_path.exists() and not resume:
        raise RunError(f"{telemetry_path} already exists; choose another telemetry folder")
    if options.tensorboard_dir:
        try:
            curves.require("tensorboard", "tensorboard")
        except curves.MissingExtra as e:
            raise RunError(str(e)) from None
    trainer = make_train(cfg)
    state, progress = trainer.init(), Progress()
    notes = ()
    if ckpt is not None:
        state, progress = restore_state(ckpt, trainer.run, state, loaded)
        if progress.update >= cfg.num_updates:
            raise RunError(f"{ckpt} is already at update {progress.update} of {cfg.num_updates}; "
                           "raise total_steps (--total-steps) to train further")
        notes = tuple(n for n in [schedule_change(saved, cfg, progress.update)] if n)
    return Prepared(cfg, Path(out), trainer, state, progress, ckpt, notes, options)


def execute(run: Prepared, on_update: Callable[[UpdateLog], None] | None = None) -> Finished:
    """Train and write the run folder. ``on_update`` gets each update's log, whose ``groups``
    holds the gradient table with every group's status (the same rows telemetry.jsonl gets).

    On :class:`NonFiniteRun` the exception carries ``groups`` too, and the periodic checkpoints
    written so far stay as they are."""
    cfg, out, opts = run.config, run.out, run.options
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    checkpointer = Checkpointer(out, opts.checkpoint_every, opts.keep) if opts.checkpoint_every else None
    writer = telemetry.JsonlWriter(Path(opts.telemetry_dir or out) / curves.TELEMETRY)
    board = curves.TensorboardLog(opts.tensorboard_dir) if opts.tensorboard_dir else None
    history = telemetry.NormHistory()  # each group's recent norms: the reference for its magnitude class

    def table(metrics: dict) -> dict:
        groups = telemetry.group_table(metrics)
        for group, status in history.statuses(groups).items():
            groups[group]["status"] = status
        return groups

    def logged(log: UpdateLog) -> None:
        log = log._replace(groups=table(log.metrics))
        scalars = {k: v for k, v in log.metrics.items() if not k.startswith("grad/")}
        writer.write({"update": log.update, "env_steps": log.env_steps, "time_s": log.elapsed_s,
                      "mean_return": log.mean_return, **scalars, "grads": log.groups})
        if board is not None:
            board.write(log)
        if on_update is not None:
            on_update(log)

    try:
        state, progress, summary = run.trainer.train(run.state, run.progress, on_update=logged,
                                                     checkpointer=checkpointer, max_bad_steps=opts.max_bad_steps)
    except NonFiniteRun as e:
        e.groups = table(e.metrics)
        raise
    finally:
        writer.close()
        if board is not None:
            board.close()
    if checkpointer is not None and checkpointer.last != checkpoint_path(out, progress.update):
        checkpointer.save(cfg, state, progress)  # so resuming "latest" continues from the true end
    params_path = save_state(out / "params.safetensors", cfg, state, progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return Finished(state, progress, summary, params_path)
