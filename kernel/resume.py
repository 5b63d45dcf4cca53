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
from kernel.state import Progress, TrainState
from kernel.tree import as_dicts, fill, flatten_with_paths, tree_map

CHECKPOINT_DIR = "checkpoints"
NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")
# Sections whose shapes legitimately vary between checkpoints of the same config.
VARIABLE = ("stats/",)
# Differences are listed params first: they explain the optimizer-state ones that mirror them.
SECTION_ORDER = ("params", "carry", "loss_scale", "rng", "step", "stats", "opt_state")


def state_sections(state: TrainState, progress: Progress | None = None) -> dict:
    sections = as_dicts(state)
    sections["stats"] = {"returns_window": torch.tensor((progress or Progress()).returns, dtype=torch.float32)}
    return sections


def state_meta(config: Config, progress: Progress) -> dict:
    return {"config": config.to_dict(), "env": config.env, "update": progress.update,
            "env_steps": progress.env_steps, "first_solved": progress.first_solved}


def save_state(path, config: Config, state: TrainState, progress: Progress) -> Path:
    return checkpoint.save(path, state_sections(state, progress), state_meta(config, progress))


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


def restore_state(path, run, fresh_state: TrainState, loaded: tuple | None = None) -> tuple[TrainState, Progress]:
    """Load ``path`` into a state shaped like ``fresh_state`` (built from ``run.config``) and its
    progress record; ``loaded`` is ``checkpoint.load(path)``'s result when the caller already has it."""
    sections, meta = loaded or checkpoint.load(path)
    if isinstance(sections.get("rng"), dict):  # the old layout kept a torch.Generator's state there
        raise CheckpointError(f"{path} was saved by an older fkernel whose random state cannot be resumed "
                              "(its params still work with `fkernel eval`)")
    check_matches(state_sections(fresh_state), sections, path)
    flat = flatten_with_paths(as_dicts({k: v for k, v in sections.items() if k != "stats"}))
    state = fill(fresh_state, flat)
    # The key stays on the CPU; everything else goes to the run's device.
    state = tree_map(lambda x: x.to(run.config.device), state._replace(rng=None))._replace(rng=state.rng)
    progress = Progress(int(meta["update"]), int(meta["env_steps"]),
                        tuple(sections["stats"]["returns_window"].tolist()), meta.get("first_solved"))
    if int(state.step) != progress.update:
        raise CheckpointError(f"{path} is inconsistent: its state is at update {int(state.step)}, "
                              f"its metadata at {progress.update}")
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
    """Writes ``checkpoints/ckpt-<update>.safetensors`` every ``every`` updates, keeps the last ``keep``."""

    def __init__(self, run_dir, every: int, keep: int):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every and keep must be >= 1, got every={every}, keep={keep}")
        self.run_dir, self.every, self.keep = Path(run_dir), every, keep
        self.last: Path | None = latest_checkpoint(run_dir)

    def maybe_save(self, config: Config, state: TrainState, progress: Progress) -> Path | None:
        return None if progress.update % self.every else self.save(config, state, progress)

    def save(self, config: Config, state: TrainState, progress: Progress) -> Path:
        self.last = save_state(checkpoint_path(self.run_dir, progress.update), config, state, progress)
        for old in list_checkpoints(self.run_dir)[: -self.keep]:
            old.unlink(missing_ok=True)
        return self.last
