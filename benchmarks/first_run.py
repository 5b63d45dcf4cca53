"""A user's first run, as a fresh process: how long until training moves, the longest wait between
two updates, the whole process and the steady speed, on an empty and on a warm compile cache.

    python -m benchmarks.first_run --start eb5b384 --out benchmarks/results/first_run.json

Each run is ``fkernel train ... --threads 1`` in a fresh process with its own run folder. Modes:
``auto`` (the default: eager at once, compiled once a helper process has compiled), ``--compile
on`` (compile first), ``--no-compile``, and the ``--start`` commit's ``--compile on`` and
``--no-compile`` (from a ``git worktree`` of it). Workloads: the default run (CartPole),
seedbed's default and a ``--seeds 0-3`` group. A cold run gets an empty
``TORCHINDUCTOR_CACHE_DIR``; a warm run reuses the one its cold run of the same mode filled.

Update times are taken from outside: the benchmark watches the run's ``telemetry.jsonl`` every
20 ms and stamps each new line, so every commit is measured the same way. The first gap is from
the process's start to its first update. Steady speed: env steps per second over the last quarter
of the updates.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import write_record

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"default": [], "seedbed": ["--env", "seedbed"], "group": ["--seeds", "0-3"]}
MODES = {"auto": [], "on": ["--compile", "on"], "off": ["--no-compile"], "start-on": ["--compile", "on"],
         "start-off": ["--no-compile"]}


def watched_run(command: list, cwd: Path, env: dict, telemetry: Path, limit_s: float) -> dict:
    """Run ``command`` and stamp every telemetry line as it appears; the whole process's seconds."""
    errors = tempfile.TemporaryFile(mode="w+")  # (a pipe could fill and stall the run)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    stamps, seen = [], 0
    while process.poll() is None:
        if time.perf_counter() - start > limit_s:
            process.kill()
            raise RuntimeError(f"{' '.join(command)} ran past {limit_s:.0f} s")
        seen = stamp_new_lines(telemetry, seen, stamps, start)
        time.sleep(0.02)
    whole = time.perf_counter() - start
    stamp_new_lines(telemetry, seen, stamps, start)
    if process.returncode != 0:
        errors.seek(0)
        raise RuntimeError(f"{' '.join(command)} failed: {errors.read()[-2000:]}")
    return {"whole_s": whole, "stamps": stamps}


def stamp_new_lines(telemetry: Path, seen: int, stamps: list, start: float) -> int:
    try:
        lines = [line for line in telemetry.read_text().splitlines() if line.endswith("}")]
    except OSError:
        return seen
    now = time.perf_counter() - start
    for line in lines[seen:]:
        stamps.append((now, json.loads(line)["env_steps"]))
    return len(lines)


def figures(run: dict) -> dict:
    times = [t for t, _ in run["stamps"]]
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    tail = run["stamps"][len(times) * 3 // 4:]
    steady = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0]) if len(tail) > 1 else None
    return {"whole_s": run["whole_s"], "first_update_s": times[0] if times else None,
            "longest_gap_s": max(gaps) if gaps else None,
            "longest_gap_after_first_s": max(gaps[1:]) if gaps[1:] else None, "steady_sps": steady,
            "updates": len(times)}


def group_telemetry(out: Path, workload: str) -> Path:
    return out / ("run-0" if workload == "group" else "") / "telemetry.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", required=True, help="the commit to compare with (its --compile on and --no-compile)")
    p.add_argument("--workloads", default="default,seedbed,group")
    p.add_argument("--modes", default="auto,on,off,start-on,start-off",
                   help="per workload; 'off' and 'start-off' run once (no compile cache)")
    p.add_argument("--only-default", default="start-on,start-off,off",
                   help="modes run for the default workload only (the others are long)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--extra", default="", help="more train flags for every run (a quick try: '--total-steps 5120')")
    p.add_argument("--limit-s", type=float, default=1800.0, help="a run past this is killed and reported")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="first-run-"))
    start_tree = scratch / "start"
    subprocess.run(["git", "worktree", "add", "--detach", str(start_tree), args.start], cwd=ROOT, check=True,
                   capture_output=True)
    only_default = set(args.only_default.split(","))
    rows = []
    try:
        for repeat in range(args.repeats):
            for workload in args.workloads.split(","):
                for mode in args.modes.split(","):
                    if workload != "default" and mode in only_default:
                        continue
                    caches = ["none"] if mode.endswith("off") else ["cold", "warm"]
                    cache = scratch / f"cache-{workload}-{mode}-{repeat}"
                    for state in caches:
                        if state == "cold":
                            shutil.rmtree(cache, ignore_errors=True)
                        cache.mkdir(exist_ok=True)
                        out = scratch / f"run-{workload}-{mode}-{state}-{repeat}"
                        tree = start_tree if mode.startswith("start") else ROOT
                        command = [sys.executable, "-m", "cli.main", "train", *WORKLOADS[workload], *MODES[mode],
                                   *args.extra.split(), "--threads", "1", "--out", str(out)]
                        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=str(tree))
                        run = watched_run(command, tree, env, group_telemetry(out, workload), args.limit_s)
                        row = {"workload": workload, "mode": mode, "cache": state, "repeat": repeat, **figures(run)}
                        summary = json.loads((out / "summary.json").read_text())
                        row.update({k: summary.get(k) for k in ("switch_update", "compile_s", "run_s")})
                        row["tiers"] = summary.get("tiers")
                        rows.append(row)
                        print(json.dumps({k: v for k, v in row.items() if k != "tiers"}), flush=True)
                        shutil.rmtree(out, ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(start_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        write_record(args.out, {"start_commit": args.start, "repeats": args.repeats, "extra": args.extra, "runs": rows,
                                "threads": 1,
                                "ratios": ratios(rows)})


def ratios(rows: list) -> dict:
    """Per workload and cache state, medians over repeats, and the issue's ratios."""
    def median(workload, mode, cache, key):
        values = sorted(r[key] for r in rows if (r["workload"], r["mode"], r["cache"]) == (workload, mode, cache)
                        and r[key] is not None)
        return values[len(values) // 2] if values else None

    out = {}
    for workload in sorted({r["workload"] for r in rows}):
        w = {}
        for cache in ("cold", "warm"):
            auto, on = median(workload, "auto", cache, "whole_s"), median(workload, "on", cache, "whole_s")
            start_on = median(workload, "start-on", cache, "whole_s")
            w[cache] = {"auto_whole_s": auto, "on_whole_s": on, "start_on_whole_s": start_on,
                        "auto_over_on": auto / on if auto and on else None,
                        "auto_over_start_on": auto / start_on if auto and start_on else None,
                        "auto_longest_gap_s": median(workload, "auto", cache, "longest_gap_s"),
                        "on_longest_gap_s": median(workload, "on", cache, "longest_gap_s")}
        off = median(workload, "off", "none", "steady_sps")
        start_off = median(workload, "start-off", "none", "steady_sps")
        w["eager_sps"] = {"off": off, "start_off": start_off, "off_over_start_off": off / start_off
                          if off and start_off else None}
        out[workload] = w
    return out


if __name__ == "__main__":
    main()
