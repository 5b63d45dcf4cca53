"""Measure the PPO update step and the acting (rollout) step across compile modes, precisions and
minibatch sizes. Every figure comes from timings taken in this process; speedups divide the eager
median by the cell's median, both measured in the same run.
"""
from __future__ import annotations

import math
import os
import platform
import time

import torch
import torch._dynamo

from kernel import loss_scale
from kernel.build import make_env, make_optimizer, policy_for
from kernel.config import Config
from kernel.diagnose import one_batch
from kernel.ppo import hyper_tensors, make_grad_step
from kernel.precision import Precision
from kernel.rollout import make_rollout
from kernel.train import peak_memory_mb
from kernel.tree import tree_map

MODES = ("eager", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
TARGETS = ("update", "rollout")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def dynamo_counts() -> dict:
    c = torch._dynamo.utils.counters
    return {"graphs": int(c["stats"]["unique_graphs"]), "breaks": int(sum(c["graph_break"].values()))}


def percentile(sorted_values: list, q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def compiled(fn, mode: str):
    if mode == "eager":
        return fn
    return torch.compile(fn, mode=mode, fullgraph=True)


def update_case(config: Config, precision: Precision, minibatch: int):
    """A grad + optimizer step on a real rollout batch of ``minibatch`` rows."""
    envs_needed = max(1, math.ceil(minibatch / config.num_steps))
    cfg = config.replace(num_envs=envs_needed, total_steps=envs_needed * config.num_steps, num_minibatches=1,
                         precision=precision)
    run, params, batch = one_batch(cfg)
    optimizer = make_optimizer(cfg)
    device = batch["returns"].device
    units = envs_needed if run.policy.recurrent else minibatch
    args = (params, optimizer.init(params), loss_scale.for_precision(precision.needs_loss_scale, 2.0 ** 10, device),
            batch, torch.arange(units, device=device), hyper_tensors(cfg, torch.zeros((), dtype=torch.int64,
                                                                                      device=device)))
    step = make_grad_step(run.policy, optimizer, cfg.clip_vloss, cfg.norm_adv, norm_entropy=cfg.norm_entropy,
                          head_average=cfg.head_average)
    return step, args, minibatch


def rollout_case(config: Config, precision: Precision, num_envs: int):
    """One acting step (policy forward, sampling, env step) for ``num_envs`` environments."""
    env = make_env(config, num_envs)
    policy = policy_for(config.replace(precision=precision), env)
    rollout = make_rollout(env, policy, 1)
    g = torch.Generator().manual_seed(0)
    params = tree_map(lambda x: x.to(env.device), policy.init(g))
    carry = rollout.init(g)
    noise = {h: torch.rand(num_envs, k, generator=g).to(env.device) for h, k in env.action_spec.sizes.items()}
    env_noise = torch.rand(env.noise_shape(), generator=g, dtype=env.dtype).to(env.device)
    return torch.no_grad()(rollout.act), (params, carry, noise, env_noise), num_envs


def measure(fn, args, device, warmup: int, iters: int) -> tuple[float, dict, list]:
    """First-call seconds, dynamo counts right after the first call, sorted steady-state times."""
    start = time.perf_counter()
    fn(*args)
    sync(device)
    first = time.perf_counter() - start
    after_first = dynamo_counts()
    for _ in range(warmup):
        fn(*args)
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - t)
    return first, after_first, sorted(times)


def run_cell(config: Config, target: str, mode: str, precision: Precision, size: int, warmup: int, iters: int) -> dict:
    device = torch.device(config.device)
    fn, args, rows = (update_case if target == "update" else rollout_case)(config, precision, size)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    reset_peak_memory(device)
    fn = compiled(fn, mode)
    first, after_first, times = measure(fn, args, device, warmup, iters)
    counts = dynamo_counts()  # anything compiled after the first call is a recompile
    median = percentile(times, 0.5)
    cell = {
        "target": target, "mode": mode, "precision": precision.name, "size": size,
        "compile_s": first if mode != "eager" else 0.0,
        "first_call_s": first,
        "median_ms": 1e3 * median, "p10_ms": 1e3 * percentile(times, 0.1), "p90_ms": 1e3 * percentile(times, 0.9),
        "rows_per_s": rows / median,
        "graphs": counts["graphs"], "graph_breaks": counts["breaks"],
        "recompiles": max(0, counts["graphs"] - after_first["graphs"]) if mode != "eager" else 0,
        "peak_mem_mb": peak_memory_mb(device),
        "peak_mem_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "iters": iters,
    }
    if mode == "reduce-overhead" and device.type != "cuda":
        cell["note"] = "no CUDA graphs on CPU: inductor's default code path"
    return cell


def with_speedups(cells: list) -> list:
    """Fill ``speedup_vs_eager`` from the eager cell of the same target/precision/size (None until it exists)."""
    eager = {(c["target"], c["precision"], c["size"]): c["median_ms"] for c in cells if c["mode"] == "eager"}
    for c in cells:
        base = eager.get((c["target"], c["precision"], c["size"]))
        c["speedup_vs_eager"] = base / c["median_ms"] if base else None
    return cells


def record_for(config: Config, cells: list, complete: bool) -> dict:
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(config.device) if torch.device(config.device).type == "cuda"
        else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "config": config.to_dict(),
        "sizes_mean": {"update": "minibatch rows", "rollout": "parallel envs"},
        "complete": complete,
        "cells": with_speedups(cells),
    }


def run_bench(config: Config, modes, precisions, sizes, targets=TARGETS, warmup: int = 5, iters: int = 50,
              on_cell=None) -> dict:
    """All cells. ``on_cell(cell, partial_record)`` runs after each one, so a long run that is stopped
    still leaves what it measured (the partial record says ``complete: false``)."""
    cells = []
    for target in targets:
        for precision in precisions:
            for size in sizes:
                for mode in modes:
                    cells.append(run_cell(config, target, mode, precision, size, warmup, iters))
                    if on_cell:
                        on_cell(cells[-1], record_for(config, cells, complete=False))
    return record_for(config, cells, complete=True)
