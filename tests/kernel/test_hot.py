"""The training loop's compile path keeps every guard that matters (closure constants, dict keys,
grad mode, shapes and dtypes), gives each build its own graph cache, and each compile option does
what it is there for."""
import contextlib
import os
import threading

import pytest
import torch
import torch._dynamo
from torch._higher_order_ops import scan

from kernel.hot import (
    building_units_at_once,
    checking_vector_isas,
    compile_hot,
    cpp_wrapper_compiles_scan,
    first_valid_isa,
    hot_options,
    known_option,
    units_at_once,
)


def scaled_sum(params, x):
    return (params["w"] * x).sum(-1) + params["b"]


def test_compile_hot_recompiles_on_new_shapes_and_dtypes():
    f = compile_hot(scaled_sum)
    params = {"w": torch.arange(3.0), "b": torch.tensor(1.0)}
    for x in (torch.ones(2, 3), torch.full((2, 3), 2.0), torch.ones(5, 3), torch.ones(5, 3, dtype=torch.float64)):
        torch.testing.assert_close(f(params, x), scaled_sum(params, x))
    params = {"w": torch.arange(4.0), "b": torch.tensor(0.5)}
    x = torch.ones(2, 4)
    torch.testing.assert_close(f(params, x), scaled_sum(params, x))
    if cpp_wrapper_compiles_scan():  # a C++-wrapper build compiles in this process, not in a worker pool
        import torch._inductor.config as inductor_config

        assert inductor_config.compile_threads == 1


def test_the_vector_isa_check_starts_once_and_leaves_inductor_a_cpu_reported_isa():
    from torch._inductor import cpu_vec_isa

    threads = checking_vector_isas()
    assert checking_vector_isas() is threads  # once per process
    for thread in threads:
        thread.join(300)
        assert not thread.is_alive()
    picked = cpu_vec_isa.pick_vec_isa()
    if threads:  # (x86-64 Linux) the pick is one the CPU reports, checked by inductor's own build
        flags = cpu_vec_isa.x86_isa_checker()
        assert not picked or all(flag in flags for flag in str(picked).split())


class FakeIsa:
    """A vector ISA whose check passes or fails as told, counting the checks."""

    def __init__(self, ok: bool):
        self.ok, self.checks = ok, 0

    def __bool__(self):
        self.checks += 1
        return self.ok


@pytest.mark.parametrize("oks, first", [((True, True, True), 0), ((False, True, True), 1), ((False, False, True), 2),
                                        ((False, False, False), None)])
def test_the_isa_list_stops_at_the_first_that_passes_as_inductors_pick_would(monkeypatch, oks, first):
    from torch._inductor import cpu_vec_isa

    candidates = [FakeIsa(ok) for ok in oks]
    whole = [isa for isa in candidates if isa.ok]  # what inductor's own list holds; its pick is whole[0]
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: whole)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    valid = first_valid_isa(candidates)
    assert valid() == ([candidates[first]] if first is not None else [])
    assert valid()[:1] == whole[:1]
    stop = len(oks) if first is None else first + 1
    assert [isa.checks for isa in candidates] == [1] * stop + [0] * (len(oks) - stop)  # none after the pick


def test_an_asked_for_isa_gets_inductors_whole_list(monkeypatch):
    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa

    candidates = [FakeIsa(True), FakeIsa(True)]
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: candidates)
    valid = first_valid_isa(candidates)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert valid() == candidates
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    with inductor_config.patch({"cpp.simdlen": 256}):
        assert valid() == candidates
    assert valid() == candidates[:1]


def make_affine(scale: float, shift: float):
    def affine(x):
        return x * scale + shift  # closure constants, as a grad step reads its config

    return affine


def test_each_build_gets_its_own_graph_even_at_a_recompile_limit_of_one():
    # Builds from one factory share a code object; each must run its own constants, and no build
    # may count against another's recompile limit.
    x = torch.arange(4.0)
    with torch._dynamo.config.patch(recompile_limit=1):
        for scale, shift in ((2.0, 0.0), (3.0, 1.0), (-1.0, 5.0)):
            torch.testing.assert_close(compile_hot(make_affine(scale, shift))(x), x * scale + shift)


def test_dict_keys_are_guarded():
    def step(x, hyper):
        return x * hyper["lr"] + hyper.get("ent_coef/op", 0.0)  # as the PPO loss reads per-head keys

    f = compile_hot(step)
    x = torch.ones(3)
    base = {"lr": torch.tensor(2.0)}
    torch.testing.assert_close(f(x, base), x * 2.0)
    extra = dict(base, **{"ent_coef/op": torch.tensor(0.5)})
    torch.testing.assert_close(f(x, extra), x * 2.0 + 0.5)


def test_grad_mode_is_guarded():
    f = compile_hot(lambda x: (x * 3.0).sum())
    x = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        assert not f(x).requires_grad
    out = f(x)
    assert out.requires_grad
    out.backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 3.0))


def test_options_unknown_to_the_installed_torch_are_left_out():
    assert known_option("cpp_wrapper") and known_option("cpp.use_decompose_tanh")
    assert not known_option("cpp.no_such_option") and not known_option("no_such_option")
    wrapper = {"cpp_wrapper", "cpp_wrapper_build_separate"} if cpp_wrapper_compiles_scan() else set()
    assert set(hot_options("cpu")) == {"cpp.use_decompose_tanh", "unsafe_marked_cacheable_functions",
                                       "guard_filter_fn"} | wrapper
    assert "cpp_wrapper" not in hot_options("cuda") and "cpp.use_decompose_tanh" not in hot_options("cuda")
    assert hot_options("cuda")["loop_ordering_after_fusion"] is False


