"""Tiered execution (``compile_from_update=None``, what ``--compile auto`` runs): eager from the
first update while a helper process compiles and a thread of the run traces each stage the helper
has compiled, then the checked switch, recorded so that a replay with that switch update is
bit-identical. A helper that fails leaves the run eager with one line; a helper dies with its run.
The tiered run is shared by the tests of this module (its helper compiles for tens of seconds)."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo
from safetensors.torch import load_file

from kernel import checkpoint, plan, runs, tiers
from kernel import train as T
from kernel.build import build, init_state
from kernel.config import Config
from kernel.curves import read_telemetry
from kernel.hot import own_code
from kernel.plan import Plan
from kernel.resume import checkpoint_path, read_config
from kernel.tree import leaves

TIERED = Config(num_envs=4, num_steps=16, total_steps=4 * 16 * 200, update_epochs=2, num_minibatches=2,
                hidden=(16, 16), seed=7, fuse="off", compile_from_update=None)
RANKED = TIERED.replace(num_envs=8, total_steps=8 * 16 * 200)  # over two data-parallel ranks: 4 envs each


def waiting(logs: list, seconds: float):
    """An update callback that keeps the eager updates slow while the helper compiles or the run
    traces, so that a short run lasts until its switch (a real run is long; these updates take
    milliseconds)."""
    def on_update(log):
        logs.append(log)
        if log.tier and log.tier.startswith("eager; compiling"):
            time.sleep(seconds)
    return on_update


def identical(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


@pytest.fixture(scope="module")
def tiered(tmp_path_factory):
    """``(Finished, logs, run folder, graphs the run compiled itself, its inductor cache)``, trained
    on an empty inductor cache (only the helper fills it) with recompiles made errors (a stage
    traced at a boundary must be the graph the run then calls)."""
    out = tmp_path_factory.mktemp("tiered") / "run"
    cache = tmp_path_factory.mktemp("inductor")
    logs = []
    counters = torch._dynamo.utils.counters
    before = {kind: dict(counters[kind]) for kind in ("inductor", "aot_autograd")}
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        # Turns of the shortest length: the logs then show the stages traced one at a time (with
        # longer turns a fast machine traces both in one).
        patch.setattr(tiers, "TRACE_CYCLE_S", tiers.TRACE_PACE_S)
        prepared = runs.prepare(TIERED, out, options=runs.Options(checkpoint_every=1, keep=1000))
        finished = runs.execute(prepared, waiting(logs, 1.0))
    # (a graph AOTAutograd's cache misses is compiled, whatever inductor's own cache then says)
    compiled_here = sum(counters[kind][key] - before[kind].get(key, 0)
                        for kind, key in (("inductor", "fxgraph_cache_miss"), ("aot_autograd", "autograd_cache_miss")))
    return finished, logs, out, compiled_here, str(cache)


def test_the_run_starts_eagerly_and_switches_once_the_helper_has_compiled(tiered):
    finished, logs, out, compiled_here, _ = tiered
    summary = finished.summary
    switch = summary["switch_update"]
    assert switch is not None and switch >= 1, summary
    assert summary["tiers"]["failure"] is None and summary["tiers"]["helper_s"] > 0
    assert summary["tiers"]["loaded"] == ["grad_step", "segment"]  # as the helper saved them
    check = summary["switch_check"]
    assert check["update"] == switch and check["agreed"] is True and check["problems"] == []
    compiled = [row["compiled"] for row in read_telemetry(out)]
    assert compiled == [0.0] * (switch + 1) + [1.0] * (200 - switch - 1)
    texts = [log.tier for log in logs]
    assert texts[0].startswith("eager; compiling in a helper process (")
    assert any(t and t.startswith("eager; compiling ") and "segment loaded" in t for t in texts)
    assert all(t is None for t in texts[switch:]) and not any(log.note for log in logs)
    # every graph the run traced came from the helper's cache (with two cores, the grad step's
    # from the helper's second process, fed by an eager segment): none was compiled here
    assert compiled_here == 0


def test_the_switch_is_recorded_in_every_checkpoint_after_it_and_the_final_files(tiered):
    finished, _, out, _, _ = tiered
    switch = finished.summary["switch_update"]
    recorded = {u: read_config(checkpoint.load(checkpoint_path(out, u))[1], u).compile_from_update
                for u in (switch, switch + 1, 200)}
    assert recorded == {switch: None, switch + 1: switch, 200: switch}
    final = read_config(checkpoint.load(out / "params.safetensors")[1], out)
    assert final.compile and final.compile_from_update == switch
    assert json.loads((out / "config.json").read_text())["compile_from_update"] is None  # what was asked


def test_a_replay_with_the_recorded_switch_update_is_bit_identical(tiered, monkeypatch):
    finished = tiered[0]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", tiered[4])  # (its graphs are there)
    replay = T.make_train(TIERED.replace(compile_from_update=finished.summary["switch_update"])).train()
    assert identical(replay.state, finished.state)


def test_once_a_helper_has_compiled_a_config_its_next_run_loads_at_once(tiered, monkeypatch):
    """The helper leaves a mark in the cache; the next run of the config starts no helper: its
    warm-up thread loads the saved stages after the first update, and the run switches once both
    are loaded."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", tiered[4])
    assert plan.helper_mark(TIERED, False, None).is_file()
    # Turns of the shortest length, as in ``tiered``.
    monkeypatch.setattr(tiers, "TRACE_CYCLE_S", tiers.TRACE_PACE_S)
    logs = []
    out = T.make_train(TIERED.replace(total_steps=4 * 16 * 60)).train(on_update=waiting(logs, 0.5))
    switch = out.summary["switch_update"]
    assert out.summary["tiers"] == {"helper_s": None, "failure": None, "loaded": ["grad_step", "segment"]}
    assert switch is not None and switch >= 2 and out.summary["switch_check"]["agreed"] is True
    assert logs[0].tier.startswith("eager; compiling here (")


