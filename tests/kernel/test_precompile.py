"""The compile helper's two processes: when it splits its stages, and what the run is told when
the forked one fails. (A tiered run through the helper, split on two cores, is tested in
``test_tiers.py``.)"""
import os
import signal
import subprocess
import sys

import pytest

from kernel import precompile, tiers


def test_the_stages_split_only_unfused_and_with_two_cores(monkeypatch):
    monkeypatch.setattr(tiers, "cores", lambda: {0, 1})
    assert tiers.split_stages(False) is True
    assert tiers.split_stages(True) is False  # one graph: nothing to share
    monkeypatch.setattr(tiers, "cores", lambda: {0})
    assert tiers.split_stages(False) is False


def test_cores_are_the_ones_this_process_may_use():
    expected = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count()))
    assert tiers.cores() == set(expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_the_forked_compiles_exit_status_reaches_the_helper(capfd):
    pid = precompile.forked()
    if pid == 0:
        os._exit(3)
    assert precompile.child_exit(pid) == 3
    pid = precompile.forked()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    assert precompile.child_exit(pid) == 1
    assert capfd.readouterr().err.strip().splitlines()[-1] == \
        "the grad step's compile process was killed (signal 9)"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("fork", ["precompile.forked", "os.fork"])
def test_output_written_before_the_fork_is_not_written_twice(fork):
    script = ("import os, sys\nfrom kernel import precompile\n"
              "print('once', end='')\n"  # buffered (a pipe): unflushed at the fork, the child writes it too
              f"pid = {fork}()\n"
              "if pid == 0:\n    sys.stdout.flush()\n    os._exit(0)\n"
              "os.waitpid(pid, 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60).stdout
    assert (out == "once") == (fork == "precompile.forked"), out
