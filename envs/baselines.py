"""Scripted controllers for the seed-growing envs (seedbed, morpho), the baselines a trained policy
is measured against: uniform over valid actions, and a heuristic that germinates, advances and
keeps seeds whose measured contribution is positive."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from envs.seedbed import ADVANCE, BLENDING, FOSSILIZE, GERMINATE, GERMINATED, HOLDING, PRUNE, TRAINING, WAIT
from kernel import heads


def random_valid_actions(env, obs: dict, generator: torch.Generator) -> dict:
    """Uniform over valid actions, head by head (op first, then the slot row that op selects)."""
    zeros = {h.name: torch.zeros(env.num_envs, h.size, device=env.device) for h in env.action_spec.heads}
    noise = {h.name: torch.rand(env.num_envs, h.size, generator=generator).to(env.device)
             for h in env.action_spec.heads}
    return heads.sample(env.action_spec, zeros, noise, obs["masks"])


def heuristic_actions(env, state: dict, generator: torch.Generator, min_training: int = 3) -> dict:
    """Scripted controller for seedbed or morpho. Per env, first applicable rule wins:
    1. a HOLDING seed: FOSSILIZE it if its measured contribution > 0, else PRUNE it;
    2. a seed that trained ``min_training`` steps: ADVANCE it to blending if measured > 0, else PRUNE
       (morpho measures a seed by ablation, which reads 0 while it trains at alpha 0: it is advanced);
    3. a GERMINATED seed: ADVANCE it to training;  4. a BLENDING seed: WAIT for the ramp;
    5. room for a seed: GERMINATE a random blueprint in the first empty slot, middle tempo;  6. WAIT.
    """
    n, dev = env.num_envs, env.device
    stage, masks = state["stage"], env.masks(state)
    if "measured" in state:  # seedbed: a noisy measurement from TRAINING on
        good = good_trained = state["measured"] > 0
    else:  # morpho: the ablation contribution of a blended seed
        good, good_trained = state["contribution"] > 0, torch.ones_like(stage, dtype=torch.bool)
    rules = [
        (stage == HOLDING, lambda sel: torch.where(good[sel], FOSSILIZE, PRUNE)),
        ((stage == TRAINING) & (state["train_steps"] >= min_training),
         lambda sel: torch.where(good_trained[sel], ADVANCE, PRUNE)),
        (stage == GERMINATED, lambda sel: torch.full_like(sel[:, 0], ADVANCE, dtype=torch.long)),
        (stage == BLENDING, lambda sel: torch.full_like(sel[:, 0], WAIT, dtype=torch.long)),
        (masks["slot"][:, GERMINATE], lambda sel: torch.full_like(sel[:, 0], GERMINATE, dtype=torch.long)),
    ]
    op = torch.full((n,), WAIT, dtype=torch.long, device=dev)
    slot = torch.zeros(n, dtype=torch.long, device=dev)
    decided = torch.zeros(n, dtype=torch.bool, device=dev)
    for where, choose in rules:
        hit = where.any(-1) & ~decided
        first = where.long().argmax(-1)
        sel = F.one_hot(first, env.slots).bool()
        op = torch.where(hit, choose(sel), op)
        slot = torch.where(hit, first, slot)
        decided |= hit
    blueprint = torch.randint(1, env.blueprints, (n,), generator=generator).to(dev)
    return {"op": op, "slot": slot, "blueprint": blueprint, "tempo": torch.full_like(op, 1)}