def test_a_failed_helper_leaves_the_run_eager_with_one_line(monkeypatch):
    monkeypatch.setattr(tiers, "HELPER_MODULE", "kernel.no_such_helper")
    cfg = TIERED.replace(total_steps=4 * 16 * 12, hidden=(16, 8))  # (no helper has compiled this one)
    plan.helper_mark(cfg, False, None).unlink(missing_ok=True)
    logs = []
    out = T.make_train(cfg).train(on_update=waiting(logs, 1.0))
    notes = [log.note for log in logs if log.note]
    assert len(notes) == 1 and notes[0].startswith("the compile helper failed (exit 1): ")
    assert "No module named kernel.no_such_helper" in notes[0] and notes[0].endswith("; the run stays eager")
    assert out.summary["switch_update"] is None and out.summary["tiers"]["failure"] == notes[0]
    assert [log.metrics["compiled"] for log in logs] == [0.0] * 12
    assert logs[-1].tier.startswith("eager (the compile helper failed (exit 1)")
    eager = T.make_train(cfg.replace(compile=False)).train()
    assert identical(out.state, eager.state)


def test_the_staged_warmup_traces_each_stage_once_allowed_and_leaves_the_state_alone():
    built = build(TIERED.replace(compile_from_update=0), plan=Plan(True, False, "staged"))
    state = init_state(built)
    before = [x.clone() for x in leaves(state)]
    warm = tiers.StagedWarmup(built, state, T.iteration)
    warm.settle()  # primed, then parked: nothing traces before it is allowed
    assert warm.parked == "segment" and warm.traced == [] and not warm.finished()
    began = time.monotonic()
    warm.pace(60.0)  # nothing is tracing: the boundary does not wait
    assert time.monotonic() - began < 10.0
    warm.allow(["segment"])
    warm.pace(600.0)  # waits while the segment traces, until the thread parks at the grad step
    assert warm.traced == ["segment"] and warm.parked == "grad_step" and not warm.finished()
    warm.allow(["grad_step"])
    warm.settle()
    assert warm.finished() and warm.traced == ["segment", "grad_step"]
    assert identical(state, before)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the traced graphs are the ones the run calls
        T.iteration(built, state)


