"""MuJoCo side by side with CleanRL's continuous PPO: HalfCheetah-v5 and Hopper-v5 at ``--preset
mujoco``, 1M steps, 3 seeds, against CleanRL's published table, and speed against a CleanRL-style
baseline (``benchmarks/cleanrl_continuous.py``) measured in the same run.

    python -m benchmarks.mujoco --threads 1 --out benchmarks/results/mujoco.json --keep /tmp/mujoco-runs

Every run is a fresh process at ``--threads 1``, one after another, nothing else timed meanwhile:

``--phases`` runs these in the order given (default: ``returns,speed,one_run``):

1. ``speed``: per env, 100k steps a run: the CleanRL-style port and fkernel in turn, one pair per
   seed (so that the machine's drift over minutes falls on both alike), then the 3 seeds as one
   vmapped group. The baseline's returns are CleanRL's published ones; only its env steps/s count.
2. ``returns``: fkernel, the 3 seeds as one vmapped group, 1M steps each; per seed the mean raw
   return of its last 100 training episodes and a greedy evaluation of 10 episodes.
3. ``one_run``: per env, fkernel's first seed alone for the full 1M steps: a single run's env
   steps/s over a whole run, start-up and compile included, with a baseline run of 100k steps just
   before and just after it (the ratio's denominator: the baseline measured in the same window).

Needs the ``[mujoco]`` extra. The JSON is rewritten after every run, so an interrupted benchmark
keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import provenance, write_record

ROOT = Path(__file__).resolve().parent.parent
ENVS = ("HalfCheetah-v5", "Hopper-v5")
SEEDS = (0, 1, 2)
# CleanRL's ppo_continuous_action.py, 1M steps, v4 envs on mujoco 2 (docs/benchmark/
# ppo_continuous_action.md in vwxyzjn/cleanrl, tag pr-424): mean +- std over 3 seeds, minutes per run.
CLEANRL = {"HalfCheetah-v5": {"env": "HalfCheetah-v4", "mean": 1442.64, "std": 46.03, "minutes": 25.3589},
           "Hopper-v5": {"env": "Hopper-v4", "mean": 2382.86, "std": 271.74, "minutes": 25.7066}}


def fkernel(args: list, threads: int) -> float:
    """Run ``fkernel`` in a fresh process; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", *args, "--threads", str(threads)] if args[0] == "train" else
                   [sys.executable, "-m", "cli.main", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def train(env: str, out: Path, steps: int, seeds: tuple, threads: int) -> dict:
    seed_flags = ["--seed", str(seeds[0])] if len(seeds) == 1 else ["--seeds", ",".join(map(str, seeds))]
    wall = fkernel(["train", "--env", f"gym:{env}", "--preset", "mujoco", "--total-steps", str(steps), *seed_flags,
                    "--checkpoint-every", "0", "--out", str(out)], threads)
    summary = json.loads((out / "summary.json").read_text())
    return {"seeds": list(seeds), "wall_s": wall, "env_steps": summary["env_steps"], "compile_s": summary["compile_s"],
            "run_s": summary["run_s"], "sps": summary["sps"], "sps_wall": summary["env_steps"] / wall,
            "sps_steady": steady_sps(out, len(seeds)), "summary": summary}


def steady_sps(out: Path, runs: int) -> float | None:
    """Env steps/s after the first update (which holds the compile), from the telemetry; a
    group's runs' steps together."""
    folder = out if runs == 1 else out / "run-0"
    rows = [json.loads(line) for line in (folder / "telemetry.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    if len(rows) < 2:
        return None
    return runs * (last["env_steps"] - first["env_steps"]) / (last["time_s"] - first["time_s"])


def evaluate(params: Path, episodes: int) -> float:
    out = subprocess.run([sys.executable, "-m", "cli.main", "eval", str(params), "--episodes", str(episodes), "--json"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["mean_return"]


def baseline(env: str, steps: int, seed: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.cleanrl_continuous", "--env-id", env, "--total-steps",
                          str(steps), "--seed", str(seed), "--threads", str(threads)], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: result[k] for k in ("env_steps", "wall_s", "sps", "mean_return_last100", "num_episodes")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--speed-steps", type=int, default=100_000)
    p.add_argument("--envs", default=",".join(ENVS))
    p.add_argument("--phases", default="returns,speed,one_run")
    p.add_argument("--out", default="benchmarks/results/mujoco.json")
    p.add_argument("--keep", default=None, help="folder for the run folders (default: a temporary one)")
    p.add_argument("--add-to", action="store_true",
                   help="start from the record at --out (same settings), replacing only the phases run now")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="fkernel-mujoco-"))
    work.mkdir(parents=True, exist_ok=True)
    envs, phases = args.envs.split(","), args.phases.split(",")
    record = {"command": f"python -m benchmarks.mujoco --threads {args.threads}", "threads": args.threads,
              "steps": args.steps, "speed_steps": args.speed_steps, "seeds": list(SEEDS), "cleanrl": CLEANRL,
              "envs": {}, "benchmark_wall_s": 0.0}
    if args.add_to:
        earlier = json.loads(Path(args.out).read_text())
        if any(earlier[k] != record[k] for k in ("threads", "steps", "speed_steps", "seeds")):
            raise SystemExit(f"{args.out} was measured with other settings")
        # its machine time is added to below; its phases keep the provenance they were measured with
        measured = earlier.pop("measured")
        done = {phase for row in earlier["envs"].values() for phase in row}
        earlier["phases_measured"] = {ph: earlier.get("phases_measured", {}).get(ph, measured) for ph in done}
        record = earlier
    spent_before, started = record["benchmark_wall_s"], time.perf_counter()

    def save():
        record["benchmark_wall_s"] = spent_before + time.perf_counter() - started
        write_record(args.out, record)

    for phase in phases:  # in the order given
        for env in envs:
            row = record["envs"].setdefault(env, {})
            if phase == "speed":
                row["speed"] = speed(env, work, args)
            elif phase == "returns":
                row["returns"] = returns(env, work, args)
            elif phase == "one_run":
                row["one_run"] = one_run(env, work, args)
            else:
                raise SystemExit(f"unknown phase {phase!r}: speed, returns or one_run")
            print(env, phase, json.dumps(row[phase]), flush=True)
            record.setdefault("phases_measured", {})[phase] = provenance(args.threads)
            save()


def speed(env: str, work: Path, args) -> dict:
    baselines, one_by_one = [], []
    for s in SEEDS:
        baselines.append(baseline(env, args.speed_steps, s, args.threads))
        one_by_one.append(train(env, work / f"{env}-speed-seed{s}", args.speed_steps, (s,), args.threads))
    group = train(env, work / f"{env}-speed-group", args.speed_steps, SEEDS, args.threads)
    for r in (*one_by_one, group):
        r.pop("summary")
    return {"baseline": baselines, "one_by_one": one_by_one, "group": group}


def one_run(env: str, work: Path, args) -> dict:
    """The first seed alone for the full length, bracketed by a baseline run of ``--speed-steps``
    just before and just after it: the machine's speed drifts over the minutes a long run takes,
    and the brackets measure the baseline in the same window."""
    before = baseline(env, args.speed_steps, SEEDS[0], args.threads)
    run = train(env, work / f"{env}-one-run", args.steps, SEEDS[:1], args.threads)
    run.pop("summary")
    return dict(run, baseline_before=before, baseline_after=baseline(env, args.speed_steps, SEEDS[0], args.threads))


def returns(env: str, work: Path, args) -> dict:
    out = work / f"{env}-returns"
    run = train(env, out, args.steps, SEEDS, args.threads)
    summary = run.pop("summary")
    per_seed = [{"seed": r["seed"], "train_mean_return_last100": r["mean_return"],
                 "eval_mean_return_10": evaluate(out / f"run-{i}" / "params.safetensors", 10)}
                for i, r in enumerate(summary["runs"])]
    values = [s["train_mean_return_last100"] for s in per_seed]
    return dict(run, per_seed=per_seed, mean=statistics.mean(values), std=statistics.pstdev(values),
                run_folder=str(out))


if __name__ == "__main__":
    main()
