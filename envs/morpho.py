"""morpho: grow a crippled image classifier by seeds, for real.

``seedbed`` simulates this task; here every sub-environment owns a real host CNN
(:mod:`envs.hosts`) and one env step is one epoch of real host training on an image set
(:mod:`envs.images`: generated ``shapes`` or a local CIFAR-10 folder).

* Seed lifecycle, ops, action heads, masks and relevance are seedbed's
  (:func:`envs.seedbed.lifecycle_step`): GERMINATE plants a freshly initialised seed of the chosen
  blueprint in an empty slot; ADVANCE moves it GERMINATED -> TRAINING (it learns in the host's
  shadow, changing nothing the host computes) -> BLENDING (alpha ramps to 1 over the tempo's
  epochs) -> HOLDING; FOSSILIZE keeps a holding seed for good; PRUNE removes a live one.
* One step: apply the decision, then train every host (and its seeds) for one epoch, all hosts
  together: one ``torch.func.vmap(torch.func.grad(...))`` call per minibatch, with Adam from
  :mod:`kernel.optim`; then measure every host on the validation split, once as it is and once
  per slot with that seed's alpha forced to 0 (the seed's *contribution*, in accuracy points).
* Reward: the change in the accuracy the seeds add (full host minus the host with every alpha at
  0), minus a rent per step for the parameters of live, not yet fossilized seeds, minus seedbed's
  small cost per op. Summed over an episode it is the final gain from seeds less what they cost.
* Episodes last ``episode_epochs`` (default 25) epochs and end by truncation (a time limit: the
  value of the final observation is bootstrapped); the host then restarts from fresh weights.
* Observation: per slot the seed's stage, blueprint and tempo (one-hot), alpha, stage age, seed
  age, training epochs, cooldown, contribution and gradient norm; globally the validation
  accuracy and loss, the last three epochs' accuracy changes, the seeds' total gain and the epoch.

All randomness (host and seed initialisation, each host's data order and flips) comes from the
step's noise, so ``reset`` and ``step`` are pure functions of their inputs. The env runs eagerly
(its per-minibatch loop is Python); the policy update that trains on it is still compiled.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from envs import hosts, images
from envs.base import ActionSpec, Head, Step
from envs.seedbed import (
    ADVANCE,
    BLENDING,
    EMPTY,
    FOSSILIZE,
    FOSSILIZED,
    GERMINATE,
    GERMINATED,
    HOLDING,
    NUM_OPS,
    NUM_STAGES,
    OP_COST,
    PRUNE,
    PRUNE_COOLDOWN,
    TEMPO_STEPS,
    TRAINING,
    lifecycle_masks,
    lifecycle_step,
    normals,
)
from kernel import optim
from kernel.tree import global_norm, tree_map

DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE = 1024, 256  # small enough for a practical CPU run
DEFAULT_BATCH_SIZE = 32  # or the whole training split, when that is smaller
RENT = 0.1  # accuracy points per step per 100 parameters of a live, not yet fossilized seed
HISTORY = 3
OPTIONS = ("dataset", "data_dir", "train_size", "val_size", "data_seed", "channels", "slots", "max_seeds",
           "episode_epochs", "batch_size", "host_lr", "augment")


class Morpho:
    name = "morpho"
    tensor_obs = False  # observations are dicts with per-head masks
    solved_return = None  # compare with the scripted baselines (envs.baselines)
    description = "grow a crippled image classifier by seeds; one step is one epoch of real training"
    compilable = False  # steps train networks in Python loops: the rollout runs it eagerly
    OPTIONS = OPTIONS

    def __init__(self, num_envs: int, device="cpu", dtype: torch.dtype = torch.float32, dataset: str = "shapes",
                 data_dir=None, train_size: int = DEFAULT_TRAIN_SIZE, val_size: int = DEFAULT_VAL_SIZE,
                 data_seed: int = 0, channels: int = 4, slots: int = 3, max_seeds: int = 3, episode_epochs: int = 25,
                 batch_size: int | None = None, host_lr: float = 1e-2, augment: bool = True, vmapped: bool = True):
        check_options(dataset=dataset, data_dir=data_dir, train_size=train_size, val_size=val_size,
                      channels=channels, slots=slots, max_seeds=max_seeds, episode_epochs=episode_epochs,
                      batch_size=batch_size, host_lr=host_lr, data_seed=data_seed, augment=augment)
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        self.data = images.load(dataset, train_size, val_size, data_dir, data_seed, self.device)
        self.train_in, self.val_in = hosts.inputs(self.data.train_x), hosts.inputs(self.data.val_x)
        self.dataset, self.channels, self.slots, self.max_seeds = dataset, channels, slots, max_seeds
        self.blueprints = len(hosts.BLUEPRINTS)
        self.batch_size = batch_size or min(DEFAULT_BATCH_SIZE, train_size)
        self.episode_epochs, self.augment, self.vmapped = episode_epochs, augment, vmapped
        self.action_spec = ActionSpec(
            (Head("op", NUM_OPS), Head("slot", slots), Head("blueprint", self.blueprints),
             Head("tempo", len(TEMPO_STEPS))),
            parent={"slot": "op"},
            relevant={"slot": (GERMINATE, ADVANCE, PRUNE, FOSSILIZE), "blueprint": (GERMINATE,),
                      "tempo": (GERMINATE,)},
        )
        self.obs_dim = slots * (NUM_STAGES + self.blueprints + len(TEMPO_STEPS) + 7) + 4 + HISTORY
        self.host_lr = host_lr
        self.optimizer = optim.adam(host_lr, foreach=False)
        self.tempo_steps = torch.tensor(TEMPO_STEPS, device=self.device, dtype=dtype)
        self.op_cost = torch.tensor(OP_COST, device=self.device, dtype=dtype)
        self.seed_params = torch.tensor(hosts.blueprint_params(channels), device=self.device, dtype=dtype)
        self.host_size = hosts.count(hosts.host_shapes(channels))
        self.slot_size = hosts.count(hosts.blueprint_shapes(channels))
        self.minibatches = train_size // self.batch_size

    # -- noise layout ----------------------------------------------------------------------------

    def noise_shape(self) -> tuple:
        # Per env: host init, every slot's seed init, then the epoch's data order and flips.
        n_train = len(self.data.train_y)
        return (self.num_envs, self.host_size + self.slots * self.slot_size + 2 * n_train)

    def noise_parts(self, noise: torch.Tensor) -> tuple:
        """``(host_z, slot_z, order, flips)`` from one step's noise: normals for a fresh host and
        for every slot's fresh seed, each host's data order for the epoch and its flipped images."""
        n_train = len(self.data.train_y)
        a = self.host_size
        b = a + self.slots * self.slot_size
        host_z = normals(noise[:, :a].float())
        slot_z = normals(noise[:, a:b].float()).reshape(self.num_envs, self.slots, self.slot_size)
        order = noise[:, b:b + n_train].float().argsort(dim=-1)
        flips = noise[:, b + n_train:b + 2 * n_train] < 0.5
        return host_z, slot_z, order, flips

    # -- state -----------------------------------------------------------------------------------

    def _fresh(self, noise: torch.Tensor) -> dict:
        n, s = self.num_envs, self.slots
        host_z, slot_z, _, _ = self.noise_parts(noise)
        host = hosts.init_host(host_z, self.channels)
        seeds = {f"slot{k}": hosts.init_slot(slot_z[:, k], self.channels) for k in range(s)}

        def zeros():  # a distinct tensor per field (aliased inputs would trouble torch.compile)
            return torch.zeros(n, s, dtype=torch.int64, device=self.device)

        state = {
            "stage": zeros(), "blueprint": zeros(), "tempo": zeros(), "stage_age": zeros(), "seed_age": zeros(),
            "train_steps": zeros(), "cooldown": zeros(),
            "alpha": torch.zeros(n, s, dtype=self.dtype, device=self.device),
            "host": host, "host_opt": self._opt_init(host),
            "seeds": seeds, "seed_opt": {k: self._seed_opt_init(v) for k, v in seeds.items()},
            "grad_norm": torch.zeros(n, s, dtype=self.dtype, device=self.device),
            "t": torch.zeros(n, dtype=torch.int64, device=self.device),
        }
        return {**state, **self.measure(state, history=None)}

    def _opt_init(self, params: dict) -> dict:
        return vmap(self.optimizer.init)(params)

    def _seed_opt_init(self, slot: dict) -> dict:
        """One Adam state per blueprint: only the blueprints in use take a step."""
        return {name: self._opt_init(params) for name, params in slot.items()}

    @staticmethod
    def check_options(**options) -> None:
        check_options(**options)

    def reset(self, noise: torch.Tensor):
        state = self._fresh(noise)
        return state, self.observe(state)

    # -- observation and masks ---------------------------------------------------------------------

    def masks(self, state: dict) -> dict:
        return lifecycle_masks(state, self.max_seeds, self.blueprints)

    def observe(self, state: dict) -> dict:
        d = self.dtype
        per_slot = torch.cat([
            F.one_hot(state["stage"], NUM_STAGES).to(d),
            F.one_hot(state["blueprint"], self.blueprints).to(d),
            F.one_hot(state["tempo"], len(TEMPO_STEPS)).to(d),
            state["alpha"].unsqueeze(-1),
            state["stage_age"].unsqueeze(-1).to(d) / 10.0,
            state["seed_age"].unsqueeze(-1).to(d) / 10.0,
            state["train_steps"].unsqueeze(-1).to(d) / 10.0,
            state["cooldown"].unsqueeze(-1).to(d) / PRUNE_COOLDOWN,
            state["contribution"].unsqueeze(-1) / 10.0,
            torch.log1p(state["grad_norm"]).unsqueeze(-1),
        ], dim=-1)
        recent = (state["val_acc"].unsqueeze(-1) - state["history"]) / 10.0
        glob = torch.stack([state["val_acc"] / 100.0, state["val_loss"] / math.log(hosts.NUM_CLASSES),
                            state["gain"] / 10.0, state["t"].to(d) / self.episode_epochs], dim=-1)
        x = torch.cat([per_slot.reshape(self.num_envs, -1), recent, glob], dim=-1)
        return {"x": x, "masks": self.masks(state)}

    @staticmethod
    def readings(obs: dict) -> dict:
        """Validation accuracy and the seeds' gain (accuracy points) read back from observations."""
        x = obs["x"]
        return {"val_acc": x[..., -4] * 100.0, "gain": x[..., -2] * 10.0}

    # -- what each seed does in the host's forward ------------------------------------------------

    def blend(self, state: dict) -> tuple:
        """``(weights [N, S, B], alpha [N, S], gate [N, S], active)``: blueprint one-hots of the
        slots in use, blend of the contributing seeds, shadow-training gate, and per slot the
        blueprints some host uses (a host-side set: unused blueprints stay out of the graph)."""
        stage = state["stage"]
        contributing = (stage == BLENDING) | (stage == HOLDING) | (stage == FOSSILIZED)
        training = stage == TRAINING
        used = contributing | training
        weights = F.one_hot(state["blueprint"], self.blueprints).to(self.dtype) * used.unsqueeze(-1).to(self.dtype)
        alpha = state["alpha"] * contributing.to(self.dtype)
        present = weights.amax(dim=0).bool().tolist()  # one host sync per step: which blueprints to build
        active = tuple(tuple(b for b in range(1, self.blueprints) if present[k][b]) for k in range(self.slots))
        return weights, alpha, training.to(self.dtype), active

    # -- one epoch of host training -----------------------------------------------------------------

    def host_step(self, host, host_opt, seeds, seed_opt, weights, alpha, gate, x, y, *, active):
        """One minibatch of Adam for one host and its seeds: new params and optimizer states, the
        loss and each slot's seed gradient norm. Only the blueprints in use take a step."""
        def loss_fn(host_params, seed_params):
            return F.cross_entropy(hosts.logits(host_params, seed_params, weights, alpha, gate, x, active), y)

        (g_host, g_seeds), loss = _grad_and_loss(loss_fn)(host, seeds)
        updates, host_opt = self.optimizer.update(g_host, host_opt, host)
        host = optim.apply_updates(host, updates, foreach=False)
        new_seeds, new_opt = {}, {}
        for k, slot in enumerate(seeds):
            new_seeds[slot], new_opt[slot] = dict(seeds[slot]), dict(seed_opt[slot])
            for b in (active[k] if k < len(active) else ()):
                name = hosts.BLUEPRINTS[b]
                updates, new_opt[slot][name] = self.optimizer.update(g_seeds[slot][name], seed_opt[slot][name],
                                                                     seeds[slot][name])
                new_seeds[slot][name] = optim.apply_updates(seeds[slot][name], updates, foreach=False)
        norms = torch.stack([global_norm(g_seeds[slot]) for slot in seeds])
        return host, host_opt, new_seeds, new_opt, loss, norms

    def train_epoch(self, state: dict, order: torch.Tensor, flips: torch.Tensor, vmapped: bool | None = None) -> dict:
        """Every host trained for one epoch (``order``: each host's data order, ``[N, n_train]``;
        ``flips``: which images to mirror). ``vmapped=False`` steps the hosts one after another
        (the reference the vmapped path is tested against, and the baseline it is measured against)."""
        weights, alpha, gate, active = self.blend(state)
        step = partial(self.host_step, active=active)
        step = vmap(step) if (self.vmapped if vmapped is None else vmapped) else _looped(step, self.num_envs)
        carried = (state["host"], state["host_opt"], state["seeds"], state["seed_opt"])
        norm_sum = torch.zeros(self.num_envs, self.slots, dtype=torch.float32, device=self.device)
        bs = self.batch_size
        for i in range(self.minibatches):
            idx = order[:, i * bs:(i + 1) * bs]
            x = self.train_in[idx]
            if self.augment:
                x = images.flip(x, flips.gather(1, idx))
            *carried, _, norms = step(*carried, weights, alpha, gate, x, self.data.train_y[idx])
            norm_sum = norm_sum + norms
        host, host_opt, seeds, seed_opt = carried
        return {**state, "host": host, "host_opt": host_opt, "seeds": seeds, "seed_opt": seed_opt,
                "grad_norm": (norm_sum / self.minibatches).to(self.dtype)}

    # -- measurement ----------------------------------------------------------------------------------

    def validation(self, state: dict, alphas: torch.Tensor, blend: tuple | None = None) -> tuple:
        """Validation accuracy (points) and loss of every host under each seed blend in ``alphas``
        (``[N, K, S]``), as ``[N, K]`` tensors: one vmapped forward over hosts and blends."""
        weights, _, _, active = blend or self.blend(state)
        one = partial(hosts.logits, active=active)
        over_blends = vmap(one, in_dims=(None, None, None, 0, None, None))
        fwd = vmap(over_blends, in_dims=(0, 0, 0, 0, 0, None))
        no_gate = torch.zeros_like(alphas[:, 0])
        with torch.no_grad():
            out = fwd(state["host"], state["seeds"], weights, alphas, no_gate, self.val_in)  # [N, K, V, 10]
        y = self.data.val_y.expand(*out.shape[:-1])
        acc = (out.argmax(-1) == y).float().mean(-1) * 100.0
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return acc.to(self.dtype), loss.reshape(*out.shape[:-1]).mean(-1).to(self.dtype)

    def measure(self, state: dict, history) -> dict:
        """Accuracy, loss, each slot's ablation contribution and the seeds' total gain: the hosts
        measured as they are, with each slot's alpha forced to 0 in turn, and with every alpha at 0."""
        blend = self.blend(state)
        alpha = blend[1]
        ablate = 1.0 - torch.eye(self.slots, dtype=alpha.dtype, device=alpha.device)  # row k: slot k off
        alphas = torch.cat([alpha.unsqueeze(1), alpha.unsqueeze(1) * ablate, torch.zeros_like(alpha).unsqueeze(1)],
                           dim=1)
        acc, loss = self.validation(state, alphas, blend)
        if history is None:  # a fresh host: no past epochs yet
            history = acc[:, 0].unsqueeze(-1).expand(-1, HISTORY).clone()
        return {"val_acc": acc[:, 0], "val_loss": loss[:, 0], "history": history,
                "contribution": acc[:, :1] - acc[:, 1:1 + self.slots], "gain": acc[:, 0] - acc[:, -1]}

    # -- dynamics -------------------------------------------------------------------------------------

    def step(self, state: dict, action: dict, noise: torch.Tensor) -> Step:
        op, s = lifecycle_step(state, action, self.masks(state), self.tempo_steps)
        _, slot_z, order, flips = self.noise_parts(noise)
        planted = (state["stage"] == EMPTY) & (s["stage"] == GERMINATED)
        if bool(planted.any()):
            s = self._replant(s, planted, slot_z)
        s = self.train_epoch(s, order, flips)
        history = torch.cat([state["history"][:, 1:], state["val_acc"].unsqueeze(-1)], dim=-1)
        s = {**s, **self.measure(s, history), "t": state["t"] + 1}

        stage = s["stage"]
        renting = (stage >= GERMINATED) & (stage <= HOLDING)
        rent = RENT / 100.0 * (self.seed_params[s["blueprint"]] * renting.to(self.dtype)).sum(-1)
        reward = (s["gain"] - state["gain"]) - rent - self.op_cost[op]
        ended = s["t"] >= self.episode_epochs
        final_obs = self.observe(s)
        if bool(ended.any()):
            fresh = self._fresh(noise)
            s = tree_map(partial(_where_env, ended), fresh, s)
        return Step(s, self.observe(s), reward, torch.zeros_like(ended), ended, final_obs)

    def _replant(self, state: dict, planted: torch.Tensor, slot_z: torch.Tensor) -> dict:
        """Fresh parameters and optimizer state for seeds germinated this step."""
        seeds, seed_opt = dict(state["seeds"]), dict(state["seed_opt"])
        for k in range(self.slots):
            key, where = f"slot{k}", partial(_where_env, planted[:, k])
            fresh = hosts.init_slot(slot_z[:, k], self.channels)
            seeds[key] = tree_map(where, fresh, seeds[key])
            seed_opt[key] = tree_map(where, self._seed_opt_init(fresh), seed_opt[key])
        return {**state, "seeds": seeds, "seed_opt": seed_opt}


