"""How the training loop compiles its hot functions (rollout segment, grad step, or the whole
iteration).

Every function is compiled with dynamo's guards, so a graph traced for one configuration (closure
constants such as the activation or precision), one dict structure or one grad mode never runs
for another; it recompiles instead. One kind is skipped: guards on module globals
(:func:`skip_module_global_guards`). :func:`compile_hot` gives every function a code object of
its own (:func:`own_code`), so each build owns its cache of graphs, and asks for static shapes.
Options (what each is for is in ``benchmarks/README.md``): ``cpp_wrapper`` on CPU where it
compiles a ``scan``, its wrapper and kernels built as two C++ units; ``scan`` marked cacheable by
inductor's FX graph cache; ``tanh`` through ``exp`` in generated CPU code; no loop reordering
after fusion on CUDA; the fused graph adds its own (:func:`fused_options`). An option the
installed torch does not know is left out. A compiled function can also be saved and loaded
instead of traced (:class:`Hot`; :mod:`kernel.saved` names the files).
"""
from __future__ import annotations

import types
from collections.abc import Callable

import torch


def known_option(name: str) -> bool:
    """Whether the installed inductor has the (dotted) config option ``name``."""
    import torch._inductor.config as inductor_config  # (imported when compiling: it takes seconds)

    node = inductor_config
    for part in name.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def cpp_wrapper_compiles_scan() -> bool:
    """Whether inductor's C++ wrapper compiles a graph holding a ``scan``: not before torch 2.13
    (older wrappers assert on it; ``benchmarks/README.md`` lists the versions tried)."""
    return torch.torch_version.TorchVersion(torch.__version__) >= (2, 13)


def skip_module_global_guards(entries) -> list:
    """Keep every guard but those on module globals (``G['...']``: imported modules, module-level
    functions and constants). Configuration reaches a compiled function through its closure and its
    arguments, both still guarded, as are grad mode and the other global state; a module global
    changes only if someone reassigns it after compiling, which the training code never does (a
    user who does must build again). The global guards were most of the remaining guard cost."""
    return [not entry.is_global for entry in entries]


def hot_options(device="cpu") -> dict:
    wanted = {"unsafe_marked_cacheable_functions": {"torch.ops.higher_order.scan": torch.__version__}}
    if torch.device(device).type == "cpu":
        # Measured on CPU only; on CUDA inductor's defaults stand.
        wanted["cpp.use_decompose_tanh"] = True
        if cpp_wrapper_compiles_scan():
            wanted["cpp_wrapper"] = True
            # Two C++ units compile faster than one (g++'s time grows faster than the unit's size).
            wanted["cpp_wrapper_build_separate"] = True
    else:
        # Some CUDA inductors assert in their loop-reordering pass on the grad step (seen on
        # an H200); the pass only reorders loops for speed, so it is off for every version.
        wanted["loop_ordering_after_fusion"] = False
    options = {name: value for name, value in wanted.items() if known_option(name)}
    # Dynamo's option, not an inductor config, so it is not looked up there.
    return dict(options, guard_filter_fn=skip_module_global_guards)


def own_code(fn: Callable) -> Callable:
    """``fn`` with a private copy of its code object (same globals, closure, defaults): dynamo's
    cache of compiled graphs then belongs to this function alone. Dynamo keys its cache by code
    object, and the stages of two builds are closures over one: without a copy every build in a
    process (a sweep, a notebook, a test session) would add to one cache, each call would check
    every earlier build's guards, and the ninth build would hit the recompile limit. Builtins pass
    through."""
    if not isinstance(fn, types.FunctionType):
        return fn
    code = fn.__code__.replace()  # a new code object, equal in content
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__, copy.__doc__ = fn.__kwdefaults__, fn.__qualname__, fn.__doc__
    return copy


def fused_options(device="cpu") -> dict:
    """:func:`hot_options` for a graph holding two scans (the fused iteration).

    On CPU the C++ wrapper's in-place reuse of a loop's output after the loop emits a second C++
    declaration of that buffer, so in-place reuse is off. On CUDA
    the graph is captured as a CUDA graph (what ``mode="reduce-overhead"`` does): one launch per
    iteration instead of one per kernel.
    """
    options = hot_options(device)
    if torch.device(device).type == "cpu":
        wanted = {"inplace_buffers": False}
    else:
        wanted = {"triton.cudagraphs": True}
    return dict(options, **{name: value for name, value in wanted.items() if known_option(name)})


