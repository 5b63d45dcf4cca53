"""seedbed: a batched, torch-native simulation of growing a host network by seeds.

Modelled on morphogenetic network training: a controller grows a host network by planting
"seeds" (small modules built from a blueprint) into slots, training them, blending them in, and
then fossilizing (keeping) or pruning them.

Dynamics (one step = one controller decision, for every sub-environment at once)
------------------------------------------------------------------------------
* Host: ``S`` slots (default 3) and an accuracy in percentage points, starting at ``BASE_ACCURACY``.
* Seed stages: EMPTY -> GERMINATED -> TRAINING -> BLENDING -> HOLDING -> FOSSILIZED (permanent), or
  PRUNED from any live, non-fossilized stage; a pruned slot frees after ``PRUNE_COOLDOWN`` steps.
* Ops (head ``op``): WAIT; GERMINATE(slot, blueprint, tempo) plants a seed in an empty slot;
  ADVANCE(slot) moves GERMINATED -> TRAINING -> BLENDING -> HOLDING; PRUNE(slot); FOSSILIZE(slot)
  makes a HOLDING seed permanent. An invalid combination (only possible without masks) acts as WAIT.
* Blending: alpha ramps 0 -> 1 over ``TEMPO_STEPS[tempo]`` steps, then the seed is HOLDING; an
  ADVANCE while blending finishes the ramp at once.
* Quality: each (slot, blueprint) pair has a quality ``q`` = a fixed structure shared by every
  episode (so it can be learned: blueprints ``GOOD_BLUEPRINTS`` help in every slot, by a
  slot-dependent amount, the rest are mildly harmful) plus per-episode hidden noise (so it must be
  probed).
* Accuracy = base + sum over blending/holding/fossilized seeds of ``alpha * q``.
* Observation of a seed's worth: a *measured contribution* ``q + noise * MEASURE_SIGMA /
  sqrt(1 + training steps)``, fresh noise every step, shown from TRAINING on: it sharpens the
  longer a seed trains.
* Reward: accuracy change - ``RENT`` per live non-fossilized seed - a small cost per non-WAIT op;
  at the end of an episode, a bonus of ``FOSSIL_BONUS * max(q, 0)`` per fossilized seed.
* Episodes last ``EPISODE_STEPS`` (50) steps. The horizon is part of the task (the observation
  carries ``t / EPISODE_STEPS`` and the fossil bonus is paid at the end), so the last step is
  *terminal*: nothing follows it. Bootstrapping there instead, from the value of a final
  observation that no training step ever visits, let value targets drift upward and collapse
  MLP policies late in training.
* Desynchronised starts (``desync=True``, the default): at ``reset`` each sub-environment starts
  at a random step of its first episode (drawn from the reset noise), so the sub-environments are
  spread over every phase of an episode instead of all starting together. Otherwise every batch
  of a short rollout would hold the same phase of every episode: with 25-step rollouts, every
  second batch would be episode ends, where a trained policy has fossilized its seeds and WAIT is
  the only valid op. Later episodes are full length; pass ``desync=False`` to play whole episodes
  from the first step (evaluation does).

Action heads: op (5), slot (S), blueprint (B, default 8; blueprint 0 is NOOP and never valid),
tempo (3). Relevance: slot matters unless op is WAIT; blueprint and tempo only for GERMINATE.

Masks (in ``obs["masks"]``): op: WAIT always; GERMINATE needs an empty slot and fewer than
``max_seeds`` seeds; ADVANCE needs a seed in GERMINATED/TRAINING/BLENDING; FOSSILIZE needs a
HOLDING seed; PRUNE needs a live non-fossilized seed at least one step old. ``slot`` masks are
``[N, 5, S]``, one row per op (the WAIT row allows every slot; it is irrelevant there).

Scripted baselines to compare a trained policy with live in :mod:`envs.baselines`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from envs.base import ActionSpec, Head, Step

EMPTY, GERMINATED, TRAINING, BLENDING, HOLDING, FOSSILIZED, PRUNED = range(7)
NUM_STAGES = 7
WAIT, GERMINATE, ADVANCE, PRUNE, FOSSILIZE = range(5)
NUM_OPS = 5
TEMPO_STEPS = (2, 4, 6)
BASE_ACCURACY = 60.0
EPISODE_STEPS = 50
PRUNE_COOLDOWN = 3
RENT = 0.02
OP_COST = (0.0, 0.02, 0.01, 0.01, 0.01)
FOSSIL_BONUS = 1.0
MEASURE_SIGMA = 2.0
EPISODE_NOISE = 0.75
GOOD_BONUS = 3.5
GOOD_BLUEPRINTS = (2, 5)


def quality_structure(slots: int, blueprints: int) -> torch.Tensor:
    """The fixed part of every (slot, blueprint) quality, identical in every episode."""
    g = torch.Generator().manual_seed(20260102)
    q = -0.5 + 0.3 * torch.randn(slots, blueprints, generator=g)
    for b in GOOD_BLUEPRINTS:
        if b < blueprints:
            # Good everywhere, by a slot-dependent amount: later slots gain more.
            q[:, b] += GOOD_BONUS + 0.5 * torch.arange(slots, dtype=q.dtype) - 0.5
    q[:, 0] = 0.0  # NOOP
    return q


def normals(uniform: torch.Tensor) -> torch.Tensor:
    u = uniform.clamp(1e-6, 1 - 1e-6)
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def lifecycle_masks(state: dict, max_seeds: int, blueprints: int) -> dict:
    """Valid ops and slots for the seed lifecycle (see the module doc), from the stage fields of
    ``state``; shared by every env that grows seeds."""
    stage = state["stage"]
    n = stage.shape[0]
    seeds = ((stage >= GERMINATED) & (stage <= FOSSILIZED)).sum(-1)
    empty = stage == EMPTY
    advanceable = (stage >= GERMINATED) & (stage <= BLENDING)
    prunable = (stage >= GERMINATED) & (stage <= HOLDING) & (state["seed_age"] >= 1)
    holding = stage == HOLDING
    germinable = empty & (seeds < max_seeds).unsqueeze(-1)
    slot = torch.stack([torch.ones_like(empty), germinable, advanceable, prunable, holding], dim=1)
    op = slot.any(-1)
    blueprint = torch.ones(n, blueprints, dtype=torch.bool, device=stage.device)
    blueprint[:, 0] = False
    tempo = torch.ones(n, len(TEMPO_STEPS), dtype=torch.bool, device=stage.device)
    return {"op": op, "slot": slot, "blueprint": blueprint, "tempo": tempo}


def lifecycle_step(state: dict, action: dict, m: dict, tempo_steps: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One controller decision applied to the seed lifecycle fields of ``state`` (stage, blueprint,
    tempo, ages, train_steps, cooldown, alpha), then one step of automatic progress. Returns the op
    that took effect (invalid combinations become WAIT) and ``state`` with those fields replaced."""
    op, slot = action["op"].long(), action["slot"].long()
    num_envs, slots = state["stage"].shape
    rows = torch.arange(num_envs, device=op.device)
    valid = m["op"][rows, op] & m["slot"][rows, op, slot]
    op = torch.where(valid, op, torch.zeros_like(op))  # invalid -> WAIT
    chosen = F.one_hot(slot, slots).bool() & (op != WAIT).unsqueeze(-1)

    def acted(o):
        return chosen & (op == o).unsqueeze(-1)

    s = dict(state)
    stage = s["stage"]
    germ, adv, prune, foss = acted(GERMINATE), acted(ADVANCE), acted(PRUNE), acted(FOSSILIZE)
    zero = torch.zeros_like(stage)
    # GERMINATE: a fresh seed with the chosen blueprint and tempo.
    s["blueprint"] = torch.where(germ, action["blueprint"].long().unsqueeze(-1), s["blueprint"])
    s["tempo"] = torch.where(germ, action["tempo"].long().unsqueeze(-1), s["tempo"])
    for key in ("seed_age", "train_steps"):
        s[key] = torch.where(germ, zero, s[key])
    # ADVANCE: one stage on; finishing a blend sets alpha to 1.
    advanced = torch.where(stage == GERMINATED, TRAINING, torch.where(stage == TRAINING, BLENDING, HOLDING))
    alpha = torch.where(adv & (stage == BLENDING), torch.ones_like(s["alpha"]), s["alpha"])
    alpha = torch.where(adv & (stage == TRAINING), torch.zeros_like(alpha), alpha)
    new_stage = torch.where(germ, GERMINATED, torch.where(adv, advanced, stage))
    new_stage = torch.where(prune, PRUNED, torch.where(foss, FOSSILIZED, new_stage))
    alpha = torch.where(prune, torch.zeros_like(alpha), alpha)
    cooldown = torch.where(prune, torch.full_like(zero, PRUNE_COOLDOWN), s["cooldown"])
    stage_age = torch.where(new_stage != stage, zero, s["stage_age"] + 1)

    # Automatic progress: blending ramps, training accumulates, pruned slots cool down.
    ramp = 1.0 / tempo_steps[s["tempo"]]
    blending = new_stage == BLENDING
    alpha = torch.where(blending, (alpha + ramp).clamp(max=1.0), alpha)
    new_stage = torch.where(blending & (alpha >= 1.0), HOLDING, new_stage)
    train_steps = s["train_steps"] + (new_stage == TRAINING).long()
    cooldown = torch.where(new_stage == PRUNED, cooldown - 1, cooldown)
    freed = (new_stage == PRUNED) & (cooldown <= 0)
    new_stage = torch.where(freed, EMPTY, new_stage)
    live = (new_stage >= GERMINATED) & (new_stage <= FOSSILIZED)
    seed_age = torch.where(live, s["seed_age"] + 1, zero)
    s.update(stage=new_stage, alpha=alpha, cooldown=cooldown, stage_age=stage_age, train_steps=train_steps,
             seed_age=seed_age)
    return op, s