def test_a_stage_traced_ahead_waits_before_its_compile_until_the_helper_has_compiled_it():
    built = build(TIERED.replace(compile_from_update=0), plan=Plan(True, False, "staged"))
    warm = tiers.StagedWarmup(built, init_state(built), T.iteration)
    warm.settle()
    assert warm.early and warm.parked == "segment"
    warm.ahead(["segment"])
    began = time.monotonic()
    warm.pace(600.0)  # it traces, then waits before the compile: not busy, so the boundary goes on
    assert warm.held == "segment" and warm.traced == [] and not warm.busy()
    assert time.monotonic() - began < 300.0
    warm.allow(["segment"])
    warm.pace(600.0)
    assert warm.traced == ["segment"] and warm.held is None and warm.parked == "grad_step"
    warm.ahead(["grad_step"])
    warm.pace(600.0)
    assert warm.held == "grad_step"
    warm.stop()  # a stop while held ends the thread there, with no error
    warm.thread.join(120)
    assert not warm.thread.is_alive() and warm.traced == ["segment"] and not warm.finished()


def test_without_the_compile_hold_nothing_is_traced_ahead(monkeypatch):
    monkeypatch.setattr(tiers, "gated_compiling", lambda: False)
    built = build(TIERED.replace(compile_from_update=0), plan=Plan(True, False, "staged"))
    warm = tiers.StagedWarmup(built, init_state(built), T.iteration)
    warm.ahead(["segment"])
    warm.settle()
    assert not warm.early and warm.parked == "segment" and warm.held is None
    warm.stop()
    warm.thread.join(120)


def test_the_run_sleeps_after_an_eager_update_while_two_helper_processes_compile():
    assert tiers.yielded_s(None) == 0.0  # the first boundary: no update timed yet
    assert tiers.yielded_s(0.1) == pytest.approx(tiers.YIELD_FACTOR * 0.1)
    assert tiers.yielded_s(60.0) == tiers.YIELD_MAX_S
    # an update and the sleep after it stay well under the 5 s a user should ever wait
    assert all(u + tiers.yielded_s(u) < 5.0 for u in (0.05, 0.5, 2.0, 3.5))
    # only where the helper's two processes and the run's threads want more cores than there are
    assert tiers.crowded(1, 2) and tiers.crowded(2, 3) and tiers.crowded(16, 16)
    assert not tiers.crowded(1, 3) and not tiers.crowded(1, 16) and not tiers.crowded(4, 8)


def traced_in_a_thread(gate) -> threading.Event:
    """Starts tracing a small function in a thread held by ``gate``; the event is set when done."""
    done = threading.Event()

    def trace():
        tiers._gates[threading.get_ident()] = gate
        try:
            fn = own_code(lambda x: torch.sin(x) * 2 + 1)  # a code object of its own: traced, not found cached
            torch.compile(fn, backend="eager", fullgraph=True)(torch.ones(3))
        finally:
            tiers._gates.pop(threading.get_ident(), None)
            done.set()

    threading.Thread(target=trace, daemon=True).start()
    return done


def test_a_closed_gate_holds_its_threads_trace_until_it_opens_and_for_a_bounded_time(monkeypatch):
    assert tiers.gated_tracing() and tiers.gated_tracing()  # (installed once)
    # no gate in this thread: traced as before (and dynamo's imports are paid before the clock below)
    torch.compile(lambda x: x.cos() - 1, backend="eager", fullgraph=True)(torch.ones(2))
    assert traced_in_a_thread(tiers.Gate()).wait(120)  # an open gate: traced as before
    gate = tiers.Gate()
    gate.close()
    done = traced_in_a_thread(gate)
    assert not done.wait(1.5)  # held before its first instruction (unheld, it takes a fraction of that)
    gate.open()
    assert done.wait(120)
    monkeypatch.setattr(tiers, "GATE_MAX_WAIT_S", 0.2)
    gate = tiers.Gate()
    gate.close()
    assert traced_in_a_thread(gate).wait(120)  # never opened: held 0.2 s, then it goes on


def test_the_traces_turn_fills_the_cycle_the_eager_update_left_and_never_drops_below_the_pace():
    assert tiers.trace_turn(None) == tiers.TRACE_PACE_S  # the first boundary: no update timed yet
    assert tiers.trace_turn(0.5) == pytest.approx(tiers.TRACE_CYCLE_S - 0.5)
    assert tiers.trace_turn(tiers.TRACE_CYCLE_S) == tiers.TRACE_PACE_S  # a slow update still lets it trace
    # a turn plus the update it leaves room for stays under the 5 s a user should ever wait
    assert all(tiers.trace_turn(u) + u < 5.0 for u in (0.0, 0.2, 1.0, 2.0, tiers.TRACE_CYCLE_S - tiers.TRACE_PACE_S))


