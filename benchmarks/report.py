"""Render every block of measured figures in README.md and benchmarks/README.md from the committed
JSON in benchmarks/results/, so that no figure is typed by hand.

    python -m benchmarks.report           # rewrite each <!-- report:NAME --> block in place
    python -m benchmarks.report --check   # exit 1 naming each block that is not what it renders

A block is the text between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; ``BLOCKS`` maps
each name to its README and the function that renders it (one function per table or paragraph).
Reads JSON only: no torch, nothing is measured here.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = "README.md"
BENCH_README = "benchmarks/README.md"
BLOCK = re.compile(r"<!-- report:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n?<!-- /report:(?P=name) -->", re.S)

# The default CartPole config (kernel/config.py), which the JSON does not record everywhere.
CARTPOLE_BATCH = 4 * 128  # env steps per iteration
CARTPOLE_GRAD_STEPS = 4 * 4  # epochs x minibatches per iteration
CARTPOLE_UPDATES = 500_000 // CARTPOLE_BATCH


@cache
def load(name: str) -> dict:
    """One JSON record under benchmarks/results/."""
    return json.loads((RESULTS / name).read_text())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def k(x: float) -> str:
    return f"{x / 1e3:.1f}k"


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def compiled_cells_sentence(cells: list[dict], breaks: str = "breaks") -> str:
    kinds = {(c["graphs"], c["graph_breaks"], c["recompiles"]) for c in cells if c["mode"] != "eager"}
    said = "; ".join(f"{g} graph{'s' * (g != 1)}, {b} {breaks}, {r} recompiles" for g, b, r in sorted(kinds))
    return f"Every compiled cell: {said}" if len(kinds) == 1 else f"Compiled cells: {said}"


# ---------------------------------------------------------------- CartPole (benchmarks/cartpole.py)

def _cartpole_rows(record: dict, process_wall: bool) -> list[list[str]]:
    rows = []
    for r in record["runs"]:
        solved = r["first_solved"] or {}
        row = [record["precision"], str(r["seed"]), f"{r['mean_return']:.1f}",
               f"{solved['env_steps']:,} steps" if solved else "never", f"{solved['run_s']:.1f} s" if solved else "-",
               f"{r['compile_s']:.1f} s", f"{r['run_s']:.1f} s", k(r["sps"])]
        rows.append(row + [f"{r['process_wall_s']:.1f} s"] * process_wall)
    return rows


def cartpole() -> str:
    return table(["precision", "seed", "final mean return (last 100 ep.)", "first mean >= 475 at", "run time to 475",
                  "compile (first call)", "run time, 500k steps", "SPS", "process wall"],
                 _cartpole_rows(load("cartpole.json"), process_wall=True))


def cartpole_low_precision() -> str:
    records = [load("cartpole-bf16.json"), load("cartpole-fp16.json")]
    rows = [row for record in records for row in _cartpole_rows(record, process_wall=False)]
    fp16 = records[1]["runs"]
    finite = "no NaN reached the params" if all(r["params_finite"] for r in fp16) else "params went non-finite"
    return (table(["precision", "seed", "final mean return", "first mean >= 475 at", "run time to 475", "compile",
                   "run time", "SPS"], rows)
            + f"\n\nfp16 skipped {sum(r['skipped_steps'] for r in fp16)} steps (non-finite gradients while its"
            f" dynamic loss scale settled); {finite}.\n\"Run time to 475\" counts from the end of compilation.")


def cleanrl() -> str:
    res = load("compare_cleanrl.json")["results"]
    names = {"cleanrl_style_eager": "CleanRL-style, eager", "fkernel_eager": "fkernel, eager (`--no-compile`)",
             "fkernel_compiled": "fkernel, compiled"}
    rows = [[label, f"{r['sps_wall']:,.0f}", f"{r['sps_cpu']:,.0f}", f"{r['sps_wall_vs_cleanrl']:.2f}x",
             f"{r['compile_s']:.1f} s (warm cache)" if r["compile_s"] else "-"] for label, r in
            ((names[name], r) for name, r in res.items())]
    fk = res["fkernel_compiled"]
    return (table(["variant", "env steps/s (wall)", "env steps/s (CPU time)", "vs CleanRL-style", "compile"], rows)
            + f"\n\nThe targets are >= 20x and >= 150k SPS; compiled fkernel is at {fk['sps_wall_vs_cleanrl']:.1f}x"
            f" and {k(fk['sps_wall'])} SPS here.\nWhere the time goes and what was tried is in \"Where the time"
            " goes\" below.")


def results_cartpole() -> str:
    runs = load("cartpole.json")["runs"]
    fk = load("compare_cleanrl.json")["results"]["fkernel_compiled"]
    return (
        "On this project's 2-core CPU, one thread, warm inductor cache (`python -m benchmarks.cartpole\n"
        "--seeds 0 1 2`, `results/cartpole.json`), the default 500k-step CartPole run trains to a mean"
        f" return of\n{span([r['mean_return'] for r in runs])} for every seed at"
        f" {span([r['sps'] / 1e3 for r in runs])}k env steps/s: {span([r['run_s'] for r in runs])} s of run"
        f" time after {span([r['compile_s'] for r in runs])} s of compilation,\nfirst reaching 475 after"
        f" {span([r['first_solved']['env_steps'] / 1e3 for r in runs], '{:.0f}k')} steps. Compiled fkernel"
        f" runs at {fk['sps_wall_vs_cleanrl']:.1f}x the env steps/s of a CleanRL-style\neager PPO on the same"
        " env (`python -m benchmarks.compare_cleanrl`, `results/compare_cleanrl.json`).")


def _sps_vs_rev(name: str) -> tuple[dict, str, str, str]:
    d = load(name)
    this, rev = d["median_sps"]["this tree"], d["median_sps"][d["rev"]]
    return d, k(this), k(rev), f"{d['ratio_this_over_rev']:.3g}"


def guards_sps() -> str:
    d, this, rev, ratio = _sps_vs_rev("sps_guards.json")
    every = [r["sps"] for runs in d["runs"].values() for r in runs]
    return (f"`python -m benchmarks.sps_against_revision --rev {d['rev']}` (`results/sps_guards.json`): default\n"
            "CartPole run, `fkernel train --threads 1`, warm caches, alternating"
            f" {len(d['runs']['this tree'])} runs each: median {this} env\n"
            f"steps/s against {rev} for the tensor-only-guard revision ({ratio}x; the runs spread"
            f" {span([s / 1e3 for s in every], '{:.0f}')}k on both\nsides).")


def train_state() -> str:
    d, this, rev, ratio = _sps_vs_rev("sps_train_state.json")
    return (f"`python -m benchmarks.sps_against_revision --rev {d['rev']} --json"
            " benchmarks/results/sps_train_state.json`:\n"
            f"the default `fkernel train --threads 1`, warm caches, {len(d['runs']['this tree'])} alternating runs"
            " each. Median steady env\n"
            f"steps/s: {this} for the typed state (explicit key split per iteration, `apply_if_finite`, learning\n"
            f"rate from the schedule on the device) against {rev} for the dict state at {d['rev']} (ratio {ratio}).")


def one_iteration() -> str:
    """The single-iteration kernel against the revision it was rewritten from, jobs side by side."""
    jobs = [("one run (default CartPole)", "sps_vs_start_one.json"),
            ("group of 8 runs", "sps_vs_start_group8.json"),
            ("group of 8 runs, an earlier run", "sps_vs_start_group8_7reps.json"),
            ("2 data-parallel processes", "sps_vs_start_dp2.json")]
    rows, rev, spread = [], "", 0.0
    for label, name in jobs:
        d = load(name)
        every = [r["sps"] for runs in d["runs"].values() for r in runs]
        spread = max(spread, max(every) / min(every) - 1)
        rev = d["rev"]
        sps, comp = d["median_sps"], d["median_compile_s"]
        rows.append([label, f"`{d['command'].removeprefix('fkernel train --threads 1 ')}`",
                     str(len(d["runs"]["this tree"])), k(sps["this tree"]), k(sps[rev]),
                     f"{d['ratio_this_over_rev']:.3f}x", f"{comp['this tree']:.1f} s", f"{comp[rev]:.1f} s",
                     f"{d['compile_ratio_this_over_rev']:.3f}x"])
    header = ["job", "flags", "runs", "env steps/s", f"at {rev}", "ratio", "compile", f"at {rev}", "ratio"]
    return (f"`python -m benchmarks.sps_against_revision --rev {rev} --reps RUNS --json ... -- FLAGS` for each\n"
            "row (`results/sps_vs_start_*.json`): `fkernel train --threads 1`, alternating fresh processes,\n"
            "RUNS timed runs per side after an untimed one that warms the shared inductor cache; medians.\n"
            f"Compile is the first (warm) iteration's seconds. Within one job, single runs spread by up to"
            f" {spread:.0%}.\n\n"
            + table(header, rows))


def pendulum() -> str:
    """Pendulum-v1 with its preset: the target, each seed's returns, steps and seconds."""
    d = load("pendulum.json")
    rows = []
    for r in d["runs"]:
        reached = r["first_reached_target"]
        first = "never" if reached is None else f"{reached['env_steps'] / 1e3:.0f}k steps, {reached['time_s']:.0f} s"
        rows.append([str(r["seed"]), f"{r['train_mean_return_last100']:.1f}", f"{r['eval_mean_return']:.1f}", first,
                     f"{r['env_steps'] / 1e3:.0f}k", f"{r['compile_s']:.0f} s", f"{r['run_s']:.0f} s",
                     k(r["sps"])])
    header = ["seed", "last 100 episodes", "greedy eval (100)", f"first at {d['target']:g}", "env steps", "compile",
              "run", "env steps/s"]
    return (f"`{d['command']}` (`results/pendulum.json`; one `fkernel train --preset pendulum` process per seed,\n"
            "then `fkernel eval` of its params, greedy, with the statistics the run ended with):\n\n"
            + table(header, rows))


