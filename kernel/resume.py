"""Saving and restoring a whole training run, so a resumed run continues as if it never stopped.

A run checkpoint is the training state flattened by path (every field of
:class:`kernel.state.TrainState`: params, optimizer state, loss scale, rollout carry, random key,
update count) plus the host :class:`kernel.state.Progress`: its return window as a tensor, its
counters and the config in the metadata. Restoring checks every tensor's path, shape and dtype
against the state the config builds and reports all differences at once.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from kernel import checkpoint
from kernel.checkpoint import CheckpointError
from kernel.config import Config, from_dict
from kernel.distributed import SINGLE, World
from kernel.group import Group
from kernel.state import Progress, TrainState
from kernel.tree import as_dicts, fill, flatten_with_paths, tree_map

CHECKPOINT_DIR = "checkpoints"
NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")
# Sections whose shapes legitimately vary between checkpoints of the same config.
VARIABLE = ("stats/",)
# Differences are listed params first: they explain the optimizer-state ones that mirror them.
SECTION_ORDER = ("params", "carry", "loss_scale", "rng", "step", "stats", "opt_state")


def window(progress: Progress) -> torch.Tensor:
    return torch.tensor(progress.returns, dtype=torch.float32)


def state_sections(state: TrainState, progress: Progress | list | None = None, group: Group | None = None) -> dict:
    """The checkpoint's tensors; ``progress`` is one record, or (``group``) one per run."""
    sections = as_dicts(state)
    if group is not None:
        sections["stats"] = {"returns_window": {str(r): window(p) for r, p in enumerate(progress)}}
    else:
        sections["stats"] = {"returns_window": window(progress or Progress())}
    return sections


def state_meta(config: Config, progress: Progress | list, runs: Group | None = None) -> dict:
    if runs is None:
        return {"config": config.to_dict(), "env": config.env, "update": progress.update,
                "env_steps": progress.env_steps, "first_solved": progress.first_solved}
    return {"config": config.to_dict(), "env": config.env, "update": progress[0].update,
            "env_steps": sum(p.env_steps for p in progress), "runs": runs.to_dict(),
            "progress": [{"env_steps": p.env_steps, "first_solved": p.first_solved} for p in progress]}


def save_state(path, config: Config, state: TrainState, progress: Progress | list, runs: Group | None = None,
               world: World = SINGLE) -> Path | None:
    """Write the run's whole state to ``path``. Data-parallel ranks all call it: each rank's
    rollout carry (its own envs) is gathered, stacked along a leading rank axis, and rank 0 alone
    writes (the other ranks return None)."""
    if world.distributed and runs is not None:  # a group split over ranks: the file holds all the runs
        state, progress = world.concat_tree(state), world.concat_lists(progress)
    meta = state_meta(config, progress, runs)
    if world.distributed and runs is None:
        state = state._replace(carry=world.gather_tree(state.carry))
        meta["world_size"] = world.size
    if world.distributed and not world.is_main:
        return None
    return checkpoint.save(path, state_sections(state, progress, runs), meta)


def read_config(meta: dict, path) -> Config:
    try:
        return from_dict(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has no usable run config: {e}") from None


def differences(expected: dict, found: dict) -> list[str]:
    """Every way ``found`` (flat path -> tensor) differs from ``expected``, as short phrases."""
    out = []
    for key in expected.keys() - found.keys():
        out.append(f"missing {key}")
    for key in found.keys() - expected.keys():
        out.append(f"unexpected {key}")
    for key in expected.keys() & found.keys():
        if key.startswith(VARIABLE):
            continue
        e, f = expected[key], found[key]
        if tuple(e.shape) != tuple(f.shape):
            out.append(f"shape of {key} is {list(f.shape)}, expected {list(e.shape)}")
        elif e.dtype != f.dtype:
            out.append(f"dtype of {key} is {f.dtype}, expected {e.dtype}")
    def rank(phrase: str):
        key = phrase.split(" is ")[0].split(" of ")[-1].split(" ")[-1]
        section = key.split("/")[0]
        return (SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER), key)

    return sorted(out, key=rank)


def check_matches(expected_sections: dict, sections: dict, path, against: str = "this run's config") -> None:
    diffs = differences(checkpoint.flatten_sections(expected_sections), checkpoint.flatten_sections(sections))
    if diffs:
        raise CheckpointError(f"{path} does not match {against} ({len(diffs)} differences): {'; '.join(diffs)}")