def test_a_stopped_warmup_ends_at_its_next_stage_and_a_failed_trace_is_reported():
    built = build(TIERED.replace(compile_from_update=0, hidden=(16, 4)), plan=Plan(True, False, "staged"))
    warm = tiers.StagedWarmup(built, init_state(built), T.iteration)
    warm.stop()
    warm.thread.join(120)
    assert not warm.thread.is_alive() and warm.done and not warm.finished() and warm.traced == []

    def broken(*args):
        raise RuntimeError("no graph\nsecond line")

    failing = built._replace(stages=built.stages._replace(segment=broken))
    warm = tiers.StagedWarmup(failing, init_state(built), T.iteration)
    warm.allow(["segment"])
    warm.thread.join(120)
    with pytest.raises(RuntimeError, match="no graph"):
        warm.finished()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_helper_dies_with_its_run():
    """A run killed outright (no cleanup) takes its helper with it."""
    script = (
        "import os, sys\n"
        "from kernel.build import build\nfrom kernel.config import Config\nfrom kernel import tiers\n"
        "helper = tiers.Helper(build(Config(num_envs=4, num_steps=16, hidden=(8,))))\n"
        "print(helper.process.pid, flush=True)\nimport time; time.sleep(3)\nos._exit(0)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pid = int(run.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def helper_children(pid: int) -> list:
    """The live child processes of helper ``pid`` that run the helper's module (not its g++)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []
    found = []
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if tiers.HELPER_MODULE.encode() in f.read() and alive(child):
                    found.append(child)
        except FileNotFoundError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(tiers.cores()) < 2,
                    reason="reads /proc; the helper forks with two cores")
def test_stopping_the_helper_ends_its_forked_compile_too():
    helper = tiers.Helper(build(Config(num_envs=4, num_steps=16, hidden=(8, 2), seed=11)))
    deadline = time.monotonic() + 120
    while not helper_children(helper.process.pid) and time.monotonic() < deadline:
        assert helper.poll() is None, helper.poll()
        time.sleep(0.1)
    forked = helper_children(helper.process.pid)
    assert len(forked) == 1  # (the grad step's compile process, forked once the request arrived)
    helper.stop()
    # at once (the parent-death signal), not when its compile ends (seconds later)
    deadline = time.monotonic() + 5
    while any(alive(c) for c in forked) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(c) for c in forked)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stopping_the_helper_ends_its_process():
    helper = tiers.Helper(build(Config(num_envs=4, num_steps=16, hidden=(8,))))
    assert helper.poll() is None
    helper.stop()
    assert helper.process.returncode is not None and not alive(helper.process.pid)


def test_data_parallel_ranks_switch_at_the_same_update_and_a_replay_is_bit_identical(tmp_path):
    """Rank 0 runs the helper for both and loads the functions it saved for rank 0; rank 1 traces
    against the cache the helper filled. The ranks agree at every boundary, so they check and
    switch at the same updates, stay bit-identical, and replay bit for bit."""
    from test_distributed import torchrun

    result = torchrun(Path(__file__).with_name("tiers_worker.py"), tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"summary-{r}.json").read_text()) for r in range(2))
    assert s0["switch_update"] == s1["switch_update"] and s0["switch_update"] >= 1
    assert s0["switch_check"]["agreed"] is True and s1["switch_check"]["agreed"] is True
    assert s0["tiers"]["helper_s"] > 0 and s0["tiers"]["loaded"] == ["apply", "gradients", "segment"]
    assert s1["tiers"] == {"helper_s": None, "failure": None, "loaded": []}
    r0, r1 = (load_file(tmp_path / f"rank-{r}.st") for r in range(2))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    tiered = {k[len("tiered."):]: v for k, v in r0.items() if k.startswith("tiered.")}
    assert tiered and all(torch.equal(v, r0["replay." + k]) for k, v in tiered.items())
