"""morpho: vmapped host training against a loop and against torch.optim.Adam, exact seed-blend
invariants, the image sets (shapes, a CIFAR-10 folder in CIFAR's own format), env dynamics and
purity, bad requests."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import envs
from envs import hosts, images
from envs.morpho import Morpho
from envs.seedbed import BLENDING, EMPTY, FOSSILIZED, GERMINATE, GERMINATED, HOLDING, TRAINING, WAIT
from kernel.tree import leaves, tree_map

SMALL = dict(train_size=96, val_size=32, batch_size=32)


def small_env(num_envs=3, **changes) -> Morpho:
    return envs.make("morpho", num_envs, **{**SMALL, **changes})


def noise(env, seed=0):
    return torch.rand(env.noise_shape(), generator=torch.Generator().manual_seed(seed))


def with_seeds(env, state):
    """Host 0: conv3x3 training in the shadow in slot 0 and a blending norm seed in slot 1; host 1:
    depthwise holding in slot 0, bottleneck fossilized in slot 2; host 2 bare."""
    s = tree_map(torch.clone, state)
    for i, k, stage, bp, alpha in [(0, 0, TRAINING, 1, 0.0), (0, 1, BLENDING, 4, 0.5), (1, 0, HOLDING, 2, 1.0),
                                   (1, 2, FOSSILIZED, 3, 1.0)]:
        s["stage"][i, k], s["blueprint"][i, k], s["alpha"][i, k] = stage, bp, alpha
    return s


def all_close(a, b, tol):
    return all(torch.allclose(x, y, atol=tol, rtol=tol) for x, y in zip(leaves(a), leaves(b), strict=True))


# -- host training -------------------------------------------------------------------------------


def test_vmapped_host_training_equals_a_loop_over_hosts():
    env = small_env()
    state = with_seeds(env, env.reset(noise(env))[0])
    _, _, order, flips = env.noise_parts(noise(env, 1))
    batched = env.train_epoch(state, order, flips, vmapped=True)
    looped = env.train_epoch(state, order, flips, vmapped=False)
    for key in ("host", "host_opt", "seeds", "seed_opt", "grad_norm"):
        assert all_close(batched[key], looped[key], 1e-5), key
    # Training changed the hosts and the seeds that train (shadow, blending, holding, fossilized)...
    assert not torch.equal(batched["host"]["stem"]["w"], state["host"]["stem"]["w"])
    for i, k, bp in [(0, 0, "conv3x3"), (0, 1, "norm"), (1, 0, "depthwise3x3"), (1, 2, "bottleneck")]:
        assert not torch.equal(batched["seeds"][f"slot{k}"][bp]["b"][i], state["seeds"][f"slot{k}"][bp]["b"][i])
        assert batched["grad_norm"][i, k] > 0
    # ...and no seed of the bare host.
    assert all(torch.equal(a[2], b[2]) for a, b in zip(leaves(batched["seeds"]), leaves(state["seeds"])))
    assert (batched["grad_norm"][2] == 0).all()


def test_one_host_epoch_matches_torch_adam_in_a_plain_loop():
    env = small_env(num_envs=2, augment=False)
    state, _ = env.reset(noise(env))
    _, _, order, flips = env.noise_parts(noise(env, 2))
    trained = env.train_epoch(state, order, flips)
    for i in range(env.num_envs):
        params = tree_map(lambda t, i=i: t[i].clone().requires_grad_(), state["host"])
        opt = torch.optim.Adam(leaves(params), lr=env.host_lr)
        no_seeds = torch.zeros(env.slots)
        for b in range(env.minibatches):
            idx = order[i, b * env.batch_size:(b + 1) * env.batch_size]
            out = hosts.logits(params, {}, None, no_seeds, no_seeds, env.train_in[idx], ())
            opt.zero_grad()
            F.cross_entropy(out, env.data.train_y[idx]).backward()
            opt.step()
        assert all_close(tree_map(lambda t: t.detach(), params), tree_map(lambda t, i=i: t[i], trained["host"]), 1e-5)


def test_a_seed_at_alpha_zero_or_in_training_leaves_the_host_outputs_unchanged():
    env = small_env(num_envs=1)
    state, _ = env.reset(noise(env))
    host = tree_map(lambda t: t[0], state["host"])
    seeds = tree_map(lambda t: t[0], state["seeds"])
    x = env.val_in
    zero = torch.zeros(env.slots)
    bare = hosts.logits(host, seeds, torch.zeros(env.slots, env.blueprints), zero, zero, x, ())
    weights = torch.zeros(env.slots, env.blueprints)
    weights[0, 1] = weights[1, 4] = weights[2, 3] = 1.0
    active = ((1,), (4,), (3,))
    assert torch.equal(hosts.logits(host, seeds, weights, zero, zero, x, active), bare)
    assert torch.equal(hosts.logits(host, seeds, weights, zero, torch.ones(env.slots), x, active), bare)
    assert not torch.equal(hosts.logits(host, seeds, weights, torch.ones(env.slots), zero, x, active), bare)


def test_ablation_contribution_of_an_empty_slot_is_exactly_zero():
    env = small_env()
    state = with_seeds(env, env.reset(noise(env))[0])
    _, _, order, flips = env.noise_parts(noise(env, 3))
    trained = env.train_epoch(state, order, flips)
    measured = env.measure(trained, history=None)
    empty_or_training = (trained["stage"] == EMPTY) | (trained["stage"] == TRAINING)
    assert empty_or_training.sum() == 6
    assert (measured["contribution"][empty_or_training] == 0).all()
    assert (measured["gain"][2] == 0) and (measured["contribution"][2] == 0).all()  # the bare host
    # Host 0's one contributing seed (slot 1; slot 0 trains at alpha 0) accounts for its whole gain.
    assert measured["contribution"][0, 1] == measured["gain"][0]


# -- env dynamics ----------------------------------------------------------------------------------


def wait(env):
    return {h.name: torch.full((env.num_envs,), WAIT if h.name == "op" else 1) for h in env.action_spec.heads}


def test_step_is_pure_and_waiting_earns_exactly_nothing():
    env = small_env(num_envs=2)
    state, _ = env.reset(noise(env))
    before = tree_map(torch.clone, state)
    a = env.step(state, wait(env), noise(env, 4))
    b = env.step(state, wait(env), noise(env, 4))
    assert all(torch.equal(x, y) for x, y in zip(leaves(state), leaves(before)))
    assert all(torch.equal(x, y) for x, y in zip(leaves(a.state), leaves(b.state)))
    assert torch.equal(a.reward, torch.zeros(2)) and (a.state["gain"] == 0).all()
    assert (a.state["t"] == 1).all() and not torch.equal(a.state["host"]["stem"]["w"], state["host"]["stem"]["w"])


def test_germinate_plants_a_fresh_seed_and_episodes_truncate_after_the_last_epoch():
    env = small_env(num_envs=2, episode_epochs=3)
    state, obs = env.reset(noise(env))
    act = wait(env)
    act["op"] = torch.tensor([GERMINATE, WAIT])
    act["slot"], act["blueprint"] = torch.tensor([1, 0]), torch.tensor([1, 1])
    step = env.step(state, act, noise(env, 5))
    assert step.state["stage"][0, 1] == GERMINATED and step.state["blueprint"][0, 1] == 1
    assert (step.state["stage"][1] == EMPTY).all()
    fresh = hosts.init_slot(env.noise_parts(noise(env, 5))[1][0, 1], env.channels)
    assert torch.equal(step.state["seeds"]["slot1"]["conv3x3"]["w"][0], fresh["conv3x3"]["w"])
    assert step.reward[0] < 0 and step.reward[1] == 0  # op cost and the new seed's rent; nothing for WAIT
    for t in range(2):
        step = env.step(step.state, wait(env), noise(env, 6 + t))
    assert step.truncated.all() and not step.terminated.any()
    assert (env.readings(step.final_obs)["val_acc"] >= 0).all()
    assert (step.final_obs["x"][:, -1] == 1.0).all() and (step.obs["x"][:, -1] == 0).all()
    assert (step.state["t"] == 0).all() and (step.state["stage"] == EMPTY).all()


def test_heuristic_grows_seeds_through_the_whole_lifecycle():
    from envs.baselines import heuristic_actions

    env = small_env(num_envs=4, episode_epochs=12)
    g = torch.Generator().manual_seed(0)
    state, obs = env.reset(noise(env))
    seen = set()
    for t in range(11):
        a = heuristic_actions(env, state, g)
        valid = obs["masks"]["op"].gather(1, a["op"].unsqueeze(1)).squeeze(1)
        assert valid.all()
        step = env.step(state, a, noise(env, 10 + t))
        state, obs = step.state, step.obs
        seen |= set(state["stage"].flatten().tolist())
    assert {GERMINATED, TRAINING, BLENDING, HOLDING} <= seen and (FOSSILIZED in seen or 6 in seen)


# -- images ------------------------------------------------------------------------------------------


def test_shapes_are_deterministic_per_seed_and_balanced():
    a, la = images.shapes(64, seed=3)
    b, lb = images.shapes(64, seed=3)
    c, _ = images.shapes(64, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (64, 3, 32, 32) and a.dtype == torch.uint8
    _, labels = images.shapes(2000, seed=0)
    assert torch.bincount(labels, minlength=10).min() > 150


def test_a_plain_cnn_learns_the_shapes_well_above_chance():
    torch.manual_seed(0)
    data = images.load("shapes", 2048, 512)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(6):
        for idx in torch.randperm(2048).split(64):
            opt.zero_grad()
            F.cross_entropy(net(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(data.val_x).argmax(-1) == data.val_y).float().mean().item()
    assert accuracy > 0.5, accuracy  # chance is 0.1; about 0.8 measured


def write_cifar(root, per_batch=6, test=5, labels_key="labels"):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, labels_key: labels, "batch_label": name}, f)
        written.append((data, labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    return written


def test_cifar10_loader_reads_a_folder_in_cifar_format(tmp_path):
    written = write_cifar(tmp_path)
    train_x, train_y, val_x, val_y = images.raw("cifar10", 20, 4, tmp_path)
    all_train = np.concatenate([d for d, _ in written[:5]]).reshape(-1, 3, 32, 32)
    assert torch.equal(train_x, torch.from_numpy(all_train[:20]))
    assert train_y.tolist() == sum((lab for _, lab in written[:5]), [])[:20]
    assert torch.equal(val_x, torch.from_numpy(written[5][0].reshape(-1, 3, 32, 32)[:4]))
    assert val_y.tolist() == written[5][1][:4]
    env = envs.make("morpho", 2, dataset="cifar10", data_dir=str(tmp_path), train_size=24, val_size=5,
                    batch_size=8)
    step = env.step(*env.reset(noise(env))[:1], wait(env), noise(env, 1))
    assert torch.isfinite(step.state["val_loss"]).all()


def test_bad_data_requests_raise_one_line_errors(tmp_path):
    with pytest.raises(images.DataError, match="cifar-10-batches-py/ holding data_batch_1"):
        envs.check_options("morpho", {"dataset": "cifar10", "data_dir": str(tmp_path)})
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(images.DataError, match="malformed CIFAR-10 files"):
        images.load("cifar10", 8, 4, tmp_path)
    with pytest.raises(images.DataError, match="has 30 training images, fewer than the 100"):
        write_cifar(tmp_path / "small")
        images.load("cifar10", 100, 4, tmp_path / "small")
    for options, message in [({"dataset": "mnist"}, "unknown dataset 'mnist'"),
                             ({"train_size": 0}, "train_size must be a positive"),
                             ({"val_size": 0}, "val_size must be a positive"),
                             ({"dataset": "cifar10"}, "needs a data folder"),
                             ({"colour": 1}, "takes only dataset")]:
        with pytest.raises(envs.EnvOptionError, match=message):
            envs.check_options("morpho", options)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_policy_head_gets_a_finite_gradient_with_a_low_precision_trunk(precision):
    from kernel.config import Config
    from kernel.diagnose import grads_by_precision
    from kernel.precision import parse

    config = Config.for_env("morpho", num_envs=4, num_steps=8, total_steps=32, num_minibatches=2, hidden=(32,),
                            lstm_size=16, precision=precision, env_options=dict(SMALL))
    report = grads_by_precision(config, [parse(precision)])[precision]
    assert not report["skipped"]
    assert report["dtypes"]["trunk"] == ("bf16" if precision == "bf16" else "fp32")
    for group, stats in report["groups"].items():
        assert stats["nan"] == 0 and stats["inf"] == 0 and stats["norm"] < float("inf"), group
        if group.startswith("heads."):
            assert report["dtypes"][group] == "fp32" and stats["norm"] > 0, (group, stats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_training_on_cuda_equals_cpu(monkeypatch):
    # cuDNN's convolutions may use TF32 (10-bit mantissas) by default: float32 on both sides.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu, gpu = small_env(), small_env(device="cuda")
    state = with_seeds(cpu, cpu.reset(noise(cpu))[0])
    _, _, order, flips = cpu.noise_parts(noise(cpu, 1))
    on_cpu = cpu.train_epoch(state, order, flips)
    on_gpu = gpu.train_epoch(tree_map(lambda t: t.cuda(), state), order.cuda(), flips.cuda())
    for key in ("host", "seeds", "grad_norm"):
        assert all_close(on_cpu[key], tree_map(lambda t: t.cpu(), on_gpu[key]), 1e-4), key
