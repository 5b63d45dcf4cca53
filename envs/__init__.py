"""Batched torch-native environments and their registry: ``envs.make(name, num_envs, device)``;
``gym:ID`` names any gymnasium environment (:mod:`envs.gym`, the ``[gym]`` extra)."""
from __future__ import annotations

import inspect

from envs.base import ActionSpec, Env, EnvOptionError, Head, Step
from envs.cartpole import CartPole
from envs.gym import PREFIX, GymEnv, make_options
from envs.morpho import Morpho
from envs.pendulum import Pendulum
from envs.seedbed import Seedbed

REGISTRY = {CartPole.name: CartPole, Pendulum.name: Pendulum, Seedbed.name: Seedbed, Morpho.name: Morpho}


def names() -> list[str]:
    return sorted(REGISTRY)


def known(name: str) -> bool:
    return name in REGISTRY or (name.startswith(PREFIX) and len(name) > len(PREFIX))


def unknown_message(name: str) -> str:
    return f"unknown env {name!r}; choose from {', '.join(names())}, or gym:ID for a gymnasium env"


def check_options(name: str, options: dict) -> None:
    """Raise :class:`EnvOptionError` naming the first option ``name``'s env cannot take."""
    if not known(name):
        raise ValueError(unknown_message(name))
    if name.startswith(PREFIX):
        return GymEnv.check_options(name[len(PREFIX):], **options)
    if not options:
        return
    cls = REGISTRY[name]
    allowed = getattr(cls, "OPTIONS", ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no options"
        raise EnvOptionError(f"env {name} {takes}; got {', '.join(unknown)} (see `fkernel envs {name}`)")
    cls.check_options(**options)


def options(name: str) -> dict:
    """The options ``name``'s env takes, each with its default (``envs.gym.REQUIRED`` where it has
    none); for ``gym:ID``, ``workers`` and the keywords of gymnasium's ``make``."""
    if not known(name):
        raise ValueError(unknown_message(name))
    if name.startswith(PREFIX):
        return {"workers": 0, **make_options(name[len(PREFIX):])[0]}
    cls = REGISTRY[name]
    params = inspect.signature(cls).parameters
    return {k: params[k].default for k in getattr(cls, "OPTIONS", ()) if k in params}


def make(name: str, num_envs: int, device="cpu", **kwargs) -> Env:
    if not known(name):
        raise ValueError(unknown_message(name))
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if name.startswith(PREFIX):
        return GymEnv(name[len(PREFIX):], int(num_envs), device=device, **kwargs)
    return REGISTRY[name](int(num_envs), device=device, **kwargs)


__all__ = ["ActionSpec", "Env", "EnvOptionError", "Head", "Step", "check_options", "make", "names", "options",
           "REGISTRY"]
