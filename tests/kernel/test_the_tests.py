"""The equivalence assertion of the compiled-vs-eager tests (``compiled_vs_eager.disagreements``)
fails on the bugs it exists for.

Each wrong variant below is the reference computation with one thing broken (eagerly, so no compile
is paid here); every one must be reported, in every precision. The compiled runs pass the same
assertion in ``test_configs_in_one_process.py`` (CPU) and ``test_cuda.py`` (CUDA).

Some variants are as small as a low precision's own rounding gap: in bfloat16 and float16 a dropped
entropy term moves the update by less than compiled and eager differ, and an fp32 trunk in place of
a bf16 one stays inside bf16's tolerance. :data:`STRUCTURAL` names those per dtype; the structural
checks (the loss recomposed from its terms, the dtypes of the matrix products) must be what
reports them.
"""
from __future__ import annotations

import pytest
import torch
from compiled_vs_eager import clip_engagement, disagreements, run_steps, shared_batch, steps_config

from kernel import train as T
from kernel.config import Config
from kernel.ppo import hyper_tensors

CASES = {
    "cartpole": Config(num_envs=4, num_steps=16, hidden=(16, 16), seed=5, compile=False),
    "seedbed": Config.for_env("seedbed", num_envs=4, num_steps=8, hidden=(32,), lstm_size=16, seed=5, compile=False),
}
VARIANTS = {
    "lr x2": lambda c: dict(lr=2 * c.lr),
    "lr not annealed": lambda c: dict(anneal_lr=False),
    "entropy term dropped": lambda c: dict(ent_coef=0.0),
    "clip coefficient x1.25": lambda c: dict(clip_coef=1.25 * c.clip_coef),
    "other activation": lambda c: dict(activation="relu" if c.activation == "tanh" else "tanh"),
    "max_grad_norm x2": lambda c: dict(max_grad_norm=2 * c.max_grad_norm),
    "fp32 trunk": lambda c: dict(precision="fp32"),
    "frozen step counter": None,  # the hyperparameters of update 0 instead of the current one
}
STRUCTURAL = {"fp32": set(), "bf16": {"entropy term dropped", "fp32 trunk"},
              "fp16": {"entropy term dropped", "fp32 trunk"}}
STRUCTURAL_LINES = ("matrix products", "the loss is")


REFERENCES = [("cartpole", "fp32"), ("cartpole", "bf16"), ("cartpole", "fp16"), ("seedbed", "bf16")]
# Every variant for every reference, but an fp32 trunk only where the reference computes in another dtype.
PAIRS = [(ref, v) for ref in REFERENCES for v in VARIANTS if not (v == "fp32 trunk" and ref[1] == "fp32")]
_REFERENCES: dict = {}


def reference_for(env: str, precision: str):
    """The reference run, its state and batch, and its result (built once per module)."""
    if (env, precision) not in _REFERENCES:
        config = steps_config(CASES[env].replace(precision=precision))
        run = T.build(config)
        state = T.init_state(run)
        batch = shared_batch(run, state)
        _REFERENCES[env, precision] = config, run, state, batch, run_steps(run, state, batch)
    return _REFERENCES[env, precision]


@pytest.fixture(scope="module", params=REFERENCES, ids=lambda p: "-".join(p))
def reference(request):
    return reference_for(*request.param)


def test_the_reference_engages_both_clips(reference):
    config, run, _, batch, result = reference
    seen = clip_engagement(run, batch, result)
    assert seen["ratio_clipped"] > 0.02 and seen["value_clipped"] > 0.1, seen
    # No ratio within 5e-5 of a clip edge (measured: 6.4e-5 at the closest): compiled and eager
    # float32 ratios differ by ~1e-7, so none can cross an edge; in low precision a crossing
    # changes one row of one minibatch, inside that dtype's tolerance.
    assert seen["edge_margin"] > 5e-5, seen


def test_an_equal_computation_passes(reference):
    config, _, state, batch, result = reference
    again = T.build(config)
    assert disagreements(result, run_steps(again, state, batch), state, again, config, batch) == []


@pytest.mark.parametrize("ref, variant", PAIRS, ids=[f"{'-'.join(r)}-{v}" for r, v in PAIRS])
def test_every_wrong_variant_fails(ref, variant):
    config, run, state, batch, result = reference_for(*ref)
    if VARIANTS[variant] is None:
        wrong_run = run
        wrong = run_steps(run, state, batch, hyper_tensors(config, torch.zeros((), dtype=torch.int64)))
    else:
        wrong_run = T.build(config.replace(**VARIANTS[variant](config)))
        wrong = run_steps(wrong_run, state, batch)
    problems = disagreements(result, wrong, state, wrong_run, config, batch)
    assert problems, f"{variant} passed the assertion"
    if variant in STRUCTURAL[config.precision.name]:
        assert any(marker in line for marker in STRUCTURAL_LINES for line in problems), problems
