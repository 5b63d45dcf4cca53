"""Random state as data, split like a JAX key.

A key is a 0-d int64 CPU tensor. :func:`split` derives new keys from it by hashing (SplitMix64),
never by advancing a hidden stream, so a function that takes a key and returns the next one is
pure: the same key always gives the same random numbers. Random numbers themselves come from a
``torch.Generator`` seeded from a key for one use (:func:`generator`) and then thrown away.

Keys stay on the CPU even for CUDA runs: reading one to seed a generator never syncs a device.
"""
from __future__ import annotations

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """SplitMix64's finaliser: a bijection on 64-bit integers with good avalanche."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def key(seed: int) -> torch.Tensor:
    """The root key of a run seeded with ``seed``."""
    return torch.tensor(_signed(_mix(int(seed) & _MASK)), dtype=torch.int64)


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``[num]`` new keys, each independent of ``k`` and of one another."""
    base = int(k) & _MASK
    return torch.tensor([_signed(_mix(base ^ _mix(i + 1))) for i in range(num)], dtype=torch.int64)


def generator(k: torch.Tensor, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded from ``k``: draw what one step needs from it, then drop it."""
    return torch.Generator(device=device).manual_seed(int(k) & _MASK)
