"""seedbed: trained LSTM and MLP policies vs the random-valid and scripted-heuristic baselines.

For each seed, trains with `Config.for_env("seedbed")` (policy lstm, then mlp; with
`--head-average decisions relevant`, each policy once per way of averaging the per-head PPO terms),
then plays `--episodes` fresh episodes with the trained policy (sampled actions, as trained, and
greedy) and with each baseline. Reports mean +- std of the episode return per policy. Per training
run it also records, over every update after the first, the smallest and largest fraction of
batch steps where the op head had a real decision, and how often each gradient-table status was
given (the live view's classification, against each group's running median). Writes JSON.

    python -m benchmarks.seedbed --seeds 0 1 2 --out benchmarks/results/seedbed.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import envs
from benchmarks.results_io import write_record
from envs.baselines import heuristic_actions, random_valid_actions


def play_baseline(name: str, episodes: int, seed: int) -> torch.Tensor:
    env = envs.make("seedbed", episodes, desync=False)  # whole episodes
    g = torch.Generator().manual_seed(seed)
    state, obs = env.reset(torch.rand(env.noise_shape(), generator=g))
    total = torch.zeros(episodes)
    for _ in range(env.episode_steps):
        a = random_valid_actions(env, obs, g) if name == "random" else heuristic_actions(env, state, g)
        s = env.step(state, a, torch.rand(env.noise_shape(), generator=g))
        total += s.reward
        state, obs = s.state, s.obs
    return total


class TrainingWatch:
    """``on_update`` callback: the op head's decision fraction per batch and the gradient-table
    status counts over a run."""

    def __init__(self, batch_size: int):
        from kernel.telemetry import NormHistory

        self.batch_size, self.history = batch_size, NormHistory()
        self.fractions: list = []
        self.statuses: dict = {}

    def __call__(self, log) -> None:
        from kernel.telemetry import group_table

        if log.update > 1:
            self.fractions.append(log.metrics["head/op/decision_steps"] / self.batch_size)
        for group, status in self.history.statuses(group_table(log.metrics)).items():
            counts = self.statuses.setdefault(group, {})
            counts[status] = counts.get(status, 0) + 1

    def record(self) -> dict:
        return {"op_decision_fraction": {"min": min(self.fractions), "max": max(self.fractions)},
                "grad_status_counts": self.statuses}


def summary(x: torch.Tensor) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)), "episodes": int(x.numel())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--policies", nargs="+", default=["lstm", "mlp"])
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--total-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head-average", nargs="+", default=["decisions"], choices=["decisions", "relevant"])
    ap.add_argument("--out", default="benchmarks/results/seedbed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kernel import train as T
    from kernel.config import Config
    from kernel.evaluate import evaluate

    results = {"runs": [], "threads": args.threads, "torch": torch.__version__, "episodes": args.episodes}
    for seed in args.seeds:
        for name in ("random", "heuristic"):
            r = summary(play_baseline(name, args.episodes, 1000 + seed))
            results["runs"].append({"policy": name, "seed": seed, **r})
            print(f"seed {seed} {name:>9}: {r['mean']:6.2f} +- {r['std']:.2f}", flush=True)
        for kind, average in [(k, a) for k in args.policies for a in args.head_average]:
            extra = {"total_steps": args.total_steps} if args.total_steps else {}
            cfg = Config.for_env("seedbed", seed=seed, policy=kind, head_average=average, **extra)
            watch = TrainingWatch(cfg.batch_size)
            start = time.perf_counter()
            state, _, train_summary = T.make_train(cfg).train(on_update=watch)
            wall = time.perf_counter() - start
            for greedy in (False, True):
                r = summary(evaluate(cfg, state.params, args.episodes, greedy=greedy, seed=1000 + seed))
                label = f"{kind}{'' if average == 'decisions' else '-avg-relevant'}-{'greedy' if greedy else 'sampled'}"
                results["runs"].append({"policy": label, "seed": seed, **r, "train_wall_s": wall,
                                        "compile_s": train_summary["compile_s"], "sps": train_summary["sps"],
                                        **watch.record(), "config": cfg.to_dict()})
                print(f"seed {seed} {label:>9}: {r['mean']:6.2f} +- {r['std']:.2f} "
                      f"(trained {wall:.0f} s, {train_summary['sps']:,.0f} SPS)", flush=True)
    by_policy: dict = {}
    for run in results["runs"]:
        by_policy.setdefault(run["policy"], []).append(run["mean"])
    results["mean_over_seeds"] = {p: {"mean": statistics.mean(v), "std_across_seeds": statistics.pstdev(v)}
                                  for p, v in by_policy.items()}
    for p, v in results["mean_over_seeds"].items():
        print(f"{p:>14}: {v['mean']:6.2f} (std across seeds {v['std_across_seeds']:.2f})")
    write_record(args.out, results)


if __name__ == "__main__":
    main()