_isa_checks: list = []  # the thread of checking_vector_isas, started once per process


def first_valid_isa(candidates: list) -> Callable[[], list]:
    """A stand-in for inductor's ``valid_vec_isa_list`` that stops at the first candidate whose
    check passes. Inductor checks every vector ISA the CPU reports (a C++ build of its vector
    headers each, seconds apiece) and then generates code for the first that passed; the ones
    after it are never used unless ``ATEN_CPU_CAPABILITY`` or ``cpp.simdlen`` asks for another,
    and then inductor's own list answers. The pick is the same; the builds of unused ISAs are
    not made."""
    import functools
    import os

    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa

    everything = cpu_vec_isa.valid_vec_isa_list

    @functools.cache
    def first() -> list:
        return next(([isa] for isa in candidates if isa), [])

    def valid() -> list:
        if os.getenv("ATEN_CPU_CAPABILITY") or inductor_config.cpp.simdlen is not None:
            return everything()
        return first()

    return valid


def checking_vector_isas() -> list:
    """Check the CPU's vector instruction set in a thread, before the trace, and have inductor
    check only up to the one it will use (:func:`first_valid_isa`). On an empty cache each check
    is a C++ build of inductor's vector headers, seconds long, made at inductor's first code
    generation; started here, it runs beside the trace, and inductor later finds the answer cached
    (or waits on the file lock of the build under way). x86-64 Linux only; a torch without these
    private helpers runs its own checks as before."""
    import platform
    import sys
    import threading

    if _isa_checks or sys.platform != "linux" or platform.machine() != "x86_64":
        return _isa_checks
    try:
        from torch._inductor import cpu_vec_isa

        flags = cpu_vec_isa.x86_isa_checker()
        candidates = [isa for isa in cpu_vec_isa.supported_vec_isa_list
                      if all(flag in flags for flag in str(isa).split())]
        cpu_vec_isa.valid_vec_isa_list = valid = first_valid_isa(candidates)
    except (ImportError, AttributeError):
        return _isa_checks

    def check():
        try:
            valid()
        except Exception:  # (inductor's own check at code generation reports a real failure)
            pass

    thread = threading.Thread(target=check, name="fkernel-isa-check", daemon=True)
    thread.start()
    _isa_checks.append(thread)
    return _isa_checks


def units_at_once(serial: Callable, lock: Callable) -> Callable:
    """A stand-in for inductor's ``_worker_compile_cpp(lock_path, builders)`` that builds a graph's
    two C++ units (the C++ wrapper's and the kernels', built apart by
    ``cpp_wrapper_build_separate``) as two g++ processes at once, then links them. ``serial``:
    inductor's own, for any other list of builders (a precompiled header, one unit); ``lock``:
    the file lock to take, as inductor does. A unit already built is not built again."""
    import os
    import threading

    def at_once(lock_path: str, builders) -> None:
        if len(builders) != 3:
            return serial(lock_path, builders)
        *units, link = builders
        with lock(lock_path):
            todo = [b for b in units if not os.path.exists(b.get_target_file_path())]
            errors: list = []

            def build(builder) -> None:
                try:
                    builder.build()
                except BaseException as e:  # (raised below, in the caller's thread)
                    errors.append(e)

            others = [threading.Thread(target=build, args=(b,), name="fkernel-cpp-unit") for b in todo[1:]]
            for thread in others:
                thread.start()
            for builder in todo[:1]:
                build(builder)
            for thread in others:
                thread.join()
            if errors:
                raise errors[0]
            if not os.path.exists(link.get_target_file_path()):
                link.build()

    return at_once


def building_units_at_once() -> bool:
    """Have inductor build each graph's C++ units at once (:func:`units_at_once`) where this process
    may use two or more cores: one after the other they were most of a cold compile's g++ time.
    Returns False, changing nothing, on one core or where the installed inductor has no such
    function (a private API)."""
    import os

    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    if len(cores) < 2:
        return False
    try:
        from torch._inductor import codecache
        from torch.utils._filelock import FileLock

        serial, timeout = codecache._worker_compile_cpp, codecache.LOCK_TIMEOUT
    except (ImportError, AttributeError):
        return False
    if not getattr(serial, "at_once", False):
        at_once = units_at_once(serial, lambda path: FileLock(path, timeout=timeout))
        at_once.at_once = True
        codecache._worker_compile_cpp = at_once
    return True


