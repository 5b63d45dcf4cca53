"""Saved compiled functions: the compile helper (:mod:`kernel.precompile`) saves each function it
compiles (``torch.compile(...).aot_compile``), and a tiered run loads it
(``torch.compiler.load_compiled_function``) instead of tracing it again: a load takes a fraction of
a second where a trace against a warm cache takes seconds.

A saved function keeps dynamo's guards on its arguments (shapes, dtypes, strides, grad mode) and
checks them at every call; a call they reject is traced instead (:func:`kernel.hot.guarded`). Guards that
cannot be saved are dropped: those on module globals (as for every compiled function,
:func:`kernel.hot.skip_module_global_guards`) and those on the objects a function closes over
(its policy, env and optimizer functions, whose identity is new in every process). What those
closures hold comes from the config and the code, so a file's name holds both
(:func:`saved_path`): every config value but the seed, the length and the compile choices, the
group's runs but not their seeds, and a digest of the kernel's and the envs' source. Only a tiered
run loads these files, since its switch update checks the loaded functions against the eager ones
on the same inputs (:func:`kernel.train.checked_update`) and stays eager if they differ;
``--compile on`` traces with every guard. CPU only (the only device where they were measured),
and unfused (:func:`supported`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from kernel.plan import records_dir, signature

# Config keys a saved function's name leaves out: they never reach a graph (the seed draws initial
# values; the length and the plan choose how many updates and whether they are compiled).
NOT_IN_NAME = ("seed", "total_steps", "compile", "compile_from_update", "fuse")


@functools.cache
def source_digest() -> str:
    """A digest of every Python file of the ``kernel`` and ``envs`` packages: the code a saved
    function was traced from."""
    import envs
    import kernel

    digest = hashlib.sha256()
    for package in (kernel, envs):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def supported(built) -> bool:
    """Whether the compiled functions of ``built`` are saved and loaded: on CPU, with a torch that
    loads saved functions (it saves them with ``aot_compile``, which came with it), unfused (the
    switch check compares stage by stage; a fused iteration is one graph, so it is traced with every
    guard), and not for a caller's own env (the config does not name it). Asked before a run's
    first update, so it imports nothing."""
    return built.device.type == "cpu" and hasattr(torch.compiler, "load_compiled_function") \
        and built.whole is None and not built.own_env


def saved_path(built, name: str) -> Path:
    """Where the compiled function ``name`` of ``built`` is saved: next to inductor's cache, named
    for what shapes it (:data:`NOT_IN_NAME`)."""
    job = {k: v for k, v in built.job.to_dict().items() if k not in NOT_IN_NAME}
    runs = built.all_runs.to_dict() if built.all_runs is not None else None
    if runs is not None:
        runs = {k: v for k, v in runs.items() if k != "seeds"}
    text = json.dumps([signature(built.job, built.plan.fuse), job, runs, built.world.rank, built.world.size,
                       source_digest(), name], sort_keys=True, default=str)
    return records_dir() / f"saved-{name}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.bin"
