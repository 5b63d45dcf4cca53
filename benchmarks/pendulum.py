"""Pendulum-v1 with ``--preset pendulum``: the mean raw return of the last 100 training episodes and
of a deterministic evaluation, env steps and seconds, for a few seeds.

    python -m benchmarks.pendulum --seeds 0,1,2 --threads 1 --out benchmarks/results/pendulum.json

Each seed trains in a fresh ``fkernel train`` process (compile included in its wall time), then
``fkernel eval`` plays 100 greedy episodes with the statistics the run ended with.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import write_record

ROOT = Path(__file__).resolve().parent.parent
TARGET = -250.0


def one_seed(seed: int, threads: int, work: Path, extra: list) -> dict:
    out = work / f"seed{seed}"
    cmd = [sys.executable, "-m", "cli.main", "train", "--preset", "pendulum", "--seed", str(seed), "--threads",
           str(threads), "--checkpoint-every", "0", "--out", str(out), *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    evaluated = subprocess.run([sys.executable, "-m", "cli.main", "eval", str(out / "params.safetensors"),
                                "--episodes", "100", "--json"], cwd=ROOT, check=True, capture_output=True, text=True)
    telemetry = [json.loads(line) for line in (out / "telemetry.jsonl").read_text().splitlines()]
    reached = next((r for r in telemetry if r["mean_return"] is not None and r["mean_return"] >= TARGET), None)
    return {"seed": seed, "train_mean_return_last100": summary["mean_return"],
            "eval_mean_return": json.loads(evaluated.stdout)["mean_return"], "env_steps": summary["env_steps"],
            "compile_s": summary["compile_s"], "run_s": summary["run_s"], "wall_s": wall, "sps": summary["sps"],
            "first_reached_target": None if reached is None else
            {"env_steps": reached["env_steps"], "time_s": reached["time_s"]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/pendulum.json")
    p.add_argument("extra", nargs="*", help="more fkernel train flags (after --)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fkernel-pendulum-"))
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(one_seed(seed, args.threads, work, args.extra))
        print(json.dumps(runs[-1]), flush=True)
    record = {"command": f"python -m benchmarks.pendulum --seeds {args.seeds} --threads {args.threads}",
              "threads": args.threads, "preset": "pendulum", "target": TARGET, "extra_flags": args.extra, "runs": runs}
    write_record(args.out, record)


if __name__ == "__main__":
    main()