def _where_env(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape(-1, *[1] * (old.dim() - 1)), new, old)


def _grad_and_loss(loss_fn):
    def with_aux(*args):
        loss = loss_fn(*args)
        return loss, loss.detach()

    return grad(with_aux, argnums=(0, 1), has_aux=True)


def _looped(step, num_envs: int):
    """``step`` applied host by host in a Python loop, results stacked: vmap's semantics."""
    def looped(*args):
        outs = [step(*tree_map(lambda t, i=i: t[i], args)) for i in range(num_envs)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)

    return looped


def check_options(**options) -> None:
    """Raise :class:`envs.images.DataError` naming the first bad option (a CIFAR-10 folder is
    checked for its files here; reading them happens when the env is built)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise images.DataError(f"unknown morpho option(s): {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    for name in ("channels", "slots", "max_seeds", "episode_epochs", "batch_size", "train_size", "val_size",
                 "data_seed"):
        value = options.get(name, 1)
        if name == "batch_size" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "data_seed" else 1):
            raise images.DataError(f"{name} must be a positive integer, got {value!r}")
    if options.get("slots", 1) > hosts.BLOCKS:
        raise images.DataError(f"slots must be at most {hosts.BLOCKS} (one per host block), got {options['slots']}")
    train_size = options.get("train_size", DEFAULT_TRAIN_SIZE)
    if (options.get("batch_size") or 1) > train_size:
        raise images.DataError(f"batch_size={options['batch_size']} is larger than train_size={train_size}")
    lr = options.get("host_lr", 1.0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise images.DataError(f"host_lr must be > 0, got {lr!r}")
    if not isinstance(options.get("augment", True), bool):
        raise images.DataError(f"augment must be true or false, got {options['augment']!r}")
    dataset, data_dir = options.get("dataset", "shapes"), options.get("data_dir")
    images.check_request(dataset, train_size, options.get("val_size", DEFAULT_VAL_SIZE), data_dir)
    if dataset == "cifar10":
        images.check_cifar_folder(data_dir)


__all__ = ["Morpho", "OPTIONS", "check_options"]
