"""Starting data-parallel training: ``fkernel train --nproc N`` / ``--devices cuda:0,cuda:1`` re-runs the
same command under torchrun's launcher (``torch.distributed.run``), one process per rank."""
from __future__ import annotations

import sys

import click

DEVICES_ENV = "FKERNEL_DEVICES"


def command_line(ctx: click.Context, drop: tuple = ()) -> list:
    """The options of the running command as a command line (without those in ``drop``)."""
    args = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or param.name in drop or value is None or value == ():
            continue
        if param.is_flag and param.secondary_opts:  # --compile/--no-compile
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        elif param.multiple:
            for v in value:
                args += [param.opts[0], str(v)]
        elif value != param.default:
            args += [param.opts[0], str(value)]
    return args


def launch(ctx: click.Context, nproc: int) -> None:
    """Run ``fkernel <command>`` in ``nproc`` processes (one node) and wait; a rank that fails
    stops the job, and its rank and cause become this process's one-line error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = ["--nproc-per-node", str(nproc), "--standalone", "--max-restarts", "0", "-m", "cli.main",
            ctx.info_name, *command_line(ctx, drop=("nproc",))]
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = root_cause(e)
        raise click.ClickException(f"rank {rank} failed ({cause(failure)}); the job stopped, and the last "
                                   "checkpoint stays valid") from None
    sys.stdout.flush()


def cause(failure) -> str:
    """One line: how the rank ended and, when it raised, the exception's first line."""
    how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
    lines = [line for line in str(message or "").splitlines() if line.strip()]
    if failure.exitcode < 0 or not lines or "To enable traceback" in lines[0]:
        return how
    return f"{how}: {lines[0].strip()}"


def root_cause(error) -> tuple:
    """The failed rank that most likely stopped the others. A rank killed by a signal (other than
    the SIGTERM the launcher sends) has no error file, so its failure is timestamped only when the
    launcher notices it, after its peers' collectives already raised "connection closed": such a
    rank comes first, then the earliest failure."""
    killed = {r: f for r, f in error.failures.items() if f.exitcode < 0 and f.signal_name() != "SIGTERM"}
    if killed:
        return min(killed.items())
    return error.get_first_failure()
