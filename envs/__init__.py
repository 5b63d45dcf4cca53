"""Batched torch-native environments and their registry: ``envs.make(name, num_envs, device)``."""
from __future__ import annotations

from envs.base import ActionSpec, Env, Head, Step
from envs.cartpole import CartPole
from envs.seedbed import Seedbed

REGISTRY = {CartPole.name: CartPole, Seedbed.name: Seedbed}


def names() -> list[str]:
    return sorted(REGISTRY)


def make(name: str, num_envs: int, device="cpu", **kwargs) -> Env:
    if name not in REGISTRY:
        raise ValueError(f"unknown env {name!r}; choose from {', '.join(names())}")
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return REGISTRY[name](int(num_envs), device=device, **kwargs)


__all__ = ["ActionSpec", "Env", "Head", "Step", "make", "names", "REGISTRY"]
