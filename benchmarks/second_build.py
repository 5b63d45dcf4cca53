"""A second build with other shapes in one process runs as fast as the same config built alone.

Each case is its own process (``--threads 1``, warm inductor cache), so nothing carries over
between cases; the cases alternate, ``--repeats`` times each:

- ``alone``: build B (CartPole, 8 envs x 128 steps, unfused), time its steady iterations;
- ``after A``: build A first (the default 4 envs) and run it, then build and time B as above;
- ``after A, automatic dynamic``: the same with ``torch.compile``'s default ``dynamic=None``, which
  ``kernel.hot.compile_hot`` used before it asked for static graphs: dynamo's automatic-dynamic
  record is kept per function name and line, so B's graphs came out with symbolic sizes.

    python -m benchmarks.second_build [--repeats 3] [--iterations 60] [--out benchmarks/results/second_build.json]

Seconds per iteration are the median over blocks of 10 iterations; the ratios divide each case's
median by ``alone``'s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.results_io import write_record

CASES = ("alone", "after A", "after A, automatic dynamic")
BLOCK = 10

CHILD = f"""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
import kernel.hot as hot
from kernel import Config, make_train
case, iterations = sys.argv[1], int(sys.argv[2])
if case.endswith("automatic dynamic"):
    def compile_hot(fn, device="cpu", options=None):
        return torch.compile(hot.own_code(fn), fullgraph=True, options=options or hot.hot_options(device))
    hot.compile_hot = compile_hot
    import kernel.ppo, kernel.rollout
    kernel.ppo.compile_hot = kernel.rollout.compile_hot = compile_hot
a = Config(fuse="off")
b = a.replace(num_envs=8)
if case.startswith("after A"):
    first = make_train(a)
    state = first.init()
    for _ in range(3):
        state, _ = first.iteration(state)
second = make_train(b)
state = second.init()
state, _ = second.iteration(state)  # compile (or load) before timing
blocks = []
for _ in range(iterations // {BLOCK}):
    start = time.perf_counter()
    for _ in range({BLOCK}):
        state, metrics = second.iteration(state)
    float(metrics["loss"])
    blocks.append((time.perf_counter() - start) / {BLOCK})
print(json.dumps({{"case": case, "iteration_s": statistics.median(blocks), "blocks_s": blocks}}))
"""


def run_case(case: str, iterations: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(iterations)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--out", default="benchmarks/results/second_build.json")
    args = parser.parse_args()
    runs = {case: [] for case in CASES}
    start = time.perf_counter()
    for repeat in range(args.repeats):
        for case in CASES:
            result = run_case(case, args.iterations)
            runs[case].append(result["iteration_s"])
            print(f"repeat {repeat}: {case}: {1e3 * result['iteration_s']:.2f} ms per iteration", flush=True)
    alone = statistics.median(runs["alone"])
    record = {
        "config_b": "CartPole, 8 envs x 128 steps, unfused, compiled; A: the default 4 envs",
        "iterations": args.iterations, "repeats": args.repeats, "threads": 1,
        "cases": {case: {"iteration_s": statistics.median(s), "runs_s": s,
                         "ratio_to_alone": statistics.median(s) / alone} for case, s in runs.items()},
        "wall_s": time.perf_counter() - start,
    }
    write_record(args.out, record)


if __name__ == "__main__":
    main()
