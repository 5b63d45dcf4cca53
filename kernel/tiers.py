"""Tiered execution: a run starts eagerly at once while its compiled functions are built beside it,
and switches to them at an update boundary (``compile_from_update=None``, what ``--compile auto``
asks for).

Two steps, because one thread cannot compile while another trains: the compile holds Python's
lock for seconds at a time (``benchmarks/compile_in_thread.py`` measures the gaps it leaves).

1. :class:`Helper`: a separate process builds the same config (same thread count, options and
   plan) and compiles one throwaway iteration, which fills inductor's on-disk caches; it says
   ``compiled <stage>`` as each stage is done. The run trains eagerly meanwhile, on its own core.
2. :class:`StagedWarmup`: as the helper reports each stage, the run traces its own compiled
   function for it against the warm cache, one stage per update boundary (a trace still costs
   seconds; one at a time keeps each gap short), after a boundary for the compiler's one-time
   costs. Then :func:`kernel.train.checked_update` switches at the next boundary, as for a
   recorded ``compile_from_update``. The helper marks the cache when done, so the next run of the
   same config starts no helper and traces at once.

If the helper fails, or compiling in the run fails, the run stays eager and says why in one line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import torch

from kernel.loop import unaliased
from kernel.plan import helper_mark

HELPER_MODULE = "kernel.precompile"
STAGE_ORDER = ("segment", "grad_step")  # the stages compiled on their own, in the order of their first calls
COMPILED = "compiled "  # the helper's line after each stage: "compiled <stage>"


def helper_request(built) -> dict:
    """What the helper needs to build the very graphs this run will trace: the job's config, its
    runs, this rank and the number of ranks, the plan's fuse choice and the thread count."""
    return {"config": built.job.to_dict(), "runs": built.all_runs.to_dict() if built.all_runs is not None else None,
            "rank": built.world.rank, "ranks": built.world.size, "fuse": built.plan.fuse, "why": built.plan.why,
            "threads": torch.get_num_threads(), "parent": os.getpid()}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class Helper:
    """The compile helper process for ``built`` (started at once). It inherits the environment
    (``TORCHINDUCTOR_CACHE_DIR`` included) and dies with the run (:meth:`stop`; on Linux also if
    the run is killed)."""

    def __init__(self, built, module: str | None = None):
        self.started = time.perf_counter()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", module or HELPER_MODULE], stdin=subprocess.PIPE,
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True)
        try:
            self.process.stdin.write(json.dumps(helper_request(built)))
            self.process.stdin.close()
        except OSError:  # it died at once; poll() says so
            pass
        self.seconds: float | None = None

    def poll(self) -> str | None:
        """None while it compiles; "" once it has compiled; else why it failed (one line)."""
        rc = self.process.poll()
        if rc is None:
            return None
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        if rc == 0:
            return ""
        self.log.seek(0)
        return f"the compile helper failed (exit {rc}): {last_line(self.log.read())}"

    def compiled(self) -> set:
        """The stages the helper has compiled so far (its ``compiled <stage>`` lines)."""
        self.log.seek(0)
        return {line[len(COMPILED):].strip() for line in self.log.read().splitlines() if line.startswith(COMPILED)}

    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self.started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def primed() -> bool:
    """Pay what a process's first compile pays once, apart from any trace: importing dynamo and
    inductor, and inductor's keys of this torch build and system (hashes of their files)."""
    import torch._dynamo  # noqa: F401
    import torch._inductor.config  # noqa: F401

    try:  # private helpers; a torch without them pays the same inside the first trace instead
        from torch._inductor.codecache import CacheBase, torch_key

        torch_key()
        CacheBase.get_system()
    except (ImportError, AttributeError):
        pass
    return True


class StagedWarmup:
    """One throwaway iteration of a compiled build on ``state``, run in a worker thread that stops
    after each compiled stage's first call: each :meth:`advance` traces (compiles) one stage while
    the caller waits, so nothing runs beside the compile. The iteration is pure: ``state`` is only
    read. Its inputs are what the build's own first iteration would see, so the traced graphs are
    the ones the run calls afterwards (no recompile)."""

    def __init__(self, built, state, iterate: Callable):
        self.go, self.paused = threading.Semaphore(0), threading.Semaphore(0)
        self.done, self.error, self.stage, self.traced = False, None, None, []
        threads = torch.get_num_threads()
        stages = built.stages
        wrapped = stages._replace(**{name: self.pausing(name, getattr(stages, name)) for name in STAGE_ORDER})
        whole = self.pausing("iteration", built.whole) if built.whole is not None else None
        staged = built._replace(stages=wrapped, whole=whole)

        def run():
            torch.set_num_threads(threads)  # (a thread's own OpenMP setting; generated code reads it)
            self.go.acquire()
            try:
                iterate(staged, state)
            except BaseException as e:  # reported by advance()
                self.error = e
            finally:
                self.done = True
                self.paused.release()

        self.thread = threading.Thread(target=run, name="fkernel-staged-warmup", daemon=True)
        self.thread.start()

    def pausing(self, name: str, fn: Callable) -> Callable:
        first = [True]

        def call(*args):
            if not first[0]:
                return fn(*args)
            first[0], self.stage = False, name
            out = fn(*args)
            self.traced.append(name)
            self.paused.release()  # this stage is compiled: hand back until the next boundary
            self.go.acquire()
            return out

        return call

    def advance(self) -> bool:
        """Run to the end of the next stage's first call (compiling it); True once the whole
        iteration has run. A failure inside raises it here."""
        if self.done:
            return True
        self.go.release()
        self.paused.acquire()
        if self.error is not None:
            raise self.error
        return self.done


