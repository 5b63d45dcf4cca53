"""The compile helper of ``fkernel train --compile auto``, started before the run imports torch.

A cold run's switch to compiled code waits for its helper process (:mod:`kernel.precompile`), and
the helper's first seconds go to importing torch, dynamo and inductor. Started here, from the
command line alone, those imports run beside the run's own instead of after them; the helper then
waits for its request, which the run writes once it has built its config
(:func:`kernel.tiers.adopt_early`). A run that turns out not to need it (``--compile`` given in a
config file, a cache that already holds the graphs) ends it at once. This module
imports nothing heavy: it runs before anything else does.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

HELPER_MODULE = "kernel.precompile"
# Options after which a run never starts a helper (it compiles first, stays eager, replays a
# recorded switch, resumes one, or launches ranks that decide for themselves).
NO_HELPER = ("--no-compile", "--compile-from-update", "--resume", "--nproc", "--devices", "--help", "-h")


def wants_helper(argv: list[str]) -> bool:
    """Whether ``fkernel`` with ``argv`` is a ``train`` run that starts a compile helper: tiered
    (``--compile auto``, the default), one process (not a data-parallel rank past the first on its
    machine), on a machine with a core to spare for it."""
    if not argv or argv[0] != "train" or (os.cpu_count() or 1) < 2:
        return False
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    for i, arg in enumerate(argv[1:], start=1):
        name, _, value = arg.partition("=")
        if name in NO_HELPER:
            return False
        if name == "--compile":
            given = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if given != "auto":  # on, off, or a bare --compile (on)
                return False
    return True


def start_helper(argv: list[str]) -> tuple | None:
    """``(process, log, started)`` of a helper started at once, waiting for its request on stdin,
    if ``argv`` wants one (:func:`wants_helper`); else None."""
    if not wants_helper(argv):
        return None
    log = tempfile.TemporaryFile(mode="w+")
    try:
        process = subprocess.Popen([sys.executable, "-m", HELPER_MODULE], stdin=subprocess.PIPE, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
    except OSError:  # the run starts its own helper later
        log.close()
        return None
    return process, log, time.perf_counter()


def main() -> None:
    """The ``fkernel`` program: the early helper (if the command wants one), then the command."""
    started = start_helper(sys.argv[1:])
    from cli.main import main as command

    command(started)
