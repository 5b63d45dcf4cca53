"""Cold and warm compile seconds of each env's default run, this tree against another revision.

    python -m benchmarks.compile_seconds --rev eb5b384 --out benchmarks/results/compile_seconds.json

For each env (its default configuration) and each tree (``--rev`` checked out into a temporary git
worktree, and this one), ``fkernel train --env E --compile on --threads 1`` runs twice in fresh
processes over two batches: first on an empty inductor cache (cold), then on the cache the first
run filled (warm). Reported per run: the summary's ``compile_s`` (the first, compiled iteration:
dynamo's trace, inductor's code generation and the C++ compiler) and the process's wall seconds;
then the ratios this tree / ``--rev``. The trees alternate env by env, so both see the same
stretch of machine time. ``--repeats N`` does all of it N times, each repeat on fresh caches, and
reports the medians (each run is kept as well).
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
ENVS = ("cartpole", "pendulum", "seedbed")


def batch_steps(env: str, tree: Path) -> int:
    """One batch of ``env``'s default configuration, read from ``tree``'s own code."""
    code = f"from kernel.config import Config; print(Config.for_env({env!r}).batch_size)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def compiled_run(tree: Path, env: str, cache: Path, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work)) / "run"
    steps = 2 * batch_steps(env, tree)
    cmd = [sys.executable, "-m", "cli.main", "train", "--env", env, "--compile", "on", "--threads", "1",
           "--total-steps", str(steps), "--checkpoint-every", "0", "--out", str(out)]
    environ = dict(os.environ, PYTHONPATH=str(tree), TORCHINDUCTOR_CACHE_DIR=str(cache))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=environ, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {"compile_s": summary["compile_s"], "wall_s": wall, "total_steps": steps}


def median_run(items: list) -> dict:
    """Each figure's median over the repeats (of an even number, the higher middle one)."""
    return {key: statistics.median_high(item[key] for item in items) for key in items[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision to compare against (e.g. a commit hash)")
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fkernel-compile-"))
    other = work / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    trees = {args.rev: other, "this tree": ROOT}
    every: dict = {}
    try:
        for repeat in range(args.repeats):
            for env in args.envs.split(","):
                for name, tree in trees.items():
                    cache = work / f"cache-{env}-{name.replace(' ', '-')}-{repeat}"
                    cold = compiled_run(tree, env, cache, work)
                    warm = compiled_run(tree, env, cache, work)
                    pair = every.setdefault(env, {}).setdefault(name, {"cold_runs": [], "warm_runs": []})
                    pair["cold_runs"].append(cold)
                    pair["warm_runs"].append(warm)
                    print(f"{env} {name}: compile {cold['compile_s']:.1f} s cold, {warm['compile_s']:.1f} s warm",
                          flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False)
    runs = {env: {name: dict(pair, cold=median_run(pair["cold_runs"]), warm=median_run(pair["warm_runs"]))
                  for name, pair in by.items()} for env, by in every.items()}
    ratios = {env: {state: by["this tree"][state]["compile_s"] / by[args.rev][state]["compile_s"]
                    for state in ("cold", "warm")} for env, by in runs.items()}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"command": "fkernel train --env E --compile on --threads 1 --total-steps <2 batches>", "rev": args.rev,
              "this_tree_head": head, "repeats": args.repeats, "runs": runs, "compile_ratio_this_over_rev": ratios}
    print(json.dumps(result, indent=2))
    if args.out:
        write_record(str(args.out), result)


if __name__ == "__main__":
    main()
