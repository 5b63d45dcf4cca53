"""Throughput against the number of parallel environments, and raw CartPole stepping.

Two measurements, both single-threaded unless ``--threads`` says otherwise:

1. Raw batched CartPole stepping (default 4096 envs, random actions, auto-reset), eager Python loop
   vs one compiled ``scan`` over the segment with the noise drawn beforehand.
2. For each env count (default 4, 64, 1024, 4096; PureJaxRL's 128-step segments and 4x4 minibatches
   otherwise): rollout-only env steps/s (one compiled segment: policy, sampling, env) and full
   training env steps/s (rollout + GAE + 4 epochs x 4 minibatches of compiled grad steps). Each env
   count runs in its own process, so its compile time is its own.

    python -m benchmarks.scaling --out benchmarks/results/scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks.results_io import write_record


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def raw_stepping(num_envs: int, num_steps: int, repeats: int) -> dict:
    import torch
    from torch._higher_order_ops.scan import scan

    import envs

    env = envs.make("cartpole", num_envs)
    g = torch.Generator().manual_seed(0)
    state, _ = env.reset(torch.rand(env.noise_shape(), generator=g))
    actions = (torch.rand(num_steps, num_envs, generator=g) < 0.5).long()
    noise = torch.rand(num_steps, *env.noise_shape(), generator=g)

    def looped(state):
        for t in range(num_steps):
            state = env.step(state, actions[t], noise[t]).state
        return state

    def body(state, x):
        step = env.step(state, x[0], x[1])
        # the reward is the per-step output; the state is cloned because it is also the obs
        return {k: v.clone() for k, v in step.state.items()}, step.reward

    def scanned(state, actions, noise):
        return scan(body, {k: v.clone() for k, v in state.items()}, (actions, noise))

    compiled = torch.compile(scanned, fullgraph=True)
    start = time.perf_counter()
    compiled(state, actions, noise)
    compile_s = time.perf_counter() - start
    steps = num_envs * num_steps
    eager_s = median_seconds(lambda: looped(state), repeats)
    scan_s = median_seconds(lambda: compiled(state, actions, noise), repeats)
    return {"num_envs": num_envs, "num_steps": num_steps, "eager_sps": steps / eager_s,
            "compiled_scan_sps": steps / scan_s, "compiled_vs_eager": eager_s / scan_s, "compile_s": compile_s}


def segment(run, state, generator):
    import torch

    with torch.no_grad():
        return run.stages.segment(state.params, state.carry, *run.rollout.noise(generator))


def one_size(num_envs: int, iterations: int) -> dict:
    import torch

    from kernel import train as T
    from kernel.config import Config

    cfg = Config(num_envs=num_envs, total_steps=num_envs * 128 * 1000)
    train = T.make_train(cfg)
    run, state = train.built, train.init()
    compile_s = T.warmup(run, state)
    g = torch.Generator().manual_seed(1)
    # Rollout-only: the compiled segment (plus its noise draw and the bootstrap values).
    rollout_s = median_seconds(lambda: segment(run, state, g), iterations)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        state, metrics = train.iteration(state)
        T.to_host(metrics, None)  # the sync a logging loop would do
        times.append(time.perf_counter() - start)
    train_s = sorted(times)[len(times) // 2]
    steps = cfg.batch_size
    return {"num_envs": num_envs, "batch": steps, "minibatch_rows": steps // cfg.num_minibatches,
            "compile_s": compile_s, "rollout_sps": steps / rollout_s, "train_sps": steps / train_s,
            "rollout_ms": 1e3 * rollout_s, "iteration_ms": 1e3 * train_s, "iterations": iterations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, nargs="+", default=[4, 64, 1024, 4096])
    ap.add_argument("--raw-envs", type=int, default=4096)
    ap.add_argument("--iterations", type=int, default=7, help="timed iterations per env count (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/scaling.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one env count, print JSON
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.iterations)))
        return
    if args.raw:
        print(json.dumps(raw_stepping(args.raw_envs, 128, 20)))
        return

    def child(extra):
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--threads", str(args.threads),
               "--iterations", str(args.iterations), "--raw-envs", str(args.raw_envs), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    raw = child(["--raw"])
    print(f"raw CartPole, {raw['num_envs']} envs: eager {raw['eager_sps'] / 1e6:.1f} M steps/s, "
          f"compiled scan {raw['compiled_scan_sps'] / 1e6:.1f} M steps/s ({raw['compiled_vs_eager']:.1f}x), "
          f"compile {raw['compile_s']:.1f} s", flush=True)
    sizes = []
    for n in args.envs:
        r = child(["--one", str(n)])
        sizes.append(r)
        print(f"{n:5d} envs: rollout {r['rollout_sps']:,.0f} SPS, training {r['train_sps']:,.0f} SPS "
              f"(iteration {r['iteration_ms']:.1f} ms, compile {r['compile_s']:.1f} s)", flush=True)
    write_record(args.out, {
        "benchmark": "scaling", "threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "raw_cartpole": raw, "by_num_envs": sizes,
    })


if __name__ == "__main__":
    main()
