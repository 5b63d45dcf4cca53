"""The fused iteration against the unfused one: steady speed, compile time per formulation, and
the wall time of whole `fkernel train` processes under --compile auto / on / off.

Parts (``--only``, default all):
- ``speed``: in one process, one thread, default configs of CartPole and seedbed: seconds per
  iteration of the eager unfused path, the compiled unfused path (rollout scan + GAE + 16 grad-step
  calls) and the fused path, measured alternately (median of ``--repeats`` blocks) after warm-up.
  Ratios are taken within this run. Peak RSS of the process is recorded.
- ``compile``: each formulation compiled in a child process with a fresh inductor cache (cold),
  then again with that cache (warm); seconds of the first iteration and the seconds per iteration
  after it.
- ``preset``: `fkernel train --preset cartpole-gpu --device cpu` (2048 envs; the preset is meant
  for a GPU, and its hyperparameters solve the same way on any device): when the rolling mean
  return first reached 475, the final mean return, env steps/s.
- ``whole``: `fkernel train --threads 1` as a user runs it, CartPole and seedbed at a short and the
  default length, with --compile auto / on / off, on a fresh cache (cold) and again (warm): wall
  seconds from process start to exit, and the child's peak RSS.

    python -m benchmarks.fused --out benchmarks/results/fused.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.results_io import write_record

SHORT = {"cartpole": 50_000, "seedbed": 60_000}
FORMULATIONS = {
    # name: (fuse, inductor options over kernel.hot.fused_options)
    "unfused": ("off", {}),
    "fused": ("on", {}),
    "fused, wrapper and kernels in one C++ unit": ("on", {"cpp_wrapper_build_separate": False}),
    "fused, Python wrapper": ("on", {"cpp_wrapper": False}),
}


def seconds_per_iteration(iteration, state, n: int):
    start = time.perf_counter()
    for _ in range(n):
        state, metrics = iteration(state)
    float(metrics["loss"])
    return (time.perf_counter() - start) / n, state


def peak_rss_mb(usage=None) -> float:
    import resource

    kb = (usage or resource.getrusage(resource.RUSAGE_SELF)).ru_maxrss
    return kb / 1024


def speed(env: str, repeats: int, iterations: int) -> dict:
    from kernel.build import build, init_state
    from kernel.config import Config
    from kernel.train import iteration

    config = Config.for_env(env)
    paths = {"eager": build(config.replace(compile=False, fuse="off")),
             "unfused": build(config.replace(compile=True, fuse="off")),
             "fused": build(config.replace(compile=True, fuse="on"))}
    state0 = init_state(paths["eager"])
    warm = {}
    for name, run in paths.items():
        start = time.perf_counter()
        _, state = seconds_per_iteration(lambda s, r=run: iteration(r, s), state0, 3)
        warm[name] = time.perf_counter() - start
    blocks: dict = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            n = max(2, iterations // 10) if name == "eager" else iterations
            s, _ = seconds_per_iteration(lambda st, r=run: iteration(r, st), state0, n)
            blocks[name].append(s)
    med = {name: statistics.median(v) for name, v in blocks.items()}
    return {
        "config": config.to_dict(),
        "seconds_per_iteration": med,
        "blocks": blocks,
        "env_steps_per_s": {name: config.batch_size / s for name, s in med.items()},
        "fused_over_unfused": med["unfused"] / med["fused"],
        "unfused_over_eager": med["eager"] / med["unfused"],
        "fused_over_eager": med["eager"] / med["fused"],
        "first_three_iterations_s": warm,
        "peak_rss_mb": peak_rss_mb(),
    }


CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from kernel.config import Config
from kernel import hot
from kernel.build import build, init_state
from kernel.train import iteration
env, fuse, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
original = hot.fused_options
hot.fused_options = lambda device="cpu": dict(original(device), **extra)
import kernel.build
kernel.build.fused_options = hot.fused_options
run = build(Config.for_env(env, compile=True, fuse=fuse))
state = init_state(run)
start = time.perf_counter()
state, m = iteration(run, state)
float(m["loss"])
compile_s = time.perf_counter() - start
start = time.perf_counter()
for _ in range(20):
    state, m = iteration(run, state)
float(m["loss"])
print(json.dumps({"first_iteration_s": compile_s, "iteration_s": (time.perf_counter() - start) / 20}))
"""


