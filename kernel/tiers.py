"""Tiered execution: a run starts eagerly at once while its compiled functions are built beside it,
and switches to them at an update boundary (``compile_from_update=None``, what ``--compile auto``
asks for).

Two steps, because a cold compile in a thread of the run stalls its training for many seconds at
a time (it holds Python's lock in long stretches), while a trace against a warm cache, with a
short GIL switch interval, slows the eager updates beside it without stopping them for long
(``benchmarks/compile_in_thread.py`` measures both).

1. :class:`Helper`: a separate process builds the same config (same thread count, options and
   plan) and compiles one throwaway iteration, which fills inductor's on-disk caches, and saves
   each compiled function (:mod:`kernel.saved`); it says
   ``compiled <stage>`` as each stage is done. With two or more cores it compiles the two stages
   at once in two processes (:func:`split_stages`); until the first is done the
   run sleeps after each eager update (:func:`yielded_s`), since a compiled update costs a
   fraction of an eager one. The run trains eagerly meanwhile.
2. :class:`StagedWarmup`: a thread of the run runs one throwaway compiled iteration, each stage
   once the helper reports it, while the run goes on training eagerly. A stage's first call loads
   the function the helper saved (:mod:`kernel.saved`; a fraction of a second); where there is
   none, it traces its own against the warm cache, and the two threads take turns
   (:meth:`StagedWarmup.pace`, :func:`gated_tracing`). Where the helper does not save, the stage it
   is still compiling is traced too, and waits before its compile (:func:`gated_compiling`) until
   the helper's graph is in the cache, so the run switches soon after the helper is done.
   Once every stage is loaded or traced, :func:`kernel.train.checked_update` switches at the next
   boundary, as for a recorded ``compile_from_update``. The helper marks the cache when done, so
   the next run of the same config starts no helper and loads (or traces) at once.

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

from kernel import saved
from kernel.plan import helper_mark
from kernel.tree import tree_map

HELPER_MODULE = "kernel.precompile"
_early: list = []  # a helper started before the run built its config (adopt_early): at most one
STAGE_ORDER = ("segment", "grad_step")  # the stages compiled on their own, in the order of their first calls
COMPILED = "compiled "  # the helper's line after each stage: "compiled <stage>"


def helper_request(built) -> dict:
    """What the helper needs to build the very graphs this run will trace: the job's config, its
    runs, this rank and the number of ranks, the plan's fuse choice and the thread count."""
    return {"config": built.job.to_dict(), "runs": built.all_runs.to_dict() if built.all_runs is not None else None,
            "rank": built.world.rank, "ranks": built.world.size, "fuse": built.plan.fuse, "why": built.plan.why,
            "threads": torch.get_num_threads()}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def adopt_early(started: tuple | None) -> None:
    """Hand the next :class:`Helper` a helper process already started and waiting for its request
    (``(process, log, started)`` from :func:`cli.early.start_helper`; None: nothing)."""
    if started is not None:
        drop_early()
        _early.append(started)


def drop_early() -> None:
    """End an adopted early helper no run has taken, at once: a warm run's helper would otherwise
    spend its imports on a core the run may want."""
    while _early:
        process, log, _ = _early.pop()
        process.kill()
        process.wait()
        log.close()


class Helper:
    """The compile helper process for ``built``: the one started early if there is one
    (:func:`adopt_early`), else started at once. It inherits the environment
    (``TORCHINDUCTOR_CACHE_DIR`` included) and dies with the run (:meth:`stop`; on Linux also if
    the run is killed)."""

    def __init__(self, built, module: str | None = None):
        if module is None and _early:
            self.process, self.log, self.started = _early.pop()
        else:
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


# Python's GIL switch interval while a trace runs beside the run. An eager step gives up the GIL
# in each of its thousands of ops and, at the default 5 ms, waits that long to get it back from
# the tracing thread; at 10 us an eager update stays within a few seconds of its own time
# (``benchmarks/README.md``, "Compiling in a thread").
TRACE_SWITCH_INTERVAL = 1e-5
# How long the run, at an update boundary, lets a trace under way have the GIL to itself (its
# turn; the run's eager update is the other). A compiled update takes a fraction of an eager
# one's time, so the sooner the trace ends the sooner the run is done: the turn fills what the
# last eager update left of TRACE_CYCLE_S, and is never shorter than TRACE_PACE_S. The cycle
# stays well under the longest wait between two updates that a user should see (5 s): a turn
# ends only at the trace's next bytecode instruction.
TRACE_PACE_S = 1.0
TRACE_CYCLE_S = 3.5
# While the helper compiles its two stages in two processes (:func:`split_stages`), a
# run at one thread on two cores has three busy processes (:func:`crowded`), and the compiled
# update it waits for costs a fraction of an eager one: after each eager update the run sleeps
# YIELD_FACTOR times that update's seconds (at most YIELD_MAX_S), leaving most of a core to the
# compile.
YIELD_FACTOR = 2.0
YIELD_MAX_S = 1.0


