"""Grad steps of several configurations compiled in one process, each against its own eager result.

A process that builds more than one configuration (a notebook, a sweep, a test session) must get a
correct graph for each. This builds grad steps for (tanh, fp32, max_grad_norm 0.5), (relu, fp32),
(tanh, bf16) and (tanh, fp32, max_grad_norm 100) one after another, compiles each with
``kernel.hot.compile_hot`` (the training loop's compile path), runs each once on the same
CartPole batch (one rollout of the default config, fresh params from seed 0), and compares it with
the same step run eagerly.

    python -m benchmarks.configs_in_one_process [--json PATH]

Prints and optionally writes JSON: per configuration the compiled and eager loss and the largest
absolute difference between compiled and eager params after the step; and the number of graphs
dynamo compiled in all. A stale graph shows as a compiled loss equal to an earlier
configuration's. To measure another revision, put its tree first on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch._dynamo

from kernel import loss_scale
from kernel.build import make_optimizer, policy_for
from kernel.config import Config
from kernel.diagnose import one_batch
from kernel.hot import compile_hot
from kernel.ppo import hyper_tensors, make_grad_step

VARIANTS = [
    ("tanh, fp32, max_grad_norm 0.5", {}),
    ("relu, fp32", {"activation": "relu"}),
    ("tanh, bf16", {"precision": "bf16"}),
    ("tanh, fp32, max_grad_norm 100", {"max_grad_norm": 100.0}),
]


def leaves(tree) -> list:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in leaves(tree[k])]
    return [tree]


def grad_step_for(config: Config, env):
    policy = policy_for(config, env)
    step = make_grad_step(policy, make_optimizer(config), config.clip_vloss, config.norm_adv,
                          norm_entropy=config.norm_entropy)
    return step, loss_scale.for_precision(config.precision.needs_loss_scale)


def measure() -> dict:
    base = Config()
    run, params, batch = one_batch(base)
    idx = torch.arange(base.batch_size)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rows = []
    for name, changes in VARIANTS:
        config = base.replace(**changes)
        step, scale = grad_step_for(config, run.env)
        hyper = hyper_tensors(config, torch.zeros((), dtype=torch.int64))
        opt_state = make_optimizer(config).init(params)
        compiled = compile_hot(step, "cpu")(params, opt_state, scale, batch, idx, hyper)
        eager = step(params, opt_state, scale, batch, idx, hyper)
        diff = max(float((c - e).abs().max()) for c, e in zip(leaves(compiled[0]), leaves(eager[0])))
        rows.append({"config": name, "loss_compiled": float(compiled[3]["loss"]),
                     "loss_eager": float(eager[3]["loss"]), "max_abs_param_diff": diff})
    graphs = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
    return {"torch": torch.__version__, "configs": rows, "graphs_compiled": graphs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = measure()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
