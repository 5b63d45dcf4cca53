"""The compile helper of a tiered run (:mod:`kernel.tiers`): ``python -m kernel.precompile``
imports torch and its compiler, then reads its request (JSON on stdin: the job's config, its runs,
the rank and number of data-parallel ranks, the fuse choice and the thread count), builds the same
graphs and compiles them with one throwaway iteration, which leaves them in inductor's on-disk
caches. Imports come first so that a helper started before its run has built its config
(:mod:`cli.early`) spends the wait on them; an empty request (its run ended first) ends it.
It prints ``compiled <stage>`` as each stage is done, and marks the cache at the end. Exit 0
once compiled; on failure, one line on stderr. It stops if the run that started it is gone."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time


def die_with(parent: int) -> None:
    """Exit when ``parent`` does: at once on Linux (the kernel's parent-death signal), else by
    looking every second."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    if os.getppid() != parent:  # it died before the signal was set
        os._exit(3)
    threading.Thread(target=watch, daemon=True).start()


def reporting(name: str, fn):
    """``fn``, saying ``compiled <name>`` once its first call (its compile) is done: the run can
    trace that stage against the cache while this process compiles the next."""
    from kernel.tiers import COMPILED  # (imported once the parent is known: it loads torch)

    first = [True]

    def call(*args):
        out = fn(*args)
        if first[0]:
            first[0] = False
            print(f"{COMPILED}{name}", flush=True)
        return out

    return call


def main() -> int:
    die_with(os.getppid())
    import torch

    from kernel.build import build, init_state
    from kernel.config import from_dict
    from kernel.distributed import SINGLE, Rehearsal
    from kernel.group import Group
    from kernel.hot import checking_vector_isas
    from kernel.plan import Plan, mark_helped
    from kernel.tiers import STAGE_ORDER, primed
    from kernel.train import iteration

    primed()  # (a helper started early does this beside the run's own imports, before its request)
    text = sys.stdin.read()
    if not text.strip():  # its run ended before it had built its config
        return 0
    request = json.loads(text)
    torch.set_num_threads(request["threads"])
    config = from_dict(request["config"])
    if torch.device(config.device).type == "cpu":
        checking_vector_isas()  # (started before the build: the builds run beside all of it)
    runs = Group.from_dict(request["runs"]) if request["runs"] is not None else None
    rank, ranks = request["rank"], request["ranks"]
    start = time.perf_counter()
    world = Rehearsal(rank, ranks) if ranks > 1 else SINGLE  # a data-parallel rank's graphs, alone
    built = build(config, world, group=runs, plan=Plan(True, request["fuse"], request["why"]))
    stages = built.stages._replace(**{name: reporting(name, getattr(built.stages, name)) for name in STAGE_ORDER})
    whole = reporting("iteration", built.whole) if built.whole is not None else None
    # its own env copy: a host-stepped env may step here
    iteration(built._replace(stages=stages, whole=whole), init_state(built))
    # the next run of this config finds its graphs in the cache and needs no helper
    mark_helped(config, request["fuse"], runs.count if runs is not None else None, ranks, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the run reads the last line
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        sys.exit(1)
