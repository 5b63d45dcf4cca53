"""rich rendering for the CLI: live training view and summary tables. No training logic here."""
from __future__ import annotations

import json
import math

from rich.console import Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

LIVE_METRICS = ("loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clip_frac", "explained_var")
SHORT = {"pg_loss": "pg", "v_loss": "vf", "entropy": "ent", "approx_kl": "kl", "clip_frac": "clip",
         "explained_var": "ev"}


def fmt(x: float, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}"


def make_progress(label: str = "train", unit: str = "updates") -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def mean_metrics(metrics) -> dict:
    """One run's metrics as they are; a group's (a list, one dict per run) averaged over runs."""
    if isinstance(metrics, dict):
        return metrics
    return {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}


def metrics_table(log) -> Table:
    """Two compact rows of label/value pairs, so it fits an 80-column terminal. For a group of
    runs: the mean over runs, the return's range over runs, and losses averaged over runs."""
    ret = "-" if log.episodes == 0 or not math.isfinite(log.mean_return) else f"{log.mean_return:.1f}"
    spread = getattr(log, "return_spread", None)
    if spread is not None and ret != "-":
        ret += f" ({fmt(spread[0], 3)}..{fmt(spread[1], 3)}, {len(log.metrics)} runs)"
    metrics = mean_metrics(log.metrics)
    pairs = [("steps", f"{log.env_steps:,}"), ("SPS", f"{log.sps:,.0f}"), ("return", ret),
             ("episodes", str(log.episodes)), *((SHORT.get(k, k), fmt(metrics.get(k), 3)) for k in LIVE_METRICS)]
    table = Table.grid(padding=(0, 1))
    per_row = 4
    for _ in range(per_row):
        table.add_column(style="dim", justify="right", no_wrap=True)
        table.add_column(justify="left", no_wrap=True, min_width=8)
    for i in range(0, len(pairs), per_row):
        row = [cell for label, value in pairs[i:i + per_row] for cell in (label, value)]
        table.add_row(*row)
    return table


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list) -> str:
    """One block character per value, scaled between the finite minimum and maximum."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(" " if not math.isfinite(v) else SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))]
                   for v in values)


def tier(compile_: bool, switch: int | None, done: int, compiled_since: int | None) -> str:
    """Which code runs the updates: ``done`` updates so far, the first compiled one
    ``compiled_since`` (None: none yet), ``switch`` the update that compiles (None: once compiled,
    when the run's own log says how far it is)."""
    if compiled_since is not None:
        return f"compiled since update {compiled_since}"
    if not compile_:
        return "eager"
    if switch is None:
        return "eager; compiled code checked, it takes over at the next update"
    if done > switch:  # the switch update ran and the compiled code did not take over
        return f"eager (the compiled update disagreed at update {switch})"
    return f"eager; compiles and checks at update {switch}" if done < switch else f"compiling at update {switch}"


def live_view(progress: Progress, log=None, returns: list | None = None, tier_text: str | None = None) -> Group:
    """Progress bar, which code runs (``tier_text``), the latest metrics and a sparkline of the
    mean return over recent updates."""
    if log is None:
        return Group(progress, *([tier_text] if tier_text else []))
    parts = [progress, *([tier_text] if tier_text else []), metrics_table(log)]
    if returns:
        finite = [v for v in returns if math.isfinite(v)]
        span = f" ({min(finite):.1f} .. {max(finite):.1f})" if finite else ""
        parts.append(f"mean return, last {len(returns)} updates{span}: {sparkline(returns)}")
    return Group(*parts)


def summary_table(summary: dict) -> Table:
    table = Table(title="training summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    solved = summary.get("first_solved")
    rows = [
        ("env steps" + (f" (all {summary['runs_count']} runs)" if "runs" in summary else ""),
         f"{summary['env_steps']:,}"),
        ("mean return (last 100 episodes" + (", mean over runs)" if "runs" in summary else ")"),
         fmt(summary["mean_return"])),
        ("compile time (first call)", "in the first update (the env steps on the host)"
         if summary.get("compiled_in_first_update") else f"{summary['compile_s']:.1f} s"),
        ("run time", f"{summary['run_s']:.1f} s"),
        ("steps per second (run)", f"{summary['sps']:,.0f}"),
    ]
    if "peak_memory_mb" in summary:
        rows.append(("peak memory (" + ("CUDA" if summary.get("device", "cpu").startswith("cuda") else "RSS") + ")",
                     f"{summary['peak_memory_mb']:,.0f} MiB"))
    if summary.get("solved_return") is not None and "runs" in summary:
        reached = sum(1 for r in summary["runs"] if r["first_solved"])
        rows.append((f"runs that reached {summary['solved_return']:g}", f"{reached} of {len(summary['runs'])}"))
    elif summary.get("solved_return") is not None:
        rows.append((f"first reached {summary['solved_return']:g}",
                     "never" if not solved else f"{solved['env_steps']:,} steps, {solved['run_s']:.1f} s"))
    for what, value in rows:
        table.add_row(what, value)
    return table


def switch_line(check: dict) -> str:
    """One line on the check at the switch from eager to compiled code."""
    at = f"update {check['update']}"
    if check["agreed"] is None:
        return f"switched to compiled code at {at} ({check['why']})"
    if check["agreed"]:
        gap, allowed = check["largest_gap"]["update"][0], check["allowed"]["update"]
        return (f"switched to compiled code at {at}: each compiled stage agreed with the eager one on the same inputs "
                f"(largest parameter-update gap {gap:.1e} of a step, allowed {allowed:.0e})")
    first = check["problems"][0]
    more = f" (and {len(check['problems']) - 1} more)" if len(check["problems"]) > 1 else ""
    return f"stayed eager: at {at} the compiled update disagreed with the eager one: {first}{more}"


STATUS_STYLE = {"non-finite": "bold red", "dead": "bold yellow", "not relevant": "dim", "forced": "dim",
                "very large": "magenta", "large": "yellow", "vanishing": "yellow", "small": "cyan", "healthy": "green",
                "finite": "green"}


def grad_table(groups: dict, title: str = "gradients", dtypes: dict | None = None) -> Table:
    """``groups``: ``{group: {stat: float}}`` (kernel.telemetry.group_table), each with a
    ``"status"`` (else classified without a reference norm). One row per group; non-finite cells
    red, dead groups yellow, healthy green. Heads show their relevant and decision steps (per
    minibatch, averaged over the update)."""
    from kernel.telemetry import classify

    table = Table(title=title, padding=(0, 1), collapse_padding=True)
    for col in ("group", "dtype", "norm", "max|g|", "NaN", "Inf", "zero", "upd/p", "relevant", "decisions", "status"):
        left = col in ("group", "dtype", "status")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("group", "status"))
    for group, stats in groups.items():
        status = stats.get("status") or classify(stats)
        style = STATUS_STYLE[status]

        def cell(key, digits=3, pct=False, stats=stats):
            v = stats.get(key, float("nan"))
            text = f"{100 * v:.0f}%" if pct and math.isfinite(v) else fmt(v, digits)
            return f"[bold red]{text}[/]" if not math.isfinite(v) else text

        counts = [f"[bold red]{int(stats[k])}[/]" if stats.get(k, 0) > 0 else "0" for k in ("nan", "inf")]
        steps = [f"{stats[k]:.0f}" if k in stats else "-" for k in ("relevant", "decisions")]
        table.add_row(group, (dtypes or {}).get(group, "-"), cell("norm"), cell("max_abs"), *counts,
                      cell("zero_frac", pct=True), cell("update_ratio", 2), *steps, f"[{style}]{status}[/]")
    return table


def meta_table(meta: dict) -> Table:
    table = Table(title="metadata", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    versions = meta.get("versions", {})
    for key in ("env", "update", "env_steps"):
        if key in meta:
            table.add_row(key, fmt(meta[key]) if isinstance(meta[key], int) else str(meta[key]))
    for name, version in versions.items():
        table.add_row(f"{name} version", str(version))
    solved = meta.get("first_solved")
    if solved:
        table.add_row("first reached the solved return", f"update {solved['update']}, {solved['env_steps']:,} steps")
    for key, value in (meta.get("config") or {}).items():
        table.add_row(f"config.{key}", str(value))
    return table


def tensor_table(flat: dict) -> Table:
    import torch

    table = Table(title="tensors")
    for col in ("path", "shape", "dtype", "norm"):
        table.add_column(col, justify="right" if col == "norm" else "left")
    for path, t in sorted(flat.items()):
        norm = fmt(float(torch.linalg.vector_norm(t.double()))) if t.is_floating_point() and t.numel() else "-"
        table.add_row(path, str(list(t.shape)), str(t.dtype).replace("torch.", ""), norm)
    return table


SHORT_MODES = {"max-autotune-no-cudagraphs": "max-autotune-no-cg", "reduce-overhead": "reduce-overhead"}


def bench_table(record: dict) -> Table:
    table = Table(title=f"fkernel bench: torch {record['torch']}, {record['device']}, {record['threads']} threads")
    for col in ("target", "mode", "precision", "size", "compile s", "median ms (p10-p90)", "vs eager",
                "graphs/breaks/recompiles", "peak MB"):
        table.add_column(col, justify="left" if col in ("target", "mode", "precision") else "right",
                         no_wrap=True, min_width=len(col))
    for c in record["cells"]:
        speed = "-" if c["speedup_vs_eager"] is None else f"{c['speedup_vs_eager']:.2f}x"
        mode = SHORT_MODES.get(c["mode"], c["mode"]) + (" *" if c.get("note") else "")
        table.add_row(c["target"], mode, c["precision"], str(c["size"]), f"{c['compile_s']:.1f}",
                      f"{c['median_ms']:.3f} ({c['p10_ms']:.3f}-{c['p90_ms']:.3f})", speed,
                      f"{c['graphs']}/{c['graph_breaks']}/{c['recompiles']}", f"{c['peak_mem_mb']:.0f}")
    notes = {c["note"] for c in record["cells"] if c.get("note")}
    if notes:
        table.caption = "* " + "; ".join(sorted(notes))
    return table


def envs_table(registry: dict) -> Table:
    table = Table(title="environments")
    for col in ("name", "observation", "action heads", "description"):
        table.add_column(col)
    for name, cls in sorted(registry.items()):
        env = cls(1)  # a one-env instance: specs may depend on constructor defaults
        heads = ", ".join(f"{h.name}({h.size})" for h in env.action_spec.heads)
        table.add_row(name, str(env.obs_dim), heads, cls.description)
    return table


def options_table(env_name: str, options: dict) -> Table:
    """An env's options (``--env-option KEY=VALUE``) and their defaults."""
    table = Table(title=f"options of {env_name}", caption="fkernel train --env-option KEY=VALUE")
    table.add_column("option")
    table.add_column("default")
    for name, default in options.items():
        table.add_row(name, escape(default if isinstance(default, str) else json.dumps(default, default=repr)))
    if not options:
        table.add_row("(none)", "")
    return table


def settings_table(summary: dict) -> Table:
    """A group's swept settings ranked by final mean return (mean and spread over seeds)."""
    table = Table(title="settings by final mean return")
    for name in summary["swept"] or ["setting"]:
        table.add_column(name, justify="right")
    table.add_column("mean return", justify="right")
    table.add_column("std", justify="right")
    table.add_column("seeds", justify="right")
    for row in summary["settings"]:
        values = [fmt(row["setting"][k]) for k in summary["swept"]] or ["all"]
        table.add_row(*values, fmt(row["mean_return"]), fmt(row["std_return"]), str(row["seeds"]))
    return table
