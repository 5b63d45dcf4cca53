"""fkernel (compiled and eager) vs a CleanRL-style PPO, side by side in one process.

The baseline is written the way CleanRL's ppo.py is: an ``nn.Module`` actor-critic (64-64 tanh,
CleanRL's orthogonal init), ``torch.distributions.Categorical``, ``torch.optim.Adam(eps=1e-5)``,
``loss.backward()`` and ``clip_grad_norm_``, annealed lr, the same hyperparameters (PureJaxRL's
CartPole configuration) and the same batched torch CartPole (``envs.cartpole``), so only the
training-code style differs. Reports env steps per second (wall and process CPU time) for each,
and the ratios, all measured in this run.

    python -m benchmarks.compare_cleanrl --total-steps 100000 --out benchmarks/results/compare_cleanrl.json
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as tnn

from benchmarks.results_io import write_record
from envs.cartpole import CartPole
from kernel.config import Config
from kernel.ppo import gae


def layer(i, o, std=2 ** 0.5):
    lin = tnn.Linear(i, o)
    tnn.init.orthogonal_(lin.weight, std)
    tnn.init.constant_(lin.bias, 0.0)
    return lin


class Agent(tnn.Module):
    def __init__(self):
        super().__init__()
        self.critic = tnn.Sequential(layer(4, 64), tnn.Tanh(), layer(64, 64), tnn.Tanh(), layer(64, 1, 1.0))
        self.actor = tnn.Sequential(layer(4, 64), tnn.Tanh(), layer(64, 64), tnn.Tanh(), layer(64, 2, 0.01))

    def value(self, x):
        return self.critic(x).squeeze(-1)

    def act(self, x, action=None):
        dist = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(x)


def cleanrl_train(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    env = CartPole(cfg.num_envs)
    agent = Agent()
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    state, obs = env.reset(torch.rand(env.noise_shape()))
    T, N = cfg.num_steps, cfg.num_envs
    returns, ep_ret = [], torch.zeros(N)
    start, cpu0 = time.perf_counter(), time.process_time()
    for update in range(cfg.num_updates):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (1.0 - update / cfg.num_updates)
        buf = {k: [] for k in ("obs", "act", "logp", "val", "rew", "term", "trunc", "next_val")}
        with torch.no_grad():
            for _ in range(T):
                a, logp, _, v = agent.act(obs)
                step = env.step(state, a, torch.rand(env.noise_shape()))
                for k, x in zip(buf, (obs, a, logp, v, step.reward, step.terminated, step.truncated,
                                      agent.value(step.final_obs))):
                    buf[k].append(x)
                ep_ret += step.reward
                done = step.terminated | step.truncated
                returns.extend(ep_ret[done].tolist())
                ep_ret[done] = 0
                state, obs = step.state, step.obs
        b = {k: torch.stack(v) for k, v in buf.items()}
        adv, ret = gae(b["rew"], b["val"], b["next_val"], b["term"], b["trunc"], cfg.gamma, cfg.gae_lambda)
        flat = {"obs": b["obs"].reshape(-1, 4), "act": b["act"].reshape(-1), "logp": b["logp"].reshape(-1),
                "val": b["val"].reshape(-1), "adv": adv.reshape(-1), "ret": ret.reshape(-1)}
        for _ in range(cfg.update_epochs):
            for idx in torch.randperm(cfg.batch_size).view(cfg.num_minibatches, -1):
                _, logp, ent, v = agent.act(flat["obs"][idx], flat["act"][idx])
                ratio = (logp - flat["logp"][idx]).exp()
                a = flat["adv"][idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                v_old = flat["val"][idx]
                v_clip = v_old + (v - v_old).clamp(-cfg.clip_coef, cfg.clip_coef)
                vl = 0.5 * torch.max((v - flat["ret"][idx]) ** 2, (v_clip - flat["ret"][idx]) ** 2).mean()
                loss = pg - cfg.ent_coef * ent.mean() + cfg.vf_coef * vl
                opt.zero_grad()
                loss.backward()
                tnn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                opt.step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    steps = cfg.num_updates * cfg.batch_size
    last = returns[-100:]
    return {"wall_s": wall, "cpu_s": cpu, "env_steps": steps, "sps_wall": steps / wall, "sps_cpu": steps / cpu,
            "compile_s": 0.0, "mean_return_last100": sum(last) / max(len(last), 1)}


def fkernel_train(cfg: Config) -> dict:
    from kernel import train as T

    train = T.make_train(cfg)
    state = train.init()
    compile_s = T.warmup(train.built, state)
    cpu0 = time.process_time()
    summary = train.train(state=state).summary
    cpu = time.process_time() - cpu0
    steps = summary["env_steps"]
    return {"wall_s": summary["run_s"], "cpu_s": cpu, "env_steps": steps, "sps_wall": summary["sps"],
            "sps_cpu": steps / cpu, "compile_s": compile_s, "mean_return_last100": summary["mean_return"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-steps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/compare_cleanrl.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config(total_steps=args.total_steps, seed=args.seed)
    results = {
        "cleanrl_style_eager": cleanrl_train(cfg),
        "fkernel_eager": fkernel_train(cfg.replace(compile=False)),
        "fkernel_compiled": fkernel_train(cfg.replace(compile=True)),
    }
    base = results["cleanrl_style_eager"]
    for name, r in results.items():
        r["sps_wall_vs_cleanrl"] = r["sps_wall"] / base["sps_wall"]
        r["sps_cpu_vs_cleanrl"] = r["sps_cpu"] / base["sps_cpu"]
        print(f"{name:>20}: {r['sps_wall']:>8,.0f} SPS wall ({r['sps_wall_vs_cleanrl']:.2f}x), "
              f"{r['sps_cpu']:>8,.0f} SPS cpu ({r['sps_cpu_vs_cleanrl']:.2f}x), compile {r['compile_s']:.1f} s, "
              f"return {r['mean_return_last100']:.1f}", flush=True)
    record = {"config": cfg.to_dict(), "threads": args.threads, "torch": torch.__version__, "results": results}
    write_record(args.out, record)


if __name__ == "__main__":
    main()
