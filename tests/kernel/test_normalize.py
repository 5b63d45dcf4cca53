"""Running statistics and the normalizing transforms against gymnasium's RunningMeanStd."""
import numpy as np
import torch
from gymnasium.wrappers.utils import RunningMeanStd

from kernel import normalize as N


def test_running_statistics_equal_gymnasiums(gen):
    ours, theirs = N.running_init((3,)), RunningMeanStd(shape=(3,))
    for size in (4, 1, 7, 4):
        batch = torch.randn(size, 3, generator=gen, dtype=torch.float64) * 5 + 2
        ours = N.running_update(ours, batch)
        theirs.update(batch.numpy())
    # both float64, the same formula: measured 3e-14 relative over 20 seeds
    np.testing.assert_allclose(ours["mean"].numpy(), theirs.mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours["var"].numpy(), theirs.var, rtol=1e-12, atol=0)
    assert float(ours["count"]) == theirs.count


def test_a_wrong_update_is_caught(gen):
    """The comparison above fails for a variant that forgets the cross term of the merge."""
    ours, theirs = N.running_init(()), RunningMeanStd(shape=())
    for _ in range(3):
        batch = torch.randn(5, generator=gen, dtype=torch.float64) + 3
        merged = N.running_update(ours, batch)
        wrong_var = (ours["var"] * ours["count"] + batch.var(unbiased=False) * 5) / merged["count"]
        ours = merged
        theirs.update(batch.numpy())
    assert abs(float(ours["var"]) - theirs.var) < 1e-12 and abs(float(wrong_var) - theirs.var) > 1e-3


def test_normalized_values_are_standardized_and_clipped():
    stats = {"mean": torch.tensor([1.0], dtype=torch.float64), "var": torch.tensor([4.0], dtype=torch.float64),
             "count": torch.tensor(10.0, dtype=torch.float64)}
    x = torch.tensor([[3.0], [1.0], [100.0]])
    out = N.normalized(x, stats)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 0.0, N.CLIP]), rtol=1e-6, atol=1e-6)
    reward = N.scaled_reward(torch.tensor([2.0, -1000.0]), {"var": torch.tensor(4.0, dtype=torch.float64)})
    torch.testing.assert_close(reward, torch.tensor([1.0, -N.CLIP]), rtol=1e-6, atol=1e-6)


def test_the_transforms_in_rollout_order_equal_gymnasiums_wrappers():
    """A raw Pendulum vector env and the same one wrapped in gymnasium's NormalizeObservation and
    NormalizeReward (same seeds and torques, within one episode: the wrappers refuse gymnasium's
    same-step autoreset): the raw stream run through kernel.normalize in the rollout's order gives
    the wrapped env's observations and rewards."""
    assert stream_gap(update_first=True) < 2e-6  # float32 outputs: measured 7.2e-7
    # a variant that normalizes with the statistics before this step's batch is far off
    assert stream_gap(update_first=False) > 1e-3


def stream_gap(update_first: bool) -> float:
    """The largest gap between the transforms and the wrappers; ``update_first=False``: the
    observations normalized with the statistics before their own batch (a wrong order)."""
    import gymnasium as gym
    from gymnasium.wrappers.vector import NormalizeObservation, NormalizeReward

    def make():
        return gym.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync")

    raw, wrapped = make(), NormalizeReward(NormalizeObservation(make()), gamma=0.9)
    obs, _ = raw.reset(seed=[1, 2, 3])
    want_obs, _ = wrapped.reset(seed=[1, 2, 3])
    stats, ret, acc = N.running_update(N.running_init((3,)), torch.as_tensor(obs)), N.running_init(()), torch.zeros(3)
    gaps = [(N.normalized(torch.as_tensor(obs), stats) - torch.as_tensor(want_obs)).abs().max()]
    actions = np.random.default_rng(0).uniform(-2, 2, (199, 3, 1)).astype(np.float32)
    for a in actions:
        obs, reward, term, trunc, _ = raw.step(a)
        want_obs, want_reward, *_ = wrapped.step(a)
        before, stats = stats, N.running_update(stats, torch.as_tensor(obs))
        acc = N.accumulated_return(acc, torch.as_tensor(reward, dtype=torch.float32), torch.as_tensor(term), 0.9)
        ret = N.running_update(ret, acc)
        used = stats if update_first else before
        gaps.append((N.normalized(torch.as_tensor(obs), used) - torch.as_tensor(want_obs)).abs().max())
        ours = torch.as_tensor(reward) / torch.sqrt(ret["var"] + N.EPSILON)
        gaps.append((ours - torch.as_tensor(want_reward)).abs().max())
        acc = torch.where(torch.as_tensor(term | trunc), torch.zeros_like(acc), acc)
    return float(max(gaps))


class Recorder:
    """A rank's view of the collectives: records what it sums, or answers with given totals."""

    def __init__(self, totals=None):
        self.sent, self.totals = [], list(totals or [])

    def sum(self, x):
        self.sent.append(x)
        return self.totals.pop(0) if self.totals else x


def test_ranks_statistics_combine_into_those_of_all_their_samples(gen):
    before = N.running_update(N.running_init((2,)), torch.randn(6, 2, generator=gen, dtype=torch.float64))
    batches = [torch.randn(4, 2, generator=gen, dtype=torch.float64) + r for r in range(2)]
    afters = [N.running_update(before, b) for b in batches]
    recorders = [Recorder(), Recorder()]
    for rec, after in zip(recorders, afters):
        N.combined(before, after, rec)
    totals = [a + b for a, b in zip(recorders[0].sent, recorders[1].sent)]
    merged = N.combined(before, afters[0], Recorder(totals))
    want = N.running_update(before, torch.cat(batches))
    for k in ("mean", "var", "count"):
        torch.testing.assert_close(merged[k], want[k], rtol=1e-12, atol=0)  # measured 1.7e-16 relative
    assert not torch.allclose(afters[0]["var"], want["var"])  # one rank alone is not the answer
