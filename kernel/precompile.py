"""The compile helper of a tiered run (:mod:`kernel.tiers`): ``python -m kernel.precompile``
imports torch and its compiler, then reads its request (JSON on stdin: the job's config, its runs,
the rank and number of data-parallel ranks, the fuse choice and the thread count), builds the same
graphs and compiles them with one throwaway iteration, which leaves them in inductor's on-disk
caches and saves each compiled function for the run to load (:mod:`kernel.saved`). Imports come
first so that a helper started before its run has built its config (:mod:`cli.early`) spends the
wait on them; an empty request (its run ended first) ends it.
With two or more cores, an unfused build's two stages compile at once in two processes
(:func:`kernel.tiers.split_stages`). It prints ``compiled <stage>`` as each stage is done, and
marks the cache at the end. Exit 0 once compiled; on failure, one line on stderr. It stops if the
run that started it is gone."""
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


class Enough(Exception):
    """Raised by a stage this process does not compile: its iteration ends there."""


def stopping(*args):
    raise Enough


def forked() -> int:
    """``os.fork()`` with this process's output flushed first (else the child writes it again)."""
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def child_exit(pid: int) -> int:
    """The forked compile's exit status once it ends. It prints its own error; a signal that
    killed it is said here (one line, as the run reads it)."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        print(f"the grad step's compile process was killed (signal {-code})", file=sys.stderr)
        return 1
    return code


def main() -> int:
    die_with(os.getppid())
    import torch

    from kernel import saved
    from kernel.build import build, init_state, with_plan
    from kernel.config import from_dict
    from kernel.distributed import SINGLE, Rehearsal
    from kernel.group import Group
    from kernel.hot import checking_vector_isas
    from kernel.plan import Plan, mark_helped
    from kernel.tiers import STAGE_ORDER, primed, split_stages
    from kernel.train import iteration

    primed()  # (a helper started early does this beside the run's own imports, before its request)
    text = sys.stdin.read()
    if not text.strip():  # its run ended before it had built its config
        return 0
    request = json.loads(text)
    start = time.perf_counter()
    child = forked() if split_stages(request["fuse"]) else None
    if child == 0:
        die_with(os.getppid())  # (the parent-death signal is not inherited)
    torch.set_num_threads(request["threads"])
    config = from_dict(request["config"])
    if torch.device(config.device).type == "cpu":
        checking_vector_isas()  # (started before the build: the builds run beside all of it)
    runs = Group.from_dict(request["runs"]) if request["runs"] is not None else None
    rank, ranks = request["rank"], request["ranks"]
    world = Rehearsal(rank, ranks) if ranks > 1 else SINGLE  # a data-parallel rank's graphs, alone
    built = build(config, world, group=runs, plan=Plan(True, request["fuse"], request["why"]))
    if saved.supported(built):  # the run loads them instead of tracing them again
        for name, hot in built.hot.items():
            hot.save_to = saved.saved_path(built, name)
    stages = built.stages._replace(**{name: reporting(name, getattr(built.stages, name)) for name in STAGE_ORDER})
    whole = reporting("iteration", built.whole) if built.whole is not None else None
    if child == 0:
        # The grad step alone, fed by the eager segment: the batch it makes has the compiled
        # segment's shapes, dtypes and strides (the switch's check feeds the compiled grad step
        # the same eager batch), so this is the graph the run will trace.
        eager = with_plan(built, Plan(False, False, request["why"]))
        stages = stages._replace(segment=eager.stages.segment)
    elif child is not None:
        stages = stages._replace(grad_step=stopping)  # (the forked process compiles it)
    try:
        # its own env copy: a host-stepped env may step here
        iteration(built._replace(stages=stages, whole=whole), init_state(built))
    except Enough:
        pass
    if child == 0:
        return 0
    if child is not None and child_exit(child) != 0:
        return 1
    # the next run of this config finds its graphs in the cache and needs no helper
    mark_helped(config, request["fuse"], runs.count if runs is not None else None, ranks, time.perf_counter() - start)
    return 0


def forked_exit(code: int) -> None:
    """The forked compile ends here, without the parent's exit handlers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    pid = os.getpid()
    try:
        code = main()
    except Exception as e:  # the run reads the last line
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        code = 1
    if os.getpid() != pid:
        forked_exit(code)
    sys.exit(code)