def test_decomposed_tanh_stays_accurate():
    x = torch.linspace(-10, 10, 20001)
    got = compile_hot(torch.tanh)(x)
    err = (got.double() - torch.tanh(x.double())).abs().max().item()
    assert err < 5e-7, err


def scan_cumsum(xs):
    def body(c, x):
        c = c + x
        return c, c.clone()

    return scan(body, torch.zeros_like(xs[0]), xs)


def test_scan_graphs_come_from_the_cache_in_a_new_build():
    # A second build (own code object, so dynamo traces it again) must reuse the inductor output
    # that the first build stored: what the scan mark is for (without it, graphs with a scan are
    # never cached, and every process recompiles its rollout segment).
    xs = torch.arange(12.0).reshape(4, 3)
    compile_hot(scan_cumsum)(xs)
    torch._dynamo.utils.counters.clear()
    last, ys = compile_hot(scan_cumsum)(xs)
    torch.testing.assert_close(ys, xs.cumsum(0))
    inductor = torch._dynamo.utils.counters["inductor"]
    assert inductor["fxgraph_cache_bypass"] == 0
    assert inductor["fxgraph_cache_hit"] + torch._dynamo.utils.counters["aot_autograd"]["autograd_cache_hit"] >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_options_compile_and_match_eager():
    f = compile_hot(scaled_sum, "cuda")
    params = {"w": torch.arange(3.0, device="cuda"), "b": torch.tensor(1.0, device="cuda")}
    x = torch.ones(2, 3, device="cuda")
    torch.testing.assert_close(f(params, x), scaled_sum(params, x))


class FakeUnit:
    """A C++ unit's builder: ``build()`` logs its start and end, waiting up to ``wait_s`` for
    ``partner`` (the other unit) to have started, and fails if told to."""

    def __init__(self, name, log, tmp_path, partner=None, wait_s=0.0, fails=False):
        self.name, self.log, self.path = name, log, tmp_path / f"{name}.o"
        self.partner, self.wait_s, self.fails = partner, wait_s, fails
        self.started = threading.Event()

    def get_target_file_path(self):
        return str(self.path)

    def build(self):
        self.started.set()
        self.log.append(("start", self.name))
        if self.partner is not None:
            self.partner.started.wait(self.wait_s)
        if self.fails:
            raise RuntimeError(f"{self.name} did not compile")
        self.path.write_text("built")
        self.log.append(("end", self.name))


def serial_units(lock_path, builders):
    """Inductor's way: one builder after the other (the variant the stand-in must not be)."""
    for builder in builders:
        if not os.path.exists(builder.get_target_file_path()):
            builder.build()


def unit_triple(tmp_path, log, fails=()):
    main = FakeUnit("main", log, tmp_path, fails="main" in fails)
    kernels = FakeUnit("kernels", log, tmp_path, partner=main, wait_s=5.0, fails="kernels" in fails)
    main.partner, main.wait_s = kernels, 5.0
    return main, kernels, FakeUnit("linked", log, tmp_path)


@contextlib.contextmanager
def no_lock(path):
    yield


@pytest.mark.parametrize("variant", ["at_once", "serial"])
def test_a_graphs_two_units_build_at_once_then_link(tmp_path, variant):
    log = []
    build = units_at_once(serial_units, no_lock) if variant == "at_once" else serial_units
    build(str(tmp_path / "lock"), unit_triple(tmp_path, log))
    started_both = {name for kind, name in log[:2] if kind == "start"} == {"main", "kernels"}
    # one after the other, the first unit waits out its partner's start (5 s) and ends first
    assert started_both == (variant == "at_once")
    assert log[-2:] == [("start", "linked"), ("end", "linked")]


def test_units_already_built_are_not_built_again_and_other_lists_go_to_inductor(tmp_path):
    log, seen = [], []
    main, kernels, linked = unit_triple(tmp_path, log)
    main.path.write_text("built")
    units_at_once(serial_units, no_lock)("lock", (main, kernels, linked))
    assert [name for kind, name in log if kind == "start"] == ["kernels", "linked"]
    header = FakeUnit("header", log, tmp_path)
    units_at_once(lambda path, builders: seen.append((path, builders)), no_lock)("lock", (header,))
    assert seen == [("lock", (header,))]


def test_a_unit_that_fails_to_build_raises_and_nothing_is_linked(tmp_path):
    log = []
    with pytest.raises(RuntimeError, match="kernels did not compile"):
        units_at_once(serial_units, no_lock)("lock", unit_triple(tmp_path, log, fails=("kernels",)))
    assert ("end", "main") in log and ("start", "linked") not in log


def test_units_build_at_once_only_with_two_cores(monkeypatch):
    from torch._inductor import codecache

    monkeypatch.setattr(codecache, "_worker_compile_cpp", serial_units)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert building_units_at_once() is False and codecache._worker_compile_cpp is serial_units
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert building_units_at_once() is True and codecache._worker_compile_cpp.at_once
    installed = codecache._worker_compile_cpp
    assert building_units_at_once() is True and codecache._worker_compile_cpp is installed  # (once)