def agreed(world, failed: bool, waiting: bool, device) -> tuple[bool, bool]:
    """Over data-parallel ranks: whether any rank's helper failed, and whether any rank must wait."""
    if not world.distributed:
        return failed, waiting
    flags = world.sum(torch.tensor([float(failed), float(waiting)], device=device))
    return bool(flags[0] > 0), bool(flags[1] > 0)


class Tiers:
    """Where a tiered run stands before its switch: the helper compiling, then the staged warm-up,
    then due (:meth:`ready` says so at an update boundary). ``helper_module``: the helper to start
    (None: :data:`HELPER_MODULE`); a caller's own env object cannot be rebuilt by a helper, so its
    run compiles in-process from the start, one stage per boundary."""

    def __init__(self, built, own_env: bool = False, helper_module: str | None = None):
        self.built, self.began = built, time.perf_counter()
        runs = built.all_runs.count if built.all_runs is not None else None
        world = built.world
        # A helper has compiled this config into this cache before: trace here at once. Of the
        # data-parallel ranks on one machine (one cache), the first compiles for all.
        cached = helper_mark(built.job, built.plan.fuse, runs, world.size).is_file()
        self.helper = None if own_env or cached or world.local_rank else Helper(built, helper_module)
        self.warm: StagedWarmup | None = None
        self.primed = self.started = False
        self.failure: str | None = None
        self.note: str | None = None  # a failure, once, for the caller to print

    def ready(self, state, iterate: Callable) -> bool:
        """Called at each boundary before the switch: True once the compiled functions are traced
        here. May do one piece of compiling first (the caller waits for it): the compiler's
        one-time costs, or the trace of the next stage once the helper has compiled it (or has
        finished: a stage it never reached compiles here, cold). Data-parallel ranks agree on each
        step (one all-reduce of two flags), so all of them trace and switch at the same updates."""
        if self.failure is not None or not self.started:
            self.started = True  # (the first update runs before anything is compiled here)
            return False
        why = self.helper.poll() if self.helper is not None else ""
        host = getattr(self.built.env, "host_state", False)
        waiting = why is None and (host or self.next_stage() not in self.helper.compiled())
        failed, waiting = agreed(self.built.world, bool(why), waiting, self.built.device)
        if failed:
            self.fail(why or "the compile helper of another rank failed")
            return False
        if not self.primed:  # a boundary of its own: the compiler's one-time costs
            self.primed = primed()
            return False
        if waiting:
            return False
        if host:  # its throwaway iteration would step the env: the check at the switch traces the
            return True  # update stages, and the first compiled update the policy step
        if self.warm is None:  # (on the carry the switch will see: eager steps may leave a tensor in it twice)
            self.warm = StagedWarmup(self.built, state._replace(carry=unaliased(state.carry)), iterate)
        try:
            return self.warm.advance()
        except Exception as e:  # the run goes on eagerly (ranks out of step cannot: they stop)
            if self.built.world.distributed:
                raise
            self.fail(f"compiling in the run failed: {type(e).__name__}: {last_line(str(e))}")
            return False

    def next_stage(self) -> str:
        """The stage the next :meth:`StagedWarmup.advance` traces."""
        order = STAGE_ORDER if self.built.whole is None else ("iteration",)
        done = len(self.warm.traced) if self.warm is not None else 0
        return order[min(done, len(order) - 1)]

    def fail(self, why: str) -> None:
        self.failure = self.note = f"{why}; the run stays eager"

    def taken_note(self) -> str | None:
        note, self.note = self.note, None
        return note

    def text(self) -> str:
        """The live view's line: which code runs now and what is compiling, for how long."""
        if self.failure is not None:
            return f"eager ({self.failure.split('; ')[0]})"
        where = ["in a helper process"] if self.helper is not None and self.helper.seconds is None else []
        if self.warm is not None and self.warm.traced:
            where.append(f"traced here: {', '.join(self.warm.traced)}")
        return f"eager; compiling {', '.join(where or ['here'])} ({time.perf_counter() - self.began:.0f} s)"

    def summary(self) -> dict:
        return {"helper_s": self.helper.seconds if self.helper is not None else None, "failure": self.failure}

    def stop(self) -> None:
        if self.helper is not None:
            self.helper.stop()
