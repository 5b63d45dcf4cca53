"""What every ``fkernel`` command shares: the console, one-line usage errors, option types."""
from __future__ import annotations

import json

import click
from rich.console import Console


def console() -> Console:
    con = Console(stderr=False)
    # Piped to a file or a CI log: no terminal width to respect, so keep table rows whole.
    return con if con.is_terminal else Console(stderr=False, width=150)


def usage_error(e: Exception) -> click.UsageError:
    return click.UsageError(str(e).splitlines()[0])


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def csv_list(text: str, name: str, cast=str, allowed=None) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise click.BadParameter("give at least one value", param_hint=name)
    try:
        values = [cast(x) for x in items]
    except ValueError as e:
        detail = str(e) if cast not in (int, float) else f"cannot read {text!r} as a comma-separated list"
        raise click.BadParameter(detail.splitlines()[0], param_hint=name)
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed)}",
                                 param_hint=name)
    return values


def precisions(text: str, name: str) -> list:
    """``"fp32,bf16"`` -> Precision values (the one place the CLI parses a precision)."""
    from kernel.precision import parse

    return csv_list(text, name, parse)


def check_device(device: str) -> None:
    from kernel.runs import RunError, check_device

    try:
        check_device(device)
    except RunError as e:
        raise usage_error(e)


def known_env(name: str) -> str:
    import envs

    if not envs.known(name):
        raise click.UsageError(envs.unknown_message(name))
    return name


def seeds(text: str | None) -> list | None:
    """``"0,1,2"``, ``"0-15"`` or a mix (``"0-3,8"``) -> a list of ints."""
    if text is None:
        return None
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, dash, high = part.partition("-")
        try:
            out.extend(range(int(low), int(high) + 1) if dash and low else [int(part)])
        except ValueError:
            raise click.BadParameter(f"cannot read {part!r}: give seeds as 0,1,2 or a range 0-15", param_hint="--seeds")
    if not out or len(set(out)) != len(out):
        raise click.BadParameter(f"need distinct seeds, got {text!r}", param_hint="--seeds")
    return out


def sweep(items: tuple) -> dict:
    """``("lr=1e-4,3e-4", "ent_coef=0,0.01")`` -> ``{"lr": [1e-4, 3e-4], "ent_coef": [0.0, 0.01]}``."""
    out: dict = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise click.BadParameter(f"{item!r} is not KEY=V1,V2,...", param_hint="--sweep")
        if key in out:
            raise click.BadParameter(f"{key} is swept twice", param_hint="--sweep")
        from kernel.group import SWEEPABLE, unsweepable

        why = unsweepable(key)  # before reading the values: 'precision=fp32,bf16' is no list of numbers
        if why:
            raise click.BadParameter(f"cannot sweep {key!r}: {why}; values that may differ per run: "
                                     f"{', '.join(SWEEPABLE)}", param_hint="--sweep")
        out[key] = csv_list(values, "--sweep", float)
    return out


def option_value(text: str):
    """A command-line option value: a JSON literal (``3``, ``0.5``, ``true``, ``[1, 2]``, ``null``),
    Python's ``True``/``False``/``None``, or else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def env_options(items: tuple, workers: int | None = None) -> dict | None:
    """``("map_name=8x8", "is_slippery=false")`` (and ``--env-workers``) -> the env's keyword
    options (``None`` when none was given)."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env-option")
        if key in out:
            raise click.BadParameter(f"{key} is given twice", param_hint="--env-option")
        out[key] = option_value(value)
    if workers is not None:
        if out.get("workers", workers) != workers:
            raise click.BadParameter(f"--env-workers {workers} contradicts workers={out['workers']}",
                                     param_hint="--env-option")
        out["workers"] = workers
    return out or None


def long_lived_from_now() -> bool:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``). After the
    first update the compiler's graphs, guards and caches are built and live as long as the
    process; a full collection would walk them again each time, and an env stepped on the host
    makes enough garbage per step to trigger one every few updates (0.3 s each for a MuJoCo run)."""
    import gc

    gc.collect()
    gc.freeze()
    return True
