"""Aggregate training speed of many CartPole runs vmapped into one program, against the same runs
trained one after another, side by side in one process.

    python -m benchmarks.many_runs [--runs 1 4 8 16 64] [--iterations 20] [--out benchmarks/results/many_runs.json]

Default config for every run, one intra-op thread, warm inductor cache assumed (each row also
records its first-iteration time, which includes compilation on a cold cache). For each run
count R: the vmapped group's steady PPO iterations (all R runs advance by one update each), and
R one-run trainings of the same length, one after another with one compiled one-run trainer.
Aggregate env steps/s = R * batch * iterations / seconds; the ratio divides the two.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
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
    write_record(args.out, {"benchmark": "many_runs", "threads": args.threads, "device": args.device,
                            "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
