"""``--compile auto``: the estimate, its records and the one line that explains it."""
from __future__ import annotations

import pytest

from kernel import auto
from kernel.config import Config

# Round figures in place of the measured table, so each expected number below is worked by hand.
TABLE = {"cartpole": {"eager_s": 0.1, "unfused_s": 0.02, "fused_s": 0.01,
                      "unfused_compile_s": (30.0, 4.0), "fused_compile_s": (40.0, 7.0)}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(auto, "MEASURED", TABLE)
    return tmp_path / "inductor"


def test_cold_cache_compiles_only_long_runs(cache):
    config = Config()
    # fused: compiled = eager / 10 = 5 ms; 200 updates x 45 ms = 9 s saved <= 40 s cold compile
    short = auto.choose(config, updates_left=200, eager_s=0.05, fused=True)
    assert not short.compile
    assert short.reason == ("compile auto: off; 200 updates x (50.0 ms eager - 5.0 ms compiled [eager / 10.0]) = "
                            "9 s saved <= 40 s compile (cold: not compiled into this cache before)")
    # unfused: compiled = eager / 5 = 10 ms; 1000 updates x 40 ms = 40 s saved > 30 s cold compile
    long = auto.choose(config, updates_left=1000, eager_s=0.05, fused=False)
    assert long.compile
    assert long.reason.startswith("compile auto: on; 1000 updates x (50.0 ms eager - 10.0 ms compiled [eager / 5.0]) "
                                  "= 40 s saved > 30 s compile")


def test_records_make_the_estimate_warm_and_measured(cache):
    config = Config()
    sig = auto.signature(config, fused=True)
    assert auto.read_record(sig) is None
    auto.write_record(sig, compile_s=50.0, iteration_s=0.004)
    assert auto.read_record(sig) == {"cold_s": 50.0, "iteration_s": 0.004}
    auto.write_record(sig, compile_s=6.0, iteration_s=0.005)
    assert auto.read_record(sig) == {"cold_s": 50.0, "warm_s": 6.0, "iteration_s": 0.005}
    choice = auto.choose(config, updates_left=100, eager_s=0.05, fused=True)
    # 100 x (50 - 5) ms = 4.5 s < 6 s warm compile: off; the recorded numbers are the ones used
    assert not choice.compile
    assert "5.0 ms compiled [measured by an earlier run]" in choice.reason and "warm" in choice.reason
    assert auto.choose(config, updates_left=1000, eager_s=0.05, fused=True).compile


def test_signature_follows_the_graphs():
    # What enters the graphs as tensors (every iteration's hyperparameters, fused or not) is left
    # out; test_fused shows such a change finding its graph in inductor's cache.
    config = Config()
    same = [config.replace(seed=3), config.replace(total_steps=1_000_000), config.replace(lr=1e-3),
            config.replace(ent_coef=0.02, vf_coef=0.7, clip_coef=0.1)]
    assert all(auto.signature(c, True) == auto.signature(config, True) for c in same)
    other = [config.replace(hidden=(32, 32)), config.replace(num_envs=8), config.replace(precision="bf16")]
    assert all(auto.signature(c, True) != auto.signature(config, True) for c in other)
    assert auto.signature(config, True) != auto.signature(config, False)


def test_fusing_pays_on_cpu_only_for_long_runs(cache):
    from kernel.fused import fuse_reason

    # (7 - 4) s more warm compile / (20 - 10) ms saved per iteration = 300 updates
    break_even = auto.fuse_break_even("cartpole")
    assert break_even == 300
    short = Config(total_steps=512 * (break_even - 10))
    long = Config(total_steps=512 * (break_even + 10))
    assert fuse_reason(short, False, object()) == (False, f"{short.num_updates} updates; on CPU fusing pays from "
                                                          f"~{break_even} on (its longer compile against its faster "
                                                          "iterations, measured by benchmarks/fused.py)")
    assert fuse_reason(long, False, object())[0] is auto_fuse_possible()
    assert auto.fuse_break_even("unmeasured-env") is None


def auto_fuse_possible() -> bool:
    from kernel.hot import fused_pays

    return fused_pays("cpu")