# ---------------------------------------------------------------- MuJoCo (benchmarks/mujoco.py)

def mujoco_returns() -> str:
    """HalfCheetah and Hopper at --preset mujoco against CleanRL's published table."""
    d = load("mujoco.json")
    rows = []
    for env, row in d["envs"].items():
        if "returns" not in row:
            continue
        r, ref = row["returns"], d["cleanrl"][env]
        seeds = ", ".join(f"{s['train_mean_return_last100']:.0f}" for s in r["per_seed"])
        evals = ", ".join(f"{s['eval_mean_return_10']:.0f}" for s in r["per_seed"])
        floor = ref["mean"] - ref["std"]
        rows.append([env, f"{r['mean']:.1f} +- {r['std']:.1f}", seeds, evals,
                     f"{ref['mean']:.2f} +- {ref['std']:.2f} ({ref['env']})", f"{floor:.1f}",
                     "yes" if r["mean"] >= floor else "no", f"{r['wall_s'] / 60:.1f} min", f"{r['sps_wall']:.0f}"])
    header = ["env", "fkernel, mean +- std over seeds", "per seed (last 100 training episodes)",
              "per seed, greedy eval (10 episodes)", "CleanRL published", "target (mean - std)", "met",
              "wall, 3 seeds as one group", "env steps/s, the 3 together (whole process)"]
    return (f"`{d['command']}` (`benchmarks/results/mujoco.json`): {d['steps'] / 1e6:g}M steps per seed, seeds "
            f"{', '.join(map(str, d['seeds']))} trained as one vmapped group, `--threads {d['threads']}`. "
            "Mean +- std: population std over the seeds, of each seed's mean raw return over its last 100 "
            "training episodes.\n\n" + table(header, rows))


def mujoco_speed() -> str:
    """fkernel against the CleanRL-style baseline, and a group of 3 against the same 3 in turn."""
    d = load("mujoco.json")
    rows, ratios, long_ratios = [], [], []
    mean = lambda xs: sum(xs) / len(xs)
    for env, row in d["envs"].items():
        if "speed" not in row:
            continue
        base, one, group = row["speed"]["baseline"], row["speed"]["one_by_one"], row["speed"]["group"]
        base_sps = mean([r["sps"] for r in base])
        steady, whole = mean([r["sps_steady"] for r in one]), mean([r["sps_wall"] for r in one])
        seq_wall = sum(r["env_steps"] for r in one) / sum(r["wall_s"] for r in one)
        seq_steady = len(one) / sum(1 / r["sps_steady"] for r in one)
        ratios.append(steady / base_sps)
        long = row.get("one_run")
        if long:
            # against the baseline runs just before and after it where measured (the same window)
            brackets = [long[k]["sps"] for k in ("baseline_before", "baseline_after") if k in long]
            long_base = mean(brackets) if brackets else base_sps
            long_ratios.append(long["sps_wall"] / long_base)
        rows.append([env, f"{base_sps:.0f} ({span([r['sps'] for r in base], '{:.0f}')})",
                     f"{steady:.0f} ({steady / base_sps:.2f}x)", f"{whole:.0f} ({whole / base_sps:.2f}x)",
                     (f"{long['sps_wall']:.0f} ({long_ratios[-1]:.2f}x"
                      + (f" of {long_base:.0f}, the baseline just before and after it)" if brackets else ")"))
                     if long else "not measured",
                     f"{group['sps_steady']:.0f} vs {seq_steady:.0f} ({group['sps_steady'] / seq_steady:.2f}x)",
                     f"{group['sps_wall']:.0f} vs {seq_wall:.0f} ({group['sps_wall'] / seq_wall:.2f}x)"])
    header = ["env", "baseline env steps/s (range)", "fkernel, one run, after its first update",
              "fkernel, one run, whole process", f"fkernel, one run of {d['steps'] / 1e6:g}M steps, whole process",
              "group of 3 vs the 3 in turn, after the first update",
              "group of 3 vs the 3 in turn, whole processes"]
    over_long = (f" and {span(long_ratios, '{:.2f}')}x over a whole {d['steps'] / 1e6:g}M-step run"
                 if long_ratios else "")
    met = min(ratios + long_ratios) >= 2
    return (f"`{d['command']}`, {d['speed_steps'] / 1e3:.0f}k steps per run, every run a fresh process at "
            f"`--threads {d['threads']}`, one after another, the baseline and fkernel in turn. Baseline: "
            "`benchmarks/cleanrl_continuous.py` (its clock starts at the first reset, as CleanRL's does); both: the "
            "mean over seeds "
            f"{', '.join(map(str, d['seeds']))} (after the first update: the compile excluded; whole process: "
            "start-up and compile included). The run of the full length is the first seed alone, in the same "
            "benchmark run; where a baseline run of the speed length was measured just before and just after it, "
            "its ratio is to their mean (the same window of machine speed). Group figures are the runs' env steps "
            "together.\n\n"
            + table(header, rows)
            + f"\n\nThe target for one run is 2x the baseline's env steps/s: fkernel is at {span(ratios, '{:.2f}')}x "
            f"after its first update{over_long} ({'met' if met else 'not met'}). Machine time of the whole benchmark, "
            f"every phase one after the other, from the wall seconds of its runs: {mujoco_minutes(d)}.")


