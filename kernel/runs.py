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

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import envs
from kernel import checkpoint, curves, plan, telemetry
from kernel import config as config_mod
from kernel.build import build, rank_config
from kernel.config import Config
from kernel.distributed import SINGLE, World
from kernel.group import Group, grid, ranked_settings, run_slice
from kernel.group import validated as validated_group
from kernel.jsonsafe import dumps
from kernel.ppo import hyper_tensors
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
from kernel.train import NonFiniteRun, Trainer, UpdateLog, trainer

# What may differ from the checkpoint's config when a run is resumed.
OVERRIDABLE_ON_RESUME = ("total_steps", "compile", "fuse", "device")


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
    progress: Progress | list  # a list, one per run of this process, for a group
    resumed_from: Path | None
    notes: tuple  # lines worth telling the user before training (e.g. a re-planned schedule)
    options: Options
    group: Group | None = None  # the runs of a group (kernel.group), None for one run


class Finished(NamedTuple):
    state: TrainState
    progress: Progress | list  # a list, one per run, for a group
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
        if isinstance(file_values.get("env_options"), dict) and "env_options" in given:  # flags add to the file's
            given["env_options"] = {**file_values["env_options"], **given["env_options"]}
        if not envs.known(env_name):
            raise RunError(envs.unknown_message(env_name))
        cfg = config_mod.from_dict(given, config_mod.from_dict(file_values, Config.for_env(env_name)))
        envs.check_options(cfg.env, cfg.env_options)
    except RunError:
        raise
    except ValueError as e:
        raise RunError(str(e).splitlines()[0]) from None
    check_device(cfg.device)
    return cfg


def check_splittable(config: Config, processes: int, seeds=None, sweep: dict | None = None) -> None:
    """Raise RunError unless the job splits over ``processes`` ranks: one run's envs, or a
    group's runs."""
    group = run_group(config, seeds, sweep)
    try:
        group.share(0, processes) if group is not None else rank_config(config, World(0, processes))
    except ValueError as e:
        raise RunError(str(e)) from None


def default_run_dir(config: Config, group: Group | None = None) -> Path:
    who = f"seed{config.seed}" if group is None else f"{group.count}runs"
    return Path("runs") / f"{config.env}-{who}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_group(config: Config, seeds, sweep: dict | None) -> Group | None:
    if seeds is None and not sweep:
        return None
    try:
        return validated_group(config, grid(list(seeds) if seeds is not None else [config.seed], sweep))
    except ValueError as e:
        raise RunError(str(e).splitlines()[0]) from None


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
    now, before = float(hyper_tensors(cfg, at)["lr"]), float(hyper_tensors(saved, at)["lr"])
    return (f"total steps changed from {saved.total_steps} to {cfg.total_steps}: the learning rate now anneals to 0 "
            f"at update {cfg.num_updates} instead of {saved.num_updates}, so at update {update} it is "
            f"{now:.3g} (the saved schedule had {before:.3g})")


def as_values(config: Config | dict | None) -> dict:
    if config is None:
        return {}
    return config.to_dict() if isinstance(config, Config) else dict(config)