def cores() -> set:
    """The cores this process may use."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def split_stages(fuse: bool) -> bool:
    """Whether the helper compiles the segment and the grad step at once, in its process and a
    fork of it (:mod:`kernel.precompile`). A compile is one core's work (Python, then one g++ at
    a time); the grad step's is the longer, and the run waits for the last stage. The fork comes
    after the imports (torch, dynamo and inductor: seconds) and before any compile, thread pool or
    tensor work. A fused build has one graph; one core has nothing to share."""
    return not fuse and hasattr(os, "fork") and len(cores()) >= 2


def crowded(threads: int, cores: int) -> bool:
    """Whether two helper processes (a core each) and a run of ``threads`` threads want more than
    ``cores`` cores."""
    return threads + 2 > cores


def yielded_s(update_s: float | None) -> float:
    """How long the run sleeps after an eager update of ``update_s`` seconds while two helper
    processes compile (None: not known, no sleep)."""
    return 0.0 if update_s is None else min(YIELD_MAX_S, YIELD_FACTOR * update_s)


def trace_turn(update_s: float | None) -> float:
    """The trace's turn after an eager update that took ``update_s`` seconds (None: not known)."""
    return TRACE_PACE_S if update_s is None else max(TRACE_PACE_S, TRACE_CYCLE_S - update_s)


_interval_lock = threading.Lock()
_tracing_threads = [0, None]  # [threads tracing now, the interval before the first began]
# The longest a gate, each time it closes, holds its tracing thread (a bound, should the run's
# thread ever need something the held trace has, such as a module it is importing).
GATE_MAX_WAIT_S = 5.0


class Gate:
    """Where a tracing thread waits while the run's thread runs an eager update."""

    def __init__(self):
        self.opened = threading.Event()
        self.opened.set()
        self.closings = 0
        self.outwaited = -1  # the closing whose bound the thread has waited out

    def close(self) -> None:
        self.closings += 1
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()

    def wait(self) -> None:
        if self.opened.is_set() or self.outwaited == self.closings:
            return
        closing = self.closings
        if not self.opened.wait(GATE_MAX_WAIT_S):
            self.outwaited = closing


_gates: dict[int, Gate] = {}  # a tracing thread's id -> its gate


def run_first(owner: Callable[[], type], name: str, first: Callable[[], None]) -> bool:
    """Wrap the method ``name`` of the class ``owner()`` returns (private dynamo code) so that
    ``first()`` runs before each call; once per process. Returns False, changing nothing, where
    the installed torch has no such class or method."""
    try:
        cls = owner()
    except ImportError:
        return False
    method = getattr(cls, name, None)
    if not callable(method):
        return False
    if getattr(method, "gated", False):
        return True

    def gated(self, *args, **kwargs):
        first()
        return method(self, *args, **kwargs)

    gated.gated = True
    setattr(cls, name, gated)
    return True


def gated_tracing() -> bool:
    """Make dynamo's bytecode tracer, before each instruction, wait at its thread's gate if it has
    one that is closed (other threads trace as before). The tracer's instruction loop is most of a
    warm trace; held there, the trace gives the GIL back to the run's eager update instead of
    taking it after each of the update's ops. Returns False, changing nothing, where the installed
    dynamo has no such loop (a private API)."""
    def tracer():
        from torch._dynamo.symbolic_convert import InstructionTranslatorBase

        return InstructionTranslatorBase

    def wait_at_gate():
        gate = _gates.get(threading.get_ident())
        if gate is not None:
            gate.wait()

    return run_first(tracer, "step", wait_at_gate)


_holds: dict = {}  # a warm-up thread's id -> its StagedWarmup (gated_compiling)


def gated_compiling() -> bool:
    """Make dynamo, in a warm-up thread, wait before it hands a traced graph to the compiler until
    the helper has compiled that stage (:meth:`StagedWarmup.hold`): the run traces a stage while
    the helper still compiles it, and the compiler then finds the helper's graph in the cache
    instead of compiling it again. Other threads compile as before. Returns False, changing
    nothing, where the installed dynamo has no such step (a private API); the run then traces a
    stage only once the helper has compiled it."""
    def output_graph():
        from torch._dynamo.output_graph import OutputGraph

        return OutputGraph

    def hold():
        warm = _holds.get(threading.get_ident())
        if warm is not None:
            warm.hold()

    return run_first(output_graph, "call_user_compiler", hold)


