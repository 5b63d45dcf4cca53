"""Data-parallel scaling on this machine: the same training job in 1 process and in N processes
(``fkernel train --nproc N``, gloo, one thread each), side by side.

    python -m benchmarks.distributed_scaling [--nproc 2] [--reps 2] [--out benchmarks/results/distributed_scaling.json]

Each job is a fresh ``fkernel train`` (compiled, warm inductor cache after a first untimed run of
each) for two configs: the default CartPole job (4 envs in all) and a 64-env one. Reports the
training loop's env steps/s (all ranks together; compile excluded) and the ratio N over 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.results_io import write_record

ROOT = Path(__file__).resolve().parent.parent
JOBS = {"default (4 envs)": [], "64 envs": ["--num-envs", "64", "--total-steps", "2000000"]}


def train_once(nproc: int, flags: list) -> dict:
    out = Path(tempfile.mkdtemp()) / "run"
    cmd = [sys.executable, "-m", "cli.main", "train", "--checkpoint-every", "0", "--out", str(out), *flags]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else ["--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return {"sps": summary["sps"], "compile_s": summary["compile_s"], "run_s": summary["run_s"],
            "mean_return": summary["mean_return"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/distributed_scaling.json")
    args = ap.parse_args()
    rows = []
    for name, flags in JOBS.items():
        for n in (1, args.nproc):
            train_once(n, flags)  # warm the compile cache for this shape
        runs = {1: [], args.nproc: []}
        for _ in range(args.reps):
            for n in (1, args.nproc):
                runs[n].append(train_once(n, flags))
        median = {n: statistics.median(r["sps"] for r in rs) for n, rs in runs.items()}
        rows.append({"job": name, "flags": flags, "runs": {str(n): rs for n, rs in runs.items()},
                     "median_sps": {str(n): v for n, v in median.items()},
                     "ratio": median[args.nproc] / median[1]})
        print(f"{name}: 1 process {median[1]:,.0f} env steps/s, {args.nproc} processes "
              f"{median[args.nproc]:,.0f} ({rows[-1]['ratio']:.2f}x)", flush=True)
    write_record(args.out, {"benchmark": "distributed_scaling", "nproc": args.nproc, "cpus": os.cpu_count(),
                            "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
