"""Does an eager trainer keep going while another build compiles in a thread of the same process?

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m benchmarks.compile_in_thread --out /tmp/thread.json

The main thread trains default CartPole eagerly (its first iteration untimed) while a thread runs a
second build's first compiled iteration; every eager update's time is recorded until the compile
ends. ``--switch-interval`` sets Python's GIL switch interval (default: Python's 5 ms). The JSON
holds the update times, the longest gap between two updates and when the compile ended.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import torch

from benchmarks.results_io import write_record
from kernel.config import Config
from kernel.plan import Plan
from kernel.train import make_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch-interval", type=float, default=None, help="seconds (sys.setswitchinterval)")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    eager = make_train(Config(compile=False, seed=0), plan=Plan(False, False, "eager"))
    compiled = make_train(Config(seed=1), plan=Plan(True, False, "compiled"))
    state, other = eager.init(), compiled.init()
    state, _ = eager.iteration(state)  # eager start-up costs paid before the clock starts
    start, ended = time.perf_counter(), {}

    def compile_other():
        compiled.iteration(other)
        ended["s"] = time.perf_counter() - start

    thread = threading.Thread(target=compile_other, daemon=True)
    thread.start()
    times = []
    while thread.is_alive():
        state, _ = eager.iteration(state)
        times.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    record = {"switch_interval_s": sys.getswitchinterval(), "compile_ended_s": ended.get("s"),
              "eager_updates": len(times), "longest_gap_s": max(gaps) if gaps else None, "update_times_s": times,
              "threads": 1}
    print(f"{len(times)} eager updates while the compile ran ({ended.get('s', float('nan')):.1f} s); longest gap "
          f"between two updates {record['longest_gap_s']:.1f} s")
    if args.out:
        write_record(args.out, record)


if __name__ == "__main__":
    main()
