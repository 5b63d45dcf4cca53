"""Batched torch-native environments and their registry: ``envs.make(name, num_envs, device)``."""
from __future__ import annotations

from envs.base import ActionSpec, Env, EnvOptionError, Head, Step
from envs.cartpole import CartPole
from envs.morpho import Morpho
from envs.seedbed import Seedbed

REGISTRY = {CartPole.name: CartPole, Seedbed.name: Seedbed, Morpho.name: Morpho}


def names() -> list[str]:
    return sorted(REGISTRY)


def check_options(name: str, options: dict) -> None:
    """Raise :class:`EnvOptionError` naming the first option ``name``'s env cannot take."""
    if name not in REGISTRY:
        raise ValueError(f"unknown env {name!r}; choose from {', '.join(names())}")
    if not options:
        return
    cls = REGISTRY[name]
    allowed = getattr(cls, "OPTIONS", ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no options"
        raise EnvOptionError(f"env {name} {takes}; got {', '.join(unknown)}")
    cls.check_options(**options)


def make(name: str, num_envs: int, device="cpu", **kwargs) -> Env:
    if name not in REGISTRY:
        raise ValueError(f"unknown env {name!r}; choose from {', '.join(names())}")
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return REGISTRY[name](int(num_envs), device=device, **kwargs)


__all__ = ["ActionSpec", "Env", "EnvOptionError", "Head", "Step", "check_options", "make", "names", "REGISTRY"]