def prepare(config: Config | dict | None = None, out=None, *, resume: str | Path | None = None, config_json=None,
            options: Options | None = None, seeds=None, sweep: dict | None = None,
            world: World = SINGLE, auto_compile: bool = False) -> Prepared:
    """Check a run and build it, writing nothing. ``config``: a :class:`Config`, or config keys over
    the env's defaults and ``config_json``; with ``resume`` (a checkpoint, or "latest" in ``out``)
    they are changes to the checkpoint's config (only OVERRIDABLE_ON_RESUME). ``seeds``/``sweep``
    make a group (:mod:`kernel.group`). ``world``: this process's data-parallel ranks (rank 0
    checks the folder). ``auto_compile``: compile tiered (``compile_from_update=None``: eager at once,
    compiled once a helper has compiled, :mod:`kernel.tiers`) unless ``config_json`` sets ``compile``,
    or a resumed run's record decides (its reason is the first note)."""
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
        group = Group.from_dict(loaded[1]["runs"]) if "runs" in loaded[1] else None
        asked_group = run_group(cfg, seeds, sweep)
        if asked_group is not None and asked_group != group:
            raise RunError("cannot resume with different seeds or sweep values than the checkpoint's")
    else:
        ckpt = None
        cfg = config if isinstance(config, Config) else resolve_config(as_values(config), config_json)
        check_device(cfg.device)
        group = run_group(cfg, seeds, sweep)
        out = Path(out) if out else default_run_dir(cfg, group)
        if world.is_main and out.exists() and any(out.iterdir()):
            raise RunError(f"output folder {out} already holds files; choose another one or resume")
    telemetry_path = Path(options.telemetry_dir or out) / curves.TELEMETRY
    if world.is_main and telemetry_path.exists() and not resume:
        raise RunError(f"{telemetry_path} already exists; choose another telemetry folder")
    if options.tensorboard_dir:
        try:
            curves.require("tensorboard", "tensorboard")
        except curves.MissingExtra as e:
            raise RunError(str(e)) from None
    auto_note = None
    fixed = config_mod.read_json_object(config_json) if config_json else {}
    # (a resumed run keeps its record)
    if auto_compile and not resume and "compile" not in fixed and "compile_from_update" not in fixed:
        cfg = cfg.replace(compile=True, compile_from_update=None)
        auto_note = ("compile auto: training starts eagerly while a helper process compiles, and switches to the "
                     "compiled code once it is ready (checked against the eager update there)")
    try:  # building reads the env's data (a CIFAR-10 folder, say) and checks the plan: one line each
        train = trainer(build(cfg, world, group))
    except ValueError as e:  # EnvOptionError, a group that does not split over the ranks, fuse='on' where impossible
        raise RunError(str(e).splitlines()[0]) from None
    state = train.init()
    progress = Progress() if group is None else [Progress()] * (group.count // world.size)
    notes = ()
    if ckpt is not None:
        fresh, (state, progress) = state, restore_state(ckpt, train.built, state, loaded)
        if getattr(train.built.env, "host_state", False):  # gymnasium's episodes restarted at init: start there
            kept = {k: state.carry[k] for k in ("norm",) if k in fresh.carry}  # the statistics resume exactly
            state = state._replace(carry=dict(fresh.carry, **kept))
        update = int(state.step)
        if update >= cfg.num_updates:
            raise RunError(f"{ckpt} is already at update {update} of {cfg.num_updates}; "
                           "raise total_steps (--total-steps) to train further")
        notes = tuple(n for n in [schedule_change(saved, cfg, update)] if n)
    if getattr(train.built.env, "host_state", False):  # the episodes live in gymnasium, not in the state
        notes += (f"{cfg.env}: resumed with fresh episodes (a checkpoint cannot hold gymnasium's env state; "
                  "everything else resumes exactly)" if ckpt is not None else
                  f"{cfg.env}: checkpoints hold everything but gymnasium's own env state; a resumed run starts "
                  "fresh episodes",)
    if auto_note:
        notes = (auto_note, *notes)
    return Prepared(cfg, Path(out), train, state, progress, ckpt, notes, options, group)


def execute(run: Prepared, on_update: Callable[[UpdateLog], None] | None = None) -> Finished:
    """Train and write the run folder; ``on_update`` gets each update's log with its gradient table
    (``groups``; one per run for a group). A group also writes ``runs.json`` and one ``run-<r>/``
    folder per run (config, telemetry and, at the end, a one-run params.safetensors and summary);
    its top-level params.safetensors holds the whole group (resumable) and its summary ranks the
    settings. A :class:`NonFiniteRun` carries ``groups`` too; checkpoints written stay as they are."""
    cfg, out, opts, group = run.config, run.out, run.options, run.group
    world = run.trainer.built.world
    main = world.is_main  # other data-parallel ranks train and checkpoint with rank 0, but write nothing
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dumps(cfg.to_dict(), indent=2) + "\n")
        if group is not None:
            (out / "runs.json").write_text(dumps(group.to_dict(), indent=2) + "\n")
    files = run_files(out, opts, cfg, group) if main else []
    checkpointer = Checkpointer(out, opts.checkpoint_every, opts.keep, world) if opts.checkpoint_every else None

    def logged(log: UpdateLog) -> None:  # rank 0 only: a group's log covers every run
        if group is None:
            groups = files[0].write(log)
        else:
            groups = [f.write(log._replace(env_steps=log.env_steps // group.count, sps=log.sps / group.count,
                                           mean_return=m["mean_return"], episodes=0, metrics=m, return_spread=None))
                      for f, m in zip(files, log.metrics)]
        if on_update is not None:
            on_update(log._replace(groups=groups))

    start_update = int(run.state.step)
    first = (lambda metrics: metrics) if group is None else (lambda metrics: metrics[0])
    state, progress, summary = train_writing(run, logged, checkpointer, files, first)
    if (summary.get("switch_check") or {}).get("agreed") is False:  # it stayed eager: so do its last files
        cfg = cfg.replace(compile=False)
    if cfg.compile_from_update is None and summary["switch_update"] is not None:  # the switch it took, recorded
        cfg = cfg.replace(compile_from_update=summary["switch_update"])
    update = progress.update if group is None else progress[0].update
    built = run.trainer.built
    if group is None and built.plan.compile and not world.distributed and update > start_update \
            and summary["switch_update"] is not None and summary["switch_update"] <= start_update:
        # what --fuse auto reads next time: this machine's compile and compiled-iteration seconds (only
        # from a run compiled throughout: one with eager updates would record their time)
        plan.write_record(cfg, built.plan.fuse, summary["compile_s"], summary["run_s"] / (update - start_update))
    if checkpointer is not None and checkpointer.last != checkpoint_path(out, update):
        checkpointer.save(cfg, state, progress, group)  # so resuming "latest" continues from the true end
    params_path = out / "params.safetensors"
    save_state(params_path, cfg, state, progress, group, world)
    if group is not None:
        state, progress = world.concat_tree(state), world.concat_lists(progress)  # every run, on every rank
    if not main:
        return Finished(state, progress, summary, params_path)
    for r, row in enumerate(summary.get("runs", [])):
        save_state(run_dir(out, r) / "params.safetensors", group.config(cfg, r),
                   run_slice(state, r, cfg.num_envs), progress[r])
        (run_dir(out, r) / "summary.json").write_text(dumps(row, indent=2) + "\n")
    if group is not None:
        summary["settings"] = ranked_settings(summary)
    summary["world_size"] = world.size
    (out / "summary.json").write_text(dumps(summary, indent=2) + "\n")
    return Finished(state, progress, summary, params_path)


