"""The plan: this machine's compile records, and when an iteration fuses."""
from __future__ import annotations

import pytest
import torch

from kernel import plan
from kernel.config import Config
from kernel.hot import cpp_wrapper_compiles_scan


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


class Env:
    compilable = True


class PythonEnv:
    compilable = False


def test_records_keep_the_cold_and_the_warm_compile(cache):
    config = Config()
    assert plan.read_record(config, fused=False) is None
    plan.write_record(config, False, compile_s=50.0, iteration_s=0.004)
    assert plan.read_record(config, False) == {"cold_s": 50.0, "iteration_s": 0.004}
    plan.write_record(config, False, compile_s=6.0, iteration_s=0.005)
    assert plan.read_record(config, False) == {"cold_s": 50.0, "warm_s": 6.0, "iteration_s": 0.005}
    assert plan.read_record(config, True) is None  # the fused path has its own graphs


def test_signature_follows_the_graphs(monkeypatch):
    # What enters the graphs as tensors (every iteration's hyperparameters) is left out;
    # test_fused shows such a change finding its graph in inductor's cache.
    config = Config()
    same = [config.replace(seed=3), config.replace(total_steps=1_000_000), config.replace(lr=1e-3),
            config.replace(ent_coef=0.02, vf_coef=0.7, clip_coef=0.1, gamma=0.9, gae_lambda=0.8, max_grad_norm=1.0)]
    assert all(plan.signature(c, True) == plan.signature(config, True) for c in same)
    other = [config.replace(hidden=(32, 32)), config.replace(num_envs=8), config.replace(precision="bf16"),
             config.replace(activation="relu")]
    assert all(plan.signature(c, True) != plan.signature(config, True) for c in other)
    assert plan.signature(config, True) != plan.signature(config, False)
    before, threads = plan.signature(config, True), torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    assert plan.signature(config, True) != before  # another thread count


def test_fuse_choice(cache):
    config = Config(total_steps=512 * 5000)
    # On CPU without this machine's records of both paths, auto leaves the iteration unfused.
    assert plan.fuse_choice(config, Env()) == (False, "on CPU fusing pays only on long runs; auto fuses once this "
                                                      "machine has compiled both paths of this config (--fuse asks "
                                                      "for it)")
    plan.write_record(config, False, compile_s=4.0, iteration_s=0.008)
    plan.write_record(config, True, compile_s=8.0, iteration_s=0.006)
    # 5000 x 2 ms = 10 s saved > 4 s more compile; 1000 x 2 ms = 2 s is not
    assert plan.fuse_choice(config, Env())[0] is cpp_wrapper_compiles_scan()
    assert plan.fuse_choice(config, Env(), updates_left=1000)[0] is False
    assert plan.fuse_choice(config.replace(device="cuda"), Env()) == (True, "one CUDA graph per iteration")
    assert plan.fuse_choice(config.replace(compile=False), Env())[0] is False
    assert plan.fuse_choice(config.replace(fuse="off"), Env())[0] is False
    assert plan.fuse_choice(config, Env(), distributed=True) == (False, "data-parallel ranks all-reduce between "
                                                                        "minibatch steps")
    assert plan.fuse_choice(config, Env(), group=True) == (False, "a group of runs trains unfused")
    with pytest.raises(ValueError, match="fuse='on' is not possible here: cartpole steps in Python"):
        plan.fuse_choice(config.replace(fuse="on"), PythonEnv())
    with pytest.raises(ValueError, match="fuse must be"):
        config.replace(fuse="yes")
