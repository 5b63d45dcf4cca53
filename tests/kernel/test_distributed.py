"""Data-parallel PPO on two CPU processes (gloo), started by torchrun as users start it.

The ranks' params must be bit-identical after every step (they apply the same all-reduced
gradients), and equal a one-process reference that takes each step on the union of the ranks'
minibatches, leaf by leaf within float32's compiled-vs-eager tolerance (``kernel.agree``): the
reference averages one loss over the union, the ranks average two half-batch means, and the
advantage statistics are summed in another order.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kernel import agree, rng
from kernel import train as T
from kernel.config import Config
from kernel.distributed import World
from kernel.ppo import hyper_tensors, make_grad_step, minibatch
from kernel.tree import flatten_with_paths, tree_map, unflatten_paths

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Config(num_envs=8, num_steps=16, total_steps=8 * 16 * 4, update_epochs=2, num_minibatches=2,
                hidden=(16, 16), seed=7, compile=False)
K = 3
POISONED_UPDATE = 1


def torchrun(*args, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    result = torchrun(Path(__file__).with_name("distributed_worker.py"), out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def combined_reference(config: Config, updates: int) -> tuple[dict, dict]:
    """K updates in one process: each rank's envs collected with that rank's noise, every
    minibatch step taken once on the union of the ranks' minibatches. Returns the params before
    and after, flat by path."""
    runs = [T.build(config, World(r, 2)) for r in range(2)]  # built for their keys and envs only
    states = [T.init_state(run) for run in runs]
    local = runs[0].config
    params, opt_state, scale, key = states[0].params, states[0].opt_state, states[0].loss_scale, states[0].rng
    start = flatten_with_paths(params)
    carries = [s.carry for s in states]
    step = make_grad_step(runs[0].policy, runs[0].optimizer, local.clip_vloss, local.norm_adv)
    size = local.batch_size // local.num_minibatches
    for update in range(updates):
        key, sub = rng.split(key)
        batches, perms = [], []
        for r, run in enumerate(runs):
            generator = rng.generator(T.rank_key(run, sub))
            carries[r], _, batch = T.collect(run, params, carries[r], generator)
            batches.append(batch)
            keys = torch.rand(local.update_epochs, local.batch_size, generator=generator)
            perms.append(keys.argsort(dim=1).view(local.update_epochs, local.num_minibatches, size))
        hyper = hyper_tensors(local, torch.tensor(update))
        for e in range(local.update_epochs):
            for m in range(local.num_minibatches):
                parts = [minibatch(b, p[e, m], False) for b, p in zip(batches, perms)]
                union = tree_map(lambda *xs: torch.cat(xs), *parts)
                params, opt_state, scale, _ = step(params, opt_state, scale, union, torch.arange(2 * size), hyper)
    return start, flatten_with_paths(params)


def test_ranks_stay_bit_identical_and_match_one_process_over_the_union(ranks):
    a, b = load_file(ranks / "clean-0.st"), load_file(ranks / "clean-1.st")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    start, reference = combined_reference(CONFIG, K)
    ranks_params = {f"params.{k}": a[f"params.{k}"] for k in reference}
    assert agree.state_disagreements(unflatten_paths({f"params.{k}": v for k, v in reference.items()}),
                                     unflatten_paths(ranks_params),
                                     unflatten_paths({f"params.{k}": v for k, v in start.items()}),
                                     agree.TOLERANCE["fp32"]) == []
    assert int(a["opt.inner.adam.count"]) == K * CONFIG.update_epochs * CONFIG.num_minibatches


def test_a_non_finite_rank_makes_every_rank_skip(ranks):
    a, b = load_file(ranks / "poisoned-0.st"), load_file(ranks / "poisoned-1.st")
    steps = CONFIG.update_epochs * CONFIG.num_minibatches
    assert int(a["skipped"]) == int(b["skipped"]) == steps  # every step of the poisoned update
    for k in a:
        assert torch.equal(a[k], b[k]), k


def reference_stats(samples: torch.Tensor) -> dict:
    """gymnasium's RunningMeanStd fed ``samples`` in one batch: the statistics of all of them."""
    from gymnasium.wrappers.utils import RunningMeanStd

    rms = RunningMeanStd(shape=tuple(samples.shape[1:]))
    rms.update(samples.double().numpy())
    return {"mean": torch.as_tensor(rms.mean), "var": torch.as_tensor(rms.var),
            "count": torch.tensor(rms.count, dtype=torch.float64)}


def accumulated_returns(seen: dict, gamma: float) -> torch.Tensor:
    """The discounted return each sub-environment had after every step (reset when an episode
    ends), in a plain loop and in float32 as gymnasium's vector ``NormalizeReward`` keeps it: what
    reward scaling takes its statistics of."""
    acc, out = torch.zeros(seen["reward"].shape[1], dtype=torch.float32), []
    for r, term, trunc in zip(seen["reward"].float(), seen["terminated"], seen["truncated"]):
        acc = acc * gamma * (~term).float() + r
        out.append(acc.clone())
        acc = torch.where(term | trunc, 0.0, acc)
    return torch.cat(out)