def mujoco_minutes(d: dict) -> str:
    """The benchmark's machine time by phase, summed from its runs' own wall seconds (a phase rerun
    with ``--add-to`` replaces its runs, so this is one pass of every phase; process start-up
    between runs and the greedy evaluations are left out)."""
    def runs(row: dict, phase: str) -> list:
        if phase == "returns":
            return [row["returns"]]
        if phase == "speed":
            return [*row["speed"]["baseline"], *row["speed"]["one_by_one"], row["speed"]["group"]]
        one = row["one_run"]
        return [one, *(one[k] for k in ("baseline_before", "baseline_after") if k in one)]

    phases = ("returns", "speed", "one_run")
    minutes = {ph: sum(r["wall_s"] for row in d["envs"].values() if ph in row for r in runs(row, ph)) / 60
               for ph in phases}
    return (f"{sum(minutes.values()):.0f} min ("
            + ", ".join(f"{ph.replace('_', ' ')} {m:.0f}" for ph, m in minutes.items()) + ")")


# ---------------------------------------------------------------- scaling (benchmarks/scaling.py)

def scaling() -> str:
    def ms(x: float) -> str:
        return f"{x:.1f} ms" if x < 1000 else f"{x / 1e3:.1f} s"

    rows = [[f"{r['num_envs']:,}", f"{r['batch']:,}", f"{r['minibatch_rows']:,}", f"{r['rollout_sps'] / 1e3:.0f}k",
             k(r["train_sps"]), ms(r["iteration_ms"]), f"{r['compile_s']:.1f} s"]
            for r in load("scaling.json")["by_num_envs"]]
    return table(["envs", "batch", "minibatch rows", "rollout env steps/s", "training env steps/s", "iteration",
                  "compile (warm cache)"], rows)


def scaling_raw() -> str:
    r = load("scaling.json")["raw_cartpole"]
    return (f"Raw batched CartPole ({r['num_envs']} envs, random actions, auto-reset, {r['num_steps']}-step segments,"
            f" same run):\neager Python loop {r['eager_sps'] / 1e6:.1f} M env steps/s; one compiled `scan` over the"
            f" segment with the noise drawn\nbeforehand {r['compiled_scan_sps'] / 1e6:.1f} M env steps/s"
            f" ({r['compiled_vs_eager']:.1f}x; compile {r['compile_s']:.1f} s). TORCH-NOTES measured a leaner"
            " CartPole step\nthat does less: fkernel's step also keeps the time-limit counter, truncation and the"
            " pre-reset\nobservation that bootstrapping needs.")


# ---------------------------------------------------------------- fkernel bench (cli/tools.py bench --json)

def _bench(record: dict) -> dict:
    return {(c["target"], c["mode"], c["precision"], c["size"]): c for c in record["cells"]}


def bench_cpu() -> str:
    record = load("bench-cpu.json")
    cells = _bench(record)
    rows = [[t, p, str(s), f"{c['median_ms']:.2f}", f"{cells[t, 'default', p, s]['median_ms']:.2f}",
             f"{cells[t, 'default', p, s]['speedup_vs_eager']:.2f}x"]
            for (t, mode, p, s), c in cells.items() if mode == "eager"]
    return (table(["target", "precision", "size", "eager ms", "compiled ms", "compiled vs eager"], rows)
            + f"\n\n{compiled_cells_sentence(record['cells'])}. Measured at {measured_at(record)}.")


def precision() -> str:
    record = load("bench-cpu.json")
    cells = _bench(record)
    ms = {(p, s): cells["update", "default", p, s]["median_ms"] for p in ("fp32", "bf16", "fp16") for s in (128, 2048)}
    rows = [[p, f"{ms[p, 128]:.2f} ms", f"{ms[p, 2048]:.2f} ms"] for p in ("fp32", "bf16", "fp16")]
    vs = {(p, s): f"{ms[p, s] / ms['fp32', s]:.2f}x" for p in ("bf16", "fp16") for s in (128, 2048)}
    returns = [r["mean_return"] for f in ("cartpole", "cartpole-bf16", "cartpole-fp16")
               for r in load(f"{f}.json")["runs"]]
    return (table(["precision", "update step, 128 rows", "update step, 2048 rows"], rows)
            + f"\n\nOn this CPU (measured at {measured_at(record)}), the compiled bf16 update step takes"
            f" {vs['bf16', 128]} fp32's time at 128 rows and {vs['bf16', 2048]} at 2048; fp16 takes"
            f" {vs['fp16', 128]} and {vs['fp16', 2048]} (no native fp16 matmul). On an H200 all three"
            " cost about the same (launch-bound; `benchmarks/README.md`). CartPole trains to a mean return of"
            f" {span(returns)} under all three (`results/cartpole*.json`, see `benchmarks/README.md`).")


def cuda_bench() -> str:
    records = [load(f"cuda/bench-cuda-{p}.json") for p in ("fp32", "bf16", "fp16")]
    all_cells = [c for r in records for c in r["cells"] if c["target"] == "update"]
    cells = {(c["mode"], c["precision"], c["size"]): c for c in all_cells}
    rows = []
    for (mode, p, s), eager in cells.items():
        if mode != "eager":
            continue
        d, ro = cells["default", p, s], cells["reduce-overhead", p, s]
        rows.append([p, str(s), f"{eager['median_ms']:.2f}", f"{d['median_ms']:.2f} ({d['compile_s']:.1f} s)",
                     f"{ro['median_ms']:.2f} ({ro['compile_s']:.1f} s)", f"{d['speedup_vs_eager']:.1f}x",
                     f"{ro['speedup_vs_eager']:.1f}x"])

    def by_mode(key: str, mode: str, fmt: str) -> str:
        return span([c[key] for c in all_cells if c["mode"] == mode], fmt)

    return (table(["precision", "rows", "eager ms", "default ms (compile)", "reduce-overhead ms (compile)",
                   "default vs eager", "reduce-overhead vs eager"], rows)
            + f"\n\n{compiled_cells_sentence(all_cells, 'graph breaks')}; peak CUDA memory"
            f" {by_mode('peak_mem_mb', 'eager', '{:.0f}')} MB eager,\n{by_mode('peak_mem_mb', 'default', '{:.0f}')}"
            f" MB default, {by_mode('peak_mem_mb', 'reduce-overhead', '{:.0f}')} MB reduce-overhead. At PPO's sizes"
            " a GPU step is launch-bound: eager\nruns hundreds of tiny kernels"
            f" ({by_mode('median_ms', 'eager', '{:.1f}')} ms), inductor fuses them"
            f" ({by_mode('median_ms', 'default', '{:.1f}')} ms), and CUDA graphs\n(`reduce-overhead`) replay the"
            f" whole step as one launch ({by_mode('median_ms', 'reduce-overhead', '{:.2f}')} ms), whatever the"
            " precision.")


