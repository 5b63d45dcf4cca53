"""The plan: whether a build compiles, and whether it fuses the iteration into one graph, decided
in one place from the config, the device, the torch version and what this machine recorded.

Fusing (``fuse="auto"``): never for a group, a data-parallel rank, an env stepping in Python or an
eager run; always on CUDA; on CPU where this machine's records of both paths say it pays.
Records of this machine's compile and compiled-iteration seconds (written after runs compiled
from their first update) live next to inductor's cache. Whether to compile is the config's
(``--compile auto`` starts eagerly and switches once compiled: :mod:`kernel.tiers`).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import torch

from kernel.group import SWEEPABLE
from kernel.hot import cpp_wrapper_compiles_scan

# Keys that never shape a graph: values that enter the compiled steps as tensors, and the run's
# length, seed and plan.
# log_std_init sets initial values only, not a graph
NOT_IN_GRAPHS = (*SWEEPABLE, "total_steps", "seed", "compile", "fuse", "device", "log_std_init",
                 "compile_from_update")


class Plan(NamedTuple):
    compile: bool
    fuse: bool
    why: str  # why the iteration is fused or not, one phrase


def fkernel_version() -> str:
    try:
        return metadata.version("fkernel")
    except metadata.PackageNotFoundError:
        return "unknown"


def signature(config, fused: bool) -> str:
    """What identifies a config's compiled graphs on this machine: the keys that shape them, fused
    or not, the torch and fkernel versions, the device type and the thread count."""
    keys = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_GRAPHS}
    text = json.dumps([keys, fused, torch.__version__, fkernel_version(), torch.device(config.device).type,
                       torch.get_num_threads()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def records_dir() -> Path:
    """Next to inductor's cache: ``TORCHINDUCTOR_CACHE_DIR``, else ``<tmp>/torchinductor_<user>``
    (inductor's rule, written out here: importing inductor to ask costs seconds before a run's
    first update)."""
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if root is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        root = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return Path(os.path.abspath(root)) / "fkernel-plan"


def read_record(config, fused: bool) -> dict | None:
    try:
        return json.loads((records_dir() / f"{signature(config, fused)}.json").read_text())
    except (OSError, ValueError):
        return None


def write_record(config, fused: bool, compile_s: float, iteration_s: float) -> None:
    """After a compiled run: its compile and per-iteration seconds (a compile with a record
    already there was warm). Best effort: an unwritable cache only loses the hint."""
    old = read_record(config, fused) or {}
    record = dict(old, iteration_s=iteration_s)
    record["warm_s" if old else "cold_s"] = compile_s
    try:
        records_dir().mkdir(parents=True, exist_ok=True)
        (records_dir() / f"{signature(config, fused)}.json").write_text(json.dumps(record))
    except OSError:
        pass


def helper_mark(config, fused: bool, runs: int | None, ranks: int = 1) -> Path:
    """Where a compile helper (:mod:`kernel.precompile`) notes that this config's graphs (for
    ``runs`` runs of a group, None for one run; for a rank of ``ranks``) are in this cache."""
    return records_dir() / f"helped-{signature(config, fused)}-{runs or 1}-{ranks}.json"


def mark_helped(config, fused: bool, runs: int | None, ranks: int, seconds: float) -> None:
    try:
        records_dir().mkdir(parents=True, exist_ok=True)
        helper_mark(config, fused, runs, ranks).write_text(json.dumps({"helper_s": seconds}))
    except OSError:  # an unwritable cache only loses the hint
        pass


def compile_seconds(record: dict) -> float:
    return record.get("warm_s", record.get("cold_s", float("inf")))


def fuse_choice(config, env, distributed: bool = False, group: bool = False, updates_left: int | None = None
                ) -> tuple[bool, str]:
    """Whether ``config`` runs fused, and why (one phrase). ``fuse="on"`` where fusing is
    impossible raises ``ValueError``."""
    why_not = ("a group of runs trains unfused" if group else
               "data-parallel ranks all-reduce between minibatch steps" if distributed else
               f"{config.env} steps in Python (not compilable)" if not getattr(env, "compilable", True) else None)
    if config.fuse == "on":
        if why_not:
            raise ValueError(f"fuse='on' is not possible here: {why_not}")
        return True, "asked for"
    if config.fuse == "off":
        return False, "asked for"
    if why_not:
        return False, why_not
    if not config.compile:
        return False, "not compiled: eager runs take the unfused path"
    if torch.device(config.device).type == "cpu" and not cpp_wrapper_compiles_scan():
        # without the C++ wrapper Python runs the scans' loops, slower than the unfused path
        return False, f"torch {torch.__version__} cannot build it with the C++ wrapper, and without it fusing is slower"
    if torch.device(config.device).type != "cpu":
        return True, "one CUDA graph per iteration"
    fused, unfused = read_record(config, True), read_record(config, False)
    if not fused or not unfused:
        return False, ("on CPU fusing pays only on long runs; auto fuses once this machine has compiled both paths "
                       "of this config (--fuse asks for it)")
    updates = config.num_updates if updates_left is None else updates_left
    saving = updates * (unfused["iteration_s"] - fused["iteration_s"])
    extra = compile_seconds(fused) - compile_seconds(unfused)
    verdict = saving > extra
    ms = unfused["iteration_s"] * 1e3, fused["iteration_s"] * 1e3
    return verdict, (f"{updates} updates x ({ms[0]:.1f} - {ms[1]:.1f} ms) = {saving:.0f} s "
                     f"{'>' if verdict else '<='} {extra:.0f} s more compile (records of this machine)")


def decide(config, env, distributed: bool = False, group: bool = False, updates_left: int | None = None) -> Plan:
    fuse, why = fuse_choice(config, env, distributed, group, updates_left)
    return Plan(bool(config.compile), fuse, why)