def child(args: list, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times(envs: list, names: list) -> dict:
    results = {}
    for env in envs:
        for name in names:
            if env != "cartpole" and name not in ("unfused", "fused"):
                continue  # the other formulations were compared on CartPole only
            fuse, extra = FORMULATIONS[name]
            with tempfile.TemporaryDirectory() as cache:
                cold = child([env, fuse, json.dumps(extra)], cache)
                warm = child([env, fuse, json.dumps(extra)], cache)
            results[f"{env}: {name}"] = {"cold": cold, "warm": warm, "options": extra}
            print(env, name, results[f"{env}: {name}"], flush=True)
    return results


def train_process(env: str, total: int, mode: list, cache: str, out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "cli.main", "train", "--env", env, "--total-steps", str(total), "--threads", "1",
           "--checkpoint-every", "0", "--out", out_dir, *mode]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, COLUMNS="200"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{cmd} failed:\n{output[-3000:]}")
    summary = json.loads(open(os.path.join(out_dir, "summary.json")).read())
    auto_line = next((line.strip() for line in output.splitlines() if line.startswith("compile auto:")), None)
    return {"wall_s": wall, "compile_s": summary["compile_s"], "run_s": summary["run_s"],
            "mean_return": summary["mean_return"], "peak_rss_mb": usage.ru_maxrss / 1024, "auto": auto_line}


def whole(envs: list) -> dict:
    results = {}
    modes = {"auto": [], "on": ["--compile"], "off": ["--no-compile"]}
    for env in envs:
        for length, total in (("short", SHORT[env]), ("default", None)):
            total = total or __import__("kernel.config").config.Config.for_env(env).total_steps
            extra = {"on, fused": ["--compile", "--fuse"]} if env == "cartpole" else {}
            for mode, flags in {**modes, **extra}.items():
                with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
                    runs = {}
                    for temp in ("cold", "warm") if mode != "off" else ("cold",):
                        runs[temp] = train_process(env, total, flags, cache, os.path.join(out, temp))
                        if mode == "auto" and temp == "cold":
                            # "warm" means a cache that holds the graphs: a forced compiled run fills it
                            train_process(env, total, ["--compile"], cache, os.path.join(out, "fill"))
                results[f"{env} {length} ({total} steps), compile {mode}"] = runs
                print(env, length, mode, runs, flush=True)
    return results


def preset() -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "cli.main", "train", "--preset", "cartpole-gpu", "--device", "cpu", "--compile",
               "--checkpoint-every", "0", "--out", out]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
        summary = json.loads(open(os.path.join(out, "summary.json")).read())
        config = json.loads(open(os.path.join(out, "config.json")).read())
    result = {"wall_s": wall, "summary": summary, "config": config}
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["speed", "compile", "preset", "whole"], action="append")
    p.add_argument("--envs", nargs="+", default=["cartpole", "seedbed"])
    p.add_argument("--formulations", nargs="+", default=list(FORMULATIONS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iterations", type=int, default=100, help="per timed block (eager: a tenth)")
    p.add_argument("--out", default="benchmarks/results/fused.json")
    args = p.parse_args(argv)
    parts = args.only or ["speed", "compile", "preset", "whole"]
    torch.set_num_threads(1)
    record = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": 1}
    if "speed" in parts:
        record["speed"] = {env: speed(env, args.repeats, args.iterations if env == "cartpole" else args.iterations // 5)
                           for env in args.envs}
        print(json.dumps(record["speed"], indent=1), flush=True)
    if "compile" in parts:
        record["compile"] = compile_times(args.envs, args.formulations)
    if "preset" in parts:
        record["preset"] = preset()
    if "whole" in parts:
        record["whole"] = whole(args.envs)
    write_record(args.out, record)


if __name__ == "__main__":
    main()