def traced_interval(entering: bool) -> None:
    """Set the short switch interval while any trace runs; restore the caller's after the last."""
    with _interval_lock:
        if entering:
            if _tracing_threads[0] == 0:
                _tracing_threads[1] = sys.getswitchinterval()
                sys.setswitchinterval(TRACE_SWITCH_INTERVAL)
            _tracing_threads[0] += 1
        else:
            _tracing_threads[0] -= 1
            if _tracing_threads[0] == 0:
                sys.setswitchinterval(_tracing_threads[1])


class Stopped(BaseException):
    """The run ended before the warm-up traced everything (not an ``Exception``: dynamo passes it
    on from inside a trace instead of reporting a compile error)."""


class StagedWarmup:
    """One throwaway iteration of a compiled build on a copy of ``state``, run in a worker thread
    beside the eager run: it pays the compiler's one-time costs (:func:`primed`), then traces each
    stage at its first call once :meth:`allow` names it (the helper has compiled it into the
    on-disk cache, so the trace loads graphs instead of compiling them), or traces it while the
    helper still compiles it once :meth:`ahead` names it, and waits before compiling
    (:func:`gated_compiling`) until :meth:`allow` names it. The run's own thread goes
    on training meanwhile, slower while a trace holds the GIL but never stopped for a whole trace.
    The copy's inputs are what the build's own first compiled iteration would see (same shapes,
    dtypes and structure, no aliased carry), so the traced graphs are the ones the run calls
    afterwards (no recompile). A data-parallel rank's iteration all-reduces, and two threads'
    collectives would interleave: its caller waits (:meth:`settle`) while the thread runs."""

    def __init__(self, built, state, iterate: Callable):
        self.events: dict[str, threading.Event] = {}
        self.done, self.stopping, self.error = False, False, None
        self.tracing: str | None = None
        self.parked: str | None = None  # the stage whose first call waits to be allowed
        self.compiled: dict[str, threading.Event] = {}  # set by allow(): the helper has compiled it
        self.held: str | None = None  # the stage whose traced graph waits for the helper's compile
        self.early = gated_compiling()  # (ahead() does nothing without it)
        self.moved = threading.Condition()
        self.gate = Gate()  # closed by pace() while the caller runs an update (gated_tracing)
        self.traced: list[str] = []
        threads = torch.get_num_threads()
        stages = built.stages
        wrapped = stages._replace(**{name: self.waiting(name, getattr(stages, name)) for name in STAGE_ORDER})
        whole = self.waiting("iteration", built.whole) if built.whole is not None else None
        staged = built._replace(stages=wrapped, whole=whole)
        # Its own tensors, leaf by leaf (no leaf twice): the run updates its state meanwhile.
        fresh = lambda x: x.clone() if isinstance(x, torch.Tensor) else x
        copy = state._replace(**{f: tree_map(fresh, getattr(state, f)) for f in state._fields})

        def run():
            torch.set_num_threads(threads)  # (a thread's own OpenMP setting; generated code reads it)
            traced_interval(True)
            _gates[threading.get_ident()] = self.gate
            _holds[threading.get_ident()] = self
            try:
                primed()
                gated_tracing()
                iterate(staged, copy)
            except Stopped:
                pass
            except BaseException as e:  # reported by finished()
                self.error = e
            finally:
                _gates.pop(threading.get_ident(), None)
                _holds.pop(threading.get_ident(), None)
                traced_interval(False)
                with self.moved:
                    self.done = True
                    self.moved.notify_all()

        self.thread = threading.Thread(target=run, name="fkernel-staged-warmup", daemon=True)
        self.thread.start()

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def compiled_event(self, name: str) -> threading.Event:
        return self.compiled.setdefault(name, threading.Event())

    def hold(self) -> None:
        """In the thread, before the stage being traced compiles: wait until the helper has."""
        name = self.tracing
        if name is None or self.compiled_event(name).is_set():
            return
        with self.moved:
            self.held = name
            self.moved.notify_all()
        self.compiled_event(name).wait()
        self.held = None
        if self.stopping:
            raise Stopped

    def waiting(self, name: str, fn: Callable) -> Callable:
        first = [True]

        def call(*args):
            if not first[0]:
                return fn(*args)
            first[0] = False
            with self.moved:
                self.parked = name
                self.moved.notify_all()
            self.event(name).wait()
            self.parked = None
            if self.stopping:
                raise Stopped
            self.tracing = name
            out = fn(*args)
            self.traced.append(name)
            self.tracing = None
            return out

        return call

    def allow(self, names) -> None:
        """Let the stages ``names`` trace and compile (each at its first call, in the iteration's
        order): the helper has compiled them."""
        for name in names:
            self.compiled_event(name).set()
            self.event(name).set()

    def ahead(self, names) -> None:
        """Let the stages ``names`` trace, but not compile, before the helper has compiled them."""
        if self.early:
            for name in names:
                self.event(name).set()

    def busy(self) -> bool:
        """Whether the thread is tracing (or paying the one-time costs), not done, not parked and
        not held."""
        return not self.done and (self.parked is None or self.event(self.parked).is_set()) \
            and (self.held is None or self.compiled_event(self.held).is_set())

    def pace(self, seconds: float) -> None:
        """Open the gate and wait up to ``seconds`` while the thread is busy (it has the GIL
        meanwhile), then close the gate: the caller's next eager update runs while the trace
        waits at its next instruction (:func:`gated_tracing`)."""
        self.gate.open()
        with self.moved:
            self.moved.wait_for(lambda: not self.busy(), timeout=seconds)
        self.gate.close()

    def settle(self) -> None:
        """Wait until the thread has run as far as it is allowed: done, or parked at a stage's first
        call that is not allowed yet."""
        self.gate.open()
        with self.moved:
            self.moved.wait_for(lambda: not self.busy())

    def finished(self) -> bool:
        """True once the whole iteration has run (every stage traced). A failure inside raises here."""
        if self.error is not None:
            raise self.error
        return self.done and not self.stopping

    def stop(self) -> None:
        """End the thread at its next stage; a trace under way finishes first (it cannot be cut)."""
        self.stopping = True
        self.gate.open()
        for name in (*STAGE_ORDER, "iteration"):
            self.event(name).set()
            self.compiled_event(name).set()