class Seedbed:
    name = "seedbed"
    tensor_obs = False  # observations are dicts with per-head masks
    solved_return = None  # no fixed bar: compare with the scripted baselines (envs.baselines)
    description = "grow a host network by seeds: germinate, train, blend, fossilize or prune"

    def __init__(self, num_envs: int, device="cpu", dtype: torch.dtype = torch.float32, slots: int = 3,
                 blueprints: int = 8, max_seeds: int = 3, episode_steps: int = EPISODE_STEPS, desync: bool = True):
        self.num_envs, self.device, self.dtype = num_envs, torch.device(device), dtype
        self.slots, self.blueprints, self.max_seeds, self.episode_steps = slots, blueprints, max_seeds, episode_steps
        self.desync = desync
        self.action_spec = ActionSpec(
            (Head("op", NUM_OPS), Head("slot", slots), Head("blueprint", blueprints), Head("tempo", len(TEMPO_STEPS))),
            parent={"slot": "op"},
            relevant={"slot": (GERMINATE, ADVANCE, PRUNE, FOSSILIZE), "blueprint": (GERMINATE,), "tempo": (GERMINATE,)},
        )
        self.obs_dim = slots * (NUM_STAGES + blueprints + 6 + len(TEMPO_STEPS)) + 2
        self.structure = quality_structure(slots, blueprints).to(self.device, dtype)
        self.tempo_steps = torch.tensor(TEMPO_STEPS, device=self.device, dtype=dtype)
        self.op_cost = torch.tensor(OP_COST, device=self.device, dtype=dtype)

    # -- state -------------------------------------------------------------------------------

    def noise_shape(self) -> tuple:
        # Per env: episode quality noise (slots x blueprints), measurement noise (slots), start step.
        return (self.num_envs, self.slots * self.blueprints + self.slots + 1)

    def _fresh(self, noise: torch.Tensor) -> dict:
        n, s, b = self.num_envs, self.slots, self.blueprints
        z = normals(noise[:, : s * b].to(self.dtype)).reshape(n, s, b)
        def zeros():  # a distinct tensor per field: aliased inputs would make torch.compile recompile
            return torch.zeros(n, s, dtype=torch.int64, device=self.device)

        return {
            "stage": zeros(), "blueprint": zeros(), "tempo": zeros(), "stage_age": zeros(), "seed_age": zeros(),
            "train_steps": zeros(), "cooldown": zeros(),
            "alpha": torch.zeros(n, s, dtype=self.dtype, device=self.device),
            "measured": torch.zeros(n, s, dtype=self.dtype, device=self.device),
            "quality": self.structure + EPISODE_NOISE * z,
            "accuracy": torch.full((n,), BASE_ACCURACY, dtype=self.dtype, device=self.device),
            "t": torch.zeros(n, dtype=torch.int64, device=self.device),
        }

    def reset(self, noise: torch.Tensor):
        state = self._fresh(noise)
        if self.desync:
            start = (noise[:, -1].to(self.dtype) * self.episode_steps).long().clamp(0, self.episode_steps - 1)
            state["t"] = start.to(self.device)
        return state, self.observe(state)

    # -- observation and masks -----------------------------------------------------------------

    def masks(self, state: dict) -> dict:
        return lifecycle_masks(state, self.max_seeds, self.blueprints)

    def observe(self, state: dict) -> dict:
        per_slot = torch.cat([
            F.one_hot(state["stage"], NUM_STAGES).to(self.dtype),
            F.one_hot(state["blueprint"], self.blueprints).to(self.dtype),
            F.one_hot(state["tempo"], len(TEMPO_STEPS)).to(self.dtype),
            state["alpha"].unsqueeze(-1),
            state["stage_age"].unsqueeze(-1).to(self.dtype) / 10.0,
            state["seed_age"].unsqueeze(-1).to(self.dtype) / 10.0,
            state["measured"].unsqueeze(-1) / 4.0,
            state["train_steps"].unsqueeze(-1).to(self.dtype) / 10.0,
            state["cooldown"].unsqueeze(-1).to(self.dtype) / PRUNE_COOLDOWN,
        ], dim=-1)
        glob = torch.stack([(state["accuracy"] - BASE_ACCURACY) / 10.0,
                            state["t"].to(self.dtype) / self.episode_steps], dim=-1)
        x = torch.cat([per_slot.reshape(self.num_envs, -1), glob], dim=-1)
        return {"x": x, "masks": self.masks(state)}

    # -- dynamics ------------------------------------------------------------------------------

    def step(self, state: dict, action: dict, noise: torch.Tensor) -> Step:
        op, s = lifecycle_step(state, action, self.masks(state), self.tempo_steps)
        new_stage, alpha, train_steps = s["stage"], s["alpha"], s["train_steps"]
        q = s["quality"].gather(-1, s["blueprint"].unsqueeze(-1)).squeeze(-1)
        contributing = (new_stage == BLENDING) | (new_stage == HOLDING) | (new_stage == FOSSILIZED)
        accuracy = BASE_ACCURACY + (alpha * q * contributing.to(self.dtype)).sum(-1)
        shown = contributing | (new_stage == TRAINING)
        z = normals(noise[:, self.slots * self.blueprints: self.slots * (self.blueprints + 1)].to(self.dtype))
        measured = torch.where(shown, q + z * MEASURE_SIGMA / torch.sqrt(1.0 + train_steps.to(self.dtype)),
                               torch.zeros_like(q))

        renting = (new_stage >= GERMINATED) & (new_stage <= HOLDING)
        reward = (accuracy - s["accuracy"]) - RENT * renting.sum(-1).to(self.dtype) - self.op_cost[op]
        t = s["t"] + 1
        ended = t >= self.episode_steps
        fossil_worth = (q.clamp(min=0.0) * (new_stage == FOSSILIZED).to(self.dtype)).sum(-1)
        reward = reward + torch.where(ended, FOSSIL_BONUS * fossil_worth, torch.zeros_like(reward))

        after = {**s, "measured": measured, "accuracy": accuracy, "t": t}
        final_obs = self.observe(after)
        fresh = self._fresh(noise)
        next_state = {k: torch.where(ended.reshape(-1, *[1] * (v.dim() - 1)), fresh[k], v)
                      for k, v in after.items()}
        return Step(next_state, self.observe(next_state), reward, ended, torch.zeros_like(ended), final_obs)
