"""Steady training speed of this tree against another git revision, side by side in one run.

    python -m benchmarks.sps_against_revision --rev REV [--reps 3] [--json PATH] [-- TRAIN_FLAGS...]

Checks ``REV`` out into a temporary git worktree, then runs ``fkernel train --threads 1`` (the
default CartPole configuration unless flags are given after ``--``) alternately from that tree and
from this one, ``--reps`` times each, in fresh processes that share one inductor cache (so both
sides are measured warm after a first, untimed run of each). Reports each run's steady env
steps/s (the training loop's ``sps``: env steps over run time, compile excluded), its compile
seconds and the process wall time, and the ratios of the medians (env steps/s, compile seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import write_record

ROOT = Path(__file__).resolve().parent.parent


def train_once(tree: Path, flags: list, workdir: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, "-m", "cli.main", "train", "--threads", "1", "--checkpoint-every", "0",
           "--out", str(out / "run"), *flags]
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "run" / "summary.json").read_text())
    return {"sps": summary["sps"], "compile_s": summary["compile_s"], "run_s": summary["run_s"],
            "wall_s": wall, "mean_return": summary["mean_return"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision to compare against (e.g. a commit hash)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("flags", nargs="*", help="fkernel train flags (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fkernel-sps-"))
    other = work / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        trees = {args.rev: other, "this tree": ROOT}
        for tree in trees.values():  # untimed: fills the inductor cache for both sides
            train_once(tree, args.flags, work)
        runs: dict = {name: [] for name in trees}
        for rep in range(args.reps):
            for name, tree in trees.items():
                runs[name].append(train_once(tree, args.flags, work))
                print(f"rep {rep} {name}: {runs[name][-1]['sps']:.0f} env steps/s", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False)
    medians = {name: statistics.median(r["sps"] for r in rs) for name, rs in runs.items()}
    compiles = {name: statistics.median(r["compile_s"] for r in rs) for name, rs in runs.items()}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"command": "fkernel train --threads 1 " + " ".join(args.flags), "rev": args.rev, "this_tree_head": head,
              "runs": runs, "median_sps": medians, "ratio_this_over_rev": medians["this tree"] / medians[args.rev],
              "median_compile_s": compiles,
              "compile_ratio_this_over_rev": compiles["this tree"] / max(compiles[args.rev], 1e-9)}
    print(json.dumps(result, indent=2))
    if args.json:
        write_record(str(args.json), result)


if __name__ == "__main__":
    main()
