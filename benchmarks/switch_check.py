"""How large the switch check's gaps are over a whole run, for the right compiled functions and for
deliberately wrong ones (what :data:`kernel.agree.AT_SWITCH` is set from).

    python -m benchmarks.switch_check --every 20 --wrong-at 2,300,700 --out benchmarks/results/switch_check.json

Default CartPole trains eagerly for its whole run (976 updates); at every ``--every``-th update
:func:`kernel.train.checked_update` checks the compiled stages on that update's inputs, and at the
``--wrong-at`` updates it also checks wrong variants of them: a rollout whose policy uses relu
instead of tanh, the learning rate doubled, the entropy term dropped, the clip coefficient at 0.1,
the value coefficient halved, GAE's lambda at 0.9, and the grad step of a build without advantage
normalization. Not a timing: the JSON holds each check's largest gaps and verdict.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.results_io import write_record
from kernel.build import build, init_state, with_plan
from kernel.config import Config
from kernel.loop import unaliased
from kernel.plan import Plan
from kernel.train import checked_update, iteration


def with_hyper(grad_step, **changes):
    def step(params, opt_state, scale, batch, idx, hyper):
        changed = {k: f(hyper[k]) for k, f in changes.items()}
        return grad_step(params, opt_state, scale, batch, idx, dict(hyper, **changed))
    return step


def wrong_variants(config: Config, stages) -> dict:
    other = build(config.replace(norm_adv=False), plan=Plan(True, False, "wrong")).stages.grad_step
    relu = build(config.replace(activation="relu"), plan=Plan(True, False, "wrong")).stages.segment
    step = stages.grad_step
    return {
        "rollout of a relu policy": stages._replace(segment=relu),
        "lr doubled": stages._replace(grad_step=with_hyper(step, lr=lambda x: 2 * x)),
        "ent_coef 0": stages._replace(grad_step=with_hyper(step, ent_coef=lambda x: 0 * x)),
        "clip_coef 0.1": stages._replace(grad_step=with_hyper(step, clip_coef=lambda x: 0 * x + 0.1)),
        "vf_coef halved": stages._replace(grad_step=with_hyper(step, vf_coef=lambda x: 0.5 * x)),
        "gae_lambda 0.9": stages._replace(advantages=lambda r, v, nv, te, tr, g, lam: stages.advantages(
            r, v, nv, te, tr, g, 0 * lam + 0.9)),
        "grad step without advantage normalization": stages._replace(grad_step=other),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--wrong-at", default="2,300,700", help="updates at which the wrong variants are checked")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = Config()
    built = build(config, plan=Plan(True, False, "compiled"))
    eager = with_plan(built, Plan(False, False, "eager"))
    wrong = wrong_variants(config, built.stages)
    wrong_at = {int(u) for u in args.wrong_at.split(",") if u}
    state, right, variants = init_state(built), [], []
    for update in range(config.num_updates):
        if update and (update % args.every == 0 or update in wrong_at):
            start = state._replace(carry=unaliased(state.carry))
            _, _, check = checked_update(eager, built, start, update)
            right.append({k: check[k] for k in ("update", "agreed", "largest_gap")})
            for name, stages in (wrong.items() if update in wrong_at else ()):
                _, _, c = checked_update(eager, built._replace(stages=stages), start, update)
                variants.append({"variant": name, "update": update, "agreed": c["agreed"],
                                 "largest_gap": c["largest_gap"], "first_problem": (c["problems"] or [None])[0]})
                print(f"update {update}: {name}: agreed {c['agreed']}", flush=True)
        state, _ = iteration(eager, state)
    kinds = right[0]["largest_gap"]
    largest = {kind: max((r["largest_gap"][kind] for r in right), key=lambda g: g[0]) for kind in kinds}
    print(f"right: {sum(r['agreed'] for r in right)} of {len(right)} checks agreed; largest gaps {largest}")
    if args.out:
        allowed = checked_update(eager, built, init_state(built), 0)[2]["allowed"]
        write_record(args.out, {"config": "default cartpole", "every": args.every, "checks": right,
                                "largest_right": largest, "allowed": allowed, "wrong": variants, "threads": 1})


if __name__ == "__main__":
    main()
