"""The fused iteration (the whole of ``kernel.iteration.iterate`` as one graph) against the
unfused eager one, the plain reference: same noise, same numbers, after several iterations, for
CartPole's MLP and seedbed's LSTM policy in float32 and bfloat16 (and CartPole in float16, whose
loss scale rides in the scan's carry), with the leaf-by-leaf assertion of ``kernel.agree``.
Eagerly (its loops as Python loops) for every case, and compiled (the ``scan``s, one graph) for
three: a compile of the whole iteration takes about a minute on a cold cache. Wrong variants of
the fused computation must fail the same assertion, and a new learning rate or run length must
reuse the compiled graph."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from kernel import agree
from kernel.build import build, init_state
from kernel.config import Config
from kernel.iteration import permutations
from kernel.train import iteration

ITERATIONS = 3
CASES = {
    "cartpole": dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2),
    "seedbed": dict(num_envs=4, num_steps=5, num_minibatches=2, update_epochs=2, hidden=(32,), lstm_size=16),
}
METRICS = ("loss", "v_loss", "entropy", "lr", "skipped_total")
# Eager fused against eager unfused: the same ops in the same order. Measured after 3 iterations:
# bit-identical in all three precisions, for both envs; the bound only leaves room for a reordered
# reduction in another torch version.
EAGER = agree.Tolerance(update=1e-6, state=1e-6, output=1e-6)
# Compiled fused against eager unfused, after 3 iterations: kernel.agree's bounds for comparisons
# over several iterations (the measured gaps are written there).
COMPILED = agree.AFTER_ITERATIONS


# A large learning rate and a narrow clip, so that the ratio and value clips engage within the first
# iterations. seedbed's are milder: with CartPole's, a bf16 trunk's rounding flips a sampled action
# within three iterations and the compiled and eager trajectories part.
STEPS = {"cartpole": dict(lr=1e-2, clip_coef=0.03), "seedbed": dict(lr=2e-3, clip_coef=0.1)}


def config_for(env: str, precision: str) -> Config:
    return Config.for_env(env, precision=precision, total_steps=10_000, **STEPS[env], **CASES[env])


def run_both(config: Config, compile_fused: bool, fused_changes: dict | None = None, frozen_step: bool = False):
    """The states and metrics after ITERATIONS of the unfused eager path and of the fused one
    (built with ``fused_changes``; ``frozen_step``: its update counter reset after every iteration)."""
    unfused = build(config.replace(fuse="off", compile=False))
    fused = build(config.replace(fuse="on", compile=compile_fused, **(fused_changes or {})))
    assert unfused.whole is None and fused.whole is not None
    start = a = b = init_state(unfused)
    for _ in range(ITERATIONS):
        a, metrics_a = iteration(unfused, a)
        b, metrics_b = iteration(fused, b)
        if frozen_step:
            b = b._replace(step=start.step)
    if frozen_step:  # compared by its numbers only: the counter itself would give it away
        b = b._replace(step=a.step)
    return start, a, b, metrics_a, metrics_b


def disagreements(start, a, b, metrics_a, metrics_b, tol: agree.Tolerance) -> list:
    problems = agree.state_disagreements(a, b, start, tol)
    problems += agree.output_disagreements({k: metrics_a[k] for k in METRICS}, metrics_b, tol)
    for k in ("return", "length", "done"):
        if not torch.equal(metrics_b["episodes"][k], metrics_a["episodes"][k]):
            problems.append(f"episodes.{k} differ")
    return problems


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("env", ["cartpole", "seedbed"])
def test_fused_eager_equals_unfused(env, precision):
    assert disagreements(*run_both(config_for(env, precision), compile_fused=False), EAGER) == []


WRONG = {
    "lr x2": dict(fused_changes=dict(lr=2e-2)),
    "lr not annealed": dict(fused_changes=dict(anneal_lr=False)),
    "entropy term dropped": dict(fused_changes=dict(ent_coef=0.0)),
    "clip coefficient x1.25": dict(fused_changes=dict(clip_coef=0.0375)),
    "frozen step counter": dict(frozen_step=True),
}


@pytest.mark.parametrize("variant", list(WRONG))
def test_wrong_fused_variants_fail(variant):
    config = config_for("cartpole", "fp32")
    assert config.lr == 1e-2 and config.clip_coef == 0.03
    problems = disagreements(*run_both(config, compile_fused=False, **WRONG[variant]), COMPILED["fp32"])
    assert problems, f"{variant} passed"


@pytest.mark.parametrize("env,precision", [("cartpole", "fp32"), ("cartpole", "fp16"), ("seedbed", "bf16")])
def test_compiled_fused_equals_unfused(env, precision):
    result = run_both(config_for(env, precision), compile_fused=True)
    assert disagreements(*result, COMPILED[precision]) == []


def test_a_new_learning_rate_or_run_length_reuses_the_compiled_graph():
    """The hyperparameters are inputs of the fused graph: a second build with another lr, entropy
    coefficient and run length traces its own code copy and finds its graph in inductor's cache."""
    config = config_for("cartpole", "fp32").replace(fuse="on")
    first = build(config)
    iteration(first, init_state(first))
    before = dict(counters["inductor"])
    other = build(config.replace(lr=1e-3, ent_coef=0.02, vf_coef=0.7, clip_coef=0.1, total_steps=20_000))
    iteration(other, init_state(other))
    hits = counters["inductor"]["fxgraph_cache_hit"] - before.get("fxgraph_cache_hit", 0)
    misses = counters["inductor"]["fxgraph_cache_miss"] - before.get("fxgraph_cache_miss", 0)
    assert (hits, misses) == (1, 0)


def test_permutations_are_the_unfused_minibatches():
    keys = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    perms = permutations(keys, 4)
    assert perms.shape == (6, 4)
    for e in range(3):
        assert torch.equal(torch.cat([perms[2 * e], perms[2 * e + 1]]).sort().values, torch.arange(8))
        assert torch.equal(torch.cat([perms[2 * e], perms[2 * e + 1]]), keys[e].argsort())
    # A group's keys ([runs, epochs, units]): step-major, run r's column its own permutations.
    group_keys = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(1))
    group_perms = permutations(group_keys, 4)
    assert group_perms.shape == (6, 2, 4)
    assert all(torch.equal(group_perms[:, r], permutations(group_keys[r], 4)) for r in range(2))