# ---------------------------------------------------------------- seedbed (benchmarks/seedbed.py)

def seedbed() -> str:
    d = load("seedbed.json")
    seeds = sorted({r["seed"] for r in d["runs"]})
    cell = {(r["policy"], r["seed"]): f"{r['mean']:.2f} +- {r['std']:.2f}" for r in d["runs"]}
    means = {p: m["mean"] for p, m in d["mean_over_seeds"].items()}
    rows = [[p, *(cell[p, s] for s in seeds), f"{m:.2f}"] for p, m in means.items()]
    trained = [r for r in d["runs"] if "op_decision_fraction" in r]
    fractions = [f for r in trained for f in r["op_decision_fraction"].values()]
    dead = sum(counts.get("dead", 0) for r in trained for counts in r["grad_status_counts"].values())
    return (table(["policy", *(f"seed {s}" for s in seeds), "mean over seeds"], rows)
            + "\n\nAveraging over decisions rather than relevant steps made no difference beyond the spread between\n"
            f"seeds (LSTM {means['lstm-sampled']:.2f} vs {means['lstm-avg-relevant-sampled']:.2f},"
            f" MLP {means['mlp-sampled']:.2f} vs {means['mlp-avg-relevant-sampled']:.2f}). Over every update"
            " after the first of every run,\nthe fraction of batch steps where the op head had a real decision"
            f" stayed between {min(fractions):.2f} and {max(fractions):.2f}\n(the high end is early training, when"
            " the untrained policy keeps slots open), and the live view's\nclassification gave"
            f" {dead or 'no'} `dead` row{'s' * (dead != 1)} in any update of any run (`grad_status_counts` in the"
            " JSON).")


# ---------------------------------------------------------------- morpho (benchmarks/morpho.py)

def _morpho_controllers() -> list[tuple[str, dict]]:
    d = load("morpho.json")
    labels = {"crippled host (wait)": "crippled host alone (WAIT)", "random": "uniform random valid actions",
              "heuristic": "scripted heuristic"}
    return [*((labels[name], r) for name, r in d["baselines"].items()),
            ("trained LSTM policy, greedy", d["trained"]["greedy"]),
            ("trained LSTM policy, sampled", d["trained"]["sampled"])]


def morpho_controllers() -> str:
    def accuracy(r: dict) -> str:
        return f"{r['mean']:.1f}% ({', '.join(f'{x:.1f}' for x in r['per_round'])})"

    rows = [[label, accuracy(r["final_val_acc"]), f"{r['final_gain']['mean']:+.1f}", f"{r['return']['mean']:.2f}"]
            for label, r in _morpho_controllers()]
    d = load("morpho.json")
    t, curve = d["trained"], {c["update"]: c["mean_return"] for c in d["trained"]["curve"]}
    said = ", ".join(f"{curve[u]:.2f} after {u}" for u in (10, 20) if u in curve)
    return (table(["controller", "final accuracy", "gain (points)", "return"], rows)
            + f"\n\nThe policy trained with `Config.for_env(\"morpho\", total_steps={t['total_steps']})`:"
            f" {t['updates']} updates of {d['envs']} envs x {d['episode_epochs']}\nsteps in"
            f" {t['train_seconds']:.0f} s, {t['precision']}, {t['skipped_steps'] or 'no'} skipped steps. Its mean"
            f" training return was {curve[1]:.2f} after the first\nupdate, {said} and {curve[max(curve)]:.2f} after"
            f" {max(curve)}. A plain three-layer CNN trained on the\nsame generator's images (2048 training, 512"
            f" validation, 6 epochs) reaches {d['plain_cnn_val_acc']:.1f}%, so the task\nleaves room above what the"
            f" grown hosts reach in {d['episode_epochs']} epochs. Peak RSS of the benchmark process:\n"
            f"{d['peak_rss_mib']:.0f} MiB.")


def _morpho_throughput(record: dict) -> list[list[str]]:
    rows = []
    default = record["batch_size"] == 32  # the env's default minibatch
    for name, r in record["throughput"].items():
        v, loop = r["host_epochs_per_s"]["vmapped"], r["host_epochs_per_s"]["python loop"]
        seconds = r["epoch_seconds"]
        rows.append([name.replace(" hosts", "").replace("hosts ", ""),
                     f"{record['batch_size']}" + " (default)" * default,
                     f"{v:.1f} host-epochs/s" + f" ({seconds['vmapped']:.2f} s)" * default,
                     f"{loop:.1f}" + f" ({seconds['python loop']:.2f} s)" * default, f"{r['ratio']:.1f}x"])
    return rows


def morpho_host_throughput() -> str:
    rows = [row for f in ("morpho.json", "morpho_throughput_batch128.json")
            for row in _morpho_throughput(load(f))]
    return table(["hosts", "minibatch", "vmapped", "Python loop", "ratio"], rows)


def morpho_compile() -> str:
    cold, warm = load("morpho_compile_cold.json")["compile"], load("morpho_compile_warm.json")["compile"]
    return (f"- compile time: {cold['compile_s']:.0f} s cold, {warm['compile_s']:.0f} s warm, for one set of"
            " blueprints in use;\n"
            f"- epoch time: {cold['compiled']['epoch_s']:.2f} s and {warm['compiled']['epoch_s']:.2f} s compiled,"
            f" against {cold['eager']['epoch_s']:.2f} s and {warm['eager']['epoch_s']:.2f} s eager in the same runs.")


def morpho_iteration_bench() -> str:
    d = load("morpho_iteration.json")
    s = d["iteration_seconds"]
    return ("Where an iteration's time goes (`--only iteration --repeats 3`, `results/morpho_iteration.json`,\n"
            f"median): collecting {d['episode_epochs']} steps of {d['envs']} envs takes {s['collect']:.1f} s and the"
            f" eager policy update {s['update']:.2f} s.")


# ---------------------------------------------------------------- sound guards (benchmarks/configs_in_one_process.py)

