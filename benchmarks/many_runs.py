"""Aggregate training speed of many CartPole runs vmapped into one program, against the same runs
trained one after another, side by side in one process.

    python -m benchmarks.many_runs [--runs 1 4 8 16 64] [--iterations 20] [--out benchmarks/results/many_runs.json]
    python -m benchmarks.many_runs --device cuda --runs 256 --solve --out benchmarks/results/cuda/many_runs.json

Default config for every run, one intra-op thread, warm inductor cache assumed (each row also
records its first-iteration time, which includes compilation on a cold cache). For each run
count R: the vmapped group's steady PPO iterations (all R runs advance by one update each), and
R one-run trainings of the same length, one after another with one compiled one-run trainer.
Aggregate env steps/s = R * batch * iterations / seconds; the ratio divides the two.
``--solve`` also trains each group for the default 500k steps per run and records when every
run's rolling mean return first reached 475 (seconds from the start of training, compile included).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.results_io import write_record


def timed_iterations(iteration, state, iterations: int) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(iterations):
        state, metrics = iteration(state)
    float(metrics["loss"].sum())  # wait for the last one (a no-op on CPU, a sync on CUDA)
    return time.perf_counter() - start, state


def measure(runs: int, iterations: int, device: str) -> dict:
    from kernel import Config, make_train

    config = Config(device=device)
    group = make_train(config, seeds=range(runs))
    state = group.init()
    start = time.perf_counter()
    state, _ = group.iteration(state)
    first_s = time.perf_counter() - start
    group_s, _ = timed_iterations(group.iteration, state, iterations)

    one = make_train(config)
    one.iteration(one.init(seed=0))  # compile (or load) the one-run graphs before timing
    sequential_s = 0.0
    for seed in range(runs):
        seconds, _ = timed_iterations(one.iteration, one.init(seed=seed), iterations)
        sequential_s += seconds
    steps = runs * config.batch_size * iterations
    return {"runs": runs, "iterations": iterations, "first_iteration_s": first_s,
            "vmapped_sps": steps / group_s, "sequential_sps": steps / sequential_s,
            "ratio_vmapped_over_sequential": sequential_s / group_s,
            "vmapped_ms_per_iteration": 1e3 * group_s / iterations,
            "sequential_ms_per_run_iteration": 1e3 * sequential_s / (iterations * runs)}


def solve_time(runs: int, device: str) -> dict:
    """Seconds until every run of a default-config group has a rolling mean return >= 475."""
    from kernel import Config, make_train

    start = time.perf_counter()
    group = make_train(Config(device=device), seeds=range(runs))
    seen = {}

    def watch(log):
        if "all_solved_s" not in seen and log.return_spread[0] >= 475 and log.episodes >= 100 * runs:
            seen["all_solved_s"] = time.perf_counter() - start
            seen["all_solved_env_steps"] = log.env_steps

    result = group.train(on_update=watch)
    solved = [r["first_solved"] for r in result.summary["runs"]]
    return {"runs": runs, "total_s": time.perf_counter() - start, "compile_s": result.summary["compile_s"],
            "sps": result.summary["sps"], "runs_solved": sum(1 for s in solved if s),
            "all_solved_s": seen.get("all_solved_s"), "all_solved_env_steps": seen.get("all_solved_env_steps")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--solve", action="store_true", help="also time a full training until every run solves")
    ap.add_argument("--out", default="benchmarks/results/many_runs.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for runs in args.runs:
        row = measure(runs, args.iterations, args.device)
        rows.append(row)
        print(f"{runs:>3} runs: vmapped {row['vmapped_sps']:>11,.0f} env steps/s, one after another "
              f"{row['sequential_sps']:>9,.0f} ({row['ratio_vmapped_over_sequential']:.2f}x); "
              f"first iteration {row['first_iteration_s']:.1f} s", flush=True)
    record = {"benchmark": "many_runs", "threads": args.threads, "device": args.device, "torch": torch.__version__,
              "rows": rows}
    if args.solve:
        record["solve"] = [solve_time(runs, args.device) for runs in args.runs]
        for row in record["solve"]:
            print(f"{row['runs']:>3} runs: every run solved after {row['all_solved_s']} s "
                  f"({row['runs_solved']} of {row['runs']} reached 475; {row['sps']:,.0f} env steps/s)", flush=True)
    write_record(args.out, record)


if __name__ == "__main__":
    main()
