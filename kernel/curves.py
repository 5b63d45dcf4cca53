"""Curves of a run: TensorBoard scalars while it trains, and a PNG drawn from its telemetry after.

Both read what the training loop already hands to its ``on_update`` callback (host floats), so
neither adds a device sync. ``tensorboard`` and ``matplotlib`` are optional extras; asking for
either without it installed raises :class:`MissingExtra`, whose message names the extra.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

TELEMETRY = "telemetry.jsonl"


class MissingExtra(RuntimeError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{module} is not installed: pip install 'fkernel[{extra}]' "
                           f"(or pip install -e \".[{extra}]\" in a checkout)") from None


# Metric keys of an update -> TensorBoard tags, grouped as CleanRL names them.
SCALAR_TAGS = {
    "loss": "losses/loss", "pg_loss": "losses/policy_loss", "v_loss": "losses/value_loss",
    "entropy": "losses/entropy", "approx_kl": "losses/approx_kl", "clip_frac": "losses/clipfrac",
    "explained_var": "losses/explained_variance", "loss_scale": "charts/loss_scale",
    "skipped_total": "charts/skipped_steps", "episode_length": "charts/episode_length", "lr": "charts/learning_rate",
}


def scalars(log) -> dict:
    """``{tag: float}`` for one ``kernel.train.UpdateLog``: charts, losses, per-head terms and
    per-group gradient statistics (``grads/<group>/<stat>``)."""
    m = log.metrics
    out = {"charts/mean_return": log.mean_return, "charts/SPS": log.sps}
    out.update({tag: m[key] for key, tag in SCALAR_TAGS.items() if key in m})
    for key, value in m.items():
        if key.startswith("head/"):  # head/<name>/<stat>
            out["heads/" + key[len("head/"):]] = value
        elif key.startswith("grad/"):  # grad/<group>/<stat>
            out["grads/" + key[len("grad/"):]] = value
    return {tag: float(v) for tag, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class TensorboardLog:
    """Event files in ``folder`` (``torch.utils.tensorboard.SummaryWriter``), step = env steps."""

    def __init__(self, folder):
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, log) -> None:
        for tag, value in scalars(log).items():
            self.writer.add_scalar(tag, value, global_step=log.env_steps)

    def close(self) -> None:
        self.writer.close()


def read_telemetry(run_dir) -> list:
    path = Path(run_dir) / TELEMETRY
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {TELEMETRY} (train with this version of fkernel, "
                                f"or point --telemetry-dir at the run folder)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a run killed mid-write leaves at most one partial last line
    if not records:
        raise ValueError(f"{path} holds no complete record")
    return records


def run_folders(run_dir) -> list:
    """The folders holding ``run_dir``'s telemetry: itself, or a group's ``run-<i>`` folders (a
    group of seeds or a sweep, trained as one program) in run order."""
    d = Path(run_dir)
    if (d / TELEMETRY).is_file():
        return [d]
    runs = sorted((p for p in d.glob("run-*") if p.name[4:].isdigit() and (p / TELEMETRY).is_file()),
                  key=lambda p: int(p.name[4:]))
    return runs or [d]  # no telemetry anywhere: read_telemetry says so


def read_runs(run_dir) -> list:
    """Every run's telemetry records under ``run_dir`` (one list for a plain run, one per run of a
    group)."""
    return [read_telemetry(d) for d in run_folders(run_dir)]


def mean_records(runs: list) -> list:
    """A group's runs as one record per update: the mean of each number over the runs, and of each
    gradient group's norm; a gradient status that is not "ok" in any run is kept."""
    out = []
    for updates in zip(*runs):
        record = {"env_steps": updates[0]["env_steps"]}
        for key in ("mean_return", "pg_loss", "v_loss", "entropy"):
            values = [_number(u.get(key)) for u in updates]
            record[key] = sum(values) / len(values)
        record["grads"] = {}
        for group in updates[-1].get("grads", {}):
            stats = [u.get("grads", {}).get(group, {}) for u in updates]
            norms = [_number(g.get("norm")) for g in stats]
            alarms = [g.get("status") for g in stats if g.get("status") in ALARMS]
            record["grads"][group] = {"norm": sum(norms) / len(norms), "status": alarms[0] if alarms else "ok"}
        out.append(record)
    return out


def _number(x) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")  # "nan"/"inf" strings from JSON


ALARMS = ("non-finite", "dead", "forced")
ALARM_COLOURS = {"non-finite": "red", "dead": "orange", "forced": "grey"}


def plot_runs(run_dirs: list, out, solved_return: float | None = None, width_px: int = 1200, height_px: int = 800):
    """One PNG: mean return against env steps (one curve per run, with the solved line), losses,
    and per-group gradient norms (log scale) with non-finite, dead and forced updates marked. A
    group's folder (its ``run-<i>`` runs) is drawn as the mean over its runs, with the band from
    their lowest to their highest return. Returns the matplotlib Figure (already saved to ``out``)."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, (ret_ax, loss_ax, grad_ax) = plt.subplots(3, 1, figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    for run_dir in run_dirs:
        name, group = Path(run_dir).name or str(run_dir), read_runs(run_dir)
        records = group[0] if len(group) == 1 else mean_records(group)
        steps = [r["env_steps"] for r in records]
        if len(group) == 1:
            ret_ax.plot(steps, [_number(r.get("mean_return")) for r in records], label=name)
        else:
            (line,) = ret_ax.plot(steps, [r["mean_return"] for r in records], label=f"{name} (mean of {len(group)})")
            returns = [[_number(r.get("mean_return")) for r in run[:len(steps)]] for run in group]
            ret_ax.fill_between(steps, [min(v) for v in zip(*returns)], [max(v) for v in zip(*returns)],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        for key, style in (("pg_loss", "-"), ("v_loss", "--"), ("entropy", ":")):
            loss_ax.plot(steps, [_number(r.get(key)) for r in records], style, label=f"{name} {key}")
        groups = list(records[-1].get("grads", {}))
        for group in groups:
            norms = [_number(r.get("grads", {}).get(group, {}).get("norm")) for r in records]
            (line,) = grad_ax.plot(steps, [n if n > 0 else float("nan") for n in norms], label=f"{name} {group}")
            for status in ALARMS:
                marked = [s for s, r in zip(steps, records)
                          if r.get("grads", {}).get(group, {}).get("status") == status]
                if marked:
                    grad_ax.plot(marked, [1.0] * len(marked), "|", color=ALARM_COLOURS[status],
                                 transform=grad_ax.get_xaxis_transform(), markersize=12,
                                 label=f"{name} {group}: {status}")
    if solved_return is not None:
        ret_ax.axhline(solved_return, color="green", linestyle="--", linewidth=1, label=f"solved ({solved_return:g})")
    ret_ax.set_ylabel("mean return (last 100 episodes)")
    loss_ax.set_ylabel("loss terms")
    grad_ax.set_ylabel("gradient norm")
    grad_ax.set_yscale("log")
    grad_ax.set_xlabel("env steps")
    for ax in (ret_ax, loss_ax, grad_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    return fig