def compile_in_process() -> None:
    """Have inductor compile in this process, without its pool of compile workers. A CUDA build of
    torch (triton installed) starts that pool at every compile, even of a CPU graph: worker
    processes that import torch on the cores the run trains on. A graph built by the C++ wrapper
    is two C++ units compiled here in any case, so the pool has nothing to do; on two cores its
    start made a cold compile of the default run seconds slower (``benchmarks/README.md``).
    The setting is the process's (inductor reads it before a compile's options apply)."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1


def serializable_guards(entries) -> list:
    """Keep the guards a saved function can carry: not those on module globals, nor the kinds
    dynamo cannot save (on object identity: closures, functions, modules)."""
    from torch._dynamo.guards import CheckFunctionManager

    unsaved = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [not entry.is_global and entry.guard_type not in unsaved for entry in entries]


def compiled_and_saved(fn: Callable, options: dict, args: tuple, path):
    """``fn`` compiled for ``args`` as one graph and saved to ``path`` (written whole or not at all),
    or None where it cannot be saved (the caller compiles it as usual)."""
    options = dict(options, guard_filter_fn=serializable_guards)
    try:
        made = torch.compile(fn, fullgraph=True, dynamic=False, options=options).aot_compile((args, {}))
        path.parent.mkdir(parents=True, exist_ok=True)
        made.save_compiled_function(str(path))
    except Exception:  # (an object it closes over that does not pickle, an unwritable cache)
        return None
    return made


def loaded(path, args: tuple):
    """The function saved at ``path`` if there is one, it loads, and its guards accept ``args``;
    else None."""
    try:
        with open(path, "rb") as f:
            made = torch.compiler.load_compiled_function(f)
        if not made.guard_check(*args):
            return None
    except Exception:  # (no file, another torch or Python, a damaged file)
        return None
    return made


def guarded(made, fallback: Callable) -> Callable:
    """``made`` for every call its guards accept; ``fallback`` (a traced function) for the rest."""
    made.disable_guard_check()  # (checked here, once per call)

    def call(*args):
        return made(*args) if made.guard_check(*args) else fallback(*args)

    return call


class Hot:
    """``fn`` compiled as one graph with static shapes, set up at its first call: a run that
    trains eagerly first (``--compile auto``) does not import the compiler (seconds) before its
    first update. ``dynamic=False`` because dynamo's automatic-dynamic record is kept per function
    name and source line, not per code object: a second build with other shapes in the same
    process (a sweep over ``num_envs``, a notebook) would otherwise get graphs with symbolic sizes,
    which run slower than the static ones it gets when built alone.

    Set before the first call, :attr:`save_to` has it compiled with ``aot_compile`` and saved
    there (the compile helper), and :attr:`load_from` has it loaded from there instead of traced
    where that file holds a function whose guards accept the call (a tiered run; where the files
    live and what names them: :mod:`kernel.saved`). :attr:`loaded` says which happened."""

    def __init__(self, fn: Callable, device="cpu", options: dict | None = None, name: str | None = None):
        self.own, self.device, self.options, self.name = own_code(fn), device, options, name
        self.save_to = self.load_from = None
        self.loaded = False
        self.compiled: Callable | None = None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.first(args)
        return self.compiled(*args)

    def first(self, args: tuple) -> Callable:
        chosen = self.options or hot_options(self.device)
        if chosen.get("cpp_wrapper"):
            compile_in_process()
        if torch.device(self.device).type == "cpu":
            checking_vector_isas()
            building_units_at_once()
        traced = torch.compile(self.own, fullgraph=True, dynamic=False, options=chosen)
        made = loaded(self.load_from, args) if self.load_from is not None else None
        self.loaded = made is not None
        if made is None and self.save_to is not None:
            made = compiled_and_saved(self.own, chosen, args, self.save_to)
        return traced if made is None else guarded(made, traced)


def compile_hot(fn: Callable, device="cpu", options: dict | None = None, name: str | None = None) -> Hot:
    """``fn`` compiled at its first call (:class:`Hot`); ``name``: what a saved copy is called."""
    return Hot(fn, device, options, name)