def agreed(world, failed: bool, waiting: bool, short: int, device) -> tuple[bool, bool, int]:
    """Over data-parallel ranks: whether any rank failed, whether any rank must wait, and the
    stages not yet compiled (the sum over ranks: at least the most any one rank lacks)."""
    if not world.distributed:
        return failed, waiting, short
    flags = world.sum(torch.tensor([float(failed), float(waiting), float(short)], device=device))
    return bool(flags[0] > 0), bool(flags[1] > 0), int(flags[2])


class Tiers:
    """Where a tiered run stands before its switch: the helper compiling, then the staged warm-up,
    then due (:meth:`ready` says so at an update boundary). ``helper_module``: the helper to start
    (None: :data:`HELPER_MODULE`); a caller's own env object cannot be rebuilt by a helper, so its
    run compiles in its warm-up thread from the start (cold: the eager updates beside it stall
    longer)."""

    def __init__(self, built, own_env: bool = False, helper_module: str | None = None):
        self.built, self.began = built, time.perf_counter()
        runs = built.all_runs.count if built.all_runs is not None else None
        world = built.world
        # A helper has compiled this config into this cache before: trace here at once. Of the
        # data-parallel ranks on one machine (one cache), the first compiles for all.
        cached = helper_mark(built.job, built.plan.fuse, runs, world.size).is_file()
        self.helper = None if own_env or cached or world.local_rank else Helper(built, helper_module)
        # The helper saves each function it compiles; the warm-up loads it instead of tracing it.
        self.loads = saved.supported(built)
        if self.loads:
            for name, hot in built.hot.items():
                hot.load_from = saved.saved_path(built, name)
        # Two helper processes: the run sleeps after its eager updates while both compile, where
        # they and the run's own threads want more cores than the run may use.
        self.yields = self.helper is not None and split_stages(built.plan.fuse) \
            and crowded(torch.get_num_threads(), len(cores()))
        self.warm: StagedWarmup | None = None
        self.started = False
        self.failure: str | None = None
        self.note: str | None = None  # a failure, once, for the caller to print
        self.helper_s: float | None = None  # when this run first saw every stage compiled by the helper
        self.left: float | None = None  # when ready() last returned: the eager update runs after it

    def ready(self, state, iterate: Callable) -> bool:
        """Called at each boundary before the switch: True once the compiled functions are traced
        here. Never waits for a compile: after the first update the warm-up thread starts
        (:class:`StagedWarmup`), and each boundary lets it trace the stages the helper has compiled
        so far, in order (all of them once the helper has finished; with no helper, at once), for
        a turn of :func:`trace_turn` seconds. Data-parallel ranks agree at each boundary (one
        all-reduce of three numbers): no rank traces a stage before the helper has compiled it,
        and all of them switch at the same update."""
        try:
            return self.boundary(state, iterate)
        finally:
            self.left = time.perf_counter()

    def boundary(self, state, iterate: Callable) -> bool:
        if self.failure is not None or not self.started:
            self.started = True  # (the first update runs before anything is compiled here)
            return False
        why = self.helper.poll() if self.helper is not None else ""
        host = getattr(self.built.env, "host_state", False)
        order = STAGE_ORDER if self.built.whole is None else ("iteration",)
        compiled = self.helper.compiled() if why is None else set(order)
        have = next((i for i, name in enumerate(order) if name not in compiled), len(order))
        if self.helper is not None and self.helper_s is None and have == len(order) and not why:
            self.helper_s = self.helper.elapsed()  # (the run may switch before the helper exits)
        if self.yields and why is None and have == 0 and not (self.warm is not None and self.warm.busy()):
            # (once the first stage is compiled, one helper process is left; a trace under way
            # has its turn below instead)
            time.sleep(yielded_s(None if self.left is None else time.perf_counter() - self.left))
        if self.warm is not None and not why and not self.built.world.distributed:
            self.warm.allow(order[:have])
            if not self.saving(order[:have]):
                self.warm.ahead(order[have:have + 1])
            self.warm.pace(trace_turn(None if self.left is None else time.perf_counter() - self.left))
        error, traced = None, False
        try:
            traced = self.warm is not None and self.warm.finished()
        except Exception as e:
            if self.built.world.distributed:  # ranks out of step cannot go on
                raise
            error = f"compiling in the run failed: {type(e).__name__}: {last_line(str(e))}"
        # A host-stepped env's throwaway iteration would step the env: it waits for the helper
        # alone, then the check at the switch traces the update stages and the first compiled
        # update the policy step.
        waiting = why is None if host else not traced
        failed, waiting, short = agreed(self.built.world, bool(why) or error is not None, waiting,
                                        len(order) - have, self.built.device)
        if failed:
            self.fail(why or error or "the compile helper of another rank failed")
            return False
        if host:
            return not waiting
        distributed = self.built.world.distributed
        if self.warm is None and not (self.yields and have == 0 and not distributed):
            # (while two helper processes compile, the run's own compiler work would take a core
            # from them: it starts once the first stage is compiled)
            self.warm = StagedWarmup(self.built, state, iterate)
        if self.warm is None:
            return False
        self.warm.allow(order[:max(0, len(order) - short)])
        if distributed:  # (its collectives must not meet the run's)
            self.warm.settle()
        elif not self.saving(order[:have]):
            # (data-parallel ranks trace a stage only once every rank's helper has compiled it)
            self.warm.ahead(order[have:have + 1])
        return not waiting

    def saving(self, done) -> bool:
        """Whether the helper saves the functions it compiles: each of the stages ``done`` it has
        compiled is saved. The run then loads the next one once it is compiled, instead of tracing
        it ahead (a trace that would take the CPU from the compile)."""
        hot = self.built.hot
        return self.loads and all(hot[name].load_from.is_file() for name in done if name in hot)

    def fail(self, why: str) -> None:
        self.failure = self.note = f"{why}; the run stays eager"
        if self.warm is not None:
            self.warm.stop()

    def taken_note(self) -> str | None:
        note, self.note = self.note, None
        return note

    def text(self) -> str:
        """The live view's line: which code runs now and what is compiling, for how long."""
        if self.failure is not None:
            return f"eager ({self.failure.split('; ')[0]})"
        where = ["in a helper process" if self.helper is not None and self.helper.seconds is None else "here"]
        if self.warm is not None:  # (this run's own traces and loads, in its thread)
            where += [f"{name} {self.how(name)}" for name in self.warm.traced]
            where += [f"tracing {self.warm.tracing}"] if self.warm.tracing else []
        return f"eager; compiling {', '.join(where)} ({time.perf_counter() - self.began:.0f} s)"

    def how(self, name: str) -> str:
        hot = self.built.hot.get(name)
        return "loaded" if hot is not None and hot.loaded else "traced"

    def summary(self) -> dict:
        """The helper's seconds, why the run stayed eager (None: it did not), and the compiled
        functions the run loaded (:mod:`kernel.saved`) instead of tracing them."""
        return {"helper_s": self.helper_s, "failure": self.failure,
                "loaded": sorted(name for name, hot in self.built.hot.items() if hot.loaded)}

    def stop(self) -> None:
        if self.helper is not None:
            self.helper.stop()
        if self.warm is not None:
            self.warm.stop()
