"""Factored actions: per-head masks, sampling in head order, relevance, per-head log-probs.

Heads are categorical or diagonal Gaussian (``Head.kind``); a Gaussian head has no mask and is a
decision wherever it is relevant.

A head's mask may depend on an earlier head's sampled value (``spec.parent``): sampling picks the
parent first and uses that row; the update gathers the same row from the stored parent action, so
old and new log-probs are computed under identical masks. A head's *relevance* (``spec.relevant``)
says on which steps it influences the env; its loss terms are averaged over those steps only.
"""
from __future__ import annotations

import torch

from kernel import distributions as D


def head_mask(spec, masks: dict | None, actions: dict, name: str):
    """The ``[..., size]`` validity mask of head ``name`` given earlier heads' actions (or None)."""
    if not masks or name not in masks:
        return None
    mask = masks[name]
    parent = spec.parent.get(name)
    if parent is None:
        return mask
    row = actions[parent].long()
    index = row.reshape(*row.shape, 1, 1).expand(*row.shape, 1, mask.shape[-1])
    return mask.gather(-2, index).squeeze(-2)


def gaussian(h) -> bool:
    return h.kind == "gaussian"


def sample(spec, logits: dict, noise: dict, masks: dict | None = None) -> dict:
    """Sample heads in spec order; a conditioned head uses the row its parent's sample selects.
    ``noise``: uniforms for a categorical head, standard normals for a Gaussian one."""
    actions = {}
    for h in spec.heads:
        actions[h.name] = D.gaussian_sample(logits[h.name], noise[h.name]) if gaussian(h) else \
            D.sample(logits[h.name], noise[h.name], head_mask(spec, masks, actions, h.name))
    return actions


def forcing_noise(spec, actions: dict, noise: dict) -> dict:
    """Action noise under which :func:`sample` takes ``actions`` again, whatever rounding moved the
    logits: for a categorical head the largest uniform below 1 at the taken action and the smallest
    positive one elsewhere (a Gumbel margin of about 20 logits, which only an action sampled with
    probability below e^-20 could fail to cover), for a Gaussian head ``noise`` as it is (its sample
    moves with the mean by rounding only)."""
    forced = {}
    for h in spec.heads:
        u = noise[h.name]
        if gaussian(h):
            forced[h.name] = u
            continue
        info = torch.finfo(u.dtype)
        taken = torch.nn.functional.one_hot(actions[h.name], h.size).bool()
        forced[h.name] = torch.where(taken, torch.tensor(1.0 - info.eps, dtype=u.dtype, device=u.device),
                                     torch.tensor(info.tiny, dtype=u.dtype, device=u.device))
    return forced


def greedy(spec, logits: dict, masks: dict | None = None) -> dict:
    actions = {}
    for h in spec.heads:
        actions[h.name] = D.gaussian_mode(logits[h.name]) if gaussian(h) else \
            D.mode(logits[h.name], head_mask(spec, masks, actions, h.name))
    return actions


def into_env(spec, actions: dict) -> dict:
    """The actions as the env takes them: Gaussian heads clipped to their bounds (an infinite
    bound clips nothing). The rollout stores the unclipped sample, whose log-prob it scored."""
    out = dict(actions)
    for h in spec.heads:
        if gaussian(h) and h.low is not None:
            a = actions[h.name]
            out[h.name] = a.clamp(torch.tensor(h.low, dtype=a.dtype, device=a.device),
                                  torch.tensor(h.high, dtype=a.dtype, device=a.device))
    return out


def relevance(spec, actions: dict) -> dict:
    """``{head: float [...]}``: 1 where the head mattered for the step, else 0."""
    first = actions[spec.heads[0].name]
    first = first[..., 0] if gaussian(spec.heads[0]) else first  # a step's batch shape
    out = {}
    for h in spec.heads:
        values = spec.relevant.get(h.name)
        if values is None:
            out[h.name] = torch.ones_like(first, dtype=torch.float32)
        else:
            hit = torch.zeros_like(first, dtype=torch.bool)
            for v in values:
                hit = hit | (first == v)
            out[h.name] = hit.float()
    return out


def decisions(spec, actions: dict, masks: dict | None = None) -> dict:
    """``{head: float [...]}``: 1 where the head mattered *and* had more than one valid action.

    A relevant step with a single valid action is forced: its log-prob is 0 whatever the params,
    so it carries no policy gradient. Only decision steps can tell a learning head from a dead one.
    """
    relevant = relevance(spec, actions)
    out = {}
    for h in spec.heads:
        r, mask = relevant[h.name], head_mask(spec, masks, actions, h.name)
        choice = mask.sum(-1) > 1 if mask is not None else torch.full_like(r, float(h.size > 1 or gaussian(h))).bool()
        out[h.name] = r * choice.to(r.dtype)
    return out


def log_probs(spec, logits: dict, actions: dict, masks: dict | None = None) -> dict:
    return {h.name: D.gaussian_log_prob(logits[h.name], actions[h.name]) if gaussian(h) else
            D.log_prob(logits[h.name], actions[h.name], head_mask(spec, masks, actions, h.name)) for h in spec.heads}


def normalized_entropies(spec, logits: dict, actions: dict, masks: dict | None = None) -> dict:
    """Entropy of each head divided by log(number of valid actions); 0 when only one is valid. A
    Gaussian head's: its entropy per action dimension."""
    out = {}
    for h in spec.heads:
        if gaussian(h):
            out[h.name] = D.gaussian_entropy(logits[h.name]) / h.size
            continue
        mask = head_mask(spec, masks, actions, h.name)
        ent = D.entropy(logits[h.name], mask)
        n_valid = mask.sum(-1).float() if mask is not None else torch.full_like(ent, float(h.size))
        denom = torch.log(n_valid.clamp(min=2.0))
        out[h.name] = torch.where(n_valid > 1, ent / denom, torch.zeros_like(ent))
    return out


def entropies(spec, logits: dict, actions: dict, masks: dict | None = None) -> dict:
    return {h.name: D.gaussian_entropy(logits[h.name]) if gaussian(h) else
            D.entropy(logits[h.name], head_mask(spec, masks, actions, h.name)) for h in spec.heads}


def masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries with weight 1; 0 (not NaN) when there are none."""
    return (x * weight).sum() / weight.sum().clamp(min=1.0)