def stats_gap(a: dict, b: dict) -> float:
    """The largest relative difference of mean, variance and count."""
    return max(float(((a[k] - b[k].reshape(a[k].shape)).abs() / b[k].abs().clamp_min(1e-12)).max())
               for k in ("mean", "var", "count"))


def test_normalization_statistics_hold_every_ranks_samples(ranks):
    """Both ranks end with the same statistics, those of every observation (and every accumulated
    return) either rank's envs produced, reset observations included. Measured gaps: 3e-15
    (observations) and 8e-16 (returns) relative, against 1e-12 allowed; rank 0's samples alone
    miss by 1.9, both ranks' without rank 1's reset observations by 0.09."""
    a, b = (load_file(ranks / f"norm-{r}.st") for r in range(2))
    for k in a:
        if k.startswith("norm"):
            assert torch.equal(a[k], b[k]), k
    seen = [unflatten_paths(s)["seen"] for s in (a, b)]
    ended = {k: {"mean": a[f"norm.{k}.mean"], "var": a[f"norm.{k}.var"], "count": a[f"norm.{k}.count"]}
             for k in ("obs", "ret")}
    obs = torch.cat([s["obs"] for s in seen])
    assert stats_gap(ended["obs"], reference_stats(obs)) < 1e-12
    returns = torch.cat([accumulated_returns(s, CONFIG.gamma) for s in seen])
    assert stats_gap(ended["ret"], reference_stats(returns[:, None])) < 1e-12
    n = CONFIG.num_envs // 2
    wrong = {"one rank's samples": seen[0]["obs"],
             "no reset observations of rank 1": torch.cat([seen[0]["obs"], seen[1]["obs"][n:]])}
    for name, samples in wrong.items():
        assert stats_gap(ended["obs"], reference_stats(samples)) > 1e-6, name


def rank_pid(tag: str, rank: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FKERNEL_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_killed_rank_stops_the_job_and_the_last_checkpoint_resumes(tmp_path):
    import signal
    import time

    out, tag = tmp_path / "run", tmp_path.name
    flags = ["--num-envs", "4", "--num-steps", "16", "--no-compile", "--checkpoint-every", "1", "--out", str(out)]
    args = [sys.executable, "-m", "cli.main", "train", "--nproc", "2", *flags]
    env = dict(os.environ, PYTHONPATH=str(ROOT), FKERNEL_TEST_TAG=tag)
    job = subprocess.Popen([*args, "--total-steps", str(4 * 16 * 5000)], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "ckpt-0000003.safetensors").exists():
        assert job.poll() is None and time.time() < deadline, "the job ended or never checkpointed"
        time.sleep(0.2)
    pid = rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0 and time.time() - killed < 60, output[-2000:]
    assert "rank 1 failed (killed by SIGKILL)" in output, output[-2000:]
    # Resumed by torchrun itself this time (the ranks join its process group; no --nproc).
    external = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                "-m", "cli.main", "train", *flags]
    resumed = subprocess.run([*external, "--resume", "latest", "--total-steps", str(4 * 16 * 12)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming at update" in resumed.stdout and (out / "summary.json").exists()


def test_a_group_of_runs_split_over_two_ranks_equals_the_group_in_one_process(tmp_path):
    """Runs are independent, so ranks split them (no gradient exchange); the folder and results
    are the one-process group's, up to the rounding of a 2-run vs a 4-run vmapped matmul."""
    from kernel.checkpoint import flatten_sections, load

    flags = ["--num-envs", "2", "--num-steps", "16", "--total-steps", "96", "--no-compile", "--seeds", "0-1",
             "--sweep", "lr=1e-3,3e-3", "--checkpoint-every", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for out, extra in ((tmp_path / "one", []), (tmp_path / "two", ["--nproc", "2"])):
        result = subprocess.run([sys.executable, "-m", "cli.main", "train", *flags, *extra, "--out", str(out)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert [r["seed"] for r in two["runs"]] == [r["seed"] for r in one["runs"]] and two["world_size"] == 2
    for r in range(4):
        a = flatten_sections(load(tmp_path / "one" / f"run-{r}" / "params.safetensors")[0])
        b = flatten_sections(load(tmp_path / "two" / f"run-{r}" / "params.safetensors")[0])
        assert agree.state_disagreements(unflatten_paths(a), unflatten_paths(b), None, agree.TOLERANCE["fp32"]) == []


def test_a_job_that_cannot_be_split_is_refused_before_any_rank_starts(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    for flags, needle in ((["--num-envs", "3"], "num_envs=3 cannot be split evenly over 2 processes"),
                          (["--seeds", "0-2"], "3 runs cannot be split evenly over 2 processes")):
        result = CliRunner().invoke(cli, ["train", "--nproc", "2", "--no-compile", *flags, "--out", str(tmp_path)])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_a_worker_rank_ends_with_its_output_flushed_and_exit_code_zero():
    script = ("import sys\nfrom kernel import distributed\n"
              "print('left the group', end='')\nprint('warned', end='', file=sys.stderr)\n"
              "distributed.end_worker_rank()\nraise SystemExit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (buffered, as a pipe is)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "left the group", "warned")
