"""``--compile auto``: compile only where the expected saving over the run exceeds the expected
compile cost.

The estimate uses
- the run's length (updates left),
- the eager cost of one iteration of this very config, measured on this machine just before
  deciding (two throwaway iterations: an iteration is pure, so the state is untouched),
- the compiled cost of one iteration: what an earlier compiled run of the same graphs measured
  here, else the eager cost divided by the speedup ``benchmarks/compile_auto.py`` measured,
- the compile cost: warm if an earlier run compiled the same graphs into the same inductor cache
  (a record kept next to that cache, so wiping the cache forgets it), cold otherwise; seconds
  from that record or, failing one, from the same benchmark.

Every number that enters is printed in the one line that explains the choice.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import torch

# Measured by `python -m benchmarks.fused --only speed --only compile`
# (benchmarks/results/fused_speed_compile.json): default configs, one thread, torch 2.14.1, 2-core
# CPU. Seconds per steady iteration of each path, and (cold, warm) seconds of the first compiled
# iteration.
MEASURED = {
    "cartpole": {"eager_s": 0.0776, "unfused_s": 0.00808, "fused_s": 0.00653,
                 "unfused_compile_s": (35.1, 4.3), "fused_compile_s": (40.1, 7.5)},
    "seedbed": {"eager_s": 0.3836, "unfused_s": 0.0843, "fused_s": 0.0787,
                "unfused_compile_s": (95.1, 6.3), "fused_compile_s": (93.2, 11.4)},
}
# An env the benchmark does not cover: seedbed's figures (the slower compile) stand in.
FALLBACK = MEASURED["seedbed"]
# Graph-shaping keys are everything but these (values that enter compiled steps as tensors may
# still be in the signature: that only makes the estimate pessimistic).
NOT_IN_GRAPHS = ("total_steps", "seed", "compile", "lr", "ent_coef", "vf_coef", "clip_coef")


class Choice(NamedTuple):
    compile: bool
    reason: str  # one line


def signature(config, fused: bool) -> str:
    """What identifies a config's compiled graphs: its graph-shaping keys, the torch version and
    whether the iteration is fused."""
    keys = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_GRAPHS}
    text = json.dumps([keys, torch.__version__, fused], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def records_dir() -> Path:
    """Next to inductor's cache (``TORCHINDUCTOR_CACHE_DIR`` or torch's default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        root = cache_dir()
    except ImportError:  # older layouts: the documented variable, else torch's default place
        root = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'user')}"
    return Path(root) / "fkernel-auto"


def read_record(sig: str) -> dict | None:
    try:
        return json.loads((records_dir() / f"{sig}.json").read_text())
    except (OSError, ValueError):
        return None


def write_record(sig: str, compile_s: float, iteration_s: float) -> None:
    """After a compiled run: its compile and per-iteration seconds (a compile with a record
    already there was warm). Best effort: an unwritable cache only loses the hint."""
    old = read_record(sig) or {}
    record = dict(old, iteration_s=iteration_s)
    record["warm_s" if old else "cold_s"] = compile_s
    try:
        records_dir().mkdir(parents=True, exist_ok=True)
        (records_dir() / f"{sig}.json").write_text(json.dumps(record))
    except OSError:
        pass


def fuse_break_even(env: str) -> int | None:
    """Updates from which the fused iteration's saving per iteration outweighs its longer warm
    compile on CPU (None: the benchmark did not measure ``env``)."""
    measured = MEASURED.get(env)
    if measured is None:
        return None
    extra = measured["fused_compile_s"][1] - measured["unfused_compile_s"][1]
    saving = measured["unfused_s"] - measured["fused_s"]
    return max(0, round(extra / saving)) if saving > 0 else None


def eager_iteration_seconds(iteration, state, repeats: int = 2) -> float:
    """Seconds of one eager iteration (the last of ``repeats``; the first pays one-time costs)."""
    seconds = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        _, metrics = iteration(state)
        float(metrics["loss"])  # wait for the device
        seconds = time.perf_counter() - start
    return seconds


def choose(config, updates_left: int, eager_s: float, fused: bool) -> Choice:
    """Compile iff ``updates_left`` x (eager - compiled seconds per iteration) > compile seconds."""
    measured = MEASURED.get(config.env, FALLBACK)
    path = "fused" if fused else "unfused"
    speedup = measured["eager_s"] / measured[f"{path}_s"]
    cold_s, warm_s = measured[f"{path}_compile_s"]
    record = read_record(signature(config, fused))
    if record and "iteration_s" in record:
        compiled_s, compiled_from = record["iteration_s"], "measured by an earlier run"
    else:
        compiled_s, compiled_from = eager_s / speedup, f"eager / {speedup:.1f}"
    if record:
        compile_s = record.get("warm_s", warm_s)
        cache = "warm: compiled into this cache before"
    else:
        compile_s, cache = cold_s, "cold: not compiled into this cache before"
    saving = updates_left * (eager_s - compiled_s)
    on = saving > compile_s
    verdict = "on" if on else "off"
    relation = ">" if on else "<="
    return Choice(on, f"compile auto: {verdict}; {updates_left} updates x ({eager_s * 1e3:.1f} ms eager - "
                      f"{compiled_s * 1e3:.1f} ms compiled [{compiled_from}]) = {saving:.0f} s saved {relation} "
                      f"{compile_s:.0f} s compile ({cache})")