def configs_in_one_process() -> str:
    rows = []
    for which, rev in (("before", "cd97aab (tensor-only guards)"), ("after", "now")):
        d = load(f"configs_in_one_process-{which}.json")
        graphs = f"{rev}: {d['graphs_compiled']} graph{'s' * (d['graphs_compiled'] != 1)} compiled"
        rows += [[graphs, c["config"], f"{c['loss_compiled']:.6f}", f"{c['loss_eager']:.6f}",
                  f"{c['max_abs_param_diff']:.1e}"] for c in d["configs"]]
    return table(["revision", "configuration", "compiled loss", "eager loss", "max abs param diff after one step"],
                 rows)


# ---------------------------------------------------------------- many runs (benchmarks/many_runs.py)

def many_runs_bench() -> str:
    rows = [[str(r["runs"]), k(r["vmapped_sps"]), k(r["sequential_sps"]), f"{r['ratio_vmapped_over_sequential']:.2f}x",
             f"{r['first_iteration_s']:.1f} s"] for r in load("many_runs.json")["rows"]]
    return table(["runs", "vmapped", "one after another", "ratio", "group's first iteration (warm cache)"], rows)


def many_runs() -> str:
    rows = load("many_runs.json")["rows"]
    one = next(r for r in rows if r["runs"] == 1)
    big = [r for r in rows if r["runs"] > 8]
    groups = [r["first_iteration_s"] for r in rows if r["runs"] > 1]
    levels = ", ".join(f"{k(r['vmapped_sps'])} at {r['runs']} runs" for r in big)
    return (table(["runs", "vmapped", "one after another", "ratio"],
                  [[str(r["runs"]), k(r["vmapped_sps"]), k(r["sequential_sps"]),
                    f"{r['ratio_vmapped_over_sequential']:.2f}x"] for r in rows])
            + "\n\nBeyond 8 runs the grad step is bound by its batched matmuls and the per-step gradient statistics,\n"
            f"so throughput levels off ({levels})"
            f" on one core.\nThe first iteration of a group of several runs takes {span(groups)} s even with a warm"
            " inductor cache\n(dynamo traces the vmapped grad step before the cache can answer), against"
            f" {one['first_iteration_s']:.1f} s for a group of one.")


# ---------------------------------------------------------------- distributed (benchmarks/distributed_scaling.py)

def _distributed() -> tuple[list[dict], float, float]:
    rows = load("distributed_scaling.json")["rows"]
    one, two = (CARTPOLE_BATCH / rows[0]["median_sps"][n] * 1e3 for n in ("1", "2"))  # ms per iteration
    return rows, one, (two - one) / CARTPOLE_GRAD_STEPS


def distributed_bench() -> str:
    rows, one, per_step = _distributed()
    labels = {"default (4 envs)": "default CartPole (4 envs in all, 500k steps)", "64 envs": "64 envs, 2M steps"}
    table_rows = [[labels.get(r["job"], r["job"]), k(r["median_sps"]["1"]), k(r["median_sps"]["2"]),
                   f"{r['ratio']:.2f}x"] for r in rows]
    returns = [{run["mean_return"] for run in r["runs"]["2"]} for r in rows]
    same = "the same results as each other" if all(len(s) == 1 for s in returns) else "different results"
    two = rows[0]["median_sps"]["2"]
    return (table(["job", "1 process", "2 processes", "ratio"], table_rows)
            + f"\n\nBoth two-process jobs trained to {same} (mean return"
            f" {' and '.join(f'{max(s):.1f}' for s in returns)}).\nEach minibatch step all-reduces ~9k gradient"
            " floats plus the loss; with gloo between two\nprocesses on the two cores this costs about"
            f" {per_step:.1f} ms per step (from the default job's per-iteration\ntime,"
            f" {CARTPOLE_BATCH / two * 1e3:.0f} ms against {one:.1f} ms for {CARTPOLE_GRAD_STEPS} steps).")


def distributed() -> str:
    rows, one, per_step = _distributed()
    a, b = rows
    d = load("distributed_scaling.json")
    return (f"On a {d['cpus']}-core AMD EPYC VM (torch {d['torch'].split('+')[0]}) data parallelism does not pay"
            " for CartPole's small network\n"
            "(`python -m benchmarks.distributed_scaling`, `benchmarks/results/distributed_scaling.json`, one\n"
            f"thread per process, warm cache, median of {len(a['runs']['1'])}): the default 4-env job trains at"
            f" {k(a['median_sps']['1'])} env steps/s\nin one process and {k(a['median_sps']['2'])} in two"
            f" ({a['ratio']:.2f}x: every minibatch step waits for a gloo all-reduce, about\n{per_step:.1f} ms here,"
            f" while a whole one-process iteration of {CARTPOLE_GRAD_STEPS} steps takes\n{one:.1f} ms), a 64-env job"
            f" at {k(b['median_sps']['1'])} and {k(b['median_sps']['2'])} ({b['ratio']:.2f}x). It is for networks"
            " and envs whose steps\ncost more than the exchange, and for several GPUs.")


# ---------------------------------------------------------------- fused iteration (benchmarks/fused.py)

def _fused_break_even() -> dict[str, int]:
    """Updates from which fusing pays on CPU, from the figures as the tables show them (the same
    arithmetic as ``kernel.plan.fuse_choice`` over a machine's own records)."""
    d = load("fused_speed_compile.json")
    out = {}
    for env, s in d["speed"].items():
        per_it = s["seconds_per_iteration"]
        warm = {path: round(d["compile"][f"{env}: {path}"]["warm"]["first_iteration_s"], 1)
                for path in ("unfused", "fused")}
        extra = warm["fused"] - warm["unfused"]
        shown = {path: float(f"{per_it[path]:.3g}") for path in ("unfused", "fused")}
        out[env] = round(extra / (shown["unfused"] - shown["fused"]))
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def fused_speed() -> str:
    rows = []
    for env, s in load("fused_speed_compile.json")["speed"].items():
        per_it, sps, c = s["seconds_per_iteration"], s["env_steps_per_s"], s["config"]
        name = "CartPole" if env == "cartpole" else "seedbed LSTM"
        rows.append([f"{name} ({c['num_envs']} envs x {c['num_steps']} steps)", _ms(per_it["eager"]),
                     *(f"{_ms(per_it[path])} ({k(sps[path])} env steps/s)" for path in ("unfused", "fused")),
                     f"{s['fused_over_unfused']:.2f}x"])
    return table(["", "eager", "compiled, unfused", "compiled, fused", "fused / unfused"], rows)


FORMULATIONS = {"unfused": "unfused (rollout scan, GAE, 16 grad-step calls)",
                "fused": "fused, C++ wrapper, wrapper and kernels built separately (the default)",
                "fused, wrapper and kernels in one C++ unit": "fused, C++ wrapper as one C++ unit",
                "fused, Python wrapper": "fused, Python wrapper"}


def fused_compile() -> str:
    compile_s = load("fused_speed_compile.json")["compile"]

    def cold_warm(env: str, name: str) -> str:
        r = compile_s.get(f"{env}: {name}")
        return f"{r['cold']['first_iteration_s']:.1f} / {r['warm']['first_iteration_s']:.1f} s" if r else ""

    rows = [[label, cold_warm("cartpole", name), cold_warm("seedbed", name),
             f"{compile_s[f'cartpole: {name}']['cold']['iteration_s'] * 1e3:.1f} ms"]
            for name, label in FORMULATIONS.items()]
    return table(["formulation", "CartPole cold / warm", "seedbed cold / warm", "CartPole s per iteration"], rows)