def run_dir(out: Path, r: int) -> Path:
    return out / f"run-{r}"


def run_files(out: Path, opts: Options, cfg: Config, group: Group | None) -> list:
    """The telemetry (and TensorBoard) files of the run, or of each run of a group (whose folders
    get their one-run config.json here)."""
    if group is None:
        return [RunFiles(Path(opts.telemetry_dir or out) / curves.TELEMETRY, opts.tensorboard_dir)]
    files = []
    for r in range(group.count):
        run_dir(out, r).mkdir(exist_ok=True)
        (run_dir(out, r) / "config.json").write_text(dumps(group.config(cfg, r).to_dict(), indent=2) + "\n")
        folder = Path(opts.telemetry_dir) / f"run-{r}" if opts.telemetry_dir else run_dir(out, r)
        files.append(RunFiles(folder / curves.TELEMETRY,
                              Path(opts.tensorboard_dir) / f"run-{r}" if opts.tensorboard_dir else None))
    return files


class RunFiles:
    """One run's telemetry (and TensorBoard) files, with the gradient-status history they need."""

    def __init__(self, telemetry_path: Path, tensorboard_dir):
        self.writer = telemetry.JsonlWriter(telemetry_path)
        self.board = curves.TensorboardLog(tensorboard_dir) if tensorboard_dir else None
        self.history = telemetry.NormHistory()  # each group's recent norms: the reference for its magnitude class

    def table(self, metrics: dict) -> dict:
        groups = telemetry.group_table(metrics)
        for group, status in self.history.statuses(groups).items():
            groups[group]["status"] = status
        return groups

    def write(self, log) -> dict:
        groups = self.table(log.metrics)
        scalars = {k: v for k, v in log.metrics.items() if not k.startswith("grad/")}
        self.writer.write({"update": log.update, "env_steps": log.env_steps, "time_s": log.elapsed_s,
                           "unix_time": log.unix_time,
                           "mean_return": log.mean_return, **scalars, "grads": groups})
        if self.board is not None:
            self.board.write(log._replace(groups=groups))
        return groups

    def close(self) -> None:
        self.writer.close()
        if self.board is not None:
            self.board.close()


def train_writing(run: Prepared, logged: Callable, checkpointer, files: list, first_run: Callable):
    """Train with ``logged`` writing ``files`` (none on ranks other than 0), closing them however
    training ends; a :class:`NonFiniteRun` leaves with the gradient table of ``first_run(metrics)``."""
    try:
        return run.trainer.train(run.state, run.progress, on_update=logged if files else None,
                                 checkpointer=checkpointer, max_bad_steps=run.options.max_bad_steps)
    except NonFiniteRun as e:
        e.groups = files[0].table(first_run(e.metrics)) if files and e.metrics else {}
        raise
    finally:
        for f in files:
            f.close()
