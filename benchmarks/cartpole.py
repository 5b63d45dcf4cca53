"""End-to-end CartPole training with the default (PureJaxRL) configuration, one process per seed.

For each seed: env steps and wall-clock to first reach a mean return >= 475 over the last 100
finished episodes, final mean return, and total wall-clock split into compile time (first call of
the compiled functions) and run time. Writes JSON; never part of the test run.

    python -m benchmarks.cartpole --seeds 0 1 2 --out benchmarks/results/cartpole.json
    python -m benchmarks.cartpole --seeds 0 --cold     # fresh inductor cache: cold compile time
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks.results_io import write_record
from kernel.tree import leaves


def one_seed(seed: int, threads: int, compile_: bool, total_steps: int, precision: str) -> dict:
    import torch

    from kernel import train as T
    from kernel.config import Config

    torch.set_num_threads(threads)
    cfg = Config(seed=seed, compile=compile_, total_steps=total_steps, precision=precision)
    start = time.perf_counter()
    state, _, summary = T.make_train(cfg).train()
    summary["wall_s"] = time.perf_counter() - start
    summary["seed"] = seed
    summary["final_loss_scale"] = float(state.loss_scale.value())
    summary["params_finite"] = all(bool(x.isfinite().all()) for x in leaves(state.params))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--total-steps", type=int, default=500_000)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cold", action="store_true", help="use an empty inductor cache (measures a cold compile)")
    ap.add_argument("--out", default="benchmarks/results/cartpole.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run a single seed, print JSON
    args = ap.parse_args()

    if args.one is not None:
        print(json.dumps(one_seed(args.one, args.threads, not args.no_compile, args.total_steps, args.precision)))
        return

    import torch

    env = dict(os.environ)
    if args.cold:
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fkernel-cold-")
    runs = []
    for seed in args.seeds:
        cmd = [sys.executable, "-m", "benchmarks.cartpole", "--one", str(seed), "--threads", str(args.threads),
               "--total-steps", str(args.total_steps), "--precision", args.precision] + \
              (["--no-compile"] if args.no_compile else [])
        start = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"seed {seed} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = time.perf_counter() - start  # includes interpreter + import time
        runs.append(result)
        solved = result["first_solved"]
        print(f"seed {seed}: mean return {result['mean_return']:.1f}, "
              f"first >=475 at {solved['env_steps'] if solved else 'never'} steps "
              f"({solved['run_s']:.1f} s)" if solved
              else f"seed {seed}: mean return {result['mean_return']:.1f}, never >=475",
              f"| compile {result['compile_s']:.1f} s, run {result['run_s']:.1f} s, {result['sps']:,.0f} SPS, "
              f"skipped {result['skipped_steps']}", flush=True)
    record = {
        "benchmark": "cartpole-default-config",
        "cold_cache": args.cold,
        "compile": not args.no_compile,
        "precision": args.precision,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "runs": runs,
        "all_solved": all(r["mean_return"] >= 475 for r in runs),
    }
    write_record(args.out, record)


if __name__ == "__main__":
    main()
