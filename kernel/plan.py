"""The plan: whether a build compiles, and whether it fuses the iteration into one graph, decided
in one place from the config, the device, the torch version and what this machine recorded.

Fusing (``fuse="auto"``): never for a group, a data-parallel rank, an env stepping in Python or an
eager run; always on CUDA; on CPU where this machine's records of both paths say it pays.
Compiling (``--compile auto``): the run's own eager iteration against the seconds an earlier
compile of the same graphs recorded here, or with no record, compile unless the whole run would
take under :data:`EAGER_RUN_LIMIT_S` eagerly. Records live next to inductor's cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import torch

from kernel.group import SWEEPABLE
from kernel.hot import cpp_wrapper_compiles_scan

EAGER_RUN_LIMIT_S = 60.0
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
    """Next to inductor's cache (``TORCHINDUCTOR_CACHE_DIR`` or torch's default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        root = cache_dir()
    except ImportError:  # older layouts: the documented variable, else torch's default place
        root = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'user')}"
    return Path(root) / "fkernel-plan"


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


def eager_iteration_seconds(iteration, state, repeats: int = 3) -> float:
    """Seconds of one eager iteration once start-up work has settled: the fastest of ``repeats``
    after one untimed iteration (which pays one-time costs: allocator growth, lazy imports)."""
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        _, metrics = iteration(state)
        float(metrics["loss"].float().mean())  # wait for the device
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def auto_compile(config, env, updates_left: int, eager_s, fused: bool) -> tuple[bool, str]:
    """``--compile auto``: compile iff ``updates_left`` x (eager - compiled seconds per iteration)
    beats the compile seconds this machine recorded; with no record, iff the run would take at
    least :data:`EAGER_RUN_LIMIT_S` eagerly. ``eager_s``: a function that measures the eager
    iteration, called only if it is needed. Returns the choice and the line that explains it."""
    if getattr(env, "host_state", False):  # stepping it to time an iteration would move its episodes
        return True, (f"compile auto: on ({config.env} steps on the host; the policy step and the update compile "
                      "without timing an eager iteration first)")
    if not getattr(env, "compilable", True):
        return False, (f"compile auto: off ({config.env} steps in Python, so only the update would compile, a small "
                       "share of each iteration)")
    record = read_record(config.replace(compile=True), fused)
    eager_s = eager_s()
    eager_total = updates_left * eager_s
    if record is None:
        on = eager_total >= EAGER_RUN_LIMIT_S
        return on, (f"compile auto: {'on' if on else 'off'}; no compile of this config recorded on this machine, so "
                    f"the rule is: compile unless the run takes under {EAGER_RUN_LIMIT_S:.0f} s eagerly "
                    f"({updates_left} updates x {eager_s * 1e3:.1f} ms = {eager_total:.0f} s)")
    compile_s = compile_seconds(record)
    saving = updates_left * (eager_s - record["iteration_s"])
    on = saving > compile_s
    return on, (f"compile auto: {'on' if on else 'off'}; {updates_left} updates x ({eager_s * 1e3:.1f} ms eager - "
                f"{record['iteration_s'] * 1e3:.1f} ms compiled) = {saving:.0f} s saved {'>' if on else '<='} "
                f"{compile_s:.0f} s compile (recorded on this machine)")
