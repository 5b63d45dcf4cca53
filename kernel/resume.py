"""Saving and restoring a whole training run, so a resumed run continues as if it never stopped.

A run checkpoint holds every piece of the explicit training state: params, optimizer state, loss
scale, the rollout carry (env state, last observation, running episode stats), the generator's
state and the rolling window of episode returns; counters and the config go in the metadata.
Restoring checks every tensor's path, shape and dtype against what the config builds and reports
all differences at once.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from kernel import checkpoint
from kernel.checkpoint import CheckpointError
from kernel.config import Config, from_dict
from kernel.tree import flatten_with_paths, tree_map

CHECKPOINT_DIR = "checkpoints"
NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")
# Sections whose shapes legitimately vary between checkpoints of the same config.
VARIABLE = ("stats/",)
# Differences are listed params first: they explain the optimizer-state ones that mirror them.
SECTION_ORDER = ("params", "carry", "loss_scale", "rng", "stats", "opt_state")


def state_sections(state: dict) -> dict:
    return {
        "params": state["params"],
        "opt_state": state["opt_state"],
        "loss_scale": state["loss_scale"],
        "carry": state["carry"],
        "rng": {"generator": state["generator"].get_state()},
        "stats": {"returns_window": torch.tensor(state.get("returns_window", []), dtype=torch.float32)},
    }


def state_meta(config: Config, state: dict) -> dict:
    return {"config": config.to_dict(), "env": config.env, "update": state["update"],
            "env_steps": state["env_steps"], "first_solved": state.get("first_solved")}


def save_state(path, config: Config, state: dict) -> Path:
    return checkpoint.save(path, state_sections(state), state_meta(config, state))


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


def fill(template, flat: dict, prefix: str = ""):
    """Rebuild ``template``'s structure (empty dicts included) with leaves taken from ``flat``."""
    if isinstance(template, dict):
        return {k: fill(v, flat, f"{prefix}{k}.") for k, v in template.items()}
    return flat[prefix[:-1]]


def restore_state(path, run, fresh_state: dict, loaded: tuple | None = None) -> dict:
    """Load ``path`` into a state shaped like ``fresh_state`` (built from ``run.config``);
    ``loaded`` is ``checkpoint.load(path)``'s result when the caller already has it."""
    sections, meta = loaded or checkpoint.load(path)
    expected = state_sections(fresh_state)
    check_matches(expected, sections, path)
    device = torch.device(run.config.device)
    state = dict(fresh_state)
    for name in ("params", "opt_state", "loss_scale", "carry"):
        state[name] = tree_map(lambda x: x.to(device), fill(fresh_state[name], flatten_with_paths(sections[name])))
    generator = torch.Generator(device="cpu")
    generator.set_state(sections["rng"]["generator"])
    state["generator"] = generator
    state["returns_window"] = sections["stats"]["returns_window"].tolist()
    state["update"] = int(meta["update"])
    state["env_steps"] = int(meta["env_steps"])
    state["first_solved"] = meta.get("first_solved")
    return state


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

    def maybe_save(self, config: Config, state: dict) -> Path | None:
        return None if state["update"] % self.every else self.save(config, state)

    def save(self, config: Config, state: dict) -> Path:
        self.last = save_state(checkpoint_path(self.run_dir, state["update"]), config, state)
        for old in list_checkpoints(self.run_dir)[: -self.keep]:
            old.unlink(missing_ok=True)
        return self.last
