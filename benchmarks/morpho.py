"""morpho: host-training throughput (vmapped vs a Python loop over hosts), the scripted baselines
and a trained LSTM policy, measured in one run. Writes JSON.

* throughput: host-epochs per second (one epoch of every sub-environment's host over the training
  split) for ``--envs`` hosts, vmapped vs stepping the hosts one after another, side by side
  (alternating, median of ``--repeats``), for bare hosts and for hosts with a mix of seeds.
* baselines: one episode per sub-environment with the crippled host left alone (WAIT only),
  uniform random valid actions and the scripted heuristic; final validation accuracy, the seeds'
  gain (ablation) and the episode return.
* trained: ``Config.for_env("morpho")`` (LSTM factored policy) trained for ``--total-steps``, then
  played greedily and sampled like the baselines; ``--precision bf16`` trains with a bf16 trunk.
* plain CNN: an uncrippled three-layer CNN trained on the same shapes, for reference.
* iteration: one PPO iteration of the default config split into collecting (25 epochs of every
  host, eager policy acting) and the eager policy update, to show where an iteration's time goes.
* compile: the vmapped host step under ``torch.compile`` against eager, for hosts with seeds:
  compile time of the first call and the epoch time after it (whether compiling would pay).

    python -m benchmarks.morpho --out benchmarks/results/morpho.json
    python -m benchmarks.morpho --device cuda --envs 64 --train-size 2048 --val-size 512 \\
        --only throughput --out benchmarks/results/cuda/morpho.json
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import envs
from benchmarks.results_io import write_record
from envs import images
from envs.baselines import heuristic_actions, random_valid_actions
from envs.seedbed import BLENDING, FOSSILIZED, HOLDING, TRAINING, WAIT
from kernel import rng
from kernel.config import Config
from kernel.rollout import draw, make_rollout

PARTS = ("throughput", "baselines", "trained", "plain", "iteration", "compile")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seeded(env, state: dict) -> dict:
    """Every slot of every host holds a seed, blueprints and stages cycling over the hosts."""
    s = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    stages = (TRAINING, BLENDING, HOLDING, FOSSILIZED)
    for i in range(env.num_envs):
        for k in range(env.slots):
            s["stage"][i, k] = stages[(i + k) % len(stages)]
            s["blueprint"][i, k] = 1 + (i + 2 * k) % (env.blueprints - 1)
            s["alpha"][i, k] = 0.0 if s["stage"][i, k] == TRAINING else 1.0
    return s


def throughput(env, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    state, _ = env.reset(draw(env.noise_shape(), g, env.device))
    _, _, order, flips = env.noise_parts(draw(env.noise_shape(), g, env.device))
    out = {}
    for label, s in (("bare hosts", state), ("hosts with seeds", seeded(env, state))):
        times = {"vmapped": [], "python loop": []}
        for vmapped in (True, False):  # warm-up: first calls allocate and fill caches
            env.train_epoch(s, order, flips, vmapped=vmapped)
        for _ in range(repeats):
            for vmapped, name in ((True, "vmapped"), (False, "python loop")):
                sync(env.device)
                t = time.perf_counter()
                env.train_epoch(s, order, flips, vmapped=vmapped)
                sync(env.device)
                times[name].append(time.perf_counter() - t)
        sync(env.device)
        t = time.perf_counter()
        env.measure(s, None)
        sync(env.device)
        measure = time.perf_counter() - t
        rates = {name: env.num_envs / statistics.median(ts) for name, ts in times.items()}
        out[label] = {"host_epochs_per_s": rates, "ratio": rates["vmapped"] / rates["python loop"],
                      "epoch_seconds": {name: statistics.median(ts) for name, ts in times.items()},
                      "measure_seconds": measure}
        print(f"{label}: vmapped {rates['vmapped']:.1f} host-epochs/s, loop {rates['python loop']:.1f} "
              f"({out[label]['ratio']:.2f}x); measuring {measure:.3f} s", flush=True)
    if torch.device(env.device).type == "cuda":
        out["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated(env.device) / 2 ** 20
    return out


def compile_cost(env, epochs: int) -> dict:
    """First-call compile time and steady epoch time of the vmapped host step, compiled vs eager,
    for one set of blueprints in use (each other set would compile again)."""
    from functools import partial

    from torch.func import vmap

    g = torch.Generator().manual_seed(0)
    state = seeded(env, env.reset(draw(env.noise_shape(), g, env.device))[0])
    _, _, order, flips = env.noise_parts(draw(env.noise_shape(), g, env.device))
    weights, alpha, gate, active = env.blend(state)
    eager = vmap(partial(env.host_step, active=active))
    steps = {"eager": eager, "compiled": torch.compile(eager)}
    out = {}
    for name, step in steps.items():
        times = []
        for _ in range(epochs + 1):
            carried = (state["host"], state["host_opt"], state["seeds"], state["seed_opt"])
            sync(env.device)
            t = time.perf_counter()
            for i in range(env.minibatches):
                idx = order[:, i * env.batch_size:(i + 1) * env.batch_size]
                x = images.flip(env.train_in[idx], flips.gather(1, idx))
                *carried, _, _ = step(*carried, weights, alpha, gate, x, env.data.train_y[idx])
            sync(env.device)
            times.append(time.perf_counter() - t)
        out[name] = {"first_epoch_s": times[0], "epoch_s": statistics.median(times[1:])}
    saving = out["eager"]["epoch_s"] - out["compiled"]["epoch_s"]
    out["compile_s"] = out["compiled"]["first_epoch_s"] - out["compiled"]["epoch_s"]
    out["epochs_to_pay_back"] = out["compile_s"] / saving if saving > 0 else None
    print(f"compile: {out['compile_s']:.1f} s; epoch eager {out['eager']['epoch_s']:.3f} s, compiled "
          f"{out['compiled']['epoch_s']:.3f} s", flush=True)
    return out


def iteration_split(env_options: dict, repeats: int) -> dict:
    """Seconds per iteration collecting vs updating the policy (eager), default morpho config."""
    from kernel import train as T
    from kernel.build import build, init_state
    from kernel.iteration import minibatch_steps, permutations
    from kernel.ppo import hyper_tensors, shuffle_units

    config = Config.for_env("morpho", env_options=env_options)
    run = build(config)
    state = init_state(run)
    times = {"collect": [], "update": []}
    for _ in range(repeats):
        generator = rng.generator(rng.split(state.rng)[1])
        t = time.perf_counter()
        carry, _, batch = T.collect(run, state.params, state.carry, generator)
        times["collect"].append(time.perf_counter() - t)
        t = time.perf_counter()
        perm_keys = torch.rand(config.update_epochs, shuffle_units(config, True), generator=generator)
        minibatch_steps(run.stages, state.params, state.opt_state, state.loss_scale, batch,
                        permutations(perm_keys, run.stages.minibatch), hyper_tensors(config, state.step))
        times["update"].append(time.perf_counter() - t)
        state = state._replace(carry=carry)
    out = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"iteration: collect {out['collect']:.2f} s, eager policy update {out['update']:.3f} s", flush=True)
    return out


def episode_summary(acc: torch.Tensor, gain: torch.Tensor, returns: torch.Tensor) -> dict:
    def stats(x):
        return {"mean": float(x.mean()), "std": float(x.std(unbiased=False))}

    return {"final_val_acc": stats(acc), "final_gain": stats(gain), "return": stats(returns), "episodes": len(acc)}


def play_scripted(env, name: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state, obs = env.reset(torch.rand(env.noise_shape(), generator=g))
    total = torch.zeros(env.num_envs)
    for _ in range(env.episode_epochs):
        if name == "heuristic":
            action = heuristic_actions(env, state, g)
        elif name == "random":
            action = random_valid_actions(env, obs, g)
        else:
            action = {h.name: torch.full((env.num_envs,), WAIT if h.name == "op" else 1)
                      for h in env.action_spec.heads}
        step = env.step(state, action, torch.rand(env.noise_shape(), generator=g))
        total += step.reward
        state, obs = step.state, step.obs
    readings = env.readings(step.final_obs)
    return episode_summary(readings["val_acc"], readings["gain"], total)


@torch.no_grad()
def play_policy(env, config: Config, params: dict, greedy: bool, seed: int) -> dict:
    from kernel.build import policy_for

    rollout = make_rollout(env, policy_for(config, env), 1, greedy=greedy)
    generator = rng.generator(rng.key(seed))
    carry = rollout.init(generator)
    for _ in range(env.episode_epochs):
        action_noise = {h: draw((env.num_envs, k), generator, env.device) for h, k in env.action_spec.sizes.items()}
        carry, record = rollout.act(params, carry, action_noise, draw(env.noise_shape(), generator, env.device))
    assert bool(record["truncated"].all())
    readings = env.readings(record["final_obs"])
    return episode_summary(readings["val_acc"], readings["gain"], record["episode_return"])


def train_policy(total_steps: int, precision: str, env_options: dict) -> tuple:
    from kernel.train import make_train

    config = Config.for_env("morpho", total_steps=total_steps, precision=precision, env_options=env_options)
    curve = []
    t = time.perf_counter()
    result = make_train(config).train(on_update=lambda log: curve.append(
        {"update": log.update, "mean_return": log.mean_return,
         "skipped_steps": float(log.metrics.get("skipped_total", 0.0))}))
    seconds = time.perf_counter() - t
    return config, result, curve, seconds


def plain_cnn_accuracy(train_size: int, val_size: int, epochs: int = 6) -> float:
    torch.manual_seed(0)
    data = images.load("shapes", train_size, val_size)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(train_size).split(64):
            opt.zero_grad()
            F.cross_entropy(net(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((net(data.val_x).argmax(-1) == data.val_y).float().mean()) * 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="Host minibatch [default: the env's]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="Episodes per sub-environment for each baseline.")
    ap.add_argument("--total-steps", type=int, default=None, help="Policy training length [default: the config's]")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--only", choices=PARTS, action="append")
    ap.add_argument("--out", default="benchmarks/results/morpho.json")
    args = ap.parse_args()
    parts = set(args.only or PARTS)
    env_options = {k: v for k, v in (("train_size", args.train_size), ("val_size", args.val_size),
                                     ("batch_size", args.batch_size)) if v}
    env = envs.make("morpho", args.envs, device=args.device, **env_options)
    record = {"envs": args.envs, "device": args.device, "threads": torch.get_num_threads(),
              "train_size": len(env.data.train_y), "val_size": len(env.data.val_y), "batch_size": env.batch_size,
              "episode_epochs": env.episode_epochs}
    if "throughput" in parts:
        record["throughput"] = throughput(env, args.repeats)
    if "baselines" in parts:
        record["baselines"] = {}
        for name in ("crippled host (wait)", "random", "heuristic"):
            t = time.perf_counter()
            rounds = [play_scripted(env, name.split()[0], seed) for seed in range(args.rounds)]
            record["baselines"][name] = merge(rounds)
            print(f"{name}: final accuracy {record['baselines'][name]['final_val_acc']['mean']:.1f} "
                  f"gain {record['baselines'][name]['final_gain']['mean']:.1f} "
                  f"return {record['baselines'][name]['return']['mean']:.2f} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    if "trained" in parts:
        total = args.total_steps or Config.for_env("morpho").total_steps
        config, result, curve, seconds = train_policy(total, args.precision, env_options)
        eval_env = envs.make("morpho", args.envs, **env_options)
        record["trained"] = {
            "total_steps": total, "precision": args.precision, "train_seconds": seconds,
            "updates": len(curve), "skipped_steps": int(result.summary.get("skipped_steps", 0)),
            "curve": curve,
            "greedy": merge([play_policy(eval_env, config, result.state.params, True, s) for s in range(args.rounds)]),
            "sampled": merge([play_policy(eval_env, config, result.state.params, False, s)
                              for s in range(args.rounds)]),
        }
        print(f"trained ({total} steps, {seconds:.0f} s): greedy accuracy "
              f"{record['trained']['greedy']['final_val_acc']['mean']:.1f}, return "
              f"{record['trained']['greedy']['return']['mean']:.2f}; sampled accuracy "
              f"{record['trained']['sampled']['final_val_acc']['mean']:.1f}", flush=True)
    if "iteration" in parts:
        record["iteration_seconds"] = iteration_split(env_options, args.repeats)
    if "compile" in parts:
        record["compile"] = compile_cost(env, args.repeats)
    if "plain" in parts:
        record["plain_cnn_val_acc"] = plain_cnn_accuracy(2048, 512)
        print(f"plain CNN on shapes: {record['plain_cnn_val_acc']:.1f}% (chance 10%)", flush=True)
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_record(args.out, record)


def merge(rounds: list) -> dict:
    """Episode statistics over several rounds, weighted by episodes."""
    out = {"episodes": sum(r["episodes"] for r in rounds)}
    for key in ("final_val_acc", "final_gain", "return"):
        means = [r[key]["mean"] for r in rounds]
        out[key] = {"mean": statistics.fmean(means), "per_round": means}
    return out


if __name__ == "__main__":
    main()