def restore_state(path, built, fresh_state: TrainState, loaded: tuple | None = None):
    """Load ``path`` into a state shaped like ``fresh_state`` (from ``built``, a
    :class:`kernel.build.Built`) and its progress record (a list, one per run of this process, for
    a group); ``loaded`` is ``checkpoint.load(path)``'s result when the caller already has it."""
    sections, meta = loaded or checkpoint.load(path)
    if isinstance(sections.get("rng"), dict):  # the old layout kept a torch.Generator's state there
        raise CheckpointError(f"{path} was saved by an older fkernel whose random state cannot be resumed "
                              "(its params still work with `fkernel eval`)")
    group = built.all_runs
    if (group is None) != ("runs" not in meta):
        raise CheckpointError(f"{path} holds {'a group of runs' if 'runs' in meta else 'one run'}; "
                              f"resume it as {'a group (same seeds and sweep)' if 'runs' in meta else 'one run'}")
    if group is not None and meta["runs"] != group.to_dict():
        raise CheckpointError(f"{path} holds runs {meta['runs']}, not {group.to_dict()}")
    world = built.world
    saved_world = int(meta.get("world_size", 1))
    if group is None and saved_world != world.size:
        raise CheckpointError(f"{path} was saved by {saved_world} data-parallel process(es); resume it with "
                              f"{saved_world}, not {world.size}")
    split_group = group is not None and world.distributed  # the file holds every rank's share of the runs
    if split_group:
        fresh_state = tree_map(lambda x: x.repeat(world.size, *[1] * (x.dim() - 1)) if x.dim() else x, fresh_state)
    elif world.distributed:  # every rank's carry, stacked; this rank takes its own below
        fresh_state = fresh_state._replace(carry=tree_map(lambda x: x.expand(world.size, *x.shape),
                                                          fresh_state.carry))
    fresh_progress = [Progress()] * group.count if group is not None else None
    check_matches(state_sections(fresh_state, fresh_progress, group), sections, path)
    flat = flatten_with_paths(as_dicts({k: v for k, v in sections.items() if k != "stats"}))
    state = fill(fresh_state, flat)
    # The key stays on the CPU; everything else goes to the run's device.
    state = tree_map(lambda x: x.to(built.config.device), state._replace(rng=None))._replace(rng=state.rng)
    if split_group:
        state = world.chunk_tree(state)
    elif world.distributed:
        state = state._replace(carry=world.own(state.carry))
    update = int(meta["update"])
    if group is None:
        progress = Progress(update, int(meta["env_steps"]), tuple(sections["stats"]["returns_window"].tolist()),
                            meta.get("first_solved"))
    else:
        windows = sections["stats"]["returns_window"]
        progress = [Progress(update, int(p["env_steps"]), tuple(windows[str(r)].tolist()), p["first_solved"])
                    for r, p in enumerate(meta["progress"])]
        if split_group:
            n = len(progress) // world.size
            progress = progress[world.rank * n:(world.rank + 1) * n]
    if int(state.step) != update:
        raise CheckpointError(f"{path} is inconsistent: its state is at update {int(state.step)}, "
                              f"its metadata at {update}")
    return state, progress


def checkpoint_path(run_dir, update: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{update:07d}.safetensors"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temp files of a crashed write excluded)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class Checkpointer:
    """Writes ``checkpoints/ckpt-<update>.safetensors`` every ``every`` updates, keeps the last
    ``keep``. Data-parallel ranks all call it (their carries are gathered); rank 0 writes."""

    def __init__(self, run_dir, every: int, keep: int, world: World = SINGLE):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every and keep must be >= 1, got every={every}, keep={keep}")
        self.run_dir, self.every, self.keep, self.world = Path(run_dir), every, keep, world
        self.last: Path | None = latest_checkpoint(run_dir)

    def maybe_save(self, config: Config, state: TrainState, progress: Progress | list, runs: Group | None = None
                   ) -> Path | None:
        update = progress[0].update if runs is not None else progress.update
        return None if update % self.every else self.save(config, state, progress, runs)

    def save(self, config: Config, state: TrainState, progress: Progress | list, runs: Group | None = None) -> Path:
        update = progress[0].update if runs is not None else progress.update
        path = checkpoint_path(self.run_dir, update)
        save_state(path, config, state, progress, runs, self.world)
        self.last = path
        if self.world.is_main:
            for old in list_checkpoints(self.run_dir)[: -self.keep]:
                old.unlink(missing_ok=True)
        return self.last