def _whole() -> dict[str, dict]:
    return load("fused_whole.json")["whole"]


def fused_whole() -> str:
    rows = []
    for name, runs in _whole().items():
        run, mode = name.split(", compile ", 1)

        def cell(r: dict) -> str:
            auto = re.match(r"compile auto: (\w+)", r["auto"] or "")
            return (f"{r['wall_s']:.1f} s ({r['compile_s']:.1f} + {r['run_s']:.1f})"
                    + (f" auto: {auto[1]}" if auto else ""))

        last = runs.get("warm", runs["cold"])
        rows.append([run, mode, cell(runs["cold"]), cell(runs["warm"]) if "warm" in runs else
                     "(same: nothing to compile)", f"{last['peak_rss_mb']:.0f} MiB", f"{last['mean_return']:.1f}"])
    header = ["run", "compile", "cold cache: wall (compile + run)", "warm cache: wall (compile + run)", "peak RSS",
              "mean return"]

    whole, right, cases, eager = _whole(), 0, 0, {}
    for name, runs in whole.items():
        if not name.endswith("compile auto"):
            continue
        base = name[: -len("auto")]
        for state, r in runs.items():
            chose_on = r["auto"].startswith("compile auto: on")
            right += chose_on == (whole[base + "on"][state]["wall_s"] < whole[base + "off"]["cold"]["wall_s"])
            cases += 1
            env = name.split()[0]
            eager[env] = max(eager.get(env, 0.0), 2 * float(re.search(r"\(([\d.]+) ms eager", r["auto"])[1]) / 1e3)
    verdict = f"In all {cases} cases" if right == cases else f"In {right} of {cases} cases"
    return (table(header, rows)
            + f"\n\n{verdict} `auto` chose the faster of compiling and not compiling. Its two eager\n"
            f"iterations cost up to {eager['cartpole']:.2f} s for CartPole and {eager['seedbed']:.2f} s for seedbed.")


def fused_auto_line() -> str:
    line = _whole()["cartpole default (500000 steps), compile auto"]["cold"]["auto"]
    return f"It prints one line with every number it used, for example (from the run in the table below)\n`{line}`."


def fused_break_even() -> str:
    be = _fused_break_even()
    stays = "unfused" if CARTPOLE_UPDATES < be["cartpole"] else "fused"
    return ("`--fuse/--no-fuse` force either. The default (`fuse: auto`) fuses on CUDA, and on CPU only runs\n"
            "long enough for its faster iterations to pay for its longer compile: measured below, that is from\n"
            f"~{be['cartpole']} updates on for CartPole and ~{be['seedbed']} for seedbed, so the default 500k-step"
            f" CartPole run stays\n{stays}. Groups of runs (`--seeds`, `--sweep`), data-parallel ranks and envs that"
            " step in Python\n(morpho) always train unfused. `fkernel train` prints which path it took and why.")


def fused_summary() -> str:
    d = load("fused_speed_compile.json")
    s, c = d["speed"], d["compile"]

    def pair(key: str, state_key: str = "first_iteration_s") -> str:
        return f"{c[key]['cold'][state_key]:.1f} / {c[key]['warm'][state_key]:.1f} s"

    def per_it(env: str, path: str) -> str:
        return _ms(s[env]["seconds_per_iteration"][path])

    be = _fused_break_even()
    p = load("fused_preset_cpu.json")["preset"]
    summary, config = p["summary"], p["config"]
    updates = config["total_steps"] // (config["num_envs"] * config["num_steps"])
    fuses = updates >= be["cartpole"]
    one_unit, python = (c[f"cartpole: {name}"] for name in list(FORMULATIONS)[2:])
    return (
        "- Steady seconds per iteration, fused vs unfused, alternating blocks in one process: CartPole\n"
        f"  {per_it('cartpole', 'fused')} vs {per_it('cartpole', 'unfused')}"
        f" ({s['cartpole']['fused_over_unfused']:.2f}x), seedbed {per_it('seedbed', 'fused')} vs"
        f" {per_it('seedbed', 'unfused')} ({s['seedbed']['fused_over_unfused']:.2f}x); eager"
        f" {per_it('cartpole', 'eager')} and {per_it('seedbed', 'eager')}.\n"
        "- Compile (first iteration, own process, cold / warm cache): CartPole unfused"
        f" {pair('cartpole: unfused')}, fused\n  {pair('cartpole: fused')}; seedbed unfused"
        f" {pair('seedbed: unfused')}, fused {pair('seedbed: fused')}. The fused graph built as one\n"
        f"  C++ unit took {pair('cartpole: fused, wrapper and kernels in one C++ unit')}"
        f" ({one_unit['cold']['iteration_s'] * 1e3:.1f} ms per iteration), with the Python wrapper"
        f" {pair('cartpole: fused, Python wrapper')} ({python['cold']['iteration_s'] * 1e3:.1f} ms\n"
        "  per iteration: Python runs both loops).\n"
        f"- So on CPU fusing pays only for long runs (CartPole from ~{be['cartpole']} updates, seedbed from"
        f" ~{be['seedbed']}) on this\n  machine; `fuse: auto` makes the same comparison from each machine's own records"
        " (`kernel/plan.py`).\n"
        f"- `--preset cartpole-gpu` on this CPU (torch's default threads, {'fused' if fuses else 'unfused'}"
        f" because its {updates} updates are\n  {'above' if fuses else 'below'} the break-even):"
        f" the rolling mean return first reached 475 at update {summary['first_solved']['update']}"
        f" ({summary['first_solved']['env_steps'] / 1e6:.2f}M env steps,\n  {summary['first_solved']['run_s']:.1f} s"
        f" of run time), {summary['mean_return']:.1f} at the end of {config['total_steps'] / 1e6:.0f}M steps;"
        f" {summary['sps'] / 1e3:.0f}k env steps/s; {p['wall_s']:.1f} s of\n  process wall time with a"
        f" {summary['compile_s']:.1f} s compile.")


# ---------------------------------------------------------------- benchmarks/second_build.py

def measured_at(record: dict) -> str:
    """Where a record says it was measured (commit, torch, threads, date), as a phrase."""
    m = record.get("measured")
    return f"commit {m['commit']}, torch {m['torch']}, {m['threads']} thread(s), {m['date']}" if m else "not recorded"


