"""What every ``fkernel`` command shares: the console, one-line usage errors, option types."""
from __future__ import annotations

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

    if name not in envs.REGISTRY:
        raise click.UsageError(f"unknown env {name!r}; choose from {', '.join(envs.names())}")
    return name
