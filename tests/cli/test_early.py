"""The compile helper the command line starts before the run imports torch: started only for a
tiered train run, handed to the run's tiers, and ended by an empty request when no run takes it."""
import pytest

from cli import early
from kernel import tiers
from kernel.build import build
from kernel.config import Config


@pytest.mark.parametrize("argv, wanted", [
    (["train"], True),
    (["train", "--env", "pendulum", "--seeds", "0-3"], True),
    (["train", "--compile", "auto"], True),
    (["train", "--compile=auto"], True),
    (["train", "--compile", "on"], False),
    (["train", "--compile=off"], False),
    (["train", "--compile", "--seed", "1"], False),  # a bare --compile is on
    (["train", "--compile"], False),
    (["train", "--no-compile"], False),
    (["train", "--compile-from-update", "3"], False),
    (["train", "--resume", "latest"], False),
    (["train", "--nproc", "2"], False),
    (["train", "--help"], False),
    (["evaluate", "ckpt.safetensors"], False),
    ([], False),
], ids=str)
def test_only_a_tiered_train_command_wants_an_early_helper(monkeypatch, argv, wanted):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    assert early.wants_helper(argv) is wanted


def test_no_early_helper_for_a_later_rank_or_a_single_core(monkeypatch):
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not early.wants_helper(["train"])
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert early.wants_helper(["train"])
    monkeypatch.setattr(early.os, "cpu_count", lambda: 1)
    assert not early.wants_helper(["train"])


def test_the_early_helper_runs_the_run_helpers_module():
    assert early.HELPER_MODULE == tiers.HELPER_MODULE


def test_the_next_helper_is_the_early_one_and_gets_the_request(monkeypatch):
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    started = early.start_helper(["train"])
    process = started[0]
    try:
        tiers.adopt_early(started)
        helper = tiers.Helper(build(Config(num_envs=4, num_steps=16, hidden=(8,))))
        assert helper.process is process and helper.started == started[2]
        assert process.stdin.closed  # the request is written and its input closed
        assert not tiers._early
    finally:
        process.kill()
        process.wait()
        started[1].close()


def test_an_early_helper_no_run_takes_ends_at_once(monkeypatch):
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    started = early.start_helper(["train"])
    tiers.adopt_early(started)
    tiers.drop_early()
    assert not tiers._early
    assert started[0].returncode is not None  # ended, not left importing torch


def test_a_helper_whose_run_writes_no_request_exits_cleanly(monkeypatch):
    """A run that ends before it has built its config closes the helper's input."""
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    process, log, _ = early.start_helper(["train"])
    process.stdin.close()
    assert process.wait(timeout=120) == 0  # after its imports it reads an empty request
    log.seek(0)
    assert "Error" not in log.read()
    log.close()


def test_a_helper_module_the_caller_names_is_started_as_asked(monkeypatch):
    """An early helper is for the run's own helper; a caller's module (a test's failing helper,
    say) starts as asked and leaves the early one waiting."""
    monkeypatch.setattr(early.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    started = early.start_helper(["train"])
    tiers.adopt_early(started)
    helper = tiers.Helper(build(Config(num_envs=4, num_steps=16, hidden=(8,))), module="kernel.precompile")
    try:
        assert helper.process is not started[0] and tiers._early == [started]
    finally:
        helper.stop()
        tiers.drop_early()