def second_build() -> str:
    d = load("second_build.json")
    rows = [[case, _ms(c["iteration_s"]), ", ".join(_ms(x) for x in c["runs_s"]), f"{c['ratio_to_alone']:.2f}x"]
            for case, c in d["cases"].items()]
    return (table(["B built", "median s per iteration", "each process", "vs alone"], rows)
            + f"\n\n{d['repeats']} processes per case, alternating, {d['iterations']} iterations each (medians of"
            f" blocks of 10); measured at {measured_at(d)}.")


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def first_run(name: str = "first_run.json") -> str:
    """Each fresh process of the first-run benchmark, and the ratios it asks for."""
    d = load(name)
    names = {"auto": "auto (tiered)", "on": "--compile on", "off": "--no-compile",
             "start-on": f"{d['start_commit']} --compile on", "start-off": f"{d['start_commit']} --no-compile"}
    rows = [[workload, names[mode], cache, *cells]
            for (workload, mode, cache), cells in first_run_cells(d["runs"]).items()]
    lines = []
    for workload, w in d["ratios"].items():
        parts = []
        for state in ("cold", "warm"):
            c = w[state]
            if c["auto_over_on"] is not None:
                vs_start = (f", {c['auto_over_start_on']:.2f}x {d['start_commit']}'s --compile on"
                            if c["auto_over_start_on"] is not None else "")
                gaps = [r["longest_gap_s"] for r in d["runs"] if (r["workload"], r["mode"], r["cache"]) ==
                        (workload, "auto", state) and r["longest_gap_s"] is not None]
                worst = f", {_s(max(gaps))} s at most" if d["repeats"] > 1 and gaps else ""
                parts.append(f"{state} cache: auto's whole process {c['auto_over_on']:.2f}x --compile on's{vs_start}, "
                             f"longest gap {_s(c['auto_longest_gap_s'])} s{worst} "
                             f"(--compile on: {_s(c['on_longest_gap_s'])} s)")
        e = w["eager_sps"]
        if e["off_over_start_off"] is not None:
            parts.append(f"eager steady speed {e['off_over_start_off']:.2f}x {d['start_commit']}'s --no-compile")
        if parts:
            lines.append(f"- {workload}: " + "; ".join(parts) + ".")
    on = [r["steady_sps"] for r in d["runs"] if (r["workload"], r["mode"]) == ("default", "on") and r["steady_sps"]]
    spread = (f" Steady speed is over the last quarter of the updates (a group: one run's steps); {len(on)} runs of "
              f"the same compiled code (default, --compile on) gave {k(min(on))} to {k(max(on))}, so single runs' "
              f"steady speeds and the whole-process times that include them differ by that much.") if on else ""
    repeated = d["repeats"] > 1
    cells = (" Each cell is the median over the repeats (of an even number, the higher middle one); whole "
             "seconds add the range, longest gaps the largest." if repeated else "")
    return (table(["workload", "mode", "cache", "whole s", "first update s", "longest gap s", "longest gap after "
                   "the first s", "steady steps/s", "switch update"], rows)
            + "\n\n" + "\n".join(lines) + "\n\n" + spread.strip() + cells
            + f"\n\n{d['repeats']} run(s) of each, one at a time, each a fresh process at --threads 1"
            + (", the repeats one after another over every workload and mode" if repeated else "")
            + (f" with {d['extra']}" if d.get("extra") else "") + f"; measured at {measured_at(d)}.")


def first_run_cells(runs: list) -> dict:
    """The table's cells per (workload, mode, cache), in the order first run: one run's figures,
    or over repeats the median (the benchmark's own rule), whole seconds with their range and
    gaps with their largest."""
    grouped: dict = {}
    for r in runs:
        grouped.setdefault((r["workload"], r["mode"], r["cache"]), []).append(r)

    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    def cell(rs, key, extra=None):
        values = [r[key] for r in rs]
        m = median(values)
        if m is None or len(rs) == 1 or extra is None:
            return m
        return m, extra([v for v in values if v is not None])

    out = {}
    for key, rs in grouped.items():
        whole, first = cell(rs, "whole_s", lambda v: (min(v), max(v))), cell(rs, "first_update_s")
        gap, after = cell(rs, "longest_gap_s", max), cell(rs, "longest_gap_after_first_s", max)
        sps, switch = cell(rs, "steady_sps"), [r["switch_update"] for r in rs if r["switch_update"] is not None]
        gaps = (_s(g) if not isinstance(g, tuple) else f"{_s(g[0])} ({_s(g[1])})" for g in (gap, after))
        out[key] = [_s(whole) if not isinstance(whole, tuple) else f"{_s(whole[0])} ({span(list(whole[1]))})",
                    _s(first), *gaps, k(sps) if sps else "-", span(switch, "{:.0f}") if switch else "-"]
    return out


def compile_in_thread() -> str:
    """Eager updates beside a compile in a thread: on an empty cache and on the cache it filled."""
    runs = [("empty", "compile_in_thread.json"), ("empty", "compile_in_thread_switch2e-4.json"),
            ("filled by one empty-cache run", "compile_in_thread_warm.json"),
            ("filled by one empty-cache run", "compile_in_thread_warm_switch1e-5.json")]
    rows, dates = [], []
    for where, name in runs:
        d = load(name)
        rows.append([where, f"{d['switch_interval_s']:g}", _s(d["compile_ended_s"]), str(d["eager_updates"]),
                     _s(d["longest_gap_s"])])
        dates.append(f"`{name}`: {measured_at(d)}")
    return (table(["inductor cache", "GIL switch interval s", "compile in the thread s", "eager updates meanwhile",
                   "longest gap between two updates s"], rows)
            + "\n\nOne run of each; measured at " + "; ".join(dates) + ".")


def switch_check() -> str:
    """The switch check's gaps over a whole run, and what the wrong variants give."""
    d = load("switch_check.json")
    agreed = sum(c["agreed"] for c in d["checks"])
    big = d["largest_right"]
    kinds = [kind for kind in ("rollout", "update", "state", "output") if kind in big]
    rows = [[v["variant"], str(v["update"]), "caught" if v["agreed"] is False else "missed",
             *(f"{v['largest_gap'][kind][0]:.1e}" for kind in kinds)] for v in d["wrong"]]
    gaps = ", ".join(f"{kind} {big[kind][0]:.1e} ({big[kind][1]})" for kind in kinds)
    allowed = d.get("allowed", {})
    return (f"The right compiled stages: {agreed} of {len(d['checks'])} checks agreed (every {d['every']}th update of "
            f"{d['config']}); largest gaps: {gaps}.\n\n"
            + table(["wrong variant", "update", "verdict", *(f"largest {kind} gap" for kind in kinds)], rows)
            + (f"\n\nAllowed (kernel.agree.AT_SWITCH, float32): update {allowed['update']:.0e}, state "
               f"{allowed['state']:.0e}, output {allowed['output']:.0e}"
               + (" (the rollout's floating leaves as outputs; its integer and boolean leaves exactly)"
                  if "rollout" in big else "") + "; the verdicts are against these." if allowed else "")
            + f"\n\nMeasured at {measured_at(d)}.")


def compile_seconds(name: str = "compile_seconds.json", imports_moved: bool = True) -> str:
    """Each env's cold and warm compile seconds, this tree against the revision, side by side
    (``imports_moved``: the revision imported the compiler before its timer started)."""
    d = load(name)
    rev, ratios = d["rev"], d["compile_ratio_this_over_rev"]
    rows = []
    for env, by in d["runs"].items():
        for state in ("cold", "warm"):
            old, new = by[rev][state], by["this tree"][state]
            rows.append([env, state, _s(old["compile_s"]), _s(new["compile_s"]), f"{ratios[env][state]:.2f}x",
                         _s(old["wall_s"]), _s(new["wall_s"]), f"{new['wall_s'] / old['wall_s']:.2f}x"])
    return (table(["env (default config)", "cache", f"compile s: {rev}", "compile s: this tree", "ratio",
                   f"process s: {rev}", "process s: this tree", "ratio"], rows)
            + "\n\nCompile seconds: the first, compiled iteration (`compile_s` in the summary): dynamo's trace,"
            " inductor's code generation and the C++ compiler"
            + (f", and in this tree also importing them, which {rev} did before its timer started; the whole"
               " process's seconds count both the same way" if imports_moved else "") + ". "
            + (f"Medians of {d['repeats']} runs of each (each repeat on fresh caches)" if d.get("repeats", 1) > 1
               else "One run of each")
            + ", a fresh process at --threads 1 over two batches, the two trees alternating env by env;"
            f" measured at {measured_at(d)}.")


def eager_speed() -> str:
    d, this, rev, ratio = _sps_vs_rev("eager_against_start.json")
    every = {name: ", ".join(k(r["sps"]) for r in runs) for name, runs in d["runs"].items()}
    return (f"`python -m benchmarks.sps_against_revision --rev {d['rev']} --reps {len(d['runs']['this tree'])} --"
            " --no-compile --total-steps 51200` (`results/eager_against_start.json`): median "
            f"{this} env steps/s against {rev} for {d['rev']}'s `--no-compile` ({ratio}x). Each run: "
            f"{every['this tree']} (this tree); {every[d['rev']]} ({d['rev']}). Measured at {measured_at(d)}.")


# ---------------------------------------------------------------- the registry, and rewriting the READMEs

BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "many-runs": (README, many_runs),
    "distributed": (README, distributed),
    "precision": (README, precision),
    "results-cartpole": (README, results_cartpole),
    "cartpole": (BENCH_README, cartpole),
    "cartpole-low-precision": (BENCH_README, cartpole_low_precision),
    "cleanrl": (BENCH_README, cleanrl),
    "scaling": (BENCH_README, scaling),
    "scaling-raw": (BENCH_README, scaling_raw),
    "bench-cpu": (BENCH_README, bench_cpu),
    "cuda-bench": (BENCH_README, cuda_bench),
    "seedbed": (BENCH_README, seedbed),
    "morpho-controllers": (BENCH_README, morpho_controllers),
    "morpho-host-throughput": (BENCH_README, morpho_host_throughput),
    "morpho-iteration-bench": (BENCH_README, morpho_iteration_bench),
    "morpho-compile": (BENCH_README, morpho_compile),
    "configs-in-one-process": (BENCH_README, configs_in_one_process),
    "guards-sps": (BENCH_README, guards_sps),
    "fused-summary": (BENCH_README, fused_summary),
    "fused-auto-line": (BENCH_README, fused_auto_line),
    "fused-break-even": (BENCH_README, fused_break_even),
    "fused-speed": (BENCH_README, fused_speed),
    "fused-compile": (BENCH_README, fused_compile),
    "fused-whole": (BENCH_README, fused_whole),
    "train-state": (BENCH_README, train_state),
    "many-runs-bench": (BENCH_README, many_runs_bench),
    "distributed-bench": (BENCH_README, distributed_bench),
    "second-build": (BENCH_README, second_build),
    "one-iteration": (BENCH_README, one_iteration),
    "pendulum": (README, pendulum),
    "mujoco-returns": (README, mujoco_returns),
    "mujoco-speed": (README, mujoco_speed),
    "first-run": (README, first_run),
    "first-run-default": (BENCH_README, lambda: first_run("first_run_default.json")),
    "first-run-turns": (BENCH_README, lambda: first_run("first_run_turns.json")),
    "first-run-86a5cf4": (BENCH_README, lambda: first_run("first_run_86a5cf4.json")),
    "first-run-6691a38": (BENCH_README, lambda: first_run("first_run_6691a38.json")),
    "first-run-c7e69ae": (BENCH_README, lambda: first_run("first_run_c7e69ae.json")),
    "first-run-cda946a": (BENCH_README, lambda: first_run("first_run_cda946a.json")),
    "first-run-128c151": (BENCH_README, lambda: first_run("first_run_128c151.json")),
    "first-run-again": (BENCH_README, lambda: first_run("first_run_again.json")),
    "first-run-128c151-again": (BENCH_README, lambda: first_run("first_run_128c151_again.json")),
    "compile-seconds": (BENCH_README, compile_seconds),
    "compile-in-process": (BENCH_README, lambda: compile_seconds("compile_seconds_in_process.json", False)),
    "compile-isa": (BENCH_README, lambda: compile_seconds("compile_seconds_isa.json", False)),
    "eager-speed": (BENCH_README, eager_speed),
    "switch-check": (BENCH_README, switch_check),
    "compile-in-thread": (BENCH_README, compile_in_thread),
}


def render(text: str, readme: str) -> str:
    """``text`` (the contents of ``readme``) with every registered block replaced by its rendering."""
    def fill(m: re.Match) -> str:
        entry = BLOCKS.get(m["name"])
        if entry is None or entry[0] != readme:
            return m[0]
        return f"<!-- report:{m['name']} -->\n{entry[1]()}\n<!-- /report:{m['name']} -->"

    return BLOCK.sub(fill, text)


def differences(texts: Mapping[str, str]) -> list[str]:
    """One line per block that is missing, unknown, or not what it renders today; ``texts`` maps each
    README path (``README``, ``BENCH_README``) to its contents."""
    found = {readme: {m["name"]: m["body"] for m in BLOCK.finditer(text)} for readme, text in texts.items()}
    problems = []
    for name, (readme, renderer) in BLOCKS.items():
        body = found.get(readme, {}).get(name)
        if body is None:
            problems.append(f"{name}: no <!-- report:{name} --> block in {readme}")
        elif body != renderer():
            problems.append(f"{name}: {readme} differs from what benchmarks.report renders")
    for readme, blocks in found.items():
        problems += [f"{name}: unknown block in {readme}" for name in blocks
                     if BLOCKS.get(name, (None,))[0] != readme]
    return problems


def read_readmes(root: Path = ROOT) -> dict[str, str]:
    return {readme: (root / readme).read_text() for readme in (README, BENCH_README)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if any block differs from its rendering")
    args = ap.parse_args(argv)
    texts = read_readmes()
    if args.check:
        problems = differences(texts)
        print("\n".join(problems) if problems else f"OK: {len(BLOCKS)} blocks match benchmarks/results/*.json")
        return 1 if problems else 0
    for readme, text in texts.items():
        new = render(text, readme)
        if new != text:
            (ROOT / readme).write_text(new)
            print(f"rewrote {readme}")
    problems = differences(read_readmes())
    print("\n".join(problems) if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
